//! Live tunnels by subdomain: the map the gateway routes through, and the
//! names held for reconnection ([`held`]).
//!
//! An entry is owned by its session: [`Registration`] removes it when dropped,
//! so a tunnel leaves the map however its session ends (close, error, panic).
//! Its name is then held for the reconnect grace, for its [`Owner`] only.

pub mod held;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

pub use held::{Claim, HeldBy, Owner};

use cryptun_proto::ResponseHead;
use cryptun_proto::mux::Mux;
use serde::Serialize;

use crate::access::Access;
use crate::limits::TunnelLimiter;
use crate::stats::{Stats, StatsView};
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
    /// Who may take the name back after a disconnect.
    pub owner: Owner,
    /// Who may reach it (IP lists, credentials).
    pub access: Access,
    /// Its request rate, across all its visitors, if limited.
    pub rate_limiter: Option<TunnelLimiter>,
    /// Largest request body its visitors may send, if limited.
    pub max_body_size: Option<u64>,
}

/// What `/api/tunnels` shows of a tunnel.
#[derive(Debug, Serialize)]
pub struct TunnelInfo {
    /// Random id.
    pub tunnel_id: String,
    /// Routed label.
    pub subdomain: String,
    /// Public URL.
    pub public_url: String,
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
}

impl Tunnel {
    /// A snapshot for the admin API.
    pub fn info(&self) -> TunnelInfo {
        TunnelInfo {
            tunnel_id: self.id.clone(),
            subdomain: self.subdomain.clone(),
            public_url: self.public_url.clone(),
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
        }
    }
}

/// The map from subdomain to live tunnel, and the names held for
/// reconnection.
pub struct Registry {
    inner: RwLock<Inner>,
    /// How long a name is held after its tunnel's session ends.
    grace: Duration,
}

struct Inner {
    tunnels: HashMap<String, Arc<Tunnel>>,
    holds: held::Holds,
}

impl Default for Registry {
    /// No reconnect grace.
    fn default() -> Self {
        Registry::new(Duration::ZERO, 1)
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
}

impl Registry {
    /// An empty registry that holds a disconnected tunnel's name for
    /// `grace`, remembering at most `max_held` such names.
    pub fn new(grace: Duration, max_held: usize) -> Self {
        Registry {
            inner: RwLock::new(Inner {
                tunnels: HashMap::new(),
                holds: held::Holds::new(max_held),
            }),
            grace,
        }
    }

    /// Finds the tunnel serving `subdomain`.
    pub fn get(&self, subdomain: &str) -> Option<Arc<Tunnel>> {
        self.read().tunnels.get(subdomain).cloned()
    }

    /// Where `subdomain` points: a live tunnel, a name held for
    /// reconnection, or nothing.
    pub fn lookup(&self, subdomain: &str) -> Lookup {
        let inner = self.read();
        if let Some(tunnel) = inner.tunnels.get(subdomain) {
            return Lookup::Live(Arc::clone(tunnel));
        }
        match inner.holds.remaining(subdomain, Instant::now()) {
            Some(left) => Lookup::Reconnecting(left),
            None => Lookup::Free,
        }
    }

    /// Registers `tunnel` unless its subdomain is live, or held for
    /// another identity than `claim`'s. The entry lives as long as the
    /// returned registration.
    pub fn register(
        self: &Arc<Self>,
        tunnel: Tunnel,
        claim: Claim<'_>,
    ) -> Result<Registration, Taken> {
        let mut inner = self.write();
        if inner.tunnels.contains_key(&tunnel.subdomain) {
            return Err(Taken::Live);
        }
        inner
            .holds
            .claim(&tunnel.subdomain, claim, Instant::now())
            .map_err(Taken::Held)?;
        let tunnel = Arc::new(tunnel);
        inner
            .tunnels
            .insert(tunnel.subdomain.clone(), Arc::clone(&tunnel));
        Ok(Registration {
            registry: Arc::clone(self),
            tunnel,
            hold: true,
        })
    }

    /// Ends every reconnection hold of key `id` (its key was revoked, so
    /// nobody can take the names back); returns how many.
    pub fn release_key(&self, id: &str) -> usize {
        self.write().holds.release_owner(&Owner::Key(id.to_owned()))
    }

    /// Names held for reconnection now.
    pub fn held(&self) -> usize {
        self.read().holds.len()
    }

