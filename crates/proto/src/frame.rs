//! Binary data frames: request and response bodies, flow-control credit and
//! stream resets, on sessions that opened with `binary_streams`.
//!
//! ```text
//! +--------+-------------------+----------------------+
//! | kind u8| stream id u32 (BE)| payload              |
//! +--------+-------------------+----------------------+
//! ```
//!
//! | kind | name   | payload                                            |
//! |------|--------|----------------------------------------------------|
//! | 0    | DATA   | body bytes (at most `max_frame_payload`)           |
//! | 1    | END    | final body bytes, possibly none; the body is done  |
//! | 2    | WINDOW | u32 (BE): bytes of credit granted to the sender     |
//! | 3    | RESET  | optional UTF-8 reason; the stream is abandoned      |
//! | 4    | HEAD   | a request or response head (`binary_head`)          |
//! | 5    | TRAILERS | trailer fields ending a body (`trailers`)         |
//! | 6    | OPEN   | a new raw byte stream (`raw_streams`, [`crate::raw`]) |
//!
//! Further kinds, and the flags of a binary head, may be reserved for
//! capabilities still to come ([`RESERVED_KINDS`], [`RESERVED_HEAD_FLAGS`]);
//! a kind a session did not negotiate closes it with 1002. The table in
//! `docs/PROTOCOL.md` §5 lists the same values, which a test checks.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::capability::Capability;

/// Bytes of frame header before the payload.
pub const HEADER_LEN: usize = 5;

/// What a frame does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Body bytes.
    Data = 0,
    /// Last body bytes; the sender's half of the stream is finished.
    End = 1,
    /// Credit: the receiver may now send this many more body bytes.
    Window = 2,
    /// The stream is abandoned by its sender.
    Reset = 3,
    /// A request or response head, binary-encoded (`binary_heads`; see
    /// [`crate::binary_head`]). Its size is bounded by the session's
    /// message size, not by `max_frame_payload`: a head may carry more
    /// header bytes than a body frame carries body.
    Head = 4,
    /// Trailer fields ending a body: the body is then complete, as after
    /// END (`trailers`; the payload is a header list, see
    /// [`crate::binary_head::encode_trailers`]). Bounded like HEAD, and
    /// using no credit.
    Trailers = 5,
    /// A new raw byte stream: a visitor's connection to a TCP tunnel
    /// (`raw_streams`; its payload is [`crate::raw::OpenStream`]). DATA
    /// and END then carry each direction's bytes, END half-closes, RESET
    /// aborts. Sent by the server only; bounded like HEAD.
    Open = 6,
}

impl FrameKind {
    /// Every kind this version sends and reads, by value.
    pub const ALL: [FrameKind; 7] = [
        FrameKind::Data,
        FrameKind::End,
        FrameKind::Window,
        FrameKind::Reset,
        FrameKind::Head,
        FrameKind::Trailers,
        FrameKind::Open,
    ];

    /// Its name in the protocol's table.
    pub const fn name(self) -> &'static str {
        match self {
            FrameKind::Data => "DATA",
            FrameKind::End => "END",
            FrameKind::Window => "WINDOW",
            FrameKind::Reset => "RESET",
            FrameKind::Head => "HEAD",
            FrameKind::Trailers => "TRAILERS",
            FrameKind::Open => "OPEN",
        }
    }

    /// The kind with this value, if this version speaks it.
    pub const fn from_value(value: u8) -> Option<Self> {
        match value {
            0 => Some(FrameKind::Data),
            1 => Some(FrameKind::End),
            2 => Some(FrameKind::Window),
            3 => Some(FrameKind::Reset),
            4 => Some(FrameKind::Head),
            5 => Some(FrameKind::Trailers),
            6 => Some(FrameKind::Open),
            _ => None,
        }
    }
}

/// A frame kind or head flag named for a capability still to come: its
/// value is kept so that nothing else takes it. This version sends none and
/// reads none (a reserved kind is unknown to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved {
    /// The kind byte, or the flag's bit.
    pub value: u8,
    /// Its name in the protocol's table.
    pub name: &'static str,
    /// The capability that will bring it: it is sent only on sessions that
    /// accepted that capability.
    pub capability: Capability,
}

/// Frame kinds reserved for coming capabilities, by value (none today).
pub const RESERVED_KINDS: &[Reserved] = &[];

/// Bits of a HEAD frame's flags byte reserved for coming capabilities
/// (none today; END_STREAM, 0x01, is spoken:
/// [`crate::binary_head::END_STREAM`]). Bits not listed are zero; a set bit
/// a receiver does not know closes with 1002.
pub const RESERVED_HEAD_FLAGS: &[Reserved] = &[];

