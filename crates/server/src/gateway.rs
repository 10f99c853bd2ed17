//! The hyper service behind every connection: routes each request by its own
//! Host to a tunnel or to the server's own endpoints (`/ws`, `/healthz`,
//! `/readyz`, `/metrics`, `/api/tunnels`).

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::Serialize;
use tracing::debug;

use crate::access::Exchange;
use crate::error::GatewayError;
use crate::host::{self, Route};
use crate::{Body, Peer, ServiceResult, State, control, full, proxy};

/// Handles one request from `peer`.
pub(crate) async fn handle(state: Arc<State>, peer: Peer, req: Request<Incoming>) -> ServiceResult {
    let label = match host::route(&req, &state.config.domain) {
        Ok(Route::Server) => {
            return Ok(own_route(&state, peer, req).unwrap_or_else(|err| fail(peer, err)));
        }
        Ok(Route::Tunnel(label)) => Ok(label),
        Err(err) => Err(err),
    };
    // Everything else is a visitor's request for a tunnel: counted, timed
    // and logged, whether or not the tunnel exists.
    let (exchange, req) = Exchange::begin(&state.metrics, peer, label.clone().ok(), req);
    let result = match label {
        Err(err) => Err(err.into()),
        Ok(label) => match state.registry.get(&label) {
            Some(tunnel) => proxy::forward(&state, &tunnel, peer, req).await,
            None => Err(GatewayError::UnknownTunnel(format!(
                "{label}.{}",
                state.config.domain
            ))),
        },
    };
    Ok(match result {
        Ok(resp) => exchange.respond(resp, None),
        Err(err) => {
            let code = err.code();
            exchange.respond(fail(peer, err), Some(code))
        }
    })
}

/// The error page for `err`, logged at debug level (the access log has the
/// line every operator sees).
fn fail(peer: Peer, err: GatewayError) -> Response<Body> {
    debug!(%peer, status = err.status().as_u16(), side = ?err.side(), %err, "request failed");
    err.into_response()
}

/// The server's own host: the control endpoint, health, metrics and
/// read-only status.
fn own_route(
    state: &Arc<State>,
    peer: Peer,
    req: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ws") if state.is_draining() => Err(GatewayError::ShuttingDown),
        (&Method::GET, "/ws") => control::upgrade(Arc::clone(state), peer, req),
        (&Method::GET, "/healthz") => Ok(json(&serde_json::json!({
            "status": "ok",
            "tunnels": state.registry.len(),
        }))),
        (&Method::GET, "/readyz") => Ok(readiness(state)),
        // TODO(admin-token): /api/tunnels and /metrics are open to anyone
        // who reaches the server's own host. When the admin token lands
        // (branch `access`), put both behind the same check as /api/....
        (&Method::GET, "/api/tunnels") => {
            let list: Vec<_> = state.registry.list().iter().map(|t| t.info()).collect();
            Ok(json(&list))
        }
        (&Method::GET, "/metrics") => Ok(metrics(state)),
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

/// `/metrics`, in the OpenMetrics text format.
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

fn json<T: Serialize>(value: &T) -> Response<Body> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut resp = Response::new(full(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
