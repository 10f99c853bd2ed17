//! Large socket reads under a WebSocket layer that asks for small ones.
//!
//! tungstenite reads at most its read buffer size per call, and that buffer
//! is resident on every connection (it is zero-filled before each read), so
//! [`Limits::websocket_config`](crate::Limits::websocket_config) keeps it at
//! 4 KiB for the sake of idle tunnels. A 1 MiB body then costs some 256
//! `recv` calls. [`ReadAhead`] sits between the socket and tungstenite: while
//! reads keep coming back full (a body is streaming in) it reads up to 64 KiB
//! at a time into a buffer of its own and hands tungstenite the bytes from
//! there; as soon as the socket has nothing more to give, the buffer is freed
//! and reads go straight through again. An idle connection holds no buffer,
//! and a small message is never copied twice.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket at a time while streaming: half a full data
/// frame (`max_frame_payload`). 32 KiB measured no different; the buffer
/// is held by every session while it streams, and freed when idle.
const READ_AHEAD: usize = 64 << 10;

/// A byte stream whose reads grow to 64 KiB while data is streaming in.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    /// Read from the socket, not yet handed out. Empty (no allocation) unless
    /// streaming.
    ahead: BytesMut,
    /// The last read filled everything it was given: more is likely waiting.
    streaming: bool,
}

impl<S> ReadAhead<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        ReadAhead {
            inner,
            ahead: BytesMut::new(),
            streaming: false,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream, and what was read from it and not yet handed
    /// out.
    pub fn into_parts(self) -> (S, BytesMut) {
        (self.inner, self.ahead)
    }

    /// Copies what it can from the read-ahead buffer into `out`, freeing the
    /// buffer once it is drained and the stream is no longer busy.
    fn hand_out(&mut self, out: &mut ReadBuf<'_>) {
        let n = out.remaining().min(self.ahead.len());
        out.put_slice(&self.ahead[..n]);
        self.ahead.advance(n);
        if self.ahead.is_empty() && !self.streaming {
            self.ahead = BytesMut::new();
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if !this.ahead.is_empty() {
            this.hand_out(out);
            return Poll::Ready(Ok(()));
        }
        if !this.streaming {
            let want = out.remaining();
            let before = out.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
            this.streaming = out.filled().len() - before == want;
            return Poll::Ready(Ok(()));
        }
        this.ahead.reserve(READ_AHEAD);
        let read = tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.ahead);
        let n = match read {
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(err)) => {
                this.streaming = false;
                this.ahead = BytesMut::new();
                return Poll::Ready(Err(err));
            }
            Poll::Pending => {
                // The socket is drained: the burst is over.
                this.streaming = false;
                this.ahead = BytesMut::new();
                return Poll::Pending;
            }
        };
        this.streaming = n >= READ_AHEAD;
        this.hand_out(out);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Every byte arrives once and in order, whether the reads go straight
    /// through, through the read-ahead buffer, or switch between the two.
    #[tokio::test]
    async fn hands_out_every_byte_in_order() {
        let (mut tx, rx) = tokio::io::duplex(256 << 10);
        let data: Vec<u8> = (0..(1usize << 20) + 7)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            // Bursts and trickles, so reads both fill and come back short.
            for (i, chunk) in sent.chunks(70_000).enumerate() {
                tx.write_all(chunk).await.expect("write");
                if i % 3 == 0 {
                    tx.write_all(&[]).await.expect("write");
                    tokio::task::yield_now().await;
                }
            }
        });
        let mut reader = ReadAhead::new(rx);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = reader.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        writer.await.expect("writer");
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes differ");
    }

    /// Once the burst is over the buffer is let go: an idle connection holds
    /// nothing.
    #[tokio::test]
    async fn frees_the_buffer_when_idle() {
        let (mut tx, rx) = tokio::io::duplex(256 << 10);
        tx.write_all(&vec![7u8; 200 << 10]).await.expect("write");
        let mut reader = ReadAhead::new(rx);
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while total < 200 << 10 {
            total += reader.read(&mut buf).await.expect("read");
        }
        assert!(reader.streaming || reader.ahead.capacity() == 0);
        // Nothing more is coming: the next read waits, and lets go first.
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(50), reader.read(&mut buf)).await;
        assert!(pending.is_err(), "read returned without data");
        assert_eq!(reader.ahead.capacity(), 0);
        assert!(!reader.streaming);
    }
}
