//! What a node knows of other nodes' names: routes, held names and
//! unknown names as Redis last gave them, each for a while
//! (`ClusterConfig::route_ttl`, `negative_ttl`), and the lookup that asks
//! Redis when the cache cannot say, shared and bounded (`lookups`); with
//! Redis away, a route known before still serves.

use std::time::Instant;

use tracing::debug;

use std::sync::Arc;

use super::{Clustered, MAX_CACHED, lock};
use crate::cluster::shared::Found as Shared;
use crate::registry::{Lookup, Registry, Remote};

impl Clustered {
    /// Forgets what was cached about `name` (its node said it is not
    /// there, or could not be reached).
    pub fn forget(&self, name: &str) {
        let mut cache = lock(&self.cache);
        cache.routes.remove(name);
        cache.held.remove(name);
        cache.unknown.remove(name);
    }

    /// What the cache says of `name`, if it is fresh.
    pub(super) fn cached(&self, name: &str) -> Option<Lookup> {
        let now = Instant::now();
        let cache = lock(&self.cache);
        if let Some((remotes, until)) = cache.routes.get(name) {
            if now < *until {
                return Some(Lookup::Remote(spread(remotes)));
            }
        }
        if let Some(until) = cache.held.get(name) {
            if now < *until {
                return Some(Lookup::Reconnecting(*until - now));
            }
        }
        if cache.unknown.get(name).is_some_and(|until| now < *until) {
            return Some(Lookup::Free);
        }
        None
    }

    pub(super) fn remember(&self, name: &str, found: &Found) {
        let now = Instant::now();
        let mut cache = lock(&self.cache);
        let bounded = |map_len: usize| map_len >= MAX_CACHED;
        match found {
            Found::Remote(remotes) => {
                if bounded(cache.routes.len()) {
                    cache.routes.clear();
                }
                cache
                    .routes
                    .insert(name.to_owned(), (Arc::clone(remotes), now + self.route_ttl));
            }
            Found::Other(Lookup::Reconnecting(left)) => {
                if bounded(cache.held.len()) {
                    cache.held.clear();
                }
                let ttl = (*left).min(self.negative_ttl);
                cache.held.insert(name.to_owned(), now + ttl);
            }
            Found::Other(Lookup::Free) => {
                if bounded(cache.unknown.len()) {
                    cache.unknown.clear();
                }
                cache
                    .unknown
                    .insert(name.to_owned(), now + self.negative_ttl);
            }
            _ => {}
        }
    }

    pub(super) async fn find(&self, name: &str) -> Lookup {
        if let Lookup::Live(tunnel) = self.local.lookup(name) {
            if self.trusted(name, &tunnel.id) {
                return Lookup::Live(tunnel);
            }
            if let Some(tunnel) = self.confirm(name, tunnel).await {
                return Lookup::Live(tunnel);
            }
        }
        if let Some(found) = self.cached(name) {
            return found;
        }
        match self.lookups.once(name, || self.ask(name)).await {
            Some(found) => found,
            None => {
                // Over the lookup budget: a route known before still
                // serves (its node says if it is stale).
                self.metrics.lookups_refused.inc();
                self.stale(name).map_or(Lookup::Busy, Lookup::Remote)
            }
        }
    }

    /// A route to `name` cached before, however old.
    pub(super) fn stale(&self, name: &str) -> Option<Remote> {
        lock(&self.cache).routes.get(name).map(|(r, _)| spread(r))
    }

    /// Asks Redis where `name` is, and remembers the answer.
    pub(super) async fn ask(&self, name: &str) -> Lookup {
        self.metrics.store_lookups.inc();
        let found = match self.shared.resolve(name).await {
            Ok(Shared::Members(members)) => {
                // Members on other nodes (a pool's: each visitor goes to
                // one of them).
                let remotes: Vec<Remote> = members
                    .into_iter()
                    .filter(|m| m.node != self.node.name)
                    .map(|member| Remote {
                        node: member.node,
                        hop: member.hop,
                        protocol: member.protocol,
                    })
                    .collect();
                match remotes.is_empty() {
                    false => Found::Remote(remotes.into()),
                    // Ours by name but not by token: a claim this process
                    // does not have (a previous run's, lapsing).
                    true => Found::Other(Lookup::Reconnecting(self.lease)),
                }
            }
            Ok(Shared::Held(left)) => Found::Other(Lookup::Reconnecting(left)),
            Ok(Shared::Free) => Found::Other(Lookup::Free),
            Err(err) => {
                debug!(%err, subdomain = %name, "could not resolve a name");
                // Redis away: a route known before still serves (its node
                // says so if it is stale).
                return self.stale(name).map_or(Lookup::Unavailable, Lookup::Remote);
            }
        };
        self.remember(name, &found);
        match found {
            Found::Remote(remotes) => Lookup::Remote(spread(&remotes)),
            Found::Other(lookup) => lookup,
        }
    }
}

/// What Redis said of a name, as the cache keeps it.
pub(super) enum Found {
    /// Its members on other nodes.
    Remote(Arc<[Remote]>),
    /// Anything else.
    Other(Lookup),
}

/// The member of `remotes` (never empty) a visitor goes to: one at random.
fn spread(remotes: &[Remote]) -> Remote {
    remotes[rand::random_range(0..remotes.len())].clone()
}
