//! TCP tunnels on the client: each OPEN frame from the server is a
//! visitor's connection, carried to the tunnel's local service over a TCP
//! connection of its own until both directions have ended. A FIN either way
//! travels as END (a half-close); when either side fails (the local service
//! refuses or drops the connection, the server resets the stream) the
//! stream is reset and both connections close. Each connection ends with
//! an [`Event::Connection`].
//!
//! With `--local-proxy-protocol v1|v2` each connection to the local service
//! begins with a PROXY protocol header (HAProxy's, written by the `ppp`
//! crate) naming the visitor as the source and the tunnel's public address
//! as the destination, so a service behind the tunnel (nginx, HAProxy,
//! Postfix ...) logs and filters by the visitor's address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use cryptun_proto::counted::{Counted, Tally};
use cryptun_proto::mux::{Mux, RelayError, Stream, relay};
use cryptun_proto::raw::OpenStream;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::debug;

use crate::forward::Forwarder;
use crate::routes::Route;
use crate::{ConnectionDone, Event};

/// Why a visitor's connection went no further than the client.
#[derive(Debug, thiserror::Error)]
enum CarryError {
    #[error("the server named a tunnel this client does not serve: {0}")]
    UnknownTunnel(String),
    #[error("cannot reach the local service at {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("the local service at {0} did not accept the connection within {1:?}")]
    ConnectTimeout(String, std::time::Duration),
    #[error("cannot write the PROXY protocol header to the local service: {0}")]
    ProxyHeader(std::io::Error),
    #[error(transparent)]
    Relay(#[from] RelayError),
}

/// The PROXY protocol version a TCP tunnel's connections to its local
/// service begin with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalProxyProtocol {
    /// The text header: `PROXY TCP4 SRC DST SPORT DPORT\r\n`.
    V1,
    /// The binary header.
    V2,
}

impl std::str::FromStr for LocalProxyProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "v1" | "1" => Ok(LocalProxyProtocol::V1),
            "v2" | "2" => Ok(LocalProxyProtocol::V2),
            _ => Err(format!("{s:?} is no PROXY protocol version: v1 or v2")),
        }
    }
}

impl LocalProxyProtocol {
    /// The header saying a connection came from `source` to
    /// `destination`. The two in one family: an IPv4 one mapped into IPv6
    /// beside an IPv6 one.
    pub fn header(self, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
        let (source, destination) = match (source, destination) {
            (SocketAddr::V4(_), SocketAddr::V6(_)) => (mapped(source), destination),
            (SocketAddr::V6(_), SocketAddr::V4(_)) => (source, mapped(destination)),
            _ => (source, destination),
        };
        match self {
            LocalProxyProtocol::V1 => ppp::v1::Addresses::from((source, destination))
                .to_string()
                .into_bytes(),
            LocalProxyProtocol::V2 => {
                use ppp::v2::{Builder, Command, Protocol, Version};
                Builder::with_addresses(
                    Version::Two | Command::Proxy,
                    Protocol::Stream,
                    (source, destination),
                )
                .build()
                // Only writing into a Vec, with no TLVs: cannot fail.
                .unwrap_or_default()
            }
        }
    }
}

/// `addr` as an IPv6 address (IPv4 mapped).
fn mapped(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), addr.port()),
        IpAddr::V6(_) => addr,
    }
}

/// Carries the connection `open` announced, on `stream`, to its tunnel's
/// local service, and reports it.
pub(crate) async fn carry(fwd: Arc<Forwarder>, mux: Mux<()>, open: OpenStream, stream: Stream<()>) {
    let started = Instant::now();
    let id = stream.id;
    let route = fwd.route(&open.tunnel_id);
    let tunnel = route.map_or_else(|| open.tunnel_id.clone(), |r| r.name.to_string());
    let passed = Arc::new(Carried::default());
    let carried = match route {
        Some(route) => connect_and_relay(&fwd, route, &open, stream, &passed).await,
        None => Err(CarryError::UnknownTunnel(open.tunnel_id.clone())),
    };
    let error = match carried {
        Ok(()) => None,
        Err(err) => {
            debug!(%err, visitor = %open.visitor, "TCP connection cut");
            mux.reset(id);
            Some(err.to_string())
        }
    };
    let bytes = passed.totals();
    fwd.emit(Event::Connection(ConnectionDone {
        tunnel,
        remote_addr: open.visitor,
        bytes_in: bytes.0,
        bytes_out: bytes.1,
        duration: started.elapsed(),
        error,
    }));
}

