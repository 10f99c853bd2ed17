//! Request rates: per visitor address across the whole server, and per
//! tunnel. Over the limit a visitor gets 429 with `Retry-After`.
//!
//! Both use GCRA, the generic cell rate algorithm (as the `governor` crate
//! does): each key keeps one number, the theoretical arrival time (TAT) of
//! its next request. A request at `now` is allowed when `TAT - now` is at
//! most the burst tolerance, and then moves TAT one interval on. A key whose
//! TAT has passed is indistinguishable from a new one, so it can be
//! forgotten: that is what the sweep does.
//!
//! It is written here rather than taken from `governor` for the per-address
//! table's hard cap, which governor's keyed limiter lacks: the table holds
//! at most `max_tracked_ips` addresses, swept of expired ones every
//! `sweep_interval` and, when full, at most once a second. Addresses that
//! find it full are counted by their network instead (IPv4 /24, IPv6 /48),
//! in a second table a sixteenth the size, so a flood from more addresses
//! than the cap throttles its own networks, not every newcomer: one bucket
//! shared by all of them would have let the flood lock everyone else out.
//! Only with that table full too do the rest share one last bucket. IPv6
//! addresses are counted by /64, the block one subscriber usually holds.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cryptun_proto::net::{canonical, group, masked};

/// How often a full table may be swept to make room: bounds the work a
/// flood of new addresses can cause to one linear pass a second.
const FULL_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A request rate with a burst: `count` requests per `per`, of which
/// `burst` may come at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    count: u32,
    per: Duration,
    burst: u32,
}

/// A rate that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a rate: write N/s, N/m or N/h, optionally :BURST (e.g. 20/s or 600/m:100)")]
pub struct RateError(String);

impl Rate {
    /// `count` requests per `per`, `burst` at once (both at least 1).
    pub fn new(count: u32, per: Duration, burst: u32) -> Option<Rate> {
        (count > 0 && burst > 0 && !per.is_zero()).then_some(Rate { count, per, burst })
    }

    /// The time one request uses up, in nanoseconds.
    fn interval(&self) -> u64 {
        (self.per.as_nanos() / u128::from(self.count)).max(1) as u64
    }

    /// How far ahead of now a key's TAT may run and still be allowed.
    fn tolerance(&self) -> u64 {
        self.interval().saturating_mul(u64::from(self.burst - 1))
    }
}

impl FromStr for Rate {
    type Err = RateError;

    /// `N/s`, `N/m` or `N/h`, then optionally `:BURST`; the burst defaults
    /// to `N`.
    fn from_str(s: &str) -> Result<Rate, RateError> {
        let err = || RateError(s.to_owned());
        let (rate, burst) = match s.split_once(':') {
            Some((rate, burst)) => (rate, Some(burst)),
            None => (s, None),
        };
        let (count, unit) = rate.split_once('/').ok_or_else(err)?;
        let number = |n: &str| -> Result<u32, RateError> {
            let ok = !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
            let n = if ok { n.parse::<u32>().ok() } else { None };
            n.filter(|n| (1..=1_000_000).contains(n)).ok_or_else(err)
        };
        let count = number(count)?;
        let per = match unit {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(err()),
        };
        let burst = burst.map_or(Ok(count), number)?;
        Rate::new(count, per, burst).ok_or_else(err)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per.as_secs() {
            60 => "m",
            3600 => "h",
            _ => "s",
        };
        write!(f, "{}/{unit}:{}", self.count, self.burst)
    }
}

/// One GCRA step for a key whose TAT is `tat`, at `now` (nanoseconds on
/// the limiter's clock): moves `tat` on and allows, or returns how long to
/// wait.
fn gcra(rate: &Rate, tat: &mut u64, now: u64) -> Result<(), Duration> {
    let start = (*tat).max(now);
    let ahead = start - now;
    if ahead > rate.tolerance() {
        return Err(Duration::from_nanos(ahead - rate.tolerance()));
    }
    *tat = start.saturating_add(rate.interval());
    Ok(())
}

/// Nanoseconds since `epoch`.
fn since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos().try_into().unwrap_or(u64::MAX)
}

/// One rate shared by every visitor of a tunnel.
#[derive(Debug)]
pub struct TunnelLimiter {
    rate: Rate,
    epoch: Instant,
    tat: Mutex<u64>,
}

