//! The session's WebSocket sink, shared: the writer task uses it, and so does
//! any stream task that has a message while the writer is idle
//! ("write-through").
//!
//! Handing every head and frame to the writer task costs a task wake-up on
//! each side of every exchange; on a small request that hand-off, not the
//! bytes, is most of the tunnel's cost. So a stream task first tries to write
//! its message itself, in one synchronous step: it takes the sink only if
//! nobody holds it and nothing is queued ahead of it (so per-stream order is
//! kept), and it never waits on the socket — if the socket cannot take the
//! bytes at once, they stay buffered in the sink and the writer task, woken,
//! finishes the flush under its stall timeout. With more than a few streams
//! in flight every message goes through the writer, which batches whatever
//! is queued into one flush: under load that is cheaper than a write each.
//!
//! The invariant that keeps order: messages leave the queue only while the
//! sink is held, and a write-through happens only when the queue is empty.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use futures_util::Sink;
use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::{Semaphore, TryAcquireError};
use tokio_tungstenite::tungstenite::{self, Message};

use super::Mux;

/// Messages waiting for the writer (heads and body frames) per session. Each
/// is at most one frame, so this bounds a session's outbound buffer to about
/// 64 x 128 KiB; senders beyond that wait (or fail, once the writer is gone).
pub(super) const OUTBOUND_QUEUE: usize = 64;

/// Write-through only while at most this many streams are in flight. With
/// more, messages come often enough that the writer's batching (one flush
/// for many) costs less than a socket write per message: on loopback with
/// 50 concurrent requests, writing through everything took the client from
/// 0.2 to 0.9 socket writes per request and cost both ends about 10% more
/// CPU per request, while saving wake-ups only pays when the session is
/// otherwise quiet.
const WRITE_THROUGH_MAX_STREAMS: usize = 4;

/// The sink of the session's WebSocket, type-erased so that [`Mux`] does not
/// depend on the transport under it.
pub(super) type BoxSink = Pin<Box<dyn Sink<Message, Error = tungstenite::Error> + Send>>;

/// What only the holder of the wire may touch.
pub(super) struct Wire {
    /// Set by the writer when it starts, taken away when it stops.
    pub(super) sink: Option<BoxSink>,
}

/// Places an emptied queue keeps (some 40 bytes each).
const KEEP_SLOTS: usize = 8;

/// Messages the writer still has to send, in order, at most
/// [`OUTBOUND_QUEUE`]. Messages leave it only while the wire is held. It
/// holds no memory until the first message, and at most [`KEEP_SLOTS`]
/// places once emptied: tokio's channel, used before, allocated a block of
/// 32 slots when made, 2.5 KiB in every idle session (docs/BENCHMARKS.md).
pub(super) struct Outbound {
    queue: Mutex<VecDeque<Message>>,
    /// Free places in the queue.
    room: Semaphore,
}

impl Outbound {
    pub(super) fn new() -> Self {
        Outbound {
            queue: Mutex::new(VecDeque::new()),
            room: Semaphore::new(OUTBOUND_QUEUE),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Message>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue().is_empty()
    }

    /// The next message for the writer (which holds the wire).
    pub(super) fn pop(&self) -> Option<Message> {
        let mut queue = self.queue();
        let msg = queue.pop_front()?;
        if queue.is_empty() && queue.capacity() > KEEP_SLOTS {
            // Let a burst's memory go with it; a few places stay, so that
            // a queue going from one message to none under steady load
            // does not allocate for every message.
            *queue = VecDeque::new();
        }
        drop(queue);
        self.room.add_permits(1);
        Some(msg)
    }

    fn push(&self, msg: Message) {
        self.queue().push_back(msg);
    }
}

/// What became of a write-through attempt.
enum Attempt {
    /// The message is in the sink (written, or buffered for the writer to
    /// flush).
    Written,
    /// The wire was busy or not ready: the message goes to the queue.
    Busy(Message),
    /// The connection failed; the writer, woken, will end the session.
    Failed,
}

/// The session's end of the WebSocket failed or closed.
pub(super) struct WireClosed;

impl<H: Send + 'static> Mux<H> {
    /// Sends `msg` in order with everything sent before it: written straight
    /// to the socket when the writer is idle, queued for it otherwise.
    pub(super) async fn send_message(&self, msg: Message) -> Result<(), WireClosed> {
        match self.write_through(msg) {
            Attempt::Written => Ok(()),
            Attempt::Failed => Err(WireClosed),
            Attempt::Busy(msg) => {
                // Room in the queue is the common case: no waiting, so no
                // watch on `out_closed` (a lock to register with it).
                let out = &self.inner.out;
                match out.room.try_acquire() {
                    Ok(permit) => permit.forget(),
                    Err(TryAcquireError::Closed) => return Err(WireClosed),
                    Err(TryAcquireError::NoPermits) => tokio::select! {
                        biased;
                        () = self.inner.out_closed.cancelled() => return Err(WireClosed),
                        permit = out.room.acquire() => permit.map_err(|_| WireClosed)?.forget(),
                    },
                }
                if self.inner.out_closed.is_cancelled() {
                    return Err(WireClosed);
                }
                out.push(msg);
                self.inner.control_ready.notify_one();
                Ok(())
            }
        }
    }

