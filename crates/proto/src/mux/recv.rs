//! The receiving half of a stream: a bounded inbox filled by the session's
//! reader and drained by hyper as an [`http_body::Body`], granting credit back
//! to the peer as bytes are consumed. Trailers, where the session carries
//! them, are the body's last frame.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use super::Mux;

/// Chunks kept apart before new ones are merged into one buffer: the inbox
/// holds at most `stream_window` bytes whatever the peer's frame sizes.
const MAX_CHUNKS: usize = 64;

/// The body stream ended abnormally: reset by the peer or by us, or the
/// session closed before the end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stream ended early: {0}")]
pub struct StreamError(pub String);

pub(super) struct Inbox {
    chunks: VecDeque<Bytes>,
    tail: BytesMut,
    /// Trailer fields that end the body, yielded after its bytes.
    trailers: Option<http::HeaderMap>,
    ending: Option<Result<(), String>>,
    waker: Option<Waker>,
}

impl Inbox {
    pub(super) fn new(done: bool) -> Self {
        Inbox {
            chunks: VecDeque::new(),
            tail: BytesMut::new(),
            trailers: None,
            ending: done.then_some(Ok(())),
            waker: None,
        }
    }

    pub(super) fn push(&mut self, data: Bytes, end: bool) {
        if !data.is_empty() {
            if self.tail.is_empty() && self.chunks.len() < MAX_CHUNKS {
                self.chunks.push_back(data);
            } else {
                self.tail.extend_from_slice(&data);
            }
        }
        if end {
            self.ending.get_or_insert(Ok(()));
        }
        self.wake();
    }

    /// The body ends with `trailers` (the stream's end follows at once).
    pub(super) fn set_trailers(&mut self, trailers: http::HeaderMap) {
        self.trailers = Some(trailers);
    }

    pub(super) fn fail(&mut self, reason: String) {
        self.ending.get_or_insert(Err(reason));
        self.wake();
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    fn pop(&mut self) -> Option<Bytes> {
        self.chunks
            .pop_front()
            .or_else(|| (!self.tail.is_empty()).then(|| self.tail.split().freeze()))
    }
}

/// A body arriving from the peer on one stream.
pub struct RecvBody<H: Send + 'static> {
    id: u32,
    inbox: Arc<Mutex<Inbox>>,
    mux: Mux<H>,
    unacked: u32,
    finished: bool,
}

impl<H: Send + 'static> RecvBody<H> {
    pub(super) fn new(id: u32, inbox: Arc<Mutex<Inbox>>, mux: Mux<H>) -> Self {
        RecvBody {
            id,
            inbox,
            mux,
            unacked: 0,
            finished: false,
        }
    }
}

impl<H: Send + 'static> Body for RecvBody<H> {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        let mut inbox = this.inbox.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(chunk) = inbox.pop() {
            drop(inbox);
            this.unacked += chunk.len() as u32;
            // Grant credit back in batches of a quarter window: few WINDOW
            // frames, and a sender never waits while we still have room.
            if this.unacked >= this.mux.limits().stream_window / 4 {
                this.mux.grant(this.id, std::mem::take(&mut this.unacked));
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match inbox.ending.clone() {
            Some(Ok(())) => {
                if let Some(trailers) = inbox.trailers.take() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                this.finished = true;
                Poll::Ready(None)
            }
            Some(Err(reason)) => {
                this.finished = true;
                Poll::Ready(Some(Err(StreamError(reason))))
            }
            None => {
                inbox.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl<H: Send + 'static> Drop for RecvBody<H> {
    fn drop(&mut self) {
        if !self.finished {
            self.mux.abandon_inbound(self.id);
        }
    }
}
