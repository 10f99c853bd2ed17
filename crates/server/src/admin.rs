//! The server's own routes, and who may use them.
//!
//! - `GET /ws`: the client control endpoint (open; tunnel creation has its
//!   own rules).
//! - `GET /healthz`: `{"status":"ok"}` for anyone, so load balancers can
//!   probe it; the tunnel count only for admins.
//! - `GET /dashboard` (and its script and style): the live dashboard page
//!   for anyone, since it holds no data; what it shows comes from
//!   `GET /api/dashboard` (see the `dashboard` module).
//! - `GET /api/tunnels`, `GET /api/limits`, `GET /api/dashboard` and
//!   anything else under `/api/`: admins only.
//!
//! An admin is a request with `Authorization: Bearer <token>` matching the
//! server's admin token (`--admin-token`), compared in constant time.
//! Without a token configured, the admin API is served to loopback peers
//! only, so that a default server exposes nothing to the network; behind a
//! reverse proxy on the same host every peer is loopback (unless the proxy
//! is a `--trusted-proxy` that names the visitor, see `forwarded`), so set
//! a token there. With a token configured, it is required from everyone.
//!
//! Without a token, a loopback caller must also ask under a loopback name
//! (`localhost`, `127.0.0.1`, `[::1]`) or the server's domain: a web page
//! on another site can point a name it controls at 127.0.0.1 (DNS
//! rebinding) and read what the browser fetches there as its own, but it
//! cannot send those Hosts. This matters since the dashboard invites
//! browsers onto the admin host.
//!
//! Paths with dot segments or encoded separators are refused with 400
//! before any of this.
//!
//! Every request here is counted by route (a fixed set, see
//! `route_label`) and status class, so an operator sees probes, scrapes,
//! client connections and refused admin calls apart.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::park::VisitorBody;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::GatewayError;
use crate::forwarded::Visitor;
use crate::{Body, State, control, dashboard, full, hardening};

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
/// [`crate::host::name`] gives it) it asked under.
struct Caller<'a> {
    loopback: bool,
    host: &'a str,
}

/// Whether `caller`, sending `headers`, may use the admin API of a server
/// with `token`, whose tunnels live under `domain`.
fn authorize(
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
            .is_ok_and(|ip| crate::access::canonical(ip).is_loopback())
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer(value: &HeaderValue) -> Option<&[u8]> {
    let value = value.as_bytes().trim_ascii();
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, token) = value.split_at(space);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| token.trim_ascii())
}

/// Serves a request for the server's own host, asked for as `host` (the
/// name the gateway routed on), and counts it in
/// `cryptun_own_route_requests_total` by route and status class.
pub(crate) fn own_route(
    state: &Arc<State>,
    visitor: Visitor,
    host: &str,
    req: Request<VisitorBody>,
) -> Result<Response<Body>, GatewayError> {
    let route = route_label(req.uri().path());
    let answer = serve(state, visitor, host, req);
    let status = match &answer {
        Ok(resp) => resp.status(),
        Err(err) => err.status(),
    };
    state.metrics.own_route(route, status.as_u16());
    answer
}

/// The metrics label of an own route: one of a fixed set, whatever the
/// path (a mistyped or hostile one is `other`, or the family it starts
/// like: `/api/nope` is `api`).
pub(crate) fn route_label(path: &str) -> &'static str {
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    match path {
        "/ws" => "ws",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        _ if under("/api") => "api",
        _ if under("/dashboard") => "dashboard",
        _ => "other",
    }
}

