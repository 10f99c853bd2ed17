//! Our end of a session's WebSocket once the upgrade is done, server's or
//! client's: RFC 6455 framing of our own, in place of tungstenite, on the
//! path every request and body takes.
//!
//! tungstenite zero-fills up to 4 KiB of its buffer before every socket
//! read and reads at most that much a call (so `ReadAhead` sat under it to
//! make socket reads large, a copy more): 3,700 of the 6,300 instructions
//! the server spent reading a small request's answer, and a 4 KiB buffer
//! resident in every idle tunnel (docs/BENCHMARKS.md, "Issue 16: the data
//! path"). Here a read goes straight from the socket into spare capacity
//! that is never zero-filled, sized to the frame being read once its header
//! is known; a payload is handed on as a slice of that buffer (a client's
//! unmasked in place), not copied; and the buffer is let go whenever the
//! socket runs dry with nothing left in it, so an idle tunnel holds none.
//! Frames go out as a header and the payload itself, gathered into one
//! vectored write; a client masks each payload with a fresh random key as
//! it copies it out, the one copy the protocol forces.
//!
//! It is a `Stream` and a `Sink` of tungstenite's `Message`, with
//! tungstenite's errors, so the session, the mux and the tests see what
//! they saw before; the handshakes stay hyper's and tungstenite's. What it
//! enforces, as tungstenite did: a client's frames masked and a server's
//! not, no reserved bits or opcodes, control frames whole and at most 125
//! bytes, fragments in order, text valid UTF-8 (`Error::Utf8`: a session
//! closes with 1007), frames and messages within the session's sizes
//! (`Error::Capacity`: 1009). A ping is answered with a pong, a close with
//! the same close (1002 for a code no endpoint may send), and the end of
//! the connection without a close is `ResetWithoutClosingHandshake`.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Bytes asked of the socket when no frame says how many more are coming.
const READ_SIZE: usize = 4 << 10;

/// Outgoing bytes beyond which `poll_ready` flushes before taking more.
const WRITE_HIGH: usize = 256 << 10;

/// Payloads up to this size are copied next to their header rather than
/// written as a slice of their own.
const GATHER_SMALL: usize = 256;

/// Most slices handed to one vectored write.
const MAX_SLICES: usize = 32;

/// Where the closing handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    Open,
    /// The client sent a close; ours (the echo) is queued.
    ByPeer,
    /// We sent a close and wait for the client's.
    ByUs,
    /// Both sides sent theirs: nothing more is read or written.
    Done,
}

/// A fragmented message being put together.
struct Fragments {
    text: bool,
    data: BytesMut,
}

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The server: reads masked frames, writes them unmasked.
    Server,
    /// The client: reads unmasked frames, writes them masked.
    Client,
}

/// Our end of one WebSocket connection (see the module's documentation).
pub struct Socket<S> {
    io: S,
    end: End,
    /// Bytes read and not yet parsed; empty and unallocated while idle.
    read: BytesMut,
    fragments: Option<Fragments>,
    max_message: usize,
    max_frame: usize,
    /// Whole frames waiting to be written, in order.
    out: VecDeque<Bytes>,
    /// Headers and small payloads gathered for the back of `out`.
    gather: BytesMut,
    out_len: usize,
    closing: Closing,
    /// The stream has ended (a close was returned, or the connection ended).
    ended: bool,
}

impl<S> Socket<S> {
    /// Frames the connection `io` as its `end`, refusing frames over
    /// `max_frame` bytes and messages over `max_message`.
    pub fn new(io: S, end: End, max_message: usize, max_frame: usize) -> Self {
        Socket {
            io,
            end,
            read: BytesMut::new(),
            fragments: None,
            max_message,
            max_frame,
            out: VecDeque::new(),
            gather: BytesMut::new(),
            out_len: 0,
            closing: Closing::Open,
            ended: false,
        }
    }

    /// Bytes read from the connection before it was handed over, to be read
    /// first.
    #[must_use]
    pub fn with_read(mut self, read: BytesMut) -> Self {
        self.read = read;
        self
    }

    /// Queues one frame, FIN set: a server's as it is, a client's masked.
    fn queue(&mut self, opcode: u8, payload: Bytes) {
        let len = payload.len();
        let mask = if self.end == End::Client { 0x80 } else { 0 };
        self.gather.reserve(14 + len.min(GATHER_SMALL));
        self.gather.put_u8(0x80 | opcode);
        match len {
            0..=125 => self.gather.put_u8(mask | len as u8),
            126..=0xffff => {
                self.gather.put_u8(mask | 126);
                self.gather.put_u16(len as u16);
            }
            _ => {
                self.gather.put_u8(mask | 127);
                self.gather.put_u64(len as u64);
            }
        }
        if self.end == End::Client {
            // A fresh key per frame, from a generator seeded by the
            // operating system (RFC 6455 §5.3), and the payload copied out
            // masked.
            let key: [u8; 4] = rand::random();
            self.gather.put_slice(&key);
            let at = self.gather.len();
            self.gather.put_slice(&payload);
            unmask(&mut self.gather[at..], key);
            self.out_len += len + 14;
            return;
        }
        if len <= GATHER_SMALL {
            self.gather.put_slice(&payload);
        } else {
            let head = self.gather.split().freeze();
            self.out.push_back(head);
            self.out.push_back(payload);
        }
        self.out_len += len + 10;
    }

