//! One connection to the server, once its tunnels are created (see
//! `handshake`): a reader that dispatches requests and frames while the
//! writer sends responses and credit, until the connection ends.
//!
//! A client that stops on purpose (shutdown fires) first closes its
//! tunnels, on a server that speaks `close_tunnel`, so that their names are
//! free at once rather than held for a reconnection that will not come;
//! it waits for the answers at most [`CLOSE_WAIT`], then closes.

use std::collections::HashSet;
use std::ops::ControlFlow::{self, Break, Continue};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use cryptun_proto::message::{ClientMessage, ErrorCode, ServerMessage, TunnelCreated, encode};
use cryptun_proto::mux::{Heartbeat, Mux, OpenError, Side, run_writer};
use cryptun_proto::raw::OpenStream;
use cryptun_proto::tungstenite::protocol::CloseFrame;
use cryptun_proto::tungstenite::protocol::frame::coding::CloseCode;
use cryptun_proto::tungstenite::{Error as WsError, Message};
use cryptun_proto::websocket::Socket;
use cryptun_proto::{Capability, Frame, FrameKind, Limits, RequestHead, binary_head, close_code};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::error::ExchangeError;
use crate::forward::{Forwarder, forward};
use crate::servers::Endpoint;
use crate::{ClientConfig, ClientError, Events, transport};

pub(crate) type Ws = Socket<transport::Stream>;

/// The wait before reconnecting to a server that closed with 1001 without
/// saying how long to wait.
const GOING_AWAY_WAIT: Duration = Duration::from_secs(1);

/// How long a stopping client waits for the server to confirm that its
/// tunnels are closed: a round trip, with room for a loaded server. Past
/// it the client closes all the same, and its names stay held for the
/// server's grace.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A connected client with its live tunnels, ready to [`run`](Session::run).
pub struct Session {
    ws: Ws,
    /// One per [`ClientConfig::tunnels`], in the same order.
    tunnels: Vec<TunnelCreated>,
    config: ClientConfig,
    /// What arrived during the handshake after the first tunnel was up.
    early: Vec<Message>,
    /// The server connected to.
    server: Endpoint,
}

impl Session {
    /// A session opened on `ws` (see [`crate::handshake`]).
    pub(crate) fn new(
        ws: Ws,
        tunnels: Vec<TunnelCreated>,
        config: ClientConfig,
        early: Vec<Message>,
        server: Endpoint,
    ) -> Self {
        Session {
            ws,
            tunnels,
            config,
            early,
            server,
        }
    }

    /// The server this session is connected to, with the address dialled.
    pub fn server(&self) -> &Endpoint {
        &self.server
    }

    /// The (first) tunnel the server created.
    pub fn tunnel(&self) -> &TunnelCreated {
        // `connect` returns a session only with every tunnel created, and
        // there is always a first.
        &self.tunnels[0]
    }

    /// Every tunnel the server created, in the order of
    /// [`ClientConfig::tunnels`].
    pub fn tunnels(&self) -> &[TunnelCreated] {
        &self.tunnels
    }

    /// Settings that take these tunnels' names back on a new connection
    /// while the server holds them after a disconnect: the same settings,
    /// asking for these subdomains, with each tunnel's reconnect secret
    /// (for tunnels opened without a key; with a key, the key is enough).
    pub fn reconnect_config(&self) -> ClientConfig {
        crate::reconnect::reconnect_config(&self.config, &self.tunnels)
    }

