//! The `/ws` control endpoint: the WebSocket upgrade, the `create_tunnel`
//! handshake, and the session task that owns one client connection.
//!
//! A session reads every message from its client and routes it (heads and
//! body frames to their streams, credit to senders); its writer, polled by
//! the same task, sends everything queued for the client. When either stops,
//! the session's tunnels leave the registry and every request still pending
//! on them fails at once (the visitors get 502).

use std::sync::Arc;

use cryptun_proto::message::{
    self, ClientMessage, CreateTunnel, ErrorCode, ServerMessage, decode, encode,
};
use cryptun_proto::mux::{Mux, Side, run_writer};
use cryptun_proto::tungstenite::protocol::{CloseFrame, Role, frame::coding::CloseCode};
use cryptun_proto::tungstenite::{self, Message, handshake::derive_accept_key};
use cryptun_proto::{Frame, FrameError, PROTOCOL_VERSION, ReadAhead, ResponseHead, close_code};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::admit::create_tunnel;
use crate::auth::{self, Identity};
use crate::error::GatewayError;
use crate::metrics::HandshakeFailure as Failure;
use crate::registry::Registration;
use crate::{Body, Peer, State, full};

/// The wait suggested to clients in `going_away`, before they reconnect
/// (they add a random spread, so a restart is not met by a herd).
const RECONNECT_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

type Ws = WebSocketStream<ReadAhead<TokioIo<Upgraded>>>;

/// Answers a WebSocket upgrade on `/ws` and starts the session behind it.
pub(crate) fn upgrade(
    state: Arc<State>,
    peer: Peer,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, GatewayError> {
    let headers = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err(GatewayError::BadUpgrade(
            "expected Upgrade: websocket and Connection: upgrade",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(GatewayError::BadUpgrade(
            "expected Sec-WebSocket-Version: 13",
        ));
    }
    let accept = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|key| derive_accept_key(key.as_bytes()))
        .ok_or(GatewayError::BadUpgrade("missing Sec-WebSocket-Key"))?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let tasks = state.tasks.clone();
    tasks.spawn(
        async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let config = state.config.limits.websocket_config();
                    let ws = WebSocketStream::from_raw_socket(
                        ReadAhead::new(TokioIo::new(upgraded)),
                        Role::Server,
                        Some(config),
                    )
                    .await;
                    session(state, ws, peer).await;
                }
                Err(err) => {
                    state.metrics.handshake_failed("upgrade_failed");
                    debug!(%err, "upgrade failed");
                }
            }
        }
        .instrument(info_span!("session", client = %peer)),
    );
    let mut resp = Response::new(full(""));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    Ok(resp)
}

fn close_frame(code: u16, reason: impl Into<String>) -> CloseFrame {
    let mut reason: String = reason.into();
    // A close reason must fit a control frame (123 bytes).
    while reason.len() > 120 {
        reason.pop();
    }
    CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }
}

