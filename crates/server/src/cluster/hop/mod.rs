//! The internal hop: a visitor's request for a tunnel on another node,
//! carried there over HTTP/1.1 and answered back, bodies streaming both
//! ways and protocol switches (WebSocket) spliced through.
//!
//! The first node ([`Forwarder`]) sends the visitor's request as it came
//! (its Host, headers and body) to the serving node's `--cluster-listen`
//! address, with three headers of its own, set over anything the visitor
//! sent under those names:
//!
//! - `x-cryptun-hop-proof`: the cluster secret's proof (a stranger's request
//!   is refused, 403 `hop_forbidden`);
//! - `x-cryptun-hop-visitor`: the visitor's address as the first node
//!   determined it (peer, or trusted proxy's `X-Forwarded-For`);
//! - `x-cryptun-hop-scheme`: `http` or `https`, as the visitor used;
//! - `x-cryptun-hop-http`: `2` if the visitor spoke HTTP/2 (its body may
//!   then be a conversation, which the serving node must not wait out).
//!
//! The serving node ([`HopServer`]) takes those off and serves the request
//! as its gateway serves a visitor's, past the per-address checks the first
//! node made: the tunnel's own rules, body limits, timeouts and statuses
//! are the serving node's, so a visitor sees what one node would answer.
//! A name the serving node no longer has is answered 421 `not_here`: the
//! first node forgets its route, asks Redis again and, for a request
//! without a body, tries once more; one with a body (already spent) gets
//! 503 with `Retry-After`.
//!
//! `x-cryptun-hop: 1` names the hop's version, so a node of a later
//! version can tell an older peer's requests.
//!
//! TCP and TLS tunnels' visitor connections cross the hop as upgraded
//! connections ([`raw`]); responses' trailers in a field of their own
//! ([`trailers`]).

mod raw;
mod trailers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body::Body as _;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tracing::{debug, warn};

use super::ClusterSecret;
use super::listing::{self, Listing};
use super::peer_tls::PeerConnector;
use super::routes::Clustered;
use crate::body::Body;
use crate::edge::{Conn, Handler, VisitorBody};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::gateway::access_log::RequestBody;
use crate::gateway::{Visitor, VisitorSpoke};
use crate::ports::carrier::RawTarget;
use crate::registry::Remote;

/// A request body on its way to another node.
type HopBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, crate::body::BoxError>;

/// The hop's version, sent with every forwarded request.
const VERSION: &str = "1";
pub(crate) const PROOF: &str = "x-cryptun-hop-proof";
const VISITOR: &str = "x-cryptun-hop-visitor";
const SCHEME: &str = "x-cryptun-hop-scheme";
const SPOKE: &str = "x-cryptun-hop-http";
const HOP: &str = "x-cryptun-hop";

/// Sends requests for other nodes' tunnels to them.
pub(crate) struct Forwarder {
    client: Client<PeerConnector, HopBody>,
    secret: ClusterSecret,
    registry: Arc<Clustered>,
    /// How long the serving node may take to answer with a head: more
    /// than any tunnel's own request timeout, which it applies itself.
    head_timeout: Duration,
}

