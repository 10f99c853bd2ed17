//! Names held for their owner after a disconnect: the reconnect grace.
//!
//! When a tunnel's session ends, its name is held for `reconnect_grace`:
//! visitors get 503 with `Retry-After`, and only the same identity may
//! take the name back: a client with the same API key or, for a tunnel
//! opened without one, the `reconnect_secret` it was given. After the
//! grace the name is free again (unless reserved, which the store decides).
//!
//! Holds live in memory; a server with a database saves them when it stops
//! and takes them back when it starts (`store::holds`), so a restart does
//! not free every name at once. Their number is bounded (`max`): when full,
//! the hold that ends soonest is dropped early. A queue in order of expiry
//! finds the soonest in O(1); a new hold lasts the whole grace, so it goes
//! at the queue's end (only holds taken back after a restart, shorter,
//! are placed further in).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use cryptun_proto::Secret;

use crate::store::{Owner, SavedHold};
use subtle::ConstantTimeEq;
use tracing::warn;

/// What a new tunnel offers to prove it may take a held name.
#[derive(Debug, Clone, Copy, Default)]
pub struct Claim<'a> {
    /// The connection's key id, if it has one.
    pub key: Option<&'a str>,
    /// The reconnect secret it sent, if any.
    pub secret: Option<&'a Secret>,
}

impl Claim<'_> {
    fn proves(&self, owner: &Owner) -> bool {
        match owner {
            Owner::Key(id) => self.key == Some(id.as_str()),
            Owner::Secret(hash) => self.secret.is_some_and(|s| {
                let Owner::Secret(presented) = Owner::secret(s) else {
                    return false;
                };
                presented.ct_eq(hash).into()
            }),
        }
    }
}

/// Why a held name could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldBy {
    /// Held for another identity; the claim offered no secret.
    Other(Duration),
    /// The claim's reconnect secret is not the one the name is held for:
    /// a failed attempt, counted against the address.
    WrongSecret(Duration),
}

struct Held {
    owner: Owner,
    until: Instant,
}

/// The held names.
pub(super) struct Holds {
    map: HashMap<String, Held>,
    /// `(until, name)` in order of holding, which is the order of expiry.
    /// May name holds since taken back; those are skipped.
    order: VecDeque<(Instant, String)>,
    max: usize,
}

impl Holds {
    pub(super) fn new(max: usize) -> Self {
        Holds {
            map: HashMap::new(),
            order: VecDeque::new(),
            max: max.max(1),
        }
    }

    /// Holds `name` for `owner` until `until`.
    pub(super) fn hold(&mut self, name: String, owner: Owner, until: Instant, now: Instant) {
        self.purge(now);
        while self.order.len() >= self.max {
            if self.pop_front() {
                warn!("too many names held for reconnection; releasing the oldest early");
            }
        }
        // At the end, but for a hold taken back after a restart.
        let at = self.order.partition_point(|(end, _)| *end <= until);
        self.order.insert(at, (until, name.clone()));
        self.map.insert(name, Held { owner, until });
    }

    /// How long `name` is still held, if it is.
    pub(super) fn remaining(&self, name: &str, now: Instant) -> Option<Duration> {
        let held = self.map.get(name)?;
        (held.until > now).then(|| held.until - now)
    }

    /// Takes `name` if it is not held, or held for the claimant (the hold
    /// ends); otherwise says why not.
    pub(super) fn claim(
        &mut self,
        name: &str,
        claim: Claim<'_>,
        now: Instant,
    ) -> Result<(), HeldBy> {
        self.purge(now);
        let Some(held) = self.map.get(name) else {
            return Ok(());
        };
        if held.until <= now || claim.proves(&held.owner) {
            self.map.remove(name);
            return Ok(());
        }
        let remaining = held.until.saturating_duration_since(now);
        match (&held.owner, claim.secret) {
            (Owner::Secret(_), Some(_)) => Err(HeldBy::WrongSecret(remaining)),
            _ => Err(HeldBy::Other(remaining)),
        }
    }

    /// Ends every hold whose owner is `owner`; returns how many.
    pub(super) fn release_owner(&mut self, owner: &Owner) -> usize {
        let before = self.map.len();
        self.map.retain(|_, held| held.owner != *owner);
        // Their queue entries stay; `pop_front` skips names no longer held.
        before - self.map.len()
    }

