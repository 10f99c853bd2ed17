//! What the chaos runs share (the opt-in suites in `tests/e2e/chaos` and
//! the `cryptun` binary's `tests/cli/chaos.rs`; docs/SECURITY.md, "Chaos
//! runs"): a small seeded generator, tagged requests whose answer must be
//! their own token, and figures (outcome tables, percentiles, resident
//! memory).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};

use crate::Visitor;

/// Past a deadline under test, what a slow, shared loopback may add.
pub const MARGIN: Duration = Duration::from_secs(3);

/// xorshift64*: enough randomness for chaos, reproducible from its seed.
pub struct Rng(u64);

impl Rng {
    /// From `seed` (made odd: xorshift from 0 stays 0 for ever, which is
    /// what `CHAOS_SEED=0` gave).
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    /// Seeded from `CHAOS_SEED` if set, else from the clock; prints the
    /// seed, so that a run can be replayed.
    pub fn seeded(test: &str) -> Self {
        let seed = std::env::var("CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                now.map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("{test}: CHAOS_SEED={seed}");
        Rng::new(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high.saturating_sub(low) + 1)
    }

    /// A duration in `low..=high`, to the millisecond.
    pub fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(self.between(low, high))
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    /// Up to `max` random bytes.
    pub fn some_bytes(&mut self, max: u64) -> Vec<u8> {
        let len = self.below(max) as usize;
        self.bytes(len)
    }

    /// Up to `max` random bytes, read as text (invalid sequences replaced).
    pub fn text(&mut self, max: u64) -> String {
        String::from_utf8_lossy(&self.some_bytes(max)).into_owned()
    }
}

/// What became of one tagged request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Status(u16),
    /// A 200 whose body is not the request's own token.
    Misrouted,
    /// No answer within the request timeout and its margin.
    Hung,
    /// The connection could not be opened (nothing listening).
    Refused,
    /// The visitor's connection failed before a whole response.
    Broken,
}

/// `GET /token?t=TOKEN` for `host` by `visitor` (a pooling client, as a
/// browser keeps connections), within `limit`.
pub async fn tagged(visitor: &Visitor, host: &str, token: &str, limit: Duration) -> Outcome {
    let req = visitor
        .builder("GET", host, &format!("/token?t={token}"))
        .body(Full::default())
        .unwrap();
    let exchange = async {
        let resp = match visitor.try_send(req).await {
            Ok(resp) => resp,
            Err(err) if err.is_connect() => return Err(Outcome::Refused),
            Err(_) => return Err(Outcome::Broken),
        };
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await;
        let body = body.map_err(|_| Outcome::Broken)?.to_bytes();
        Ok((status, body))
    };
    match tokio::time::timeout(limit, exchange).await {
        Err(_) => Outcome::Hung,
        Ok(Err(outcome)) => outcome,
        Ok(Ok((200, body))) if body != token.as_bytes() => Outcome::Misrouted,
        Ok(Ok((status, _))) => Outcome::Status(status),
    }
}

/// Adds `more` to `counts`.
pub fn merge<K: Ord>(counts: &mut BTreeMap<K, usize>, more: BTreeMap<K, usize>) {
    for (k, n) in more {
        *counts.entry(k).or_insert(0) += n;
    }
}

pub fn print_table<K: std::fmt::Debug>(test: &str, counts: &BTreeMap<K, usize>) {
    eprintln!("{test}: outcome | count");
    for (outcome, n) in counts {
        eprintln!("{test}: {outcome:?} | {n}");
    }
}

/// The `q`-quantile (0.5, 0.99) of `sorted`, zero when empty.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let at = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    sorted[at]
}

/// The resident set of process `pid` (`None`: this one), in KiB; 0 if it
/// cannot be read.
pub fn rss_kib(pid: Option<u32>) -> u64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `visitors` visitors each sending `GET /token?t=<unique>` for `host` to
/// `server` in a loop until `until`, each request bounded by `limit`; how
/// their requests ended. Tokens are `{run:x}-{visitor}-{n}`.
pub async fn tagged_load(
    visitors: usize,
    server: SocketAddr,
    host: &str,
    run: u64,
    until: tokio::time::Instant,
    limit: Duration,
) -> BTreeMap<Outcome, usize> {
    let tasks: Vec<_> = (0..visitors)
        .map(|v| {
            let host = host.to_owned();
            tokio::spawn(async move {
                let http = Visitor::new(server);
                let mut counts = BTreeMap::new();
                let mut n = 0u64;
                while tokio::time::Instant::now() < until {
                    let token = format!("{run:x}-{v}-{n}");
                    n += 1;
                    let outcome = tagged(&http, &host, &token, limit).await;
                    *counts.entry(outcome).or_insert(0usize) += 1;
                    // A refusal is instant: pace it, so that a server that
                    // is down costs a few hundred tries, not a million.
                    if outcome == Outcome::Refused {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                counts
            })
        })
        .collect();
    let mut counts = BTreeMap::new();
    for task in tasks {
        merge(&mut counts, task.await.expect("a visitor task"));
    }
    counts
}
