//! Raw byte streams, on sessions that negotiated `raw_streams`
//! (docs/PROTOCOL.md §5.5): one per visitor connection to a TCP tunnel.
//!
//! The server announces each connection with an OPEN frame whose stream id
//! is new; from then on the stream is a pipe, each direction's bytes in
//! DATA frames with the same credit as a body, END closing a direction
//! (the other may go on: a half-close), RESET aborting both.
//!
//! ```text
//! OPEN payload:  tunnel id (u16 len + bytes) | visitor address (u16 len + bytes)
//! ```
//!
//! Both strings are UTF-8; the address is the visitor's `IP:port` as the
//! server saw it (the PROXY protocol header's, behind a trusted proxy). A
//! payload that does not parse exactly so is a malformed frame: the session
//! closes with 1002.

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::frame::{FrameKind, HEADER_LEN};

/// What an OPEN frame says: which tunnel the connection came to, and from
/// where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenStream {
    /// The tunnel (its `tunnel_id`) the visitor connected to.
    pub tunnel_id: String,
    /// The visitor's address.
    pub visitor: SocketAddr,
}

/// An OPEN payload that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenFrameError {
    /// The payload ends inside the field named.
    #[error("OPEN frame ends inside its {0}")]
    Short(&'static str),
    /// The field named is not UTF-8.
    #[error("OPEN frame's {0} is not UTF-8")]
    NotUtf8(&'static str),
    /// The visitor's address is not `IP:port`.
    #[error("OPEN frame's visitor address {0:?} is not IP:port")]
    BadAddress(String),
    /// Bytes after the last field.
    #[error("OPEN frame has {0} bytes after its fields")]
    Trailing(usize),
}

impl OpenStream {
    /// The OPEN frame of stream `id`, frame header included, ready to send.
    pub fn encode(&self, id: u32) -> Bytes {
        let visitor = self.visitor.to_string();
        let len = HEADER_LEN + 4 + self.tunnel_id.len() + visitor.len();
        let mut buf = BytesMut::with_capacity(len);
        buf.put_u8(FrameKind::Open as u8);
        buf.put_u32(id);
        for field in [self.tunnel_id.as_bytes(), visitor.as_bytes()] {
            // A tunnel id is 10 characters and an address at most 47: both
            // far under a u16's reach.
            buf.put_u16(field.len() as u16);
            buf.put_slice(field);
        }
        buf.freeze()
    }

    /// Reads an OPEN frame's payload.
    pub fn decode(mut payload: Bytes) -> Result<Self, OpenFrameError> {
        let tunnel_id = string(&mut payload, "tunnel id")?;
        let visitor = string(&mut payload, "visitor address")?;
        if payload.has_remaining() {
            return Err(OpenFrameError::Trailing(payload.remaining()));
        }
        let visitor = visitor
            .parse()
            .map_err(|_| OpenFrameError::BadAddress(visitor))?;
        Ok(OpenStream { tunnel_id, visitor })
    }
}

/// A u16-length-prefixed UTF-8 string.
fn string(buf: &mut Bytes, field: &'static str) -> Result<String, OpenFrameError> {
    if buf.remaining() < 2 {
        return Err(OpenFrameError::Short(field));
    }
    let len = usize::from(buf.get_u16());
    if buf.remaining() < len {
        return Err(OpenFrameError::Short(field));
    }
    String::from_utf8(buf.split_to(len).to_vec()).map_err(|_| OpenFrameError::NotUtf8(field))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;

    fn open() -> OpenStream {
        OpenStream {
            tunnel_id: "k3j5h2g7f1".into(),
            visitor: "[2001:db8::1]:40000".parse().unwrap(),
        }
    }

    #[test]
    fn an_open_frame_reads_back_as_written() {
        let frame = Frame::decode(open().encode(7), 16).unwrap();
        assert_eq!((frame.kind, frame.stream), (FrameKind::Open, 7));
        assert_eq!(OpenStream::decode(frame.payload).unwrap(), open());
    }

    #[test]
    fn every_cut_short_or_padded_payload_is_refused() {
        let whole = open().encode(1).slice(HEADER_LEN..);
        for cut in 0..whole.len() {
            assert!(
                matches!(
                    OpenStream::decode(whole.slice(..cut)),
                    Err(OpenFrameError::Short(_))
                ),
                "cut at {cut}"
            );
        }
        let mut padded = BytesMut::from(&whole[..]);
        padded.put_u8(0);
        assert_eq!(
            OpenStream::decode(padded.freeze()),
            Err(OpenFrameError::Trailing(1))
        );
    }

    #[test]
    fn a_bad_address_or_bad_utf8_is_refused() {
        let mut buf = BytesMut::new();
        for field in [&b"t"[..], b"not an address"] {
            buf.put_u16(field.len() as u16);
            buf.put_slice(field);
        }
        assert!(matches!(
            OpenStream::decode(buf.freeze()),
            Err(OpenFrameError::BadAddress(_))
        ));
        let mut buf = BytesMut::new();
        buf.put_u16(1);
        buf.put_u8(0xff);
        assert_eq!(
            OpenStream::decode(buf.freeze()),
            Err(OpenFrameError::NotUtf8("tunnel id"))
        );
    }
}