    /// Names held now (for tests and metrics).
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// The holds in force at `now`, with what is left of each.
    pub(super) fn saved(&self, now: Instant) -> Vec<SavedHold> {
        self.map
            .iter()
            .filter(|(_, held)| held.until > now)
            .map(|(name, held)| SavedHold {
                name: name.clone(),
                owner: held.owner.clone(),
                left: held.until - now,
            })
            .collect()
    }

    /// Holds again what a previous run saved, each for what was left of it
    /// but no longer than `grace`; if more than fit, those ending last. A
    /// name held since keeps its newer hold.
    pub(super) fn restore(&mut self, saved: Vec<SavedHold>, grace: Duration, now: Instant) {
        let mut saved: Vec<SavedHold> = saved
            .into_iter()
            .map(|hold| SavedHold {
                left: hold.left.min(grace),
                ..hold
            })
            .filter(|hold| !hold.left.is_zero() && !self.map.contains_key(&hold.name))
            .collect();
        saved.sort_by_key(|hold| std::cmp::Reverse(hold.left));
        saved.truncate(self.max.saturating_sub(self.map.len()));
        for hold in saved {
            self.hold(hold.name, hold.owner, now + hold.left, now);
        }
    }

    /// Ends every hold whose time is up.
    fn purge(&mut self, now: Instant) {
        while self.order.front().is_some_and(|(until, _)| *until <= now) {
            self.pop_front();
        }
    }

