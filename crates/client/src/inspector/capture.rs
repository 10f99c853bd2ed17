//! The hook `forward` calls for each exchange ([`Tap`]), and [`Tee`], the
//! body wrapper that copies the first bytes of a body as its chunks pass.
//!
//! The tee adds no buffering and no waiting: each chunk is handed on as it
//! came, after copying at most what is left of the body's allowance under
//! a briefly held lock. Once the allowance is spent, it only counts.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use cryptun_proto::RequestHead;
use cryptun_proto::head::headers_to_wire;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use http_body_util::combinators::BoxBody;

use super::{BodyState, Captured, Change, Entry, Finished, Inspector, ResponseHead, Via};
use crate::Target;

/// One exchange's capture, or nothing when the inspector is off: every
/// method is then a no-op that hands its input back unchanged.
pub(crate) struct Tap(Option<Recording>);

/// A live capture: the store and the exchange's entry in it.
#[derive(Clone)]
pub(crate) struct Recording {
    pub(crate) inspector: Inspector,
    pub(crate) entry: Arc<Entry>,
}

/// Which body of an exchange a tee fills.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side {
    Request,
    Response,
}

impl Tap {
    /// Starts recording a request that has just arrived on tunnel
    /// `tunnel`, on its way to `target`.
    pub(crate) fn start(
        inspector: Option<&Inspector>,
        tunnel: &Arc<str>,
        target: &Target,
        head: &RequestHead,
    ) -> Tap {
        Tap(inspector.map(|inspector| Recording {
            inspector: inspector.clone(),
            entry: inspector.record(
                Via {
                    tunnel: Arc::clone(tunnel),
                    target: target.clone(),
                },
                head.method.clone(),
                head.path.clone(),
                head.headers.clone(),
                None,
            ),
        }))
    }

    /// Continues a recording made elsewhere (a replay).
    pub(crate) fn from_recording(recording: Recording) -> Tap {
        Tap(Some(recording))
    }

    /// Wraps the request body on its way to the local service (and leaves
    /// it as it is when the inspector is off).
    pub(crate) fn request_body<E>(&self, body: BoxBody<Bytes, E>) -> BoxBody<Bytes, E>
    where
        E: std::fmt::Display + 'static,
    {
        match self.sink(Side::Request) {
            None => body,
            Some(mut sink) => {
                // A reader may stop at the last declared byte without
                // polling for the end: the body is whole all the same.
                let record = sink.recording.entry.lock();
                sink.expected = super::view::header(&record.request_headers, "content-length")
                    .and_then(|len| len.trim().parse().ok());
                drop(record);
                Tee::new(body, Some(sink)).boxed()
            }
        }
    }

    /// Records the local service's response head.
    pub(crate) fn response_head(&self, status: u16, headers: &HeaderMap) {
        self.update(|record, after| {
            record.response = Some(ResponseHead {
                status,
                headers: headers_to_wire(headers),
                after,
            });
            if status == 101 {
                // What follows is another protocol's bytes, not captured;
                // the HTTP body of a 101 is empty.
                record.upgraded = true;
                record.response_body.state = BodyState::Complete;
            }
        });
    }

    /// Wraps the response body on its way back.
    pub(crate) fn response_body<B>(&self, body: B) -> Tee<B>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        Tee::new(body, self.sink(Side::Response))
    }

    /// Records how the exchange ended.
    pub(crate) fn finish(&self, status: u16, error: Option<String>) {
        self.update(|record, total| {
            record.finished = Some(Finished {
                status,
                total,
                error,
            });
        });
    }

    fn sink(&self, side: Side) -> Option<Sink> {
        self.0.clone().map(|recording| Sink {
            recording,
            side,
            expected: None,
            done: false,
        })
    }

    /// Changes the record, passing the time since the request arrived,
    /// and tells the page.
    fn update(&self, change: impl FnOnce(&mut super::Record, Duration)) {
        if let Some(Recording { inspector, entry }) = &self.0 {
            change(&mut entry.lock(), entry.started_at.elapsed());
            inspector.notify(Change::Updated(entry.id));
        }
    }
}

/// A body that copies the start of what passes through it into an
/// exchange's record; without a sink it is the body itself.
pub(crate) struct Tee<B> {
    inner: B,
    sink: Option<Sink>,
}

/// Where a tee writes: one body of one exchange.
struct Sink {
    recording: Recording,
    side: Side,
    /// The body's declared length, if known.
    expected: Option<u64>,
    done: bool,
}

impl<B: Body<Data = Bytes> + Unpin> Tee<B> {
    fn new(inner: B, mut sink: Option<Sink>) -> Self {
        if let Some(sink) = &mut sink {
            sink.expected = sink.expected.or(inner.size_hint().exact());
        }
        // hyper never polls a body that is already at its end (an empty
        // request body): record it as complete now.
        if inner.is_end_stream() {
            if let Some(sink) = &mut sink {
                sink.end(BodyState::Complete);
            }
        }
        Tee { inner, sink }
    }
}