    /// Serves requests until `shutdown` fires (returns `Ok`) or the
    /// connection ends (returns why).
    pub async fn run(self, shutdown: CancellationToken, events: Events) -> Result<(), ClientError> {
        let announced = self.tunnel().limits;
        let limits = Limits {
            max_message_bytes: announced.max_message_bytes,
            max_frame_payload: announced.max_frame_payload,
            stream_window: announced.stream_window,
            max_inline_body: announced.max_inline_body,
            // Headroom over the server's limit: see `busy_response`.
            max_streams: announced.max_streams.saturating_mul(2),
            ..Limits::default()
        };
        let interval = Duration::from_millis(announced.heartbeat_interval_ms.max(100));
        let heartbeat = Heartbeat {
            interval,
            timeout: interval * 3,
        };
        // Bodies as frames whatever the server said (it sends none without
        // them); heads as HEAD frames once it accepted that.
        let accepted = self.tunnel().capabilities().with(Capability::BinaryStreams);
        let mux: Mux<()> = Mux::new(Side::Acceptor, accepted, limits);
        let raw = accepted.contains(Capability::RawStreams);
        // However this ends, even if the future is dropped mid-way (its task
        // aborted), every stream fails, so the request tasks let go of their
        // local requests instead of holding them open forever.
        let _close_streams = mux.close_on_drop();
        mux.heard();
        let created = (self.tunnels.as_slice(), self.server.addr);
        let forwarder = Arc::new(Forwarder::new(&self.config, created, events));
        let (sink, stream) = self.ws.split();
        // What came during the handshake goes first, in order.
        let early = futures_util::stream::iter(self.early.into_iter().map(Ok));
        let mut stream = early.chain(stream);
        let writer = run_writer(sink, mux.clone(), heartbeat);
        tokio::pin!(writer);
        // What to close before leaving, if the server can be told.
        let release = if self.tunnels[0]
            .capabilities()
            .contains(Capability::CloseTunnel)
        {
            self.tunnels.iter().map(|t| t.tunnel_id.clone()).collect()
        } else {
            Vec::new()
        };
        // Each arm says how the session ended and whether the writer still
        // has a close frame to send.
        let (result, closing) = tokio::select! {
            end = read_loop(&mux, &mut stream, (&forwarder, raw), (&shutdown, release)) => match end {
                // Stopping: tunnels closed (or not confirmed in time). The
                // names of those closed are free: their secrets are void.
                Ok(closed) => {
                    if let Some(saved) = self.config.saved() {
                        for tunnel in self.tunnels.iter().filter(|t| closed.contains(&t.tunnel_id)) {
                            saved.forget(tunnel);
                        }
                    }
                    // Requests still in flight end with the session: the
                    // server is told why, before the close.
                    mux.reset_all(cryptun_proto::CancelReason::Shutdown);
                    mux.queue_close(CloseFrame { code: CloseCode::Normal, reason: "client shutting down".into() });
                    (Ok(()), true)
                }
                // Lost while stopping: nothing left to do.
                Err(_) if shutdown.is_cancelled() => (Ok(()), false),
                Err(end) => {
                    let closing = matches!(end, ClientError::Protocol(_));
                    (Err(end), closing)
                }
            },
            end = &mut writer => (Err(match end {
                Ok(_) => ClientError::Disconnected("closed".into()),
                Err(err) => ClientError::Disconnected(err.to_string()),
            }), false),
        };
        mux.close();
        if closing {
            let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
        }
        result
    }
}

/// Reads the server's messages, dispatching requests and frames, until the
/// connection ends (returns why) or, once `shutdown` fires, the tunnels of
/// `release` are closed (returns those the server confirmed closed; at
/// once if there are none, after [`CLOSE_WAIT`] at most).
async fn read_loop(
    mux: &Mux<()>,
    stream: &mut (impl futures_util::Stream<Item = Result<Message, WsError>> + Unpin),
    (forwarder, raw): (&Arc<Forwarder>, bool),
    (shutdown, release): (&CancellationToken, Vec<String>),
) -> Result<Vec<String>, ClientError> {
    let mut reader = Reader {
        mux,
        forwarder,
        raw,
        going_away: None,
        closing: None,
        closed: Vec::new(),
    };
    let deadline = tokio::time::sleep(Duration::MAX);
    tokio::pin!(deadline);
    loop {
        let msg = tokio::select! {
            biased;
            () = shutdown.cancelled(), if reader.closing.is_none() => {
                if release.is_empty() {
                    return Ok(Vec::new());
                }
                for tunnel_id in &release {
                    let close = ClientMessage::CloseTunnel { tunnel_id: tunnel_id.clone() };
                    mux.queue_text(encode(&close));
                }
                reader.closing = Some(release.iter().cloned().collect());
                deadline.as_mut().reset(tokio::time::Instant::now() + CLOSE_WAIT);
                continue;
            }
            () = &mut deadline => {
                warn!("the server did not confirm that the tunnels were closed; their names stay held for a while");
                return Ok(reader.closed);
            }
            msg = stream.next() => msg,
        };
        let Some(msg) = msg else { break };
        mux.heard();
        let read = match msg {
            Ok(Message::Text(text)) => reader.text(&text),
            Ok(Message::Binary(data)) => reader.binary(data),
            Ok(Message::Close(frame)) => Break(reader.closed(frame.as_ref())),
            Ok(_) => Continue(()),
            Err(err) => Break(reader.lost(err.to_string())),
        };
        if let Break(end) = read {
            return Err(end);
        }
        if reader.closing.as_ref().is_some_and(HashSet::is_empty) {
            return Ok(reader.closed);
        }
    }
    Err(reader.lost("connection lost".into()))
}

