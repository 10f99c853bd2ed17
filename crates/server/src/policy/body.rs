//! Limits on a visitor's request body: its size, and how long the server
//! waits for its next bytes.
//!
//! A body of declared length over the limit is refused before a byte of it
//! is read (413). Otherwise [`BodyGuard`] counts the bytes as they stream
//! and fails the body at the first byte over the limit, or when the visitor
//! leaves the server waiting for the next bytes longer than the idle
//! timeout; it records which on a [`Tripwire`], so the request can be
//! answered 413 or 408 (or, if the response has already begun, cut off).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::body::BoxError;
use crate::error::GatewayError;

/// Why a [`BodyGuard`] stopped a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyLimit {
    /// More bytes than the limit.
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
    /// No bytes for this long.
    #[error("no request body bytes arrived for {0:?}")]
    Idle(Duration),
}

impl From<BodyLimit> for GatewayError {
    fn from(limit: BodyLimit) -> Self {
        match limit {
            BodyLimit::TooLarge(n) => GatewayError::BodyTooLarge(n),
            BodyLimit::Idle(d) => GatewayError::BodyTimeout(d),
        }
    }
}

/// Where a guard records that it stopped a body, for whoever waits on the
/// response to read.
#[derive(Debug, Default)]
pub struct Tripwire(Mutex<Option<BodyLimit>>);

impl Tripwire {
    fn trip(&self, why: BodyLimit) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// The limit that stopped the body, if one did.
    pub fn tripped(&self) -> Option<BodyLimit> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A request body with a size limit and an idle timeout.
///
/// The idle timer runs only while the guard is waiting on the visitor: it
/// starts when the next frame is asked for and is not ready, and stops when
/// a frame comes. Time the consumer spends elsewhere (waiting for the
/// tunnel's credit) is not the visitor's fault and does not count.
pub struct BodyGuard<B> {
    inner: B,
    limit: Option<u64>,
    seen: u64,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    tripwire: Arc<Tripwire>,
}

impl<B> BodyGuard<B> {
    /// Guards `inner`: at most `limit` bytes, at most `idle` between them.
    pub fn new(inner: B, limit: Option<u64>, idle: Duration, tripwire: Arc<Tripwire>) -> Self {
        BodyGuard {
            inner,
            limit,
            seen: 0,
            idle,
            timer: None,
            tripwire,
        }
    }

    /// The size limit, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    fn stop(&mut self, why: BodyLimit) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.tripwire.trip(why);
        Poll::Ready(Some(Err(Box::new(why))))
    }
}

impl<B> Body for BodyGuard<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_pending() {
            let idle = this.idle;
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
            ready!(timer.as_mut().poll(cx));
            return this.stop(BodyLimit::Idle(idle));
        }
        this.timer = None;
        match ready!(polled) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if let Some(limit) = this.limit.filter(|l| this.seen > *l) {
                        return this.stop(BodyLimit::TooLarge(limit));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(err)) => Poll::Ready(Some(Err(err.into()))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[tokio::test]
    async fn bodies_over_the_limit_trip() {
        let tripwire = Arc::new(Tripwire::default());
        let body = Full::new(Bytes::from(vec![0; 11]));
        let guard = BodyGuard::new(body, Some(10), Duration::from_secs(5), tripwire.clone());
        assert!(guard.collect().await.is_err());
        assert_eq!(tripwire.tripped(), Some(BodyLimit::TooLarge(10)));

        let tripwire = Arc::new(Tripwire::default());
        let body = Full::new(Bytes::from(vec![0; 10]));
        let guard = BodyGuard::new(body, Some(10), Duration::from_secs(5), tripwire.clone());
        assert_eq!(guard.collect().await.unwrap().to_bytes().len(), 10);
        assert_eq!(tripwire.tripped(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_trips_after_the_idle_timeout() {
        let tripwire = Arc::new(Tripwire::default());
        let stalled = futures_util::stream::pending::<Result<Frame<Bytes>, std::io::Error>>();
        let body = StreamBody::new(stalled);
        let guard = BodyGuard::new(body, None, Duration::from_secs(5), tripwire.clone());
        assert!(guard.collect().await.is_err());
        assert_eq!(
            tripwire.tripped(),
            Some(BodyLimit::Idle(Duration::from_secs(5)))
        );
    }
}
