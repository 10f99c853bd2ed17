//! The `Host` a tunnelled request carries to the local service
//! (`--host-header`, ngrok's and frp's vocabulary): the visitor's own
//! (`preserve`, the default), the local target's (`rewrite`), or a name
//! given (`VALUE`).
//!
//! Development servers that guard against DNS rebinding (Vite, webpack,
//! Django's `ALLOWED_HOSTS`, Rails' host authorization) refuse a request
//! whose Host is not their own: a tunnel's public name is not, so they
//! answer 403 until the Host is rewritten. The visitor's Host stays
//! available to the app in `X-Forwarded-Host`, which the server sets.

use std::fmt;
use std::str::FromStr;

use http::HeaderValue;
use http::uri::Authority;

use crate::AddressError;

/// Which `Host` requests carry to the local service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum HostHeader {
    /// The visitor's, as it reached the server.
    #[default]
    Preserve,
    /// The local target's `host:port` (the port left out when it is the
    /// scheme's default).
    Rewrite,
    /// This one.
    Value(HeaderValue),
}

impl FromStr for HostHeader {
    type Err = AddressError;

    /// `preserve`, `rewrite`, or a host name with an optional port
    /// (`myapp.test`, `localhost:5173`, `[::1]:8080`).
    fn from_str(input: &str) -> Result<Self, AddressError> {
        match input {
            "preserve" => return Ok(HostHeader::Preserve),
            "rewrite" => return Ok(HostHeader::Rewrite),
            _ => {}
        }
        let bad = |why: &str| {
            AddressError(format!(
                "invalid host header {input:?}: {why} (expected rewrite, preserve, or a host such as myapp.test or localhost:5173)"
            ))
        };
        if input.is_empty() {
            return Err(bad("empty"));
        }
        if input.contains(['/', '@', '?', '#']) || input.contains(char::is_whitespace) {
            return Err(bad("a host and optional port only"));
        }
        let authority: Authority = input.parse().map_err(|_| bad("not a host[:port]"))?;
        if authority.host().is_empty() {
            return Err(bad("no host"));
        }
        if authority.port_u16().is_none() && authority.as_str() != authority.host() {
            return Err(bad("the port is not a number"));
        }
        let value =
            HeaderValue::from_str(authority.as_str()).map_err(|_| bad("not a header value"))?;
        Ok(HostHeader::Value(value))
    }
}

impl fmt::Display for HostHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostHeader::Preserve => f.write_str("preserve"),
            HostHeader::Rewrite => f.write_str("rewrite"),
            HostHeader::Value(value) => f.write_str(value.to_str().unwrap_or("?")),
        }
    }
}

impl HostHeader {
    /// The `Host` to send to `authority` (over TLS if `https`); `None`:
    /// keep the one the request has.
    pub(crate) fn host(&self, authority: &Authority, https: bool) -> Option<HeaderValue> {
        match self {
            HostHeader::Preserve => None,
            HostHeader::Value(value) => Some(value.clone()),
            HostHeader::Rewrite => {
                let default = if https { 443 } else { 80 };
                let host = match authority.port_u16() {
                    Some(port) if port != default => authority.as_str(),
                    _ => authority.host(),
                };
                HeaderValue::from_str(host).ok()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_forms_parse_and_bad_values_are_refused() {
        assert_eq!("preserve".parse(), Ok(HostHeader::Preserve));
        assert_eq!("rewrite".parse(), Ok(HostHeader::Rewrite));
        for good in ["myapp.test", "localhost:5173", "[::1]:8080", "10.0.0.2"] {
            let parsed: HostHeader = good.parse().expect(good);
            assert_eq!(parsed.to_string(), good);
        }
        for bad in ["", "a b", "http://x", "x/y", "u@x", "x:port", "x?q"] {
            let err = bad.parse::<HostHeader>().expect_err(bad);
            assert!(err.0.contains("expected rewrite, preserve"), "{err}");
        }
    }

    #[test]
    fn rewrite_names_the_target_without_the_default_port() {
        let at = |s: &str| s.parse::<Authority>().expect("an authority");
        let rewrite = HostHeader::Rewrite;
        let host = |a: &str, https| rewrite.host(&at(a), https).expect("a host");
        assert_eq!(host("127.0.0.1:3000", false), "127.0.0.1:3000");
        assert_eq!(host("localhost:80", false), "localhost");
        assert_eq!(host("localhost:443", true), "localhost");
        assert_eq!(host("localhost:443", false), "localhost:443");
        assert_eq!(host("[::1]:5173", false), "[::1]:5173");
        assert_eq!(HostHeader::Preserve.host(&at("x:1"), false), None);
        let fixed: HostHeader = "app.test".parse().expect("a host");
        assert_eq!(fixed.host(&at("x:1"), false).expect("a host"), "app.test");
    }
}