/// Connects to `route`'s local service and joins it to `stream`, the bytes
/// each way tallied in `passed` as they pass.
async fn connect_and_relay(
    fwd: &Forwarder,
    route: &Route,
    open: &OpenStream,
    stream: Stream<()>,
    passed: &Arc<Carried>,
) -> Result<(), CarryError> {
    let address = route.target.address().to_owned();
    let limit = fwd.connect_timeout();
    let local = match tokio::time::timeout(limit, TcpStream::connect(&address)).await {
        Ok(Ok(local)) => local,
        Ok(Err(err)) => return Err(CarryError::Connect(address, err)),
        Err(_) => return Err(CarryError::ConnectTimeout(address, limit)),
    };
    let _ = local.set_nodelay(true);
    let mut local = local;
    if let Some((version, public)) = route.proxy_header {
        // Without the public address (a server dialled by a name that did
        // not resolve), the local side of the connection stands for it.
        let destination = match public {
            Some(public) => public,
            None => local.peer_addr().map_err(CarryError::ProxyHeader)?,
        };
        let header = version.header(open.visitor, destination);
        local
            .write_all(&header)
            .await
            .map_err(CarryError::ProxyHeader)?;
    }
    let (reader, writer) = local.into_split();
    // Counted as they pass, so that a connection cut midway still says
    // what it carried: read from the local service is out to the visitor,
    // written to it came in from the visitor.
    let reader = Counted::new(reader, Passed(Arc::clone(passed)));
    let writer = Counted::new(writer, Passed(Arc::clone(passed)));
    relay(reader, writer, stream.send, stream.recv).await?;
    Ok(())
}

/// Bytes a connection carried each way, so far.
#[derive(Debug, Default)]
pub(crate) struct Carried {
    from_visitor: AtomicU64,
    to_visitor: AtomicU64,
}

impl Carried {
    /// (in, out): from the visitor, to the visitor.
    fn totals(&self) -> (u64, u64) {
        (
            self.from_visitor.load(Ordering::Relaxed),
            self.to_visitor.load(Ordering::Relaxed),
        )
    }
}

/// The local side's reads and writes, tallied into [`Carried`].
struct Passed(Arc<Carried>);

impl Tally for Passed {
    fn add_in(&self, n: u64) {
        self.0.to_visitor.fetch_add(n, Ordering::Relaxed);
    }

    fn add_out(&self, n: u64) {
        self.0.from_visitor.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_name_the_visitor_and_the_public_address_in_either_version() {
        let visitor: SocketAddr = "203.0.113.9:41000".parse().unwrap();
        let public: SocketAddr = "192.0.2.1:20022".parse().unwrap();
        let v1 = LocalProxyProtocol::V1.header(visitor, public);
        assert_eq!(v1, b"PROXY TCP4 203.0.113.9 192.0.2.1 41000 20022\r\n");
        let v2 = LocalProxyProtocol::V2.header(visitor, public);
        let parsed = ppp::v2::Header::try_from(v2.as_slice()).unwrap();
        assert_eq!(
            parsed.addresses,
            ppp::v2::Addresses::from((visitor, public))
        );
        // One family: an IPv6 visitor beside an IPv4 server.
        let v6: SocketAddr = "[2001:db8::7]:5000".parse().unwrap();
        let mixed = String::from_utf8(LocalProxyProtocol::V1.header(v6, public)).unwrap();
        assert_eq!(
            mixed,
            "PROXY TCP6 2001:db8::7 ::ffff:192.0.2.1 5000 20022\r\n"
        );
        assert_eq!("v2".parse(), Ok(LocalProxyProtocol::V2));
        assert!("v3".parse::<LocalProxyProtocol>().is_err());
    }
}
