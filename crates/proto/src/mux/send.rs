//! The sending half of a stream: body bytes leave only as fast as the peer
//! grants credit, in frames no larger than the session allows.

use std::sync::Arc;

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use super::Mux;
use crate::binary_head::encode_trailers;
use crate::frame::{Frame, FrameKind};
use crate::head::forwardable_to_wire;

/// The stream was reset or its session closed; nothing more can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stream is closed")]
pub struct StreamClosed;

/// Why [`pump`] stopped before the end of the body.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    /// Reading the source body failed (the visitor or local service broke off).
    #[error("reading the body failed: {0}")]
    Source(Box<dyn std::error::Error + Send + Sync>),
    /// The stream was reset or the session closed.
    #[error(transparent)]
    Closed(#[from] StreamClosed),
}

/// Our body to the peer on one stream. Dropping it before the end resets
/// the stream.
pub struct SendHalf<H: Send + 'static> {
    id: u32,
    credit: Arc<Semaphore>,
    mux: Mux<H>,
    done: bool,
}

impl<H: Send + 'static> SendHalf<H> {
    pub(super) fn new(id: u32, credit: Arc<Semaphore>, mux: Mux<H>, done: bool) -> Self {
        SendHalf {
            id,
            credit,
            mux,
            done,
        }
    }

    /// The stream's id (the request id on the wire).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The largest payload one frame may carry on this session.
    pub fn max_frame(&self) -> usize {
        self.mux.limits().max_frame_payload
    }

    /// Sends a text message (the head) in order with this stream's frames.
    pub async fn send_text(&self, text: String) -> Result<(), StreamClosed> {
        self.mux
            .send_message(Message::text(text))
            .await
            .map_err(|_| StreamClosed)
    }

    /// Whether heads go as HEAD frames ([`SendHalf::send_frame`]) rather
    /// than text messages on this session.
    pub fn binary_heads(&self) -> bool {
        self.mux.binary_heads()
    }

    /// Sends a whole binary frame (a HEAD) in order with this stream's
    /// frames.
    pub async fn send_frame(&self, frame: Bytes) -> Result<(), StreamClosed> {
        self.mux
            .send_message(Message::Binary(frame))
            .await
            .map_err(|_| StreamClosed)
    }

    /// Sends body bytes, waiting for credit; `end` finishes the body.
    pub async fn send(&mut self, mut data: Bytes, end: bool) -> Result<(), StreamClosed> {
        if self.done {
            return Err(StreamClosed);
        }
        let max = self.mux.limits().max_frame_payload;
        loop {
            let piece = data.split_to(data.len().min(max));
            let last = data.is_empty();
            if !piece.is_empty() {
                let permit = self
                    .credit
                    .acquire_many(piece.len() as u32)
                    .await
                    .map_err(|_| StreamClosed)?;
                permit.forget();
            }
            let kind = if last && end {
                FrameKind::End
            } else {
                FrameKind::Data
            };
            if !piece.is_empty() || kind == FrameKind::End {
                let frame = Frame::encode(kind, self.id, &piece);
                self.mux
                    .send_message(Message::Binary(frame))
                    .await
                    .map_err(|_| StreamClosed)?;
            }
            if last {
                break;
            }
        }
        if end {
            self.finish();
        }
        Ok(())
    }

    /// Ends the body with `trailers`: a TRAILERS frame where the session
    /// carries them, else a plain END (the fields are dropped, as an HTTP/1.0
    /// hop would). Hop-by-hop fields never go.
    pub async fn send_trailers(&mut self, trailers: &http::HeaderMap) -> Result<(), StreamClosed> {
        if !self.mux.trailers() {
            return self.send(Bytes::new(), true).await;
        }
        if self.done {
            return Err(StreamClosed);
        }
        let fields = forwardable_to_wire(trailers, &[]);
        self.mux
            .send_message(Message::Binary(encode_trailers(self.id, &fields)))
            .await
            .map_err(|_| StreamClosed)?;
        self.finish();
        Ok(())
    }

    /// Marks our half finished without sending anything (the head said there
    /// is no body, or carried it inline).
    pub fn finish(&mut self) {
        if !std::mem::replace(&mut self.done, true) {
            self.mux.finish_local(self.id);
        }
    }
}

impl<H: Send + 'static> Drop for SendHalf<H> {
    fn drop(&mut self) {
        if !self.done {
            self.mux.reset_for(self.id, self.mux.abandoned_because());
        }
    }
}

/// Streams `body` to the peer on `send`, frame by frame as it is produced,
/// and returns the number of body bytes sent. On a source error the stream
/// is reset. Trailers end it where the session carries them
/// ([`SendHalf::send_trailers`]).
pub async fn pump<B, H>(body: B, mut send: SendHalf<H>) -> Result<u64, PumpError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    H: Send + 'static,
{
    let mut body = std::pin::pin!(body);
    let mut total = 0u64;
    loop {
        match body.frame().await {
            None => {
                send.send(Bytes::new(), true).await?;
                return Ok(total);
            }
            Some(Err(err)) => return Err(PumpError::Source(err.into())),
            Some(Ok(frame)) => {
                let data = match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            send.send_trailers(&trailers).await?;
                            return Ok(total);
                        }
                        continue;
                    }
                };
                total += data.len() as u64;
                // Known-length bodies end with their last bytes: one frame
                // instead of a DATA and an empty END.
                let end = body.is_end_stream();
                send.send(data, end).await?;
                if end {
                    return Ok(total);
                }
            }
        }
    }
}