impl TunnelLimiter {
    /// A limiter allowing `rate`.
    pub fn new(rate: Rate) -> Self {
        TunnelLimiter {
            rate,
            epoch: Instant::now(),
            tat: Mutex::new(0),
        }
    }

    /// Allows one request, or says how long until the next would be.
    pub fn check(&self) -> Result<(), Duration> {
        let now = since(self.epoch);
        let mut tat = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        gcra(&self.rate, &mut tat, now)
    }
}

/// A rate per visitor address, over a table of bounded size.
#[derive(Debug)]
pub struct IpLimiter {
    rate: Rate,
    epoch: Instant,
    max_keys: usize,
    sweep_every: u64,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    tats: HashMap<IpAddr, u64>,
    /// By network, for addresses that found `tats` full.
    networks: HashMap<IpAddr, u64>,
    /// The bucket shared by addresses that found both full.
    last: u64,
    last_sweep: u64,
}

impl Table {
    /// Forgets every key whose TAT has passed, and gives memory back after
    /// a flood.
    fn sweep(&mut self, now: u64) {
        for map in [&mut self.tats, &mut self.networks] {
            map.retain(|_, tat| *tat > now);
            if map.capacity() > 4 * map.len().max(256) {
                map.shrink_to_fit();
            }
        }
        self.last_sweep = now;
    }
}

/// The network an address is counted by once the address table is full:
/// its /24 (IPv4) or /48 (IPv6, a site's usual allocation).
fn network(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        v4 @ IpAddr::V4(_) => masked(v4, 24),
        v6 => masked(v6, 48),
    }
}

impl IpLimiter {
    /// A limiter allowing `rate` per address, tracking at most `max_keys`
    /// addresses and sweeping expired ones every `sweep_every`.
    pub fn new(rate: Rate, max_keys: usize, sweep_every: Duration) -> Self {
        IpLimiter {
            rate,
            epoch: Instant::now(),
            max_keys: max_keys.max(1),
            sweep_every: sweep_every.as_nanos().try_into().unwrap_or(u64::MAX),
            table: Mutex::new(Table::default()),
        }
    }

