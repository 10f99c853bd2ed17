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

use std::net::IpAddr;

use cryptun_proto::net::group;

use crate::store::{Owner, SavedHold};
use subtle::ConstantTimeEq;

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

/// Who a hold counts against, so that one identity's activity never costs
/// another its holds: the key of a keyed tunnel, the address (its group,
/// IPv6 by /64) an anonymous tunnel's client came from, or, for an
/// anonymous hold taken back after a restart, its secret's hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Holder {
    /// A key's id.
    Key(String),
    /// An anonymous client's address group.
    Address(IpAddr),
    /// An anonymous hold saved by a previous run (its address is not kept).
    Secret([u8; 32]),
}

impl Holder {
    /// The holder of a hold for `owner` whose client came from `client`.
    pub fn of(owner: &Owner, client: IpAddr) -> Holder {
        match owner {
            Owner::Key(id) => Holder::Key(id.clone()),
            Owner::Secret(_) => Holder::Address(group(client)),
        }
    }

    /// The holder of a hold taken back after a restart.
    fn restored(owner: &Owner) -> Holder {
        match owner {
            Owner::Key(id) => Holder::Key(id.clone()),
            Owner::Secret(hash) => Holder::Secret(*hash),
        }
    }
}

/// Why a name was not held after its tunnel ended; it is free at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotHeld {
    /// Its holder holds as many names as one may.
    Quota,
    /// The table holds as many names as it may.
    Full,
}

struct Held {
    owner: Owner,
    holder: Holder,
    until: Instant,
}

/// The held names.
pub(super) struct Holds {
    map: HashMap<String, Held>,
    /// `(until, name)` in order of holding, which is the order of expiry.
    /// May name holds since taken back; those are skipped.
    order: VecDeque<(Instant, String)>,
    /// Holds in force by holder (no entry at zero).
    counts: HashMap<Holder, usize>,
    max: usize,
    per_holder: usize,
}

impl Holds {
    /// At most `max` holds in all, `per_holder` for any one holder.
    pub(super) fn new(max: usize, per_holder: usize) -> Self {
        Holds {
            map: HashMap::new(),
            order: VecDeque::new(),
            counts: HashMap::new(),
            max: max.max(1),
            per_holder: per_holder.max(1),
        }
    }

