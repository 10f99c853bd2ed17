//! The request inspector, like ngrok's on `127.0.0.1:4040`: a web page and a
//! JSON API showing the session's recent exchanges live, each with its
//! request and response heads and the start of both bodies, with replay to
//! the local service and export as HAR.
//!
//! One inspector serves every tunnel of a session (`cryptun start` opens
//! several over one connection): each exchange records the tunnel that
//! served it and that tunnel's local service, and a replay goes there.
//!
//! Capture never holds up a stream: bodies are teed as their chunks pass
//! (`capture`, the inspector's side of the client's `observe` traits),
//! keeping at most [`InspectorLimits::max_body`] bytes of each, and only the last [`InspectorLimits::capacity`] exchanges are kept.
//! The worst case is therefore `capacity × 2 × max_body` bytes (25 MiB with
//! the defaults), whatever the traffic.
//!
//! # Layout
//!
//! - this file: [`Inspector`], the ring buffer of exchanges and the change
//!   feed the page follows.
//! - `capture`: the inspector as the forwarding core's observer: an
//!   exchange's entry filled in as it goes, and the first bytes of bodies.
//! - `view`: exchanges as JSON, bodies as text or hex dump.
//! - `har`: the list as an HTTP Archive 1.2.
//! - `replay`: sending a captured request to the local service again.
//! - `http`: the page (`page.html`) and the API, served with hyper.
//! - `feed`: the Server-Sent Events that keep the page live.

mod capture;
mod feed;
mod har;
mod http;
mod replay;
mod view;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Semaphore, broadcast};

use crate::Target;

pub(crate) use crate::observe::TunnelInfo;
pub use http::{BIND_ATTEMPTS, InspectorError, bind, serve};

/// How much the inspector keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InspectorLimits {
    /// Exchanges kept; the oldest is dropped when a new one arrives.
    pub capacity: usize,
    /// Bytes kept of each body; the rest passes uncaptured, and the view
    /// says the body was truncated.
    pub max_body: usize,
}

impl Default for InspectorLimits {
    /// The last 200 exchanges and 64 KiB of each body: enough to debug a
    /// webhook or an API call, small enough (25 MiB at worst) to leave on.
    fn default() -> Self {
        InspectorLimits {
            capacity: 200,
            max_body: 64 << 10,
        }
    }
}

/// Updates the page follows. A lagging subscriber loses some and resyncs
/// from the list, so the channel only needs room for a burst.
const CHANGE_QUEUE: usize = 256;

/// Replays running at once; more are refused with 429 until one ends.
const MAX_REPLAYS: usize = 16;

/// The inspector's store: recent exchanges and a feed of their changes.
/// Cheap to clone; every clone is the same store.
#[derive(Clone)]
pub struct Inspector {
    inner: Arc<Inner>,
}

struct Inner {
    limits: InspectorLimits,
    next_id: AtomicU64,
    ring: Mutex<VecDeque<Arc<Entry>>>,
    changes: broadcast::Sender<Change>,
    tunnels: Mutex<Vec<TunnelInfo>>,
    replays: Arc<Semaphore>,
    /// Connections to the local services for replays (made at the first).
    replay_pool: std::sync::OnceLock<crate::local::LocalPool>,
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

/// A change to the list, for the live page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// An exchange was added or moved on.
    Updated(u64),
    /// An exchange left the ring buffer.
    Evicted(u64),
    /// The list was cleared.
    Cleared,
    /// The session's tunnels changed (a new connection).
    Tunnels,
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
    /// The record, even if a panicking holder poisoned the lock (it holds
    /// plain data, valid at every step).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for Inspector {
    fn default() -> Self {
        Inspector::new(InspectorLimits::default())
    }
}

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspector")
            .field("limits", &self.inner.limits)
            .field("exchanges", &self.len())
            .finish()
    }
}

impl Inspector {
    /// An empty store keeping what `limits` allows (a capacity of at least 1).
    pub fn new(limits: InspectorLimits) -> Self {
        let limits = InspectorLimits {
            capacity: limits.capacity.max(1),
            ..limits
        };
        Inspector {
            inner: Arc::new(Inner {
                limits,
                next_id: AtomicU64::new(1),
                ring: Mutex::new(VecDeque::with_capacity(limits.capacity)),
                changes: broadcast::channel(CHANGE_QUEUE).0,
                tunnels: Mutex::new(Vec::new()),
                replays: Arc::new(Semaphore::new(MAX_REPLAYS)),
                replay_pool: std::sync::OnceLock::new(),
            }),
        }
    }

