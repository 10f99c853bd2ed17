//! The control queue: what the reader (or a body consumer) must send to the
//! peer without waiting — credit, resets, errors, pongs, a close frame. It
//! coalesces (one credit entry per stream, one pong) and is bounded, and the
//! writer drains it before any queued data.

use std::collections::{HashMap, VecDeque};
use std::sync::MutexGuard;

use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::Mux;
use crate::cancel::CancelReason;
use crate::frame::{Frame, FrameKind};

/// Most queued control texts (errors); more are dropped, as the peer is
/// clearly not listening.
const MAX_QUEUED_TEXTS: usize = 64;

#[derive(Default)]
pub(super) struct Control {
    pub(super) credits: HashMap<u32, u32>,
    /// Streams we reset, each with the reason we give the peer.
    pub(super) resets: Vec<(u32, Option<CancelReason>)>,
    pub(super) texts: VecDeque<String>,
    pub(super) pong: bool,
    pub(super) close: Option<CloseFrame>,
}

impl<H: Send + 'static> Mux<H> {
    /// Queues a text message (an error) for the writer, dropping it if many
    /// are already waiting: the peer is then not reading anyway.
    pub fn queue_text(&self, text: String) {
        let mut control = self.control();
        if control.texts.len() < MAX_QUEUED_TEXTS {
            control.texts.push_back(text);
        }
        drop(control);
        self.inner.control_ready.notify_one();
    }

    /// Asks the writer to answer a JSON `ping`.
    pub fn queue_pong(&self) {
        self.control().pong = true;
        self.inner.control_ready.notify_one();
    }

    /// Asks the writer to send a close frame and stop.
    pub fn queue_close(&self, frame: CloseFrame) {
        self.control().close.get_or_insert(frame);
        self.inner.control_ready.notify_one();
    }

    pub(super) fn control(&self) -> MutexGuard<'_, Control> {
        self.inner.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes everything the control queue holds, as messages to send.
    pub(super) fn take_control(&self) -> (Vec<Message>, Option<CloseFrame>) {
        let mut control = self.control();
        let mut out = Vec::new();
        for (id, credit) in control.credits.drain() {
            out.push(Message::Binary(Frame::window(id, credit)));
        }
        for (id, reason) in control.resets.drain(..) {
            let word = reason.map_or("", CancelReason::as_str);
            out.push(match (self.inner.binary, reason) {
                (true, _) => Message::Binary(Frame::encode(FrameKind::Reset, id, word.as_bytes())),
                (false, None) => Message::text(format!(r#"{{"type":"cancel","request_id":{id}}}"#)),
                (false, Some(_)) => Message::text(format!(
                    r#"{{"type":"cancel","request_id":{id},"reason":"{word}"}}"#
                )),
            });
        }
        out.extend(control.texts.drain(..).map(Message::text));
        if std::mem::take(&mut control.pong) {
            out.push(Message::text(r#"{"type":"pong"}"#));
        }
        (out, control.close.take())
    }
}
