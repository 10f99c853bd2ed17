//! A byte stream whose bytes are tallied as they pass, read by read and
//! write by write: those read (`in`) and those written (`out`). The server
//! counts a visitor's raw bytes with it (a protocol switch's upgraded
//! connection, a TCP or TLS tunnel's connection), the client a TCP tunnel's
//! connection to its local service, so that a connection cut midway still
//! says what it carried.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Where a [`Counted`] stream's bytes are tallied.
pub trait Tally: Unpin {
    /// `n` bytes were read.
    fn add_in(&self, n: u64);
    /// `n` bytes were written.
    fn add_out(&self, n: u64);
}

/// `inner`, its bytes tallied in `tally` read by read and write by write.
pub struct Counted<T, C> {
    inner: T,
    tally: C,
}

impl<T, C> Counted<T, C> {
    /// `inner`, its bytes tallied in `tally`.
    pub fn new(inner: T, tally: C) -> Self {
        Counted { inner, tally }
    }
}

impl<T: AsyncRead + Unpin, C: Tally> AsyncRead for Counted<T, C> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.tally.add_in(n as u64);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin, C: Tally> AsyncWrite for Counted<T, C> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.tally.add_out(*n as u64);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &polled {
            self.tally.add_out(*n as u64);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
