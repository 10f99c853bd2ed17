//! Control: the clients. The `/ws` endpoint's WebSocket upgrade and the
//! admission of a client (its first message must be a `create_tunnel`
//! within the handshake timeout, and its address and API key must pass
//! [`auth`]) before `session` runs the connection.
//!
//! A refused client costs a message and a close frame: nothing is set up for
//! a session until its handshake is accepted.
//!
//! - this file: the [`Control`] handle, the upgrade and the handshake.
//! - [`auth`]: who a client is (API keys, the backoff).
//! - `admit`: which tunnel a `create_tunnel` gets, and its registration.
//! - `session`: a running client connection and its tunnels.
//! - `revocation`: cutting the sessions of revoked keys.
//! - [`whoami`]: `GET /api/whoami`, which key a bearer token is (for
//!   `cryptun login`), under the same backoff as the handshake.

mod admit;
pub(crate) mod auth;
mod revocation;
mod session;
pub(crate) mod whoami;

use std::sync::Arc;

use cryptun_proto::message::{ClientMessage, CreateTunnel, ErrorCode, ServerMessage, encode};
use cryptun_proto::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};
use cryptun_proto::tungstenite::{self, Message, handshake::derive_accept_key};
use cryptun_proto::websocket::{End, Socket};
use cryptun_proto::{PROTOCOL_VERSION, close_code};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span};

use crate::body::{Body, full};
use crate::config::Config;
use crate::edge::Peer;
use crate::edge::VisitorBody;
use crate::error::GatewayError;
use crate::metrics::{HandshakeFailure as Failure, Metrics};
use crate::policy::{Backoff, Place, Quota, Who};
use crate::registry::Registry;
use crate::store::Keys;
use admit::Admit;
use auth::{Auth, Identity, Refusal};
use revocation::{KeySessions, Watcher};

/// Everything the control endpoint and its sessions use.
pub(crate) struct Control {
    config: Arc<Config>,
    metrics: Metrics,
    admit: Admit,
    /// Live sessions by API key, cut when their key is revoked.
    key_sessions: Arc<KeySessions>,
    /// Sessions per identity (key, or address without one).
    sessions: Arc<Quota<Who>>,
    /// Session tasks, awaited on shutdown.
    tasks: TaskTracker,
    /// Fires when sessions must close (after in-flight requests drained).
    sessions_stop: CancellationToken,
    /// Fires when shutdown begins: new clients are refused and sessions
    /// are told the server is going away.
    draining: CancellationToken,
}

/// What a [`Control`] is built from.
pub(crate) struct Parts {
    pub(crate) config: Arc<Config>,
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) store: Arc<dyn Keys>,
    pub(crate) metrics: Metrics,
    pub(crate) listen_port: u16,
    pub(crate) ports: Arc<crate::ports::Ports>,
    pub(crate) shared_ports: Option<Arc<crate::cluster::ports::SharedPorts>>,
    pub(crate) tasks: TaskTracker,
    pub(crate) sessions_stop: CancellationToken,
    pub(crate) draining: CancellationToken,
}

impl Control {
    pub(crate) fn new(parts: Parts) -> Self {
        let Parts {
            config,
            registry,
            store,
            metrics,
            listen_port,
            ports,
            shared_ports,
            tasks,
            sessions_stop,
            draining,
        } = parts;
        let backoff = Arc::new(Backoff::new(config.auth_backoff));
        let auth = Auth::new(config.auth, store, backoff);
        Control {
            admit: Admit {
                config: Arc::clone(&config),
                registry,
                auth,
                metrics: metrics.clone(),
                listen_port,
                ports,
                shared_ports,
                tunnels: Quota::new(config.max_tunnels_per_ip),
            },
            sessions: Quota::new(config.max_sessions_per_ip),
            config,
            metrics,
            key_sessions: Arc::default(),
            tasks,
            sessions_stop,
            draining,
        }
    }

    /// Starts the task that cuts the sessions of keys revoked in `store`,
    /// until sessions close.
    pub(crate) fn spawn_revocation_watcher(&self, store: Arc<dyn Keys>) {
        let watcher = Watcher {
            store,
            every: self.config.revocation_poll,
            sessions: Arc::clone(&self.key_sessions),
            registry: Arc::clone(&self.admit.registry),
        };
        watcher.spawn(&self.tasks, self.sessions_stop.clone());
    }
}

type Ws = Socket<TokioIo<Upgraded>>;