    /// Drops the first queued hold; returns whether it was still in force.
    fn pop_front(&mut self) -> bool {
        let Some((until, name)) = self.order.pop_front() else {
            return false;
        };
        let current = self.map.get(&name).is_some_and(|h| h.until == until);
        if current {
            self.map.remove(&name);
        }
        current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(30);

    #[test]
    fn a_revoked_key_releases_only_its_own_holds() {
        let mut holds = Holds::new(10);
        let t = Instant::now();
        holds.hold("a".into(), Owner::Key("k1".into()), t + GRACE, t);
        holds.hold("b".into(), Owner::Key("k1".into()), t + GRACE, t);
        holds.hold("c".into(), Owner::Key("k2".into()), t + GRACE, t);
        assert_eq!(holds.release_owner(&Owner::Key("k1".into())), 2);
        assert_eq!(holds.len(), 1);
        assert_eq!(holds.remaining("a", t), None);
        assert_eq!(holds.remaining("c", t), Some(GRACE));
        assert_eq!(holds.release_owner(&Owner::Key("k1".into())), 0);
    }

    #[test]
    fn only_the_owner_takes_a_held_name_back() {
        let mut holds = Holds::new(10);
        let t = Instant::now();
        let secret = Secret::new("s3cret");
        holds.hold("app".into(), Owner::secret(&secret), t + GRACE, t);
        holds.hold("keyed".into(), Owner::Key("k1".into()), t + GRACE, t);
        assert_eq!(holds.remaining("app", t), Some(GRACE));

        let nobody = Claim::default();
        assert_eq!(holds.claim("app", nobody, t), Err(HeldBy::Other(GRACE)));
        let wrong = Secret::new("guess");
        let guess = Claim {
            key: None,
            secret: Some(&wrong),
        };
        assert_eq!(
            holds.claim("app", guess, t),
            Err(HeldBy::WrongSecret(GRACE))
        );
        let other_key = Claim {
            key: Some("k2"),
            secret: Some(&wrong),
        };
        assert_eq!(
            holds.claim("keyed", other_key, t),
            Err(HeldBy::Other(GRACE))
        );

        let owner = Claim {
            key: None,
            secret: Some(&secret),
        };
        assert_eq!(holds.claim("app", owner, t), Ok(()));
        assert_eq!(holds.remaining("app", t), None);
        let key = Claim {
            key: Some("k1"),
            secret: None,
        };
        assert_eq!(holds.claim("keyed", key, t), Ok(()));
        assert_eq!(holds.len(), 0);
    }

    #[test]
    fn holds_end_with_the_grace() {
        let mut holds = Holds::new(10);
        let t = Instant::now();
        holds.hold("app".into(), Owner::Key("k".into()), t + GRACE, t);
        let after = t + GRACE;
        assert_eq!(holds.remaining("app", after), None);
        assert_eq!(holds.claim("app", Claim::default(), after), Ok(()));
        assert_eq!(holds.len(), 0);
    }

    #[test]
    fn a_name_held_again_is_not_released_by_its_old_hold() {
        let mut holds = Holds::new(10);
        let t = Instant::now();
        let owner = Owner::Key("k".into());
        holds.hold("app".into(), owner.clone(), t + GRACE, t);
        let key = Claim {
            key: Some("k"),
            secret: None,
        };
        holds.claim("app", key, t).unwrap();
        let t2 = t + Duration::from_secs(10);
        holds.hold("app".into(), owner, t2 + GRACE, t2);
        // The first hold's time passes; the second is still in force.
        let t3 = t + GRACE;
        assert_eq!(
            holds.claim("app", Claim::default(), t3),
            Err(HeldBy::Other(Duration::from_secs(10)))
        );
    }

    #[test]
    fn saved_holds_are_restored_with_what_was_left_of_them() {
        let t = Instant::now();
        let mut before = Holds::new(10);
        let secret = Secret::new("s3cret");
        before.hold("anon".into(), Owner::secret(&secret), t + GRACE, t);
        let t1 = t + Duration::from_secs(5);
        before.hold("keyed".into(), Owner::Key("k".into()), t1 + GRACE, t1);
        let mut saved = before.saved(t1);
        saved.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(saved[0].left, GRACE - Duration::from_secs(5));
        assert_eq!(saved[1].left, GRACE);

        // A later start: the keyed name is already held afresh there; a
        // hold longer than this run's grace is cut to it.
        let mut after = Holds::new(10);
        let t2 = t1 + Duration::from_secs(60);
        after.hold("keyed".into(), Owner::Key("other".into()), t2 + GRACE, t2);
        let short = Duration::from_secs(10);
        after.restore(saved, short, t2);
        assert_eq!(after.remaining("anon", t2), Some(short));
        assert_eq!(after.remaining("keyed", t2), Some(GRACE));
        let owner = Claim {
            key: None,
            secret: Some(&secret),
        };
        assert_eq!(
            after.claim("anon", Claim::default(), t2),
            Err(HeldBy::Other(short))
        );
        assert_eq!(after.claim("anon", owner, t2), Ok(()));
    }

    #[test]
    fn a_shorter_hold_taken_back_ends_on_time_behind_a_longer_one() {
        let t = Instant::now();
        let mut holds = Holds::new(10);
        holds.hold("new".into(), Owner::Key("k".into()), t + GRACE, t);
        let short = Duration::from_secs(5);
        let saved = |name: &str, left| SavedHold {
            name: name.into(),
            owner: Owner::Key("old".into()),
            left,
        };
        holds.restore(vec![saved("old", short)], GRACE, t);
        let later = t + short;
        assert_eq!(holds.remaining("old", later), None);
        // The next hold's purge finds it ended, though it came in last.
        holds.hold("next".into(), Owner::Key("k".into()), later + GRACE, later);
        assert_eq!(holds.len(), 2, "the ended hold left the map");
        assert_eq!(holds.claim("old", Claim::default(), later), Ok(()));
        assert_eq!(holds.remaining("new", later), Some(GRACE - short));

        // More saved than the bound holds: those ending last are kept.
        let mut small = Holds::new(2);
        let many = (1..=5)
            .map(|i| saved(&format!("n{i}"), Duration::from_secs(i)))
            .collect();
        small.restore(many, GRACE, t);
        assert_eq!(small.len(), 2);
        assert!(small.remaining("n5", t).is_some() && small.remaining("n4", t).is_some());
    }

    #[test]
    fn the_number_of_holds_is_bounded() {
        let mut holds = Holds::new(3);
        let t = Instant::now();
        for i in 0..100u64 {
            let now = t + Duration::from_millis(i);
            holds.hold(format!("n{i}"), Owner::Key("k".into()), now + GRACE, now);
            assert!(holds.len() <= 3 && holds.order.len() <= 3);
        }
        // The newest stay; the oldest went first.
        let now = t + Duration::from_millis(100);
        assert!(holds.remaining("n99", now).is_some());
        assert!(holds.remaining("n0", now).is_none());
    }
}
