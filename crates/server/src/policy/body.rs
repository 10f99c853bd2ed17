//! Limits on a visitor's request body: its size, how long the server waits
//! for its next bytes, and how slowly it may arrive in all.
//!
//! A body of declared length over the limit is refused before a byte of it
//! is read (413). Otherwise [`BodyGuard`] counts the bytes as they stream
//! and fails the body at the first byte over the limit, when the visitor
//! leaves the server waiting for the next bytes longer than the idle
//! timeout, or when it arrives slower than the minimum rate ([`MinRate`]:
//! a byte every ten seconds never trips an idle timeout, but holds a
//! request, and a stream of its tunnel, for as long as the visitor likes);
//! it records which on a [`Tripwire`], so the request can be answered 413
//! or 408 (or, if the response has already begun, cut off).
//!
//! A body that is one side of a conversation (an HTTP/2 stream of
//! messages, as a gRPC streaming call's: [`Tripwire::converse`]) has no
//! timers once the local service has answered: its pauses are the
//! conversation's, as a WebSocket's are.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

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
    /// Slower than this many bytes a second, once past the grace.
    #[error("the request body arrived slower than {0} bytes a second")]
    TooSlow(u64),
}

impl From<BodyLimit> for GatewayError {
    fn from(limit: BodyLimit) -> Self {
        match limit {
            BodyLimit::TooLarge(n) => GatewayError::BodyTooLarge(n),
            BodyLimit::Idle(d) => GatewayError::BodyTimeout(d),
            BodyLimit::TooSlow(rate) => GatewayError::BodyTooSlow(rate),
        }
    }
}

/// Where a guard records that it stopped a body, for whoever waits on the
/// response to read; and where that side says the exchange became a
/// conversation.
#[derive(Debug, Default)]
pub struct Tripwire {
    tripped: Mutex<Option<BodyLimit>>,
    conversing: AtomicBool,
}

