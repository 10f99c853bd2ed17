//! The hyper service behind every connection: routes each request by its own
//! Host to a tunnel or to the server's own endpoints.

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, header};
use hyper::body::Incoming;
use serde::Serialize;
use tracing::debug;

use crate::error::GatewayError;
use crate::host::{self, Route};
use crate::registry::Lookup;
use crate::{Body, Peer, ServiceResult, State, control, full, proxy};

/// Handles one request from `peer`.
pub(crate) async fn handle(state: Arc<State>, peer: Peer, req: Request<Incoming>) -> ServiceResult {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let result = match host::route(&req, &state.config.domain) {
        Err(err) => Err(err.into()),
        Ok(Route::Server) => own_route(&state, peer, req),
        Ok(Route::Tunnel(label)) => match state.registry.lookup(&label) {
            Lookup::Live(tunnel) => proxy::forward(&state, &tunnel, peer, req).await,
            Lookup::Reconnecting(left) => Err(GatewayError::Reconnecting(left)),
            Lookup::Free => Err(GatewayError::UnknownTunnel(format!(
                "{label}.{}",
                state.config.domain
            ))),
        },
    };
    Ok(result.unwrap_or_else(|err| {
        debug!(%peer, %method, %path, status = err.status().as_u16(), side = ?err.side(), %err, "request failed");
        err.into_response()
    }))
}

/// The server's own host: the control endpoint and read-only status.
fn own_route(
    state: &Arc<State>,
    peer: Peer,
    req: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ws") => control::upgrade(Arc::clone(state), peer, req),
        (&Method::GET, "/healthz") => Ok(json(&serde_json::json!({
            "status": "ok",
            "tunnels": state.registry.len(),
        }))),
        (&Method::GET, "/api/tunnels") => {
            let list: Vec<_> = state.registry.list().iter().map(|t| t.info()).collect();
            Ok(json(&list))
        }
        _ => Err(GatewayError::NotFound),
    }
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
