//! The in-memory registry: this node's live tunnels by name and the names
//! held for their reconnection, behind one lock. It is the whole registry
//! of a single server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tracing::debug;

use super::held::{self, Claim, Holder};
use super::{BoxFuture, Lookup, Registration, Registry, Taken, Tunnel};
use crate::store::{Owner, SavedHold};

/// The map from subdomain to live tunnel, and the names held for
/// reconnection.
pub struct Local {
    inner: RwLock<Inner>,
    /// How long a name is held after its tunnel's session ends.
    grace: Duration,
    /// Moves with every change worth saving ([`Registry::changes`]).
    changes: AtomicU64,
}

struct Inner {
    /// Each live name's tunnel, or a pool's members (never empty).
    tunnels: HashMap<String, Vec<Arc<Tunnel>>>,
    holds: held::Holds,
}

/// Most members of one pool.
pub const MAX_POOL_MEMBERS: usize = 64;

impl Default for Local {
    /// No reconnect grace.
    fn default() -> Self {
        Local::new(Duration::ZERO, 1, 1)
    }
}

impl Local {
    /// An empty registry that holds a disconnected tunnel's name for
    /// `grace`, remembering at most `max_held` such names, `per_holder` for
    /// any one key or client address.
    pub fn new(grace: Duration, max_held: usize, per_holder: usize) -> Self {
        Local {
            inner: RwLock::new(Inner {
                tunnels: HashMap::new(),
                holds: held::Holds::new(max_held, per_holder),
            }),
            grace,
            changes: AtomicU64::new(0),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Relaxed);
    }
}

impl Local {
    /// Registers `tunnel` unless its subdomain is live, or held for
    /// another identity than `claim`'s. The entry lives as long as the
    /// returned registration.
    pub fn register_now(
        self: Arc<Self>,
        tunnel: Tunnel,
        claim: Claim<'_>,
    ) -> Result<Registration, Taken> {
        let tunnel = self.insert(tunnel, claim)?;
        Ok(Registration::new(self, tunnel))
    }

    /// Puts `tunnel` in the map unless its subdomain is live, or held for
    /// another identity than `claim`'s; whoever calls it removes it.
    ///
    /// A pool's member joins the live members of its pool: one of the same
    /// owner carrying the same protocol.
    pub(crate) fn insert(&self, tunnel: Tunnel, claim: Claim<'_>) -> Result<Arc<Tunnel>, Taken> {
        let mut inner = self.write();
        if let Some(members) = inner.tunnels.get_mut(&tunnel.subdomain) {
            joins(members, &tunnel)?;
            let tunnel = Arc::new(tunnel);
            members.push(Arc::clone(&tunnel));
            self.changed();
            return Ok(tunnel);
        }
        inner
            .holds
            .claim(&tunnel.subdomain, claim, Instant::now())
            .map_err(Taken::Held)?;
        let tunnel = Arc::new(tunnel);
        inner
            .tunnels
            .insert(tunnel.subdomain.clone(), vec![Arc::clone(&tunnel)]);
        self.changed();
        Ok(tunnel)
    }
}

impl Local {
    /// The live tunnel `id` of `name` (one member of a pool).
    pub(crate) fn member(&self, name: &str, id: &str) -> Option<Arc<Tunnel>> {
        let inner = self.read();
        inner
            .tunnels
            .get(name)?
            .iter()
            .find(|t| t.id == id)
            .cloned()
    }
}

/// Whether `tunnel` may join the live `members` of its name: only as a
/// member of their pool (same owner, same protocol), while it has room.
fn joins(members: &[Arc<Tunnel>], tunnel: &Tunnel) -> Result<(), Taken> {
    let first = &members[0];
    match (first.pool, tunnel.pool) {
        (true, true) if first.owner != tunnel.owner => Err(Taken::Live),
        (true, true) if first.protocol != tunnel.protocol || port(first) != port(tunnel) => {
            Err(Taken::PoolConflict)
        }
        (true, true) if members.len() >= MAX_POOL_MEMBERS => Err(Taken::PoolFull(members.len())),
        (true, true) => Ok(()),
        (false, false) => Err(Taken::Live),
        _ => Err(Taken::PoolConflict),
    }
}