    /// One synchronous attempt to put `msg` into the sink. Never waits: a
    /// flush that cannot finish at once is left to the writer.
    ///
    /// The sink is polled with a waker that does nothing. Nothing here needs
    /// waking (the writer takes over whatever is left), and a real waker
    /// would cost a wake-up per inbound message: tokio-tungstenite wakes the
    /// last write waker whenever the socket becomes readable.
    fn write_through(&self, message: Message) -> Attempt {
        if self.stream_count() > WRITE_THROUGH_MAX_STREAMS {
            return Attempt::Busy(message);
        }
        let mut cx = Context::from_waker(Waker::noop());
        let Ok(mut wire) = self.inner.wire.try_lock() else {
            return Attempt::Busy(message);
        };
        if !self.inner.out.is_empty() {
            return Attempt::Busy(message);
        }
        let Some(sink) = wire.sink.as_mut() else {
            return Attempt::Busy(message);
        };
        match sink.as_mut().poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => {}
            // Pending: the sink is still pushing out earlier bytes, which the
            // writer is finishing. An error: the writer will meet it too.
            _ => return Attempt::Busy(message),
        }
        if sink.as_mut().start_send(message).is_err() {
            self.inner.control_ready.notify_one();
            return Attempt::Failed;
        }
        if !matches!(sink.as_mut().poll_flush(&mut cx), Poll::Ready(Ok(()))) {
            // Buffered but not (all) written: the writer flushes it, with
            // its stall timeout, or meets the error and ends the session.
            self.inner.control_ready.notify_one();
        }
        Attempt::Written
    }

    /// Lets go of the sink (the session is over), so the connection closes
    /// even while stream tasks still hold the mux. If a write-through holds
    /// the wire this very moment, the sink goes when the last handle does.
    pub(super) fn drop_sink(&self) {
        self.inner.out_closed.cancel();
        if let Ok(mut wire) = self.inner.wire.try_lock() {
            wire.sink = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle session's queue holds no memory when made and none once a
    /// burst has been written, at most a few places after single messages,
    /// and its places all come back.
    #[test]
    fn an_empty_queue_holds_no_memory_and_gives_back_its_places() {
        let out = Outbound::new();
        assert_eq!(out.queue().capacity(), 0);
        for i in 0..OUTBOUND_QUEUE {
            out.room.try_acquire().unwrap().forget();
            out.push(Message::text(i.to_string()));
        }
        assert!(out.room.try_acquire().is_err(), "the queue is bounded");
        assert!(out.queue().capacity() >= OUTBOUND_QUEUE);
        for i in 0..OUTBOUND_QUEUE {
            assert_eq!(out.pop(), Some(Message::text(i.to_string())));
        }
        assert_eq!(out.pop(), None);
        assert_eq!(out.queue().capacity(), 0, "a burst's memory goes with it");
        // One message at a time, as under steady load: a few places are
        // kept rather than allocated for each message.
        for i in 0..3 {
            out.room.try_acquire().unwrap().forget();
            out.push(Message::text(i.to_string()));
            let kept = out.queue().capacity();
            assert_eq!(out.pop(), Some(Message::text(i.to_string())));
            assert_eq!(out.queue().capacity(), kept);
            assert!(kept <= KEEP_SLOTS);
        }
        assert_eq!(out.room.available_permits(), OUTBOUND_QUEUE);
    }
}
