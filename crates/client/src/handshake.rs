//! Opening a session: the WebSocket upgrade to one server endpoint, one
//! `create_tunnel` per tunnel and their answers ([`connect_to`]); and the
//! first connection of a client, which tries each candidate server once
//! ([`connect`]), offering each the reconnect secrets a previous run saved
//! for its domain (`state`).

use std::time::Duration;

use cryptun_proto::message::{
    ClientMessage, CreateTunnel, ErrorCode, ServerMessage, TunnelCreated, encode,
};
use cryptun_proto::tungstenite::Message;
use cryptun_proto::{Limits, PROTOCOL_VERSION, ReadAhead};
use futures_util::{SinkExt, StreamExt};
use tracing::{debug, info};

use crate::servers::{self, Endpoint};
use crate::session::{Session, Ws, describe_close};
use crate::{ClientConfig, ClientError, TunnelConfig, probe, transport};
use cryptun_proto::websocket::{End, Socket};

/// The largest message the client accepts from a server. The server is the
/// party the client chose to trust; this only bounds a broken one.
const MAX_SERVER_MESSAGE: usize = 16 << 20;

/// Messages the server may send before the client has seen every
/// `tunnel_created` (requests on a tunnel already created, on a reconnect
/// while visitors are waiting); they are kept for [`Session::run`]. A
/// handshake is a round trip, so this only bounds a broken server.
const MAX_EARLY_MESSAGES: usize = 4096;

/// Connects to one of the servers of `config` and creates the tunnels: all
/// of them or none (a refusal of any fails the connection).
///
/// Each candidate (every server, every address of its name, in random
/// order) is tried once. A refusal of the tunnels is the answer any server
/// would give, and ends the search at once; other failures move on to the
/// next candidate. When none could be used, the error is the first one
/// that retrying cannot help, else the last.
pub async fn connect(config: &ClientConfig) -> Result<Session, ClientError> {
    let mut first_final: Option<ClientError> = None;
    let mut last = None;
    let candidates = servers::round(config).await;
    let count = candidates.len();
    for endpoint in candidates {
        match connect_saved(config, &endpoint).await {
            Ok(session) => return Ok(session),
            Err(err) if is_answer(&err) => return Err(err),
            Err(err) => {
                // Not a warning: the next may well do (a name's IPv6
                // address where the server listens on IPv4 only), and if
                // none does, the error says why.
                if count > 1 {
                    info!(server = %endpoint, %err, "could not connect; trying the next server");
                }
                if err.is_final() && first_final.is_none() {
                    first_final = Some(err);
                } else {
                    last = Some(err);
                }
            }
        }
    }
    Err(first_final
        .or(last)
        .unwrap_or_else(|| ClientError::Disconnected("no server to connect to".into())))
}

/// Connects to `endpoint` as [`connect_to`] does, asking for each named
/// tunnel with the secret a previous run saved for it, if any: a client
/// killed outright takes its names back.
///
/// A refusal as `unauthorized` may be the secret's (the name was since held
/// for someone else) or the key's (missing, unknown, revoked: the server
/// uses the same code), so the connection is tried again without the
/// secrets. Only if that gets past the key are the files offered forgotten;
/// if it is refused the same way, the key is at fault and the secrets are
/// kept for a run with the right one.
async fn connect_saved(config: &ClientConfig, endpoint: &Endpoint) -> Result<Session, ClientError> {
    let Some(saved) = config.saved() else {
        return connect_to(config, endpoint).await;
    };
    let mut with = config.clone();
    let mut offered = Vec::new();
    for tunnel in with.tunnels_mut() {
        if let (Some(name), None) = (&tunnel.subdomain, &tunnel.reconnect_secret) {
            if let Some((secret, file)) = saved.load(&endpoint.url, name) {
                tunnel.reconnect_secret = Some(secret);
                offered.push((name.clone(), file));
            }
        }
    }
    if offered.is_empty() {
        return connect_to(config, endpoint).await;
    }
    let names: Vec<&str> = offered.iter().map(|(name, _)| name.as_str()).collect();
    info!(
        ?names,
        "offering the reconnect secrets saved by the last run"
    );
    let first = connect_to(&with, endpoint).await;
    if !matches!(
        first,
        Err(ClientError::Refused {
            code: ErrorCode::Unauthorized,
            ..
        })
    ) {
        return first;
    }
    let without = connect_to(config, endpoint).await;
    if passed_the_key(&without) {
        for (_, file) in &offered {
            saved.forget_file(file);
        }
    }
    without
}

