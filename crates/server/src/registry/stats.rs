//! Request counters for the dashboard: one [`Stats`] per live tunnel and
//! one for the whole server, moved by every visitor request
//! (`access_log`) and read by `/api/dashboard`.
//!
//! Unlike [`metrics`](crate::metrics), which keeps no per-tunnel series so
//! that peers cannot grow it, these live inside a tunnel's handle and go
//! away with it: a fixed handful of atomics per tunnel (about 250 bytes),
//! however many requests or visitors it sees. Recording is a few relaxed
//! atomic additions; nothing on the request path takes a lock.
//!
//! The request rate comes from a small ring of per-second buckets
//! ([`RateRing`]): requests that arrived in each of the last few seconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Seconds the reported request rate is averaged over: long enough to
/// smooth a burst, short enough to follow a change while one watches.
pub const RATE_WINDOW_SECS: u64 = 10;

/// Buckets in a [`RateRing`]: at least the window, plus slack so the
/// bucket being written is never one being summed as old.
const BUCKETS: usize = 16;
const _: () = assert!(BUCKETS as u64 > RATE_WINDOW_SECS);

/// Counters of the visitor requests to a tunnel (or to the whole server).
#[derive(Debug)]
pub struct Stats {
    /// When the counters started: the base of the rate ring's clock.
    since: Instant,
    requests: AtomicU64,
    in_flight: AtomicU64,
    /// Finished requests by status class: none (no answer), 1xx .. 5xx.
    classes: [AtomicU64; 6],
    bad_gateway: AtomicU64,
    gateway_timeout: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    rate: RateRing,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new(Instant::now())
    }
}

impl Stats {
    /// Zeroed counters, starting at `since`.
    pub fn new(since: Instant) -> Self {
        Stats {
            since,
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            classes: Default::default(),
            bad_gateway: AtomicU64::new(0),
            gateway_timeout: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            rate: RateRing::default(),
        }
    }

    /// A request arrived at `at`; it is in flight until [`end`](Self::end).
    pub fn begin(&self, at: Instant) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.rate.record(self.second(at));
    }

    /// A request that [`begin`](Self::begin) counted ended with `status`
    /// (0: the visitor got no answer).
    pub fn end(&self, status: u16) {
        // Never below zero, whatever a caller gets wrong.
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        let class = match status {
            100..=599 => usize::from(status / 100),
            _ => 0,
        };
        self.classes[class].fetch_add(1, Ordering::Relaxed);
        match status {
            502 => self.bad_gateway.fetch_add(1, Ordering::Relaxed),
            504 => self.gateway_timeout.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }

    /// Request body bytes received from a visitor.
    pub fn add_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Response body bytes sent to a visitor.
    pub fn add_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters as they are at `now`.
    pub fn view(&self, now: Instant) -> StatsView {
        let class = |i: usize| self.classes[i].load(Ordering::Relaxed);
        StatsView {
            requests: self.requests.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            rate: self.rate.per_second(self.second(now)),
            status: StatusCounts {
                none: class(0),
                informational: class(1),
                success: class(2),
                redirect: class(3),
                client_error: class(4),
                server_error: class(5),
                bad_gateway: self.bad_gateway.load(Ordering::Relaxed),
                gateway_timeout: self.gateway_timeout.load(Ordering::Relaxed),
            },
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        }
    }

    fn second(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.since).as_secs()
    }
}

/// A snapshot of [`Stats`], as the admin API shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsView {
    /// Requests that arrived (finished or not).
    pub requests: u64,
    /// Requests being served now.
    pub in_flight: u64,
    /// Requests per second, averaged over the last [`RATE_WINDOW_SECS`].
    pub rate: f64,
    /// Finished requests by the status their visitor got.
    pub status: StatusCounts,
    /// Request body bytes from visitors.
    pub bytes_in: u64,
    /// Response body bytes to visitors.
    pub bytes_out: u64,
}

/// Finished requests by status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounts {
    /// No answer: the visitor left first.
    pub none: u64,
    /// 1xx (a `101` protocol switch).
    #[serde(rename = "1xx")]
    pub informational: u64,
    /// 2xx.
    #[serde(rename = "2xx")]
    pub success: u64,
    /// 3xx.
    #[serde(rename = "3xx")]
    pub redirect: u64,
    /// 4xx, whether from the app or from the server's own checks.
    #[serde(rename = "4xx")]
    pub client_error: u64,
    /// 5xx, including the two below.
    #[serde(rename = "5xx")]
    pub server_error: u64,
    /// 502: the client or its local service failed.
    #[serde(rename = "502")]
    pub bad_gateway: u64,
    /// 504: no answer in time.
    #[serde(rename = "504")]
    pub gateway_timeout: u64,
}

