//! Reserved names: a subdomain that only one key may claim, kept across
//! restarts; and reserved ports: a TCP tunnel's public port that only one
//! key may be given.
//!
//! A reservation does not open a tunnel: while its owner is not connected,
//! visitors get 404 as for any free name. It only decides who may take the
//! name: a client presenting the owner's key. Names of the generated shape
//! (`tunnel-...`) cannot be reserved, so a generated name never needs a
//! lookup.

use cryptun_proto::Subdomain;
use cryptun_proto::name::GENERATED_PREFIX;
use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, now_unix};

/// A reserved name and its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The subdomain label (lowercase).
    pub name: String,
    /// The key that may claim it.
    pub key_id: String,
    /// Unix seconds.
    pub created_at: i64,
}

impl Store {
    /// Reserves `name` for key `key_id` (which must exist and be live).
    /// Reserving a name the key already holds is a no-op.
    pub fn reserve(&self, key_id: &str, name: &str) -> Result<Reservation, StoreError> {
        let name = reservable(name)?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        live_key(&tx, key_id)?;
        if let Some(owner) = reserved_by(&tx, &name)? {
            if owner != key_id {
                return Err(StoreError::NameTaken {
                    name,
                    key_id: owner,
                });
            }
        }
        let created_at = now_unix();
        tx.execute(
            "INSERT OR IGNORE INTO reserved_names (name, key_id, created_at) VALUES (?1, ?2, ?3)",
            params![name, key_id, created_at],
        )?;
        tx.commit()?;
        Ok(Reservation {
            name,
            key_id: key_id.to_owned(),
            created_at,
        })
    }

    /// Removes the reservation of `name`; returns whether there was one.
    pub fn unreserve(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_ascii_lowercase();
        let removed = self
            .conn()
            .execute("DELETE FROM reserved_names WHERE name = ?1", [name])?;
        Ok(removed == 1)
    }

