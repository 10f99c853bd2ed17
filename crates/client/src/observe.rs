//! What the forwarding core reports about each exchange to whoever watches
//! (the request inspector is the one watcher today): the session's
//! tunnels, a request's arrival, its response head, both bodies' bytes as
//! they pass, and how the exchange ended. The core knows only these
//! traits; the watcher decides what to keep.
//!
//! [`Watch`] is the core's side of one exchange: its watcher, or none, each
//! method then a no-op that hands its input back unchanged. [`Tee`] is the
//! body wrapper that reports a body's chunks as they pass; it adds no
//! buffering and no waiting.
//!
//! A request body the local service drops before its end (an app that
//! answers 501 or 413 without reading) is read on from the visitor by a
//! task of its own ([`ReadOn`]), as long as the watcher still wants bytes
//! and for [`READ_ON_TIMEOUT`] at most, so the watcher sees what was sent;
//! the exchange itself does not wait for it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use cryptun_proto::RequestHead;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use http_body_util::combinators::BoxBody;
use tracing::Instrument as _;

use crate::{Events, Target};

/// The longest a request body the local service dropped is read on from
/// the visitor for its watcher: a form or a webhook has long arrived by
/// then, and a visitor sending slowly does not keep a task for long.
pub(crate) const READ_ON_TIMEOUT: Duration = Duration::from_secs(5);

/// Watches a session's exchanges.
pub(crate) trait Observer: Send + Sync {
    /// The session's tunnels, first one first, as a connection (or a
    /// reconnection) made them, and where the session reports events.
    fn connected(&self, tunnels: Vec<TunnelInfo>, events: Events);

    /// A request has just arrived on tunnel `tunnel`, on its way to
    /// `target`: the watcher of this exchange.
    fn exchange(
        &self,
        tunnel: &Arc<str>,
        target: &Target,
        head: &RequestHead,
    ) -> Box<dyn ExchangeObserver>;
}

/// Watches one exchange.
pub(crate) trait ExchangeObserver: Send + Sync {
    /// A watcher for one of the exchange's bodies, if it wants one;
    /// `exact` is the body's length when the body itself knows it.
    fn body(&self, which: Which, exact: Option<u64>) -> Option<Box<dyn BodyObserver>>;

    /// The local service's response head.
    fn response_head(&self, status: u16, headers: &HeaderMap);

    /// How the exchange ended: the status the visitor got (0 if they went
    /// away first) and what failed, if anything.
    fn finish(&self, status: u16, error: Option<String>);
}

/// Watches one body as it passes. A body dropped before its end gets no
/// [`end`](BodyObserver::end): its watcher is dropped with it.
pub(crate) trait BodyObserver: Send + Sync {
    /// A chunk passed.
    fn data(&mut self, data: &Bytes);

    /// The body ended, whole or because its source failed.
    fn end(&mut self, end: BodyEnd);

    /// Whether more of the body would be kept, or would tell its end: a
    /// request body dropped before its end is read on while this holds.
    fn wants_more(&self) -> bool {
        false
    }

    /// The body's reader stopped before its end; what follows is read on
    /// for the watcher alone.
    fn reading_on(&mut self) {}
}

/// Which body of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    Request,
    Response,
}

/// How a body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyEnd {
    /// Every byte passed.
    Complete,
    /// Its source failed, saying this.
    Failed(String),
}

/// One tunnel of the session, as of the latest connection (a reconnect
/// may bring new public URLs).
#[derive(Debug, Clone)]
pub(crate) struct TunnelInfo {
    /// The name the user gave it (`cryptun start NAME`), or its subdomain.
    pub(crate) name: Arc<str>,
    pub(crate) subdomain: String,
    pub(crate) public_url: String,
    /// Its local service.
    pub(crate) target: Target,
}

/// One exchange's watcher, or nothing when nobody watches.
pub(crate) struct Watch(Option<Box<dyn ExchangeObserver>>);

impl Watch {
    /// Starts watching a request that has just arrived on tunnel `tunnel`,
    /// on its way to `target`, if `observer` is there.
    pub(crate) fn start(
        observer: Option<&dyn Observer>,
        tunnel: &Arc<str>,
        target: &Target,
        head: &RequestHead,
    ) -> Watch {
        Watch(observer.map(|observer| observer.exchange(tunnel, target, head)))
    }

    /// Reports to `observer`, an exchange started elsewhere (a replay).
    pub(crate) fn with(observer: Box<dyn ExchangeObserver>) -> Watch {
        Watch(Some(observer))
    }

    /// Wraps the request body on its way to the local service (and leaves
    /// it as it is when nobody watches it); dropped before its end, it is
    /// read on for the watcher ([`ReadOn`]).
    pub(crate) fn request_body<E>(&self, body: BoxBody<Bytes, E>) -> BoxBody<Bytes, E>
    where
        E: std::fmt::Display + 'static,
    {
        match self.body(Which::Request, &body) {
            None => body,
            sink => ReadOn(Some(Tee { inner: body, sink }.started())).boxed(),
        }
    }

    /// Reports the local service's response head.
    pub(crate) fn response_head(&self, status: u16, headers: &HeaderMap) {
        if let Some(observer) = &self.0 {
            observer.response_head(status, headers);
        }
    }