    /// Holds `name` for `owner`, counted against `holder`, until `until`,
    /// unless the holder has used up its share or the table is full: no
    /// hold ever ends early for someone else's (the name is then free at
    /// once, and the caller says so).
    pub(super) fn hold(
        &mut self,
        name: String,
        owner: Owner,
        holder: Holder,
        until: Instant,
        now: Instant,
    ) -> Result<(), NotHeld> {
        self.purge(now);
        // A name held again replaces its own older hold.
        self.remove(&name);
        if self
            .counts
            .get(&holder)
            .is_some_and(|n| *n >= self.per_holder)
        {
            return Err(NotHeld::Quota);
        }
        if self.order.len() >= self.max.saturating_mul(2) {
            self.compact();
        }
        if self.map.len() >= self.max {
            return Err(NotHeld::Full);
        }
        // At the end, but for a hold taken back after a restart.
        let at = self.order.partition_point(|(end, _)| *end <= until);
        self.order.insert(at, (until, name.clone()));
        *self.counts.entry(holder.clone()).or_default() += 1;
        self.map.insert(
            name,
            Held {
                owner,
                holder,
                until,
            },
        );
        Ok(())
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
            self.remove(name);
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
        let names: Vec<String> = self
            .map
            .iter()
            .filter(|(_, held)| held.owner == *owner)
            .map(|(name, _)| name.clone())
            .collect();
        // Their queue entries stay; `pop_front` skips names no longer held.
        for name in &names {
            self.remove(name);
        }
        names.len()
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
            let holder = Holder::restored(&hold.owner);
            // Over a holder's share (a smaller setting than the last run's):
            // those ending last were held first.
            let _ = self.hold(hold.name, hold.owner, holder, now + hold.left, now);
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
            self.remove(&name);
        }
        current
    }

    /// Drops the queue's entries of holds no longer in force (taken back,
    /// released, or held again since). Run when the queue has grown to
    /// twice the bound, so at most once per `max` holds: amortised O(1).
    fn compact(&mut self) {
        let map = &self.map;
        self.order
            .retain(|(until, name)| map.get(name).is_some_and(|h| h.until == *until));
    }

    /// Ends the hold of `name`, if any, and its count.
    fn remove(&mut self, name: &str) {
        let Some(held) = self.map.remove(name) else {
            return;
        };
        if let Some(count) = self.counts.get_mut(&held.holder) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&held.holder);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(30);

    impl Holds {
        /// Holds `name` for `owner`, counted against the owner itself.
        fn put(&mut self, name: String, owner: Owner, until: Instant, now: Instant) {
            let holder = Holder::restored(&owner);
            self.hold(name, owner, holder, until, now).unwrap();
        }
    }

    #[test]
    fn a_revoked_key_releases_only_its_own_holds() {
        let mut holds = Holds::new(10, 10);
        let t = Instant::now();
        holds.put("a".into(), Owner::Key("k1".into()), t + GRACE, t);
        holds.put("b".into(), Owner::Key("k1".into()), t + GRACE, t);
        holds.put("c".into(), Owner::Key("k2".into()), t + GRACE, t);
        assert_eq!(holds.release_owner(&Owner::Key("k1".into())), 2);
        assert_eq!(holds.len(), 1);
        assert_eq!(holds.remaining("a", t), None);
        assert_eq!(holds.remaining("c", t), Some(GRACE));
        assert_eq!(holds.release_owner(&Owner::Key("k1".into())), 0);
    }

    #[test]
    fn only_the_owner_takes_a_held_name_back() {
        let mut holds = Holds::new(10, 10);
        let t = Instant::now();
        let secret = Secret::new("s3cret");
        holds.put("app".into(), Owner::secret(&secret), t + GRACE, t);
        holds.put("keyed".into(), Owner::Key("k1".into()), t + GRACE, t);
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
        let mut holds = Holds::new(10, 10);
        let t = Instant::now();
        holds.put("app".into(), Owner::Key("k".into()), t + GRACE, t);
        let after = t + GRACE;
        assert_eq!(holds.remaining("app", after), None);
        assert_eq!(holds.claim("app", Claim::default(), after), Ok(()));
        assert_eq!(holds.len(), 0);
    }

    #[test]
    fn a_name_held_again_is_not_released_by_its_old_hold() {
        let mut holds = Holds::new(10, 10);
        let t = Instant::now();
        let owner = Owner::Key("k".into());
        holds.put("app".into(), owner.clone(), t + GRACE, t);
        let key = Claim {
            key: Some("k"),
            secret: None,
        };
        holds.claim("app", key, t).unwrap();
        let t2 = t + Duration::from_secs(10);
        holds.put("app".into(), owner, t2 + GRACE, t2);
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
        let mut before = Holds::new(10, 10);
        let secret = Secret::new("s3cret");
        before.put("anon".into(), Owner::secret(&secret), t + GRACE, t);
        let t1 = t + Duration::from_secs(5);
        before.put("keyed".into(), Owner::Key("k".into()), t1 + GRACE, t1);
        let mut saved = before.saved(t1);
        saved.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(saved[0].left, GRACE - Duration::from_secs(5));
        assert_eq!(saved[1].left, GRACE);

        // A later start: the keyed name is already held afresh there; a
        // hold longer than this run's grace is cut to it.
        let mut after = Holds::new(10, 10);
        let t2 = t1 + Duration::from_secs(60);
        after.put("keyed".into(), Owner::Key("other".into()), t2 + GRACE, t2);
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
        let mut holds = Holds::new(10, 10);
        holds.put("new".into(), Owner::Key("k".into()), t + GRACE, t);
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
        holds.put("next".into(), Owner::Key("k".into()), later + GRACE, later);
        assert_eq!(holds.len(), 2, "the ended hold left the map");
        assert_eq!(holds.claim("old", Claim::default(), later), Ok(()));
        assert_eq!(holds.remaining("new", later), Some(GRACE - short));

        // More saved than the bound holds: those ending last are kept.
        let mut small = Holds::new(2, 10);
        let many = (1..=5)
            .map(|i| saved(&format!("n{i}"), Duration::from_secs(i)))
            .collect();
        small.restore(many, GRACE, t);
        assert_eq!(small.len(), 2);
        assert!(small.remaining("n5", t).is_some() && small.remaining("n4", t).is_some());
    }

    #[test]
    fn a_full_table_refuses_new_holds_and_never_ends_one_early() {
        let mut holds = Holds::new(3, 10);
        let t = Instant::now();
        let (victim, secret) = (Owner::Key("victim".into()), Owner::Key("k".into()));
        holds.put("held".into(), victim, t + GRACE, t);
        for i in 0..100u64 {
            let now = t + Duration::from_millis(i);
            let holder = Holder::Key("k".into());
            let _ = holds.hold(format!("n{i}"), secret.clone(), holder, now + GRACE, now);
            assert!(holds.len() <= 3 && holds.order.len() <= 6);
        }
        let now = t + Duration::from_millis(100);
        assert!(
            holds.remaining("held", now).is_some(),
            "the first hold stays"
        );
        assert_eq!(
            holds.hold(
                "late".into(),
                Owner::Key("x".into()),
                Holder::Key("x".into()),
                now + GRACE,
                now
            ),
            Err(NotHeld::Full)
        );
    }

    #[test]
    fn a_holder_over_its_share_holds_no_more_and_costs_nobody_else() {
        let mut holds = Holds::new(1000, 2);
        let t = Instant::now();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let anon = |n: u8| Owner::Secret([n; 32]);
        let attacker = Holder::of(&anon(1), ip("2001:db8:0:1::1"));
        let victim = Holder::of(&anon(9), ip("198.51.100.7"));
        holds
            .hold("mine".into(), anon(9), victim, t + GRACE, t)
            .unwrap();
        // Another address of the same /64 is the same holder.
        let same = Holder::of(&anon(2), ip("2001:db8:0:1::ffff"));
        assert_eq!(same, attacker);
        holds
            .hold("a1".into(), anon(1), attacker.clone(), t + GRACE, t)
            .unwrap();
        holds
            .hold("a2".into(), anon(2), same, t + GRACE, t)
            .unwrap();
        for i in 3..=255u8 {
            let refused = holds.hold(format!("a{i}"), anon(i), attacker.clone(), t + GRACE, t);
            assert_eq!(refused, Err(NotHeld::Quota));
        }
        assert_eq!(holds.len(), 3);
        assert_eq!(
            holds.claim("mine", Claim::default(), t),
            Err(HeldBy::Other(GRACE))
        );
        // Taken back, a hold frees its share.
        let secret = Secret::new("s");
        let back = Claim {
            key: None,
            secret: Some(&secret),
        };
        holds.map.get_mut("a1").unwrap().owner = Owner::secret(&secret);
        holds.claim("a1", back, t).unwrap();
        holds
            .hold("a3".into(), anon(3), attacker, t + GRACE, t)
            .unwrap();
    }
}