impl Sink {
    fn with_body<T>(&self, f: impl FnOnce(&mut Captured, usize) -> T) -> T {
        let max = self.recording.inspector.limits().max_body;
        let mut record = self.recording.entry.lock();
        let captured = match self.side {
            Side::Request => &mut record.request_body,
            Side::Response => &mut record.response_body,
        };
        f(captured, max)
    }

    fn data(&self, data: &Bytes) {
        self.with_body(|captured, max| {
            captured.size += data.len() as u64;
            let room = max.saturating_sub(captured.bytes.len());
            let take = room.min(data.len());
            captured.bytes.extend_from_slice(&data[..take]);
        });
    }

    fn end(&mut self, state: BodyState) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.with_body(|captured, _| captured.state = state);
        let Recording { inspector, entry } = &self.recording;
        inspector.notify(Change::Updated(entry.id));
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // Dropped before its end: the reader stopped reading, though it
        // may have had every declared byte. A no-op if the body ended.
        let size = self.with_body(|captured, _| captured.size);
        if self.expected == Some(size) {
            self.end(BodyState::Complete);
        } else {
            self.end(BodyState::Abandoned);
        }
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
        if let Some(sink) = &mut this.sink {
            match &poll {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        sink.data(data);
                    }
                    // Readers that trust `is_end_stream` stop here without
                    // polling for the end.
                    if this.inner.is_end_stream() {
                        sink.end(BodyState::Complete);
                    }
                }
                Poll::Ready(Some(Err(err))) => sink.end(BodyState::Failed(err.to_string())),
                Poll::Ready(None) => sink.end(BodyState::Complete),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspector::InspectorLimits;
    use http_body_util::{BodyExt, StreamBody};

    fn tap(max_body: usize) -> (Inspector, Tap) {
        tap_with(max_body, "")
    }

    fn tap_with(max_body: usize, content_length: &str) -> (Inspector, Tap) {
        let inspector = Inspector::new(InspectorLimits {
            capacity: 4,
            max_body,
        });
        let head = RequestHead {
            method: "POST".into(),
            path: "/x".into(),
            headers: vec![
                ("host".into(), "t.localhost".into()),
                ("content-length".into(), content_length.into()),
            ],
            body: cryptun_proto::InlineBody::streamed(),
        };
        let target = Target::parse("3000").unwrap();
        let tap = Tap::start(Some(&inspector), &"web".into(), &target, &head);
        (inspector, tap)
    }

    fn chunks(parts: &[&'static [u8]]) -> impl Body<Data = Bytes, Error = String> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, String>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_tee_passes_everything_and_keeps_only_the_start() {
        let (inspector, tap) = tap(5);
        let body = tap.request_body(chunks(&[b"abc", b"defg", b"hij"]).boxed());
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"abcdefghij");
        let entry = &inspector.entries()[0];
        let record = entry.lock();
        assert_eq!(record.request_body.bytes, b"abcde");
        assert_eq!(record.request_body.size, 10);
        assert!(record.request_body.truncated());
        assert_eq!(record.request_body.state, BodyState::Complete);
    }

    #[tokio::test]
    async fn a_tee_dropped_early_marks_the_body_abandoned() {
        let (inspector, tap) = tap(64);
        let mut body = tap.response_body(chunks(&[b"abc", b"def"]));
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "abc");
        drop(body);
        let entries = inspector.entries();
        let record = entries[0].lock();
        assert_eq!(record.response_body.bytes, b"abc");
        assert_eq!(record.response_body.state, BodyState::Abandoned);
    }

    #[tokio::test]
    async fn a_body_dropped_after_its_declared_length_is_complete() {
        let (inspector, tap) = tap_with(64, "3");
        let mut body = tap.request_body(chunks(&[b"abc", b""]).boxed());
        body.frame().await.unwrap().unwrap();
        drop(body);
        let entries = inspector.entries();
        let record = entries[0].lock();
        assert_eq!(record.request_body.state, BodyState::Complete);
    }

    #[tokio::test]
    async fn an_empty_body_is_complete_without_a_poll() {
        let (inspector, tap) = tap(64);
        drop(tap.request_body(http_body_util::Empty::<Bytes>::new().boxed()));
        let entries = inspector.entries();
        let record = entries[0].lock();
        assert_eq!(record.request_body.state, BodyState::Complete);
        assert_eq!(record.request_body.size, 0);
    }

    #[tokio::test]
    async fn without_an_inspector_nothing_is_recorded() {
        let head = RequestHead {
            method: "GET".into(),
            path: "/".into(),
            headers: Vec::new(),
            body: Default::default(),
        };
        let target = Target::parse("3000").unwrap();
        let tap = Tap::start(None, &"web".into(), &target, &head);
        let body = tap.response_body(chunks(&[b"abc"]));
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abc");
        tap.finish(200, None);
    }
}
