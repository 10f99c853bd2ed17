//! What the inspector holds of one exchange: the [`Entry`] in the list and
//! its [`Record`] (heads, the first bytes of both bodies, how it ended),
//! what an entry costs in memory, and the list ([`Ring`]) whose byte
//! budget counts it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::Target;

/// What an entry costs beyond its heads and body bytes: the entry, its
/// record, the `Arc`s and the strings' own headers, rounded up. Counting it
/// keeps a flood of empty requests within the budget too.
pub(crate) const ENTRY_OVERHEAD: usize = 512;

/// What one header costs beyond its name and value (two `String`s).
const HEADER_OVERHEAD: usize = 48;

/// The bytes a list of headers holds.
pub(crate) fn headers_cost(headers: &[(String, String)]) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.len() + v.len() + HEADER_OVERHEAD)
        .sum()
}

/// The tunnel an exchange came through and where it went; a replay goes
/// to the same place.
#[derive(Debug, Clone)]
pub(crate) struct Via {
    /// The tunnel's name (see [`TunnelInfo::name`]).
    pub(crate) tunnel: Arc<str>,
    /// The local service that served it.
    pub(crate) target: Target,
}

/// One exchange: a request and its response, as far as they have got.
pub(crate) struct Entry {
    pub(crate) id: u64,
    /// The exchange this one replays, if it is a replay.
    pub(crate) replay_of: Option<u64>,
    /// The tunnel that served it (a replay: the original's).
    pub(crate) via: Via,
    pub(crate) started: SystemTime,
    pub(crate) started_at: Instant,
    /// Bytes held for it, as [`Entry::cost`] says.
    cost: AtomicUsize,
    record: Mutex<Record>,
}

/// What is known of an exchange so far.
#[derive(Debug)]
pub(crate) struct Record {
    pub(crate) method: String,
    /// Path and query, as the visitor sent them.
    pub(crate) path: String,
    /// Request headers as they travel on the wire (Latin-1 as text).
    pub(crate) request_headers: Vec<(String, String)>,
    pub(crate) request_body: Captured,
    pub(crate) response: Option<ResponseHead>,
    pub(crate) response_body: Captured,
    /// The exchange switched protocols (WebSocket): no bodies to show.
    pub(crate) upgraded: bool,
    pub(crate) finished: Option<Finished>,
}

/// A response head and when it came.
#[derive(Debug, Clone)]
pub(crate) struct ResponseHead {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    /// From the request's arrival.
    pub(crate) after: Duration,
}

/// How an exchange ended.
#[derive(Debug, Clone)]
pub(crate) struct Finished {
    /// The status the visitor got (0 if they went away first).
    pub(crate) status: u16,
    /// From the request's arrival to the end of the response body.
    pub(crate) total: Duration,
    pub(crate) error: Option<String>,
}

/// The start of a body, and how much of it passed.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    /// The first bytes, at most `max_body` of them.
    pub(crate) bytes: Vec<u8>,
    /// Every byte that passed, kept or not.
    pub(crate) size: u64,
    pub(crate) state: BodyState,
    /// The reader (the local service) stopped before the end, and the
    /// inspector read on from the visitor to capture the rest: what it
    /// shows was sent, not all of it was read.
    pub(crate) drained: bool,
}

impl Captured {
    /// Bytes passed that were not kept.
    pub(crate) fn truncated(&self) -> bool {
        self.size > self.bytes.len() as u64
    }
}

/// Where a body is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum BodyState {
    /// Still passing (or not started).
    #[default]
    Streaming,
    /// Ended normally.
    Complete,
    /// Its source failed.
    Failed(String),
    /// Dropped before its end: the reader stopped reading.
    Abandoned,
}

impl Entry {
    /// A request that has just arrived, as exchange `id`.
    pub(crate) fn new(
        id: u64,
        via: Via,
        method: String,
        path: String,
        request_headers: Vec<(String, String)>,
        replay_of: Option<u64>,
    ) -> Arc<Entry> {
        let cost = ENTRY_OVERHEAD + method.len() + path.len() + headers_cost(&request_headers);
        Arc::new(Entry {
            id,
            replay_of,
            via,
            started: SystemTime::now(),
            started_at: Instant::now(),
            cost: AtomicUsize::new(cost),
            record: Mutex::new(Record {
                method,
                path,
                request_headers,
                request_body: Captured::default(),
                response: None,
                response_body: Captured::default(),
                upgraded: false,
                finished: None,
            }),
        })
    }

    /// The bytes held for this exchange: its heads, the bytes kept of its
    /// bodies and [`ENTRY_OVERHEAD`]. Only grows, while the exchange goes.
    pub(crate) fn cost(&self) -> usize {
        self.cost.load(Ordering::Relaxed)
    }

    /// Counts `bytes` more held (call only through
    /// [`Inspector::charge`](super::Inspector::charge), which keeps the
    /// list's total).
    pub(crate) fn add_cost(&self, bytes: usize) {
        self.cost.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The record, even if a panicking holder poisoned the lock (it holds
    /// plain data, valid at every step).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The exchanges listed, oldest first (ids only grow, so sorted by id),
/// and the bytes they hold.
#[derive(Default)]
pub(crate) struct Ring {
    pub(crate) entries: VecDeque<Arc<Entry>>,
    pub(crate) bytes: usize,
}

impl Ring {
    /// Drops the oldest until both bounds hold, keeping the newest;
    /// returns the ids dropped.
    pub(crate) fn trim(&mut self, limits: &super::InspectorLimits) -> Vec<u64> {
        let mut evicted = Vec::new();
        while self.entries.len() > 1
            && (self.entries.len() > limits.capacity || self.bytes > limits.max_bytes)
        {
            if let Some(old) = self.entries.pop_front() {
                self.bytes = self.bytes.saturating_sub(old.cost());
                evicted.push(old.id);
            }
        }
        evicted
    }

    pub(crate) fn position(&self, id: u64) -> Option<usize> {
        self.entries.binary_search_by_key(&id, |e| e.id).ok()
    }
}
