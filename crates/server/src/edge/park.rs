//! Idle keep-alive connections held without hyper's buffers.
//!
//! hyper keeps a connection's read buffer (8 to 16 KiB), write buffer
//! (8 KiB) and dispatcher for as long as the connection lives, busy or idle;
//! a browser holds several keep-alive connections open per page, most of
//! them idle. So when a connection has nothing in flight, everything
//! written and hyper waiting for the next request head, `listen` takes the
//! socket back from hyper (`into_parts`) and parks it: the task waits for
//! the TCP socket to become readable holding nothing but the connection
//! (for HTTPS, with its TLS session) and the small state here, then serves
//! the next request with a fresh hyper connection, bytes hyper had already
//! read replayed first.
//!
//! [`Activity`] is what tells a connection is quiet: requests in flight
//! (each request's body and its response's body hold a [`Busy`] until they
//! are dropped: a response may end while its request's body still arrives,
//! and those bytes must reach hyper, not a parked socket), responses
//! finished, and what [`Parkable`] saw hyper do with the socket last.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One connection's requests and socket use, shared by its service and its
/// socket wrapper. All on the connection's task but one: a request body
/// may end on the task uploading it, and then hyper, whose body channel
/// sees its receiver dropped, wakes the connection's task, which looks
/// again (`keepalive.rs`, a connection whose upload ends after its
/// response); that wake-up orders the relaxed atomics.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Bodies (each request's and each response's) not dropped yet.
    in_flight: AtomicUsize,
    /// Bodies dropped so far.
    finished: AtomicU64,
    /// hyper's last read found nothing to read.
    read_waiting: AtomicBool,
    /// Bytes were written since the last completed flush.
    dirty: AtomicBool,
}

impl Activity {
    /// A body begins; it ends when the returned guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(Arc::clone(self))
    }

    /// Bodies not finished yet.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Bodies finished so far.
    pub(crate) fn finished(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }

    /// True when a body finished after the `seen`th, none is in flight,
    /// everything written has been flushed and hyper waits for bytes: the
    /// connection is idle between requests.
    pub(crate) fn quiet_since(&self, seen: u64) -> bool {
        self.finished() > seen
            && self.in_flight.load(Ordering::Relaxed) == 0
            && self.read_waiting.load(Ordering::Relaxed)
            && !self.dirty.load(Ordering::Relaxed)
    }
}

/// A body in flight; dropped with it.
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.finished.fetch_add(1, Ordering::Relaxed);
    }
}

/// A body (a visitor's request body, or the response hyper writes) that
/// keeps its request in flight until it is dropped.
#[derive(Debug)]
pub(crate) struct Tracked<B> {
    inner: B,
    _busy: Busy,
}

impl<B> Tracked<B> {
    pub(crate) fn new(inner: B, busy: Busy) -> Self {
        Tracked { inner, _busy: busy }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A visitor's request body, as the gateway sees it.
pub(crate) type VisitorBody = Tracked<hyper::body::Incoming>;

/// The socket as hyper sees it: bytes taken back from an earlier hyper
/// connection are read first, and reads and writes are noted in the
/// connection's [`Activity`].
pub(crate) struct Parkable<T> {
    io: T,
    replay: Bytes,
    activity: Arc<Activity>,
}

impl<T> Parkable<T> {
    pub(crate) fn new(io: T, activity: Arc<Activity>) -> Self {
        Parkable {
            io,
            replay: Bytes::new(),
            activity,
        }
    }

    /// Bytes hyper had read and not used: they are read again first. (An
    /// empty buffer is not kept: it would still hold hyper's allocation.)
    pub(crate) fn replay(&mut self, bytes: Bytes) {
        self.replay = if bytes.is_empty() {
            Bytes::new()
        } else {
            bytes
        };
    }

    /// True when bytes are waiting to be read again.
    pub(crate) fn has_replay(&self) -> bool {
        !self.replay.is_empty()
    }

    pub(crate) fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Parkable<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            if this.replay.is_empty() {
                this.replay = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        this.activity
            .read_waiting
            .store(polled.is_pending(), Ordering::Relaxed);
        polled
    }
}

impl<T: AsyncWrite + Unpin> Parkable<T> {
    fn wrote(&self, polled: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = &polled {
            if *n > 0 {
                self.activity.dirty.store(true, Ordering::Relaxed);
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Parkable<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = polled {
            this.activity.dirty.store(false, Ordering::Relaxed);
        }
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn replayed_bytes_come_before_the_socket() {
        let (mut peer, io) = tokio::io::duplex(64);
        let mut parkable = Parkable::new(io, Arc::default());
        parkable.replay(Bytes::from_static(b"GET / HT"));
        peer.write_all(b"TP/1.1\r\n").await.unwrap();
        let mut got = vec![0; 16];
        parkable.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"GET / HTTP/1.1\r\n");
        assert!(!parkable.has_replay());
    }

    #[tokio::test]
    async fn quiet_only_after_a_finished_response_flushed_and_a_waiting_read() {
        let (_peer, io) = tokio::io::duplex(64);
        let activity = Arc::new(Activity::default());
        let mut parkable = Parkable::new(io, Arc::clone(&activity));
        let busy = activity.begin();
        parkable.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        // In flight and unflushed: not quiet.
        assert!(!activity.quiet_since(0));
        drop(busy);
        assert!(!activity.quiet_since(0), "written but not flushed");
        parkable.flush().await.unwrap();
        assert!(!activity.quiet_since(0), "no read waits yet");
        let mut buf = [0; 1];
        let read = parkable.read(&mut buf);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(10), read)
                .await
                .is_err()
        );
        assert!(activity.quiet_since(0));
        assert!(!activity.quiet_since(1), "no response since the first");
    }
}
