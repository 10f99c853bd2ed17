//! The stream table: the pending-request map of one session, and every way
//! an entry enters it (open, accept) and leaves it (the exchange completes,
//! either side resets the stream, the session closes).
//!
//! The reader routes what the peer sends through it (heads, body frames,
//! credit, resets), and the body halves report through it when they finish,
//! give up, or consume bytes whose credit is owed back. Every update happens
//! under one lock and is a single insert, remove or field write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Semaphore, oneshot};

use super::{Mux, RecvBody, SendHalf, Side, Stream, recv};
use crate::binary_head::{HeadFrameError, decode_trailers};
use crate::cancel::CancelReason;
use crate::frame::{Frame, FrameKind};
use crate::head::{headers_from_wire, strip_hop_by_hop};

/// Why a stream could not be opened or accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The session already has `max_streams` streams in flight.
    #[error("too many requests in flight on this tunnel")]
    TooMany,
    /// The session is closed.
    #[error("the tunnel's connection is closed")]
    Closed,
    /// The peer reused the id of a stream still in flight.
    #[error("stream id {0} is already in use")]
    Duplicate(u32),
}

/// A peer broke the flow-control rules; the session must close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// More body bytes than the credit granted.
    #[error("stream {stream}: {len} bytes sent with only {window} bytes of credit")]
    Overrun {
        /// The stream.
        stream: u32,
        /// Payload length received.
        len: usize,
        /// Credit the peer had left.
        window: u32,
    },
    /// More credit than could ever be used (over 2^31 bytes outstanding).
    #[error("stream {0}: credit overflow")]
    CreditOverflow(u32),
    /// A HEAD frame on a session without `binary_heads` (a session with it
    /// reads heads before frames reach the streams).
    #[error("stream {0}: HEAD frame without binary_heads")]
    Head(u32),
    /// An OPEN frame where it may not come: from the client, or on a
    /// session without `raw_streams` (a client's session with it reads
    /// OPEN frames before frames reach the streams).
    #[error("stream {0}: OPEN frame where none may come")]
    Open(u32),
    /// A TRAILERS frame on a session without `trailers`.
    #[error("stream {0}: TRAILERS frame without trailers")]
    Trailers(u32),
    /// A TRAILERS frame whose payload is not a header list.
    #[error("stream {stream}: malformed TRAILERS frame: {error}")]
    MalformedTrailers {
        /// The stream.
        stream: u32,
        /// What is wrong with it.
        error: HeadFrameError,
    },
}

/// Credit beyond this is a peer bug (and would overflow the semaphore).
const MAX_CREDIT: usize = 1 << 31;

pub(super) struct Table<H> {
    slots: HashMap<u32, Slot<H>>,
    next_id: u32,
    closed: bool,
}

struct Slot<H> {
    head: Option<oneshot::Sender<H>>,
    inbox: Arc<Mutex<recv::Inbox>>,
    recv_window: u32,
    credit: Arc<Semaphore>,
    local_done: bool,
    remote_done: bool,
    /// A raw stream (`raw_streams`): complete only once both directions
    /// are, on either side; an exchange completes on the opener with the
    /// response alone.
    raw: bool,
    /// Sent the peer's reason when it resets the stream with one, else
    /// dropped with the slot: wakes whoever waits for the stream to end.
    gone: oneshot::Sender<CancelReason>,
}

impl<H> Table<H> {
    /// An empty table; the first stream opened gets id 1.
    pub(super) fn new() -> Self {
        Table {
            slots: HashMap::new(),
            next_id: 1,
            closed: false,
        }
    }

    /// The next id no live stream has (never 0).
    fn fresh_id(&mut self) -> u32 {
        let mut id = self.next_id;
        while id == 0 || self.slots.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_id = id.wrapping_add(1);
        id
    }
}

