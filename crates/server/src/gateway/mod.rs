//! The gateway: what happens to one request. It checks the request, then
//! routes it by its own Host to a tunnel or to the server's own routes.
//!
//! The checks run in this order, cheapest and broadest first, and nothing a
//! check refuses reaches a tunnel's client:
//!
//! 1. framing (400 and close): the edge's verdict ([`crate::edge::framing`]);
//! 2. the request target's length (414);
//! 3. the Host (400), then for HTTPS: the plain listener may only redirect
//!    (308), and the Host must match the connection's SNI (421, see
//!    [`https`]);
//! 4. for a tunnel host: the visitor address's requests in flight (429,
//!    `max_requests_per_ip`), its request rate (429; the
//!    address is the TCP peer's, or behind a trusted proxy the one it
//!    forwarded, see [`forwarded`]), whether the tunnel exists (404; 503
//!    while its client reconnects), its IP lists (403), its credentials
//!    (401), its request rate (429), then its body limits while forwarding
//!    (413, 408).
//!
//! Each refusal of steps 1 to 3 (and the 308) counts in
//! `cryptun_refused_requests_total`; hyper's own refusals of a head it
//! cannot parse are counted by the edge. A request for the server's own
//! routes counts in `cryptun_own_route_requests_total`, one for a tunnel in
//! `cryptun_requests_total` (see [`access_log`]).
//!
//! The per-address rate counts every request for a tunnel host, unknown
//! names included, so scanning for tunnels is throttled like using them. The
//! server's own routes are not counted: `/healthz` is for probes and the
//! admin API has its token. A visitor refused by a tunnel's rules does not
//! use up the tunnel's rate, so strangers cannot starve its real visitors;
//! they are bounded by the per-address rate instead.
//!
//! # Layout
//!
//! - this file: the [`Gateway`] handle, the checks and the dispatch.
//! - [`host`]: the Host header and the route it names.
//! - [`https`]: the SNI rule and the redirect to HTTPS.
//! - [`hardening`]: what hyper lets through that we refuse.
//! - [`forwarded`]: the visitor's address behind a trusted proxy.
//! - `proxy`: one request through a tunnel and back; `response`: the
//!   client's answer checked and turned into the visitor's; `passthrough`:
//!   the bytes of a switched protocol (WebSocket).
//! - [`access_log`]: one request's metrics and log line.

pub mod access_log;
pub mod forwarded;
pub mod hardening;
pub mod host;
pub mod https;
mod passthrough;
mod proxy;
mod response;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use tracing::debug;

pub(crate) use access_log::AccessLog;
pub(crate) use proxy::{VisitorSpoke, upload_share};

use crate::body::Body;
use crate::cluster::hop::Forwarder;
use crate::config::Config;
use crate::control::Control;
use crate::edge::framing::Verdict;
use crate::edge::{Conn, Handler, Passing, Transport, VisitorBody};
use crate::error::{GatewayError, RateScope};
use crate::metrics::{Metrics, Refused};
use crate::ops::{Caller, Ops, route_label};
use crate::policy::{InFlight, IpLimiter};
use crate::ports::carrier::{Carrier, RawTarget};
use crate::registry::{Lookup, Registry, Remote, Tunnel};
use access_log::{Exchange, RequestBody};
pub(crate) use forwarded::Visitor;
use host::Route;

/// Everything a request may need on its way, shared by every connection.
pub(crate) struct Gateway {
    config: Arc<Config>,
    registry: Arc<dyn Registry>,
    metrics: Metrics,
    /// The per-address request rate, if one is set.
    ip_limiter: Option<Arc<IpLimiter>>,
    /// Requests in flight per address.
    in_flight: Arc<InFlight>,
    /// With `redirect_http`: the HTTPS port plain requests are sent to.
    redirect_to: Option<u16>,
    log: Arc<AccessLog>,
    /// Where `/ws` goes.
    control: Arc<Control>,
    /// Where the server's other routes go.
    ops: Ops,
    /// In a cluster: how requests reach tunnels on other nodes.
    hop: Option<Arc<Forwarder>>,
    /// Where TLS passthrough connections go.
    carrier: Carrier,
}

