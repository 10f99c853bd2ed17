//! Control messages: the JSON text vocabulary spoken over `/ws`.
//!
//! Every text frame is one JSON object whose `"type"` names the message. The
//! names follow the original design (`create_tunnel`, `tunnel_created`,
//! `request`, `response`, `ping`, `pong`) plus `error`, `cancel`,
//! `going_away` and `close_tunnel`/`tunnel_closed`. A client
//! that never sends binary frames can serve a tunnel with these alone: bodies
//! then travel inline, base64-encoded, in `request.body` and `response.body`.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::cancel::CancelReason;
use crate::capability::{Capabilities, Capability};
pub use crate::error_code::ErrorCode;
use crate::head::{RequestHead, ResponseHead};
use crate::secret::Secret;

#[path = "created.rs"]
mod created;
#[path = "decode_error.rs"]
mod decode_error;
pub use created::{SessionLimits, TunnelCreated};
pub use decode_error::DecodeError;

/// The protocol version this build speaks. A client that names no version is
/// taken to speak version 1.
pub const PROTOCOL_VERSION: u32 = 1;

/// Messages a client sends to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Ask for a tunnel. The first message of a session; may be repeated to
    /// open further tunnels over the same connection.
    CreateTunnel(CreateTunnel),
    /// The answer to a `request`.
    Response {
        /// The id of the request being answered.
        request_id: u32,
        /// Status, headers and (inline) body.
        response: ResponseHead,
    },
    /// The client gives up on a request (its body upload can stop).
    Cancel {
        /// The request abandoned.
        request_id: u32,
        /// Why, if the client says (optional: older clients do not).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<CancelReason>,
    },
    /// Liveness probe; the server answers `pong`.
    Ping,
    /// Answer to a server `ping`.
    Pong,
    /// The client is done with a tunnel (it is stopping): the server takes
    /// it out and frees its name at once, without holding it for a
    /// reconnection, and answers `tunnel_closed`. Sent only on sessions
    /// that accepted the `close_tunnel` capability.
    CloseTunnel {
        /// The tunnel, as its `tunnel_created` named it.
        tunnel_id: String,
    },
}

/// The body of `create_tunnel`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CreateTunnel {
    /// Protocol version the client speaks (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// A subdomain label to ask for instead of a generated one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    /// What the tunnel carries: HTTP (absent), raw TCP connections (`tcp`)
    /// or TLS connections passed through by SNI (`tls`); the last two need
    /// the `raw_streams` capability.
    #[serde(default, skip_serializing_if = "TunnelProtocol::is_http")]
    pub protocol: TunnelProtocol,
    /// For a TCP tunnel: the public port to ask for instead of one the
    /// server picks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_port: Option<u16>,
    /// Join the pool serving `subdomain` (or start it): several clients of
    /// one identity serve one name together, visitors spread over them.
    /// Needs the `pools` capability accepted and a `subdomain`; on a
    /// session without an API key, `pool_secret` says who may join.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pool: bool,
    /// For a pool on a session without an API key: the secret its members
    /// share (at least 16 characters); it also takes the name back after
    /// the last member's disconnect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_secret: Option<Secret>,
    /// The client reads and writes bodies as binary frames with flow control.
    /// Without it, every body travels inline in the JSON messages. The same
    /// as `binary_streams` in `capabilities`, which it predates.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub binary_streams: bool,
    /// What the client speaks beyond the seed's protocol (names this
    /// version does not know are dropped as they are read). See
    /// [`CreateTunnel::offered`].
    #[serde(default, skip_serializing_if = "Capabilities::is_empty")]
    pub capabilities: Capabilities,
    /// How long visitors of this tunnel may wait for a response head, in
    /// milliseconds: more than the server's default for long polling, capped
    /// by the server's maximum. Absent means the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout_ms: Option<u64>,
    /// The client's API key. It authenticates the whole connection and is
    /// read from the first `create_tunnel` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// The `reconnect_secret` of an earlier tunnel with the same
    /// `subdomain`: it takes the name back while the server holds it after
    /// a disconnect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconnect_secret: Option<Secret>,
    /// Visitors must present these credentials (HTTP Basic authentication);
    /// the server answers 401 to those who do not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    /// Only visitors whose address falls in one of these CIDR blocks (or
    /// single addresses) are served; empty means everyone. 403 otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_ips: Vec<String>,
    /// Visitors whose address falls in one of these CIDR blocks get 403,
    /// whatever `allow_ips` says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_ips: Vec<String>,
    /// The largest request body this tunnel accepts, in bytes (413 beyond);
    /// capped by the server's own limit. Absent means the server's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_size: Option<u64>,
}

/// What a tunnel carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelProtocol {
    /// HTTP requests, routed by name (the seed's tunnels).
    #[default]
    Http,
    /// Raw TCP connections to a public port, one stream each.
    Tcp,
    /// TLS connections to the server's HTTPS listener whose SNI is the
    /// tunnel's name, passed through undecrypted, one stream each: the
    /// local service terminates them with its own certificate.
    Tls,
}

