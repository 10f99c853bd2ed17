//! The registry: live tunnels by name, the map the gateway routes through,
//! and the names held for reconnection ([`held`], kept in the store by
//! [`keeper`]), behind one interface
//! ([`Registry`]) so that a cluster's implementation can sit beside the
//! in-memory one ([`Local`]).
//!
//! An entry is owned by its session: [`Registration`] removes it when dropped,
//! so a tunnel leaves the map however its session ends (close, error, panic).
//! Its name is then held for the reconnect grace, for its [`Owner`] only.
//! Each live tunnel carries its request counters ([`stats`]).
//!
//! Looking a name up never waits: a registry that must ask elsewhere (a
//! cluster's, `crate::cluster::Clustered`) answers [`Lookup::Ask`], and only
//! then does the gateway wait on [`Registry::resolve`]. Registering may wait
//! (a cluster claims the name in its shared store first).

pub mod held;
pub(crate) mod keeper;
mod local;
pub mod stats;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

pub use crate::store::Owner;
pub use held::{Claim, HeldBy, Holder, NotHeld};
pub use local::Local;

use cryptun_proto::mux::Mux;
use cryptun_proto::{ResponseHead, TunnelProtocol};
use serde::{Deserialize, Serialize};

pub use stats::{Stats, StatsView};

use crate::policy::{Access, TunnelLimiter};
use crate::store::SavedHold;

/// One live tunnel.
pub struct Tunnel {
    /// Random id, unique among live tunnels.
    pub id: String,
    /// The label routed to this tunnel.
    pub subdomain: String,
    /// Where visitors reach it.
    pub public_url: String,
    /// The control connection's peer address.
    pub client_addr: SocketAddr,
    /// When the tunnel was created.
    pub created_at: SystemTime,
    /// Requests routed to this tunnel so far.
    pub requests: AtomicU64,
    /// Every visitor request for it while it is live, refused ones
    /// included: counts, statuses, bytes, rate (for the dashboard).
    pub stats: Arc<Stats>,
    /// The human name of the API key that opened it, if any.
    pub key_name: Option<String>,
    /// How long its visitors wait for a response head.
    pub request_timeout: std::time::Duration,
    /// The session's streams, shared with its other tunnels.
    pub mux: Mux<ResponseHead>,
    /// The share of the session's streams that requests still uploading
    /// may hold, shared by the session's tunnels.
    pub uploads: Arc<tokio::sync::Semaphore>,
    /// Its place among its identity's live tunnels, given back as it goes.
    pub place: Option<Arc<crate::policy::Place<crate::policy::Who>>>,
    /// Who may take the name back after a disconnect.
    pub owner: Owner,
    /// Who may reach it (IP lists, credentials).
    pub access: Access,
    /// Its request rate, across all its visitors, if limited.
    pub rate_limiter: Option<TunnelLimiter>,
    /// Largest request body its visitors may send, if limited.
    pub max_body_size: Option<u64>,
    /// What it carries: HTTP, or TCP connections to its port.
    pub protocol: TunnelProtocol,
    /// A TCP tunnel's port and relay; stops the relay when dropped.
    pub relay: Option<crate::ports::relay::Relay>,
    /// Whether it is a member of a pool: one of several tunnels of one
    /// owner serving its name together.
    pub pool: bool,
}