/// Runs one client session from handshake to close.
async fn session(state: Arc<State>, mut ws: Ws, peer: Peer) {
    // The first create_tunnel and its key are checked before anything is
    // set up for the session: a refused client costs a message and a close.
    let admitted = tokio::time::timeout(state.config.handshake_timeout, async {
        let create = handshake(&mut ws).await.map_err(|(failure, frame)| {
            state.metrics.handshake(&failure);
            frame
        })?;
        match auth::authenticate(&state, peer, &create).await {
            Ok(identity) => Ok((create, identity)),
            Err(refusal) => {
                state.metrics.handshake(&Failure::Code(refusal.code));
                let _ = ws.send(Message::text(refusal.to_text())).await;
                Err(Some(close_frame(refusal.close_code(), refusal.message)))
            }
        }
    })
    .await;
    let (create, identity) = match admitted {
        Ok(Ok(admitted)) => admitted,
        Ok(Err(Some(frame))) => {
            debug!(reason = %frame.reason, "handshake refused");
            let _ = ws.close(Some(frame)).await;
            return;
        }
        Ok(Err(None)) => return,
        Err(_) => {
            state.metrics.handshake_failed("timeout");
            let reason = format!(
                "no create_tunnel within {:?}",
                state.config.handshake_timeout
            );
            let _ = ws
                .close(Some(close_frame(close_code::POLICY, reason)))
                .await;
            return;
        }
    };
    let mux: Mux<ResponseHead> = Mux::new(Side::Opener, create.binary_streams, state.config.limits);
    // Even if this task panics, pending visitors get their 502 at once.
    let _close_streams = mux.close_on_drop();
    let mut tunnels = Vec::new();
    let _connected = match create_tunnel(&state, &mux, &create, &identity, peer, 0).await {
        Ok((registration, created)) => {
            info!(subdomain = %registration.tunnel().subdomain, binary = create.binary_streams, "tunnel created");
            tunnels.push(registration);
            if ws.send(Message::text(created)).await.is_err() {
                mux.close();
                return;
            }
            state.metrics.session_started()
        }
        Err(refusal) => {
            state.metrics.handshake(&Failure::Code(refusal.code));
            let _ = ws.send(Message::text(refusal.to_text())).await;
            let frame = close_frame(refusal.close_code(), "tunnel refused");
            let _ = ws.close(Some(frame)).await;
            return;
        }
    };
    mux.heard();

    let (sink, mut stream) = ws.split();
    let writer = run_writer(sink, mux.clone(), state.config.heartbeat);
    tokio::pin!(writer);
    let going_away = announce_going_away(&state, &mux);
    tokio::pin!(going_away);
    // Each arm says why the session ended and whether the writer still has
    // a close frame to send. In order: with nothing to drain, the
    // announcement and `sessions_stop` are due at once, and `going_away`
    // must be queued before the close.
    let (ended, closing) = tokio::select! {
        biased;
        end = read_loop(&state, &mux, &mut stream, &mut tunnels, &identity, peer) => end,
        end = &mut going_away => end,
        result = &mut writer => match result {
            Ok(_) => ("writer finished".to_owned(), false),
            Err(err) => (err.to_string(), false),
        },
        () = state.sessions_stop.cancelled() => {
            mux.queue_close(close_frame(close_code::GOING_AWAY, "server shutting down"));
            ("server shutting down".to_owned(), true)
        }
    };
    // The tunnels go first, so new visitors see 404 rather than a dying
    // tunnel; then everything in flight fails at once.
    drop(tunnels);
    mux.close();
    info!(reason = %ended, "session ended");
    if closing {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), writer).await;
    }
}

/// When shutdown begins, tells the client the server is going away; the
/// session goes on until the in-flight requests have drained. Never ends.
async fn announce_going_away(state: &State, mux: &Mux<ResponseHead>) -> (String, bool) {
    state.draining.cancelled().await;
    let after = u64::try_from(RECONNECT_AFTER.as_millis()).unwrap_or(u64::MAX);
    mux.queue_text(encode(&ServerMessage::GoingAway {
        reconnect_after_ms: after,
    }));
    std::future::pending().await
}

/// Waits for the first `create_tunnel`. Pings are answered; anything else
/// before it is refused.
async fn handshake(ws: &mut Ws) -> Result<CreateTunnel, (Failure, Option<CloseFrame>)> {
    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None => return Err((Failure::Other("closed"), None)),
            Some(Ok(_)) => {
                return Err((
                    Failure::Code(ErrorCode::NoTunnel),
                    Some(close_frame(
                        close_code::POLICY,
                        "expected create_tunnel first",
                    )),
                ));
            }
            Some(Err(err)) => {
                let frame = close_for(&err);
                let reason = if frame.is_some() {
                    "protocol"
                } else {
                    "closed"
                };
                return Err((Failure::Other(reason), frame));
            }
        };
        let refuse = |code, text: String| {
            let msg = encode(&ServerMessage::error(code, text.clone(), None));
            (
                msg,
                (Failure::Code(code), close_frame(close_code::POLICY, text)),
            )
        };
        let (msg, (failure, frame)) = match decode::<ClientMessage>(&text, message::CLIENT_TYPES) {
            Ok(ClientMessage::CreateTunnel(create)) => match create.version {
                Some(v) if v > PROTOCOL_VERSION => refuse(
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "protocol version {v} is not supported; this server speaks {PROTOCOL_VERSION}"
                    ),
                ),
                _ => return Ok(create),
            },
            Ok(ClientMessage::Ping) => {
                let _ = ws.send(Message::text(encode(&ServerMessage::Pong))).await;
                continue;
            }
            Ok(_) => refuse(
                ErrorCode::NoTunnel,
                "the first message must be create_tunnel".into(),
            ),
            Err(err) => refuse(err.code(), err.to_string()),
        };
        let _ = ws.send(Message::text(msg)).await;
        return Err((failure, Some(frame)));
    }
}

