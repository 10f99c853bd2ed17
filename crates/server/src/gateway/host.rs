//! Where a request goes, decided from its Host alone.
//!
//! Every request is routed on its own Host (never by its connection's first
//! request). The name is compared case-insensitively, without its port and
//! without a trailing dot. `{label}.{domain}` goes to the tunnel named
//! `label`; every other valid host (the domain itself, an IP address, another
//! name) is the server's own.
//!
//! A request whose target is in absolute form (`GET http://b.example/x`) is
//! for the target's host, whatever its Host header says (RFC 9112 §3.2.2):
//! routing by the header there would let one name's request reach another.
//! An HTTP/1.1 request without a Host header is refused whatever its target
//! (RFC 9112 §3.2), as is one with more than one or an invalid one.

use http::{Request, Version};

pub use crate::error::HostError;

/// The destination of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The server's own routes (`/ws`, `/healthz`, `/api/...`).
    Server,
    /// A tunnel subdomain: the label before the domain, lowercased.
    Tunnel(String),
}

/// Routes `req` for a server whose tunnels live under `domain` (lowercase).
pub fn route<B>(req: &Request<B>, domain: &str) -> Result<Route, HostError> {
    Ok(route_name(&name(req)?, domain))
}

/// Where a host name, as [`name`] gives it, goes.
pub fn route_name(name: &str, domain: &str) -> Route {
    match name.strip_suffix(domain) {
        Some(prefix) if !domain.is_empty() => match prefix.strip_suffix('.') {
            Some(label) if !label.is_empty() => Route::Tunnel(label.to_owned()),
            _ => Route::Server,
        },
        _ => Route::Server,
    }
}

/// The host name `req` is for: its target's authority when the target is
/// in absolute form, else its Host; lowercased, without port or trailing
/// dot; IPv6 addresses in brackets.
pub fn name<B>(req: &Request<B>) -> Result<String, HostError> {
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(HostError::Repeated),
        (Some(value), None) => Some(normalize(
            value.to_str().map_err(|_| HostError::Malformed)?,
        )?),
        (None, _) if req.version() >= Version::HTTP_11 => return Err(HostError::Missing),
        (None, _) => None,
    };
    match req.uri().authority() {
        Some(authority) => {
            let authority = normalize(authority.as_str())?;
            // HTTP/1.1's absolute form wins over its Host (RFC 9112
            // §3.2.2); on HTTP/2 the two must agree.
            if req.version() == Version::HTTP_2 && host.as_ref().is_some_and(|h| *h != authority) {
                return Err(HostError::Conflicting);
            }
            Ok(authority)
        }
        None => host.ok_or(HostError::Missing),
    }
}

/// Lowercases a Host value and strips its port and trailing dot.
fn normalize(raw: &str) -> Result<String, HostError> {
    let raw = raw.trim();
    if let Some(rest) = raw.strip_prefix('[') {
        // A bracketed IPv6 literal, possibly with a port.
        let (addr, after) = rest.split_once(']').ok_or(HostError::Malformed)?;
        addr.parse::<std::net::Ipv6Addr>()
            .map_err(|_| HostError::Malformed)?;
        if !(after.is_empty() || valid_port(after.strip_prefix(':'))) {
            return Err(HostError::Malformed);
        }
        return Ok(format!("[{addr}]"));
    }
    let name = match raw.rsplit_once(':') {
        Some((name, port)) if valid_port(Some(port)) => name,
        Some(_) => return Err(HostError::Malformed),
        None => raw,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(HostError::Malformed);
    }
    Ok(name.to_ascii_lowercase())
}

fn valid_port(port: Option<&str>) -> bool {
    port.is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route_of(host: &str) -> Result<Route, HostError> {
        let req = Request::builder().header("host", host).body(()).unwrap();
        route(&req, "localhost")
    }

    #[test]
    fn tunnel_hosts_in_every_spelling() {
        let want = Ok(Route::Tunnel("tunnel-ab12".into()));
        assert_eq!(route_of("tunnel-ab12.localhost:4000"), want);
        assert_eq!(route_of("TUNNEL-AB12.LocalHost"), want);
        assert_eq!(route_of("tunnel-ab12.localhost."), want);
        assert_eq!(route_of("tunnel-ab12.localhost.:80"), want);
    }

    #[test]
    fn server_hosts() {
        for host in [
            "localhost:4000",
            "127.0.0.1:4000",
            "[::1]:4000",
            "example.com",
            "notlocalhost",
        ] {
            assert_eq!(route_of(host), Ok(Route::Server), "{host}");
        }
        assert_eq!(route_of("a.b.localhost"), Ok(Route::Tunnel("a.b".into())));
    }

    #[test]
    fn an_absolute_target_wins_over_the_host_header() {
        let req = |uri: &str, host: Option<&str>, version| {
            let mut req = Request::builder().uri(uri).version(version);
            if let Some(host) = host {
                req = req.header("host", host);
            }
            req.body(()).unwrap()
        };
        let smuggled = req(
            "http://bbb.localhost/x",
            Some("aaa.localhost"),
            Version::HTTP_11,
        );
        assert_eq!(
            route(&smuggled, "localhost"),
            Ok(Route::Tunnel("bbb".into()))
        );
        let to_server = req(
            "http://localhost:4000/ws",
            Some("aaa.localhost"),
            Version::HTTP_11,
        );
        assert_eq!(route(&to_server, "localhost"), Ok(Route::Server));
        // HTTP/1.0 may leave Host out; the target names the host then.
        let old = req("http://BBB.localhost./x", None, Version::HTTP_10);
        assert_eq!(route(&old, "localhost"), Ok(Route::Tunnel("bbb".into())));
        let old_origin_form = req("/x", None, Version::HTTP_10);
        assert_eq!(
            route(&old_origin_form, "localhost"),
            Err(HostError::Missing)
        );
        // The Host must still be valid, and a target with userinfo is not.
        let bad_host = req("http://bbb.localhost/x", Some("a b"), Version::HTTP_11);
        assert_eq!(route(&bad_host, "localhost"), Err(HostError::Malformed));
        let userinfo = req(
            "http://u@bbb.localhost/x",
            Some("bbb.localhost"),
            Version::HTTP_11,
        );
        assert_eq!(route(&userinfo, "localhost"), Err(HostError::Malformed));
    }

    #[test]
    fn bad_hosts() {
        for host in [
            "", "a b", "x:port", "x:99999", "[::1", "[zz]:1", "a..b", "a/b", "@x",
        ] {
            assert_eq!(route_of(host), Err(HostError::Malformed), "{host:?}");
        }
        let none = Request::builder().uri("/x").body(()).unwrap();
        assert_eq!(route(&none, "localhost"), Err(HostError::Missing));
        // HTTP/1.1 needs a Host even when the target names one.
        let absolute = Request::builder()
            .uri("http://a.localhost/x")
            .body(())
            .unwrap();
        assert_eq!(route(&absolute, "localhost"), Err(HostError::Missing));
        let two = Request::builder()
            .header("host", "a.localhost")
            .header("host", "b.localhost")
            .body(())
            .unwrap();
        assert_eq!(route(&two, "localhost"), Err(HostError::Repeated));
    }
}