impl Control {
    /// Answers a WebSocket upgrade on `/ws` and starts the session behind it;
    /// refused once the server is draining.
    pub(crate) fn upgrade(
        control: &Arc<Control>,
        peer: Peer,
        mut req: Request<VisitorBody>,
    ) -> Result<Response<Body>, GatewayError> {
        if control.draining.is_cancelled() {
            return Err(GatewayError::ShuttingDown);
        }
        if !control.admit.registry.can_admit() {
            return Err(GatewayError::ClusterUnavailable);
        }
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
        let tasks = control.tasks.clone();
        let control = Arc::clone(control);
        tasks.spawn(
            async move {
                match on_upgrade.await {
                    Ok(upgraded) => {
                        // Two futures one after the other, so that nothing only
                        // the opening needs (the unsplit socket, the handshake,
                        // the first create_tunnel) stays in this task's state for
                        // the session's life: it is most of an idle tunnel's cost.
                        // The opening is boxed, so that however it grows, the
                        // task is only ever as large as the serving.
                        let opening = Box::pin(control.open(upgraded, peer));
                        let opened = tokio::select! {
                            // An opening that is done wins: its session ends
                            // through `serve`, with going_away and 1001.
                            biased;
                            opened = opening => opened,
                            // Sessions are closing (shutdown): a handshake still
                            // under way is dropped, so that no tunnel opens after
                            // the names held for reconnection were saved; its
                            // client reconnects.
                            () = control.sessions_stop.cancelled() => None,
                        };
                        if let Some((opened, identity)) = opened {
                            session::serve(&control, opened, peer, &identity).await;
                        }
                    }
                    Err(err) => {
                        control.metrics.handshake_failed("upgrade_failed");
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

impl Control {
    /// Speaks WebSocket on the upgraded connection, admits the client and opens
    /// its session with its first tunnel; `None` if it went no further.
    async fn open(&self, upgraded: Upgraded, peer: Peer) -> Option<(session::Opened, Identity)> {
        let limits = &self.config.limits;
        let max = limits
            .max_message_bytes
            .max(limits.max_frame_payload + cryptun_proto::frame::HEADER_LEN);
        let mut ws = Socket::new(TokioIo::new(upgraded), End::Server, max, max);
        let (create, identity, place) = self.admit(&mut ws, peer).await?;
        let opened = session::open(self, ws, peer, create, &identity, place).await?;
        Some((opened, identity))
    }

    /// Waits for the client's first `create_tunnel` and checks its address and
    /// key. A refused or silent client is told why and the connection closed;
    /// `None` then.
    async fn admit(&self, ws: &mut Ws, peer: Peer) -> Option<(CreateTunnel, Identity, Place<Who>)> {
        // The first create_tunnel and its key are checked before anything is
        // set up for the session: a refused client costs a message and a close.
        let admitted = tokio::time::timeout(self.config.handshake_timeout, async {
            let create = handshake(ws).await.map_err(|(failure, frame)| {
                self.metrics.handshake(&failure);
                frame
            })?;
            let admitted = self.admit.auth.authenticate(peer, &create).await;
            let placed = admitted.and_then(|identity| {
                let who = identity.who(peer);
                match self.sessions.take(who) {
                    Some(place) => Ok((identity, place)),
                    None => {
                        self.metrics.refused("max_sessions");
                        Err(Refusal::quota("sessions", self.sessions.max()))
                    }
                }
            });
            match placed {
                Ok((identity, place)) => Ok((create, identity, place)),
                Err(refusal) => {
                    self.metrics.handshake(&Failure::Code(refusal.code));
                    let _ = ws.send(Message::text(refusal.to_text())).await;
                    Err(Some(close_frame(refusal.close_code(), refusal.message)))
                }
            }
        })
        .await;
        match admitted {
            Ok(Ok(admitted)) => Some(admitted),
            Ok(Err(Some(frame))) => {
                debug!(reason = %frame.reason, "handshake refused");
                let _ = ws.close(Some(frame)).await;
                None
            }
            Ok(Err(None)) => None,
            Err(_) => {
                self.metrics.handshake_failed("timeout");
                let reason = format!(
                    "no create_tunnel within {:?}",
                    self.config.handshake_timeout
                );
                let _ = ws
                    .close(Some(close_frame(close_code::POLICY, reason)))
                    .await;
                None
            }
        }
    }
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
        let (msg, (failure, frame)) = match ClientMessage::decode(&text) {
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

/// The close frame owed to a peer whose input broke the WebSocket layer's
/// rules, or `None` when the connection is simply gone.
fn close_for(err: &tungstenite::Error) -> Option<CloseFrame> {
    use tungstenite::Error;
    use tungstenite::error::ProtocolError;
    match err {
        // The connection just ended (a client killed, a network gone): no
        // rule was broken, and there is nobody left to tell.
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        Error::Capacity(e) => Some(close_frame(close_code::TOO_BIG, e.to_string())),
        Error::Utf8(_) => Some(close_frame(
            close_code::INVALID_PAYLOAD,
            "text frame is not valid UTF-8",
        )),
        Error::Protocol(e) => Some(close_frame(close_code::PROTOCOL_ERROR, e.to_string())),
        _ => None,
    }
}