impl TunnelProtocol {
    /// HTTP, which the wire leaves unsaid.
    pub fn is_http(&self) -> bool {
        *self == TunnelProtocol::Http
    }

    /// The name on the wire.
    pub const fn wire_name(self) -> &'static str {
        match self {
            TunnelProtocol::Http => "http",
            TunnelProtocol::Tcp => "tcp",
            TunnelProtocol::Tls => "tls",
        }
    }
}

impl std::fmt::Display for TunnelProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.wire_name())
    }
}

impl CreateTunnel {
    /// What the client offers: its `capabilities`, with `binary_streams`
    /// also when it asked through the older boolean field. What the server
    /// passes to [`crate::capability::negotiate`].
    pub fn offered(&self) -> Capabilities {
        if self.binary_streams {
            self.capabilities.with(Capability::BinaryStreams)
        } else {
            self.capabilities
        }
    }
}

/// HTTP Basic credentials a tunnel's visitors must present.
///
/// `Debug` hides the password, so a logged `create_tunnel` shows none.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasicAuth {
    /// The user name: no colon, no control characters.
    pub username: String,
    /// The password: no control characters.
    pub password: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// Messages the server sends to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// A tunnel is live and reachable at `public_url`.
    TunnelCreated(TunnelCreated),
    /// A visitor's request, to be answered with `response`.
    Request {
        /// Correlates the `response` (and, with binary streams, the body frames).
        request_id: u32,
        /// Which of the session's tunnels the request arrived on.
        tunnel_id: String,
        /// Method, path, headers and (inline) body.
        request: RequestHead,
    },
    /// The visitor went away or the request timed out: stop working on it.
    Cancel {
        /// The request abandoned.
        request_id: u32,
        /// Why: `timeout`, `visitor_gone` or `shutdown` (absent from older
        /// servers).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<CancelReason>,
    },
    /// Answer to the client's `ping`.
    Pong,
    /// Something the client sent was refused; see [`ErrorCode`].
    Error(ErrorMessage),
    /// The server is shutting down: requests in flight may still finish,
    /// then it closes the connection (close code 1001). The client should
    /// then reconnect, to this server or another one, no sooner than
    /// `reconnect_after_ms` (plus some random spread).
    GoingAway {
        /// Suggested wait after the close before reconnecting.
        reconnect_after_ms: u64,
    },
    /// The answer to `close_tunnel`: the tunnel is gone and its name free.
    TunnelClosed {
        /// The tunnel closed.
        tunnel_id: String,
    },
}

/// The body of `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// The request concerned, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<u32>,
    /// For the codes that carry it (`too_many_attempts`, `subdomain_held`,
    /// ...): how long until trying again may succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ServerMessage {
    /// Shorthand for an `error` message.
    pub fn error(code: ErrorCode, message: impl Into<String>, request_id: Option<u32>) -> Self {
        ServerMessage::Error(ErrorMessage {
            code,
            message: message.into(),
            request_id,
            retry_after_ms: None,
        })
    }
}

/// Serialises a message to the text of one WebSocket frame.
pub fn encode<T: Serialize>(message: &T) -> String {
    // Our message types hold only strings, numbers and maps with string keys,
    // which serde_json always serialises.
    serde_json::to_string(message).unwrap_or_else(|_| String::from("{}"))
}

/// Parses one text frame, telling an unknown `type` apart from malformed
/// input, through serde's support for tagged enums, which first buffers the
/// whole message into a generic tree (many times its size for a message of
/// many small values). For text we wrote ourselves; what a peer sends goes
/// through [`ClientMessage::decode`] and [`ServerMessage::decode`].
pub fn decode<'a, T: Deserialize<'a>>(text: &'a str, known: &[&str]) -> Result<T, DecodeError> {
    serde_json::from_str(text).map_err(|err| match tag(text) {
        Ok(tag) if !known.contains(&tag.as_ref()) => DecodeError::UnknownType(tag.into_owned()),
        _ => DecodeError::Malformed(err.to_string()),
    })
}

impl ClientMessage {
    /// Decodes a client's text message without buffering it: its `type`
    /// first (skipping everything else), then the fields of that message
    /// straight into place. A `response`, the message every request brings
    /// back, written the way our client writes it (`{"type":"response",`),
    /// is read in one pass.
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Response {
            /// Declared so that a second `type` is refused.
            #[serde(rename = "type")]
            _tag: IgnoredAny,
            request_id: u32,
            response: ResponseHead,
        }
        let tag = tag_unless_first(text, "response")?;
        Ok(match tag.as_ref() {
            "response" => {
                let r: Response = fields(text).map_err(|err| bad_response(text, err))?;
                ClientMessage::Response {
                    request_id: r.request_id,
                    response: r.response,
                }
            }
            "create_tunnel" => ClientMessage::CreateTunnel(fields(text)?),
            "cancel" => {
                let cancel = fields::<RequestId>(text)?;
                ClientMessage::Cancel {
                    request_id: cancel.request_id,
                    reason: cancel.reason(),
                }
            }
            "ping" => ClientMessage::Ping,
            "pong" => ClientMessage::Pong,
            "close_tunnel" => ClientMessage::CloseTunnel {
                tunnel_id: fields::<TunnelId>(text)?.tunnel_id,
            },
            _ => return Err(DecodeError::UnknownType(tag.into_owned())),
        })
    }
}

