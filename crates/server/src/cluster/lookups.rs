//! Asking Redis where a name is, on a visitor's behalf, at a bounded cost:
//!
//! - **once for everyone asking at the same time**: fifty visitors arriving
//!   together for a name this node has not cached make one round trip, the
//!   others wait for its answer;
//! - **within a budget per node** (`--cluster-lookup-rate`, lookups a
//!   second, as much again in a burst): a flood of distinct random names,
//!   which no cache can absorb, costs Redis at most that many round trips a
//!   second from this node, however many senders it comes from. Past it the
//!   caller falls back on a route it knew before (an expired one still
//!   serves; its node says if it moved) or answers 503 `cluster_busy`.
//!
//! Routes already cached never come here: they cost nothing.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::OnceCell;

use crate::registry::Lookup;

/// Lookups in flight, and the budget for new ones. An entry lives as long
/// as someone waits on it (the last to leave, answered or not, takes it
/// out), so the table holds at most the lookups the budget let begin and
/// Redis has not answered yet.
pub(crate) struct Lookups {
    resolving: Mutex<HashMap<String, Arc<OnceCell<Lookup>>>>,
    budget: Mutex<Budget>,
}

/// A token bucket: `rate` a second, holding at most `rate`.
struct Budget {
    tokens: f64,
    rate: f64,
    at: Instant,
}

impl Budget {
    fn spend(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Lookups {
    /// Lookups at `rate` a second at most (and as many in a burst).
    pub(crate) fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Lookups {
            resolving: Mutex::default(),
            budget: Mutex::new(Budget {
                tokens: rate,
                rate,
                at: Instant::now(),
            }),
        }
    }

    /// The answer of `ask` for `name`, run once for all who ask at the
    /// same time; none when a new lookup is needed and the budget is spent.
    pub(crate) async fn once<F>(&self, name: &str, ask: impl FnOnce() -> F) -> Option<Lookup>
    where
        F: Future<Output = Lookup>,
    {
        let cell = {
            let mut resolving = lock(&self.resolving);
            match resolving.get(name) {
                Some(cell) => Arc::clone(cell),
                None => {
                    if !lock(&self.budget).spend(Instant::now()) {
                        return None;
                    }
                    let cell = Arc::new(OnceCell::new());
                    resolving.insert(name.to_owned(), Arc::clone(&cell));
                    cell
                }
            }
        };
        // Should the first asker leave (its visitor gone), the next one
        // waiting runs `ask` in its place; should they all leave, the last
        // takes the entry out.
        let waiting = Waiting {
            lookups: self,
            name,
            cell,
        };
        Some(waiting.cell.get_or_init(ask).await.clone())
    }
}

/// One asker waiting on a lookup; when it goes (answered, or its visitor
/// gone), the lookup's entry goes with it if it is answered or nobody
/// else waits on it.
struct Waiting<'a> {
    lookups: &'a Lookups,
    name: &'a str,
    cell: Arc<OnceCell<Lookup>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut resolving = lock(&self.lookups.resolving);
        let ours = resolving
            .get(self.name)
            .is_some_and(|current| Arc::ptr_eq(current, &self.cell));
        // Other askers take their reference under the same lock: the map's
        // and this one are all there are when nobody else waits.
        if ours && (self.cell.initialized() || Arc::strong_count(&self.cell) <= 2) {
            resolving.remove(self.name);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn askers_at_once_share_one_lookup() {
        let lookups = Arc::new(Lookups::new(1000));
        let asked = Arc::new(AtomicUsize::new(0));
        let mut all = Vec::new();
        for _ in 0..50 {
            let (lookups, asked) = (Arc::clone(&lookups), Arc::clone(&asked));
            all.push(tokio::spawn(async move {
                lookups
                    .once("name", || async {
                        asked.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Lookup::Free
                    })
                    .await
            }));
        }
        for one in all {
            assert!(matches!(one.await.unwrap(), Some(Lookup::Free)));
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        assert!(lock(&lookups.resolving).is_empty());
    }

    #[tokio::test]
    async fn a_lookup_everyone_left_leaves_nothing_behind() {
        let lookups = Arc::new(Lookups::new(1000));
        let mut askers = Vec::new();
        for _ in 0..3 {
            let lookups = Arc::clone(&lookups);
            askers.push(tokio::spawn(async move {
                lookups.once("slow", std::future::pending::<Lookup>).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(lock(&lookups.resolving).len(), 1);
        // Two leave: the third still waits on the entry.
        askers[0].abort();
        askers[1].abort();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(lock(&lookups.resolving).len(), 1);
        // The last leaves: nothing is left, and the name may be asked for
        // again at once.
        askers[2].abort();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(lock(&lookups.resolving).is_empty());
        let again = lookups.once("slow", || async { Lookup::Free }).await;
        assert!(matches!(again, Some(Lookup::Free)));
    }

    #[tokio::test]
    async fn distinct_names_past_the_budget_are_refused() {
        let lookups = Lookups::new(10);
        let mut answered = 0;
        for i in 0..100 {
            let name = format!("random-{i}");
            if lookups
                .once(&name, || async { Lookup::Free })
                .await
                .is_some()
            {
                answered += 1;
            }
        }
        // The burst (10), and what refilled while the loop ran.
        assert!((10..=12).contains(&answered), "{answered}");
    }

    #[test]
    fn the_budget_refills_at_its_rate() {
        let now = Instant::now();
        let mut budget = Budget {
            tokens: 0.0,
            rate: 10.0,
            at: now,
        };
        assert!(!budget.spend(now));
        assert!(budget.spend(now + Duration::from_millis(100)));
        assert!(!budget.spend(now + Duration::from_millis(100)));
        // Never more than a second's worth.
        let later = now + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| budget.spend(later)).count(), 10);
    }
}
