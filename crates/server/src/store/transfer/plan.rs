//! What an import does, decided before anything is written, from the
//! document and what the target holds: a pure function, so each store only
//! reads its entries, asks [`plan`], and writes what it says.
//!
//! The rules, entry by entry:
//!
//! - absent from the target: added;
//! - the same there: left as it is, so importing twice changes nothing;
//! - a key revoked in the document and live in the target: revoked (a
//!   revocation only takes access away, and is what moving a store after
//!   revoking a leaked key must carry);
//! - anything else that differs (a key id with another token hash, name or
//!   date; a name reserved for another key; a name held for another owner)
//!   is a [`Conflict`]: the import is refused whole, naming each, unless
//!   `replace`, when the document's entry is written;
//! - whatever `replace` says, a key revoked in the target stays revoked,
//!   and a name served by another owner's live tunnel (in a cluster) is not
//!   taken from it;
//! - a hold whose time is up is not written ([`Action::Ended`]).

use std::collections::{HashMap, HashSet};
use std::fmt;

use super::{Document, HoldRecord, KeyRecord, PortReservationRecord, ReservationRecord};

/// What the import does with one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Written: the target has no such entry.
    Add,
    /// Written over the target's (`replace`).
    Replace,
    /// The key is revoked in the target too.
    Revoke,
    /// Left: the target has it already.
    Unchanged,
    /// Not written: the hold's time is up.
    Ended,
}

/// An entry of the document that differs from the target's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// The same key id with another token hash.
    KeyHash {
        /// The key id.
        id: String,
    },
    /// The same key with another name or creation date.
    KeyDiffers {
        /// The key id.
        id: String,
    },
    /// A name reserved for another key.
    Reserved {
        /// The name.
        name: String,
        /// Its key in the target.
        here: String,
        /// Its key in the document.
        document: String,
    },
    /// A TCP port reserved for another key.
    PortReserved {
        /// The port.
        port: u16,
        /// Its key in the target.
        here: String,
        /// Its key in the document.
        document: String,
    },
    /// A name held for another owner.
    Held {
        /// The name.
        name: String,
    },
    /// A name served by another owner's live tunnel: never replaced.
    Live {
        /// The name.
        name: String,
    },
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::KeyHash { id } => {
                write!(
                    f,
                    "key {id} has another token hash here than in the document"
                )
            }
            Conflict::KeyDiffers { id } => write!(
                f,
                "key {id} has another name or creation date here than in the document"
            ),
            Conflict::Reserved {
                name,
                here,
                document,
            } => write!(
                f,
                "{name} is reserved for key {here} here, for key {document} in the document"
            ),
            Conflict::PortReserved {
                port,
                here,
                document,
            } => write!(
                f,
                "TCP port {port} is reserved for key {here} here, for key {document} in the document"
            ),
            Conflict::Held { name } => {
                write!(
                    f,
                    "{name} is held here for another owner than in the document"
                )
            }
            Conflict::Live { name } => write!(
                f,
                "{name} is served here by another owner's live tunnel (not replaced, even with --replace)"
            ),
        }
    }
}

/// The conflicts as one message.
pub(super) fn describe(conflicts: &[Conflict]) -> String {
    let all: Vec<String> = conflicts.iter().map(ToString::to_string).collect();
    let replaceable = conflicts
        .iter()
        .any(|c| !matches!(c, Conflict::Live { .. }));
    format!(
        "the document conflicts with the target in {} {}, so nothing was imported{}: {}",
        conflicts.len(),
        if conflicts.len() == 1 {
            "entry"
        } else {
            "entries"
        },
        if replaceable {
            " (--replace writes the document's entries over the target's)"
        } else {
            ""
        },
        all.join("; ")
    )
}

/// Every entry of a document and what to do with it; the records are the
/// ones to write (a replaced key keeps the target's revocation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Keys first: reservations refer to them.
    pub keys: Vec<(KeyRecord, Action)>,
    /// Reserved names.
    pub reservations: Vec<(ReservationRecord, Action)>,
    /// Held names.
    pub holds: Vec<(HoldRecord, Action)>,
    /// Reserved TCP ports.
    pub port_reservations: Vec<(PortReservationRecord, Action)>,
}

/// How many entries of one kind were...
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// written where there were none;
    pub added: usize,
    /// written over the target's, or revoked;
    pub updated: usize,
    /// there already;
    pub unchanged: usize,
    /// left out, their time up (holds only).
    pub ended: usize,
}

impl Counts {
    fn of<T>(entries: &[(T, Action)]) -> Counts {
        let mut counts = Counts::default();
        for (_, action) in entries {
            match action {
                Action::Add => counts.added += 1,
                Action::Replace | Action::Revoke => counts.updated += 1,
                Action::Unchanged => counts.unchanged += 1,
                Action::Ended => counts.ended += 1,
            }
        }
        counts
    }

