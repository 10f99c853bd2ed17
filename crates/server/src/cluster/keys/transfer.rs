//! Export from, and import into, a cluster's Redis: the same document and
//! the same [`plan`] as a server's database (`crate::store::transfer`).
//!
//! Held names are the cluster's route records (`cluster::shared`): one per
//! name, with its owner and a time to live. Each record's owner is
//! exported as a hold until Redis forgets the record, whether a tunnel
//! serves the name now or not: that is how long the name stays its
//! owner's if every node stopped now. They are found by `SCAN` on one
//! Redis; on a Redis Cluster, where a `SCAN` sees one shard, by `KEYS` on
//! every primary (the client sends it to each), which blocks each shard
//! for a moment: an export is an operator's one-off, not a node's habit.
//! An imported hold is a record with its owner and no member, what a
//! node's release leaves behind, so any node gives the name back to its
//! owner's key or reconnect secret until it lapses. A name served by
//! another owner's live tunnel is never written over.
//!
//! Unlike SQLite's, an import here is not one transaction (a Redis Cluster
//! spreads the entries over shards): the target is read and the plan made
//! first, so a conflict writes nothing; then each write is one atomic step
//! that refuses to overwrite what appeared meanwhile
//! ([`TransferError::Raced`]).

use std::collections::HashSet;

use redis::Cmd;

use super::{SharedKeys, key_key, reserved_key};
use crate::cluster::shared::{PREFIX, route_key};
use crate::store::StoreError;
use crate::store::holds::{Owner, now_ms};
use crate::store::transfer::{
    Action, Document, HoldRecord, KeyRecord, Plan, PortReservationRecord, ReservationRecord,
    Summary, TransferError, plan,
};

/// The name in a route record's key.
fn route_name(key: &str) -> Option<&str> {
    key.strip_prefix(PREFIX)?
        .strip_prefix(":{")?
        .strip_suffix("}:route")
}

impl SharedKeys {
    /// Every key (with its token's hash), reservation and held name.
    pub async fn export(&self) -> Result<Document, StoreError> {
        Ok(self.snapshot().await?.0)
    }

    /// Imports `document` (see [`plan`]): keys, then reservations, then
    /// holds.
    pub async fn import(
        &self,
        document: &Document,
        replace: bool,
    ) -> Result<Summary, TransferError> {
        let (target, live) = self.snapshot().await?;
        let plan =
            plan(&target, &live, document, replace, now_ms()).map_err(TransferError::Conflicts)?;
        self.write_keys(&plan).await?;
        self.write_reservations(&plan).await?;
        self.write_ports(&plan).await?;
        self.write_holds(&plan).await?;
        let summary = plan.summary();
        if summary.changed() {
            // Nodes poll this to notice revocations.
            self.changed().await?;
        }
        Ok(summary)
    }

    /// The store as a document, and the names a live tunnel serves now.
    async fn snapshot(&self) -> Result<(Document, HashSet<String>), StoreError> {
        let keys = self.key_records().await?;
        let reservations = self
            .reservations()
            .await?
            .into_iter()
            .map(|r| ReservationRecord {
                name: r.name,
                key_id: r.key_id,
                created_at: None,
            })
            .collect();
        let (holds, live) = self.holds().await?;
        let ports = self
            .port_reservations()
            .await?
            .into_iter()
            .map(|r| PortReservationRecord {
                port: r.port,
                key_id: r.key_id,
                created_at: Some(r.created_at),
            })
            .collect();
        let document = Document::new(keys, reservations, holds).with_ports(ports);
        Ok((document, live))
    }

    async fn key_records(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let mut keys = Vec::new();
        for stored in self.stored_all().await? {
            let id = stored.info.id;
            let Some(hash) = stored.hash else { continue };
            let token_sha256 = hash.parse().map_err(|_| {
                StoreError::Shared(format!("key {id} has a hash this cryptun cannot read"))
            })?;
            keys.push(KeyRecord {
                id,
                name: stored.info.name,
                token_sha256,
                created_at: stored.info.created_at,
                revoked_at: stored.info.revoked_at,
            });
        }
        Ok(keys)
    }

