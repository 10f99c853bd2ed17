//! The request inspector, like ngrok's on `127.0.0.1:4040`: a web page and a
//! JSON API showing the session's recent exchanges live, each with its
//! request and response heads and the start of both bodies, with replay to
//! the local service (as captured, or edited) and export as HAR.
//!
//! One inspector serves every tunnel of a session (`cryptun start` opens
//! several over one connection): each exchange records the tunnel that
//! served it and that tunnel's local service, and a replay goes there.
//!
//! Capture never holds up a stream: bodies are teed as their chunks pass
//! (`capture`, the inspector's side of the client's `observe` traits),
//! keeping at most [`InspectorLimits::max_body`] bytes of each. A request
//! body the local service did not read to its end is read on from the
//! visitor, up to that allowance, so the inspector shows what was sent.
//!
//! The list is bounded twice: at most [`InspectorLimits::capacity`]
//! exchanges, and at most [`InspectorLimits::max_bytes`] bytes held for
//! them (heads, body bytes kept, and [`ENTRY_OVERHEAD`](record::ENTRY_OVERHEAD)
//! each); the oldest go first when either is crossed, the newest is always
//! kept. Exchanges still in flight after they left the list hold at most
//! their own heads and `2 × max_body`, until they end.
//!
//! # Layout
//!
//! - this file: [`Inspector`], the list of exchanges with its bounds, and
//!   the change feed the page follows.
//! - `record`: one exchange's entry and record, and what it costs.
//! - `capture`: the inspector as the forwarding core's observer: an
//!   exchange's entry filled in as it goes, and the first bytes of bodies.
//! - `view`: exchanges as JSON, bodies as text or hex dump.
//! - `har`: the list as an HTTP Archive 1.2.
//! - `replay`: sending a captured request, or an edited copy of it, to the
//!   local service again.
//! - `http`: the page (`page.html`, `page.css`, `page.js`, `tools.js`) and
//!   the API, served with hyper.
//! - `feed`: the Server-Sent Events that keep the page live.

mod capture;
mod feed;
mod har;
mod http;
mod record;
mod replay;
mod view;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Semaphore, broadcast};

use crate::Events;

pub(crate) use crate::observe::TunnelInfo;
pub use http::{BIND_ATTEMPTS, InspectorError, bind, serve};
use record::Ring;
pub(crate) use record::{BodyState, Captured, Entry, Finished, Record, ResponseHead, Via};

/// How much the inspector keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InspectorLimits {
    /// Exchanges kept; the oldest is dropped when a new one arrives.
    pub capacity: usize,
    /// Bytes kept of each body; the rest passes uncaptured, and the view
    /// says the body was truncated.
    pub max_body: usize,
    /// Bytes held for all the exchanges listed (heads, kept body bytes and
    /// a fixed overhead each); the oldest are dropped past it.
    pub max_bytes: usize,
}

impl Default for InspectorLimits {
    /// The last 1,000 exchanges within 32 MiB, and 64 KiB of each body:
    /// a dev server's page loads (tens of modules each) many times over,
    /// or a webhook's and an API's calls, small enough to leave on.
    fn default() -> Self {
        InspectorLimits {
            capacity: 1000,
            max_body: 64 << 10,
            max_bytes: 32 << 20,
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
    ring: Mutex<Ring>,
    changes: broadcast::Sender<Change>,
    tunnels: Mutex<Vec<TunnelInfo>>,
    /// Where the session reports what happens: replays are told there too,
    /// so the terminal shows them beside the tunnels' requests.
    events: Mutex<Events>,
    replays: Arc<Semaphore>,
    /// Connections to the local services for replays (made at the first).
    replay_pool: std::sync::OnceLock<crate::local::LocalPool>,
}

/// A change to the list, for the live page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// An exchange was added or moved on.
    Updated(u64),
    /// An exchange left the list.
    Evicted(u64),
    /// The list was cleared.
    Cleared,
    /// The session's tunnels changed (a new connection).
    Tunnels,
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
                ring: Mutex::new(Ring::default()),
                changes: broadcast::channel(CHANGE_QUEUE).0,
                tunnels: Mutex::new(Vec::new()),
                events: Mutex::new(Events::none()),
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
        self.ring().entries.len()
    }

    /// Whether no exchange is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held now for the exchanges listed (see
    /// [`InspectorLimits::max_bytes`]).
    pub fn bytes(&self) -> usize {
        self.ring().bytes
    }

    /// Forgets every exchange (those in flight go on, unlisted).
    pub fn clear(&self) {
        *self.ring() = Ring::default();
        self.notify(Change::Cleared);
    }

    /// Records the session's tunnels, first one first, as a connection
    /// (or reconnection) made them, and where it reports what happens: the
    /// page shows their public URLs, replays are reported there.
    pub(crate) fn set_tunnels(&self, tunnels: Vec<TunnelInfo>, events: Events) {
        *self.tunnels() = tunnels;
        *self.inner.events.lock().unwrap_or_else(|e| e.into_inner()) = events;
        self.notify(Change::Tunnels);
    }

    /// The session's tunnels, first one first.
    pub(crate) fn tunnel_infos(&self) -> Vec<TunnelInfo> {
        self.tunnels().clone()
    }

