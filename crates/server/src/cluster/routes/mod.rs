//! A cluster node's registry: this node's live tunnels (an in-memory
//! [`Local`], without holds of its own) plus their claims in Redis, the
//! routes to other nodes' tunnels as Redis gave them, and the keeper task
//! that renews this node's leases and releases the names of tunnels that
//! end.
//!
//! A name's entry here is trusted while its lease, as last renewed, runs;
//! after that (the node was paused, or Redis was away) the first visitor
//! asks Redis ([`Registry::resolve`]) whether the name is still this
//! node's before it is served: taken over, it is dropped and the visitor
//! goes to the new owner; Redis unreachable, the live session is served
//! (its owner is connected here: it is the owner's proof).
//!
//! # Layout
//!
//! - this file: the registry, its claims and its own tunnels;
//! - [`cache`]: what it knows of other nodes' names, and asking Redis;
//! - [`keeper`]: the task that renews and releases.

mod cache;
mod keeper;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::health::{ClusterMetrics, View};
use super::lookups::Lookups;
use super::shared::{Claimed, Entry, Renewed, Shared};
use crate::registry::{
    BoxFuture, Claim, HeldBy, Local, Lookup, Registration, Registry, Remote, Taken, Tunnel,
};
use crate::store::SavedHold;

/// Most routes (and, apart, unknown names) remembered; past it the table
/// starts again empty.
const MAX_CACHED: usize = 65_536;

/// Most releases waiting for Redis. Past it (Redis slow while many tunnels
/// end) a name is not released but left to its lease, after which it is
/// held for its owner all the same, as if its node had gone.
const MAX_PENDING_RELEASES: usize = 65_536;

/// This node's identity in the cluster.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its name.
    pub name: String,
    /// Where peers reach its hop.
    pub hop: std::net::SocketAddr,
    /// This process's token for its name.
    pub token: String,
}

/// A cluster node's registry.
pub struct Clustered {
    local: Local,
    shared: Shared,
    node: Node,
    lease: Duration,
    grace: Duration,
    route_ttl: Duration,
    negative_ttl: Duration,
    /// This node's claims, by name (a pool's members here, one each).
    mine: RwLock<HashMap<String, Vec<Mine>>>,
    /// Other nodes' names, and names found nowhere, as Redis last said.
    cache: Mutex<Cache>,
    releases: mpsc::Sender<Release>,
    /// The keeper, until [`Registry::close`] stops it.
    keeper: Mutex<Option<Keeper>>,
    metrics: ClusterMetrics,
    /// The store's marker as this node last saw it ([`Shared::mark`]).
    marker: Mutex<Option<String>>,
    /// Visitors' questions to Redis, shared and bounded.
    lookups: Lookups,
}

struct Keeper {
    stop: CancellationToken,
    done: tokio::task::JoinHandle<()>,
}

/// One of this node's claims.
struct Mine {
    entry: Entry,
    tunnel_id: String,
    /// Served without asking Redis until then.
    until: Instant,
}

#[derive(Default)]
struct Cache {
    /// A name's members on other nodes (several for a pool).
    routes: HashMap<String, (Arc<[Remote]>, Instant)>,
    held: HashMap<String, Instant>,
    unknown: HashMap<String, Instant>,
}

/// A name to take this node off, and how long to hold it for its owner.
struct Release {
    name: String,
    token: String,
    hold: Duration,
}

impl Clustered {
    /// The registry of `node`, claiming names in `shared` for `lease` at a
    /// time and holding them `grace` for reconnection; starts its keeper.
    pub fn start(
        shared: Shared,
        node: Node,
        config: &super::ClusterConfig,
        grace: Duration,
        max_tunnels: usize,
        metrics: ClusterMetrics,
    ) -> Arc<Self> {
        let (releases, pending) = mpsc::channel(MAX_PENDING_RELEASES);
        let registry = Arc::new(Clustered {
            local: Local::new(Duration::ZERO, 1, max_tunnels.max(1)),
            shared,
            node,
            lease: config.lease,
            grace,
            route_ttl: config.route_ttl,
            negative_ttl: config.negative_ttl,
            mine: RwLock::default(),
            cache: Mutex::default(),
            releases,
            keeper: Mutex::new(None),
            metrics,
            marker: Mutex::new(None),
            lookups: Lookups::new(config.lookup_rate),
        });
        let stop = CancellationToken::new();
        let done = tokio::spawn(keeper::keep(
            Arc::downgrade(&registry),
            pending,
            stop.clone(),
        ));
        *lock(&registry.keeper) = Some(Keeper { stop, done });
        registry
    }

