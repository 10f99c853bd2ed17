//! The hyper service behind every connection: routes each request by its own
//! Host to a tunnel or to the server's own endpoints (after the HTTPS checks
//! of `https.rs`).

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, header};
use hyper::body::Incoming;
use serde::Serialize;
use tracing::debug;

use crate::error::GatewayError;
use crate::host::{self, Route};
use crate::https::{self, Transport};
use crate::registry::Lookup;
use crate::{Body, Conn, Peer, ServiceResult, State, control, full, proxy};

/// Handles one request on `conn`.
pub(crate) async fn handle(state: Arc<State>, conn: Conn, req: Request<Incoming>) -> ServiceResult {
    let peer = conn.peer;
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let result = match host::name(&req) {
        Err(err) => Err(err.into()),
        Ok(name) => dispatch(&state, &conn, &name, req).await,
    };
    Ok(result.unwrap_or_else(|err| {
        debug!(%peer, %method, %path, status = err.status().as_u16(), side = ?err.side(), %err, "request failed");
        err.into_response()
    }))
}

/// Sends a request for host `name` where it belongs.
async fn dispatch(
    state: &Arc<State>,
    conn: &Conn,
    name: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let route = host::route_name(name, &state.config.domain);
    match (&conn.transport, state.redirect_to) {
        (Transport::Plain, Some(port)) => return Ok(https::redirect(name, port, req.uri())),
        (Transport::Tls { sni }, _) => https::check_sni(sni.as_deref(), name, &route)?,
        (Transport::Plain, None) => {}
    }
    match route {
        Route::Server => own_route(state, conn.peer, req),
        Route::Tunnel(label) => match state.registry.lookup(&label) {
            Lookup::Live(tunnel) => {
                let scheme = conn.transport.scheme();
                proxy::forward(&tunnel, conn.peer, scheme, req).await
            }
            Lookup::Reconnecting(left) => Err(GatewayError::Reconnecting(left)),
            Lookup::Free => Err(GatewayError::UnknownTunnel(format!(
                "{label}.{}",
                state.config.domain
            ))),
        },
    }
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
