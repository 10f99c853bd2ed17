//! Names held for reconnection, carried across a restart.
//!
//! The reconnect grace lives in memory (`registry::held`). A running
//! server with a data directory writes what it holds here within a second
//! of any change, the names of live tunnels included as holds for the
//! whole grace (`registry::keeper`), and again as it stops; the next
//! start on the same data directory takes it back, minus the time it was
//! down. Without this, a restart or a crash freed every name at once, and
//! whoever asked first after it came back took a name whose owner was
//! just reconnecting.
//!
//! What is kept: the name, when the hold ends (Unix milliseconds), and its
//! owner — a key id, or the SHA-256 of an anonymous tunnel's reconnect
//! secret (never the secret). Each save replaces every row in one
//! transaction; reading leaves them, so a server killed before its first
//! save finds them again. A hold whose time is up, or whose key was
//! revoked meanwhile, is not taken back.

use std::time::Duration;

use rusqlite::params;

use cryptun_proto::Secret;
use sha2::{Digest, Sha256};

use super::{Store, StoreError};

/// Who may take a name back during its grace.
#[derive(Clone, PartialEq, Eq)]
pub enum Owner {
    /// Any connection authenticated with this key id.
    Key(String),
    /// Whoever presents the reconnect secret with this SHA-256.
    Secret([u8; 32]),
}

impl Owner {
    /// The owner for an anonymous tunnel given `secret`.
    pub fn secret(secret: &Secret) -> Owner {
        Owner::Secret(Sha256::digest(secret.expose().as_bytes()).into())
    }
}

impl Owner {
    /// The owner as a cluster's route record has it (`cluster::shared`):
    /// `k:KEY_ID`, or `s:` and the secret's SHA-256 in lowercase hex.
    pub fn code(&self) -> String {
        match self {
            Owner::Key(id) => format!("k:{id}"),
            Owner::Secret(hash) => format!("s:{}", super::transfer::Sha256::from(*hash)),
        }
    }

    /// Reads [`Owner::code`]'s form back; `None` for anything else.
    pub fn from_code(code: &str) -> Option<Owner> {
        if let Some(id) = code.strip_prefix("k:") {
            return (!id.is_empty()).then(|| Owner::Key(id.to_owned()));
        }
        let hash: super::transfer::Sha256 = code.strip_prefix("s:")?.parse().ok()?;
        Some(Owner::Secret(hash.0))
    }
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Key(id) => write!(f, "Key({id})"),
            Owner::Secret(_) => f.write_str("Secret(***)"),
        }
    }
}

/// One name held for reconnection, as saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedHold {
    /// The subdomain.
    pub name: String,
    /// Who may take it back.
    pub owner: Owner,
    /// How long it is still held, from when it was saved or loaded.
    pub left: Duration,
}