/// What [`read_loop`] works with, and what it remembers between messages.
struct Reader<'a> {
    mux: &'a Mux<()>,
    forwarder: &'a Arc<Forwarder>,
    /// The server accepted `raw_streams`: OPEN frames may come.
    raw: bool,
    /// Set by `going_away`: however the connection then ends, the server
    /// left on purpose and said when to come back.
    going_away: Option<Duration>,
    /// Once stopping: the tunnels asked to close and not yet confirmed.
    closing: Option<HashSet<String>>,
    /// The tunnels the server confirmed closed.
    closed: Vec<String>,
}

impl Reader<'_> {
    /// A control message; a request starts its exchange.
    fn text(&mut self, text: &str) -> ControlFlow<ClientError> {
        match ServerMessage::decode(text) {
            Ok(ServerMessage::Request {
                request_id,
                tunnel_id,
                request,
            }) => return self.request(request_id, tunnel_id, request),
            Ok(ServerMessage::Cancel { request_id, reason }) => {
                self.mux.cancel_from_peer(request_id, reason)
            }
            Ok(ServerMessage::Error(err)) if err.code == ErrorCode::KeyRevoked => {
                // The server closes the session next (1008).
                return Break(ClientError::KeyRevoked {
                    message: err.message,
                });
            }
            Ok(ServerMessage::Error(err)) => {
                warn!(code = ?err.code, message = %err.message, "server reported an error")
            }
            Ok(ServerMessage::GoingAway { reconnect_after_ms }) => {
                debug!(reconnect_after_ms, "the server is going away");
                self.going_away = Some(Duration::from_millis(reconnect_after_ms));
            }
            Ok(ServerMessage::TunnelClosed { tunnel_id }) => {
                debug!(%tunnel_id, "tunnel closed");
                if let Some(pending) = &mut self.closing {
                    if pending.remove(&tunnel_id) {
                        self.closed.push(tunnel_id);
                    }
                }
            }
            Ok(ServerMessage::Pong | ServerMessage::TunnelCreated(_)) => {}
            Err(err) => warn!(%err, "ignoring a message from the server"),
        }
        Continue(())
    }

    /// A new request: its stream, and a task forwarding it.
    fn request(
        &self,
        request_id: u32,
        tunnel_id: String,
        request: RequestHead,
    ) -> ControlFlow<ClientError> {
        match self.mux.accept(request_id, request.body.body_stream) {
            Ok(stream) => {
                let forwarder = Arc::clone(self.forwarder);
                // Boxed: the exchange's future is some 4 KB, which tokio
                // would otherwise copy into the task and again at each
                // change of the task's stage (3,500 instructions per
                // request, docs/BENCHMARKS.md).
                tokio::spawn(Box::pin(forward(forwarder, tunnel_id, stream, request)));
            }
            Err(OpenError::TooMany) => {
                // The server frees a stream when it has the whole
                // response; we may hold ours a moment longer, so this can
                // happen without anyone misbehaving.
                if let Some(busy) = busy_response(request_id) {
                    self.mux.queue_text(busy);
                }
            }
            Err(OpenError::Closed) => {}
            Err(err @ OpenError::Duplicate(_)) => {
                return Break(self.violated(format!("request {request_id}: {err}")));
            }
        }
        Continue(())
    }

    /// A visitor's connection to a TCP tunnel: its stream, and a task
    /// carrying it to the local service.
    fn open(&self, id: u32, open: OpenStream) -> ControlFlow<ClientError> {
        match self.mux.accept(id, true) {
            Ok(stream) => {
                let forwarder = Arc::clone(self.forwarder);
                tokio::spawn(crate::raw::carry(forwarder, self.mux.clone(), open, stream));
            }
            // Over our stream limit: the visitor's connection is refused.
            Err(OpenError::TooMany) => self.mux.reset(id),
            Err(OpenError::Closed) => {}
            Err(err @ OpenError::Duplicate(_)) => {
                return Break(self.violated(format!("OPEN {id}: {err}")));
            }
        }
        Continue(())
    }

    /// A binary frame: a request head (HEAD), a TCP connection (OPEN), or
    /// for a stream.
    fn binary(&self, data: Bytes) -> ControlFlow<ClientError> {
        let violation = match Frame::decode(data, self.mux.limits().max_frame_payload) {
            Ok(frame) if frame.kind == FrameKind::Open && self.raw => {
                match OpenStream::decode(frame.payload) {
                    Ok(open) => return self.open(frame.stream, open),
                    Err(err) => Some(err.to_string()),
                }
            }
            Ok(frame) if frame.kind == FrameKind::Head && self.mux.binary_heads() => {
                match binary_head::decode_request(frame.payload) {
                    Ok((tunnel_id, request)) => {
                        return self.request(frame.stream, tunnel_id, request);
                    }
                    Err(err) => Some(err.to_string()),
                }
            }
            Ok(frame) => self.mux.on_frame(frame).err().map(|v| v.to_string()),
            Err(err) => Some(err.to_string()),
        };
        match violation {
            Some(reason) => Break(self.violated(reason)),
            None => Continue(()),
        }
    }

    /// The server broke the protocol: the session closes with 1002.
    fn violated(&self, reason: String) -> ClientError {
        self.mux.queue_close(CloseFrame {
            code: CloseCode::from(close_code::PROTOCOL_ERROR),
            reason: reason.clone().into(),
        });
        ClientError::Protocol(reason)
    }

    /// The server closed the connection.
    fn closed(&self, frame: Option<&CloseFrame>) -> ClientError {
        // A server that closes with 1001 without `going_away` (another
        // implementation) gets the usual first wait.
        let going = frame.is_some_and(|f| u16::from(f.code) == close_code::GOING_AWAY);
        let going_away = self.going_away.or(going.then_some(GOING_AWAY_WAIT));
        lost(going_away, describe_close(frame))
    }

    /// The connection ended for `why`.
    fn lost(&self, why: String) -> ClientError {
        lost(self.going_away, why)
    }
}

/// How the session ended: the server going away on purpose (and when to
/// come back), or lost.
fn lost(going_away: Option<Duration>, why: String) -> ClientError {
    match going_away {
        Some(reconnect_after) => ClientError::GoingAway { reconnect_after },
        None => ClientError::Disconnected(why),
    }
}

/// The answer to a request beyond our own stream limit.
fn busy_response(request_id: u32) -> Option<String> {
    let response = ExchangeError::Busy.answer()?;
    Some(encode(&ClientMessage::Response {
        request_id,
        response,
    }))
}

pub(crate) fn describe_close(frame: Option<&CloseFrame>) -> String {
    match frame {
        Some(f) if !f.reason.is_empty() => format!(
            "server closed the connection ({}): {}",
            u16::from(f.code),
            f.reason
        ),
        Some(f) => format!("server closed the connection ({})", u16::from(f.code)),
        None => "server closed the connection".into(),
    }
}
