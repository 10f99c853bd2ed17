//! Export from, and import into, a server's database.
//!
//! An import is one transaction: the target is read, the [`plan`] made
//! and every write done inside it, so a conflict (or a failure half-way)
//! leaves the database as it was, and a server reading it meanwhile sees
//! all of it or none.
//!
//! Held names are the rows a server saved and takes back at its next start
//! (`super::super::holds`): import them while the server is stopped. A
//! running server writes its own holds over the table within a second of
//! any change, imported ones included.

use std::collections::HashSet;

use rusqlite::{Connection, params};

use super::{
    Action, Document, HoldRecord, KeyRecord, PortReservationRecord, ReservationRecord, Summary,
    TransferError,
};
use super::{Sha256, plan};
use crate::store::holds::now_ms;
use crate::store::{Store, StoreError, now_unix};

impl Store {
    /// Every key (with its token's hash), reservation, and saved hold
    /// still in force.
    pub fn export(&self) -> Result<Document, StoreError> {
        read(&self.conn(), now_ms())
    }

    /// Imports `document` (see [`plan`]), all of it or nothing.
    pub fn import(&self, document: &Document, replace: bool) -> Result<Summary, TransferError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(StoreError::from)?;
        let now = now_ms();
        let target = read(&tx, now)?;
        // A stopped server's holds are rows: none is served live.
        let plan = plan(&target, &HashSet::new(), document, replace, now)
            .map_err(TransferError::Conflicts)?;
        write(&tx, &plan).map_err(StoreError::from)?;
        tx.commit().map_err(StoreError::from)?;
        let summary = plan.summary();
        if summary.keys.updated > 0 {
            self.revoked_locally();
        }
        Ok(summary)
    }
}

fn read(conn: &Connection, now_ms: i64) -> Result<Document, StoreError> {
    let keys = conn
        .prepare(
            "SELECT id, name, hash, created_at, revoked_at FROM keys ORDER BY created_at, rowid",
        )?
        .query_map([], |row| {
            let hash: Vec<u8> = row.get(2)?;
            Ok((row.get(0)?, row.get(1)?, hash, row.get(3)?, row.get(4)?))
        })?
        .map(|row| {
            let (id, name, hash, created_at, revoked_at): (String, _, _, _, _) = row?;
            let hash = <[u8; 32]>::try_from(hash).map_err(|_| {
                StoreError::Corrupt(format!("a hash of the wrong length for key {id}"))
            })?;
            Ok(KeyRecord {
                id,
                name,
                token_sha256: Sha256(hash),
                created_at,
                revoked_at,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let reservations = conn
        .prepare("SELECT name, key_id, created_at FROM reserved_names")?
        .query_map([], |row| {
            Ok(ReservationRecord {
                name: row.get(0)?,
                key_id: row.get(1)?,
                created_at: row.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let holds = conn
        // As `Store::saved_holds` reads them: in force, and not a revoked
        // key's (revoking a key ends its holds).
        .prepare(
            "SELECT h.name, h.key_id, h.secret_hash, h.until_ms
             FROM held_names h LEFT JOIN keys k ON k.id = h.key_id
             WHERE h.until_ms > ?1 AND k.revoked_at IS NULL",
        )?
        .query_map([now_ms], |row| {
            let hash: Option<Vec<u8>> = row.get(2)?;
            Ok(HoldRecord {
                name: row.get(0)?,
                key_id: row.get(1)?,
                secret_sha256: hash.and_then(|h| <[u8; 32]>::try_from(h).ok()).map(Sha256),
                until_ms: row.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    // A row with no readable owner (not written by us) holds for nobody.
    let holds = holds.into_iter().filter(|h| h.owner().is_some()).collect();
    let ports = conn
        .prepare("SELECT port, key_id, created_at FROM reserved_ports")?
        .query_map([], |row| {
            Ok(PortReservationRecord {
                port: row.get(0)?,
                key_id: row.get(1)?,
                created_at: row.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Document::new(keys, reservations, holds).with_ports(ports))
}

fn write(conn: &Connection, plan: &super::Plan) -> Result<(), rusqlite::Error> {
    for (key, action) in &plan.keys {
        let hash = &key.token_sha256.0[..];
        match action {
            Action::Add => conn.execute(
                "INSERT INTO keys (id, name, hash, created_at, revoked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key.id, key.name, hash, key.created_at, key.revoked_at],
            )?,
            Action::Replace => conn.execute(
                "UPDATE keys SET name = ?2, hash = ?3, created_at = ?4, revoked_at = ?5
                 WHERE id = ?1",
                params![key.id, key.name, hash, key.created_at, key.revoked_at],
            )?,
            Action::Revoke => conn.execute(
                "UPDATE keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![key.id, key.revoked_at],
            )?,
            Action::Unchanged | Action::Ended => 0,
        };
    }
    for (reservation, action) in &plan.reservations {
        if matches!(action, Action::Add | Action::Replace) {
            conn.execute(
                "INSERT OR REPLACE INTO reserved_names (name, key_id, created_at)
                 VALUES (?1, ?2, ?3)",
                params![
                    reservation.name,
                    reservation.key_id,
                    reservation.created_at.unwrap_or_else(now_unix)
                ],
            )?;
        }
    }
    for (reserved, action) in &plan.port_reservations {
        if matches!(action, Action::Add | Action::Replace) {
            conn.execute(
                "INSERT OR REPLACE INTO reserved_ports (port, key_id, created_at)
                 VALUES (?1, ?2, ?3)",
                params![
                    reserved.port,
                    reserved.key_id,
                    reserved.created_at.unwrap_or_else(now_unix)
                ],
            )?;
        }
    }
    for (hold, action) in &plan.holds {
        if matches!(action, Action::Add | Action::Replace) {
            conn.execute(
                "INSERT OR REPLACE INTO held_names (name, key_id, secret_hash, until_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    hold.name,
                    hold.key_id,
                    hold.secret_sha256.map(|h| h.0.to_vec()),
                    hold.until_ms
                ],
            )?;
        }
    }
    Ok(())
}
