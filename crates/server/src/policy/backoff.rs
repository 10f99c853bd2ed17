//! Backoff for failed handshakes, per source address.
//!
//! Guessing an API key (200 bits) or a reconnect secret (160 bits) online
//! is hopeless anyway; this keeps a client that tries from costing the
//! server a database lookup per attempt, and makes the logs quiet. After
//! `free_failures` failures an address is refused for `base`, then twice
//! that after the next failure, and so on up to `max`; while refused, even
//! a right key is turned away unchecked, so nothing can be learned. An
//! address forgets its failures after `forget_after` without one.
//!
//! IPv6 addresses count by their /64, the block one host is usually given,
//! so a client cannot escape by changing its interface id. IPv4-mapped
//! IPv6 addresses count as the IPv4 address.
//!
//! Memory is bounded: at most `max_entries` addresses are remembered; when
//! full, the one whose last failure is oldest is forgotten first. Entries
//! are kept in a `BTreeMap` ordered by a sequence number bumped on each
//! failure, so finding the oldest costs `O(log n)`, not a scan.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cryptun_proto::net::group;

/// How the backoff behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Failures allowed before the first refusal: room for a few typos.
    pub free_failures: u32,
    /// The first refusal's length; each further failure doubles it.
    pub base: Duration,
    /// The longest refusal.
    pub max: Duration,
    /// An address with no failure for this long starts afresh. At least
    /// `max`, so a refusal is never forgotten before it ends.
    pub forget_after: Duration,
    /// Most addresses remembered.
    pub max_entries: usize,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            free_failures: 5,
            base: Duration::from_secs(1),
            max: Duration::from_secs(600),
            forget_after: Duration::from_secs(900),
            // About 100 bytes each: a few MiB at most.
            max_entries: 65_536,
        }
    }
}

#[derive(Debug)]
struct Entry {
    failures: u32,
    last: Instant,
    blocked_until: Option<Instant>,
    seq: u64,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<IpAddr, Entry>,
    /// Sequence number of each entry's last failure → its address; the
    /// first is the entry that failed longest ago.
    order: BTreeMap<u64, IpAddr>,
    next_seq: u64,
}

/// Failed-handshake counts by address.
#[derive(Debug)]
pub struct Backoff {
    config: BackoffConfig,
    inner: Mutex<Inner>,
}

impl Backoff {
    /// An empty table.
    pub fn new(config: BackoffConfig) -> Self {
        Backoff {
            config,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long `ip` is still refused for, if it is.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let inner = self.lock();
        let until = inner.entries.get(&group(ip))?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Records a failure from `ip`; returns the refusal it starts, if any.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let key = group(ip);
        let config = self.config;
        let mut inner = self.lock();
        inner.forget_stale(now, config.forget_after);
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let fresh = Entry {
            failures: 0,
            last: now,
            blocked_until: None,
            seq,
        };
        if !inner.entries.contains_key(&key) {
            while inner.entries.len() >= config.max_entries.max(1) {
                inner.evict_oldest();
            }
        }
        let Inner { entries, order, .. } = &mut *inner;
        let entry = entries.entry(key).or_insert(fresh);
        order.remove(&entry.seq);
        order.insert(seq, key);
        entry.seq = seq;
        entry.last = now;
        entry.failures = entry.failures.saturating_add(1);
        let over = entry.failures.checked_sub(config.free_failures + 1)?;
        let block = config
            .base
            .checked_mul(1u32.checked_shl(over.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(config.max)
            .min(config.max);
        entry.blocked_until = Some(now + block);
        Some(block)
    }

    /// Addresses remembered (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn evict_oldest(&mut self) {
        if let Some((_, ip)) = self.order.pop_first() {
            self.entries.remove(&ip);
        }
    }

    /// Drops entries whose last failure is older than `forget_after`; they
    /// are at the front of `order`.
    fn forget_stale(&mut self, now: Instant, forget_after: Duration) {
        while let Some((_, ip)) = self.order.first_key_value() {
            let stale = self
                .entries
                .get(ip)
                .is_none_or(|e| now.saturating_duration_since(e.last) >= forget_after);
            if !stale {
                break;
            }
            self.evict_oldest();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BackoffConfig {
        BackoffConfig {
            free_failures: 3,
            base: Duration::from_secs(1),
            max: Duration::from_secs(10),
            forget_after: Duration::from_secs(60),
            max_entries: 4,
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn refusals_start_after_the_free_failures_and_double_up_to_the_max() {
        let b = Backoff::new(config());
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(b.failed(ip(1), t), None);
            assert_eq!(b.blocked(ip(1), t), None);
        }
        let blocks: Vec<_> = (0..6).map(|_| b.failed(ip(1), t).unwrap()).collect();
        let secs: Vec<_> = blocks.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 10, 10]);
        assert_eq!(b.blocked(ip(1), t), Some(Duration::from_secs(10)));
        assert_eq!(
            b.blocked(ip(1), t + Duration::from_secs(4)),
            Some(Duration::from_secs(6))
        );
        assert_eq!(b.blocked(ip(1), t + Duration::from_secs(10)), None);
        // Another address is untouched.
        assert_eq!(b.blocked(ip(2), t), None);
    }

    #[test]
    fn a_quiet_address_is_forgotten() {
        let b = Backoff::new(config());
        let t = Instant::now();
        for _ in 0..4 {
            b.failed(ip(1), t);
        }
        assert!(b.blocked(ip(1), t).is_some());
        let later = t + Duration::from_secs(61);
        // The next failure finds the old record gone: it is a first one.
        assert_eq!(b.failed(ip(1), later), None);
    }

    #[test]
    fn memory_stays_bounded_and_the_oldest_goes_first() {
        let b = Backoff::new(config());
        let t = Instant::now();
        for n in 0..4 {
            for _ in 0..4 {
                b.failed(ip(n), t);
            }
        }
        assert_eq!(b.len(), 4);
        // ip(0) fails again: it is now the most recent.
        b.failed(ip(0), t);
        for n in 10..200 {
            b.failed(ip(n), t);
            assert!(b.len() <= 4);
        }
        assert_eq!(b.len(), 4);
        assert!(b.blocked(ip(1), t).is_none(), "evicted");
        let b = Backoff::new(config());
        for n in 0..4 {
            for _ in 0..4 {
                b.failed(ip(n), t);
            }
        }
        b.failed(ip(0), t);
        b.failed(ip(9), t);
        // ip(1) was the oldest, so it went; ip(0) stayed.
        assert!(b.blocked(ip(1), t).is_none());
        assert!(b.blocked(ip(0), t).is_some());
    }

    #[test]
    fn ipv6_counts_by_slash_64_and_mapped_v4_as_v4() {
        let b = Backoff::new(config());
        let t = Instant::now();
        let host = |last: u16| IpAddr::from([0x2001, 0xdb8, 1, 2, 0, 0, 0, last]);
        for n in 0..4 {
            b.failed(host(n), t);
        }
        assert!(b.blocked(host(999), t).is_some());
        assert!(
            b.blocked(IpAddr::from([0x2001, 0xdb8, 1, 3, 0, 0, 0, 1]), t)
                .is_none()
        );
        for _ in 0..4 {
            b.failed(ip(7), t);
        }
        let mapped = IpAddr::V6(std::net::Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        assert!(b.blocked(mapped, t).is_some());
    }
}