impl<H: Send + 'static> Mux<H> {
    /// Opens a stream with a fresh id (the server's side). `sends_body` says
    /// whether our half will carry body frames; if not it starts finished.
    pub fn open(&self, sends_body: bool) -> Result<Stream<H>, OpenError> {
        let mut table = self.table();
        let id = table.fresh_id();
        self.insert(&mut table, id, true, !sends_body, false)
    }

    /// Opens a raw stream with a fresh id (the server's side, for a
    /// visitor's connection to a TCP tunnel): no head is awaited, and the
    /// stream lasts until both directions have ended (or a reset).
    pub fn open_raw(&self) -> Result<Stream<H>, OpenError> {
        let mut table = self.table();
        let id = table.fresh_id();
        let stream = self.insert(&mut table, id, false, false, false)?;
        if let Some(slot) = table.slots.get_mut(&id) {
            slot.raw = true;
        }
        Ok(stream)
    }

    /// Accepts a stream the peer opened (the client's side). `receives_body`
    /// says whether the peer will send body frames on it.
    pub fn accept(&self, id: u32, receives_body: bool) -> Result<Stream<H>, OpenError> {
        let mut table = self.table();
        if table.slots.contains_key(&id) {
            return Err(OpenError::Duplicate(id));
        }
        self.insert(&mut table, id, false, false, !receives_body)
    }

    fn insert(
        &self,
        table: &mut Table<H>,
        id: u32,
        awaits_head: bool,
        local_done: bool,
        remote_done: bool,
    ) -> Result<Stream<H>, OpenError> {
        if table.closed {
            return Err(OpenError::Closed);
        }
        if table.slots.len() >= self.inner.limits.max_streams {
            return Err(OpenError::TooMany);
        }
        let (head_tx, head_rx) = oneshot::channel();
        let (gone_tx, gone_rx) = oneshot::channel();
        let inbox = Arc::new(Mutex::new(recv::Inbox::new(remote_done)));
        let window = self.inner.limits.stream_window;
        let credit = Arc::new(Semaphore::new(window as usize));
        table.slots.insert(
            id,
            Slot {
                head: awaits_head.then_some(head_tx),
                inbox: Arc::clone(&inbox),
                recv_window: window,
                credit: Arc::clone(&credit),
                local_done,
                remote_done,
                raw: false,
                gone: gone_tx,
            },
        );
        Ok(Stream {
            id,
            head: head_rx,
            recv: RecvBody::new(id, inbox, self.clone()),
            send: SendHalf::new(id, credit, self.clone(), local_done),
            gone: gone_rx,
        })
    }

    /// Hands the peer's head to whoever opened stream `id`. `body_follows`
    /// says whether body frames will follow; if not, the inbound half is done.
    /// A head for an unknown or already answered stream is counted, dropped,
    /// and reported as `false`.
    pub fn deliver_head(&self, id: u32, head: H, body_follows: bool) -> bool {
        let mut table = self.table();
        let delivered = match table.slots.get_mut(&id).and_then(|s| s.head.take()) {
            Some(tx) => tx.send(head).is_ok(),
            None => false,
        };
        if !delivered {
            drop(table);
            self.count_unmatched();
            return false;
        }
        if !body_follows {
            self.finish_remote(&mut table, id);
        }
        true
    }

    /// Routes one binary frame from the peer. Frames for unknown or finished
    /// streams are counted and dropped (they race with resets).
    pub fn on_frame(&self, frame: Frame) -> Result<(), Violation> {
        let id = frame.stream;
        match frame.kind {
            FrameKind::Head => return Err(Violation::Head(id)),
            FrameKind::Open => return Err(Violation::Open(id)),
            FrameKind::Trailers => return self.on_trailers(id, frame.payload),
            _ => {}
        }
        let mut table = self.table();
        let Some(slot) = table.slots.get_mut(&id) else {
            drop(table);
            if frame.kind != FrameKind::Reset {
                self.count_unmatched();
            }
            return Ok(());
        };
        match frame.kind {
            FrameKind::Data | FrameKind::End => {
                let len = frame.payload.len();
                if len > slot.recv_window as usize {
                    return Err(Violation::Overrun {
                        stream: id,
                        len,
                        window: slot.recv_window,
                    });
                }
                if slot.remote_done {
                    drop(table);
                    self.count_unmatched();
                    return Ok(());
                }
                slot.recv_window -= len as u32;
                let end = frame.kind == FrameKind::End;
                if !frame.payload.is_empty() {
                    slot.inbox
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(frame.payload, false);
                }
                if end {
                    self.finish_remote(&mut table, id);
                }
            }
            FrameKind::Window => {
                let credit = frame.credit() as usize;
                if slot.credit.available_permits() + credit > MAX_CREDIT {
                    return Err(Violation::CreditOverflow(id));
                }
                slot.credit.add_permits(credit);
            }
            FrameKind::Reset => {
                let text = String::from_utf8_lossy(&frame.payload).into_owned();
                let reason = CancelReason::from_payload(&frame.payload);
                Self::remove_for(&mut table, id, format!("reset by peer {text}"), reason);
            }
            FrameKind::Head | FrameKind::Open | FrameKind::Trailers => {
                unreachable!("handled above")
            }
        }
        Ok(())
    }

    /// Trailer fields ending stream `id`'s inbound body. A payload that is
    /// not a header list breaks the protocol; fields that are no valid
    /// header, or over the session's header limits, fail the stream alone
    /// (reset both ways, as a response head that breaks a rule is).
    /// Hop-by-hop fields are dropped, as from any head.
    fn on_trailers(&self, id: u32, payload: bytes::Bytes) -> Result<(), Violation> {
        if !self.inner.trailers {
            return Err(Violation::Trailers(id));
        }
        let fields = decode_trailers(payload)
            .map_err(|error| Violation::MalformedTrailers { stream: id, error })?;
        let limits = &self.inner.limits;
        let checked = headers_from_wire(&fields, limits.max_headers, limits.max_header_bytes);
        let mut table = self.table();
        let Some(slot) = table.slots.get_mut(&id) else {
            drop(table);
            self.count_unmatched();
            return Ok(());
        };
        if slot.remote_done {
            drop(table);
            self.count_unmatched();
            return Ok(());
        }
        match checked {
            Ok(mut trailers) => {
                strip_hop_by_hop(&mut trailers);
                slot.inbox
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .set_trailers(trailers);
                self.finish_remote(&mut table, id);
            }
            Err(err) => {
                if Self::remove(&mut table, id, format!("invalid trailers: {err}")) {
                    drop(table);
                    self.control().resets.push((id, None));
                    self.inner.control_ready.notify_one();
                }
            }
        }
        Ok(())
    }

    /// The peer abandoned stream `id` (a JSON `cancel`), for `reason` if
    /// it said.
    pub fn cancel_from_peer(&self, id: u32, reason: Option<CancelReason>) {
        let text = match reason {
            Some(reason) => format!("cancelled by peer: {reason}"),
            None => "cancelled by peer".into(),
        };
        Self::remove_for(&mut self.table(), id, text, reason);
    }

    /// Abandons stream `id` from our side: tells the peer, fails both halves.
    pub fn reset(&self, id: u32) {
        self.reset_for(id, None);
    }

    /// [`reset`](Self::reset), telling the peer why (`cancel`'s `reason`,
    /// the RESET frame's payload).
    pub fn reset_for(&self, id: u32, reason: Option<CancelReason>) {
        if Self::remove(&mut self.table(), id, "reset".into()) {
            self.control().resets.push((id, reason));
            self.inner.control_ready.notify_one();
        }
    }

    /// Resets every stream in flight for `reason` (the session is about to
    /// close: the peer learns why each request ends before the close).
    pub fn reset_all(&self, reason: CancelReason) {
        let mut table = self.table();
        let ids: Vec<u32> = table.slots.keys().copied().collect();
        let mut control = self.control();
        for id in ids {
            if Self::remove(&mut table, id, format!("reset: {reason}")) {
                control.resets.push((id, Some(reason)));
            }
        }
        drop((control, table));
        self.inner.control_ready.notify_one();
    }

    /// Closes the session's streams: every pending head, body and upload
    /// fails now, and no stream can be opened any more.
    pub fn close(&self) {
        self.inner.out_closed.cancel();
        let mut table = self.table();
        table.closed = true;
        let ids: Vec<u32> = table.slots.keys().copied().collect();
        for id in ids {
            Self::remove(&mut table, id, "the tunnel's connection closed".into());
        }
    }

    /// Whether [`close`](Self::close) has run.
    pub fn is_closed(&self) -> bool {
        self.table().closed
    }

    /// Streams in flight.
    pub fn stream_count(&self) -> usize {
        self.table().slots.len()
    }

    fn table(&self) -> MutexGuard<'_, Table<H>> {
        // Every update under this lock is a single insert, remove or field
        // write, so data behind a poisoned lock is still consistent.
        self.inner.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Our half of stream `id` is finished.
    pub(super) fn finish_local(&self, id: u32) {
        let mut table = self.table();
        if let Some(slot) = table.slots.get_mut(&id) {
            slot.local_done = true;
            if slot.remote_done && slot.head.is_none() {
                table.slots.remove(&id);
            }
        }
    }

    /// The peer's half of stream `id` is finished. For the opener that
    /// completes the exchange; an upload still running stops.
    fn finish_remote(&self, table: &mut Table<H>, id: u32) {
        let Some(slot) = table.slots.get_mut(&id) else {
            return;
        };
        slot.remote_done = true;
        slot.inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(bytes::Bytes::new(), true);
        let complete = slot.head.is_none()
            && (slot.local_done || (self.inner.side == Side::Opener && !slot.raw));
        if complete {
            Self::remove(table, id, "the response is complete".into());
        }
    }

    /// The consumer of stream `id`'s inbound body went away before its end.
    /// The opener's consumer is the visitor: the whole exchange is abandoned.
    /// The acceptor's is the local service, which may still answer: further
    /// body frames are dropped and the response goes on.
    pub(super) fn abandon_inbound(&self, id: u32) {
        match self.inner.side {
            Side::Opener => self.reset_for(id, self.abandoned_because()),
            Side::Acceptor => {
                let mut table = self.table();
                if table.slots.get(&id).is_some_and(|s| !s.remote_done) {
                    self.finish_remote(&mut table, id);
                }
            }
        }
    }

    /// Why a stream our side drops unfinished is abandoned: on the opener
    /// (the server) its handles belong to the visitor's request, so the
    /// visitor went away; the acceptor gives no reason.
    pub(super) fn abandoned_because(&self) -> Option<CancelReason> {
        (self.inner.side == Side::Opener).then_some(CancelReason::VisitorGone)
    }

    /// The receiver consumed `n` bytes of stream `id`: grant them back.
    pub(super) fn grant(&self, id: u32, n: u32) {
        {
            let mut table = self.table();
            let Some(slot) = table.slots.get_mut(&id) else {
                return;
            };
            if slot.remote_done {
                return;
            }
            slot.recv_window = slot.recv_window.saturating_add(n);
        }
        *self.control().credits.entry(id).or_default() += n;
        self.inner.control_ready.notify_one();
    }

    fn remove(table: &mut Table<H>, id: u32, reason: String) -> bool {
        Self::remove_for(table, id, reason, None)
    }

    /// [`remove`](Self::remove), handing whoever waits on the stream's
    /// `gone` the peer's `cause`, if it gave one.
    fn remove_for(
        table: &mut Table<H>,
        id: u32,
        reason: String,
        cause: Option<CancelReason>,
    ) -> bool {
        let Some(slot) = table.slots.remove(&id) else {
            return false;
        };
        if let Some(cause) = cause {
            let _ = slot.gone.send(cause);
        }
        slot.credit.close();
        slot.inbox
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fail(reason);
        true
    }
}
