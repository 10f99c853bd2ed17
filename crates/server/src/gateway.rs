//! The hyper service behind every connection: checks each request, then
//! routes it by its own Host to a tunnel or to the server's own endpoints.
//!
//! The checks run in this order, cheapest and broadest first, and nothing a
//! check refuses reaches a tunnel's client:
//!
//! 1. framing (400 and close): the verdict of [`hardening::framing`];
//! 2. the request target's length (414);
//! 3. the Host (400), then for HTTPS: the plain listener may only redirect
//!    (308), and the Host must match the connection's SNI (421, see
//!    `https.rs`);
//! 4. for a tunnel host: the visitor address's request rate (429; the
//!    address is the TCP peer's, or behind a trusted proxy the one it
//!    forwarded, see `forwarded`), whether
//!    the tunnel exists (404; 503 while its client reconnects), its IP
//!    lists (403), its credentials (401), its request rate (429), then its body limits while forwarding (413, 408).
//!
//! Each refusal of steps 1 to 3 (and the 308) counts in
//! `cryptun_refused_requests_total`; hyper's own refusals of a head it
//! cannot parse are counted in `listen`. A request for the server's own
//! routes counts in `cryptun_own_route_requests_total` (see `admin`), one
//! for a tunnel in `cryptun_requests_total` (see `access_log`).
//!
//! The per-address rate counts every request for a tunnel host, unknown
//! names included, so scanning for tunnels is throttled like using them. The
//! server's own routes are not counted: `/healthz` is for probes and the
//! admin API has its token. A visitor refused by a tunnel's rules does not
//! use up the tunnel's rate, so strangers cannot starve its real visitors;
//! they are bounded by the per-address rate instead.

use std::sync::Arc;

use crate::park::VisitorBody;
use http::{HeaderValue, Request, Response, StatusCode, header};
use tracing::debug;

use crate::access_log::{Exchange, RequestBody};
use crate::error::{GatewayError, RateScope};
use crate::forwarded::{self, Visitor};
use crate::hardening::{self, framing::Verdict};
use crate::host::{self, Route};
use crate::https::{self, Transport};
use crate::listen::Conn;
use crate::metrics::Refused;
use crate::registry::{Lookup, Tunnel};
use crate::{Body, ServiceResult, State, admin, proxy};

