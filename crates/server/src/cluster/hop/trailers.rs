//! Trailers across the hop. The hop is HTTP/1.1, where a response's
//! trailer fields go only to a request that said `TE: trailers`, and only
//! those the response named beforehand in `Trailer`; a gRPC service (over
//! HTTP/2) names none, and its status is a trailer. So the two nodes carry
//! them their own way:
//!
//! - the first node sends every request with `te: trailers`, and
//!   [`ASKS`] saying whether the visitor itself sent it (the serving node
//!   takes the `te` off when it did not, so the local service sees what
//!   one node would show it);
//! - the serving node names [`FIELD`] in the response's `Trailer` (after
//!   any names of the service's own) and sends the response's trailers as
//!   that one field: their header list ([`binary_head::encode_header_list`],
//!   as a TRAILERS frame holds it) in base64;
//! - the first node takes [`FIELD`] out of `Trailer` and turns the field
//!   back into the trailers, for the visitor.
//!
//! A response of declared length has no trailers on HTTP/1.1: over the hop
//! a streamed one goes chunked, its `Content-Length` moved to [`LENGTH`],
//! and the first node puts it back.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use cryptun_proto::binary_head::{decode_trailers, encode_header_list};
use cryptun_proto::head::{accepts_trailers, headers_from_wire, headers_to_wire};
use http::{HeaderMap, HeaderValue, Request, Response, header};
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;

use crate::body::Body;

/// The request header from the first node: `te` if the visitor said
/// `te: trailers`, else `-`; its presence asks for trailers as [`FIELD`].
pub(super) const ASKS: &str = "x-cryptun-hop-te";

/// The trailer field that carries a response's trailers over the hop.
const FIELD: &str = "x-cryptun-hop-trailers";

/// The `Content-Length` of a streamed response, moved aside for the hop.
const LENGTH: &str = "x-cryptun-hop-length";

/// Bounds on the trailers unpacked: a peer is trusted, but not to send
/// more than any head may hold.
const MAX_FIELDS: usize = cryptun_proto::limits::MAX_WIRE_HEADERS;
const MAX_BYTES: usize = 256 << 10;

/// The first node: asks the serving node for trailers, saying whether the
/// visitor takes them.
pub(super) fn ask<B>(req: &mut Request<B>) {
    let visitor = if accepts_trailers(req.headers()) {
        "te"
    } else {
        "-"
    };
    let headers = req.headers_mut();
    headers.insert(ASKS, HeaderValue::from_static(visitor));
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
}

/// The serving node: whether the first node asked for trailers; takes
/// `te` off when only the hop, not the visitor, said it.
pub(super) fn asked<B>(req: &mut Request<B>) -> bool {
    let Some(asks) = req.headers_mut().remove(ASKS) else {
        return false;
    };
    if asks != "te" {
        req.headers_mut().remove(header::TE);
    }
    true
}

/// The serving node: `resp` with its trailers packed into [`FIELD`],
/// named in its `Trailer`. A response whose body has ended already, or is
/// all in hand (a body inline in the client's head: its length known), has
/// no trailers to come, and goes as it is, with its length.
pub(super) fn pack(mut resp: Response<Body>) -> Response<Body> {
    let body = resp.body();
    if body.is_end_stream() || body.size_hint().exact().is_some() {
        return resp;
    }
    let names = resp
        .headers()
        .get_all(header::TRAILER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    let named = if names.is_empty() {
        HeaderValue::from_static(FIELD)
    } else {
        HeaderValue::from_str(&format!("{names}, {FIELD}"))
            .unwrap_or(HeaderValue::from_static(FIELD))
    };
    resp.headers_mut().insert(header::TRAILER, named);
    if let Some(length) = resp.headers_mut().remove(header::CONTENT_LENGTH) {
        resp.headers_mut().insert(LENGTH, length);
    }
    resp.map(|body| {
        body.map_frame(|frame| match frame.into_trailers() {
            Ok(trailers) => {
                let list = encode_header_list(&headers_to_wire(&trailers));
                let mut packed = HeaderMap::new();
                if let Ok(value) = HeaderValue::from_str(&BASE64.encode(list)) {
                    packed.insert(FIELD, value);
                }
                Frame::trailers(packed)
            }
            Err(frame) => frame,
        })
        .boxed()
    })
}

/// The first node: `resp` with [`FIELD`] turned back into its trailers,
/// if the serving node packed them so.
pub(super) fn unpack(mut resp: Response<Body>) -> Response<Body> {
    if let Some(length) = resp.headers_mut().remove(LENGTH) {
        // The hop's chunked framing gives way to the length again.
        resp.headers_mut().remove(header::TRANSFER_ENCODING);
        resp.headers_mut().insert(header::CONTENT_LENGTH, length);
    }
    let trailer = resp.headers_mut().remove(header::TRAILER);
    let Some(trailer) = trailer else {
        return resp;
    };
    let names: Vec<&str> = trailer
        .to_str()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .collect();
    let own: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| !name.eq_ignore_ascii_case(FIELD))
        .collect();
    if own.len() == names.len() {
        resp.headers_mut().insert(header::TRAILER, trailer);
        return resp;
    }
    if let Ok(value) = HeaderValue::from_str(&own.join(", ")) {
        if !own.is_empty() {
            resp.headers_mut().insert(header::TRAILER, value);
        }
    }
    resp.map(|body| {
        body.map_frame(|frame| match frame.into_trailers() {
            Ok(trailers) => Frame::trailers(unpacked(&trailers)),
            Err(frame) => frame,
        })
        .boxed()
    })
}

/// The trailers [`FIELD`] holds (none if it is missing or broken).
fn unpacked(trailers: &HeaderMap) -> HeaderMap {
    let list = trailers
        .get(FIELD)
        .and_then(|v| BASE64.decode(v.as_bytes()).ok())
        .and_then(|bytes| decode_trailers(bytes.into()).ok());
    list.and_then(|fields| headers_from_wire(&fields, MAX_FIELDS, MAX_BYTES).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_packed_on_one_node_unpack_on_the_other() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("7"));
        trailers.append("x-many", HeaderValue::from_static("a"));
        trailers.append("x-many", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        let list = encode_header_list(&headers_to_wire(&trailers));
        let mut packed = HeaderMap::new();
        packed.insert(FIELD, HeaderValue::from_str(&BASE64.encode(list)).unwrap());
        assert_eq!(unpacked(&packed), trailers);
        packed.insert(FIELD, HeaderValue::from_static("not base64!"));
        assert!(unpacked(&packed).is_empty());
    }

    #[test]
    fn a_peer_packing_more_fields_than_any_head_may_hold_gets_none_through() {
        let many: Vec<(String, String)> = (0..=MAX_FIELDS)
            .map(|i| (format!("x-{i}"), "v".to_owned()))
            .collect();
        let mut packed = HeaderMap::new();
        let list = BASE64.encode(encode_header_list(&many));
        packed.insert(FIELD, HeaderValue::from_str(&list).unwrap());
        assert!(unpacked(&packed).is_empty());
        let huge = vec![("x-big".to_owned(), "v".repeat(MAX_BYTES))];
        let list = BASE64.encode(encode_header_list(&huge));
        packed.insert(FIELD, HeaderValue::from_str(&list).unwrap());
        assert!(unpacked(&packed).is_empty());
        // Just within: through.
        let fits = vec![("x-big".to_owned(), "v".repeat(MAX_BYTES - 5))];
        let list = BASE64.encode(encode_header_list(&fits));
        packed.insert(FIELD, HeaderValue::from_str(&list).unwrap());
        assert_eq!(unpacked(&packed).len(), 1);
    }
}