/// One decoded binary frame. The payload shares the received buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the frame does.
    pub kind: FrameKind,
    /// The stream (request id) it belongs to.
    pub stream: u32,
    /// Body bytes, credit or reason, by kind.
    pub payload: Bytes,
}

/// A binary message that is not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than the 5-byte header.
    #[error("frame of {0} bytes is shorter than its header")]
    Short(usize),
    /// Kind byte not in the table.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A WINDOW frame whose payload is not exactly four bytes.
    #[error("WINDOW frame payload must be 4 bytes, got {0}")]
    BadWindow(usize),
    /// Payload longer than the session allows.
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Payload length received.
        len: usize,
        /// The session's `max_frame_payload`.
        max: usize,
    },
}

impl Frame {
    /// Encodes a frame into one buffer ready to send as a binary message.
    pub fn encode(kind: FrameKind, stream: u32, payload: &[u8]) -> Bytes {
        let mut buf = BytesMut::with_capacity(HEADER_LEN + payload.len());
        buf.put_u8(kind as u8);
        buf.put_u32(stream);
        buf.put_slice(payload);
        buf.freeze()
    }

    /// A WINDOW frame granting `credit` bytes.
    pub fn window(stream: u32, credit: u32) -> Bytes {
        Self::encode(FrameKind::Window, stream, &credit.to_be_bytes())
    }

    /// Decodes a binary message, refusing payloads over `max_payload` (but
    /// a HEAD's, TRAILERS' or OPEN's, which the session's message size
    /// bounds).
    pub fn decode(mut buf: Bytes, max_payload: usize) -> Result<Frame, FrameError> {
        if buf.len() < HEADER_LEN {
            return Err(FrameError::Short(buf.len()));
        }
        let value = buf.get_u8();
        let Some(kind) = FrameKind::from_value(value) else {
            return Err(FrameError::UnknownKind(value));
        };
        let stream = buf.get_u32();
        let bounded_by_message = matches!(
            kind,
            FrameKind::Head | FrameKind::Trailers | FrameKind::Open
        );
        if buf.len() > max_payload && !bounded_by_message {
            return Err(FrameError::TooLarge {
                len: buf.len(),
                max: max_payload,
            });
        }
        if kind == FrameKind::Window && buf.len() != 4 {
            return Err(FrameError::BadWindow(buf.len()));
        }
        Ok(Frame {
            kind,
            stream,
            payload: buf,
        })
    }

    /// The credit carried by a WINDOW frame.
    pub fn credit(&self) -> u32 {
        let mut p = self.payload.clone();
        if p.len() == 4 { p.get_u32() } else { 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let bytes = Frame::encode(FrameKind::End, 0xDEAD_BEEF, b"tail");
        let frame = Frame::decode(bytes, 16).unwrap();
        assert_eq!(frame.kind, FrameKind::End);
        assert_eq!(frame.stream, 0xDEAD_BEEF);
        assert_eq!(&frame.payload[..], b"tail");
        assert_eq!(
            Frame::decode(Frame::window(7, 65536), 16).unwrap().credit(),
            65536
        );
    }

    #[test]
    fn kinds_read_back_and_reserved_values_are_unknown_today() {
        for kind in FrameKind::ALL {
            assert_eq!(FrameKind::from_value(kind as u8), Some(kind));
        }
        for reserved in RESERVED_KINDS {
            assert_eq!(
                Frame::decode(Bytes::from(vec![reserved.value, 0, 0, 0, 1]), 16),
                Err(FrameError::UnknownKind(reserved.value)),
                "{reserved:?}"
            );
        }
        for flag in RESERVED_HEAD_FLAGS {
            assert_eq!(flag.value.count_ones(), 1, "{flag:?}");
        }
    }

    #[test]
    fn hostile_frames_are_refused() {
        assert_eq!(
            Frame::decode(Bytes::from_static(b"\0\0"), 16),
            Err(FrameError::Short(2))
        );
        assert_eq!(
            Frame::decode(Bytes::from_static(b"\x09\0\0\0\x01"), 16),
            Err(FrameError::UnknownKind(9))
        );
        assert_eq!(
            Frame::decode(Frame::encode(FrameKind::Data, 1, &[0; 17]), 16),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        );
        assert_eq!(
            Frame::decode(Frame::encode(FrameKind::Window, 1, &[0; 3]), 16),
            Err(FrameError::BadWindow(3))
        );
    }
}
