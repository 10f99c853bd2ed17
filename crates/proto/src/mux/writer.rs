//! The writer: the task that owns the writing side of a session's WebSocket.
//!
//! Stream tasks write through the socket themselves when it is idle
//! (`wire.rs`); everything else goes through the writer. It sends control
//! messages (credit, resets, errors, pongs) first, then heads and body frames
//! in the order stream tasks queued them, batching whatever is ready into one
//! flush. It also keeps the connection honest: it pings on an
//! interval, gives up on a peer that has been silent too long, and gives up on
//! a write that cannot make progress (a peer that stopped reading).

use std::time::Duration;

use futures_util::{Sink, SinkExt};
use tokio::time::{MissedTickBehavior, interval, timeout};
use tokio_tungstenite::tungstenite::{self, Message, protocol::CloseFrame};

use super::Mux;
use super::wire::{BoxSink, Wire};

/// Most messages written between two flushes: bounds the time control
/// messages wait behind a burst of data.
const BATCH: usize = 64;

/// Liveness settings of one side.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    /// How often to ping the peer (WebSocket ping frames).
    pub interval: Duration,
    /// Silence after which the peer is taken as gone; also the longest a
    /// single write may block.
    pub timeout: Duration,
}

/// Why the writer stopped.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// Writing to the socket failed.
    #[error("writing to the WebSocket failed: {0}")]
    Ws(#[from] tungstenite::Error),
    /// A write made no progress within the heartbeat timeout.
    #[error("the peer stopped reading (write blocked for {0:?})")]
    Stalled(Duration),
    /// Nothing was heard from the peer within the heartbeat timeout.
    #[error("no sign of life from the peer for {0:?}")]
    Silent(Duration),
}

/// Runs the writer until a close frame is sent or the connection fails.
/// Returns the close frame it sent, if any. From its first poll until it
/// ends, stream tasks may also write through `sink` when it is idle.
pub async fn run_writer<S, H>(
    sink: S,
    mux: Mux<H>,
    heartbeat: Heartbeat,
) -> Result<Option<CloseFrame>, WriterError>
where
    S: Sink<Message, Error = tungstenite::Error> + Send + 'static,
    H: Send + 'static,
{
    mux.inner.wire.lock().await.sink = Some(Box::pin(sink));
    // However the writer ends (returns, or its future is dropped), the sink
    // goes with it: the connection must not outlive the session.
    let _release = Release(mux.clone());
    let mut ticker = interval(heartbeat.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        let mut ping = false;
        tokio::select! {
            biased;
            () = mux.inner.control_ready.notified() => {}
            _ = ticker.tick() => {
                if mux.silence() > heartbeat.timeout {
                    return Err(WriterError::Silent(mux.silence()));
                }
                ping = true;
            }
        }
        let mut wire = mux.inner.wire.lock().await;
        let Wire { sink } = &mut *wire;
        let queue = &mux.inner.out;
        let Some(sink) = sink.as_mut() else {
            return Ok(None);
        };
        let (control, close) = mux.take_control();
        for msg in control {
            write(sink, heartbeat.timeout, msg).await?;
        }
        if let Some(frame) = close {
            write(sink, heartbeat.timeout, Message::Close(Some(frame.clone()))).await?;
            flush(sink, heartbeat.timeout).await?;
            wire.sink = None;
            return Ok(Some(frame));
        }
        if ping {
            write(sink, heartbeat.timeout, Message::Ping(Default::default())).await?;
        }
        for _ in 0..BATCH {
            match queue.pop() {
                Some(msg) => write(sink, heartbeat.timeout, msg).await?,
                None => break,
            }
        }
        // Also finishes whatever a write-through left buffered.
        flush(sink, heartbeat.timeout).await?;
        if !queue.is_empty() {
            // More than one batch was waiting: go round again at once.
            mux.inner.control_ready.notify_one();
        }
    }
}

/// Takes the sink away from the mux when the writer ends.
struct Release<H: Send + 'static>(Mux<H>);

impl<H: Send + 'static> Drop for Release<H> {
    fn drop(&mut self) {
        self.0.drop_sink();
    }
}

async fn write(sink: &mut BoxSink, limit: Duration, msg: Message) -> Result<(), WriterError> {
    timeout(limit, sink.feed(msg))
        .await
        .map_err(|_| WriterError::Stalled(limit))?
        .map_err(WriterError::from)
}