/// What a [`Gateway`] is built from.
pub(crate) struct Parts {
    pub(crate) config: Arc<Config>,
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) metrics: Metrics,
    pub(crate) ip_limiter: Option<Arc<IpLimiter>>,
    pub(crate) redirect_to: Option<u16>,
    pub(crate) log: AccessLog,
    pub(crate) control: Arc<Control>,
    pub(crate) ops: Ops,
    pub(crate) hop: Option<Arc<Forwarder>>,
}

impl Gateway {
    /// The server's own routes.
    pub(crate) fn ops(&self) -> &Ops {
        &self.ops
    }

    /// Where raw (TCP, TLS) connections go.
    pub(crate) fn carrier(&self) -> &Carrier {
        &self.carrier
    }
}

impl Handler for Gateway {
    /// Answers one request on `conn`. (The path of a request is kept to
    /// few nested futures: each level's future is moved into its caller's.)
    async fn handle(self: Arc<Self>, conn: Arc<Conn>, req: Request<VisitorBody>) -> Response<Body> {
        self.answer(conn, req, None).await
    }

    /// Takes a TLS connection whose SNI names a live TLS passthrough
    /// tunnel (of this node, or in a cluster of another); every other
    /// name is terminated here.
    fn pass_through(&self, sni: &str, visitor: SocketAddr) -> Passing {
        let name = sni.trim_end_matches('.').to_ascii_lowercase();
        let Route::Tunnel(label) = host::route_name(&name, &self.config.domain) else {
            return Passing::Terminate;
        };
        self.carrier.route(RawTarget::Tls(label), visitor)
    }
}

impl Gateway {
    /// Answers one request on `conn`: a visitor's, or with `from_node` one
    /// another node forwarded for that visitor (see [`crate::cluster::hop`]).
    pub(crate) async fn answer(
        self: Arc<Self>,
        conn: Arc<Conn>,
        req: Request<VisitorBody>,
        from_node: Option<Visitor>,
    ) -> Response<Body> {
        let peer = conn.peer;
        // Exactly one verdict per request, whatever happens next.
        let verdict = conn.framing.next();
        // Kept for the debug line on a failure, only when it would be written.
        let named = tracing::enabled!(tracing::Level::DEBUG)
            .then(|| (req.method().clone(), req.uri().path().to_owned()));
        let mut resp = match self.dispatch(&conn, verdict, req, from_node).await {
            Ok(resp) => resp,
            Err(err) => {
                let (method, path) = named.unwrap_or_default();
                debug!(%peer, %method, %path, status = err.status().as_u16(), side = ?err.side(), %err, "request failed");
                err.into_response()
            }
        };
        if let (Some(max_age), Transport::Tls { .. }) = (self.config.hsts, &conn.transport) {
            hsts(&mut resp, max_age);
        }
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            conn.framing.switched();
        } else if verdict == Verdict::OkThenClose {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    pub(crate) fn new(parts: Parts) -> Self {
        let Parts {
            config,
            registry,
            metrics,
            ip_limiter,
            redirect_to,
            log,
            control,
            ops,
            hop,
        } = parts;
        let carrier = Carrier {
            registry: Arc::clone(&registry),
            hop: hop.clone(),
            metrics: metrics.clone(),
            idle: config.tcp_idle_timeout,
        };
        Gateway {
            carrier,
            in_flight: InFlight::new(config.max_requests_per_ip),
            config,
            registry,
            metrics,
            ip_limiter,
            redirect_to,
            log: Arc::new(log),
            control,
            ops,
            hop,
        }
    }

    /// Checks a request and sends it where it belongs.
    async fn dispatch(
        self: &Arc<Self>,
        conn: &Conn,
        verdict: Verdict,
        mut req: Request<VisitorBody>,
        from_node: Option<Visitor>,
    ) -> Result<Response<Body>, GatewayError> {
        let (name, route) = self.check(conn, verdict, &req)?;
        if let Some(visitor) = from_node {
            // Checked and counted by the node the visitor reached.
            return match route {
                Route::Tunnel(label) => Ok(self.for_tunnel(conn, visitor, label, req, true).await),
                Route::Server => Err(GatewayError::NotHere),
            };
        }
        if conn.clients_only && !(route == Route::Server && is_ws(&req)) {
            self.metrics.refused_request(Refused::ConnectionsFull);
            return Err(GatewayError::ConnectionsFull);
        }
        // A target in absolute form named the host: the app gets it as its
        // Host too, not the header the visitor sent beside it.
        if let Some(authority) = req.uri().authority() {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                req.headers_mut().insert(header::HOST, host);
            }
        }
        if let (Transport::Plain, Some(port)) = (&conn.transport, self.redirect_to) {
            self.metrics.refused_request(Refused::Redirect);
            return Ok(https::redirect(&name, port, req.uri()));
        }
        // The TCP peer, or behind a trusted proxy the address it forwarded.
        let mut visitor =
            forwarded::visitor(&self.config.trusted_proxies, conn.peer, req.headers());
        // A PROXY protocol header's address is a proxy's claim too.
        visitor.forwarded |= conn.relayed;
        match route {
            Route::Server => self.own_route(visitor, &name, req).await,
            Route::Tunnel(label) => Ok(self.for_tunnel(conn, visitor, label, req, false).await),
        }
    }