    /// Wraps the response body on its way back.
    pub(crate) fn response_body<B>(&self, body: B) -> Tee<B>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        let sink = self.body(Which::Response, &body);
        Tee { inner: body, sink }.started()
    }

    /// Reports how the exchange ended.
    pub(crate) fn finish(&self, status: u16, error: Option<String>) {
        if let Some(observer) = &self.0 {
            observer.finish(status, error);
        }
    }

    fn body<B: Body>(&self, which: Which, body: &B) -> Option<Box<dyn BodyObserver>> {
        let observer = self.0.as_ref()?;
        observer.body(which, body.size_hint().exact())
    }
}

/// A body that reports what passes through it to its watcher; without one
/// it is the body itself.
pub(crate) struct Tee<B> {
    inner: B,
    sink: Option<Box<dyn BodyObserver>>,
}

impl<B: Body> Tee<B> {
    fn started(mut self) -> Self {
        // hyper never polls a body that is already at its end (an empty
        // request body): it is complete now.
        if self.inner.is_end_stream() {
            self.end(BodyEnd::Complete);
        }
        self
    }

    /// Tells the watcher the body ended, once; it wants nothing after.
    fn end(&mut self, end: BodyEnd) {
        if let Some(mut sink) = self.sink.take() {
            sink.end(end);
        }
    }

    /// Whether the watcher would keep more of the body.
    fn wants_more(&self) -> bool {
        self.sink.as_ref().is_some_and(|sink| sink.wants_more())
    }
}

impl<B> Body for Tee<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_frame(cx);
        if this.sink.is_some() {
            match &poll {
                Poll::Ready(Some(Ok(frame))) => {
                    if let (Some(data), Some(sink)) = (frame.data_ref(), &mut this.sink) {
                        sink.data(data);
                    }
                    // Readers that trust `is_end_stream` stop here without
                    // polling for the end.
                    if this.inner.is_end_stream() {
                        this.end(BodyEnd::Complete);
                    }
                }
                Poll::Ready(Some(Err(err))) => this.end(BodyEnd::Failed(err.to_string())),
                Poll::Ready(None) => this.end(BodyEnd::Complete),
                Poll::Pending => {}
            }
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A watched request body that, dropped before its end while its watcher
/// still wants bytes, hands itself to a task that reads on (for at most
/// [`READ_ON_TIMEOUT`]) so the watcher sees what the visitor sent.
struct ReadOn<E: std::fmt::Display + 'static>(Option<Tee<BoxBody<Bytes, E>>>);

impl<E: std::fmt::Display + 'static> Body for ReadOn<E> {
    type Data = Bytes;
    type Error = E;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, E>>> {
        match &mut self.0 {
            Some(tee) => Pin::new(tee).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(Tee::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.0.as_ref().map(Tee::size_hint).unwrap_or_default()
    }
}

impl<E: std::fmt::Display + 'static> Drop for ReadOn<E> {
    fn drop(&mut self) {
        let Some(mut tee) = self.0.take() else {
            return;
        };
        if !tee.wants_more() {
            return;
        }
        // Outside a runtime (never, in the client) the body is just dropped.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some(sink) = &mut tee.sink {
            sink.reading_on();
        }
        let read_on = async move {
            let read = async {
                while tee.wants_more() {
                    match std::future::poll_fn(|cx| Pin::new(&mut tee).poll_frame(cx)).await {
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    }
                }
            };
            // Cut off, the watcher is dropped with the body: it says how
            // much it saw.
            let _ = tokio::time::timeout(READ_ON_TIMEOUT, read).await;
        };
        runtime.spawn(read_on.instrument(tracing::debug_span!("inspector_read_on")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A visitor's body that sends one chunk, then nothing, never ending.
    struct Dripping(bool);

    impl Body for Dripping {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if std::mem::replace(&mut self.0, true) {
                Poll::Pending
            } else {
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"hello")))))
            }
        }
    }

    /// A watcher that always wants more, and says when it is dropped.
    struct Wanting {
        seen: Arc<AtomicUsize>,
        gone: Arc<AtomicBool>,
    }

    impl BodyObserver for Wanting {
        fn data(&mut self, data: &Bytes) {
            self.seen.fetch_add(data.len(), Ordering::SeqCst);
        }
        fn end(&mut self, _: BodyEnd) {}
        fn wants_more(&self) -> bool {
            true
        }
    }

    impl Drop for Wanting {
        fn drop(&mut self) {
            self.gone.store(true, Ordering::SeqCst);
        }
    }

    struct Exchange(Mutex<Option<Wanting>>);

    impl ExchangeObserver for Exchange {
        fn body(&self, which: Which, _: Option<u64>) -> Option<Box<dyn BodyObserver>> {
            let wanting = self.0.lock().unwrap().take()?;
            (which == Which::Request).then(|| Box::new(wanting) as Box<dyn BodyObserver>)
        }
        fn response_head(&self, _: u16, _: &HeaderMap) {}
        fn finish(&self, _: u16, _: Option<String>) {}
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_read_on_for_its_watcher_is_cut_off_at_the_timeout() {
        let (seen, gone) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let wanting = Wanting {
            seen: Arc::clone(&seen),
            gone: Arc::clone(&gone),
        };
        let watch = Watch::with(Box::new(Exchange(Mutex::new(Some(wanting)))));
        // The local service drops the body unread: it is read on.
        drop(watch.request_body(Dripping(false).boxed()));
        tokio::time::sleep(READ_ON_TIMEOUT - Duration::from_millis(100)).await;
        assert_eq!(seen.load(Ordering::SeqCst), 5, "the chunk sent is seen");
        assert!(!gone.load(Ordering::SeqCst), "still reading on");
        // A visitor that never finishes does not keep the task past it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(gone.load(Ordering::SeqCst), "read on past READ_ON_TIMEOUT");
    }
}