/// Whether the server got past the key in answering: the tunnels were
/// created, or a name refused (held for another client, taken, reserved),
/// which the server decides only after the key. Anything else (a backoff,
/// the server's own failure, a connection lost) tells nothing about the
/// secrets, and keeping one too many costs a round trip where losing one
/// costs the name.
fn passed_the_key(result: &Result<Session, ClientError>) -> bool {
    matches!(
        result,
        Ok(_)
            | Err(ClientError::Held { .. })
            | Err(ClientError::Refused {
                code: ErrorCode::SubdomainTaken | ErrorCode::SubdomainReserved,
                ..
            })
    )
}

/// Whether `err` is the servers' answer to what the client asks for (its
/// tunnels, its key) or a fault of the client's own settings: the same
/// whichever server is asked, so trying another cannot help.
pub(crate) fn is_answer(err: &ClientError) -> bool {
    matches!(
        err,
        ClientError::Refused { .. }
            | ClientError::Held { .. }
            | ClientError::KeyRevoked { .. }
            | ClientError::Ca { .. }
    )
}

/// Connects to `endpoint` and creates the tunnels of `config`, within its
/// connect timeout.
pub(crate) async fn connect_to(
    config: &ClientConfig,
    endpoint: &Endpoint,
) -> Result<Session, ClientError> {
    tokio::time::timeout(config.connect_timeout, connect_inner(config, endpoint))
        .await
        .map_err(|_| ClientError::Timeout(config.connect_timeout))?
}

fn create_message(config: &ClientConfig, tunnel: &TunnelConfig) -> Message {
    let create = ClientMessage::CreateTunnel(CreateTunnel {
        version: Some(PROTOCOL_VERSION),
        subdomain: tunnel.subdomain.clone(),
        binary_streams: true,
        capabilities: cryptun_proto::Capabilities::SUPPORTED,
        request_timeout_ms: tunnel
            .request_timeout
            .map(|d| d.as_millis().try_into().unwrap_or(u64::MAX)),
        token: config.token.clone(),
        reconnect_secret: tunnel.reconnect_secret.clone(),
        basic_auth: tunnel.basic_auth.clone(),
        allow_ips: tunnel.allow_ips.clone(),
        deny_ips: tunnel.deny_ips.clone(),
        max_body_size: tunnel.max_body_size,
        protocol: tunnel.protocol,
        remote_port: tunnel.remote_port,
        pool: tunnel.pool,
        pool_secret: tunnel.pool_secret.clone(),
    });
    Message::text(encode(&create))
}

async fn connect_inner(config: &ClientConfig, endpoint: &Endpoint) -> Result<Session, ClientError> {
    let ws_config = Limits::default()
        .websocket_config()
        .max_message_size(Some(MAX_SERVER_MESSAGE))
        .max_frame_size(Some(MAX_SERVER_MESSAGE));
    let ca = config.ca.as_deref();
    let (stream, peer) = match transport::connect(endpoint, ca).await {
        Ok(connected) => connected,
        Err(err) => return Err(probe::after_tls_failure(endpoint, err).await),
    };
    let url = endpoint.url.as_str();
    let upgraded =
        tokio_tungstenite::client_async_with_config(url, ReadAhead::new(stream), Some(ws_config))
            .await;
    // The handshake is tungstenite's; the frames after it are ours
    // (`cryptun_proto::websocket`). Nothing can be lost in between: the
    // server says nothing until the first `create_tunnel`, and what the
    // read-ahead holds goes on to be read first.
    let mut ws = match upgraded {
        Ok((ws, _)) => {
            let (stream, read) = ws.into_inner().into_parts();
            Socket::new(stream, End::Client, MAX_SERVER_MESSAGE, MAX_SERVER_MESSAGE).with_read(read)
        }
        Err(source) => {
            let err = handshake_error(endpoint, source);
            return Err(probe::after_plain_failure(endpoint, ca, err).await);
        }
    };
    let specs: Vec<&TunnelConfig> = config.tunnels().collect();
    // All at once: the server answers each in order, so a session of many
    // tunnels costs one round trip.
    for spec in &specs {
        ws.feed(create_message(config, spec))
            .await
            .map_err(|e| ClientError::Disconnected(e.to_string()))?;
    }
    ws.flush()
        .await
        .map_err(|e| ClientError::Disconnected(e.to_string()))?;
    let (tunnels, early) = created(&mut ws, &specs).await?;
    if let Some(saved) = config.saved() {
        for tunnel in &tunnels {
            saved.save(&endpoint.url, tunnel);
        }
    }
    let server = Endpoint {
        url: endpoint.url.clone(),
        addr: Some(peer),
    };
    Ok(Session::new(ws, tunnels, config.clone(), early, server))
}

