//! What HTTPS changes about a request.
//!
//! - On a TLS connection the request's Host must name what the handshake
//!   named (its SNI), or the request is misdirected (421): a connection
//!   opened, and its certificate checked, for one tunnel must not carry
//!   requests for another. A connection without SNI (a client that dialled
//!   an IP address) may reach only the server's own routes.
//! - On the plain listener with `redirect_http`, every request, `/ws`
//!   included, gets a 308 to the same host and path over HTTPS. 308 keeps
//!   the method and body, so a webhook's POST is retried as a POST.
//! - The scheme a connection came in on becomes the visitor's
//!   `X-Forwarded-Proto`.

use http::{HeaderValue, Response, StatusCode, Uri, header};

use super::host::Route;
use crate::body::{Body, full};
use crate::error::GatewayError;

/// Refuses a request on a TLS connection whose Host (`host`, as
/// `host::name` gives it) is not the name the connection was opened for.
/// Names compare as Hosts do: without case and without one trailing dot
/// (two are no DNS name, and rustls passes none such on).
pub(crate) fn check_sni(sni: Option<&str>, host: &str, route: &Route) -> Result<(), GatewayError> {
    let matches = match sni {
        Some(sni) => sni
            .strip_suffix('.')
            .unwrap_or(sni)
            .eq_ignore_ascii_case(host),
        None => *route == Route::Server,
    };
    if matches {
        Ok(())
    } else {
        Err(GatewayError::Misdirected {
            sni: sni.map(str::to_owned),
            host: host.to_owned(),
        })
    }
}

/// The 308 that sends a plain request for `host` to `https://host[:port]`
/// with the same path and query.
pub(crate) fn redirect(host: &str, https_port: u16, uri: &Uri) -> Response<Body> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = if https_port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{https_port}{path}")
    };
    let mut resp = Response::new(full(format!("Moved to {location}\n")));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    let headers = resp.headers_mut();
    // The host passed `host::name` and the path hyper's parser: both are
    // valid header text, but a failure here must not panic.
    if let Ok(value) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, value);
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_must_match_the_host() {
        let tunnel = Route::Tunnel("a".into());
        assert!(check_sni(Some("a.localhost"), "a.localhost", &tunnel).is_ok());
        assert!(check_sni(Some("A.LocalHost."), "a.localhost", &tunnel).is_ok());
        assert!(check_sni(Some("b.localhost"), "a.localhost", &tunnel).is_err());
        // Found by `sni_properties`: two trailing dots are not the Host's.
        assert!(check_sni(Some("a.localhost.."), "a.localhost", &tunnel).is_err());
        assert!(check_sni(None, "a.localhost", &tunnel).is_err());
        assert!(check_sni(None, "127.0.0.1", &Route::Server).is_ok());
        assert!(check_sni(Some("localhost"), "127.0.0.1", &Route::Server).is_err());
    }

    #[test]
    fn redirects_keep_host_and_path() {
        let uri: Uri = "/a/b?c=d".parse().unwrap();
        let resp = redirect("x.example.com", 443, &uri);
        assert_eq!(resp.status(), 308);
        assert_eq!(
            resp.headers()[header::LOCATION],
            "https://x.example.com/a/b?c=d"
        );
        let resp = redirect("[::1]", 4443, &Uri::from_static("/"));
        assert_eq!(resp.headers()[header::LOCATION], "https://[::1]:4443/");
    }
}
