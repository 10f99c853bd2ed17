//! Policy: the rules a visitor's request or a client's connection is held
//! to, each a value the stage that enforces it holds, with the decision
//! kept apart from the I/O around it.
//!
//! - [`access`]: a tunnel's visitor rules (IP allow and deny lists, HTTP
//!   Basic credentials), chosen by its client.
//! - [`ratelimit`]: request rates per visitor address and per tunnel.
//! - [`body`]: a request body's size limit, idle timeout and minimum rate.
//! - [`quota`]: shares per visitor address or client identity: requests
//!   in flight, sessions, live tunnels.
//! - [`backoff`]: failed client handshakes by address, and the refusals
//!   that follow.
//!
//! Every per-address rule counts an address by its group
//! ([`cryptun_proto::net::group`]: IPv6 by /64).

pub mod access;
pub mod backoff;
pub mod body;
pub mod quota;
pub mod ratelimit;

pub use access::Access;
pub use backoff::{Backoff, BackoffConfig};
pub use body::{BodyGuard, BodyLimit, MinRate, Tripwire};
pub use quota::{InFlight, Place, Quota, Who};
pub use ratelimit::{IpLimiter, Rate, RateError, TunnelLimiter};