    /// Queues our close frame: `frame`'s code and reason, or none.
    fn queue_close(&mut self, frame: Option<&CloseFrame>) {
        let mut payload = BytesMut::new();
        if let Some(frame) = frame {
            payload.put_u16(u16::from(frame.code));
            payload.put_slice(frame.reason.as_bytes());
        }
        self.queue(0x8, payload.freeze());
    }

    /// Parses the next whole frame in `read`, if there is one; otherwise
    /// reserves room for what the frame being read still needs.
    fn frame(&mut self) -> Result<Option<(bool, u8, BytesMut)>, Error> {
        let have = self.read.len();
        if have < 2 {
            self.read.reserve(READ_SIZE);
            return Ok(None);
        }
        let (b0, b1) = (self.read[0], self.read[1]);
        let (fin, rsv, opcode) = (b0 & 0x80 != 0, b0 & 0x70, b0 & 0x0f);
        let (masked, len7) = (b1 & 0x80 != 0, b1 & 0x7f);
        if rsv != 0 {
            return Err(ProtocolError::NonZeroReservedBits.into());
        }
        match (self.end, masked) {
            (End::Server, false) => return Err(ProtocolError::UnmaskedFrameFromClient.into()),
            (End::Client, true) => return Err(ProtocolError::MaskedFrameFromServer.into()),
            _ => {}
        }
        match opcode {
            0..=2 => {}
            3..=7 => return Err(ProtocolError::UnknownDataFrameType(opcode).into()),
            8..=10 if !fin => return Err(ProtocolError::FragmentedControlFrame.into()),
            8..=10 if len7 > 125 => return Err(ProtocolError::ControlFrameTooBig.into()),
            8..=10 => {}
            _ => return Err(ProtocolError::UnknownControlFrameType(opcode).into()),
        }
        let extra = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let header = 2 + extra + if masked { 4 } else { 0 };
        if have < header {
            self.read.reserve(READ_SIZE);
            return Ok(None);
        }
        let len = match len7 {
            126 => u64::from(u16::from_be_bytes([self.read[2], self.read[3]])),
            127 => u64::from_be_bytes(self.read[2..10].try_into().unwrap_or_default()),
            n => u64::from(n),
        };
        if len > self.max_frame as u64 {
            return Err(too_long(len, self.max_frame));
        }
        let len = len as usize;
        if have < header + len {
            // The whole frame in as few reads as the socket allows.
            self.read.reserve(header + len - have);
            return Ok(None);
        }
        let mut key = [0u8; 4];
        if masked {
            key.copy_from_slice(&self.read[header - 4..header]);
        }
        self.read.advance(header);
        let mut payload = self.read.split_to(len);
        if masked {
            unmask(&mut payload, key);
        }
        Ok(Some((fin, opcode, payload)))
    }

    /// What a frame makes of the message being read: a message, or nothing
    /// yet.
    fn message(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: BytesMut,
    ) -> Result<Option<Message>, Error> {
        match opcode {
            0x0 => {
                let Some(mut fragments) = self.fragments.take() else {
                    return Err(ProtocolError::UnexpectedContinueFrame.into());
                };
                let total = fragments.data.len() + payload.len();
                if total > self.max_message {
                    return Err(too_long(total as u64, self.max_message));
                }
                fragments.data.extend_from_slice(&payload);
                if !fin {
                    self.fragments = Some(fragments);
                    return Ok(None);
                }
                whole(fragments.text, fragments.data.freeze()).map(Some)
            }
            0x1 | 0x2 => {
                if self.fragments.is_some() {
                    let data = if opcode == 0x1 {
                        Data::Text
                    } else {
                        Data::Binary
                    };
                    return Err(ProtocolError::ExpectedFragment(data).into());
                }
                if payload.len() > self.max_message {
                    return Err(too_long(payload.len() as u64, self.max_message));
                }
                if fin {
                    return whole(opcode == 0x1, payload.freeze()).map(Some);
                }
                self.fragments = Some(Fragments {
                    text: opcode == 0x1,
                    data: payload,
                });
                Ok(None)
            }
            0x9 => {
                let payload = payload.freeze();
                if self.closing == Closing::Open {
                    self.queue(0xa, payload.clone());
                }
                Ok(Some(Message::Ping(payload)))
            }
            0xa => Ok(Some(Message::Pong(payload.freeze()))),
            _ => self.close_received(payload).map(Some),
        }
    }