    /// What is refused before routing, counted by reason (it is neither a
    /// tunnel's request nor one of the server's own); the Host's name and
    /// route otherwise.
    fn check<B>(
        &self,
        conn: &Conn,
        verdict: Verdict,
        req: &Request<B>,
    ) -> Result<(String, Route), GatewayError> {
        let refused = |reason| self.metrics.refused_request(reason);
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
        hardening::check_uri(req.uri(), self.config.max_uri_length)
            .inspect_err(|_| refused(Refused::UriTooLong))?;
        let name = host::name(req).inspect_err(|_| refused(Refused::BadHost))?;
        let route = host::route_name(&name, &self.config.domain);
        if let Transport::Tls { sni } = &conn.transport {
            https::check_sni(sni.as_deref(), &name, &route)
                .inspect_err(|_| refused(Refused::Misdirected))?;
        }
        Ok((name, route))
    }

    /// A request for the server's own host, asked for as `host`: `/ws` to
    /// control, the rest to ops; counted in
    /// `cryptun_own_route_requests_total` by route and status class.
    async fn own_route(
        &self,
        visitor: Visitor,
        host: &str,
        req: Request<VisitorBody>,
    ) -> Result<Response<Body>, GatewayError> {
        let route = route_label(req.uri().path());
        let answer = match hardening::check_own_path(req.uri().path()) {
            Err(err) => Err(err),
            Ok(()) if is_ws(&req) => Control::upgrade(&self.control, visitor.addr, req),
            Ok(())
                if req.method() == Method::GET
                    && req.uri().path() == crate::control::whoami::PATH =>
            {
                Ok(self.control.whoami(visitor.addr, req.headers()).await)
            }
            Ok(()) => {
                let caller = Caller {
                    loopback: visitor.is_loopback(),
                    host,
                };
                self.ops.serve(&caller, &req).await
            }
        };
        let status = match &answer {
            Ok(resp) => resp.status(),
            Err(err) => err.status(),
        };
        self.metrics.own_route(route, status.as_u16());
        answer
    }