/// Reads the client's messages until the connection ends or must be closed.
/// Returns why it ended, and whether a close frame was queued.
async fn read_loop(
    state: &State,
    mux: &Mux<ResponseHead>,
    stream: &mut futures_util::stream::SplitStream<Ws>,
    tunnels: &mut Vec<Registration>,
    identity: &Identity,
    peer: Peer,
) -> (String, bool) {
    while let Some(msg) = stream.next().await {
        mux.heard();
        let refusal = match msg {
            Ok(Message::Text(text)) => on_text(state, mux, &text, tunnels, identity, peer).await,
            Ok(Message::Binary(data)) => on_binary(mux, data),
            Ok(Message::Close(_)) => return ("client closed the connection".into(), false),
            Ok(_) => None,
            Err(err) => match close_for(&err) {
                Some(frame) => Some(frame),
                None => return (format!("connection lost: {err}"), false),
            },
        };
        if let Some(frame) = refusal {
            let reason = frame.reason.to_string();
            warn!(code = u16::from(frame.code), %reason, "closing session");
            mux.queue_close(frame);
            return (reason, true);
        }
    }
    ("connection lost".into(), false)
}

/// Handles one text message; returns a close frame if the session must end.
async fn on_text(
    state: &State,
    mux: &Mux<ResponseHead>,
    text: &str,
    tunnels: &mut Vec<Registration>,
    identity: &Identity,
    peer: Peer,
) -> Option<CloseFrame> {
    match decode::<ClientMessage>(text, message::CLIENT_TYPES) {
        Ok(ClientMessage::Response {
            request_id,
            response,
        }) => {
            let body_follows = response.body.body_stream;
            if !mux.deliver_head(request_id, response, body_follows) {
                debug!(
                    request_id,
                    "response for an unknown or finished request dropped"
                );
            }
        }
        Ok(ClientMessage::Cancel { request_id }) => mux.cancel_from_peer(request_id),
        Ok(ClientMessage::Ping) => mux.queue_pong(),
        Ok(ClientMessage::Pong) => {}
        Ok(ClientMessage::CreateTunnel(create)) => {
            // The connection's identity was settled by its first
            // create_tunnel; a token here is not looked at.
            match create_tunnel(state, mux, &create, identity, peer, tunnels.len()).await {
                Ok((registration, created)) => {
                    info!(subdomain = %registration.tunnel().subdomain, "tunnel created");
                    tunnels.push(registration);
                    mux.queue_text(created);
                }
                Err(refusal) => mux.queue_text(refusal.to_text()),
            }
        }
        Err(err) => {
            debug!(%err, "bad message from client");
            mux.queue_text(encode(&ServerMessage::error(
                err.code(),
                err.to_string(),
                None,
            )));
        }
    }
    None
}

/// Handles one binary message; returns a close frame if the session must end.
fn on_binary(mux: &Mux<ResponseHead>, data: bytes::Bytes) -> Option<CloseFrame> {
    if !mux.binary() {
        return Some(close_frame(
            close_code::PROTOCOL_ERROR,
            "binary frames need binary_streams in create_tunnel",
        ));
    }
    let frame = match Frame::decode(data, mux.limits().max_frame_payload) {
        Ok(frame) => frame,
        Err(err @ FrameError::TooLarge { .. }) => {
            return Some(close_frame(close_code::TOO_BIG, err.to_string()));
        }
        Err(err) => return Some(close_frame(close_code::PROTOCOL_ERROR, err.to_string())),
    };
    mux.on_frame(frame)
        .err()
        .map(|violation| close_frame(close_code::PROTOCOL_ERROR, violation.to_string()))
}

/// The close frame owed to a peer whose input broke the WebSocket layer's
/// rules, or `None` when the connection is simply gone.
fn close_for(err: &tungstenite::Error) -> Option<CloseFrame> {
    use tungstenite::Error;
    match err {
        Error::Capacity(e) => Some(close_frame(close_code::TOO_BIG, e.to_string())),
        Error::Utf8(_) => Some(close_frame(
            close_code::INVALID_PAYLOAD,
            "text frame is not valid UTF-8",
        )),
        Error::Protocol(e) => Some(close_frame(close_code::PROTOCOL_ERROR, e.to_string())),
        _ => None,
    }
}