impl Tripwire {
    fn trip(&self, why: BodyLimit) {
        *self.tripped.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// The limit that stopped the body, if one did.
    pub fn tripped(&self) -> Option<BodyLimit> {
        *self.tripped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The local service answered a body that is one side of a
    /// conversation: from now on the guard waits on the visitor without
    /// timers (the size limit still holds).
    pub fn converse(&self) {
        self.conversing.store(true, Ordering::Relaxed);
    }

    fn conversing(&self) -> bool {
        self.conversing.load(Ordering::Relaxed)
    }
}

/// The slowest a body may arrive (Apache's `mod_reqtimeout` `MinRate`):
/// the visitor may keep the server waiting `grace`, and one second more for
/// every `bytes_per_sec` bytes it has sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinRate {
    /// Bytes a second, on average, past the grace.
    pub bytes_per_sec: u64,
    /// Waiting allowed before any byte counts.
    pub grace: Duration,
}

impl MinRate {
    /// How long in all a visitor that has sent `seen` bytes may have kept
    /// the server waiting.
    pub fn allowance(&self, seen: u64) -> Duration {
        let earned = Duration::from_secs_f64(seen as f64 / self.bytes_per_sec.max(1) as f64);
        self.grace.saturating_add(earned)
    }
}

/// How long the guard may wait for the visitor from now, and what it trips
/// with then: the idle timeout, or what is left of the rate's allowance
/// after `waited` in all, whichever is sooner.
fn wait_limit(
    idle: Duration,
    rate: Option<MinRate>,
    seen: u64,
    waited: Duration,
) -> (Duration, BodyLimit) {
    let by_idle = (idle, BodyLimit::Idle(idle));
    match rate {
        Some(rate) => {
            let left = rate.allowance(seen).saturating_sub(waited);
            if left < idle {
                (left, BodyLimit::TooSlow(rate.bytes_per_sec))
            } else {
                by_idle
            }
        }
        None => by_idle,
    }
}

/// A request body with a size limit, an idle timeout and a minimum rate.
///
/// The timers run only while the guard is waiting on the visitor: from
/// when the next frame is asked for and is not ready until a frame comes.
/// Time the consumer spends elsewhere (waiting for the tunnel's credit) is
/// not the visitor's fault and does not count, towards either.
pub struct BodyGuard<B> {
    inner: B,
    limit: Option<u64>,
    seen: u64,
    idle: Duration,
    rate: Option<MinRate>,
    /// Time spent waiting on the visitor so far, and since when it has
    /// been waiting now, if it is.
    waited: Duration,
    waiting_since: Option<Instant>,
    timer: Option<(Pin<Box<Sleep>>, BodyLimit)>,
    tripwire: Arc<Tripwire>,
}

impl<B> BodyGuard<B> {
    /// Guards `inner`: at most `limit` bytes, at most `idle` between them,
    /// no slower than `rate`.
    pub fn new(
        inner: B,
        limit: Option<u64>,
        (idle, rate): (Duration, Option<MinRate>),
        tripwire: Arc<Tripwire>,
    ) -> Self {
        BodyGuard {
            inner,
            limit,
            seen: 0,
            idle,
            rate,
            waited: Duration::ZERO,
            waiting_since: None,
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
        if polled.is_pending() && this.tripwire.conversing() {
            this.waiting_since = None;
            this.timer = None;
            return Poll::Pending;
        }
        if polled.is_pending() {
            let since = *this.waiting_since.get_or_insert_with(Instant::now);
            let (idle, rate, seen, waited) = (this.idle, this.rate, this.seen, this.waited);
            let (timer, why) = this.timer.get_or_insert_with(|| {
                let (limit, why) = wait_limit(idle, rate, seen, waited);
                (Box::pin(tokio::time::sleep_until(since + limit)), why)
            });
            ready!(timer.as_mut().poll(cx));
            let why = *why;
            return this.stop(why);
        }
        if let Some(since) = this.waiting_since.take() {
            this.waited += since.elapsed();
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
        let guard = BodyGuard::new(
            body,
            Some(10),
            (Duration::from_secs(5), None),
            tripwire.clone(),
        );
        assert!(guard.collect().await.is_err());
        assert_eq!(tripwire.tripped(), Some(BodyLimit::TooLarge(10)));

        let tripwire = Arc::new(Tripwire::default());
        let body = Full::new(Bytes::from(vec![0; 10]));
        let guard = BodyGuard::new(
            body,
            Some(10),
            (Duration::from_secs(5), None),
            tripwire.clone(),
        );
        assert_eq!(guard.collect().await.unwrap().to_bytes().len(), 10);
        assert_eq!(tripwire.tripped(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_trips_after_the_idle_timeout() {
        let tripwire = Arc::new(Tripwire::default());
        let stalled = futures_util::stream::pending::<Result<Frame<Bytes>, std::io::Error>>();
        let body = StreamBody::new(stalled);
        let guard = BodyGuard::new(body, None, (Duration::from_secs(5), None), tripwire.clone());
        assert!(guard.collect().await.is_err());
        assert_eq!(
            tripwire.tripped(),
            Some(BodyLimit::Idle(Duration::from_secs(5)))
        );
    }

    #[test]
    fn the_rate_earns_waiting_time_byte_by_byte() {
        let rate = MinRate {
            bytes_per_sec: 500,
            grace: Duration::from_secs(10),
        };
        let idle = Duration::from_secs(30);
        assert_eq!(rate.allowance(0), Duration::from_secs(10));
        assert_eq!(rate.allowance(1000), Duration::from_secs(12));
        let secs = Duration::from_secs;
        // Early on, the grace is what is left.
        assert_eq!(
            wait_limit(idle, Some(rate), 0, secs(4)),
            (secs(6), BodyLimit::TooSlow(500))
        );
        // A fast body has earned more than the idle timeout: idle it is.
        let fast = wait_limit(idle, Some(rate), 1_000_000, secs(4));
        assert_eq!(fast, (idle, BodyLimit::Idle(idle)));
        // Used up: nothing more to wait.
        assert_eq!(
            wait_limit(idle, Some(rate), 500, secs(20)).0,
            Duration::ZERO
        );
        assert_eq!(
            wait_limit(idle, None, 0, secs(99)),
            (idle, BodyLimit::Idle(idle))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dripping_body_trips_the_minimum_rate_though_never_idle() {
        let tripwire = Arc::new(Tripwire::default());
        // A byte every 5 s: never idle for 30 s, far under 500 B/s.
        let drip = futures_util::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Some((
                Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"x"))),
                (),
            ))
        });
        let rate = MinRate {
            bytes_per_sec: 500,
            grace: Duration::from_secs(10),
        };
        let body = StreamBody::new(Box::pin(drip));
        let start = Instant::now();
        let guard = BodyGuard::new(
            body,
            None,
            (Duration::from_secs(30), Some(rate)),
            tripwire.clone(),
        );
        assert!(guard.collect().await.is_err());
        assert_eq!(tripwire.tripped(), Some(BodyLimit::TooSlow(500)));
        // About the grace, plus what two bytes earned.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(10) && took < Duration::from_secs(11),
            "{took:?}"
        );
    }
}
