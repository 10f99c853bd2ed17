//! Where a TCP or TLS tunnel's visitor connection goes once the name it
//! asks for is known: to this node's tunnel ([`relay::admit`]), or, in a
//! cluster, over the internal hop to the node serving it
//! (`crate::cluster::hop::raw`). A name that is neither (unknown, held, an
//! HTTP tunnel's) is no raw connection's: a TLS one is then terminated
//! here, a TCP one closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cryptun_proto::TunnelProtocol;
use tokio::net::TcpStream;

use super::relay;
use crate::cluster::hop::Forwarder;
use crate::edge::{PassThrough, Passing};
use crate::metrics::Metrics;
use crate::registry::{Lookup, Registry, Tunnel};

/// The tunnel a raw connection asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawTarget {
    /// A TLS tunnel, by the name its ClientHello's SNI gave.
    Tls(String),
    /// A TCP tunnel, by its name and the public port it was reached at.
    Tcp(String, u16),
}

impl RawTarget {
    /// The tunnel's name.
    pub(crate) fn name(&self) -> &str {
        match self {
            RawTarget::Tls(name) | RawTarget::Tcp(name, _) => name,
        }
    }

    /// What the tunnel must carry.
    pub(crate) fn protocol(&self) -> TunnelProtocol {
        match self {
            RawTarget::Tls(_) => TunnelProtocol::Tls,
            RawTarget::Tcp(..) => TunnelProtocol::Tcp,
        }
    }

    /// Whether `tunnel` is this target's: its protocol, and for TCP its
    /// port (a name whose tunnel came back with another port is not).
    pub(crate) fn is(&self, tunnel: &Tunnel) -> bool {
        let port = tunnel.relay.as_ref().and_then(|relay| relay.port);
        match self {
            RawTarget::Tls(_) => tunnel.protocol == TunnelProtocol::Tls,
            RawTarget::Tcp(_, at) => tunnel.protocol == TunnelProtocol::Tcp && port == Some(*at),
        }
    }

    /// As the hop writes it: `tls NAME`, `tcp NAME PORT`.
    pub(crate) fn to_header(&self) -> String {
        match self {
            RawTarget::Tls(name) => format!("tls {name}"),
            RawTarget::Tcp(name, port) => format!("tcp {name} {port}"),
        }
    }

    /// Reads [`RawTarget::to_header`]'s form.
    pub(crate) fn from_header(text: &str) -> Option<Self> {
        let mut words = text.split(' ');
        let target = match (words.next()?, words.next()?) {
            ("tls", name) => RawTarget::Tls(name.to_owned()),
            ("tcp", name) => RawTarget::Tcp(name.to_owned(), words.next()?.parse().ok()?),
            _ => return None,
        };
        words.next().is_none().then_some(target)
    }
}

/// What carries raw connections to their tunnels, shared by the HTTPS
/// listener (TLS passthrough), a cluster's TCP ports and the hop.
#[derive(Clone)]
pub(crate) struct Carrier {
    pub(crate) registry: Arc<dyn Registry>,
    /// In a cluster: how connections reach other nodes' tunnels.
    pub(crate) hop: Option<Arc<Forwarder>>,
    pub(crate) metrics: Metrics,
    /// A connection passing no byte either way this long is closed.
    pub(crate) idle: Duration,
}

impl Carrier {
    /// What takes `visitor`'s connection to `target`, the registry asked
    /// first when it must; [`Passing::Terminate`] if `target` is no live
    /// tunnel's.
    pub(crate) fn route(&self, target: RawTarget, visitor: SocketAddr) -> Passing {
        match self.registry.lookup(target.name()) {
            Lookup::Ask => {
                let carrier = self.clone();
                Passing::Ask(Box::pin(async move {
                    let found = carrier.registry.resolve(target.name()).await;
                    carrier.taker(found, target, visitor)
                }))
            }
            found => self
                .taker(found, target, visitor)
                .map_or(Passing::Terminate, Passing::Take),
        }
    }

    /// Carries `visitor`'s connection at TCP `port` to the tunnel `name`
    /// (one of a pool's members), here or on another node, asking the
    /// registry if it must; closes it, counted `no_tunnel`, if no tunnel of
    /// that name has that port now. Whether it was carried.
    pub(crate) async fn carry_tcp(
        &self,
        (name, port): (String, u16),
        (stream, visitor): (TcpStream, SocketAddr),
    ) -> bool {
        let taker = match self.route(RawTarget::Tcp(name, port), visitor) {
            Passing::Take(take) => Some(take),
            Passing::Ask(asking) => asking.await,
            Passing::Terminate => None,
        };
        let Some(take) = taker else {
            self.metrics.tcp_connection("no_tunnel");
            tracing::debug!(%visitor, port, "no tunnel at this port now: visitor closed");
            return false;
        };
        take(stream, bytes::Bytes::new(), Box::new(()));
        true
    }

    /// This node's live tunnel for `target`, as the registry confirms it
    /// (for a connection another node carried here).
    pub(crate) async fn here(&self, target: &RawTarget) -> Option<Arc<Tunnel>> {
        let found = match self.registry.lookup(target.name()) {
            Lookup::Ask => self.registry.resolve(target.name()).await,
            found => found,
        };
        match found {
            Lookup::Live(tunnel) if target.is(&tunnel) => Some(tunnel),
            _ => None,
        }
    }

    /// Takes `visitor`'s connection, as its halves, to `tunnel` here.
    pub(crate) fn admit<R, W>(
        &self,
        tunnel: &Tunnel,
        (reader, writer, visitor): (R, W, SocketAddr),
        (first, held): (bytes::Bytes, crate::edge::Held),
    ) where
        R: tokio::io::AsyncRead + Send + Unpin + 'static,
        W: tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        relay::admit(
            tunnel,
            (reader, writer, visitor),
            (first, held),
            (&self.metrics, self.idle),
        );
    }

    /// What takes the connection, as `found` says where `target` is.
    fn taker(&self, found: Lookup, target: RawTarget, visitor: SocketAddr) -> Option<PassThrough> {
        match found {
            Lookup::Live(tunnel) if target.is(&tunnel) => {
                let carrier = self.clone();
                Some(Box::new(move |stream: TcpStream, first, held| {
                    let (reader, writer) = stream.into_split();
                    carrier.admit(&tunnel, (reader, writer, visitor), (first, held));
                }))
            }
            Lookup::Remote(remote) if remote.protocol == target.protocol() => {
                let hop = Arc::clone(self.hop.as_ref()?);
                Some(Box::new(move |stream, first, held| {
                    hop.carry(remote, target, visitor, (stream, first, held));
                }))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_read_back_as_the_hop_writes_them() {
        for target in [
            RawTarget::Tls("secure".into()),
            RawTarget::Tcp("db".into(), 20001),
        ] {
            assert_eq!(RawTarget::from_header(&target.to_header()), Some(target));
        }
        for bad in [
            "",
            "tls",
            "tcp db",
            "tcp db 0x1",
            "udp x",
            "tls a b",
            "tcp a 1 2",
        ] {
            assert_eq!(RawTarget::from_header(bad), None, "{bad:?}");
        }
    }
}
