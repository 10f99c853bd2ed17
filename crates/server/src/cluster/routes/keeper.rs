//! The keeper: the task that renews every third of the lease this node's
//! claims and its own name, notices an emptied store, and releases the
//! names of tunnels that end (leaving them held for their owners).

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::{Clustered, Release, lock, read};
use crate::cluster::shared::{Entry, Renewed};

impl Clustered {
    /// One renewal of every claim of this node, and of its name.
    pub(super) async fn renew_all(&self) {
        let entries: Vec<Entry> = read(&self.mine)
            .values()
            .flatten()
            .map(|mine| mine.entry.clone())
            .collect();
        let asked = Instant::now();
        match self
            .shared
            .hold_node(&self.node.name, &self.node.token, self.node.hop, self.lease)
            .await
        {
            Ok(true) | Err(_) => {}
            Ok(false) => {
                error!(node = %self.node.name, "another process holds this node's name in the cluster")
            }
        }
        let _ = self.shared.list_node(&self.node.name).await;
        if self.store_emptied().await {
            self.metrics.emptied();
            warn!(
                "the cluster store was emptied (restarted without its data?): this node's live tunnels are written back; names held for reconnection there are gone; run Redis with AOF and a replica"
            );
        }
        if entries.is_empty() {
            return;
        }
        let Ok(renewed) = self.shared.renew(&entries, self.lease, self.grace).await else {
            return;
        };
        let mut reasserted = 0;
        for (entry, renewed) in entries.iter().zip(renewed) {
            match renewed {
                Renewed::Yes | Renewed::Reasserted => {
                    reasserted += usize::from(renewed == Renewed::Reasserted);
                    self.renewed(&entry.name, &entry.token, asked);
                }
                Renewed::Lost => self.lost(&entry.name, &entry.token),
            }
        }
        if reasserted > 0 {
            warn!(
                names = reasserted,
                "claims missing from the cluster store were written back"
            );
        }
    }

    /// Whether the store's marker changed since this node last saw it
    /// (the first look only learns it).
    pub(super) async fn store_emptied(&self) -> bool {
        let Ok(now) = self.shared.mark().await else {
            return false;
        };
        let before = lock(&self.marker).replace(now.clone());
        before.is_some_and(|before| before != now)
    }

    pub(super) async fn release(&self, release: Release) {
        if let Err(err) = self
            .shared
            .release(&release.name, &release.token, release.hold)
            .await
        {
            // Its lease lapses by itself; the name is then held as if the
            // node had gone.
            debug!(%err, subdomain = %release.name, "could not release a name");
        }
    }
}

/// The keeper: renews every third of the lease, releases names as their
/// tunnels end; on stop, releases what is pending and returns.
pub(super) async fn keep(
    registry: std::sync::Weak<Clustered>,
    mut pending: mpsc::Receiver<Release>,
    stop: CancellationToken,
) {
    let every = registry
        .upgrade()
        .map_or(Duration::from_secs(1), |r| r.lease / 3);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(release) = pending.recv() => {
                let Some(registry) = registry.upgrade() else { return };
                registry.release(release).await;
            }
            _ = tick.tick() => {
                let Some(registry) = registry.upgrade() else { return };
                registry.renew_all().await;
            }
        }
    }
    let Some(registry) = registry.upgrade() else {
        return;
    };
    while let Ok(release) = pending.try_recv() {
        registry.release(release).await;
    }
}
