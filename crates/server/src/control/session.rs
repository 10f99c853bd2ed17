//! A running client session, once admitted: its multiplexer and first
//! tunnel, then the loop that reads every message from the client and routes
//! it (heads and body frames to their streams, credit to senders, further
//! `create_tunnel`s to `admit`), while its writer, polled by the same task,
//! sends everything queued for the client. When either stops, the session's
//! tunnels leave the registry and every request still pending on them fails
//! at once (the visitors get 502).
//!
//! A tunnel the client closes (`close_tunnel`, a client stopping on
//! purpose) leaves the registry with its name freed, not held, and the
//! client is told (`tunnel_closed`); the session goes on.
//!
//! A session opened with an API key also ends when that key is revoked
//! (`auth::revocation` notices): `error` `key_revoked`, close 1008, and its
//! names are freed at once instead of held for a reconnection.

use cryptun_proto::message::{ClientMessage, CreateTunnel, ErrorCode, ServerMessage, encode};
use cryptun_proto::mux::{CloseOnDrop, Mux, Side, WriterError, run_writer};
use cryptun_proto::tungstenite::Message;
use cryptun_proto::tungstenite::protocol::CloseFrame;
use cryptun_proto::{
    Capabilities, Frame, FrameError, FrameKind, ResponseHead, binary_head, close_code, negotiate,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::Control;
use super::auth::Identity;
use super::{Ws, close_for, close_frame};
use crate::edge::Peer;
use crate::metrics::{GaugeGuard, HandshakeFailure as Failure};
use crate::policy::{Place, Who};
use crate::registry::Registration;

/// Why a session ended: the `reason` of `cryptun_sessions_ended_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The client closed the WebSocket.
    ClientClosed,
    /// The connection failed or ended without a close.
    Lost,
    /// The client broke a protocol rule (closed with 1002, 1007 or 1009).
    Protocol,
    /// Nothing was heard from the client within the heartbeat timeout.
    Silent,
    /// The client stopped reading: a write blocked past the timeout.
    Stalled,
    /// The server shut down.
    Shutdown,
    /// The session's API key was revoked.
    Revoked,
}

impl Ended {
    fn label(self) -> &'static str {
        match self {
            Ended::ClientClosed => "client_closed",
            Ended::Lost => "lost",
            Ended::Protocol => "protocol",
            Ended::Silent => "silent",
            Ended::Stalled => "stalled",
            Ended::Shutdown => "shutdown",
            Ended::Revoked => "revoked",
        }
    }
}

/// The wait suggested to clients in `going_away`, before they reconnect
/// (they add a random spread, so a restart is not met by a herd).
const RECONNECT_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// A session whose first tunnel is registered and announced, its socket
/// split into the halves the reader and the writer take.
pub(super) struct Opened {
    sink: SplitSink<Ws, Message>,
    stream: SplitStream<Ws>,
    mux: Mux<ResponseHead>,
    /// The share of its streams that requests still uploading may hold.
    uploads: Arc<Semaphore>,
    /// The capabilities negotiated by its first `create_tunnel`.
    accepted: Capabilities,
    /// However the session's task ends (returns, panics, is aborted),
    /// pending visitors get their 502 at once.
    close_streams: CloseOnDrop<ResponseHead>,
    tunnels: Vec<Registration>,
    /// Counts the session in `cryptun_sessions` until dropped.
    connected: GaugeGuard,
    /// Its place among its identity's sessions.
    _place: Place<Who>,
}

/// Creates the session's first tunnel (`create` and `identity` are what
/// the handshake accepted) and tells the client, or tells it why not and
/// closes.
pub(super) async fn open(
    control: &Control,
    mut ws: Ws,
    peer: Peer,
    create: CreateTunnel,
    identity: &Identity,
    place: Place<Who>,
) -> Option<Opened> {
    // The session speaks what the client offered and this server supports
    // (`tunnel_created` says which); a client that states nothing gets the
    // seed's JSON-only protocol.
    let accepted = negotiate(create.offered(), Capabilities::SUPPORTED);
    let mux: Mux<ResponseHead> = Mux::new(Side::Opener, accepted, control.config.limits);
    let close_streams = mux.close_on_drop();
    let share = crate::gateway::upload_share(control.config.limits.max_streams);
    let uploads = Arc::new(Semaphore::new(share));
    match control
        .admit
        .create_tunnel((&mux, &uploads, accepted), &create, identity, peer, 0)
        .await
    {
        Ok((registration, created)) => {
            info!(subdomain = %registration.tunnel().subdomain, capabilities = ?accepted, "tunnel created");
            let tunnels = vec![registration];
            if ws.send(Message::text(created)).await.is_err() {
                mux.close();
                return None;
            }
            let (sink, stream) = ws.split();
            Some(Opened {
                sink,
                stream,
                mux,
                uploads,
                accepted,
                close_streams,
                tunnels,
                connected: control.metrics.session_started(),
                _place: place,
            })
        }
        Err(refusal) => {
            control.metrics.handshake(&Failure::Code(refusal.code));
            let _ = ws.send(Message::text(refusal.to_text())).await;
            let frame = close_frame(refusal.close_code(), "tunnel refused");
            let _ = ws.close(Some(frame)).await;
            None
        }
    }
}

