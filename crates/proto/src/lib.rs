//! The Cryptun wire protocol, shared by server and client.
//!
//! A client opens a WebSocket to the server's `/ws` and speaks JSON text
//! messages ([`message`]) to create tunnels and answer requests. Clients that
//! ask for `binary_streams` carry bodies as binary frames ([`frame`]) with
//! per-stream credit, so no body is ever held whole; [`mux`] implements both
//! ends of that. The complete specification, written for someone building a
//! client in another language, is `docs/PROTOCOL.md`.
//!
//! # Layout
//!
//! - [`message`]: the JSON control vocabulary and its decoding.
//! - [`capability`]: what a session speaks beyond the seed's protocol, and
//!   how client and server agree on it.
//! - [`cancel`]: why a stream was abandoned (`cancel`'s `reason`, a
//!   RESET's payload).
//! - [`error_code`]: why the server refuses something, and what each
//!   refusal does to the connection.
//! - [`head`]: request and response heads, header encoding, hop-by-hop rules.
//! - [`html`]: escaping what goes into the pages either end writes.
//! - [`frame`]: the binary frame format.
//! - [`limits`]: every bound a session enforces, and why.
//! - [`mux`]: streams over one WebSocket: the pending-stream table, credit
//!   windows, body types for hyper, and the writer task.
//! - [`secret`]: API keys and reconnect secrets, hidden from `Debug`.
//! - [`name`]: tunnel names (subdomain labels) and their rules.
//! - [`net`]: IP networks (`allow_ips`, trusted proxies) and the group an
//!   address counts in for per-address limits.
//!
//! Nothing here opens a socket; the server and client crates do.

#![forbid(unsafe_code)]

pub mod binary_head;
pub mod cancel;
pub mod capability;
pub mod counted;
pub mod error_code;
pub mod frame;
pub mod head;
pub mod html;
pub mod limits;
pub mod message;
pub mod mux;
pub mod name;
pub mod net;
pub mod raw;
pub mod read_ahead;
pub mod secret;
pub mod websocket;

pub use cancel::CancelReason;
pub use capability::{Capabilities, Capability, negotiate};
pub use error_code::ErrorCode;
pub use frame::{Frame, FrameError, FrameKind};
pub use head::{HeadError, InlineBody, RequestHead, ResponseHead};
pub use limits::Limits;
pub use message::{ClientMessage, PROTOCOL_VERSION, ServerMessage, TunnelProtocol};
pub use name::Subdomain;
pub use read_ahead::ReadAhead;
pub use secret::Secret;
pub use tokio_tungstenite::tungstenite;

/// WebSocket close codes used by both ends (RFC 6455 §7.4.1).
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A binary frame broke the framing or flow-control rules.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The session broke a rule (no `create_tunnel` in time, ...).
    pub const POLICY: u16 = 1008;
    /// A message was larger than `max_message_bytes` or a frame than
    /// `max_frame_payload`.
    pub const TOO_BIG: u16 = 1009;
    /// The server failed in a way that is not the client's fault.
    pub const INTERNAL: u16 = 1011;
}

/// The characters of a [`random_id`]: `[a-z2-7]`.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Returns a random identifier of `len` characters from `[a-z2-7]` (5 bits of
/// operating-system randomness each).
pub fn random_id(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    // The OS generator only fails on platforms without one, where nothing
    // secure can be done: refusing to run is the right answer.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(b & 31)] as char)
        .collect()
}

/// Whether `text` has the shape of a [`random_id`] of `len` characters.
pub fn is_random_id(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| ALPHABET.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_have_the_shape_they_are_checked_for() {
        for len in [1, 10, 32] {
            assert!(is_random_id(&random_id(len), len));
        }
        assert!(!is_random_id(&random_id(10), 11));
        for other in ["ABCDEFGHIJ", "abcdefgh1j", "abcdefgh8j", "abcdéfghi"] {
            assert!(!is_random_id(other, other.len()), "{other}");
        }
    }
}