    /// Every route record's owner, as a hold until the record lapses, and
    /// the names among them a live tunnel serves.
    async fn holds(&self) -> Result<(Vec<HoldRecord>, HashSet<String>), StoreError> {
        let (mut holds, mut live) = (Vec::new(), HashSet::new());
        for name in self.route_names().await? {
            let (owner, left, serving): (String, i64, i64) = self
                .shared
                .query(
                    Cmd::new()
                        .arg("EVAL")
                        .arg(READ_ROUTE)
                        .arg(1)
                        .arg(route_key(&name)),
                )
                .await?;
            let Some(owner) = Owner::from_code(&owner).filter(|_| left > 0) else {
                continue;
            };
            if serving == 1 {
                live.insert(name.clone());
            }
            holds.push(HoldRecord::new(name, &owner, now_ms().saturating_add(left)));
        }
        Ok((holds, live))
    }

    async fn route_names(&self) -> Result<Vec<String>, StoreError> {
        let pattern = format!("{PREFIX}:{{*}}:route");
        let keys: Vec<String> = if self.shared.is_cluster() {
            self.shared
                .query(Cmd::new().arg("KEYS").arg(&pattern))
                .await?
        } else {
            let mut all = Vec::new();
            let mut cursor = "0".to_owned();
            loop {
                let (next, keys): (String, Vec<String>) = self
                    .shared
                    .query(
                        Cmd::new()
                            .arg("SCAN")
                            .arg(&cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(1000),
                    )
                    .await?;
                all.extend(keys);
                if next == "0" {
                    break all;
                }
                cursor = next;
            }
        };
        let mut names: Vec<String> = keys
            .iter()
            .filter_map(|key| route_name(key).map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn write_keys(&self, plan: &Plan) -> Result<(), TransferError> {
        for (key, action) in &plan.keys {
            match action {
                Action::Add | Action::Replace => {
                    let mut write = Cmd::new();
                    write
                        .arg("EVAL")
                        .arg(WRITE_KEY)
                        .arg(1)
                        .arg(key_key(&key.id))
                        .arg(if *action == Action::Add {
                            "add"
                        } else {
                            "replace"
                        })
                        .arg("hash")
                        .arg(key.token_sha256.to_string())
                        .arg("name")
                        .arg(&key.name)
                        .arg("created_at")
                        .arg(key.created_at)
                        .arg("seq")
                        .arg(self.next_seq().await?);
                    if let Some(at) = key.revoked_at {
                        write.arg("revoked_at").arg(at);
                    }
                    let written: i64 = self.shared.query(&write).await.map_err(store)?;
                    if written == 0 {
                        return Err(TransferError::Raced(format!("key {}", key.id)));
                    }
                    self.add_to("keys", &key.id).await?;
                }
                Action::Revoke => {
                    let at = key.revoked_at.unwrap_or_else(crate::store::now_unix);
                    let _: bool = self
                        .shared
                        .query(
                            Cmd::new()
                                .arg("HSETNX")
                                .arg(key_key(&key.id))
                                .arg("revoked_at")
                                .arg(at),
                        )
                        .await
                        .map_err(store)?;
                }
                Action::Unchanged | Action::Ended => continue,
            }
            if key.revoked_at.is_some() {
                self.add_to("revoked", &key.id).await?;
            }
        }
        Ok(())
    }

    async fn write_reservations(&self, plan: &Plan) -> Result<(), TransferError> {
        for (reservation, action) in &plan.reservations {
            if !matches!(action, Action::Add | Action::Replace) {
                continue;
            }
            let mut set = Cmd::new();
            set.arg("SET")
                .arg(reserved_key(&reservation.name))
                .arg(&reservation.key_id);
            if *action == Action::Add {
                set.arg("NX");
            }
            let done: Option<String> = self.shared.query(&set).await.map_err(store)?;
            if done.is_none() {
                return Err(TransferError::Raced(format!(
                    "the reservation of {}",
                    reservation.name
                )));
            }
            self.add_to("reserved", &reservation.name).await?;
        }
        Ok(())
    }

    async fn write_ports(&self, plan: &Plan) -> Result<(), TransferError> {
        for (reserved, action) in &plan.port_reservations {
            if !matches!(action, Action::Add | Action::Replace) {
                continue;
            }
            let created_at = reserved.created_at.unwrap_or_else(crate::store::now_unix);
            let value = format!("{} {created_at}", reserved.key_id);
            let command = match action {
                Action::Add => "HSETNX",
                _ => "HSET",
            };
            let set: i64 = self
                .shared
                .query(
                    Cmd::new()
                        .arg(command)
                        .arg(super::reserved_ports_key())
                        .arg(reserved.port)
                        .arg(value),
                )
                .await
                .map_err(store)?;
            if *action == Action::Add && set == 0 {
                return Err(TransferError::Raced(format!(
                    "the reservation of TCP port {}",
                    reserved.port
                )));
            }
        }
        Ok(())
    }

    async fn write_holds(&self, plan: &Plan) -> Result<(), TransferError> {
        for (hold, action) in &plan.holds {
            if !matches!(action, Action::Add | Action::Replace) {
                continue;
            }
            let Some(owner) = hold.owner() else { continue };
            let left = hold.until_ms.saturating_sub(now_ms()).max(1);
            let epoch = self.shared.next_epoch().await.map_err(store)?;
            let done: String = self
                .shared
                .query(
                    Cmd::new()
                        .arg("EVAL")
                        .arg(WRITE_HOLD)
                        .arg(1)
                        .arg(route_key(&hold.name))
                        .arg(owner.code())
                        .arg(epoch)
                        .arg(left)
                        .arg(if *action == Action::Replace { "1" } else { "0" }),
                )
                .await
                .map_err(store)?;
            if done != "ok" && done != "same" {
                return Err(TransferError::Raced(format!("the hold of {}", hold.name)));
            }
        }
        Ok(())
    }
}

fn store(err: super::SharedError) -> TransferError {
    TransferError::Store(err.into())
}

// KEYS[1] key; ARGV: 'add' | 'replace', then field, value, ... 0 when
// adding a key that exists (made meanwhile), else 1.
const WRITE_KEY: &str = r"
if ARGV[1] == 'add' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
";

// KEYS[1] route. {owner or '', pttl_ms, 1 if a member's lease is live}.
const READ_ROUTE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then return {'', -2, 0} end
local live = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 2) == 'm:' then
    local lease = tonumber(string.match(all[i + 1], '^(%d+)'))
    if lease and lease > now then live = 1 end
  end
end
return {owner, redis.call('PTTL', KEYS[1]), live}
";

// KEYS[1] route; ARGV: owner, epoch, hold_ms, replace ('1' or '0').
// 'same' if the owner has it already; 'live' if another owner's member
// serves it; 'held' if another owner holds it and not replacing; else the
// record becomes the owner's hold ('ok'), as a release leaves it.
const WRITE_HOLD: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner == ARGV[1] then return 'same' end
if owner then
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 'm:' then
      local lease = tonumber(string.match(all[i + 1], '^(%d+)'))
      if lease and lease > now then return 'live' end
    end
  end
  if ARGV[4] ~= '1' then return 'held' end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'epoch', ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 'ok'
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_records_are_named_as_shared_names_them() {
        assert_eq!(route_key("myapp"), "cryptun:1:{myapp}:route");
        assert_eq!(route_name("cryptun:1:{myapp}:route"), Some("myapp"));
        assert_eq!(route_name("cryptun:1:{myapp}:reserved"), None);
        assert_eq!(route_name("cryptun:1:key:{abc}"), None);
    }
}
