//! The client's answer to a visitor's request, checked before the visitor
//! sees it: its status, its headers within the session's limits, its
//! inline body; and, when it breaks a rule, the refusal the client is told
//! of while the visitor gets 502.

use bytes::Bytes;
use cryptun_proto::head::{headers_from_wire, strip_hop_by_hop};
use cryptun_proto::message::{ErrorCode, ServerMessage, encode};
use cryptun_proto::mux::Mux;
use cryptun_proto::{HeadError, ResponseHead};
use http::{Response, StatusCode, header};

use crate::body::{Body, full};
use crate::error::GatewayError;

/// Tells the client its response for `id` was refused, resets the stream,
/// and returns the visitor's error.
pub(crate) fn refuse_response(mux: &Mux<ResponseHead>, id: u32, err: HeadError) -> GatewayError {
    mux.queue_text(encode(&ServerMessage::error(
        ErrorCode::BadResponse,
        err.to_string(),
        Some(id),
    )));
    mux.reset(id);
    err.into()
}

/// Turns the client's response head into a response (body still to be set),
/// with its inline body decoded.
pub(crate) fn build_response(
    head: ResponseHead,
    limits: &cryptun_proto::Limits,
    binary: bool,
) -> Result<(Response<Body>, Bytes), cryptun_proto::HeadError> {
    use cryptun_proto::HeadError;
    let status = StatusCode::from_u16(head.status)
        .ok()
        .filter(|s| *s != StatusCode::SWITCHING_PROTOCOLS && !s.is_informational())
        .ok_or(HeadError::Status(head.status))?;
    if head.body.body_stream && !binary {
        return Err(HeadError::Body(
            "body_stream on a session without binary streams".into(),
        ));
    }
    let inline = head.body.decode()?;
    if inline.len() > limits.max_inline_body {
        return Err(HeadError::Body(format!(
            "inline body of {} bytes exceeds {}",
            inline.len(),
            limits.max_inline_body
        )));
    }
    let mut headers =
        headers_from_wire(&head.headers, limits.max_headers, limits.max_header_bytes)?;
    strip_hop_by_hop(&mut headers);
    if !inline.is_empty() {
        // An inline body has a known length; whatever the client claimed,
        // the visitor gets the true one. (An empty one keeps the client's
        // Content-Length: the answer to a HEAD request has no body.)
        headers.remove(header::CONTENT_LENGTH);
    }
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok((resp, inline))
}
