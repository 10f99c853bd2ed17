//! What the live status view shows, as plain data: the session's state, the
//! tunnels, the connection statistics and the last requests. Events from
//! the client update it; it does no I/O and reads no clock (callers pass
//! `now`), so every number it gives can be tested exactly.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use cryptun_client::{Event, RequestDone, TunnelCreated};

/// Requests kept for the list at the bottom of the view; more than any
/// terminal is tall.
pub const RECENT: usize = 100;

/// Durations kept for the percentiles: the last this many requests. A
/// thousand is enough for a stable p90 and sorts in microseconds.
pub const DURATION_WINDOW: usize = 1000;

/// The longest rate window (rt5): five minutes, one counter per second.
const RATE_SECONDS: usize = 300;

/// The facts at the top of the view, known when it starts (the server may
/// change on a reconnect).
#[derive(Debug, Clone)]
pub struct Header {
    /// The client's version.
    pub version: String,
    /// The server connected to, as the user named it (and the address
    /// dialled, for a name); a reconnect may change it.
    pub server: String,
    /// The request inspector's URL, when it is on.
    pub inspector: Option<String>,
    /// Extra labelled lines (the demo's "Try  curl ...").
    pub hints: Vec<(String, String)>,
}

impl Header {
    /// This client's version, `server`, and the inspector's URL if on.
    pub fn new(server: &str, inspector: Option<&str>) -> Self {
        Header {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            server: server.to_owned(),
            inspector: inspector.map(str::to_owned),
            hints: Vec::new(),
        }
    }
}

/// One tunnel's "Forwarding" line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    /// Its name in a config file, if it has one.
    pub name: Option<String>,
    /// The subdomain, to find it again after a reconnect.
    pub subdomain: String,
    /// Where visitors reach it.
    pub public_url: String,
    /// Where it forwards to, as shown.
    pub target: String,
}

impl Tunnel {
    /// The tunnel the server created, forwarding to `target`.
    pub fn new(name: Option<String>, created: &TunnelCreated, target: &str) -> Self {
        Tunnel {
            name,
            subdomain: created.subdomain.clone(),
            public_url: created.public_url.clone(),
            target: target.to_owned(),
        }
    }
}

/// The connection to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// Connected; tunnels are served.
    Online,
    /// Lost; the next attempt comes at `retry_at`.
    Reconnecting {
        /// 1 for the first attempt after a loss, then 2, 3, ...
        attempt: u32,
        /// When the next attempt starts.
        retry_at: Instant,
        /// Why the connection (or the last attempt) failed.
        error: String,
    },
    /// Not connected and not trying.
    Offline {
        /// Why.
        why: String,
    },
}

/// One finished request, for the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// When it ended (wall clock, for display).
    pub at: SystemTime,
    /// The request, as the client reported it.
    pub done: RequestDone,
}

/// Everything the view shows.
#[derive(Debug, Clone)]
pub struct State {
    /// The facts at the top.
    pub header: Header,
    /// One entry per tunnel, in the order given.
    pub tunnels: Vec<Tunnel>,
    /// The connection's state.
    pub connection: Connection,
    /// Counters, rates and percentiles.
    pub stats: Stats,
    /// The last [`RECENT`] requests, newest first.
    pub recent: VecDeque<Request>,
}

impl State {
    /// A session that has just connected, its clock starting at `now`.
    pub fn new(header: Header, tunnels: Vec<Tunnel>, now: Instant) -> Self {
        State {
            header,
            tunnels,
            connection: Connection::Online,
            stats: Stats::new(now),
            recent: VecDeque::with_capacity(RECENT),
        }
    }

    /// Lists `done`, ended at `wall`, first among the recent requests.
    fn remember(&mut self, wall: SystemTime, done: RequestDone) {
        if self.recent.len() == RECENT {
            self.recent.pop_back();
        }
        self.recent.push_front(Request { at: wall, done });
    }

    /// Takes in what the client reported, at `now` (`wall` on the clock).
    pub fn apply(&mut self, event: Event, now: Instant, wall: SystemTime) {
        match event {
            Event::RequestStarted => self.stats.started(),
            Event::Request(done) => {
                self.stats.ended(done.duration, now);
                self.remember(wall, done);
            }
            // A TCP tunnel's connection: listed as a request would be,
            // its visitor and bytes where a request has its path.
            Event::Connection(done) => {
                self.stats.ended(done.duration, now);
                let path = format!(
                    "{} in {} B out {} B",
                    done.remote_addr, done.bytes_in, done.bytes_out
                );
                let done = RequestDone {
                    tunnel: done.tunnel,
                    method: "TCP".into(),
                    path,
                    status: 0,
                    duration: done.duration,
                    error: done.error,
                };
                self.remember(wall, done);
            }
            // A replay went to the local service, not through the tunnel:
            // listed, marked, and not counted in the tunnel's stats.
            Event::Replayed { of, mut done } => {
                done.path = format!("{} (replay of #{of})", done.path);
                self.remember(wall, done);
            }
            Event::Disconnected {
                error,
                retry_in,
                attempt,
                ..
            } => {
                self.connection = Connection::Reconnecting {
                    attempt,
                    retry_at: now + retry_in,
                    error,
                };
            }
            Event::Connected { server } => self.header.server = server.to_string(),
            Event::Reconnected { tunnel, .. } => {
                self.connection = Connection::Online;
                self.reconnected(&tunnel);
            }
        }
    }

