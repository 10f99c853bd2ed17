//! Where requests go (the local service) and where the client connects (the
//! server), parsed from what a person types.

use std::fmt;

use http::uri::Authority;

use crate::host_header::HostHeader;
use crate::local_tls::{Connector, LocalTls, LocalTlsError};

/// The local service requests are forwarded to, and how: over TLS or not,
/// and with which `Host`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    authority: Authority,
    /// What the client speaks to it.
    upstream: Upstream,
    /// `Some` for an `https://` target: how its certificate is trusted.
    tls: Option<LocalTls>,
    /// What `tls` says, built once for every clone of the target.
    connector: Connector,
    host_header: HostHeader,
}

/// What the client speaks to a local service (`--upstream`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Upstream {
    /// HTTP/1.1 (WebSockets and other upgrades included).
    #[default]
    Http1,
    /// HTTP/2, chosen by ALPN, to an `https://` target.
    Http2,
    /// HTTP/2 with prior knowledge (cleartext), to an `http://` target.
    H2c,
}

impl std::str::FromStr for Upstream {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "http1" => Ok(Upstream::Http1),
            "http2" => Ok(Upstream::Http2),
            "h2c" => Ok(Upstream::H2c),
            _ => Err(format!("{text:?}: expected http1, http2 or h2c")),
        }
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Upstream::Http1 => "http1",
            Upstream::Http2 => "http2",
            Upstream::H2c => "h2c",
        })
    }
}

/// Input that names no usable address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddressError(pub String);

