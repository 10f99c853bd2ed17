//! The hard limits of a session, with the reasoning behind each default.

use std::time::Duration;

use crate::message::SessionLimits;

/// Bytes tungstenite reads from the socket at a time, where it still frames
/// a connection (a client's handshake, and peers built on it such as the
/// test kit's; sessions themselves are framed by [`crate::websocket`]). Its
/// buffer is resident per connection, so it stays small; [`crate::ReadAhead`]
/// under it makes the socket reads large while a body streams in.
const READ_BUFFER: usize = 4 << 10;

/// Most headers one head may carry on the wire, whatever a session's
/// [`Limits::max_headers`] (which cannot exceed it): a head is refused as
/// soon as its list grows past this, so a message of small headers cannot
/// make its reader hold many times its size in parsed pairs.
pub const MAX_WIRE_HEADERS: usize = 1024;

/// Most entries in a `capabilities` list. Six names exist today; 64 leaves
/// room for many more while refusing a list that is only there to be long
/// (each entry is matched as it is read and none is kept, so this bounds
/// the work, not memory).
pub const MAX_CAPABILITIES: usize = 64;

/// Longest capability name, in bytes: ours are under 20, and a longer one is
/// refused without being compared.
pub const MAX_CAPABILITY_NAME: usize = 64;

/// Every bound a session enforces on what a peer may make us hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest WebSocket message. Text messages carry heads and, on JSON-only
    /// sessions, whole bodies as base64, so this must exceed
    /// `max_inline_body * 4 / 3` plus the head. 2 MiB keeps a hostile client's
    /// worst case per connection small.
    pub max_message_bytes: usize,
    /// Largest payload of one binary frame. 128 KiB amortises the 5-byte
    /// header and the per-frame cost (an allocation, a wake-up, a write on
    /// each side: 10–17% less CPU per 1 MiB response than 64 KiB) while two
    /// frames still fit in a stream's window and one frame holds the
    /// connection for well under a millisecond.
    pub max_frame_payload: usize,
    /// Credit per stream and direction: the most body bytes buffered for one
    /// request on the receiving side. 256 KiB covers the bandwidth-delay
    /// product of a fast link at a few milliseconds of round trip, and bounds
    /// memory to max_streams x 256 KiB in the very worst case.
    pub stream_window: u32,
    /// Largest body carried inline in JSON (sessions without binary streams).
    pub max_inline_body: usize,
    /// Most requests in flight on one session. The 257th visitor waits no
    /// longer than it takes one to finish: beyond this we answer 429.
    pub max_streams: usize,
    /// Most headers in one response head from a client (as hyper's default
    /// for requests); at most [`MAX_WIRE_HEADERS`].
    pub max_headers: usize,
    /// Most bytes of header names and values in one response head.
    pub max_header_bytes: usize,
    /// Most tunnels one session may hold.
    pub max_tunnels_per_session: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 2 << 20,
            max_frame_payload: 128 << 10,
            stream_window: 256 << 10,
            max_inline_body: 1 << 20,
            max_streams: 1024,
            max_headers: 100,
            max_header_bytes: 64 << 10,
            max_tunnels_per_session: 16,
        }
    }
}

impl Limits {
    /// What the server announces to a client in `tunnel_created`.
    pub fn announce(&self, heartbeat: Duration) -> SessionLimits {
        SessionLimits {
            max_message_bytes: self.max_message_bytes,
            max_frame_payload: self.max_frame_payload,
            stream_window: self.stream_window,
            max_inline_body: self.max_inline_body,
            max_streams: self.max_streams,
            heartbeat_interval_ms: heartbeat.as_millis().try_into().unwrap_or(u64::MAX),
        }
    }

    /// The WebSocket layer's own limits, matched to ours.
    pub fn websocket_config(&self) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
        let max = self
            .max_message_bytes
            .max(self.max_frame_payload + crate::frame::HEADER_LEN);
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            // tungstenite fills its whole read buffer before each read, so
            // its size is resident per connection: keep it small (an idle
            // tunnel costs a few KiB) and let it grow for large frames.
            .read_buffer_size(READ_BUFFER)
            .max_message_size(Some(max))
            .max_frame_size(Some(max))
            // Backpressure comes from our own bounded queue; keep the socket
            // buffer small so a stalled peer cannot make it grow.
            .write_buffer_size(128 << 10)
            .max_write_buffer_size(max + (256 << 10))
    }
}