/// The opened session's life: reads and routes the client's messages while
/// its writer sends, until either ends, the server stops or the key is
/// revoked.
pub(super) async fn serve(control: &Control, opened: Opened, peer: Peer, identity: &Identity) {
    let Opened {
        sink,
        mut stream,
        mux,
        uploads,
        accepted,
        close_streams: _close_streams,
        mut tunnels,
        connected: _connected,
        _place,
    } = opened;
    mux.heard();
    let key_session = match &identity {
        Identity::Key { id, .. } => Some((id.as_str(), control.key_sessions.register(id))),
        Identity::Anonymous => None,
    };
    // Resolves with the key's id once it is revoked.
    let revoked = async {
        match &key_session {
            Some((id, session)) => {
                session.revoked().await;
                *id
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(revoked);

    let writer = run_writer(sink, mux.clone(), control.config.heartbeat);
    tokio::pin!(writer);
    let going_away = announce_going_away(control, &mux);
    tokio::pin!(going_away);
    // Each arm says why the session ended and whether the writer still has
    // a close frame to send. In order: with nothing to drain, the
    // announcement and `sessions_stop` are due at once, and `going_away`
    // must be queued before the close.
    let (kind, ended, closing) = tokio::select! {
        biased;
        end = read_loop(control, (&mux, &uploads, accepted), &mut stream, &mut tunnels, identity, peer) => end,
        end = &mut going_away => end,
        result = &mut writer => match result {
            Ok(_) => (Ended::Lost, "writer finished".to_owned(), false),
            Err(err) => {
                let kind = match err {
                    WriterError::Silent(_) => Ended::Silent,
                    WriterError::Stalled(_) => Ended::Stalled,
                    WriterError::Ws(_) => Ended::Lost,
                };
                (kind, err.to_string(), false)
            }
        },
        () = control.sessions_stop.cancelled() => {
            // Each request still in flight is told why it ends, before the close.
            mux.reset_all(cryptun_proto::CancelReason::Shutdown);
            mux.queue_close(close_frame(close_code::GOING_AWAY, "server shutting down"));
            (Ended::Shutdown, "server shutting down".to_owned(), true)
        }
        id = &mut revoked => {
            cut_off(&mux, id, &mut tunnels);
            (Ended::Revoked, "API key revoked".to_owned(), true)
        }
    };
    control.metrics.session_ended(kind.label());
    // The tunnels go first, so new visitors see 404 rather than a dying
    // tunnel; then everything in flight fails at once.
    drop(tunnels);
    mux.close();
    info!(reason = %ended, "session ended");
    if closing {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), writer).await;
    }
}

/// Ends a session whose key was revoked: its tunnels leave the registry
/// with their names freed, not held (404 from now on), and the client is
/// told why before the close.
fn cut_off(mux: &Mux<ResponseHead>, id: &str, tunnels: &mut Vec<Registration>) {
    for registration in tunnels.drain(..) {
        registration.remove_without_hold();
    }
    let message =
        format!("the API key {id} was revoked by the server's operator; its tunnels are closed");
    mux.queue_text(encode(&ServerMessage::error(
        ErrorCode::KeyRevoked,
        message,
        None,
    )));
    mux.queue_close(close_frame(close_code::POLICY, "API key revoked"));
}

/// When shutdown begins, tells the client the server is going away; the
/// session goes on until the in-flight requests have drained. Never ends.
async fn announce_going_away(control: &Control, mux: &Mux<ResponseHead>) -> (Ended, String, bool) {
    control.draining.cancelled().await;
    let after = u64::try_from(RECONNECT_AFTER.as_millis()).unwrap_or(u64::MAX);
    mux.queue_text(encode(&ServerMessage::GoingAway {
        reconnect_after_ms: after,
    }));
    std::future::pending().await
}

/// Reads the client's messages until the connection ends or must be closed.
/// Returns why it ended, in a word and in a sentence, and whether a close
/// frame was queued.
async fn read_loop(
    control: &Control,
    conn: (&Mux<ResponseHead>, &Arc<Semaphore>, Capabilities),
    stream: &mut SplitStream<Ws>,
    tunnels: &mut Vec<Registration>,
    identity: &Identity,
    peer: Peer,
) -> (Ended, String, bool) {
    let mux = conn.0;
    while let Some(msg) = stream.next().await {
        mux.heard();
        let refusal = match msg {
            Ok(Message::Text(text)) => on_text(control, conn, &text, tunnels, identity, peer).await,
            Ok(Message::Binary(data)) => on_binary(mux, data),
            Ok(Message::Close(_)) => {
                return (
                    Ended::ClientClosed,
                    "client closed the connection".into(),
                    false,
                );
            }
            Ok(_) => None,
            Err(err) => match close_for(&err) {
                Some(frame) => Some(frame),
                None => return (Ended::Lost, format!("connection lost: {err}"), false),
            },
        };
        if let Some(frame) = refusal {
            let reason = frame.reason.to_string();
            warn!(code = u16::from(frame.code), %reason, "closing session");
            mux.queue_close(frame);
            return (Ended::Protocol, reason, true);
        }
    }
    (Ended::Lost, "connection lost".into(), false)
}

/// Handles one text message; returns a close frame if the session must end.
async fn on_text(
    control: &Control,
    (mux, uploads, accepted): (&Mux<ResponseHead>, &Arc<Semaphore>, Capabilities),
    text: &str,
    tunnels: &mut Vec<Registration>,
    identity: &Identity,
    peer: Peer,
) -> Option<CloseFrame> {
    match ClientMessage::decode(text) {
        Ok(ClientMessage::Response {
            request_id,
            response,
        }) => deliver(mux, request_id, response),
        Ok(ClientMessage::Cancel { request_id, reason }) => {
            mux.cancel_from_peer(request_id, reason)
        }
        Ok(ClientMessage::Ping) => mux.queue_pong(),
        Ok(ClientMessage::CloseTunnel { tunnel_id }) => close_tunnel(mux, tunnels, tunnel_id),
        Ok(ClientMessage::Pong) => {}
        Ok(ClientMessage::CreateTunnel(create)) => {
            // The connection's identity was settled by its first
            // create_tunnel; a token here is not looked at. Boxed: rare, and
            // inline it would grow every idle session's task.
            match Box::pin(control.admit.create_tunnel(
                (mux, uploads, accepted),
                &create,
                identity,
                peer,
                tunnels.len(),
            ))
            .await
            {
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
            let id = err.request_id();
            mux.queue_text(encode(&ServerMessage::error(
                err.code(),
                err.to_string(),
                id,
            )));
            // A response that could not be read fails its request now: the
            // visitor gets 502 rather than waiting for the timeout.
            if let Some(id) = id {
                mux.reset(id);
            }
        }
    }
    None
}

/// Closes the tunnel `id` of this session at its client's request: out of
/// the registry with its name freed, not held (the client is stopping, not
/// reconnecting), and `tunnel_closed` in answer; `no_tunnel` if the
/// session has no such tunnel.
fn close_tunnel(mux: &Mux<ResponseHead>, tunnels: &mut Vec<Registration>, id: String) {
    let Some(at) = tunnels.iter().position(|r| r.tunnel().id == id) else {
        mux.queue_text(encode(&ServerMessage::error(
            ErrorCode::NoTunnel,
            format!("this connection has no tunnel {id:?}"),
            None,
        )));
        return;
    };
    let registration = tunnels.remove(at);
    info!(subdomain = %registration.tunnel().subdomain, "tunnel closed by its client; name released");
    registration.remove_without_hold();
    mux.queue_text(encode(&ServerMessage::TunnelClosed { tunnel_id: id }));
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
    if frame.kind == FrameKind::Head && mux.binary_heads() {
        return on_head(mux, frame.stream, frame.payload);
    }
    mux.on_frame(frame)
        .err()
        .map(|violation| close_frame(close_code::PROTOCOL_ERROR, violation.to_string()))
}

/// A response head in a HEAD frame: to its stream, as a `response` is.
fn on_head(mux: &Mux<ResponseHead>, request_id: u32, payload: bytes::Bytes) -> Option<CloseFrame> {
    match binary_head::decode_response(payload) {
        Ok(response) => {
            deliver(mux, request_id, response);
            None
        }
        Err(err) => Some(close_frame(close_code::PROTOCOL_ERROR, err.to_string())),
    }
}

/// Hands the client's response head to the stream waiting for it.
fn deliver(mux: &Mux<ResponseHead>, request_id: u32, response: ResponseHead) {
    let body_follows = response.body.body_stream;
    if !mux.deliver_head(request_id, response, body_follows) {
        debug!(
            request_id,
            "response for an unknown or finished request dropped"
        );
    }
}