impl Target {
    /// Parses `3000`, `host:3000`, `http://host:3000` or
    /// `https://host:8443` (port 443 if none), the `Host` preserved and an
    /// `https://` certificate checked against the system's authorities.
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        let bad = |why: &str| AddressError(format!("invalid target {input:?}: {why}"));
        let (rest, tls) = if let Some(rest) = input.strip_prefix("http://") {
            (rest.trim_end_matches('/'), None)
        } else if let Some(rest) = input.strip_prefix("https://") {
            (rest.trim_end_matches('/'), Some(LocalTls::default()))
        } else if input.contains("://") {
            return Err(bad("only http:// and https:// targets are supported"));
        } else {
            (input, None)
        };
        let default_port = if tls.is_some() { 443 } else { 80 };
        let authority = if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
            let port: u16 = rest.parse().map_err(|_| bad("port out of range"))?;
            if port == 0 {
                return Err(bad("port 0"));
            }
            format!("127.0.0.1:{port}")
        } else if rest.contains(':') || rest.starts_with('[') {
            rest.to_owned()
        } else if !rest.is_empty() && !rest.contains('/') {
            format!("{rest}:{default_port}")
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
        Ok(Target {
            authority,
            upstream: Upstream::Http1,
            tls,
            connector: Connector::default(),
            host_header: HostHeader::default(),
        })
    }

    /// The target's `host:port`.
    pub(crate) fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The target's `host:port` as text: what a TCP tunnel connects to,
    /// and shows.
    pub fn address(&self) -> &str {
        self.authority.as_str()
    }

    /// The target's host as written: `localhost`, `127.0.0.1`, `[::1]`.
    pub fn host(&self) -> &str {
        self.authority.host()
    }

    /// The target's port; every target has one ([`parse`](Self::parse)
    /// gives 443 or 80 where none was written).
    pub fn port(&self) -> u16 {
        let default = if self.is_https() { 443 } else { 80 };
        self.authority.port_u16().unwrap_or(default)
    }

    /// What the client speaks to it.
    pub fn upstream(&self) -> Upstream {
        self.upstream
    }

    /// Speaks `upstream` to it (`--upstream`): HTTP/2 by ALPN for an
    /// `https://` target only, h2c for a plain one only.
    pub fn set_upstream(&mut self, upstream: Upstream) -> Result<(), AddressError> {
        let fits = match upstream {
            Upstream::Http1 => true,
            Upstream::Http2 => self.is_https(),
            Upstream::H2c => !self.is_https(),
        };
        if !fits {
            return Err(AddressError(format!(
                "--upstream {upstream} is for {} targets; {self} is not one (http2: https://, h2c: http://)",
                if upstream == Upstream::Http2 {
                    "https://"
                } else {
                    "plain http://"
                }
            )));
        }
        self.upstream = upstream;
        if let Some(tls) = &mut self.tls {
            tls.h2 = upstream == Upstream::Http2;
            self.connector = Connector::default();
        }
        Ok(())
    }

    /// Whether it is an `https://` target.
    pub fn is_https(&self) -> bool {
        self.tls.is_some()
    }

    /// How an `https://` target's certificate is trusted.
    pub fn local_tls(&self) -> Option<&LocalTls> {
        self.tls.as_ref()
    }

    /// Builds what an `https://` target's connections use to trust its
    /// certificate, now (it reads the system's trust store, and the
    /// `--local-ca` file: a bad one is an error at start rather than at the
    /// first request), and keeps it for them and every clone's.
    pub fn check_tls(&self) -> Result<(), LocalTlsError> {
        match &self.tls {
            Some(tls) => self.connector.build(tls),
            None => Ok(()),
        }
    }

    /// The connector of an `https://` target, with its settings.
    pub(crate) fn tls(&self) -> Option<(&LocalTls, &Connector)> {
        Some((self.tls.as_ref()?, &self.connector))
    }

    /// Sets how the certificate is trusted (`--local-ca`,
    /// `--local-insecure`): for an `https://` target only.
    pub fn set_local_tls(&mut self, tls: LocalTls) -> Result<(), AddressError> {
        match &mut self.tls {
            Some(ours) => {
                // What it speaks stays as `set_upstream` said.
                *ours = LocalTls { h2: ours.h2, ..tls };
                self.connector = Connector::default();
            }
            None if tls == LocalTls::default() => {}
            None => {
                return Err(AddressError(format!(
                    "--local-ca and --local-insecure are for https:// targets; {self} is plain HTTP"
                )));
            }
        }
        Ok(())
    }

    /// Which `Host` requests carry to it.
    pub fn host_header(&self) -> &HostHeader {
        &self.host_header
    }

    /// Sets which `Host` requests carry to it (`--host-header`).
    pub fn set_host_header(&mut self, host_header: HostHeader) {
        self.host_header = host_header;
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.is_https() { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority)
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
        let https = Target::parse("https://localhost:8443/").unwrap();
        assert_eq!(https.to_string(), "https://localhost:8443");
        assert!(https.is_https());
        assert_eq!(
            Target::parse("https://dev.test").unwrap().to_string(),
            "https://dev.test:443"
        );
        for bad in [
            "",
            "0",
            "70000",
            "ftp://x",
            "https://",
            "a/b",
            "http://u@x:1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_target_has_a_host_and_a_port() {
        let cases = [
            ("3000", "127.0.0.1", 3000),
            ("http://[::1]:8080", "[::1]", 8080),
            ("https://localhost", "localhost", 443),
            ("example.test", "example.test", 80),
        ];
        for (input, host, port) in cases {
            let target = Target::parse(input).unwrap();
            assert_eq!((target.host(), target.port()), (host, port), "{input}");
        }
    }

    #[test]
    fn local_tls_settings_are_for_https_targets_only() {
        let insecure = LocalTls {
            ca: None,
            insecure: true,
            h2: false,
        };
        let mut https = Target::parse("https://localhost:8443").unwrap();
        https.set_local_tls(insecure.clone()).unwrap();
        assert_eq!(https.local_tls(), Some(&insecure));
        let mut plain = Target::parse("3000").unwrap();
        let err = plain.set_local_tls(insecure).unwrap_err();
        assert!(
            err.0.contains("http://127.0.0.1:3000 is plain HTTP"),
            "{err}"
        );
        plain.set_local_tls(LocalTls::default()).unwrap();
        assert_eq!(plain.local_tls(), None);
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