    /// The session has ended, for `why`.
    pub fn offline(&mut self, why: impl Into<String>) {
        self.connection = Connection::Offline { why: why.into() };
    }

    /// Updates the tunnel the server created again: the one with the same
    /// subdomain, or the only one.
    fn reconnected(&mut self, created: &TunnelCreated) {
        let same = |t: &Tunnel| t.subdomain == created.subdomain;
        let only = (self.tunnels.len() == 1).then_some(0);
        let found = self.tunnels.iter().position(same).or(only);
        if let Some(tunnel) = found.and_then(|i| self.tunnels.get_mut(i)) {
            tunnel.subdomain = created.subdomain.clone();
            tunnel.public_url = created.public_url.clone();
        }
    }
}

/// Connection statistics, as ngrok shows them: total, open, rates over one
/// and five minutes, and duration percentiles over the last requests.
#[derive(Debug, Clone)]
pub struct Stats {
    total: u64,
    open: u64,
    rates: Rates,
    durations: VecDeque<Duration>,
}

impl Stats {
    /// No requests yet; rates are counted from `now`.
    pub fn new(now: Instant) -> Self {
        Stats {
            total: 0,
            open: 0,
            rates: Rates::new(now),
            durations: VecDeque::with_capacity(DURATION_WINDOW),
        }
    }

    fn started(&mut self) {
        self.open += 1;
    }

    fn ended(&mut self, duration: Duration, now: Instant) {
        self.total += 1;
        // Saturating: a request that started before the view did ends
        // without having been counted open.
        self.open = self.open.saturating_sub(1);
        self.rates.add(now);
        if self.durations.len() == DURATION_WINDOW {
            self.durations.pop_front();
        }
        self.durations.push_back(duration);
    }

    /// Requests that have ended.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Requests in flight.
    pub fn open(&self) -> u64 {
        self.open
    }

    /// Requests per second over the last minute, at `now`.
    pub fn rate1(&self, now: Instant) -> f64 {
        self.rates.per_second(now, 60)
    }

    /// Requests per second over the last five minutes, at `now`.
    pub fn rate5(&self, now: Instant) -> f64 {
        self.rates.per_second(now, RATE_SECONDS)
    }

    /// The quantiles `qs` (0.5 for the median) of the last
    /// [`DURATION_WINDOW`] durations, by nearest rank, from one sort (the
    /// view's lock is held meanwhile); `None` before any.
    pub fn percentiles<const N: usize>(&self, qs: [f64; N]) -> [Option<Duration>; N] {
        let mut sorted: Vec<Duration> = self.durations.iter().copied().collect();
        sorted.sort_unstable();
        let n = sorted.len();
        qs.map(|q| {
            // Nearest rank: the smallest value with at least q of them at or below it.
            let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as usize).clamp(1, n.max(1));
            sorted.get(rank - 1).copied()
        })
    }
}

/// Requests per second over sliding windows: one counter per second for the
/// last five minutes, so memory is fixed whatever the traffic.
#[derive(Debug, Clone)]
struct Rates {
    origin: Instant,
    counts: [u32; RATE_SECONDS],
    /// The second (since `origin`) of the newest counter.
    newest: u64,
}

impl Rates {
    fn new(origin: Instant) -> Self {
        Rates {
            origin,
            counts: [0; RATE_SECONDS],
            newest: 0,
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    fn add(&mut self, now: Instant) {
        let second = self.second(now).max(self.newest);
        // Clear the counters of the seconds skipped since the newest one
        // (all of them after a quiet spell of five minutes or more).
        let skipped = (second - self.newest).min(RATE_SECONDS as u64);
        for s in (second + 1 - skipped)..=second {
            self.counts[slot(s)] = 0;
        }
        self.newest = second;
        self.counts[slot(second)] = self.counts[slot(second)].saturating_add(1);
    }

    /// Requests in the `window` seconds up to `now` (the current second
    /// included), divided by `window`.
    fn per_second(&self, now: Instant, window: usize) -> f64 {
        let window = window.clamp(1, RATE_SECONDS) as u64;
        let current = self.second(now).max(self.newest);
        let first = (current + 1).saturating_sub(window);
        // Counters older than five minutes before `newest` were reused.
        let oldest_kept = (self.newest + 1).saturating_sub(RATE_SECONDS as u64);
        let sum: u64 = (first.max(oldest_kept)..=self.newest.min(current))
            .map(|s| u64::from(self.counts[slot(s)]))
            .sum();
        sum as f64 / window as f64
    }
}

fn slot(second: u64) -> usize {
    (second % RATE_SECONDS as u64) as usize
}
