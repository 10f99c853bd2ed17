//! Revoking a key cuts its live sessions: the sessions authenticated with
//! each key, and a task that notices revocations in the database.
//!
//! `cryptun keys revoke` usually writes from another process while the
//! server runs, so the server polls: every `revocation_poll` it reads
//! [`Store::revision`] (no disk read), and only when that moved does it
//! read the ids of the revoked keys and close every session opened with
//! one of them. So a revocation takes effect on live tunnels within one
//! interval (5 s by default), and a quiet database costs nothing.
//!
//! The revoked ids are kept here, under the same lock as the sessions, so
//! a session admitted while a revocation lands is not missed: either its
//! registration sees the new set (and is cut at once) or the poll that
//! read the set sees the session.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use tokio_util::task::TaskTracker;

use crate::registry::Registry;
use crate::store::{Keys, StoreError};

/// The live sessions that authenticated with a key, and the keys known to
/// be revoked.
#[derive(Default)]
pub(crate) struct KeySessions {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Session number → (key id, its cancellation).
    sessions: HashMap<u64, (String, CancellationToken)>,
    next: u64,
    revoked: HashSet<String>,
}

/// A session's place in [`KeySessions`]; dropping it forgets the session.
pub(crate) struct KeySession {
    sessions: Arc<KeySessions>,
    number: u64,
    revoked: CancellationToken,
}

impl KeySession {
    /// Completes when the session's key is revoked.
    pub(crate) async fn revoked(&self) {
        self.revoked.cancelled().await;
    }
}

impl Drop for KeySession {
    fn drop(&mut self) {
        self.sessions.lock().sessions.remove(&self.number);
    }
}

impl KeySessions {
    /// Registers a session authenticated with key `id`. If the key is
    /// already known to be revoked, the session is cut at once.
    pub(crate) fn register(self: &Arc<Self>, id: &str) -> KeySession {
        let revoked = CancellationToken::new();
        let mut inner = self.lock();
        if inner.revoked.contains(id) {
            revoked.cancel();
        }
        inner.next += 1;
        let number = inner.next;
        inner
            .sessions
            .insert(number, (id.to_owned(), revoked.clone()));
        KeySession {
            sessions: Arc::clone(self),
            number,
            revoked,
        }
    }

    /// Takes `revoked` as the set of revoked keys and cuts every session
    /// of one of them; returns the keys not in the previous set.
    fn revoke(&self, revoked: HashSet<String>) -> Vec<String> {
        let mut inner = self.lock();
        for (id, token) in inner.sessions.values() {
            if revoked.contains(id) && !token.is_cancelled() {
                info!(key = %id, "key revoked: closing its session");
                token.cancel();
            }
        }
        let fresh = revoked.difference(&inner.revoked).cloned().collect();
        inner.revoked = revoked;
        fresh
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the watcher of revocations works on: the database it polls, how
/// often, and what it cuts.
pub(crate) struct Watcher {
    pub(crate) store: Arc<dyn Keys>,
    pub(crate) every: Duration,
    pub(crate) sessions: Arc<KeySessions>,
    pub(crate) registry: Arc<dyn Registry>,
}

impl Watcher {
    /// Starts the task that polls the store until `stop` fires, tracked by
    /// `tasks`.
    pub(crate) fn spawn(self, tasks: &TaskTracker, stop: CancellationToken) {
        tasks.spawn(
            async move {
                tokio::select! {
                    () = self.watch() => {}
                    () = stop.cancelled() => {}
                }
            }
            .instrument(info_span!("revocations")),
        );
    }

    async fn watch(&self) {
        let mut seen = None;
        loop {
            match self.poll(seen).await {
                Ok(revision) => seen = Some(revision),
                // Tried again next time (`seen` unchanged); the handshake
                // check still refuses revoked keys meanwhile.
                Err(err) => warn!(%err, "could not check for revoked keys"),
            }
            tokio::time::sleep(self.every.max(Duration::from_millis(10))).await;
        }
    }

    /// One look at the database: when its revision moved since `seen`,
    /// reads the revoked keys and cuts their sessions. Returns the revision
    /// read.
    async fn poll(&self, seen: Option<(i64, u64)>) -> Result<(i64, u64), StoreError> {
        // The revision is read before the ids: a revocation committed
        // between the two moves it again, so the next poll reads the ids
        // again.
        let revision = self.store.revision().await?;
        if seen == Some(revision) {
            return Ok(revision);
        }
        let revoked: HashSet<String> = self.store.revoked_ids().await?.into_iter().collect();
        for id in self.sessions.revoke(revoked) {
            // Names held for a revoked key's reconnection: nobody can take
            // them back, so they are free again (reserved ones stay
            // reserved).
            self.registry.release_key(&id);
        }
        Ok(revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoking_cuts_that_keys_sessions_only_and_later_ones_at_once() {
        let sessions = Arc::new(KeySessions::default());
        let a = sessions.register("a");
        let b = sessions.register("b");
        let fresh = sessions.revoke(HashSet::from(["a".to_owned()]));
        assert_eq!(fresh, ["a"]);
        assert!(a.revoked.is_cancelled());
        assert!(!b.revoked.is_cancelled());
        // Admitted just before the revocation was seen: cut on registering.
        let late = sessions.register("a");
        assert!(late.revoked.is_cancelled());
        // Seen again: nothing new.
        assert!(sessions.revoke(HashSet::from(["a".to_owned()])).is_empty());
        drop((a, b, late));
        assert!(sessions.lock().sessions.is_empty());
    }
}