    /// The client's close: answered with the same (or 1002 for a code no
    /// endpoint may send) unless we closed first.
    fn close_received(&mut self, payload: BytesMut) -> Result<Message, Error> {
        let frame = match payload.len() {
            0 => None,
            1 => return Err(ProtocolError::InvalidCloseSequence.into()),
            _ => {
                let code = CloseCode::from(u16::from_be_bytes([payload[0], payload[1]]));
                let reason = Utf8Bytes::try_from(payload.freeze().slice(2..))
                    .map_err(|err| Error::Utf8(err.to_string()))?;
                Some(CloseFrame { code, reason })
            }
        };
        match self.closing {
            Closing::Open => {
                let echo = frame.clone().map(|frame| {
                    if frame.code.is_allowed() {
                        frame
                    } else {
                        CloseFrame {
                            code: CloseCode::Protocol,
                            reason: Utf8Bytes::from_static("Protocol violation"),
                        }
                    }
                });
                self.queue_close(echo.as_ref());
                self.closing = Closing::ByPeer;
            }
            Closing::ByUs => self.closing = Closing::Done,
            Closing::ByPeer | Closing::Done => {}
        }
        self.ended = true;
        Ok(Message::Close(frame))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socket<S> {
    /// Sends a close frame (`frame`'s code and reason, or none) and
    /// flushes it, as tokio-tungstenite's `close` does.
    pub async fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), Error> {
        futures_util::SinkExt::send(self, Message::Close(frame)).await
    }

    /// Writes what is queued, as far as the socket takes it.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if !self.gather.is_empty() {
            let tail = self.gather.split().freeze();
            self.out.push_back(tail);
        }
        while !self.out.is_empty() {
            // On the stack: no allocation per write.
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            for (slot, bytes) in slices.iter_mut().zip(&self.out) {
                *slot = IoSlice::new(bytes);
                count += 1;
            }
            let written = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]))?;
            if written == 0 {
                return Poll::Ready(Err(Error::Io(std::io::ErrorKind::WriteZero.into())));
            }
            let mut left = written;
            while left > 0 {
                let Some(front) = self.out.front_mut() else {
                    break;
                };
                if front.len() <= left {
                    left -= front.len();
                    self.out.pop_front();
                } else {
                    front.advance(left);
                    left = 0;
                }
            }
            self.out_len = self.out_len.saturating_sub(written);
        }
        self.out_len = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for Socket<S> {
    type Item = Result<Message, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        loop {
            match this.frame() {
                Err(err) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(err)));
                }
                Ok(Some((fin, opcode, payload))) => match this.message(fin, opcode, payload) {
                    Ok(Some(msg)) => {
                        if matches!(msg, Message::Ping(_) | Message::Close(_)) {
                            // The answer goes out now, whoever writes next:
                            // a failure here is the writer's to find.
                            let _ = this.poll_write_out(cx);
                        }
                        return Poll::Ready(Some(Ok(msg)));
                    }
                    Ok(None) => continue,
                    Err(err) => {
                        this.ended = true;
                        return Poll::Ready(Some(Err(err)));
                    }
                },
                Ok(None) => {}
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.read) {
                Poll::Pending => {
                    if this.read.is_empty() {
                        // Idle: hold no buffer (payloads handed on keep
                        // theirs).
                        this.read = BytesMut::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(err)) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(Error::Io(err))));
                }
                Poll::Ready(Ok(0)) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(
                        ProtocolError::ResetWithoutClosingHandshake.into()
                    )));
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for Socket<S> {
    type Error = Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.out_len > WRITE_HIGH {
            ready!(self.poll_write_out(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, msg: Message) -> Result<(), Error> {
        if self.closing != Closing::Open {
            return Err(ProtocolError::SendAfterClosing.into());
        }
        match msg {
            Message::Text(text) => self.queue(0x1, Bytes::from(text)),
            Message::Binary(data) => self.queue(0x2, data),
            Message::Ping(data) => self.queue(0x9, data),
            Message::Pong(data) => self.queue(0xa, data),
            Message::Close(frame) => {
                self.queue_close(frame.as_ref());
                self.closing = Closing::ByUs;
            }
            Message::Frame(_) => {
                return Err(ProtocolError::InvalidOpcode(0).into());
            }
        }
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        ready!(self.poll_write_out(cx))?;
        Pin::new(&mut self.io).poll_flush(cx).map_err(Error::Io)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.closing == Closing::Open {
            self.queue_close(None);
            self.closing = Closing::ByUs;
        }
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx).map_err(Error::Io)
    }
}

/// A complete message's payload as the message.
fn whole(text: bool, payload: Bytes) -> Result<Message, Error> {
    if text {
        Utf8Bytes::try_from(payload)
            .map(Message::Text)
            .map_err(|err| Error::Utf8(err.to_string()))
    } else {
        Ok(Message::Binary(payload))
    }
}

fn too_long(size: u64, max_size: usize) -> Error {
    Error::Capacity(CapacityError::MessageTooLong {
        size: usize::try_from(size).unwrap_or(usize::MAX),
        max_size,
    })
}

/// XORs `data` with a masking key, eight bytes at a time.
fn unmask(data: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().unwrap_or_default()) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

#[cfg(test)]
#[path = "websocket_tests.rs"]
mod tests;

#[cfg(test)]
impl<S> Socket<S> {
    /// Bytes of read buffer held (for the idle test).
    fn read_capacity(&self) -> usize {
        self.read.capacity()
    }
}