impl ServerMessage {
    /// Decodes a server's text message the same way (see
    /// [`ClientMessage::decode`]); a `request` written the way our server
    /// writes it is read in one pass.
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Request {
            #[serde(rename = "type")]
            _tag: IgnoredAny,
            request_id: u32,
            tunnel_id: String,
            request: RequestHead,
        }
        #[derive(Deserialize)]
        struct GoingAway {
            reconnect_after_ms: u64,
        }
        let tag = tag_unless_first(text, "request")?;
        Ok(match tag.as_ref() {
            "request" => {
                let r: Request = fields(text)?;
                ServerMessage::Request {
                    request_id: r.request_id,
                    tunnel_id: r.tunnel_id,
                    request: r.request,
                }
            }
            "tunnel_created" => ServerMessage::TunnelCreated(fields(text)?),
            "cancel" => {
                let cancel = fields::<RequestId>(text)?;
                ServerMessage::Cancel {
                    request_id: cancel.request_id,
                    reason: cancel.reason(),
                }
            }
            "pong" => ServerMessage::Pong,
            "error" => ServerMessage::Error(fields(text)?),
            "going_away" => ServerMessage::GoingAway {
                reconnect_after_ms: fields::<GoingAway>(text)?.reconnect_after_ms,
            },
            "tunnel_closed" => ServerMessage::TunnelClosed {
                tunnel_id: fields::<TunnelId>(text)?.tunnel_id,
            },
            _ => return Err(DecodeError::UnknownType(tag.into_owned())),
        })
    }
}

/// The fields of `cancel`. A `reason` this build does not know is read as
/// none, so a newer peer's reason never fails the message.
#[derive(Deserialize)]
struct RequestId {
    request_id: u32,
    #[serde(default)]
    reason: Option<String>,
}

impl RequestId {
    fn reason(&self) -> Option<CancelReason> {
        self.reason.as_deref().and_then(CancelReason::parse)
    }
}

/// The fields of `close_tunnel` and `tunnel_closed`.
#[derive(Deserialize)]
struct TunnelId {
    tunnel_id: String,
}

/// The `type` of a message, which must be a JSON object. Nothing else is
/// kept: the other values are skipped as they are read. A second `type` is
/// refused.
fn tag(text: &str) -> Result<Cow<'_, str>, DecodeError> {
    #[derive(Deserialize)]
    struct Tag<'a> {
        #[serde(rename = "type", borrow)]
        tag: Cow<'a, str>,
    }
    // serde would also read a struct from an array (`["ping"]`).
    if !text.trim_start().starts_with('{') {
        return Err(DecodeError::Malformed("a message is a JSON object".into()));
    }
    fields::<Tag>(text).map(|t| t.tag)
}

/// `first` if `text` starts with it as its tag (`{"type":"first",`, the
/// way our peers write their most frequent message), else its tag read.
fn tag_unless_first<'a>(text: &'a str, first: &'static str) -> Result<Cow<'a, str>, DecodeError> {
    let starts = text
        .strip_prefix(r#"{"type":""#)
        .and_then(|rest| rest.strip_prefix(first))
        .is_some_and(|rest| rest.starts_with(r#"","#));
    if starts {
        Ok(Cow::Borrowed(first))
    } else {
        tag(text)
    }
}

/// `err`, the reason a `response` could not be read, as a refusal of its
/// request when its `request_id` can be read alone (the rest skipped, not
/// built), so that request fails at once instead of waiting for its timeout.
fn bad_response(text: &str, err: DecodeError) -> DecodeError {
    #[derive(Deserialize)]
    struct Id {
        /// Declared so that a second `type` stays malformed.
        #[serde(rename = "type")]
        _tag: IgnoredAny,
        request_id: u32,
    }
    match (serde_json::from_str::<Id>(text), err) {
        (Ok(id), DecodeError::Malformed(reason)) => DecodeError::BadResponse {
            request_id: id.request_id,
            reason,
        },
        (_, err) => err,
    }
}

/// `text` read as one message's fields (its `type` is not one of them).
fn fields<'a, F: Deserialize<'a>>(text: &'a str) -> Result<F, DecodeError> {
    serde_json::from_str(text).map_err(|err| DecodeError::Malformed(err.to_string()))
}

/// The `type` values a server understands from clients.
pub const CLIENT_TYPES: &[&str] = &[
    "create_tunnel",
    "response",
    "cancel",
    "ping",
    "pong",
    "close_tunnel",
];
/// The `type` values a client understands from servers.
pub const SERVER_TYPES: &[&str] = &[
    "tunnel_created",
    "request",
    "cancel",
    "pong",
    "error",
    "going_away",
    "tunnel_closed",
];

#[cfg(test)]
#[path = "message_tests.rs"]
mod tests;