/// Answers a request for the server's own host.
fn serve(
    state: &Arc<State>,
    visitor: Visitor,
    host: &str,
    req: Request<VisitorBody>,
) -> Result<Response<Body>, GatewayError> {
    hardening::check_own_path(req.uri().path())?;
    let caller = Caller {
        loopback: visitor.is_loopback(),
        host,
    };
    let config = &state.config;
    let admin = || {
        authorize(
            config.admin_token.as_ref(),
            &config.domain,
            &caller,
            req.headers(),
        )
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ws") if state.is_draining() => Err(GatewayError::ShuttingDown),
        (&Method::GET, "/ws") => control::upgrade(Arc::clone(state), visitor.addr, req),
        (&Method::GET, "/readyz") => Ok(readiness(state)),
        (&Method::GET, "/metrics") => {
            admin()?;
            Ok(metrics(state))
        }
        (&Method::GET, "/healthz") => {
            let mut health = serde_json::json!({ "status": "ok" });
            if admin().is_ok() {
                health["tunnels"] = state.registry.len().into();
            }
            Ok(json(&health))
        }
        (&Method::GET, path @ ("/dashboard" | "/dashboard/app.js" | "/dashboard/app.css")) => {
            dashboard::asset(path).ok_or(GatewayError::NotFound)
        }
        (_, path) if path == "/api" || path.starts_with("/api/") => {
            admin()?;
            api(state, req.method(), path)
        }
        _ => Err(GatewayError::NotFound),
    }
}

/// `/readyz`: 200 while the server accepts tunnels, 503 once it drains.
fn readiness(state: &State) -> Response<Body> {
    let (status, text) = if state.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::OK, "ready")
    };
    let mut resp = json(&serde_json::json!({ "status": text }));
    *resp.status_mut() = status;
    resp
}

/// `/metrics`, in the OpenMetrics text format (behind the admin check, like
/// the rest of the admin API).
fn metrics(state: &State) -> Response<Body> {
    state
        .metrics
        .tunnels
        .set(i64::try_from(state.registry.len()).unwrap_or(i64::MAX));
    let mut resp = Response::new(full(crate::metrics::encode(&state.metrics_registry)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

/// The admin API proper, for an authorised caller.
fn api(state: &State, method: &Method, path: &str) -> Result<Response<Body>, GatewayError> {
    match (method, path) {
        (&Method::GET, "/api/tunnels") => {
            let list: Vec<_> = state.registry.list().iter().map(|t| t.info()).collect();
            Ok(json(&list))
        }
        (&Method::GET, "/api/dashboard") => {
            let snapshot = serde_json::to_vec(&dashboard::snapshot(state)).unwrap_or_default();
            Ok(json_bytes(snapshot))
        }
        (&Method::GET, "/api/limits") => {
            let limits = &state.config.rate_limits;
            let ip = state.ip_limiter.as_ref();
            Ok(json(&serde_json::json!({
                "rate_limit_ip": limits.per_ip.map(|r| r.to_string()),
                "rate_limit_tunnel": limits.per_tunnel.map(|r| r.to_string()),
                "tracked_addresses": ip.map_or(0, |l| l.tracked()),
                "max_tracked_addresses": limits.max_tracked_ips,
                "max_body_size": state.config.max_body_size,
            })))
        }
        _ => Err(GatewayError::NotFound),
    }
}

fn json<T: Serialize>(value: &T) -> Response<Body> {
    json_bytes(serde_json::to_vec_pretty(value).unwrap_or_default())
}

/// A JSON answer, never cached (it is live, and may be an admin's).
fn json_bytes(body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_are_a_fixed_set() {
        for (path, label) in [
            ("/ws", "ws"),
            ("/ws/x", "other"),
            ("/healthz", "healthz"),
            ("/api", "api"),
            ("/api/tunnels", "api"),
            ("/apiary", "other"),
            ("/dashboard/app.js", "dashboard"),
            ("/", "other"),
        ] {
            assert_eq!(route_label(path), label, "{path}");
        }
    }

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
        let visitor = crate::forwarded::Visitor {
            addr: std::net::SocketAddr::new(ip.parse().unwrap(), 1),
            forwarded: false,
            scheme: None,
        };
        Caller {
            loopback: visitor.is_loopback(),
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