impl Store {
    /// Replaces the saved holds with `holds`, each ending `left` from now.
    pub fn save_holds(&self, holds: &[SavedHold]) -> Result<(), StoreError> {
        let now = now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM held_names", [])?;
        {
            let mut insert = tx.prepare(
                "INSERT OR REPLACE INTO held_names (name, key_id, secret_hash, until_ms)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for hold in holds {
                let until =
                    now.saturating_add(hold.left.as_millis().try_into().unwrap_or(i64::MAX));
                let (key, hash) = match &hold.owner {
                    Owner::Key(id) => (Some(id.as_str()), None),
                    Owner::Secret(hash) => (None, Some(&hash[..])),
                };
                insert.execute(params![hold.name, key, hash, until])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The saved holds still in force and not owned by a revoked key,
    /// soonest to end first. They stay saved until the next
    /// [`save_holds`](Self::save_holds) replaces them, so that a server
    /// killed between reading them and its first save finds them again.
    pub fn saved_holds(&self) -> Result<Vec<SavedHold>, StoreError> {
        let now = now_ms();
        let conn = self.conn();
        let holds = {
            let mut select = conn.prepare(
                "SELECT h.name, h.key_id, h.secret_hash, h.until_ms
                 FROM held_names h LEFT JOIN keys k ON k.id = h.key_id
                 WHERE h.until_ms > ?1 AND k.revoked_at IS NULL
                 ORDER BY h.until_ms",
            )?;
            let rows = select.query_map([now], |row| {
                let name: String = row.get(0)?;
                let key: Option<String> = row.get(1)?;
                let hash: Option<Vec<u8>> = row.get(2)?;
                let until: i64 = row.get(3)?;
                Ok((name, key, hash, until))
            })?;
            let mut holds = Vec::new();
            for row in rows {
                let (name, key, hash, until) = row?;
                let owner = match (key, hash.and_then(|h| <[u8; 32]>::try_from(h).ok())) {
                    (Some(id), _) => Owner::Key(id),
                    (None, Some(hash)) => Owner::Secret(hash),
                    // Neither (a row not written by us): nobody to hold for.
                    (None, None) => continue,
                };
                let left = Duration::from_millis(until.saturating_sub(now).try_into().unwrap_or(0));
                holds.push(SavedHold { name, owner, left });
            }
            holds
        };
        Ok(holds)
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    super::since_epoch()
        .as_millis()
        .try_into()
        .unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::TempDir;

    fn hold(name: &str, owner: Owner, secs: u64) -> SavedHold {
        SavedHold {
            name: name.into(),
            owner,
            left: Duration::from_secs(secs),
        }
    }

    #[test]
    fn saved_holds_come_back_soonest_first_with_what_is_left() {
        let dir = TempDir::new();
        let store = Store::open(&dir.0).unwrap();
        let key = store.create_key("k").unwrap().info.id;
        store
            .save_holds(&[
                hold("later", Owner::Secret([7; 32]), 30),
                hold("sooner", Owner::Key(key.clone()), 10),
            ])
            .unwrap();
        // Another handle on the same file: what a restarted server opens.
        drop(store);
        let store = Store::open(&dir.0).unwrap();
        let taken = store.saved_holds().unwrap();
        let names: Vec<_> = taken.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["sooner", "later"]);
        assert_eq!(taken[0].owner, Owner::Key(key));
        assert_eq!(taken[1].owner, Owner::Secret([7; 32]));
        assert!(
            taken[0].left <= Duration::from_secs(10) && taken[0].left > Duration::from_secs(8),
            "{:?}",
            taken[0].left
        );
        // Read, they stay saved: a server killed before its first save
        // (the holds had been deleted as they were read) finds them again.
        drop(store);
        let store = Store::open(&dir.0).unwrap();
        let again: Vec<_> = store
            .saved_holds()
            .unwrap()
            .into_iter()
            .map(|h| h.name)
            .collect();
        assert_eq!(again, ["sooner", "later"], "still saved after being read");
        store.save_holds(&[]).unwrap();
        assert!(
            store.saved_holds().unwrap().is_empty(),
            "until the next save"
        );
    }

    #[test]
    fn ended_holds_and_revoked_keys_holds_are_not_taken_back() {
        let dir = TempDir::new();
        let store = Store::open(&dir.0).unwrap();
        let live = store.create_key("live").unwrap().info.id;
        let revoked = store.create_key("revoked").unwrap().info.id;
        store
            .save_holds(&[
                hold("over", Owner::Key(live.clone()), 0),
                hold("revoked", Owner::Key(revoked.clone()), 30),
                hold("kept", Owner::Key(live), 30),
            ])
            .unwrap();
        store.revoke_key(&revoked).unwrap();
        let taken = store.saved_holds().unwrap();
        let names: Vec<_> = taken.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["kept"]);
    }

    #[test]
    fn saving_replaces_what_was_saved() {
        let dir = TempDir::new();
        let store = Store::open(&dir.0).unwrap();
        let owner = Owner::Secret([1; 32]);
        store.save_holds(&[hold("a", owner.clone(), 30)]).unwrap();
        store.save_holds(&[hold("b", owner, 30)]).unwrap();
        let names: Vec<_> = store
            .saved_holds()
            .unwrap()
            .into_iter()
            .map(|h| h.name)
            .collect();
        assert_eq!(names, ["b"]);
    }
}