/// What `/api/tunnels` shows of a tunnel.
#[derive(Debug, Serialize, Deserialize)]
pub struct TunnelInfo {
    /// Random id.
    pub tunnel_id: String,
    /// Routed label.
    pub subdomain: String,
    /// Public URL.
    pub public_url: String,
    /// `http`, or `tcp`.
    #[serde(default)]
    pub protocol: TunnelProtocol,
    /// A TCP tunnel's public port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_port: Option<u16>,
    /// Whether it is one member of a pool serving its name (the pool's
    /// other members are listed beside it, under the same name).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pool: bool,
    /// The client's address as the server saw it.
    pub client_addr: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Requests forwarded to its client so far (past its rules and
    /// limits; `stats.requests` counts refused ones too).
    pub request_count: u64,
    /// Requests in flight on the tunnel's session.
    pub in_flight: usize,
    /// Messages from the client naming unknown or finished requests (dropped).
    pub unmatched_messages: u64,
    /// Whether visitors must present Basic credentials.
    pub basic_auth: bool,
    /// Networks allowed (empty: all).
    pub allow_ips: Vec<String>,
    /// Networks refused.
    pub deny_ips: Vec<String>,
    /// Largest request body accepted, if limited.
    pub max_body_size: Option<u64>,
    /// The id of the API key that opened it, if any.
    pub key_id: Option<String>,
    /// That key's name.
    pub key_name: Option<String>,
    /// Every visitor request for it while it was live, refused ones
    /// included.
    pub stats: StatsView,
    /// In a cluster: the node its client is connected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Tunnel {
    /// A snapshot for the admin API.
    pub fn info(&self) -> TunnelInfo {
        TunnelInfo {
            tunnel_id: self.id.clone(),
            subdomain: self.subdomain.clone(),
            public_url: self.public_url.clone(),
            protocol: self.protocol,
            remote_port: self.relay.as_ref().and_then(|r| r.port),
            pool: self.pool,
            client_addr: self.client_addr.to_string(),
            created_at: humantime::format_rfc3339_seconds(self.created_at).to_string(),
            request_count: self.requests.load(Ordering::Relaxed),
            in_flight: self.mux.stream_count(),
            unmatched_messages: self.mux.unmatched(),
            basic_auth: self.access.has_credentials(),
            allow_ips: self.access.allowed(),
            deny_ips: self.access.denied(),
            max_body_size: self.max_body_size,
            key_id: match &self.owner {
                Owner::Key(id) => Some(id.clone()),
                Owner::Secret(_) => None,
            },
            key_name: self.key_name.clone(),
            stats: self.stats.view(Instant::now()),
            node: None,
        }
    }
}

/// Where tunnels are found by name and names are claimed. One server's is
/// [`Local`], in memory; a cluster's sits beside it, sharing claims with
/// other nodes. Everything else sees only this.
pub trait Registry: Send + Sync + 'static {
    /// Where `name` points: a live tunnel, a name held for reconnection, or
    /// nothing; [`Lookup::Ask`] when only [`Registry::resolve`] can say.
    /// On the path of every visitor request: no waiting.
    fn lookup(&self, name: &str) -> Lookup;

    /// Where `name` points, asking whoever knows (a cluster's shared
    /// store) when [`Registry::lookup`] could not say. Never answers
    /// [`Lookup::Ask`].
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Lookup> {
        Box::pin(std::future::ready(match self.lookup(name) {
            Lookup::Ask => Lookup::Free,
            found => found,
        }))
    }