/// A TCP tunnel's port.
fn port(tunnel: &Tunnel) -> Option<u16> {
    tunnel.relay.as_ref().and_then(|relay| relay.port)
}

/// The member of `members` a visitor goes to: of two drawn at random, the
/// one with fewer requests in flight on its connection (the "power of two
/// choices": nearly as even as asking every member, at the cost of two).
pub(crate) fn pick(members: &[Arc<Tunnel>]) -> &Arc<Tunnel> {
    if members.len() == 1 {
        return &members[0];
    }
    let a = rand::random_range(0..members.len());
    let b = (a + rand::random_range(1..members.len())) % members.len();
    let (first, second) = (&members[a], &members[b]);
    if second.mux.stream_count() < first.mux.stream_count() {
        second
    } else {
        first
    }
}

impl Local {}

impl Registry for Local {
    /// Where `subdomain` points: a live tunnel, a name held for
    /// reconnection, or nothing.
    fn lookup(&self, subdomain: &str) -> Lookup {
        let inner = self.read();
        if let Some(members) = inner.tunnels.get(subdomain) {
            return Lookup::Live(Arc::clone(pick(members)));
        }
        match inner.holds.remaining(subdomain, Instant::now()) {
            Some(left) => Lookup::Reconnecting(left),
            None => Lookup::Free,
        }
    }

