//! The writer: the one task that writes to a session's WebSocket.
//!
//! It sends control messages (credit, resets, errors, pongs) first, then heads
//! and body frames in the order stream tasks queued them, batching whatever is
//! ready into one flush. It also keeps the connection honest: it pings on an
//! interval, gives up on a peer that has been silent too long, and gives up on
//! a write that cannot make progress (a peer that stopped reading).

use std::time::Duration;

use futures_util::{Sink, SinkExt};
use tokio::sync::mpsc;
use tokio::time::{MissedTickBehavior, interval, timeout};
use tokio_tungstenite::tungstenite::{self, Message, protocol::CloseFrame};

use super::Mux;

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

/// Runs the writer until the outbound queue closes, a close frame is sent,
/// or the connection fails. Returns the close frame it sent, if any.
pub async fn run_writer<S, H>(
    mut sink: S,
    mut out: mpsc::Receiver<Message>,
    mux: Mux<H>,
    heartbeat: Heartbeat,
) -> Result<Option<CloseFrame>, WriterError>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
    H: Send + 'static,
{
    let mut ticker = interval(heartbeat.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        let mut pending = None;
        tokio::select! {
            biased;
            () = mux.inner.control_ready.notified() => {}
            msg = out.recv() => match msg {
                Some(msg) => pending = Some(msg),
                None => return Ok(None),
            },
            _ = ticker.tick() => {
                if mux.silence() > heartbeat.timeout {
                    return Err(WriterError::Silent(mux.silence()));
                }
                pending = Some(Message::Ping(Default::default()));
            }
        }
        let (control, close) = mux.take_control();
        for msg in control {
            write(&mut sink, heartbeat.timeout, msg).await?;
        }
        if let Some(frame) = close {
            write(
                &mut sink,
                heartbeat.timeout,
                Message::Close(Some(frame.clone())),
            )
            .await?;
            flush(&mut sink, heartbeat.timeout).await?;
            return Ok(Some(frame));
        }
        if let Some(msg) = pending {
            write(&mut sink, heartbeat.timeout, msg).await?;
            for _ in 1..BATCH {
                match out.try_recv() {
                    Ok(msg) => write(&mut sink, heartbeat.timeout, msg).await?,
                    Err(_) => break,
                }
            }
        }
        flush(&mut sink, heartbeat.timeout).await?;
    }
}

async fn write<S>(sink: &mut S, limit: Duration, msg: Message) -> Result<(), WriterError>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    timeout(limit, sink.feed(msg))
        .await
        .map_err(|_| WriterError::Stalled(limit))?
        .map_err(WriterError::from)
}

async fn flush<S>(sink: &mut S, limit: Duration) -> Result<(), WriterError>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    timeout(limit, sink.flush())
        .await
        .map_err(|_| WriterError::Stalled(limit))?
        .map_err(WriterError::from)
}