    /// Every reservation, by name.
    pub fn reservations(&self) -> Result<Vec<Reservation>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT name, key_id, created_at FROM reserved_names ORDER BY name")?;
        let rows = stmt.query_map([], |row| {
            Ok(Reservation {
                name: row.get(0)?,
                key_id: row.get(1)?,
                created_at: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The key that `name` (a valid, lowercase label) is reserved for.
    pub fn reserved_for(&self, name: &str) -> Result<Option<String>, StoreError> {
        match Subdomain::parse(name) {
            Ok(name) if !name.is_generated() => Ok(reserved_by(&self.conn(), name.as_str())?),
            _ => Ok(None),
        }
    }
}

/// A TCP port reserved for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortReservation {
    /// The public port.
    pub port: u16,
    /// The key that may be given it.
    pub key_id: String,
    /// Unix seconds.
    pub created_at: i64,
}

impl Store {
    /// Reserves TCP `port` for key `key_id` (which must exist and be
    /// live). Reserving a port the key already holds is a no-op.
    pub fn reserve_port(&self, key_id: &str, port: u16) -> Result<PortReservation, StoreError> {
        if port == 0 {
            return Err(StoreError::InvalidPort);
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        live_key(&tx, key_id)?;
        let owner: Option<String> = tx
            .query_row(
                "SELECT key_id FROM reserved_ports WHERE port = ?1",
                [port],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(owner) = owner.filter(|owner| owner != key_id) {
            return Err(StoreError::PortTaken {
                port,
                key_id: owner,
            });
        }
        let created_at = now_unix();
        tx.execute(
            "INSERT OR IGNORE INTO reserved_ports (port, key_id, created_at) VALUES (?1, ?2, ?3)",
            params![port, key_id, created_at],
        )?;
        tx.commit()?;
        Ok(PortReservation {
            port,
            key_id: key_id.to_owned(),
            created_at,
        })
    }

    /// Removes the reservation of `port`; returns whether there was one.
    pub fn unreserve_port(&self, port: u16) -> Result<bool, StoreError> {
        let removed = self
            .conn()
            .execute("DELETE FROM reserved_ports WHERE port = ?1", [port])?;
        Ok(removed == 1)
    }

    /// Every reserved port, in order.
    pub fn port_reservations(&self) -> Result<Vec<PortReservation>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT port, key_id, created_at FROM reserved_ports ORDER BY port")?;
        let rows = stmt.query_map([], |row| {
            Ok(PortReservation {
                port: row.get(0)?,
                key_id: row.get(1)?,
                created_at: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Refuses `key_id` unless it is a live key.
fn live_key(conn: &rusqlite::Connection, key_id: &str) -> Result<(), StoreError> {
    let revoked: Option<Option<i64>> = conn
        .query_row(
            "SELECT revoked_at FROM keys WHERE id = ?1",
            [key_id],
            |row| row.get(0),
        )
        .optional()?;
    match revoked {
        None => Err(StoreError::NoSuchKey(key_id.to_owned())),
        Some(Some(_)) => Err(StoreError::Revoked(key_id.to_owned())),
        Some(None) => Ok(()),
    }
}

/// `name` as it is stored (a lowercase label), if it may be reserved: a
/// valid subdomain, not of the generated shape.
pub(crate) fn reservable(name: &str) -> Result<String, StoreError> {
    let name = Subdomain::parse(name).map_err(|err| StoreError::InvalidName(err.to_string()))?;
    if name.is_generated() {
        return Err(StoreError::InvalidName(format!(
            "names starting with {GENERATED_PREFIX:?} are generated ones and cannot be reserved"
        )));
    }
    Ok(name.into())
}

fn reserved_by(conn: &rusqlite::Connection, name: &str) -> Result<Option<String>, rusqlite::Error> {
    conn.query_row(
        "SELECT key_id FROM reserved_names WHERE name = ?1",
        [name],
        |row| row.get(0),
    )
    .optional()
}

#[cfg(test)]
mod tests {
    use super::super::tests::TempDir;
    use super::*;

    #[test]
    fn a_name_is_reserved_for_one_key() {
        let dir = TempDir::new();
        let store = Store::open(&dir.0).unwrap();
        let a = store.create_key("a").unwrap().info.id;
        let b = store.create_key("b").unwrap().info.id;
        store.reserve(&a, "MyApp").unwrap();
        assert_eq!(store.reserved_for("myapp").unwrap(), Some(a.clone()));
        // Idempotent for the owner, refused for anyone else.
        store.reserve(&a, "myapp").unwrap();
        assert!(matches!(
            store.reserve(&b, "myapp"),
            Err(StoreError::NameTaken { key_id, .. }) if key_id == a
        ));
        assert_eq!(store.list_keys().unwrap()[0].reserved, vec!["myapp"]);
        assert_eq!(store.reservations().unwrap().len(), 1);

        assert!(store.unreserve("MYAPP").unwrap());
        assert!(!store.unreserve("myapp").unwrap());
        assert_eq!(store.reserved_for("myapp").unwrap(), None);
        store.reserve(&b, "myapp").unwrap();
    }

    #[test]
    fn a_port_is_reserved_for_one_live_key() {
        let dir = TempDir::new();
        let store = Store::open(&dir.0).unwrap();
        let a = store.create_key("a").unwrap().info.id;
        let b = store.create_key("b").unwrap().info.id;
        store.reserve_port(&a, 20022).unwrap();
        store.reserve_port(&a, 20022).unwrap();
        assert!(matches!(
            store.reserve_port(&b, 20022),
            Err(StoreError::PortTaken { port: 20022, key_id }) if key_id == a
        ));
        assert!(matches!(
            store.reserve_port(&a, 0),
            Err(StoreError::InvalidPort)
        ));
        assert!(matches!(
            store.reserve_port("nosuchid", 1),
            Err(StoreError::NoSuchKey(_))
        ));
        store.revoke_key(&b).unwrap();
        assert!(matches!(
            store.reserve_port(&b, 2),
            Err(StoreError::Revoked(_))
        ));
        assert_eq!(store.list_keys().unwrap()[0].reserved_ports, [20022]);
        assert_eq!(store.port_reservations().unwrap().len(), 1);
        assert!(store.unreserve_port(20022).unwrap());
        assert!(!store.unreserve_port(20022).unwrap());
        assert!(store.port_reservations().unwrap().is_empty());
    }

    #[test]
    fn bad_names_and_keys_are_refused() {
        let dir = TempDir::new();
        let store = Store::open(&dir.0).unwrap();
        let a = store.create_key("a").unwrap().info.id;
        for bad in ["", "-x", "a.b", "tunnel-abcdefghij", &"x".repeat(64)] {
            assert!(
                matches!(store.reserve(&a, bad), Err(StoreError::InvalidName(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            store.reserve("nosuchid", "app"),
            Err(StoreError::NoSuchKey(_))
        ));
        store.revoke_key(&a).unwrap();
        assert!(matches!(
            store.reserve(&a, "app"),
            Err(StoreError::Revoked(_))
        ));
    }

    #[test]
    fn revoking_keeps_the_reservation() {
        let dir = TempDir::new();
        let store = Store::open(&dir.0).unwrap();
        let a = store.create_key("a").unwrap().info.id;
        store.reserve(&a, "app").unwrap();
        store.revoke_key(&a).unwrap();
        assert_eq!(store.reserved_for("app").unwrap(), Some(a));
    }
}