    /// What this store keeps.
    pub fn limits(&self) -> InspectorLimits {
        self.inner.limits
    }

    /// Exchanges held now.
    pub fn len(&self) -> usize {
        self.ring().len()
    }

    /// Whether no exchange is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every exchange (those in flight go on, unlisted).
    pub fn clear(&self) {
        self.ring().clear();
        self.notify(Change::Cleared);
    }

    /// Records the session's tunnels, first one first, as a connection
    /// (or reconnection) made them: the page shows their public URLs.
    pub(crate) fn set_tunnels(&self, tunnels: Vec<TunnelInfo>) {
        *self.tunnels() = tunnels;
        self.notify(Change::Tunnels);
    }

    /// The session's tunnels, first one first.
    pub(crate) fn tunnel_infos(&self) -> Vec<TunnelInfo> {
        self.tunnels().clone()
    }

    /// Adds an exchange that has just arrived, evicting the oldest if full.
    pub(crate) fn record(
        &self,
        via: Via,
        method: String,
        path: String,
        request_headers: Vec<(String, String)>,
        replay_of: Option<u64>,
    ) -> Arc<Entry> {
        let entry = Arc::new(Entry {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            replay_of,
            via,
            started: SystemTime::now(),
            started_at: Instant::now(),
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
        });
        let evicted = {
            let mut ring = self.ring();
            let evicted = if ring.len() >= self.inner.limits.capacity {
                ring.pop_front().map(|old| old.id)
            } else {
                None
            };
            ring.push_back(Arc::clone(&entry));
            evicted
        };
        if let Some(old) = evicted {
            self.notify(Change::Evicted(old));
        }
        self.notify(Change::Updated(entry.id));
        entry
    }

    /// The exchange `id`, if still held.
    pub(crate) fn get(&self, id: u64) -> Option<Arc<Entry>> {
        let ring = self.ring();
        // Ids only grow, so the ring is sorted by id.
        let at = ring.binary_search_by_key(&id, |e| e.id).ok()?;
        ring.get(at).cloned()
    }

    /// Every exchange held, oldest first.
    pub(crate) fn entries(&self) -> Vec<Arc<Entry>> {
        self.ring().iter().cloned().collect()
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    pub(crate) fn notify(&self, change: Change) {
        // No subscriber is fine: nobody has the page open.
        let _ = self.inner.changes.send(change);
    }

    pub(crate) fn replay_permits(&self) -> &Arc<Semaphore> {
        &self.inner.replays
    }

    /// The pool replays send through, shared by them all, apart from the
    /// tunnels' own (call from within the runtime: the first call starts its
    /// sweeper).
    pub(crate) fn replay_pool(
        &self,
        connect_timeout: std::time::Duration,
    ) -> crate::local::LocalPool {
        self.inner
            .replay_pool
            .get_or_init(|| crate::local::LocalPool::new(connect_timeout))
            .clone()
    }

    fn ring(&self) -> MutexGuard<'_, VecDeque<Arc<Entry>>> {
        self.inner.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tunnels(&self) -> MutexGuard<'_, Vec<TunnelInfo>> {
        self.inner.tunnels.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(inspector: &Inspector, path: &str) -> u64 {
        let via = Via {
            tunnel: "web".into(),
            target: Target::parse("3000").expect("a target"),
        };
        inspector
            .record(via, "GET".into(), path.into(), Vec::new(), None)
            .id
    }

    #[test]
    fn the_ring_keeps_the_newest_and_reports_evictions() {
        let inspector = Inspector::new(InspectorLimits {
            capacity: 3,
            max_body: 16,
        });
        let mut changes = inspector.subscribe();
        let ids: Vec<u64> = (0..5).map(|i| add(&inspector, &format!("/{i}"))).collect();
        assert_eq!(inspector.len(), 3);
        let kept: Vec<u64> = inspector.entries().iter().map(|e| e.id).collect();
        assert_eq!(kept, ids[2..]);
        assert!(inspector.get(ids[1]).is_none());
        assert_eq!(inspector.get(ids[3]).map(|e| e.id), Some(ids[3]));
        let mut seen = Vec::new();
        while let Ok(change) = changes.try_recv() {
            seen.push(change);
        }
        assert!(seen.contains(&Change::Evicted(ids[0])));
        assert!(seen.contains(&Change::Evicted(ids[1])));
        assert_eq!(seen.last(), Some(&Change::Updated(ids[4])));
        inspector.clear();
        assert!(inspector.is_empty());
        assert_eq!(changes.try_recv(), Ok(Change::Cleared));
    }
}
