//! The inspector as the forwarding core's [`Observer`]: each exchange
//! becomes an [`Entry`], and a [`Recording`] fills it in as the exchange
//! goes, copying the first bytes of each body as its chunks pass.
//!
//! Copying adds no buffering and no waiting: each chunk is handed on as it
//! came (by the core's `Tee`), after copying at most what is left of the
//! body's allowance under a briefly held lock. Once the allowance is spent,
//! it only counts. What is kept is charged to the list's byte budget.
//!
//! A request body wants more while it has not passed its allowance, so
//! one the local service dropped unread is read on up to it (the core's
//! `ReadOn`) and marked `drained`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cryptun_proto::RequestHead;
use cryptun_proto::head::headers_to_wire;
use http::HeaderMap;

use super::record::headers_cost;
use super::{
    BodyState, Captured, Change, Entry, Finished, Inspector, ResponseHead, TunnelInfo, Via,
};
use crate::observe::{BodyEnd, BodyObserver, ExchangeObserver, Observer, Which};
use crate::{Events, Target};

impl Observer for Inspector {
    fn connected(&self, tunnels: Vec<TunnelInfo>, events: Events) {
        self.set_tunnels(tunnels, events);
    }

    fn exchange(
        &self,
        tunnel: &Arc<str>,
        target: &Target,
        head: &RequestHead,
    ) -> Box<dyn ExchangeObserver> {
        let via = Via {
            tunnel: Arc::clone(tunnel),
            target: target.clone(),
        };
        let entry = self.record(
            via,
            head.method.clone(),
            head.path.clone(),
            head.headers.clone(),
            None,
        );
        Box::new(Recording {
            inspector: self.clone(),
            entry,
        })
    }
}

/// A live capture: the store and the exchange's entry in it.
#[derive(Clone)]
pub(crate) struct Recording {
    pub(crate) inspector: Inspector,
    pub(crate) entry: Arc<Entry>,
}

impl ExchangeObserver for Recording {
    fn body(&self, which: Which, exact: Option<u64>) -> Option<Box<dyn BodyObserver>> {
        let declared = match which {
            // A reader may stop at the last declared byte without polling
            // for the end: the body is whole all the same.
            Which::Request => {
                let record = self.entry.lock();
                super::view::header(&record.request_headers, "content-length")
                    .and_then(|len| len.trim().parse().ok())
            }
            Which::Response => None,
        };
        Some(Box::new(Sink {
            recording: self.clone(),
            which,
            expected: declared.or(exact),
            done: false,
        }))
    }

    fn response_head(&self, status: u16, headers: &HeaderMap) {
        let headers = headers_to_wire(headers);
        let cost = headers_cost(&headers);
        self.update(|record, after| {
            record.response = Some(ResponseHead {
                status,
                headers,
                after,
            });
            if status == 101 {
                // What follows is another protocol's bytes, not captured;
                // the HTTP body of a 101 is empty.
                record.upgraded = true;
                record.response_body.state = BodyState::Complete;
            }
        });
        self.inspector.charge(&self.entry, cost);
    }

    fn finish(&self, status: u16, error: Option<String>) {
        self.update(|record, total| {
            record.finished = Some(Finished {
                status,
                total,
                error,
            });
        });
    }
}

impl Recording {
    /// Changes the record, passing the time since the request arrived,
    /// and tells the page.
    fn update(&self, change: impl FnOnce(&mut super::Record, Duration)) {
        let Recording { inspector, entry } = self;
        change(&mut entry.lock(), entry.started_at.elapsed());
        inspector.notify(Change::Updated(entry.id));
    }
}

/// Where a body's first bytes go: one body of one exchange.
struct Sink {
    recording: Recording,
    which: Which,
    /// The body's declared length, if known.
    expected: Option<u64>,
    done: bool,
}

impl Sink {
    fn with_body<T>(&self, f: impl FnOnce(&mut Captured, usize) -> T) -> T {
        let max = self.recording.inspector.limits().max_body;
        let mut record = self.recording.entry.lock();
        let captured = match self.which {
            Which::Request => &mut record.request_body,
            Which::Response => &mut record.response_body,
        };
        f(captured, max)
    }

    fn ended(&mut self, state: BodyState) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.with_body(|captured, _| captured.state = state);
        let Recording { inspector, entry } = &self.recording;
        inspector.notify(Change::Updated(entry.id));
    }
}

impl BodyObserver for Sink {
    fn data(&mut self, data: &Bytes) {
        let kept = self.with_body(|captured, max| {
            captured.size += data.len() as u64;
            let room = max.saturating_sub(captured.bytes.len());
            let take = room.min(data.len());
            captured.bytes.extend_from_slice(&data[..take]);
            take
        });
        let Recording { inspector, entry } = &self.recording;
        inspector.charge(entry, kept);
    }

    fn wants_more(&self) -> bool {
        // At the allowance exactly, one more read tells whether the body
        // ended there (whole) or went on (truncated). Every declared byte
        // seen, it is whole already.
        let (size, max) = self.with_body(|captured, max| (captured.size, max as u64));
        !self.done && self.expected != Some(size) && size <= max
    }

    fn reading_on(&mut self) {
        self.with_body(|captured, _| captured.drained = true);
    }

    fn end(&mut self, end: BodyEnd) {
        self.ended(match end {
            BodyEnd::Complete => BodyState::Complete,
            BodyEnd::Failed(why) => BodyState::Failed(why),
        });
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // Dropped before its end: the reader stopped reading, though it
        // may have had every declared byte. A no-op if the body ended.
        let size = self.with_body(|captured, _| captured.size);
        if self.expected == Some(size) {
            self.ended(BodyState::Complete);
        } else {
            self.ended(BodyState::Abandoned);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspector::InspectorLimits;
    use crate::observe::Watch;
    use http_body::{Body, Frame};
    use http_body_util::{BodyExt, StreamBody};

    fn tap(max_body: usize) -> (Inspector, Watch) {
        tap_with(max_body, "")
    }

    fn tap_with(max_body: usize, content_length: &str) -> (Inspector, Watch) {
        let inspector = Inspector::new(InspectorLimits {
            capacity: 4,
            max_body,
            ..InspectorLimits::default()
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
        let tap = Watch::start(Some(&inspector), &"web".into(), &target, &head);
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
        let tap = Watch::start(None, &"web".into(), &target, &head);
        let body = tap.response_body(chunks(&[b"abc"]));
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abc");
        tap.finish(200, None);
    }
}
