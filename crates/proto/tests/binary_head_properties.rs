//! Property tests of HEAD and TRAILERS frames (`binary_head`): any head reads back as it
//! was written, whatever its strings and body; and any bytes at all are
//! read or refused without a panic, and what is read writes back to the
//! same bytes, so two readings of one frame cannot differ.

use bytes::Bytes;
use cryptun_proto::binary_head::{
    HeadFrameError, decode_request, decode_response, decode_trailers, encode_request,
    encode_response, encode_trailers,
};
use cryptun_proto::frame::{Frame, HEADER_LEN};
use cryptun_proto::{InlineBody, RequestHead, ResponseHead};
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9/?=&%-]{0,24}",
        any::<String>().prop_map(|s| s.chars().take(24).collect()),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((text(), text()), 0..12)
}

fn body() -> impl Strategy<Value = InlineBody> {
    prop_oneof![
        Just(InlineBody::streamed()),
        prop::collection::vec(any::<u8>(), 0..256).prop_map(|b| InlineBody::raw(b.into())),
    ]
}

/// The payload of a frame we encoded (its 5-byte header off).
fn payload(frame: Bytes) -> Bytes {
    frame.slice(HEADER_LEN..)
}

proptest! {
    #[test]
    fn any_request_head_reads_back(
        id in any::<u32>(),
        tunnel in text(),
        method in text(),
        path in text(),
        headers in headers(),
        body in body(),
    ) {
        let head = RequestHead { method, path, headers, body };
        let frame = encode_request(id, &tunnel, &head);
        let decoded = Frame::decode(frame.clone(), 0).unwrap();
        prop_assert_eq!(decoded.stream, id);
        let (read_tunnel, read) = decode_request(decoded.payload).unwrap();
        prop_assert_eq!(read_tunnel, tunnel);
        prop_assert_eq!(&read.method, &head.method);
        prop_assert_eq!(&read.path, &head.path);
        prop_assert_eq!(&read.headers, &head.headers);
        prop_assert_eq!(read.body.body_stream, head.body.body_stream);
        prop_assert_eq!(read.body.decode().unwrap(), head.body.decode().unwrap());
    }

    #[test]
    fn any_response_head_reads_back(
        id in any::<u32>(),
        status in any::<u16>(),
        headers in headers(),
        body in body(),
    ) {
        let head = ResponseHead { status, headers, body };
        let read = decode_response(payload(encode_response(id, &head))).unwrap();
        prop_assert_eq!(read.status, head.status);
        prop_assert_eq!(&read.headers, &head.headers);
        prop_assert_eq!(read.body.body_stream, head.body.body_stream);
        prop_assert_eq!(read.body.decode().unwrap(), head.body.decode().unwrap());
    }

    /// Arbitrary payloads: refused with a reason, or read, and then written
    /// back byte for byte.
    #[test]
    fn any_bytes_are_read_exactly_or_refused(
        bytes in prop::collection::vec(any::<u8>(), 0..96),
    ) {
        let given = Bytes::from(bytes.clone());
        match decode_response(given.clone()) {
            Ok(head) => {
                let again = payload(encode_response(3, &head));
                prop_assert_eq!(&again[..], &bytes[..]);
            }
            Err(err) => prop_assert!(!err.to_string().is_empty()),
        }
        match decode_request(given) {
            Ok((tunnel, head)) => {
                let again = payload(encode_request(3, &tunnel, &head));
                prop_assert_eq!(&again[..], &bytes[..]);
            }
            Err(HeadFrameError::UnknownFlags(flags)) => prop_assert!(flags & 0x01 == 0),
            Err(_) => {}
        }
    }

    /// A valid head with bytes cut off its end is refused (without
    /// END_STREAM: with it, a cut in the body is only a shorter body).
    #[test]
    fn a_cut_head_is_refused(headers in headers(), cut in 1usize..64) {
        let head = ResponseHead { status: 200, headers, body: InlineBody::streamed() };
        let whole = payload(encode_response(1, &head));
        let cut = cut.min(whole.len());
        prop_assert!(decode_response(whole.slice(..whole.len() - cut)).is_err());
    }

    #[test]
    fn any_trailers_read_back(id in any::<u32>(), fields in headers()) {
        let frame = encode_trailers(id, &fields);
        let decoded = Frame::decode(frame, 0).unwrap();
        prop_assert_eq!(decoded.stream, id);
        prop_assert_eq!(decode_trailers(decoded.payload).unwrap(), fields);
    }

    /// Arbitrary TRAILERS payloads: refused, or read and written back
    /// byte for byte.
    #[test]
    fn any_trailer_bytes_are_read_exactly_or_refused(
        bytes in prop::collection::vec(any::<u8>(), 0..96),
    ) {
        if let Ok(fields) = decode_trailers(Bytes::from(bytes.clone())) {
            let again = payload(encode_trailers(3, &fields));
            prop_assert_eq!(&again[..], &bytes[..]);
        }
    }
}
