//! Shares: how many of something one visitor address, or one client
//! identity, may hold at once. Requests in flight per visitor address
//! (`max_requests_per_ip`), and per client identity (an API key, or the
//! address anonymous clients connect from) sessions and live tunnels
//! (`max_sessions_per_ip`, `max_tunnels_per_ip`): one address, or one key,
//! cannot hold the server's memory or a tunnel's streams for everyone.
//!
//! A place counts from when it is taken until it is dropped. The table
//! holds only keys with a place taken, so it is bounded by the places
//! themselves. Addresses count by their group ([`group`]: IPv6 by /64).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use cryptun_proto::net::group;

/// Who a client's share is counted for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Who {
    /// A client with this API key (wherever it connects from).
    Key(String),
    /// Anonymous clients from this address group.
    Address(IpAddr),
}

impl Who {
    /// An anonymous client at `ip`.
    pub fn address(ip: IpAddr) -> Who {
        Who::Address(group(ip))
    }
}

/// At most `max` places per key.
pub struct Quota<K> {
    max: usize,
    counts: Mutex<HashMap<K, usize>>,
}

/// One place in a [`Quota`]; dropping it gives the place back.
pub struct Place<K: Hash + Eq> {
    quota: Arc<Quota<K>>,
    key: K,
}

impl<K: Hash + Eq> Drop for Place<K> {
    fn drop(&mut self) {
        let mut counts = self.quota.counts();
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl<K: Hash + Eq + Clone> Quota<K> {
    /// At most `max` places per key.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Quota {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A place for `key`, unless it holds `max` already.
    pub fn take(self: &Arc<Self>, key: K) -> Option<Place<K>> {
        let mut counts = self.counts();
        let held = counts.get(&key).copied().unwrap_or(0);
        if held >= self.max {
            return None;
        }
        counts.insert(key.clone(), held + 1);
        Some(Place {
            quota: Arc::clone(self),
            key,
        })
    }

    /// The most one key may hold.
    pub fn max(&self) -> usize {
        self.max
    }
}

impl<K> Quota<K> {
    fn counts(&self) -> MutexGuard<'_, HashMap<K, usize>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Requests in flight by visitor address (group).
pub type InFlight = Quota<IpAddr>;

impl InFlight {
    /// A place for one more request from `ip`, unless its group has `max`.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Place<IpAddr>> {
        self.take(group(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_has_its_share_and_gets_it_back() {
        let table = InFlight::new(2);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a = table.admit(ip("2001:db8::1")).unwrap();
        let b = table.admit(ip("2001:db8::2")).unwrap();
        // The same /64: over.
        assert!(table.admit(ip("2001:db8::3")).is_none());
        // Anyone else: not.
        let c = table.admit(ip("192.0.2.1")).unwrap();
        drop(a);
        let d = table.admit(ip("2001:db8::3")).unwrap();
        drop((b, c, d));
        assert!(table.counts().is_empty());
    }

    #[test]
    fn a_key_is_one_identity_wherever_it_connects_from() {
        let quota = Quota::new(1);
        let key = quota.take(Who::Key("k".into())).unwrap();
        assert!(quota.take(Who::Key("k".into())).is_none());
        let anonymous = quota.take(Who::address("192.0.2.1".parse().unwrap()));
        assert!(anonymous.is_some());
        drop(key);
        assert!(quota.take(Who::Key("k".into())).is_some());
    }
}
