//! Many request streams over one WebSocket, each with its own flow control.
//!
//! A [`Mux`] is shared (cheaply cloned) by the session's reader, its writer and
//! every task working on one of its streams. It owns the table of live streams
//! — the pending-request map, in `table.rs` — and every entry leaves it in one
//! of three ways: the exchange completes, either side resets the stream, or
//! the session closes, which fails every stream at once. This file holds the
//! handle types: the [`Mux`] itself, the [`Stream`] that opening or accepting
//! returns, and the session's liveness clock.
//!
//! The server opens streams (one per visitor request) and the client accepts
//! them. An exchange is complete when the response is: once the opener has the
//! whole response it drops the stream even if the request body was not all
//! read, as an HTTP/1.1 origin may answer before reading the whole request.
//!
//! The reader never waits on the writer: whatever it must answer (credit,
//! resets, errors, pongs) goes into a small coalescing control queue that the
//! writer drains first. Only stream tasks wait, for credit or for room in the
//! outbound queue; so a peer that stops reading stalls its own streams and
//! nothing else, and two peers writing to each other cannot deadlock.
//!
//! A stream task whose message finds the writer idle and nothing queued
//! writes it to the socket itself (see `wire.rs`): a small exchange then
//! costs no wake-up of the writer task on either side.

mod control;
mod pipe;
mod recv;
mod send;
mod table;
mod wire;
mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use control::Control;
use table::Table;

pub use pipe::{RelayError, copy_from_stream, copy_into_stream, relay};
pub use recv::{RecvBody, StreamError};
pub use send::{PumpError, SendHalf, StreamClosed, pump};
pub use table::{OpenError, Violation};
pub use writer::{Heartbeat, WriterError, run_writer};

use crate::capability::{Capabilities, Capability};
use crate::limits::Limits;

/// Which end of the session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Opens streams (the server, for each visitor request).
    Opener,
    /// Accepts streams (the client).
    Acceptor,
}

/// One WebSocket's streams, shared by everything that works on them.
/// `H` is the head the opener waits for (the server's response head); the
/// client, which opens nothing, uses `()`.
pub struct Mux<H: Send + 'static> {
    inner: Arc<Inner<H>>,
}

impl<H: Send + 'static> Clone for Mux<H> {
    fn clone(&self) -> Self {
        Mux {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<H> {
    side: Side,
    binary: bool,
    heads: bool,
    /// TRAILERS frames end bodies (`trailers`): trailers are carried, not
    /// dropped.
    trailers: bool,
    limits: Limits,
    table: Mutex<Table<H>>,
    control: Mutex<Control>,
    /// Wakes the writer: control messages, queued messages, or a flush
    /// left unfinished by a write-through.
    control_ready: Notify,
    out: wire::Outbound,
    /// Cancelled when nothing will take from `out` any more (the writer
    /// ended, or the session closed): senders waiting on a full queue fail
    /// instead of waiting for good (the queue's receiver lives in `wire`,
    /// as long as any handle).
    out_closed: CancellationToken,
    wire: tokio::sync::Mutex<wire::Wire>,
    started: Instant,
    last_heard_ms: AtomicU64,
    unmatched: AtomicU64,
}

/// Closes a session's streams when dropped; see [`Mux::close_on_drop`].
pub struct CloseOnDrop<H: Send + 'static>(Mux<H>);

impl<H: Send + 'static> Drop for CloseOnDrop<H> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A new stream: its id, its two body halves, and (for opened streams) the
/// peer's head when it arrives.
pub struct Stream<H: Send + 'static> {
    /// The stream's id, which is the request id on the wire.
    pub id: u32,
    /// The peer's head; fails if the stream is reset or the session closes.
    pub head: oneshot::Receiver<H>,
    /// The body the peer sends us.
    pub recv: RecvBody<H>,
    /// Our body to the peer.
    pub send: SendHalf<H>,
    /// Resolves when the stream leaves the table: with the peer's reason
    /// when it reset the stream giving one (`cancel`'s `reason`, a RESET's
    /// payload), with an error for any other end.
    pub gone: oneshot::Receiver<crate::CancelReason>,
}

impl<H: Send + 'static> Mux<H> {
    /// A mux for one session that speaks `accepted`: bodies travel as
    /// frames with `binary_streams`, heads too with `binary_heads`.
    /// Nothing is written until [`run_writer`] hands it the WebSocket's sink.
    pub fn new(side: Side, accepted: Capabilities, limits: Limits) -> Self {
        let binary = accepted.contains(Capability::BinaryStreams);
        let heads = binary && accepted.contains(Capability::BinaryHeads);
        let trailers = binary && accepted.contains(Capability::Trailers);
        Mux {
            inner: Arc::new(Inner {
                side,
                binary,
                heads,
                trailers,
                limits,
                table: Mutex::new(Table::new()),
                control: Mutex::new(Control::default()),
                control_ready: Notify::new(),
                out: wire::Outbound::new(),
                out_closed: CancellationToken::new(),
                wire: tokio::sync::Mutex::new(wire::Wire { sink: None }),
                started: Instant::now(),
                last_heard_ms: AtomicU64::new(0),
                unmatched: AtomicU64::new(0),
            }),
        }
    }

    /// Whether bodies travel as binary frames on this session.
    pub fn binary(&self) -> bool {
        self.inner.binary
    }

    /// Whether request and response heads travel as HEAD frames.
    pub fn binary_heads(&self) -> bool {
        self.inner.heads
    }

    /// Whether trailers travel (TRAILERS frames) on this session.
    pub fn trailers(&self) -> bool {
        self.inner.trailers
    }

    /// The session's limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// A guard that closes the session's streams when dropped: however the
    /// session's task ends (returns, panics, or is aborted), every request
    /// task lets go of its work instead of waiting forever.
    pub fn close_on_drop(&self) -> CloseOnDrop<H> {
        CloseOnDrop(self.clone())
    }

    /// Frames and heads that named an unknown or finished stream (dropped).
    pub fn unmatched(&self) -> u64 {
        self.inner.unmatched.load(Ordering::Relaxed)
    }

    /// Records that the peer was heard from (any frame at all).
    pub fn heard(&self) {
        let ms = self.inner.started.elapsed().as_millis() as u64;
        self.inner.last_heard_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the peer was last heard from.
    pub fn silence(&self) -> Duration {
        let now = self.inner.started.elapsed().as_millis() as u64;
        let last = self.inner.last_heard_ms.load(Ordering::Relaxed);
        Duration::from_millis(now.saturating_sub(last))
    }

    fn count_unmatched(&self) {
        self.inner.unmatched.fetch_add(1, Ordering::Relaxed);
    }
}