    fn changed(&self) -> bool {
        self.added + self.updated > 0
    }
}

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Keys.
    pub keys: Counts,
    /// Reserved names.
    pub reservations: Counts,
    /// Held names.
    pub holds: Counts,
    /// Reserved TCP ports.
    pub port_reservations: Counts,
}

impl Summary {
    /// Whether the import wrote anything.
    pub fn changed(&self) -> bool {
        self.keys.changed()
            || self.reservations.changed()
            || self.holds.changed()
            || self.port_reservations.changed()
    }
}

impl Plan {
    /// What this plan does, counted.
    pub fn summary(&self) -> Summary {
        Summary {
            keys: Counts::of(&self.keys),
            reservations: Counts::of(&self.reservations),
            holds: Counts::of(&self.holds),
            port_reservations: Counts::of(&self.port_reservations),
        }
    }
}

/// What importing `document` into a target holding `target` does, at Unix
/// millisecond `now_ms`. `live` are the target's names served by a live
/// tunnel now (a cluster's; none in a stopped server's database).
pub fn plan(
    target: &Document,
    live: &HashSet<String>,
    document: &Document,
    replace: bool,
    now_ms: i64,
) -> Result<Plan, Vec<Conflict>> {
    let mut conflicts = Vec::new();
    let mut plan = Plan::default();
    let keys: HashMap<_, _> = target.keys.iter().map(|k| (k.id.as_str(), k)).collect();
    for key in &document.keys {
        let action = match keys.get(key.id.as_str()) {
            None => (key.clone(), Action::Add),
            Some(old) if old.token_sha256 != key.token_sha256 || !same_key(old, key) => {
                if !replace {
                    let id = key.id.clone();
                    conflicts.push(if old.token_sha256 != key.token_sha256 {
                        Conflict::KeyHash { id }
                    } else {
                        Conflict::KeyDiffers { id }
                    });
                    continue;
                }
                let revoked_at = old.revoked_at.or(key.revoked_at);
                let written = KeyRecord {
                    revoked_at,
                    ..key.clone()
                };
                (written, Action::Replace)
            }
            Some(old) if old.revoked_at.is_none() && key.revoked_at.is_some() => {
                (key.clone(), Action::Revoke)
            }
            Some(old) => ((*old).clone(), Action::Unchanged),
        };
        plan.keys.push(action);
    }
    let reserved: HashMap<_, _> = target
        .reservations
        .iter()
        .map(|r| (r.name.as_str(), r.key_id.as_str()))
        .collect();
    for reservation in &document.reservations {
        let action = match reserved.get(reservation.name.as_str()) {
            None => Action::Add,
            Some(&owner) if owner == reservation.key_id => Action::Unchanged,
            Some(_) if replace => Action::Replace,
            Some(&owner) => {
                conflicts.push(Conflict::Reserved {
                    name: reservation.name.clone(),
                    here: owner.to_owned(),
                    document: reservation.key_id.clone(),
                });
                continue;
            }
        };
        plan.reservations.push((reservation.clone(), action));
    }
    let ports: HashMap<_, _> = target
        .port_reservations
        .iter()
        .map(|r| (r.port, r.key_id.as_str()))
        .collect();
    for reserved in &document.port_reservations {
        let action = match ports.get(&reserved.port) {
            None => Action::Add,
            Some(&owner) if owner == reserved.key_id => Action::Unchanged,
            Some(_) if replace => Action::Replace,
            Some(&owner) => {
                conflicts.push(Conflict::PortReserved {
                    port: reserved.port,
                    here: owner.to_owned(),
                    document: reserved.key_id.clone(),
                });
                continue;
            }
        };
        plan.port_reservations.push((reserved.clone(), action));
    }
    let held: HashMap<_, _> = target
        .holds
        .iter()
        .map(|h| (h.name.as_str(), h.owner()))
        .collect();
    for hold in &document.holds {
        let name = hold.name.clone();
        let action = match held.get(name.as_str()) {
            _ if hold.until_ms <= now_ms => Action::Ended,
            None => Action::Add,
            Some(owner) if *owner == hold.owner() => Action::Unchanged,
            Some(_) if live.contains(&name) => {
                conflicts.push(Conflict::Live { name });
                continue;
            }
            Some(_) if replace => Action::Replace,
            Some(_) => {
                conflicts.push(Conflict::Held { name });
                continue;
            }
        };
        plan.holds.push((hold.clone(), action));
    }
    if conflicts.is_empty() {
        Ok(plan)
    } else {
        Err(conflicts)
    }
}

/// Whether two records of one key agree on what is not its hash or its
/// revocation.
fn same_key(a: &KeyRecord, b: &KeyRecord) -> bool {
    a.name == b.name && a.created_at == b.created_at
}