    /// Allows one request from `ip`, or says how long until the next would be.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check_at(ip, since(self.epoch))
    }

    /// [`check`](Self::check) at `now` nanoseconds on the limiter's clock.
    fn check_at(&self, ip: IpAddr, now: u64) -> Result<(), Duration> {
        let key = group(ip);
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_sub(table.last_sweep) >= self.sweep_every {
            table.sweep(now);
        }
        if let Some(tat) = table.tats.get_mut(&key) {
            return gcra(&self.rate, tat, now);
        }
        let full_sweep = FULL_SWEEP_EVERY.as_nanos() as u64;
        if table.tats.len() >= self.max_keys && now.saturating_sub(table.last_sweep) >= full_sweep {
            table.sweep(now);
        }
        if table.tats.len() < self.max_keys {
            let mut tat = 0;
            let verdict = gcra(&self.rate, &mut tat, now);
            table.tats.insert(key, tat);
            return verdict;
        }
        let net = network(ip);
        if let Some(tat) = table.networks.get_mut(&net) {
            return gcra(&self.rate, tat, now);
        }
        if table.networks.len() < (self.max_keys / 16).max(1) {
            let mut tat = 0;
            let verdict = gcra(&self.rate, &mut tat, now);
            table.networks.insert(net, tat);
            return verdict;
        }
        gcra(&self.rate, &mut table.last, now)
    }

    /// Addresses currently tracked.
    pub fn tracked(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tats
            .len()
    }

    /// The most addresses tracked at once.
    pub fn max_tracked(&self) -> usize {
        self.max_keys
    }

    /// The rate each address gets.
    pub fn rate(&self) -> Rate {
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        let r: Rate = "20/s".parse().unwrap();
        assert_eq!((r.count, r.per, r.burst), (20, Duration::from_secs(1), 20));
        assert_eq!(r.to_string(), "20/s:20");
        let r: Rate = "600/m:100".parse().unwrap();
        assert_eq!(r.interval(), 100_000_000);
        assert_eq!(r.to_string(), "600/m:100");
        for bad in [
            "",
            "20",
            "20/",
            "/s",
            "0/s",
            "20/d",
            "20/s:0",
            "-1/s",
            "1.5/s",
            "20/s:",
            " 2/s",
            "2000000/s",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn gcra_allows_the_burst_then_one_per_interval() {
        let rate = Rate::new(10, Duration::from_secs(1), 3).unwrap();
        let ms = 1_000_000;
        let mut tat = 0;
        for _ in 0..3 {
            assert!(gcra(&rate, &mut tat, 1000 * ms).is_ok());
        }
        let wait = gcra(&rate, &mut tat, 1000 * ms).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // One interval later exactly one more fits.
        assert!(gcra(&rate, &mut tat, 1100 * ms).is_ok());
        assert!(gcra(&rate, &mut tat, 1100 * ms).is_err());
        // After a long pause the whole burst is back, not more.
        let later = 5000 * ms;
        for _ in 0..3 {
            assert!(gcra(&rate, &mut tat, later).is_ok());
        }
        assert!(gcra(&rate, &mut tat, later).is_err());
    }

    #[test]
    fn the_address_table_is_capped_and_swept() {
        let rate = Rate::new(1, Duration::from_secs(3600), 1).unwrap();
        let limiter = IpLimiter::new(rate, 32, Duration::from_secs(3600));
        for i in 0..32u8 {
            assert!(limiter.check(IpAddr::from([10, 0, 0, i])).is_ok());
        }
        assert!(
            limiter.check(IpAddr::from([10, 0, 0, 1])).is_err(),
            "own bucket"
        );
        // The table is full: newcomers are counted by network, so the
        // flood's own /24 is throttled and nobody else.
        assert!(limiter.check(IpAddr::from([10, 0, 0, 200])).is_ok());
        assert!(limiter.check(IpAddr::from([10, 0, 0, 201])).is_err());
        assert!(limiter.check(IpAddr::from([192, 0, 2, 1])).is_ok());
        assert!(limiter.check(IpAddr::from([192, 0, 2, 2])).is_err());
        assert_eq!(limiter.tracked(), 32);
        // With the network table full too (a sixteenth: two here), the
        // rest share the last bucket.
        assert!(limiter.check(IpAddr::from([198, 51, 100, 1])).is_ok());
        assert!(limiter.check(IpAddr::from([203, 0, 113, 1])).is_err());
        // IPv6 addresses in one /64 are one key.
        let fresh = IpLimiter::new(rate, 10, Duration::from_secs(3600));
        assert!(fresh.check("2001:db8::1".parse().unwrap()).is_ok());
        assert!(fresh.check("2001:db8::ffff:2".parse().unwrap()).is_err());
        assert!(fresh.check("2001:db8:0:1::1".parse().unwrap()).is_ok());
        assert!(fresh.check("::ffff:10.0.0.1".parse().unwrap()).is_ok());
        assert!(
            fresh.check("10.0.0.1".parse().unwrap()).is_err(),
            "mapped is v4"
        );

        // Expired keys are forgotten at the next periodic sweep...
        let second = 1_000_000_000;
        let rate = Rate::new(1, Duration::from_secs(1), 1).unwrap();
        let limiter = IpLimiter::new(rate, 100, Duration::from_secs(10));
        for i in 0..50u8 {
            assert!(limiter.check_at(IpAddr::from([10, 0, 0, i]), 0).is_ok());
        }
        assert!(
            limiter
                .check_at(IpAddr::from([10, 9, 9, 9]), 9 * second)
                .is_ok()
        );
        assert_eq!(limiter.tracked(), 51, "no sweep before the interval");
        assert!(
            limiter
                .check_at(IpAddr::from([10, 9, 9, 8]), 11 * second)
                .is_ok()
        );
        assert_eq!(limiter.tracked(), 1);
        // ...and, when the table is full, to make room (once a second).
        let limiter = IpLimiter::new(rate, 5, Duration::from_secs(3600));
        for i in 0..5u8 {
            assert!(limiter.check_at(IpAddr::from([10, 0, 0, i]), 0).is_ok());
        }
        assert!(
            limiter
                .check_at(IpAddr::from([10, 0, 1, 0]), 2 * second)
                .is_ok()
        );
        assert_eq!(limiter.tracked(), 1, "expired keys made room");
    }
}
