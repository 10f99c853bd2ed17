//! `tunnel_created`, the server's answer to a `create_tunnel`, and the
//! limits it announces.

use serde::{Deserialize, Serialize};

use crate::capability::{Capabilities, Capability};
use crate::message::TunnelProtocol;
use crate::secret::Secret;

/// The body of `tunnel_created`.
///
/// On the wire `capabilities` lists the ones the server will use on the
/// session ([`TunnelCreated::capabilities`]); `binary_streams`, the
/// boolean that predates the list, is written into it too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "Wire", into = "Wire")]
pub struct TunnelCreated {
    /// Protocol version the server will speak on this session.
    pub version: u32,
    /// Random id of the tunnel (also the suffix of a generated subdomain).
    pub tunnel_id: String,
    /// The DNS label under the server's domain that routes to this tunnel
    /// (a TCP tunnel has one too: its name, held and reserved as any).
    pub subdomain: String,
    /// Where visitors reach the tunnel: `tcp://DOMAIN:PORT` for a TCP one.
    pub public_url: String,
    /// What the tunnel carries, as asked.
    pub protocol: TunnelProtocol,
    /// A TCP tunnel's public port.
    pub remote_port: Option<u16>,
    /// Whether the tunnel is a member of a pool: one of several clients
    /// serving its name together.
    pub pool: bool,
    /// Whether bodies on this session travel as binary frames (the
    /// `binary_streams` capability, accepted).
    pub binary_streams: bool,
    /// The other capabilities accepted for the session: `binary_streams`
    /// is the boolean above (read from either place on the wire).
    pub capabilities: Capabilities,
    /// How long a visitor waits for this tunnel's response head before 504.
    pub request_timeout_ms: u64,
    /// The limits the server enforces on this session.
    pub limits: SessionLimits,
    /// For a tunnel opened without an API key: the secret that takes its
    /// name back after a disconnect (send it as `reconnect_secret` with the
    /// same `subdomain`); keep the one in the latest `tunnel_created`.
    pub reconnect_secret: Option<Secret>,
    /// The largest request body this tunnel's visitors may send, in bytes
    /// (the smaller of the server's limit and the one asked for). Absent
    /// means no limit beyond `max_inline_body` on JSON-only sessions.
    pub max_body_size: Option<u64>,
}

impl TunnelCreated {
    /// The capabilities the server accepted for the session.
    pub fn capabilities(&self) -> Capabilities {
        if self.binary_streams {
            self.capabilities.with(Capability::BinaryStreams)
        } else {
            self.capabilities
        }
    }
}

/// Limits announced in `tunnel_created` so a client can stay within them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionLimits {
    /// Largest text message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Largest payload of one binary data frame, in bytes.
    pub max_frame_payload: usize,
    /// Initial credit of each stream in each direction, in bytes.
    pub stream_window: u32,
    /// Largest inline body (base64-decoded) on a session without binary streams.
    pub max_inline_body: usize,
    /// Most requests in flight on one tunnel at once.
    pub max_streams: usize,
    /// How often the server pings, in milliseconds. A client that hears
    /// nothing for three intervals may take the connection as dead.
    pub heartbeat_interval_ms: u64,
}

/// `tunnel_created` on the wire. Read: `binary_streams` may come as the
/// boolean, in `capabilities`, or both. Written: both, `capabilities`
/// absent when empty (a client that asked for nothing reads the seed's
/// message), and the optional fields absent when unset.
#[derive(Serialize, Deserialize)]
struct Wire {
    version: u32,
    tunnel_id: String,
    subdomain: String,
    public_url: String,
    #[serde(default, skip_serializing_if = "TunnelProtocol::is_http")]
    protocol: TunnelProtocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    remote_port: Option<u16>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pool: bool,
    #[serde(default)]
    binary_streams: bool,
    #[serde(default, skip_serializing_if = "Capabilities::is_empty")]
    capabilities: Capabilities,
    request_timeout_ms: u64,
    limits: SessionLimits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reconnect_secret: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_body_size: Option<u64>,
}

impl From<TunnelCreated> for Wire {
    fn from(created: TunnelCreated) -> Self {
        Wire {
            capabilities: created.capabilities(),
            version: created.version,
            tunnel_id: created.tunnel_id,
            subdomain: created.subdomain,
            public_url: created.public_url,
            protocol: created.protocol,
            remote_port: created.remote_port,
            pool: created.pool,
            binary_streams: created.binary_streams,
            request_timeout_ms: created.request_timeout_ms,
            limits: created.limits,
            reconnect_secret: created.reconnect_secret,
            max_body_size: created.max_body_size,
        }
    }
}

impl From<Wire> for TunnelCreated {
    fn from(wire: Wire) -> Self {
        let binary = Capability::BinaryStreams;
        TunnelCreated {
            version: wire.version,
            tunnel_id: wire.tunnel_id,
            subdomain: wire.subdomain,
            public_url: wire.public_url,
            protocol: wire.protocol,
            remote_port: wire.remote_port,
            pool: wire.pool,
            binary_streams: wire.binary_streams || wire.capabilities.contains(binary),
            capabilities: wire.capabilities.without(binary),
            request_timeout_ms: wire.request_timeout_ms,
            limits: wire.limits,
            reconnect_secret: wire.reconnect_secret,
            max_body_size: wire.max_body_size,
        }
    }
}