    /// Where the session reports what happens.
    pub(crate) fn events(&self) -> Events {
        self.inner
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Adds an exchange that has just arrived, evicting the oldest past
    /// either bound.
    pub(crate) fn record(
        &self,
        via: Via,
        method: String,
        path: String,
        request_headers: Vec<(String, String)>,
        replay_of: Option<u64>,
    ) -> Arc<Entry> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Entry::new(id, via, method, path, request_headers, replay_of);
        let evicted = {
            let mut ring = self.ring();
            ring.bytes += entry.cost();
            ring.entries.push_back(Arc::clone(&entry));
            ring.trim(&self.inner.limits)
        };
        for old in evicted {
            self.notify(Change::Evicted(old));
        }
        self.notify(Change::Updated(entry.id));
        entry
    }

    /// Counts `bytes` more held by `entry` (body bytes kept, a response
    /// head), in the list's total if it is still listed, and drops the
    /// oldest exchanges if that crossed the budget.
    pub(crate) fn charge(&self, entry: &Entry, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let evicted = {
            let mut ring = self.ring();
            entry.add_cost(bytes);
            if ring.position(entry.id).is_none() {
                return;
            }
            ring.bytes += bytes;
            ring.trim(&self.inner.limits)
        };
        for old in evicted {
            self.notify(Change::Evicted(old));
        }
    }

    /// The exchange `id`, if still held.
    pub(crate) fn get(&self, id: u64) -> Option<Arc<Entry>> {
        let ring = self.ring();
        let at = ring.position(id)?;
        ring.entries.get(at).cloned()
    }

    /// Every exchange held, oldest first.
    pub(crate) fn entries(&self) -> Vec<Arc<Entry>> {
        self.ring().entries.iter().cloned().collect()
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

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.inner.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tunnels(&self) -> MutexGuard<'_, Vec<TunnelInfo>> {
        self.inner.tunnels.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Target;

    fn add(inspector: &Inspector, path: &str) -> u64 {
        let via = Via {
            tunnel: "web".into(),
            target: Target::parse("3000").expect("a target"),
        };
        inspector
            .record(via, "GET".into(), path.into(), Vec::new(), None)
            .id
    }

    fn drain(changes: &mut broadcast::Receiver<Change>) -> Vec<Change> {
        std::iter::from_fn(|| changes.try_recv().ok()).collect()
    }

    #[test]
    fn the_ring_keeps_the_newest_and_reports_evictions() {
        let inspector = Inspector::new(InspectorLimits {
            capacity: 3,
            max_body: 16,
            ..InspectorLimits::default()
        });
        let mut changes = inspector.subscribe();
        let ids: Vec<u64> = (0..5).map(|i| add(&inspector, &format!("/{i}"))).collect();
        assert_eq!(inspector.len(), 3);
        let kept: Vec<u64> = inspector.entries().iter().map(|e| e.id).collect();
        assert_eq!(kept, ids[2..]);
        assert!(inspector.get(ids[1]).is_none());
        assert_eq!(inspector.get(ids[3]).map(|e| e.id), Some(ids[3]));
        let seen = drain(&mut changes);
        assert!(seen.contains(&Change::Evicted(ids[0])));
        assert!(seen.contains(&Change::Evicted(ids[1])));
        assert_eq!(seen.last(), Some(&Change::Updated(ids[4])));
        inspector.clear();
        assert!(inspector.is_empty());
        assert_eq!(inspector.bytes(), 0);
        assert_eq!(changes.try_recv(), Ok(Change::Cleared));
    }

    #[test]
    fn the_byte_budget_drops_the_oldest_and_keeps_the_newest() {
        let one = ENTRY_COST_OF_GET_X;
        let inspector = Inspector::new(InspectorLimits {
            capacity: 100,
            max_body: 1024,
            max_bytes: 3 * one,
        });
        let mut changes = inspector.subscribe();
        let ids: Vec<u64> = (0..3).map(|_| add(&inspector, "/x")).collect();
        assert_eq!((inspector.len(), inspector.bytes()), (3, 3 * one));
        // Body bytes kept by the newest push the oldest out.
        let newest = inspector.get(ids[2]).expect("listed");
        inspector.charge(&newest, 10);
        assert_eq!(inspector.len(), 2);
        assert_eq!(inspector.bytes(), 2 * one + 10);
        assert!(drain(&mut changes).contains(&Change::Evicted(ids[0])));
        // One exchange over the whole budget is still kept, alone.
        inspector.charge(&newest, 10 * one);
        let kept: Vec<u64> = inspector.entries().iter().map(|e| e.id).collect();
        assert_eq!(kept, [ids[2]]);
        // Bytes of an exchange no longer listed are not counted.
        let gone = Entry::new(
            ids[0],
            newest.via.clone(),
            "GET".into(),
            "/x".into(),
            Vec::new(),
            None,
        );
        let before = inspector.bytes();
        inspector.charge(&gone, 100);
        assert_eq!(inspector.bytes(), before);
    }

    /// What `add(_, "/x")` costs.
    const ENTRY_COST_OF_GET_X: usize = record::ENTRY_OVERHEAD + 3 + 2;
}