async fn flush(sink: &mut BoxSink, limit: Duration) -> Result<(), WriterError> {
    timeout(limit, sink.flush())
        .await
        .map_err(|_| WriterError::Stalled(limit))?
        .map_err(WriterError::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;
    use crate::mux::Side;
    use futures_util::StreamExt;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// Our end of a real loopback WebSocket, and the peer's raw socket.
    async fn pair() -> (WebSocketStream<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let peer = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (ours, _) = listener.accept().await.expect("accept");
        let ws = WebSocketStream::from_raw_socket(ours, Role::Server, None).await;
        (ws, peer)
    }

    /// A sink that notes, at each flush, how many messages it had taken.
    struct Counted {
        ws: WebSocketStream<TcpStream>,
        fed: usize,
        flushes: Arc<Mutex<Vec<usize>>>,
    }

    impl Sink<Message> for Counted {
        type Error = tungstenite::Error;

        fn poll_ready(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Pin::new(&mut self.ws).poll_ready(cx)
        }

        fn start_send(mut self: Pin<&mut Self>, msg: Message) -> Result<(), Self::Error> {
            self.fed += 1;
            Pin::new(&mut self.ws).start_send(msg)
        }

        fn poll_flush(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            let flushed = Pin::new(&mut self.ws).poll_flush(cx);
            if let Poll::Ready(Ok(())) = flushed {
                let fed = self.fed;
                self.flushes.lock().unwrap().push(fed);
            }
            flushed
        }

        fn poll_close(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Result<(), Self::Error>> {
            Pin::new(&mut self.ws).poll_close(cx)
        }
    }

    /// No pings and no giving up while a test runs.
    const QUIET: Heartbeat = Heartbeat {
        interval: Duration::from_secs(3600),
        timeout: Duration::from_secs(3600),
    };

    /// The texts of the first `n` messages the peer receives.
    async fn receive(peer: TcpStream, n: usize) -> Vec<String> {
        let mut ws = WebSocketStream::from_raw_socket(peer, Role::Client, None).await;
        let mut texts = Vec::new();
        while texts.len() < n {
            let next = timeout(Duration::from_secs(5), ws.next()).await;
            match next
                .expect("a message within 5 s")
                .expect("the stream ended")
            {
                Ok(Message::Text(text)) => texts.push(text.to_string()),
                other => panic!("{other:?}"),
            }
        }
        texts
    }

    fn numbers(n: usize) -> Vec<String> {
        (0..n).map(|i| i.to_string()).collect()
    }

    #[tokio::test]
    async fn a_backlog_of_queued_messages_goes_out_in_order_in_one_flush() {
        let (ws, peer) = pair().await;
        let mux: Mux<()> = Mux::new(
            Side::Acceptor,
            crate::Capabilities::SUPPORTED,
            Limits::default(),
        );
        // No writer yet: every message waits in the queue (which holds a
        // batch; a timeout rather than a hang should that change).
        for text in numbers(BATCH) {
            let queued = timeout(
                Duration::from_secs(5),
                mux.send_message(Message::text(text)),
            );
            assert!(
                matches!(queued.await, Ok(Ok(()))),
                "the queue holds a batch"
            );
        }
        let flushes = Arc::new(Mutex::new(Vec::new()));
        let sink = Counted {
            ws,
            fed: 0,
            flushes: flushes.clone(),
        };
        let writer = tokio::spawn(run_writer(sink, mux.clone(), QUIET));
        assert_eq!(receive(peer, BATCH).await, numbers(BATCH));
        assert_eq!(*flushes.lock().unwrap(), [BATCH]);
        writer.abort();
    }

    #[tokio::test]
    async fn more_messages_than_a_batch_and_the_queue_hold_arrive_in_order() {
        let (ws, peer) = pair().await;
        let mux: Mux<()> = Mux::new(
            Side::Acceptor,
            crate::Capabilities::SUPPORTED,
            Limits::default(),
        );
        // The sender fills the queue and waits for room; once the writer
        // has emptied it, the sender's messages race the writer's next
        // batch for the socket (write-through) and must not overtake it.
        let n = 3 * BATCH + BATCH / 2;
        let sender = tokio::spawn({
            let mux = mux.clone();
            async move {
                for text in numbers(n) {
                    assert!(mux.send_message(Message::text(text)).await.is_ok());
                }
            }
        });
        let writer = tokio::spawn(run_writer(ws, mux.clone(), QUIET));
        assert_eq!(receive(peer, n).await, numbers(n));
        sender.await.expect("the sender");
        writer.abort();
    }

    /// A peer that keeps talking (so it is never "silent") but stopped
    /// reading: once the socket's buffers are full, the writer gives up
    /// after the heartbeat timeout instead of blocking forever.
    #[tokio::test]
    async fn a_peer_that_stops_reading_stalls_the_writer_out() {
        let (ws, _peer_never_reads) = pair().await;
        let (sink, _stream) = futures_util::StreamExt::split(ws);
        let mux: Mux<()> = Mux::new(
            Side::Acceptor,
            crate::Capabilities::SUPPORTED,
            Limits::default(),
        );
        let limit = Duration::from_millis(300);
        let heartbeat = Heartbeat {
            interval: Duration::from_millis(50),
            timeout: limit,
        };
        let writer = tokio::spawn(run_writer(sink, mux.clone(), heartbeat));
        let big = "x".repeat(64 << 10);
        let ended = timeout(Duration::from_secs(20), async {
            loop {
                if writer.is_finished() {
                    break;
                }
                // The peer is heard from all along: only the write can stall.
                mux.heard();
                for _ in 0..4 {
                    mux.queue_text(big.clone());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(ended.is_ok(), "the writer kept blocking on a full socket");
        let result = writer.await.expect("the writer task");
        assert!(
            matches!(result, Err(WriterError::Stalled(d)) if d == limit),
            "{result:?}"
        );
        // Nothing takes from the outbound queue any more: a sender that
        // finds it full fails instead of waiting for good.
        let failed = timeout(Duration::from_secs(5), async {
            for _ in 0..=super::super::wire::OUTBOUND_QUEUE {
                if mux.send_message(Message::text("x")).await.is_err() {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(failed, Ok(true), "a sender waited on a dead writer's queue");
    }
}
