//! What the client reports as it goes — each request, each lost
//! connection and reconnect — for the CLI (or a test) to show, and where
//! it goes ([`Events`]).

use std::sync::Arc;
use std::time::Duration;

use crate::{Endpoint, TunnelCreated};

/// Something that happened, for the CLI (or a test) to show.
#[derive(Debug, Clone)]
pub enum Event {
    /// A request arrived and is being forwarded; a [`Event::Request`]
    /// follows when it ends (so started minus ended is the number open).
    RequestStarted,
    /// A request was answered (or failed) — one line per request.
    Request(RequestDone),
    /// A visitor's connection to a TCP tunnel ended — one line each.
    Connection(ConnectionDone),
    /// The request inspector sent a captured request (perhaps edited) to
    /// its local service again, straight from the client: not through the
    /// tunnel, so it is not one of the tunnel's requests. `done.status` is
    /// the local service's (0 if none came), its duration from sending to
    /// the response head.
    Replayed {
        /// The inspector's id of the exchange replayed.
        of: u64,
        /// The replay, as sent and answered.
        done: RequestDone,
    },
    /// The connection was lost (or a reconnect failed); the next attempt
    /// comes after `retry_in`.
    Disconnected {
        /// Why.
        error: String,
        /// The wait before the next attempt.
        retry_in: Duration,
        /// 1 for the first attempt after a loss, then 2, 3, ...
        attempt: u32,
    },
    /// A reconnect succeeded, to `server`; a [`Event::Reconnected`] per
    /// tunnel follows.
    Connected {
        /// The server reached, with the address dialled.
        server: Endpoint,
    },
    /// A reconnect succeeded: the tunnel is served again (one event per
    /// tunnel of the session).
    Reconnected {
        /// The tunnel, as the server created it again.
        tunnel: TunnelCreated,
    },
}

/// A request that ended: what the CLI prints a line of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestDone {
    /// The tunnel that served it: its [name](crate::TunnelConfig::name),
    /// else its subdomain.
    pub tunnel: String,
    /// Request method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Status sent to the visitor (0 if the visitor went away first).
    pub status: u16,
    /// Time from the request's arrival to the end of the response head.
    pub duration: Duration,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// A visitor's connection to a TCP tunnel, carried to its end.
#[derive(Debug, Clone)]
pub struct ConnectionDone {
    /// The tunnel that served it: its [name](crate::TunnelConfig::name),
    /// else its subdomain.
    pub tunnel: String,
    /// The visitor's address, as the server saw it.
    pub remote_addr: std::net::SocketAddr,
    /// Bytes from the visitor to the local service.
    pub bytes_in: u64,
    /// Bytes from the local service to the visitor.
    pub bytes_out: u64,
    /// From the server's announcing it to its end.
    pub duration: Duration,
    /// What went wrong, if anything (the local service refused it, ...).
    pub error: Option<String>,
}

/// Where events go: a callback, or nowhere.
#[derive(Clone, Default)]
pub struct Events(Option<Arc<dyn Fn(Event) + Send + Sync>>);

impl Events {
    /// Events are dropped.
    pub fn none() -> Self {
        Events(None)
    }

    /// Events are passed to `f`, from the task that produced them.
    pub fn to(f: impl Fn(Event) + Send + Sync + 'static) -> Self {
        Events(Some(Arc::new(f)))
    }

    pub(crate) fn emit(&self, event: Event) {
        if let Some(f) = &self.0 {
            f(event);
        }
    }
}
