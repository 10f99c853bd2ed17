//! Who may use the admin API: the admin token, and the rule for callers
//! when none is set.
//!
//! An admin is a request with `Authorization: Bearer <token>` matching the
//! server's admin token (`--admin-token`), compared in constant time.
//! Without a token configured, the admin API is served to loopback peers
//! only, so that a default server exposes nothing to the network; behind a
//! reverse proxy on the same host every peer is loopback (unless the proxy
//! is a `--trusted-proxy` that names the visitor: the gateway's
//! `forwarded`), so set a token there. With a token
//! configured, it is required from everyone.
//!
//! Without a token, a loopback caller must also ask under a loopback name
//! (`localhost`, `127.0.0.1`, `[::1]`) or the server's domain: a web page
//! on another site can point a name it controls at 127.0.0.1 (DNS
//! rebinding) and read what the browser fetches there as its own, but it
//! cannot send those Hosts. This matters since the dashboard invites
//! browsers onto the admin host.

use std::fmt;
use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::GatewayError;

/// Shortest admin token accepted: a guessable token is worse than none
/// (which at least keeps the API on loopback).
pub const MIN_TOKEN_LEN: usize = 16;

/// The admin API's bearer token, kept only as its SHA-256 digest. `Debug`
/// shows nothing of it.
#[derive(Clone)]
pub struct AdminToken {
    digest: Vec<u8>,
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

/// An admin token too short or with characters a header cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the admin token must be at least {MIN_TOKEN_LEN} visible ASCII characters (e.g. `openssl rand -hex 24`)"
)]
pub struct AdminTokenError;

impl AdminToken {
    /// Keeps the digest of `token`.
    pub fn new(token: &str) -> Result<Self, AdminTokenError> {
        if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AdminTokenError);
        }
        Ok(AdminToken {
            digest: Sha256::digest(token.as_bytes()).to_vec(),
        })
    }

    /// Whether `presented` is the token, in time independent of where they
    /// differ (digests of equal length are compared).
    fn matches(&self, presented: &[u8]) -> bool {
        Sha256::digest(presented)
            .as_slice()
            .ct_eq(&self.digest)
            .into()
    }
}

/// Who asks: whether from this machine, and the host name (as
/// the gateway's `host::name` gives it) it asked under.
pub(crate) struct Caller<'a> {
    /// Its address is a loopback one, and no proxy named another.
    pub(crate) loopback: bool,
    pub(crate) host: &'a str,
}

/// Whether `caller`, sending `headers`, may use the admin API of a server
/// with `token`, whose tunnels live under `domain`.
pub(crate) fn authorize(
    token: Option<&AdminToken>,
    domain: &str,
    caller: &Caller<'_>,
    headers: &HeaderMap,
) -> Result<(), GatewayError> {
    let Some(token) = token else {
        if !caller.loopback {
            return Err(GatewayError::AdminForbidden);
        }
        if !(caller.host == domain || is_loopback_name(caller.host)) {
            return Err(GatewayError::AdminHost);
        }
        return Ok(());
    };
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let presented = match (values.next(), values.next()) {
        (Some(value), None) => bearer(value),
        _ => None,
    };
    match presented {
        Some(presented) if token.matches(presented) => Ok(()),
        _ => Err(GatewayError::AdminUnauthorized),
    }
}

/// `localhost`, `*.localhost` or a loopback address: names only this
/// machine answers to. `host` is lowercase, without port, IPv6 in brackets.
fn is_loopback_name(host: &str) -> bool {
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host.ends_with(".localhost")
        || ip
            .parse::<IpAddr>()
            .is_ok_and(|ip| cryptun_proto::net::canonical(ip).is_loopback())
}

/// The token of an `Authorization: Bearer <token>` value.
pub(crate) fn bearer(value: &HeaderValue) -> Option<&[u8]> {
    let value = value.as_bytes().trim_ascii();
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, token) = value.split_at(space);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| token.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_hidden() {
        assert!(AdminToken::new("short").is_err());
        assert!(AdminToken::new("has a space in it, long enough").is_err());
        let token = AdminToken::new("0123456789abcdef0123").unwrap();
        assert_eq!(format!("{token:?}"), "AdminToken(***)");
        assert!(token.matches(b"0123456789abcdef0123"));
        assert!(!token.matches(b"0123456789abcdef0124"));
        assert!(!token.matches(b""));
        let value = HeaderValue::from_static("bearer   0123456789abcdef0123 ");
        assert_eq!(bearer(&value), Some(&b"0123456789abcdef0123"[..]));
        assert_eq!(bearer(&HeaderValue::from_static("Basic abc")), None);
    }

    fn caller(ip: &str, host: &'static str) -> Caller<'static> {
        let ip: IpAddr = ip.parse().unwrap();
        Caller {
            loopback: cryptun_proto::net::canonical(ip).is_loopback(),
            host,
        }
    }

    #[test]
    fn without_a_token_only_loopback_is_admin() {
        let none = HeaderMap::new();
        let domain = "tunnels.example.com";
        for ip in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
            for host in [
                "localhost",
                "app.localhost",
                "127.0.0.1",
                "127.1.2.3",
                "[::1]",
                "[::ffff:127.0.0.1]",
                "tunnels.example.com",
            ] {
                let verdict = authorize(None, domain, &caller(ip, host), &none);
                assert!(verdict.is_ok(), "{ip} {host}");
            }
            // A name anyone could point at 127.0.0.1 (DNS rebinding).
            for host in [
                "evil.example",
                "localhost.evil.example",
                "10.0.0.1",
                "[::2]",
            ] {
                let refused = authorize(None, domain, &caller(ip, host), &none);
                assert!(matches!(refused, Err(GatewayError::AdminHost)), "{host}");
            }
        }
        for ip in ["192.0.2.1", "10.0.0.1", "2001:db8::1", "::ffff:192.0.2.1"] {
            let refused = authorize(None, domain, &caller(ip, "localhost"), &none);
            assert!(matches!(refused, Err(GatewayError::AdminForbidden)), "{ip}");
        }
    }

    #[test]
    fn with_a_token_everyone_needs_it() {
        let token = AdminToken::new("0123456789abcdef0123").unwrap();
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            headers
        };
        let good = with("Bearer 0123456789abcdef0123");
        for ip in ["127.0.0.1", "192.0.2.1"] {
            // With a token, the Host does not matter: the token is the proof.
            let who = caller(ip, "evil.example");
            assert!(authorize(Some(&token), "localhost", &who, &good).is_ok());
            for bad in [
                HeaderMap::new(),
                with("Bearer nope"),
                with("Basic 0123456789abcdef0123"),
            ] {
                let refused = authorize(Some(&token), "localhost", &who, &bad);
                assert!(matches!(refused, Err(GatewayError::AdminUnauthorized)));
            }
        }
    }
}
