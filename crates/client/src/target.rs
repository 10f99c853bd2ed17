//! Where requests go (the local service) and where the client connects (the
//! server), parsed from what a person types.

use std::fmt;

use http::uri::Authority;

/// The local service requests are forwarded to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    authority: Authority,
}

/// Input that names no usable address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddressError(pub String);

impl Target {
    /// Parses `3000`, `host:3000` or `http://host:3000`.
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        let bad = |why: &str| AddressError(format!("invalid target {input:?}: {why}"));
        let rest = if let Some(rest) = input.strip_prefix("http://") {
            rest.trim_end_matches('/')
        } else if input.starts_with("https://") {
            return Err(bad("https targets are not supported yet; use http://"));
        } else if input.contains("://") {
            return Err(bad("only http:// targets are supported"));
        } else {
            input
        };
        let authority = if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
            let port: u16 = rest.parse().map_err(|_| bad("port out of range"))?;
            if port == 0 {
                return Err(bad("port 0"));
            }
            format!("127.0.0.1:{port}")
        } else if rest.contains(':') || rest.starts_with('[') {
            rest.to_owned()
        } else if !rest.is_empty() && !rest.contains('/') {
            format!("{rest}:80")
        } else {
            return Err(bad("expected a port, host:port or http://host:port"));
        };
        if authority.contains('/') || authority.contains('@') {
            return Err(bad("a path or user info is not allowed"));
        }
        let authority = authority
            .parse::<Authority>()
            .map_err(|e| bad(&e.to_string()))?;
        if authority.port_u16().is_none() {
            return Err(bad("missing port"));
        }
        Ok(Target { authority })
    }

    /// The target's `host:port`.
    pub(crate) fn authority(&self) -> &Authority {
        &self.authority
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

/// Turns `--server` input (`http://host:port`, `ws://host:port`,
/// `https://host:port`, `wss://host:port`, or `host:port`) into the
/// WebSocket URL of its control endpoint: `ws://` for plain HTTP, `wss://`
/// for TLS.
pub fn control_url(server: &str) -> Result<String, AddressError> {
    let bad = |why: &str| AddressError(format!("invalid server address {server:?}: {why}"));
    let (scheme, rest) = if let Some(rest) = server
        .strip_prefix("http://")
        .or_else(|| server.strip_prefix("ws://"))
    {
        ("ws", rest)
    } else if let Some(rest) = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("wss://"))
    {
        ("wss", rest)
    } else if server.contains("://") {
        return Err(bad(
            "expected http://, https://, ws://, wss:// or host:port",
        ));
    } else {
        ("ws", server)
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Err(bad("no host"));
    }
    host.parse::<Authority>().map_err(|e| bad(&e.to_string()))?;
    Ok(format!("{scheme}://{host}/ws"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("3000").unwrap().to_string(),
            "http://127.0.0.1:3000"
        );
        assert_eq!(
            Target::parse("example.test:8080").unwrap().to_string(),
            "http://example.test:8080"
        );
        assert_eq!(
            Target::parse("http://[::1]:9000/").unwrap().to_string(),
            "http://[::1]:9000"
        );
        assert_eq!(
            Target::parse("intranet").unwrap().to_string(),
            "http://intranet:80"
        );
        for bad in [
            "",
            "0",
            "70000",
            "https://x:1",
            "ftp://x",
            "a/b",
            "http://u@x:1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn control_urls() {
        assert_eq!(
            control_url("http://127.0.0.1:4000").unwrap(),
            "ws://127.0.0.1:4000/ws"
        );
        assert_eq!(
            control_url("ws://tunnel.example.com/").unwrap(),
            "ws://tunnel.example.com/ws"
        );
        assert_eq!(
            control_url("localhost:4000").unwrap(),
            "ws://localhost:4000/ws"
        );
        assert_eq!(
            control_url("https://tunnel.example.com").unwrap(),
            "wss://tunnel.example.com/ws"
        );
        assert_eq!(
            control_url("wss://[::1]:4443/ws").unwrap(),
            "wss://[::1]:4443/ws"
        );
        assert!(control_url("http://").is_err());
        assert!(control_url("https://").is_err());
        assert!(control_url("ftp://x").is_err());
    }
}
