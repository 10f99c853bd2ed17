//! A TLS connection's ClientHello read before anything is answered: its
//! server name (SNI) decides whether the connection is passed through,
//! undecrypted, to a TLS tunnel (the handler's choice, see
//! [`super::conn::Handler::pass_through`]) or terminated here.
//!
//! The bytes read are kept: a passed-through connection sends them on
//! first, and a terminated one replays them into the TLS handshake
//! ([`Rewind`]). A ClientHello may span several reads (post-quantum key
//! shares make it larger than one segment); rustls's own parser
//! (`rustls::server::Acceptor`) says when it is whole. At most
//! [`MAX_HELLO`] bytes are read for it, within the handshake's deadline.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The most a ClientHello may take, records included.
pub(crate) const MAX_HELLO: usize = 64 * 1024;

/// Why no ClientHello was read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HelloError {
    #[error("the connection closed before its ClientHello")]
    Closed,
    #[error("the ClientHello is over {MAX_HELLO} bytes")]
    TooLarge,
    #[error("not a TLS ClientHello: {0}")]
    NotTls(rustls::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads `stream`'s ClientHello: the server name it asks for (if any),
/// and every byte read.
pub(crate) async fn read(stream: &mut TcpStream) -> Result<(Option<String>, Bytes), HelloError> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut read = BytesMut::with_capacity(2048);
    loop {
        if read.len() >= MAX_HELLO {
            return Err(HelloError::TooLarge);
        }
        let before = read.len();
        if stream.read_buf(&mut read).await? == 0 {
            return Err(HelloError::Closed);
        }
        let mut fresh = &read[before..];
        while !fresh.is_empty() {
            if acceptor.read_tls(&mut fresh)? == 0 {
                break;
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let name = accepted.client_hello().server_name().map(str::to_owned);
                return Ok((name, read.freeze()));
            }
            Ok(None) => {}
            Err((err, _alert)) => return Err(HelloError::NotTls(err)),
        }
    }
}

/// A TCP stream whose first bytes, already read, are read again.
#[derive(Debug)]
pub(crate) struct Rewind {
    ahead: Bytes,
    inner: TcpStream,
}

impl Rewind {
    /// `inner`, `ahead` read from it first.
    pub(crate) fn new(ahead: Bytes, inner: TcpStream) -> Self {
        Rewind { ahead, inner }
    }

    /// The TCP stream.
    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.inner
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.ahead.has_remaining() {
            let n = self.ahead.len().min(buf.remaining());
            buf.put_slice(&self.ahead[..n]);
            self.ahead.advance(n);
            if self.ahead.is_empty() {
                // Its memory goes now, not with the connection.
                self.ahead = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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