/// Reads the server's answers to the `create_tunnel`s of `specs`, in
/// order: every tunnel created, with what arrived after the first (see
/// [`MAX_EARLY_MESSAGES`]), or the refusal.
async fn created(
    ws: &mut Ws,
    specs: &[&TunnelConfig],
) -> Result<(Vec<TunnelCreated>, Vec<Message>), ClientError> {
    let mut tunnels = Vec::with_capacity(specs.len());
    let mut early = Vec::new();
    while tunnels.len() < specs.len() {
        let msg = ws
            .next()
            .await
            .ok_or_else(|| ClientError::Disconnected("closed during the handshake".into()))?
            .map_err(|e| ClientError::Disconnected(e.to_string()))?;
        match msg {
            Message::Text(text) => match ServerMessage::decode(&text) {
                Ok(ServerMessage::TunnelCreated(tunnel)) => {
                    if !tunnel.binary_streams {
                        return Err(ClientError::Protocol(
                            "the server does not stream bodies, which this client needs: \
                             it is older than the client; update it"
                                .into(),
                        ));
                    }
                    if specs[tunnels.len()].pool && !tunnel.pool {
                        return Err(ClientError::Protocol(
                            "the server does not serve pools (it is older than the client): \
                             it opened a tunnel of its own instead"
                                .into(),
                        ));
                    }
                    tunnels.push(tunnel);
                }
                Ok(ServerMessage::Error(err)) => {
                    let message = match (specs.len(), &specs[tunnels.len()].name) {
                        (2.., Some(name)) => format!("tunnel {name}: {}", err.message),
                        _ => err.message,
                    };
                    return Err(match (err.code, err.retry_after_ms) {
                        (ErrorCode::SubdomainHeld, Some(ms)) => ClientError::Held {
                            message,
                            retry_after: Duration::from_millis(ms),
                        },
                        (code, _) => ClientError::Refused { code, message },
                    });
                }
                Ok(other) if tunnels.is_empty() => {
                    debug!(?other, "ignored before tunnel_created")
                }
                Ok(_) => early.push(Message::Text(text)),
                Err(err) => return Err(ClientError::Protocol(err.to_string())),
            },
            Message::Close(frame) => {
                return Err(ClientError::Disconnected(describe_close(frame.as_ref())));
            }
            msg @ Message::Binary(_) if !tunnels.is_empty() => early.push(msg),
            _ => {}
        }
        if early.len() > MAX_EARLY_MESSAGES {
            return Err(ClientError::Protocol(
                "too many messages before the tunnels were created".into(),
            ));
        }
    }
    Ok((tunnels, early))
}

/// Why the WebSocket handshake failed; a redirect (the server wants TLS)
/// gets a message of its own.
fn handshake_error(endpoint: &Endpoint, source: cryptun_proto::tungstenite::Error) -> ClientError {
    use cryptun_proto::tungstenite::Error;
    let url = endpoint.to_string();
    if let Error::Http(resp) = &source {
        let location = resp
            .headers()
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok());
        if let (true, Some(location)) = (resp.status().is_redirection(), location) {
            let suggest = location
                .parse::<http::Uri>()
                .ok()
                .and_then(|uri| Some(format!("{}://{}", uri.scheme()?, uri.authority()?)))
                .unwrap_or_else(|| location.to_owned());
            return ClientError::Redirected {
                url,
                location: location.to_owned(),
                suggest,
            };
        }
    }
    ClientError::Connect {
        url,
        source: Box::new(source),
    }
}