impl Forwarder {
    /// Forwards with `secret`, correcting `registry`'s routes when a peer
    /// says a name is not there.
    pub(crate) fn new(
        secret: ClusterSecret,
        registry: Arc<Clustered>,
        head_timeout: Duration,
        peers: PeerConnector,
    ) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build(peers);
        Forwarder {
            client,
            secret,
            registry,
            head_timeout,
        }
    }

    /// Sends `req` for tunnel `name` to `remote`, for `visitor` who used
    /// `scheme`, and returns its answer.
    pub(crate) async fn forward(
        &self,
        remote: &Remote,
        name: &str,
        visitor: SocketAddr,
        scheme: &str,
        mut req: Request<RequestBody>,
    ) -> Result<Response<Body>, GatewayError> {
        let upgrade = req
            .headers()
            .contains_key(header::UPGRADE)
            .then(|| hyper::upgrade::on(&mut req));
        // Kept to try once more, if the route was stale and there is no
        // body to send again.
        let again = req.body().is_end_stream().then(|| {
            (
                req.method().clone(),
                req.uri().clone(),
                req.headers().clone(),
            )
        });
        let req = req.map(|body| body.map_err(Into::into).boxed_unsync());
        let metrics = self.registry.metrics();
        let resp = match self.send(req, remote.hop, visitor, scheme).await {
            Err(GatewayError::NotHere) => {
                metrics.hop("stale");
                self.registry.forget(name);
                let (Some((method, uri, headers)), Some(remote)) =
                    (again, self.re_resolve(name).await?)
                else {
                    return Err(GatewayError::NodeUnreachable);
                };
                debug!(subdomain = %name, node = %remote.node, "the route was stale; trying the node Redis names now");
                let mut retry = Request::new(Empty::new().map_err(Into::into).boxed_unsync());
                *retry.method_mut() = method;
                *retry.uri_mut() = uri;
                *retry.headers_mut() = headers;
                match self.send(retry, remote.hop, visitor, scheme).await {
                    Err(GatewayError::NotHere) => {
                        metrics.hop("stale");
                        return Err(GatewayError::NodeUnreachable);
                    }
                    Err(err) => {
                        metrics.hop("unreachable");
                        return Err(err);
                    }
                    Ok(resp) => resp,
                }
            }
            Err(err) => {
                metrics.hop("unreachable");
                if matches!(err, GatewayError::NodeUnreachable) {
                    self.registry.forget(name);
                }
                return Err(err);
            }
            Ok(resp) => resp,
        };
        metrics.hop("answered");
        Ok(self.answer(resp, upgrade))
    }

    /// Where Redis says `name` is now, if on another node.
    async fn re_resolve(&self, name: &str) -> Result<Option<Remote>, GatewayError> {
        use crate::registry::{Lookup, Registry};
        match self.registry.resolve(name).await {
            Lookup::Remote(remote) => Ok(Some(remote)),
            Lookup::Reconnecting(left) => Err(GatewayError::Reconnecting(left)),
            Lookup::Unavailable => Err(GatewayError::ClusterUnavailable),
            Lookup::Busy => Err(GatewayError::ClusterBusy),
            _ => Ok(None),
        }
    }

    /// Points `req` at `hop` and adds the hop's headers.
    fn mark(
        &self,
        req: &mut Request<HopBody>,
        hop: SocketAddr,
        visitor: SocketAddr,
        scheme: &str,
    ) -> Result<(), GatewayError> {
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        *req.uri_mut() = Uri::builder()
            .scheme("http")
            .authority(hop.to_string())
            .path_and_query(path)
            .build()
            .map_err(|_| GatewayError::NodeUnreachable)?;
        // The hop is HTTP/1.1 whatever the visitor spoke (an HTTP/2
        // request carries its Host, made from :authority at the edge).
        let h2 = req.version() == http::Version::HTTP_2;
        *req.version_mut() = http::Version::HTTP_11;
        let headers = req.headers_mut();
        if h2 {
            headers.insert(SPOKE, HeaderValue::from_static("2"));
        } else {
            headers.remove(SPOKE);
        }
        let value = |s: &str| HeaderValue::from_str(s).map_err(|_| GatewayError::NodeUnreachable);
        headers.insert(PROOF, value(self.secret.proof())?);
        headers.insert(VISITOR, value(&visitor.to_string())?);
        headers.insert(SCHEME, value(scheme)?);
        headers.insert(HOP, HeaderValue::from_static(VERSION));
        trailers::ask(req);
        Ok(())
    }

    /// Sends `req` to `hop` for `visitor`; a peer's `not_here` is
    /// [`GatewayError::NotHere`].
    async fn send(
        &self,
        mut req: Request<HopBody>,
        hop: SocketAddr,
        visitor: SocketAddr,
        scheme: &str,
    ) -> Result<Response<hyper::body::Incoming>, GatewayError> {
        self.mark(&mut req, hop, visitor, scheme)?;
        // Past the head timeout the serving node itself has failed (it
        // answers every tunnel's own timeout sooner, with its 504): the
        // node's failure, not the local service's.
        let resp = tokio::time::timeout(self.head_timeout, self.client.request(req))
            .await
            .map_err(|_| {
                debug!(%hop, timeout = ?self.head_timeout, "the node serving the tunnel did not answer the hop in time");
                GatewayError::NodeUnreachable
            })?
            .map_err(|err| {
                debug!(%err, "the hop to another node failed");
                GatewayError::NodeUnreachable
            })?;
        if resp.status() == StatusCode::MISDIRECTED_REQUEST
            && resp
                .headers()
                .get("x-cryptun-error")
                .is_some_and(|v| v == "not_here")
        {
            return Err(GatewayError::NotHere);
        }
        Ok(resp)
    }

    /// The peer's answer as the visitor's; a protocol switch spliced.
    fn answer(
        &self,
        mut resp: Response<hyper::body::Incoming>,
        visitor: Option<hyper::upgrade::OnUpgrade>,
    ) -> Response<Body> {
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(visitor) = visitor {
                let peer = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    let (Ok(visitor), Ok(peer)) = tokio::join!(visitor, peer) else {
                        return;
                    };
                    let mut visitor = TokioIo::new(visitor);
                    let mut peer = TokioIo::new(peer);
                    let _ = tokio::io::copy_bidirectional(&mut visitor, &mut peer).await;
                });
            }
        }
        let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let resp = resp.map(|body| body.map_err(Into::into).boxed());
        if switched {
            return resp;
        }
        trailers::unpack(resp)
    }
}

