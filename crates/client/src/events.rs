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
    Request {
        /// The tunnel that served it: its [name](TunnelConfig::name), else
        /// its subdomain.
        tunnel: String,
        /// Request method.
        method: String,
        /// Path and query.
        path: String,
        /// Status sent to the visitor (0 if the visitor went away first).
        status: u16,
        /// Time from the request's arrival to the end of the response head.
        duration: Duration,
        /// What went wrong, if anything.
        error: Option<String>,
    },
    /// The request inspector sent a captured request (perhaps edited) to
    /// its local service again, straight from the client: not through the
    /// tunnel, so it is not one of the tunnel's requests.
    Replayed {
        /// The inspector's id of the exchange replayed.
        of: u64,
        /// The tunnel that served the original (its name, else subdomain).
        tunnel: String,
        /// Request method, as sent.
        method: String,
        /// Path and query, as sent.
        path: String,
        /// The local service's status (0 if none came).
        status: u16,
        /// Time from sending to the response head.
        duration: Duration,
        /// What went wrong, if anything.
        error: Option<String>,
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