    /// A visitor's request for tunnel `label`: counted, timed and logged
    /// ([`access_log`]) whether or not the tunnel exists; in the tunnel's
    /// own counters too when it is live, refused or not. A tunnel on
    /// another node is reached over the hop; `from_node`, the request came
    /// over it, its visitor's address already held to its limits there.
    async fn for_tunnel(
        &self,
        conn: &Conn,
        visitor: Visitor,
        label: String,
        req: Request<VisitorBody>,
        from_node: bool,
    ) -> Response<Body> {
        let peer = visitor.addr;
        let lookup = match self.registry.lookup(&label) {
            Lookup::Ask => self.registry.resolve(&label).await,
            found => found,
        };
        let stats = match &lookup {
            Lookup::Live(tunnel) => Some(Arc::clone(&tunnel.stats)),
            _ => None,
        };
        let (mut exchange, mut req) =
            Exchange::begin(&self.log, peer, Some(label.clone()), stats, req);
        let admitted = if from_node {
            match lookup {
                Lookup::Live(tunnel) => Ok(Target::Here(tunnel)),
                _ => Err(GatewayError::NotHere),
            }
        } else {
            match self.in_flight.admit(peer.ip()) {
                Some(place) => {
                    exchange.hold(place);
                    self.admit(visitor, &label, lookup)
                }
                None => Err(GatewayError::TooManyInFlight(self.in_flight.max())),
            }
        };
        let admitted = admitted.and_then(|target| match target {
            Target::Here(tunnel) => {
                Self::tunnel_rules(&tunnel, peer.ip(), &mut req).map(|()| Target::Here(tunnel))
            }
            there => Ok(there),
        });
        let scheme = visitor.scheme.unwrap_or(conn.transport.scheme());
        let result = match admitted {
            Ok(Target::Here(tunnel)) => {
                let proxy = proxy::Proxy {
                    metrics: &self.metrics,
                    log: &self.log,
                    body_read_timeout: self.config.body_read_timeout,
                    min_body_rate: self.config.min_body_rate,
                };
                proxy.forward(&tunnel, peer, scheme, req).await
            }
            Ok(Target::There(remote)) => match &self.hop {
                Some(hop) => hop.forward(&remote, &label, peer, scheme, req).await,
                None => Err(GatewayError::NodeUnreachable),
            },
            Err(err) => Err(err),
        };
        match result {
            Ok(resp) => exchange.respond(resp, None),
            Err(err) => {
                let code = err.code();
                debug!(%peer, status = err.status().as_u16(), side = ?err.side(), %err, "request failed");
                exchange.respond(err.into_response(), Some(code))
            }
        }
    }

    /// Where `label` is served (`lookup` found), if `visitor` is within its
    /// address's rate.
    fn admit(&self, visitor: Visitor, label: &str, lookup: Lookup) -> Result<Target, GatewayError> {
        if let Some(limiter) = &self.ip_limiter {
            limiter
                .check(visitor.addr.ip())
                .map_err(|retry_after| GatewayError::RateLimited {
                    scope: RateScope::Visitor,
                    retry_after,
                })?;
        }
        match lookup {
            Lookup::Live(tunnel) => Ok(Target::Here(tunnel)),
            Lookup::Remote(remote) => Ok(Target::There(remote)),
            Lookup::Reconnecting(left) => Err(GatewayError::Reconnecting(left)),
            Lookup::Unavailable | Lookup::Ask => Err(GatewayError::ClusterUnavailable),
            Lookup::Busy => Err(GatewayError::ClusterBusy),
            Lookup::Free => Err(GatewayError::UnknownTunnel(format!(
                "{label}.{}",
                self.config.domain
            ))),
        }
    }

    /// The tunnel's own rules: its address lists, its credentials (taken
    /// off the request: they were for the tunnel, not the app), its rate.
    fn tunnel_rules(
        tunnel: &Tunnel,
        visitor: IpAddr,
        req: &mut Request<RequestBody>,
    ) -> Result<(), GatewayError> {
        if !tunnel.protocol.is_http() {
            return Err(GatewayError::NotHttp(tunnel.public_url.clone()));
        }
        tunnel.access.check_ip(visitor)?;
        if tunnel.access.has_credentials() {
            tunnel
                .access
                .check_credentials(req.headers(), &tunnel.subdomain)?;
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
        Ok(())
    }
}

/// Where a tunnel's request goes.
enum Target {
    /// A tunnel of this node.
    Here(Arc<Tunnel>),
    /// A tunnel of another node.
    There(Remote),
}

/// Whether `req` asks for the control endpoint (`GET /ws`).
fn is_ws<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET && req.uri().path() == "/ws"
}

/// Sets HSTS on an answer over HTTPS: `max-age` in seconds, unless the
/// local service sent its own (its policy for its own name wins).
fn hsts(resp: &mut Response<Body>, max_age: std::time::Duration) {
    let name = header::STRICT_TRANSPORT_SECURITY;
    if !resp.headers().contains_key(&name) {
        let value = format!("max-age={}", max_age.as_secs());
        if let Ok(value) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, value);
        }
    }
}