    /// The shared store.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Its metrics.
    pub fn metrics(&self) -> &ClusterMetrics {
        &self.metrics
    }

    /// What this node holds and caches of the cluster, now.
    pub fn view(&self) -> View {
        let cache = lock(&self.cache);
        View {
            store_up: self.shared.is_up(),
            owned: read(&self.mine).values().map(Vec::len).sum(),
            routes: cache.routes.len(),
            unknown: cache.unknown.len(),
        }
    }

    /// Whether this node's claim for tunnel `id` on `name` was renewed
    /// recently enough to serve it without asking.
    fn trusted(&self, name: &str, id: &str) -> bool {
        read(&self.mine).get(name).is_some_and(|all| {
            all.iter()
                .any(|mine| mine.tunnel_id == id && Instant::now() < mine.until)
        })
    }

    /// Takes off this node's claim on `name` that `is` picks.
    fn take_mine(&self, name: &str, is: impl Fn(&Mine) -> bool) -> Option<Mine> {
        let mut all = write(&self.mine);
        let members = all.get_mut(name)?;
        let mine = members.remove(members.iter().position(is)?);
        if members.is_empty() {
            all.remove(name);
        }
        Some(mine)
    }

    /// Notes that claim `token` on `name` was renewed when `asked`.
    fn renewed(&self, name: &str, token: &str, asked: Instant) {
        if let Some(all) = write(&self.mine).get_mut(name) {
            for mine in all.iter_mut().filter(|mine| mine.entry.token == token) {
                mine.until = asked + self.lease;
            }
        }
    }

    /// Drops this node's tunnel for `name` (its claim went to another):
    /// visitors are no longer served from it. Its session ends when its
    /// client, gone elsewhere, stops answering.
    fn lost(&self, name: &str, token: &str) {
        let Some(mine) = self.take_mine(name, |mine| mine.entry.token == token) else {
            return;
        };
        if let Some(tunnel) = self.local.member(name, &mine.tunnel_id) {
            self.local.remove(&tunnel, false);
        }
        self.forget(name);
        self.metrics.names_lost.inc();
        info!(subdomain = %name, "another node claimed this name: its tunnel here no longer serves it");
    }

    /// Asks Redis whether `name`, live here but past its lease, is still
    /// this node's: renewed, it is served; taken, it is dropped; Redis
    /// unreachable, the live session is served.
    async fn confirm(&self, name: &str, tunnel: Arc<Tunnel>) -> Option<Arc<Tunnel>> {
        let entry = read(&self.mine)
            .get(name)?
            .iter()
            .find(|mine| mine.tunnel_id == tunnel.id)
            .map(|mine| mine.entry.clone())?;
        let asked = Instant::now();
        match self
            .shared
            .renew(std::slice::from_ref(&entry), self.lease, self.grace)
            .await
            .map(|r| r.first().copied())
        {
            Ok(Some(Renewed::Yes | Renewed::Reasserted)) | Err(_) => {
                self.renewed(name, &entry.token, asked);
                Some(tunnel)
            }
            Ok(_) => {
                self.lost(name, &entry.token);
                None
            }
        }
    }