impl StatsView {
    /// Adds `other`'s counts to these (another node's, in a cluster).
    pub fn add(&mut self, other: &StatsView) {
        self.requests += other.requests;
        self.in_flight += other.in_flight;
        self.rate += other.rate;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        let (a, b) = (&mut self.status, &other.status);
        a.none += b.none;
        a.informational += b.informational;
        a.success += b.success;
        a.redirect += b.redirect;
        a.client_error += b.client_error;
        a.server_error += b.server_error;
        a.bad_gateway += b.bad_gateway;
        a.gateway_timeout += b.gateway_timeout;
    }
}

/// Events per second for the last `BUCKETS` seconds. Each bucket packs
/// the second it counts (high 32 bits) with its count (low 32 bits) in one
/// atomic, so moving a bucket on to a new second and counting in it cannot
/// race: a stale bucket is ignored when read and restarted when written.
#[derive(Debug, Default)]
pub struct RateRing {
    buckets: [AtomicU64; BUCKETS],
}

impl RateRing {
    /// Counts one event in second `second`.
    pub fn record(&self, second: u64) {
        // Seconds are counted from the ring's owner's start; 2^32 of them
        // is 136 years.
        let stamp = second & u64::from(u32::MAX);
        let bucket = &self.buckets[(second % BUCKETS as u64) as usize];
        let _ = bucket.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
            Some(if packed >> 32 == stamp {
                // Saturates rather than spill into the stamp.
                packed + u64::from(packed & u64::from(u32::MAX) < u64::from(u32::MAX))
            } else {
                (stamp << 32) | 1
            })
        });
    }

    /// Events per second over the [`RATE_WINDOW_SECS`] seconds ending with
    /// `now` (the current, partial second included).
    pub fn per_second(&self, now: u64) -> f64 {
        let oldest = now.saturating_sub(RATE_WINDOW_SECS - 1);
        let total: u64 = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .filter(|packed| (oldest..=now).contains(&(packed >> 32)))
            .map(|packed| packed & u64::from(u32::MAX))
            .sum();
        total as f64 / RATE_WINDOW_SECS as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn requests_are_counted_by_outcome() {
        let t0 = Instant::now();
        let stats = Stats::new(t0);
        for status in [200, 204, 301, 404, 429, 502, 504, 500, 0, 101] {
            stats.begin(t0);
            stats.end(status);
        }
        stats.begin(t0);
        stats.add_in(10);
        stats.add_out(32);
        let view = stats.view(t0);
        assert_eq!(view.requests, 11);
        assert_eq!(view.in_flight, 1);
        let s = &view.status;
        assert_eq!(
            (s.none, s.informational, s.success, s.redirect),
            (1, 1, 2, 1)
        );
        assert_eq!((s.client_error, s.server_error), (2, 3));
        assert_eq!((s.bad_gateway, s.gateway_timeout), (1, 1));
        assert_eq!((view.bytes_in, view.bytes_out), (10, 32));
        // An unmatched end leaves the gauge at zero, not at u64::MAX.
        stats.end(200);
        stats.end(200);
        assert_eq!(stats.view(t0).in_flight, 0);
    }

    #[test]
    fn the_rate_covers_the_window_and_forgets_what_is_older() {
        let ring = RateRing::default();
        for _ in 0..20 {
            ring.record(100);
        }
        for _ in 0..10 {
            ring.record(105);
        }
        assert_eq!(ring.per_second(105), 3.0);
        assert_eq!(ring.per_second(109), 3.0);
        assert_eq!(ring.per_second(110), 1.0, "second 100 left the window");
        assert_eq!(ring.per_second(115), 0.0);
        // Second 116 reuses second 100's bucket: it starts again from one.
        ring.record(116);
        assert_eq!(ring.per_second(116), 0.1);
        assert_eq!(RateRing::default().per_second(0), 0.0);
    }

    #[test]
    fn the_rate_follows_the_clock() {
        let t0 = Instant::now();
        let stats = Stats::new(t0);
        for _ in 0..5 {
            stats.begin(t0 + Duration::from_millis(1500));
        }
        assert_eq!(stats.view(t0 + Duration::from_secs(2)).rate, 0.5);
        assert_eq!(stats.view(t0 + Duration::from_secs(11)).rate, 0.0);
    }
}
