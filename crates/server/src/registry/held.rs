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
    /// Its proofs as a cluster's records write owners ([`Owner::code`]):
    /// the key's and the secret's, `""` for none.
    pub fn codes(&self) -> [String; 2] {
        [
            self.key
                .map_or_else(String::new, |id| Owner::Key(id.to_owned()).code()),
            self.secret
                .map_or_else(String::new, |s| Owner::secret(s).code()),
        ]
    }

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
#[path = "held_tests.rs"]
mod tests;