    async fn claim(&self, tunnel: &Tunnel, claim: Claim<'_>) -> Result<Entry, Taken> {
        let epoch = self.shared.next_epoch().await.map_err(|err| {
            debug!(%err, "could not claim a name");
            Taken::Unavailable
        })?;
        let entry = Entry {
            name: tunnel.subdomain.clone(),
            owner: tunnel.owner.code(),
            token: cryptun_proto::random_id(16),
            epoch,
            member: format!(
                "{} {} {} {}",
                self.node.name, self.node.hop, tunnel.id, tunnel.protocol
            ),
            pool: tunnel.pool,
        };
        let [key, secret] = claim.codes();
        let proofs = [key.as_str(), secret.as_str()];
        match self
            .shared
            .claim(&entry, proofs, self.lease, self.grace)
            .await
        {
            Ok(Claimed::Yes) => Ok(entry),
            Ok(Claimed::Live(_)) => Err(Taken::Live),
            Ok(Claimed::Held(left)) => Err(Taken::Held(HeldBy::Other(left))),
            Ok(Claimed::WrongSecret(left)) => Err(Taken::Held(HeldBy::WrongSecret(left))),
            Ok(Claimed::PoolConflict) => Err(Taken::PoolConflict),
            Err(err) => {
                debug!(%err, "could not claim a name");
                Err(Taken::Unavailable)
            }
        }
    }
}

impl Registry for Clustered {
    fn lookup(&self, name: &str) -> Lookup {
        if let Lookup::Live(tunnel) = self.local.lookup(name) {
            if self.trusted(name, &tunnel.id) {
                return Lookup::Live(tunnel);
            }
            return Lookup::Ask;
        }
        self.cached(name).unwrap_or(Lookup::Ask)
    }

    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Lookup> {
        Box::pin(self.find(name))
    }

    fn register<'a>(
        self: Arc<Self>,
        tunnel: Tunnel,
        claim: Claim<'a>,
    ) -> BoxFuture<'a, Result<Registration, Taken>> {
        Box::pin(async move {
            // A pool's member may join members here; else a name live
            // here is taken (Redis would say so too, after a round trip).
            if let Lookup::Live(live) = self.local.lookup(&tunnel.subdomain) {
                match (live.pool, tunnel.pool) {
                    (true, true) => {}
                    (false, false) => return Err(Taken::Live),
                    _ => return Err(Taken::PoolConflict),
                }
            }
            let asked = Instant::now();
            let entry = self.claim(&tunnel, claim).await?;
            let name = entry.name.clone();
            let token = entry.token.clone();
            let tunnel_id = tunnel.id.clone();
            let tunnel = match self.local.insert(tunnel, Claim::default()) {
                Ok(tunnel) => tunnel,
                Err(taken) => {
                    // Raced by another session of this node: give it back.
                    let _ = self.releases.try_send(Release {
                        name,
                        token,
                        hold: Duration::ZERO,
                    });
                    return Err(taken);
                }
            };
            write(&self.mine)
                .entry(name.clone())
                .or_default()
                .push(Mine {
                    entry,
                    tunnel_id,
                    until: asked + self.lease,
                });
            self.forget(&name);
            let registry: Arc<dyn Registry> = self;
            Ok(Registration::new(registry, tunnel))
        })
    }

    fn can_admit(&self) -> bool {
        self.shared.is_up()
    }

    fn close(&self) -> BoxFuture<'static, ()> {
        let keeper = lock(&self.keeper).take();
        Box::pin(async move {
            if let Some(keeper) = keeper {
                keeper.stop.cancel();
                let _ = keeper.done.await;
            }
        })
    }

    fn remove(&self, tunnel: &Arc<Tunnel>, hold: bool) {
        self.local.remove(tunnel, false);
        let mine = self.take_mine(&tunnel.subdomain, |mine| mine.tunnel_id == tunnel.id);
        if let Some(mine) = mine {
            let _ = self.releases.try_send(Release {
                name: mine.entry.name,
                token: mine.entry.token,
                hold: if hold { self.grace } else { Duration::ZERO },
            });
        }
    }

    /// Holds live in Redis, where a revoked key's cannot be proven any
    /// more: they lapse by themselves.
    fn release_key(&self, _id: &str) -> usize {
        0
    }

    /// Holds live in Redis, not here.
    fn held(&self) -> usize {
        0
    }

    /// Nothing: holds outlive this node in Redis.
    fn saved_holds(&self) -> Vec<SavedHold> {
        Vec::new()
    }

    /// Nothing: holds outlive this node in Redis.
    fn restore_holds(&self, _saved: Vec<SavedHold>) {}

    fn list(&self) -> Vec<Arc<Tunnel>> {
        self.local.list()
    }

    fn len(&self) -> usize {
        self.local.len()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}