    fn register<'a>(
        self: Arc<Self>,
        tunnel: Tunnel,
        claim: Claim<'a>,
    ) -> BoxFuture<'a, Result<Registration, Taken>> {
        Box::pin(std::future::ready(self.register_now(tunnel, claim)))
    }

    /// Ends every reconnection hold of key `id` (its key was revoked, so
    /// nobody can take the names back); returns how many.
    fn release_key(&self, id: &str) -> usize {
        let released = self.write().holds.release_owner(&Owner::Key(id.to_owned()));
        if released > 0 {
            self.changed();
        }
        released
    }

    /// Names held for reconnection now.
    fn held(&self) -> usize {
        self.read().holds.len()
    }

    /// What a stopping server saves: the names held for reconnection now,
    /// for whom, and for how much longer, and the names of tunnels still
    /// live (their sessions are ending, or late to), each held for the
    /// whole grace.
    fn saved_holds(&self) -> Vec<SavedHold> {
        let inner = self.read();
        let mut saved = inner.holds.saved(Instant::now());
        if !self.grace.is_zero() {
            saved.extend(inner.tunnels.values().map(|members| SavedHold {
                name: members[0].subdomain.clone(),
                owner: members[0].owner.clone(),
                left: self.grace,
            }));
        }
        saved
    }

    /// Holds again the names a previous run saved, for what is left of
    /// their grace (at most this registry's grace).
    fn restore_holds(&self, saved: Vec<SavedHold>) {
        self.write()
            .holds
            .restore(saved, self.grace, Instant::now());
        self.changed();
    }

    fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// Live tunnels, oldest first.
    fn list(&self) -> Vec<Arc<Tunnel>> {
        let mut all: Vec<_> = self.read().tunnels.values().flatten().cloned().collect();
        all.sort_by_key(|t| t.created_at);
        all
    }

    /// Number of live tunnels.
    fn len(&self) -> usize {
        self.read().tunnels.values().map(Vec::len).sum()
    }

    fn remove(&self, tunnel: &Arc<Tunnel>, hold: bool) {
        let mut inner = self.write();
        let name = &tunnel.subdomain;
        let Some(members) = inner.tunnels.get_mut(name) else {
            return;
        };
        let before = members.len();
        members.retain(|t| !Arc::ptr_eq(t, tunnel));
        if members.len() == before {
            return;
        }
        self.changed();
        // A pool's name is held only once its last member is gone.
        if !members.is_empty() {
            return;
        }
        inner.tunnels.remove(name);
        if hold && !self.grace.is_zero() {
            let now = Instant::now();
            let owner = tunnel.owner.clone();
            let holder = Holder::of(&owner, tunnel.client_addr.ip());
            let until = now + self.grace;
            if let Err(why) = inner.holds.hold(name.clone(), owner, holder, until, now) {
                // Debug only: a client over its share could fill the log.
                debug!(name = %name, ?why, "name not held for reconnection");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Access;
    use cryptun_proto::Limits;
    use cryptun_proto::message::CreateTunnel;
    use cryptun_proto::mux::Mux;
    use cryptun_proto::mux::Side;
    use std::sync::atomic::AtomicU64;
    use std::time::SystemTime;

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
            mux: Mux::new(
                Side::Opener,
                cryptun_proto::Capabilities::SUPPORTED,
                Limits::default(),
            ),
            uploads: Arc::new(tokio::sync::Semaphore::new(1)),
            place: None,
            owner,
            access: Access::from_request(&CreateTunnel::default()).unwrap(),
            rate_limiter: None,
            max_body_size: None,
            protocol: cryptun_proto::TunnelProtocol::Http,
            relay: None,
            pool: false,
        }
    }

    /// A pool's member `i` of `owner` on `name`.
    fn member(name: &str, i: usize, owner: Owner) -> Tunnel {
        Tunnel {
            id: format!("{name}-{i}"),
            pool: true,
            ..tunnel(name, owner)
        }
    }

    #[test]
    fn a_pool_takes_its_owners_members_up_to_its_limit_and_holds_its_name_after_the_last() {
        let registry = Arc::new(Local::new(Duration::from_secs(30), 10, 10));
        let owner = Owner::Key("a".into());
        let mut members = Vec::new();
        for i in 0..MAX_POOL_MEMBERS {
            let joined = Arc::clone(&registry)
                .register_now(member("team", i, owner.clone()), Claim::default());
            members.push(joined.unwrap());
        }
        assert_eq!(registry.len(), MAX_POOL_MEMBERS);
        let over = member("team", MAX_POOL_MEMBERS, owner.clone());
        let refused = Arc::clone(&registry).register_now(over, Claim::default());
        assert_eq!(refused.err(), Some(Taken::PoolFull(MAX_POOL_MEMBERS)));
        // Another owner's member, or a single tunnel: not in this pool.
        let stranger = member("team", 99, Owner::Key("b".into()));
        let refused = Arc::clone(&registry).register_now(stranger, Claim::default());
        assert_eq!(refused.err(), Some(Taken::Live));
        let single = tunnel("team", owner.clone());
        let refused = Arc::clone(&registry).register_now(single, Claim::default());
        assert_eq!(refused.err(), Some(Taken::PoolConflict));
        // Every member gone but one: still live; the last gone: held.
        members.truncate(1);
        assert!(matches!(registry.lookup("team"), Lookup::Live(_)));
        members.clear();
        assert!(matches!(registry.lookup("team"), Lookup::Reconnecting(_)));
    }

    #[test]
    fn a_stopping_server_saves_its_holds_and_its_tunnels_still_live() {
        let grace = Duration::from_secs(30);
        let registry = Arc::new(Local::new(grace, 10, 10));
        let left = Arc::clone(&registry)
            .register_now(tunnel("left", Owner::Key("a".into())), Claim::default())
            .unwrap();
        drop(left);
        let _live = Arc::clone(&registry)
            .register_now(tunnel("live", Owner::Secret([1; 32])), Claim::default())
            .unwrap();
        let mut saved = registry.saved_holds();
        saved.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<_> = saved.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["left", "live"]);
        assert_eq!(saved[0].owner, Owner::Key("a".into()));
        assert_eq!(saved[1].owner, Owner::Secret([1; 32]));
        assert_eq!(saved[1].left, grace);
        // Taken back by a fresh registry: both held for their owners.
        let fresh = Local::new(grace, 10, 10);
        fresh.restore_holds(saved);
        assert_eq!(fresh.held(), 2);
        assert!(matches!(fresh.lookup("live"), Lookup::Reconnecting(_)));
    }
}
