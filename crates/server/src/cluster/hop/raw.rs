//! Raw connections over the hop: a TCP or TLS tunnel's visitor who reached
//! a node other than the one serving the tunnel is carried there as the
//! bytes of an upgraded HTTP/1.1 connection.
//!
//! The first node asks the serving node's hop for `Upgrade: cryptun-raw`,
//! with the hop's proof and visitor headers and `x-cryptun-hop-raw` naming
//! the tunnel (`tls NAME`, or `tcp NAME PORT`). The serving node answers
//! `101` if it serves that tunnel now, else 421 `not_here` (the first node
//! then forgets its route, asks Redis once more and tries the node it
//! names). Past the 101 the serving node takes the connection as it takes
//! a visitor's own: the tunnel's address rules (for the visitor's address
//! the first node saw), connection cap and idle timeout are its own. The
//! first node sends what it already read (a ClientHello) and then copies
//! bytes both ways, each direction's end carried as a shutdown, so a
//! half-close crosses the hop too.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{Instrument, debug, debug_span};

use super::{Forwarder, HopServer};
use crate::body::Body;
use crate::edge::{Conn, Held, VisitorBody};
use crate::error::GatewayError;
use crate::ports::carrier::RawTarget;
use crate::registry::Remote;

/// The protocol a raw connection upgrades the hop to.
const UPGRADE: &str = "cryptun-raw";

/// The header naming the tunnel a raw connection is for.
pub(super) const RAW: &str = "x-cryptun-hop-raw";

impl Forwarder {
    /// Carries `visitor`'s connection to `target`, served by `remote`:
    /// `first` (already read from `stream`) ahead of the rest, `held` kept
    /// until the connection ends.
    pub(crate) fn carry(
        self: Arc<Self>,
        remote: Remote,
        target: RawTarget,
        visitor: SocketAddr,
        (mut stream, first, held): (TcpStream, Bytes, Held),
    ) {
        let span =
            debug_span!("hop_raw", %visitor, node = %remote.node, subdomain = %target.name());
        tokio::spawn(
            async move {
                let metrics = self.registry.metrics().clone();
                let mut peer = match self.open(&remote, &target, visitor).await {
                    Ok(peer) => {
                        metrics.hop("answered");
                        TokioIo::new(peer)
                    }
                    Err(err) => {
                        metrics.hop("unreachable");
                        return debug!(%err, "the connection could not be carried to its node: closed");
                    }
                };
                if !first.is_empty() && peer.write_all(&first).await.is_err() {
                    return;
                }
                let copied = tokio::io::copy_bidirectional(&mut stream, &mut peer).await;
                debug!(?copied, "connection carried to its node ended");
                drop(held);
            }
            .instrument(span),
        );
    }

    /// The upgraded hop to the node serving `target`: `remote`, or if it
    /// says the tunnel is not there, the node Redis names now.
    async fn open(
        &self,
        remote: &Remote,
        target: &RawTarget,
        visitor: SocketAddr,
    ) -> Result<Upgraded, GatewayError> {
        match self.upgrade(remote.hop, target, visitor).await {
            Err(GatewayError::NotHere) => {
                self.registry.metrics().hop("stale");
                self.registry.forget(target.name());
                match self.re_resolve(target.name()).await? {
                    Some(remote) if remote.protocol == target.protocol() => {
                        self.upgrade(remote.hop, target, visitor).await
                    }
                    _ => Err(GatewayError::NodeUnreachable),
                }
            }
            opened => opened,
        }
    }

    /// Asks `hop` to take a raw connection to `target` for `visitor`.
    async fn upgrade(
        &self,
        hop: SocketAddr,
        target: &RawTarget,
        visitor: SocketAddr,
    ) -> Result<Upgraded, GatewayError> {
        let mut req = Request::new(Empty::new().map_err(Into::into).boxed_unsync());
        let headers = req.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static(UPGRADE));
        let named = HeaderValue::from_str(&target.to_header())
            .map_err(|_| GatewayError::NodeUnreachable)?;
        headers.insert(RAW, named);
        let resp = self.send(req, hop, visitor, "http").await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            debug!(status = %resp.status(), "the node refused a raw connection");
            return Err(GatewayError::NodeUnreachable);
        }
        hyper::upgrade::on(resp).await.map_err(|err| {
            debug!(%err, "the hop's upgrade failed");
            GatewayError::NodeUnreachable
        })
    }
}

impl HopServer {
    /// Takes the raw connection another node carries for `visitor` to
    /// `target`, if this node serves it: 101, then the connection is the
    /// tunnel's; else 421 `not_here`.
    pub(super) async fn raw(
        &self,
        conn: &Conn,
        mut req: Request<VisitorBody>,
        visitor: SocketAddr,
        target: RawTarget,
    ) -> Response<Body> {
        // Exactly one framing verdict per request.
        let _ = conn.framing.next();
        let carrier = self.gateway.carrier().clone();
        let Some(tunnel) = carrier.here(&target).await else {
            debug!(subdomain = %target.name(), "a raw connection for a tunnel not here");
            return GatewayError::NotHere.into_response();
        };
        let upgraded = hyper::upgrade::on(&mut req);
        tokio::spawn(
            async move {
                let upgraded = match upgraded.await {
                    Ok(upgraded) => upgraded,
                    Err(err) => return debug!(%err, "the hop's upgrade failed"),
                };
                let (reader, writer) = tokio::io::split(TokioIo::new(upgraded));
                let held: Held = Box::new(());
                carrier.admit(&tunnel, (reader, writer, visitor), (Bytes::new(), held));
            }
            .instrument(debug_span!("hop_raw", %visitor)),
        );
        conn.framing.switched();
        let mut resp = Response::new(crate::body::full(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = resp.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static(UPGRADE));
        resp
    }
}
