//! Names held for reconnection kept in the server's database, so that
//! neither a restart nor a crash frees them: taken back at start, saved
//! within a second of any change while the server runs (the names of live
//! tunnels as holds for the whole grace), and saved once more as it stops.
//! A cluster's holds live in Redis instead.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Registry;
use crate::store::Store;

/// Holds again the names the last run saved when it stopped. A failure
/// costs only those holds: the server starts all the same.
pub(crate) async fn restore(registry: &dyn Registry, store: &Store) {
    match store.call(Store::saved_holds).await {
        Ok(saved) if saved.is_empty() => {}
        Ok(saved) => {
            info!(
                names = saved.len(),
                "names held for reconnection when the server last stopped are held again"
            );
            registry.restore_holds(saved);
        }
        Err(err) => warn!(%err, "could not read the names held when the server last stopped"),
    }
}

/// How often the keeper looks for changes to the holds.
const HOLDS_SAVE_EVERY: Duration = Duration::from_secs(1);

/// Saves the registry's holds (and live names, as holds for the whole
/// grace) to `store` within a second of any change, and again every third
/// of the grace while names are live, so that the saved time left stays
/// ahead of a crash; until `stop`.
pub(crate) async fn keep(
    registry: Arc<dyn Registry>,
    store: Store,
    grace: Duration,
    stop: CancellationToken,
) {
    if grace.is_zero() {
        return;
    }
    let refresh = (grace / 3).max(HOLDS_SAVE_EVERY);
    let mut saved = (u64::MAX, tokio::time::Instant::now());
    let mut tick = tokio::time::interval(HOLDS_SAVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let changes = registry.changes();
        let stale = !registry.is_empty() && saved.1.elapsed() >= refresh;
        if changes == saved.0 && !stale {
            continue;
        }
        let holds = registry.saved_holds();
        match store.call(move |store| store.save_holds(&holds)).await {
            Ok(()) => saved = (changes, tokio::time::Instant::now()),
            Err(err) => warn!(%err, "could not save the names held for reconnection"),
        }
    }
}

/// Saves the names held for reconnection, for the next start.
pub(crate) async fn save(registry: &dyn Registry, store: &Store) {
    let saved = registry.saved_holds();
    let names = saved.len();
    match store.call(move |store| store.save_holds(&saved)).await {
        Ok(()) if names > 0 => info!(
            names,
            "names held for reconnection saved for the next start"
        ),
        Ok(()) => {}
        Err(err) => warn!(%err, "could not save the names held for reconnection"),
    }
}
