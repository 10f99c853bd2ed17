//! Request and response heads as HEAD frames, on sessions that negotiated
//! `binary_heads` (docs/PROTOCOL.md §5.4).
//!
//! A JSON head costs its sender an escaping pass over every string and its
//! receiver a parse, and a small body inline in it is base64 on top: for a
//! 3 KiB page about 21,000 instructions in the client and 8,000 in the
//! server per request (docs/BENCHMARKS.md, "Issue 16: the data path"). A
//! HEAD frame carries the same fields as length-prefixed bytes, and a body
//! that ends with the head as the rest of the frame, as it is.
//!
//! ```text
//! HEAD payload:  flags u8 | head | body (END_STREAM only: the rest)
//! request head:  tunnel id (u16 len + bytes) | method (u16 len + bytes)
//!                | path (u32 len + bytes) | headers
//! response head: status u16 | headers
//! headers:       count u16 | each: name (u16 len + bytes) | value (u32 len + bytes)
//! TRAILERS payload: headers (`trailers`; nothing after them)
//! ```
//!
//! Integers are big-endian. Every string is UTF-8. A payload that does not
//! parse to its end exactly so (short, a length past the end, a flag this
//! version does not know, bytes after a head without END_STREAM) is a
//! malformed frame: the session closes with 1002. What the fields say is
//! checked afterwards as a JSON head's is (tokens, controls, the header
//! limits), so both encodings refuse the same heads in the same way.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::frame::{FrameKind, HEADER_LEN};
use crate::head::{InlineBody, RequestHead, ResponseHead};
use crate::limits::MAX_WIRE_HEADERS;

/// The head is the whole message: the rest of the payload is the body,
/// possibly empty, and no body frames follow.
pub const END_STREAM: u8 = 0x01;

/// The flags this version reads; any other set bit is malformed.
const KNOWN_FLAGS: u8 = END_STREAM;

