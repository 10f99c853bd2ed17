//! TCP tunnels on the client: each OPEN frame from the server is a
//! visitor's connection, carried to the tunnel's local service over a TCP
//! connection of its own until both directions have ended. A FIN either way
//! travels as END (a half-close); when either side fails (the local service
//! refuses or drops the connection, the server resets the stream) the
//! stream is reset and both connections close. Each connection ends with
//! an [`Event::Connection`].

use std::sync::Arc;
use std::time::Instant;

use cryptun_proto::mux::{Mux, RelayError, Stream, relay};
use cryptun_proto::raw::OpenStream;
use tokio::net::TcpStream;
use tracing::debug;

use crate::forward::Forwarder;
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
    #[error(transparent)]
    Relay(#[from] RelayError),
}

/// Carries the connection `open` announced, on `stream`, to its tunnel's
/// local service, and reports it.
pub(crate) async fn carry(fwd: Arc<Forwarder>, mux: Mux<()>, open: OpenStream, stream: Stream<()>) {
    let started = Instant::now();
    let id = stream.id;
    let tunnel = fwd
        .route(&open.tunnel_id)
        .map_or_else(|| open.tunnel_id.clone(), |r| r.name.to_string());
    let (bytes, error) = match connect_and_relay(&fwd, &open, stream).await {
        Ok((bytes_in, bytes_out)) => ((bytes_in, bytes_out), None),
        Err(err) => {
            debug!(%err, visitor = %open.visitor, "TCP connection cut");
            mux.reset(id);
            ((0, 0), Some(err.to_string()))
        }
    };
    fwd.emit(Event::Connection(ConnectionDone {
        tunnel,
        remote_addr: open.visitor,
        bytes_in: bytes.0,
        bytes_out: bytes.1,
        duration: started.elapsed(),
        error,
    }));
}

/// Connects to the local service and joins it to `stream`; the bytes in
/// (visitor to service) and out.
async fn connect_and_relay(
    fwd: &Forwarder,
    open: &OpenStream,
    stream: Stream<()>,
) -> Result<(u64, u64), CarryError> {
    let route = fwd
        .route(&open.tunnel_id)
        .ok_or_else(|| CarryError::UnknownTunnel(open.tunnel_id.clone()))?;
    let address = route.target.address().to_owned();
    let limit = fwd.connect_timeout();
    let local = match tokio::time::timeout(limit, TcpStream::connect(&address)).await {
        Ok(Ok(local)) => local,
        Ok(Err(err)) => return Err(CarryError::Connect(address, err)),
        Err(_) => return Err(CarryError::ConnectTimeout(address, limit)),
    };
    let _ = local.set_nodelay(true);
    let (reader, writer) = local.into_split();
    // Out of the local service is in to the stream: bytes out, bytes in.
    let (to_visitor, from_visitor) = relay(reader, writer, stream.send, stream.recv).await?;
    Ok((from_visitor, to_visitor))
}