    /// Registers `tunnel` unless its name is live, or held for another
    /// identity than `claim`'s. The entry lives as long as the returned
    /// registration.
    fn register<'a>(
        self: Arc<Self>,
        tunnel: Tunnel,
        claim: Claim<'a>,
    ) -> BoxFuture<'a, Result<Registration, Taken>>;

    /// Whether new tunnels can be admitted now (a cluster node cannot
    /// while its shared store is unreachable).
    fn can_admit(&self) -> bool {
        true
    }

    /// Finishes what the registry still owes others (a cluster node's
    /// releases of names), before the server stops.
    fn close(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Takes `tunnel` out (if it is still the one registered under its
    /// name), holding its name for its owner's reconnection if `hold`.
    /// [`Registration`]'s `Drop` calls it.
    fn remove(&self, tunnel: &Arc<Tunnel>, hold: bool);

    /// Ends every reconnection hold of key `id` (its key was revoked, so
    /// nobody can take the names back); returns how many.
    fn release_key(&self, id: &str) -> usize;

    /// Names held for reconnection now.
    fn held(&self) -> usize;

    /// What a stopping server saves: the names held for reconnection now,
    /// for whom, and for how much longer, and the names of tunnels still
    /// live (their sessions are ending, or late to), each held for the
    /// whole grace.
    fn saved_holds(&self) -> Vec<SavedHold>;

    /// Holds again the names a previous run saved, for what is left of
    /// their grace (at most this registry's grace).
    fn restore_holds(&self, saved: Vec<SavedHold>);

    /// A count that moves whenever what [`saved_holds`](Self::saved_holds)
    /// would give changes other than by time (a tunnel in or out, a hold
    /// made, restored or released), so the server saves them as they are
    /// made rather than only when it stops; always 0 for a registry that
    /// keeps its holds elsewhere.
    fn changes(&self) -> u64 {
        0
    }

    /// Live tunnels, oldest first.
    fn list(&self) -> Vec<Arc<Tunnel>>;

    /// Number of live tunnels.
    fn len(&self) -> usize;

    /// Whether no tunnel is live.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a subdomain could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Taken {
    /// Another live tunnel has it.
    #[error("the subdomain is in use by another tunnel")]
    Live,
    /// It is held for the reconnection of another client.
    #[error("the subdomain is held for its previous client to reconnect")]
    Held(HeldBy),
    /// Names cannot be claimed now: the cluster's shared store is
    /// unreachable.
    #[error("the cluster's shared store is unreachable")]
    Unavailable,
    /// A pool was asked for a single tunnel's name, or the other way round,
    /// or a pool's member differs from it in what it carries.
    #[error("the subdomain is served the other way (pooled or not), or carries another protocol")]
    PoolConflict,
    /// The pool has as many members as it may.
    #[error("the pool has {0} members, as many as it may")]
    PoolFull(usize),
}

/// A future a registry returns, boxed so that the trait stays usable as
/// `dyn Registry`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A tunnel served by another node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The node's name.
    pub node: String,
    /// Its internal hop address.
    pub hop: SocketAddr,
    /// What the tunnel carries: a TLS tunnel's connections are passed
    /// through to its node undecrypted.
    pub protocol: TunnelProtocol,
}

/// Where a subdomain points now.
#[derive(Clone)]
pub enum Lookup {
    /// A live tunnel.
    Live(Arc<Tunnel>),
    /// No live tunnel, but the name is held for this much longer.
    Reconnecting(Duration),
    /// Nothing.
    Free,
    /// Live on another node.
    Remote(Remote),
    /// Not known without asking: call [`Registry::resolve`].
    Ask,
    /// Not known, and whoever knows cannot be asked now.
    Unavailable,
    /// Not known, and this node asks as often as it may now.
    Busy,
}

/// A tunnel's place in the registry; dropping it removes the tunnel.
pub struct Registration {
    registry: Arc<dyn Registry>,
    tunnel: Arc<Tunnel>,
    /// Whether the name is held for reconnection when the tunnel leaves.
    hold: bool,
}

impl Registration {
    /// `tunnel`'s entry in `registry`, removed (and its name held) when
    /// dropped.
    pub(crate) fn new(registry: Arc<dyn Registry>, tunnel: Arc<Tunnel>) -> Self {
        Registration {
            registry,
            tunnel,
            hold: true,
        }
    }

    /// The registered tunnel.
    pub fn tunnel(&self) -> &Arc<Tunnel> {
        &self.tunnel
    }

    /// Removes the tunnel and frees its name at once, without holding it
    /// for reconnection: its key was revoked (there is no one to hold it
    /// for), or its client closed it on purpose. Visitors get 404 from now
    /// on.
    pub fn remove_without_hold(mut self) {
        self.hold = false;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(relay) = &self.tunnel.relay {
            relay.left(self.hold);
        }
        self.registry.remove(&self.tunnel, self.hold);
    }
}
