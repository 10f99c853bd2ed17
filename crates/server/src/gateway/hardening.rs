//! Checks on a visitor's request before it is routed, for what hyper lets
//! through: framing (see [`framing`](crate::edge::framing)), the length of the request target,
//! paths on the server's own routes, and protocol switches we never honour.
//!
//! What hyper itself refuses, and how (each has a test in
//! `crates/testkit/tests/e2e/hardening.rs`):
//!
//! - a head over 64 KiB or 100 headers: 431;
//! - CR, LF or NUL inside a header name or value, obs-folded lines, spaces
//!   before the colon: 400;
//! - a malformed or conflicting `Content-Length`, a coding list not ending
//!   in `chunked`, `Transfer-Encoding` on HTTP/1.0: 400;
//! - no complete head within `header_read_timeout`: the connection closes.
//!
//! Every refusal here and in the edge's `framing` is counted in
//! `cryptun_refused_requests_total` (by the gateway, or by the edge for what
//! hyper refuses), except the header timeout, which hyper reports alike for
//! an idle keep-alive connection.
//!
//! Tunnel traffic is never normalised: a path goes to the local app byte for
//! byte, dot segments and encoded slashes included; only the server's own
//! routes refuse them.

use http::{HeaderValue, Uri};

use crate::error::GatewayError;

/// Refuses a request target longer than `max` bytes (414).
pub fn check_uri(uri: &Uri, max: usize) -> Result<(), GatewayError> {
    let len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    if len > max {
        return Err(GatewayError::UriTooLong(max));
    }
    Ok(())
}

/// Refuses, on the server's own routes, a path that a file server or a
/// proxy behind us might read as another path: `.` or `..` segments, a
/// backslash, or an encoded slash, backslash, dot or NUL.
pub fn check_own_path(path: &str) -> Result<(), GatewayError> {
    let lower = path.to_ascii_lowercase();
    let encoded = ["%2f", "%5c", "%2e", "%00"]
        .iter()
        .any(|e| lower.contains(e));
    let dots = path
        .split('/')
        .any(|segment| segment == "." || segment == "..");
    if encoded || dots || path.contains('\\') {
        return Err(GatewayError::BadPath);
    }
    Ok(())
}

/// Whether an `Upgrade` offer may be passed to the app. `h2c` never is:
/// the gateway speaks HTTP/1.1 to visitors, and an app switching a visitor's
/// connection to cleartext HTTP/2 behind our back would take it out of our
/// hands (and out of every per-request check). It is stripped like any
/// other hop-by-hop header and the request goes on as plain HTTP/1.1.
pub fn honoured_upgrade(protocol: &HeaderValue) -> bool {
    !protocol
        .as_bytes()
        .split(|b| *b == b',')
        .any(|p| p.trim_ascii().to_ascii_lowercase().starts_with(b"h2c"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_paths() {
        for ok in ["/", "/api/tunnels", "/healthz", "/a.b/c..d/...", "/%41"] {
            assert!(check_own_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "/api/../healthz",
            "/api/tunnels/..",
            "/./api",
            "/api%2ftunnels",
            "/api%2Ftunnels",
            "/api%5ctunnels",
            "/api/%2e%2e/x",
            "/api/.%2E/x",
            "/api\\tunnels",
            "/api/%00",
        ] {
            assert!(check_own_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn uri_length() {
        let uri: Uri = format!("/{}", "a".repeat(99)).parse().unwrap();
        assert!(check_uri(&uri, 100).is_ok());
        assert!(check_uri(&uri, 99).is_err());
        let absolute: Uri = "http://example.com/abc".parse().unwrap();
        assert!(check_uri(&absolute, 22).is_ok());
        assert!(check_uri(&absolute, 21).is_err());
    }

    #[test]
    fn h2c_is_never_honoured() {
        for (value, ok) in [
            ("websocket", true),
            ("h2c", false),
            ("H2C", false),
            ("websocket, h2c", false),
            ("h2c-14", false),
        ] {
            assert_eq!(
                honoured_upgrade(&HeaderValue::from_static(value)),
                ok,
                "{value}"
            );
        }
    }
}
