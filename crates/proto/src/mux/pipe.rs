//! Raw byte pipes over a stream, for connections that stop being HTTP after
//! a `101 Switching Protocols` (WebSocket passthrough): each direction of the
//! stream carries the bytes of one direction of the upgraded connection,
//! with the same framing and credit as a body.

use bytes::BytesMut;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{PumpError, RecvBody, SendHalf};

/// Copies `reader` into the stream until it reaches end of file, then ends
/// our half. Returns the bytes copied.
pub async fn copy_into_stream<R, H>(mut reader: R, mut send: SendHalf<H>) -> Result<u64, PumpError>
where
    R: AsyncRead + Unpin,
    H: Send + 'static,
{
    let chunk = send.max_frame();
    let mut buf = BytesMut::with_capacity(chunk);
    let mut total = 0u64;
    loop {
        buf.reserve(chunk);
        let n = reader
            .read_buf(&mut buf)
            .await
            .map_err(|e| PumpError::Source(e.into()))?;
        if n == 0 {
            send.send(bytes::Bytes::new(), true).await?;
            return Ok(total);
        }
        total += n as u64;
        send.send(buf.split().freeze(), false).await?;
    }
}

/// Copies the stream's inbound bytes to `writer` until the peer ends its
/// half, then shuts `writer` down for writing. Returns the bytes copied.
pub async fn copy_from_stream<W, H>(mut recv: RecvBody<H>, mut writer: W) -> std::io::Result<u64>
where
    W: AsyncWrite + Unpin,
    H: Send + 'static,
{
    let mut total = 0u64;
    while let Some(frame) = recv.frame().await {
        let frame = frame.map_err(std::io::Error::other)?;
        if let Ok(data) = frame.into_data() {
            total += data.len() as u64;
            writer.write_all(&data).await?;
            writer.flush().await?;
        }
    }
    writer.shutdown().await?;
    Ok(total)
}

/// Why [`relay`] ended early.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading the connection, or sending into the stream, failed (the
    /// stream was reset, or the session closed).
    #[error("outbound: {0}")]
    Out(PumpError),
    /// The stream failed (reset, the session closed), or writing its bytes
    /// to the connection did.
    #[error("inbound: {0}")]
    In(std::io::Error),
}

/// Joins a connection (`reader`, `writer`) and a raw stream (`send`,
/// `recv`) until both directions have ended, each with its end of file
/// (carried as END, and from END to a write shutdown: a half-close). The
/// first failure either way ends both at once: the caller then drops the
/// connection. Returns the bytes copied out and in.
pub async fn relay<R, W, H>(
    reader: R,
    writer: W,
    send: SendHalf<H>,
    recv: RecvBody<H>,
) -> Result<(u64, u64), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    H: Send + 'static,
{
    let out = copy_into_stream(reader, send);
    let inbound = copy_from_stream(recv, writer);
    tokio::pin!(out, inbound);
    let (mut sent, mut received) = (None, None);
    loop {
        tokio::select! {
            copied = &mut out, if sent.is_none() => {
                sent = Some(copied.map_err(RelayError::Out)?);
            }
            copied = &mut inbound, if received.is_none() => {
                received = Some(copied.map_err(RelayError::In)?);
            }
        }
        if let (Some(sent), Some(received)) = (sent, received) {
            return Ok((sent, received));
        }
    }
}