/// Handles one request on `conn`.
pub(crate) async fn handle(
    state: Arc<State>,
    conn: Arc<Conn>,
    req: Request<VisitorBody>,
) -> ServiceResult {
    let peer = conn.peer;
    // Exactly one verdict per request, whatever happens next.
    let verdict = conn.framing.next();
    // Kept for the debug line on a failure, only when it would be written.
    let named = tracing::enabled!(tracing::Level::DEBUG)
        .then(|| (req.method().clone(), req.uri().path().to_owned()));
    let mut resp = match dispatch(&state, &conn, verdict, req).await {
        Ok(resp) => resp,
        Err(err) => {
            let (method, path) = named.unwrap_or_default();
            debug!(%peer, %method, %path, status = err.status().as_u16(), side = ?err.side(), %err, "request failed");
            err.into_response()
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        conn.framing.switched();
    } else if verdict == Verdict::OkThenClose {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(resp)
}

/// Checks a request and sends it where it belongs.
async fn dispatch(
    state: &Arc<State>,
    conn: &Conn,
    verdict: Verdict,
    req: Request<VisitorBody>,
) -> Result<Response<Body>, GatewayError> {
    // What is answered here, before routing, is counted by reason: it is
    // neither a tunnel's request nor one of the server's own.
    let refused = |reason| state.metrics.refused_request(reason);
    match verdict {
        Verdict::Refuse(why) => {
            refused(Refused::BadFraming);
            return Err(GatewayError::BadFraming(why));
        }
        Verdict::TooLarge(max) => {
            refused(Refused::HeadersTooLarge);
            return Err(GatewayError::HeadTooLarge(max));
        }
        Verdict::Ok | Verdict::OkThenClose => {}
    }
    hardening::check_uri(req.uri(), state.config.max_uri_length)
        .inspect_err(|_| refused(Refused::UriTooLong))?;
    let name = host::name(&req).inspect_err(|_| refused(Refused::BadHost))?;
    let route = host::route_name(&name, &state.config.domain);
    match (&conn.transport, state.redirect_to) {
        (Transport::Plain, Some(port)) => {
            refused(Refused::Redirect);
            return Ok(https::redirect(&name, port, req.uri()));
        }
        (Transport::Tls { sni }, _) => https::check_sni(sni.as_deref(), &name, &route)
            .inspect_err(|_| refused(Refused::Misdirected))?,
        (Transport::Plain, None) => {}
    }
    // The TCP peer, or behind a trusted proxy the address it forwarded.
    let visitor = forwarded::visitor(&state.config.trusted_proxies, conn.peer, req.headers());
    let label = match route {
        Route::Server => return admin::own_route(state, visitor, &name, req),
        Route::Tunnel(label) => label,
    };
    let peer = visitor.addr;
    // Everything else is a visitor's request for a tunnel: counted, timed
    // and logged (`access_log`), whether or not the tunnel exists; in the
    // tunnel's own counters too when it is live, refused or not.
    let lookup = state.registry.lookup(&label);
    let stats = match &lookup {
        Lookup::Live(tunnel) => Some(Arc::clone(&tunnel.stats)),
        _ => None,
    };
    let (exchange, req) = Exchange::begin(state, peer, Some(label.clone()), stats, req);
    Ok(
        match to_label(state, conn, visitor, &label, lookup, req).await {
            Ok(resp) => exchange.respond(resp, None),
            Err(err) => {
                let code = err.code();
                debug!(%peer, status = err.status().as_u16(), side = ?err.side(), %err, "request failed");
                exchange.respond(err.into_response(), Some(code))
            }
        },
    )
}

/// A request for tunnel `label`, which `lookup` found, from `visitor`: the
/// visitor address's rate, then the tunnel, if it is there.
async fn to_label(
    state: &State,
    conn: &Conn,
    visitor: Visitor,
    label: &str,
    lookup: Lookup,
    req: Request<RequestBody>,
) -> Result<Response<Body>, GatewayError> {
    if let Some(limiter) = &state.ip_limiter {
        limiter
            .check(visitor.addr.ip())
            .map_err(|retry_after| GatewayError::RateLimited {
                scope: RateScope::Visitor,
                retry_after,
            })?;
    }
    match lookup {
        Lookup::Live(tunnel) => to_tunnel(state, &tunnel, conn, visitor, req).await,
        Lookup::Reconnecting(left) => Err(GatewayError::Reconnecting(left)),
        Lookup::Free => Err(GatewayError::UnknownTunnel(format!(
            "{label}.{}",
            state.config.domain
        ))),
    }
}

/// Applies the tunnel's own rules, then forwards.
async fn to_tunnel(
    state: &State,
    tunnel: &Arc<Tunnel>,
    conn: &Conn,
    visitor: Visitor,
    mut req: Request<RequestBody>,
) -> Result<Response<Body>, GatewayError> {
    let peer = visitor.addr;
    tunnel.access.check_ip(peer.ip())?;
    if tunnel.access.has_credentials() {
        tunnel
            .access
            .check_credentials(req.headers(), &tunnel.subdomain)?;
        // The credentials were for the tunnel, not for the app.
        req.headers_mut().remove(header::AUTHORIZATION);
    }
    if let Some(limiter) = &tunnel.rate_limiter {
        limiter
            .check()
            .map_err(|retry_after| GatewayError::RateLimited {
                scope: RateScope::Tunnel,
                retry_after,
            })?;
    }
    let scheme = visitor.scheme.unwrap_or(conn.transport.scheme());
    proxy::forward(state, tunnel, peer, scheme, req).await
}
