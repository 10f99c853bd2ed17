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