/// A HEAD payload that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadFrameError {
    /// The payload ends inside the field named.
    #[error("HEAD frame ends inside its {0}")]
    Short(&'static str),
    /// A flag this version does not know is set.
    #[error("HEAD frame has unknown flags {0:#04x}")]
    UnknownFlags(u8),
    /// A string field is not UTF-8.
    #[error("HEAD frame's {0} is not UTF-8")]
    NotUtf8(&'static str),
    /// More headers than any head may carry.
    #[error("HEAD frame has {0} headers, over the limit of {MAX_WIRE_HEADERS}")]
    TooManyHeaders(usize),
    /// Bytes after a head whose body was to follow in frames.
    #[error("HEAD frame has {0} bytes after its head without END_STREAM")]
    Trailing(usize),
}

/// A request head for stream `id` of tunnel `tunnel_id`, as a whole frame
/// (frame header included) ready to send.
pub fn encode_request(id: u32, tunnel_id: &str, head: &RequestHead) -> Bytes {
    let body = body_of(&head.body);
    let len = 2 + tunnel_id.len() + 2 + head.method.len() + 4 + head.path.len();
    let mut buf = start(id, &head.body, len + headers_len(&head.headers), &body);
    put_short(&mut buf, tunnel_id);
    put_short(&mut buf, &head.method);
    put_long(&mut buf, &head.path);
    put_headers(&mut buf, &head.headers);
    finish(buf, body)
}

/// A response head for stream `id`, as a whole frame ready to send.
pub fn encode_response(id: u32, head: &ResponseHead) -> Bytes {
    let body = body_of(&head.body);
    let mut buf = start(id, &head.body, 2 + headers_len(&head.headers), &body);
    buf.put_u16(head.status);
    put_headers(&mut buf, &head.headers);
    finish(buf, body)
}

/// Trailer fields ending stream `id`'s body, as a whole TRAILERS frame
/// ready to send.
pub fn encode_trailers(id: u32, fields: &[(String, String)]) -> Bytes {
    let mut buf = BytesMut::with_capacity(HEADER_LEN + headers_len(fields));
    buf.put_u8(FrameKind::Trailers as u8);
    buf.put_u32(id);
    put_headers(&mut buf, fields);
    buf.freeze()
}

/// A header list alone, as a TRAILERS frame's payload holds it (read back
/// with [`decode_trailers`]): for carrying fields elsewhere in the same
/// form.
pub fn encode_header_list(fields: &[(String, String)]) -> Bytes {
    let mut buf = BytesMut::with_capacity(headers_len(fields));
    put_headers(&mut buf, fields);
    buf.freeze()
}

/// Trailer fields from a TRAILERS frame's payload: a header list and
/// nothing after it.
pub fn decode_trailers(payload: Bytes) -> Result<Vec<(String, String)>, HeadFrameError> {
    let mut reader = Reader {
        rest: payload,
        end_stream: false,
    };
    let fields = reader.headers()?;
    reader.body()?;
    Ok(fields)
}

/// A request head from a HEAD frame's payload, with the tunnel it is for.
pub fn decode_request(payload: Bytes) -> Result<(String, RequestHead), HeadFrameError> {
    let mut reader = Reader::new(payload)?;
    let tunnel_id = reader.short("tunnel id")?;
    let method = reader.short("method")?;
    let path = reader.long("path")?;
    let headers = reader.headers()?;
    let body = reader.body()?;
    Ok((
        tunnel_id,
        RequestHead {
            method,
            path,
            headers,
            body,
        },
    ))
}

/// A response head from a HEAD frame's payload.
pub fn decode_response(payload: Bytes) -> Result<ResponseHead, HeadFrameError> {
    let mut reader = Reader::new(payload)?;
    let status = reader.u16("status")?;
    let headers = reader.headers()?;
    let body = reader.body()?;
    Ok(ResponseHead {
        status,
        headers,
        body,
    })
}

/// The bytes of a body that ends with its head (`None`: it follows in
/// frames). A JSON-form inline body of our own making is decoded; one that
/// does not decode (never ours) goes as empty.
fn body_of(body: &InlineBody) -> Option<Bytes> {
    (!body.body_stream).then(|| body.decode().unwrap_or_default())
}

/// A buffer holding the frame header and the flags, with room for `len`
/// bytes of head and the body.
fn start(id: u32, body: &InlineBody, len: usize, bytes: &Option<Bytes>) -> BytesMut {
    let extra = bytes.as_ref().map_or(0, Bytes::len);
    let mut buf = BytesMut::with_capacity(HEADER_LEN + 1 + len + extra);
    buf.put_u8(FrameKind::Head as u8);
    buf.put_u32(id);
    buf.put_u8(if body.body_stream { 0 } else { END_STREAM });
    buf
}

fn finish(mut buf: BytesMut, body: Option<Bytes>) -> Bytes {
    if let Some(body) = body {
        buf.put_slice(&body);
    }
    buf.freeze()
}

fn headers_len(headers: &[(String, String)]) -> usize {
    2 + headers
        .iter()
        .map(|(name, value)| 2 + name.len() + 4 + value.len())
        .sum::<usize>()
}

/// A string of at most 64 KiB (anything longer is cut there: no tunnel id,
/// method or header name of ours comes near it, and the head's checks
/// refuse what was cut).
fn put_short(buf: &mut BytesMut, text: &str) {
    let len = text.len().min(u16::MAX as usize);
    buf.put_u16(len as u16);
    buf.put_slice(&text.as_bytes()[..len]);
}

fn put_long(buf: &mut BytesMut, text: &str) {
    let len = text.len().min(u32::MAX as usize);
    buf.put_u32(len as u32);
    buf.put_slice(&text.as_bytes()[..len]);
}

fn put_headers(buf: &mut BytesMut, headers: &[(String, String)]) {
    let count = headers.len().min(u16::MAX as usize);
    buf.put_u16(count as u16);
    for (name, value) in &headers[..count] {
        put_short(buf, name);
        put_long(buf, value);
    }
}

/// Reads a HEAD payload front to back.
struct Reader {
    rest: Bytes,
    end_stream: bool,
}

impl Reader {
    /// Reads the flags.
    fn new(mut payload: Bytes) -> Result<Self, HeadFrameError> {
        if payload.is_empty() {
            return Err(HeadFrameError::Short("flags"));
        }
        let flags = payload.get_u8();
        if flags & !KNOWN_FLAGS != 0 {
            return Err(HeadFrameError::UnknownFlags(flags & !KNOWN_FLAGS));
        }
        Ok(Reader {
            rest: payload,
            end_stream: flags & END_STREAM != 0,
        })
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, HeadFrameError> {
        if self.rest.len() < 2 {
            return Err(HeadFrameError::Short(what));
        }
        Ok(self.rest.get_u16())
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, HeadFrameError> {
        if self.rest.len() < 4 {
            return Err(HeadFrameError::Short(what));
        }
        Ok(self.rest.get_u32())
    }

    fn text(&mut self, len: usize, what: &'static str) -> Result<String, HeadFrameError> {
        if self.rest.len() < len {
            return Err(HeadFrameError::Short(what));
        }
        let bytes = self.rest.split_to(len);
        String::from_utf8(bytes.to_vec()).map_err(|_| HeadFrameError::NotUtf8(what))
    }

    fn short(&mut self, what: &'static str) -> Result<String, HeadFrameError> {
        let len = self.u16(what)?;
        self.text(len.into(), what)
    }

    fn long(&mut self, what: &'static str) -> Result<String, HeadFrameError> {
        let len = self.u32(what)?;
        self.text(len as usize, what)
    }

    fn headers(&mut self) -> Result<Vec<(String, String)>, HeadFrameError> {
        let count = usize::from(self.u16("header count")?);
        if count > MAX_WIRE_HEADERS {
            return Err(HeadFrameError::TooManyHeaders(count));
        }
        // Each header takes at least six bytes: a count that the payload
        // cannot hold reserves no more than the payload could.
        let mut headers = Vec::with_capacity(count.min(self.rest.len() / 6));
        for _ in 0..count {
            let name = self.short("header name")?;
            let value = self.long("header value")?;
            headers.push((name, value));
        }
        Ok(headers)
    }

    /// The body: the rest with END_STREAM, else nothing may be left.
    fn body(self) -> Result<InlineBody, HeadFrameError> {
        if self.end_stream {
            Ok(InlineBody::raw(self.rest))
        } else if self.rest.is_empty() {
            Ok(InlineBody::streamed())
        } else {
            Err(HeadFrameError::Trailing(self.rest.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;

    fn request(body: InlineBody) -> RequestHead {
        RequestHead {
            method: "POST".into(),
            path: "/hooks/github?delivery=1".into(),
            headers: vec![
                ("host".into(), "demo.localhost".into()),
                ("x-tag".into(), "a".into()),
                ("x-tag".into(), "ünïcode".into()),
            ],
            body,
        }
    }

    /// The payload of a frame we encoded.
    fn payload(frame: Bytes, id: u32) -> Bytes {
        let frame = Frame::decode(frame, 0).unwrap();
        assert!(matches!(frame.kind, FrameKind::Head | FrameKind::Trailers));
        assert_eq!(frame.stream, id);
        frame.payload
    }

    #[test]
    fn a_request_head_reads_back_as_it_was_sent() {
        for body in [
            InlineBody::streamed(),
            InlineBody::raw(Bytes::from_static(b"{\"ok\":true}")),
            InlineBody::raw(Bytes::new()),
        ] {
            let head = request(body);
            let frame = encode_request(7, "k6fgeiplbr", &head);
            let (tunnel, read) = decode_request(payload(frame, 7)).unwrap();
            assert_eq!(tunnel, "k6fgeiplbr");
            assert_eq!(read.method, head.method);
            assert_eq!(read.path, head.path);
            assert_eq!(read.headers, head.headers);
            assert_eq!(read.body.body_stream, head.body.body_stream);
            assert_eq!(read.body.decode().unwrap(), head.body.decode().unwrap());
        }
    }

    #[test]
    fn a_response_head_reads_back_with_its_body_as_it_is() {
        let body = Bytes::from(vec![0u8, 255, 1, 2, 3]);
        let head = ResponseHead {
            status: 404,
            headers: vec![("content-type".into(), "application/octet-stream".into())],
            body: InlineBody::raw(body.clone()),
        };
        let read = decode_response(payload(encode_response(9, &head), 9)).unwrap();
        assert_eq!(read.status, 404);
        assert_eq!(read.headers, head.headers);
        assert_eq!(read.body.decode().unwrap(), body);
        assert!(!read.body.body_stream);
        // A JSON-form inline body of our own (an error page) goes as bytes.
        let page = ResponseHead {
            status: 502,
            headers: vec![],
            body: InlineBody::inline(b"bad gateway\n"),
        };
        let read = decode_response(payload(encode_response(1, &page), 1)).unwrap();
        assert_eq!(read.body.decode().unwrap(), &b"bad gateway\n"[..]);
    }

    #[test]
    fn every_cut_of_a_head_is_refused_and_so_are_unknown_flags() {
        let head = request(InlineBody::streamed());
        let whole = payload(encode_request(1, "t", &head), 1);
        for cut in 0..whole.len() {
            let err = decode_request(whole.slice(..cut)).unwrap_err();
            assert!(
                matches!(err, HeadFrameError::Short(_)),
                "cut at {cut}: {err}"
            );
        }
        let mut extra = whole.to_vec();
        extra.push(0);
        assert_eq!(
            decode_request(extra.into()).unwrap_err(),
            HeadFrameError::Trailing(1)
        );
        for flag in [0x02u8, 0x80] {
            let mut flagged = whole.to_vec();
            flagged[0] |= flag;
            assert_eq!(
                decode_request(flagged.into()).unwrap_err(),
                HeadFrameError::UnknownFlags(flag)
            );
        }
    }

    #[test]
    fn a_huge_header_count_is_refused_before_anything_is_held() {
        let mut payload = vec![END_STREAM, 0, 200];
        payload.extend_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(
            decode_response(payload.into()).unwrap_err(),
            HeadFrameError::TooManyHeaders(u16::MAX as usize)
        );
        // A count the payload cannot hold fails at its end, having
        // reserved no more than the payload's size allows.
        let mut payload = vec![END_STREAM, 0, 200];
        payload.extend_from_slice(&1000u16.to_be_bytes());
        assert!(matches!(
            decode_response(payload.into()).unwrap_err(),
            HeadFrameError::Short("header name")
        ));
    }

    #[test]
    fn strings_that_are_not_utf8_are_refused() {
        let mut payload = vec![0u8, 0, 1, 0xff];
        payload.extend_from_slice(&[0, 3]);
        payload.extend_from_slice(b"GET");
        assert_eq!(
            decode_request(payload.into()).unwrap_err(),
            HeadFrameError::NotUtf8("tunnel id")
        );
    }

    #[test]
    fn trailers_read_back_and_every_cut_or_excess_is_refused() {
        let fields = vec![
            ("grpc-status".to_owned(), "0".to_owned()),
            ("grpc-message".to_owned(), "caf\u{e9}".to_owned()),
        ];
        let whole = payload(encode_trailers(3, &fields), 3);
        assert_eq!(decode_trailers(whole.clone()).unwrap(), fields);
        assert_eq!(decode_trailers(Bytes::from_static(&[0, 0])).unwrap(), []);
        for cut in 0..whole.len() {
            assert!(
                matches!(
                    decode_trailers(whole.slice(..cut)),
                    Err(HeadFrameError::Short(_))
                ),
                "cut at {cut}"
            );
        }
        let mut extra = whole.to_vec();
        extra.push(0);
        assert_eq!(
            decode_trailers(extra.into()).unwrap_err(),
            HeadFrameError::Trailing(1)
        );
    }
}