/// Serves requests other nodes forward, on `--cluster-listen`, and their
/// listings of this node's tunnels.
pub(crate) struct HopServer {
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) secret: ClusterSecret,
    pub(crate) listing: Arc<Listing>,
}

impl Handler for HopServer {
    async fn handle(
        self: Arc<Self>,
        conn: Arc<Conn>,
        mut req: Request<VisitorBody>,
    ) -> Response<Body> {
        let headers = req.headers_mut();
        let proven = headers
            .get(PROOF)
            .is_some_and(|v| self.secret.accepts(v.as_bytes()));
        let visitor = take(headers, VISITOR).and_then(|v| v.parse::<SocketAddr>().ok());
        let scheme = match take(headers, SCHEME).as_deref() {
            Some("https") => "https",
            _ => "http",
        };
        headers.remove(PROOF);
        headers.remove(HOP);
        if proven {
            if let Some(resp) = self.peer_route(req.uri()) {
                let _ = conn.framing.next();
                return resp;
            }
        }
        let Some(visitor) = visitor.filter(|_| proven) else {
            // Exactly one framing verdict per request, refused or not.
            let _ = conn.framing.next();
            warn!(peer = %conn.peer, "a request on the cluster listener without the cluster secret was refused");
            return GatewayError::HopForbidden.into_response();
        };
        if let Some(target) = take(req.headers_mut(), raw::RAW) {
            let Some(target) = RawTarget::from_header(&target) else {
                let _ = conn.framing.next();
                return GatewayError::NotHere.into_response();
            };
            return self.raw(&conn, req, visitor, target).await;
        }
        let visitor = Visitor {
            addr: visitor,
            forwarded: true,
            scheme: Some(scheme),
        };
        let packs = trailers::asked(&mut req);
        if take(req.headers_mut(), SPOKE).as_deref() == Some("2") {
            req.extensions_mut()
                .insert(VisitorSpoke(http::Version::HTTP_2));
        }
        let resp = Arc::clone(&self.gateway)
            .answer(conn, req, Some(visitor))
            .await;
        if packs && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return trailers::pack(resp);
        }
        resp
    }
}

impl HopServer {
    /// The answer to a peer's own request (a listing of this node's
    /// tunnels, its dashboard snapshot), if `uri` is one.
    fn peer_route(&self, uri: &Uri) -> Option<Response<Body>> {
        let body = match uri.path() {
            listing::PATH => {
                let (offset, limit) = listing::slice_of(uri.query());
                let (tunnels, more) = self.listing.local(offset, limit);
                serde_json::json!({ "tunnels": tunnels, "more": more })
                    .to_string()
                    .into_bytes()
            }
            listing::DASHBOARD => self.gateway.ops().own_snapshot(),
            _ => return None,
        };
        let mut resp = Response::new(crate::body::full(body));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Some(resp)
    }
}

/// Takes header `name` off, as text.
fn take(headers: &mut HeaderMap, name: &str) -> Option<String> {
    headers
        .remove(name)
        .and_then(|v| v.to_str().ok().map(str::to_owned))
}
