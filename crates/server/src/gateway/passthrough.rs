//! Protocol switches (WebSocket and any other `Upgrade`): once the local app
//! answers `101 Switching Protocols`, the visitor gets the 101 and from then
//! on the stream's two directions carry the raw bytes of the connection.
//!
//! The visitor's bytes are read from the upgraded connection only after the
//! 101 has been sent, so nothing it sends early reaches the app ahead of the
//! app's acceptance.
//!
//! The bytes of both directions count in the dashboard's `bytes_in` and
//! `bytes_out` of the tunnel (and the server) as they pass, read by read and
//! write by write: a WebSocket that stays open for hours shows its traffic
//! while it flows, not when it closes.

use bytes::Bytes;
use cryptun_proto::head::{headers_from_wire, keep_upgrade};
use cryptun_proto::mux::{Mux, RecvBody, SendHalf, copy_from_stream, copy_into_stream};
use cryptun_proto::{HeadError, ResponseHead};
use http::{Response, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::{Instrument, debug, debug_span};

use super::access_log::Switched;
use super::response::refuse_response;
use crate::body::{Body, full};
use crate::error::GatewayError;
use cryptun_proto::counted::Counted;

/// Answers the visitor with the app's 101 and joins the two connections.
pub(crate) fn switch(
    response: ResponseHead,
    mux: &Mux<ResponseHead>,
    on_upgrade: OnUpgrade,
    send: SendHalf<ResponseHead>,
    recv: RecvBody<ResponseHead>,
    counted: Switched,
) -> Result<Response<Body>, GatewayError> {
    let id = send.id();
    let limits = mux.limits();
    let mut headers = headers_from_wire(
        &response.headers,
        limits.max_headers,
        limits.max_header_bytes,
    )
    .map_err(|err| refuse_response(mux, id, err))?;
    let Some(protocol) = headers.get(header::UPGRADE).cloned() else {
        let err = HeadError::Header("a 101 response needs an Upgrade header".into());
        return Err(refuse_response(mux, id, err));
    };
    keep_upgrade(&mut headers, protocol);
    tokio::spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                // Dropping both halves resets the stream at the client.
                Err(err) => return debug!(%err, "the visitor's upgrade failed"),
            };
            let upgraded = Counted::new(TokioIo::new(upgraded), counted);
            let (reader, writer) = tokio::io::split(upgraded);
            let (up, down) = tokio::join!(
                copy_into_stream(reader, send),
                copy_from_stream(recv, writer)
            );
            debug!(?up, ?down, "passthrough ended");
        }
        .instrument(debug_span!("passthrough", stream = id)),
    );
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *resp.headers_mut() = headers;
    Ok(resp)
}