    /// What a stopping server saves: the names held for reconnection now,
    /// for whom, and for how much longer, and the names of tunnels still
    /// live (their sessions are ending, or late to), each held for the
    /// whole grace.
    pub fn saved_holds(&self) -> Vec<SavedHold> {
        let inner = self.read();
        let mut saved = inner.holds.saved(Instant::now());
        if !self.grace.is_zero() {
            saved.extend(inner.tunnels.values().map(|tunnel| SavedHold {
                name: tunnel.subdomain.clone(),
                owner: tunnel.owner.clone(),
                left: self.grace,
            }));
        }
        saved
    }

    /// Holds again the names a previous run saved, for what is left of
    /// their grace (at most this registry's grace).
    pub fn restore_holds(&self, saved: Vec<SavedHold>) {
        self.write()
            .holds
            .restore(saved, self.grace, Instant::now());
    }

    /// Whether a subdomain is in use.
    pub fn contains(&self, subdomain: &str) -> bool {
        self.read().tunnels.contains_key(subdomain)
    }

    /// Live tunnels, oldest first.
    pub fn list(&self) -> Vec<Arc<Tunnel>> {
        let mut all: Vec<_> = self.read().tunnels.values().cloned().collect();
        all.sort_by_key(|t| t.created_at);
        all
    }

    /// Number of live tunnels.
    pub fn len(&self) -> usize {
        self.read().tunnels.len()
    }

    /// Whether no tunnel is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A tunnel's place in the registry; dropping it removes the tunnel.
pub struct Registration {
    registry: Arc<Registry>,
    tunnel: Arc<Tunnel>,
    /// Whether the name is held for reconnection when the tunnel leaves.
    hold: bool,
}

impl Registration {
    /// The registered tunnel.
    pub fn tunnel(&self) -> &Arc<Tunnel> {
        &self.tunnel
    }

    /// Removes the tunnel and frees its name at once, without holding it
    /// for reconnection (its key was revoked: there is no one to hold it
    /// for). Visitors get 404 from now on.
    pub fn remove_without_hold(mut self) {
        self.hold = false;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let registry = &self.registry;
        let mut inner = registry.write();
        let name = &self.tunnel.subdomain;
        if !inner
            .tunnels
            .get(name)
            .is_some_and(|t| Arc::ptr_eq(t, &self.tunnel))
        {
            return;
        }
        inner.tunnels.remove(name);
        if self.hold && !registry.grace.is_zero() {
            let now = Instant::now();
            let owner = self.tunnel.owner.clone();
            inner
                .holds
                .hold(name.clone(), owner, now + registry.grace, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptun_proto::Limits;
    use cryptun_proto::message::CreateTunnel;
    use cryptun_proto::mux::Side;

    fn tunnel(name: &str, owner: Owner) -> Tunnel {
        Tunnel {
            id: name.into(),
            subdomain: name.into(),
            public_url: format!("http://{name}.localhost"),
            client_addr: "127.0.0.1:1".parse().unwrap(),
            created_at: SystemTime::now(),
            requests: AtomicU64::new(0),
            stats: Arc::default(),
            key_name: None,
            request_timeout: Duration::from_secs(1),
            mux: Mux::new(Side::Opener, true, Limits::default()),
            owner,
            access: Access::from_request(&CreateTunnel::default()).unwrap(),
            rate_limiter: None,
            max_body_size: None,
        }
    }

    #[test]
    fn a_stopping_server_saves_its_holds_and_its_tunnels_still_live() {
        let grace = Duration::from_secs(30);
        let registry = Arc::new(Registry::new(grace, 10));
        let left = registry
            .register(tunnel("left", Owner::Key("a".into())), Claim::default())
            .unwrap();
        drop(left);
        let _live = registry
            .register(tunnel("live", Owner::Secret([1; 32])), Claim::default())
            .unwrap();
        let mut saved = registry.saved_holds();
        saved.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<_> = saved.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["left", "live"]);
        assert_eq!(saved[0].owner, Owner::Key("a".into()));
        assert_eq!(saved[1].owner, Owner::Secret([1; 32]));
        assert_eq!(saved[1].left, grace);
        // Taken back by a fresh registry: both held for their owners.
        let fresh = Registry::new(grace, 10);
        fresh.restore_holds(saved);
        assert_eq!(fresh.held(), 2);
        assert!(matches!(fresh.lookup("live"), Lookup::Reconnecting(_)));
    }
}
