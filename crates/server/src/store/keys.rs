//! API keys: created by `cryptun keys create`, presented by clients as
//! `token` in `create_tunnel`, checked by the server at the handshake.
//!
//! A token is `ck_{id}_{secret}`: `id` is 8 characters naming the key (it
//! is not secret: `cryptun keys list` shows it, logs name it), `secret` is
//! 40 characters of `[a-z2-7]` from the operating system's CSPRNG, 200
//! bits. The token is shown once, when created; the database keeps only
//! its SHA-256.
//!
//! Why a plain SHA-256 and not a slow password hash (argon2, bcrypt): slow
//! hashes exist to make guessing *low-entropy* passwords from a stolen hash
//! expensive. A 200-bit random token cannot be guessed from its hash at any
//! speed, so a fast hash loses nothing, and it keeps a handshake cheap, so
//! a flood of bad keys costs the server microseconds, not CPU-seconds.
//!
//! A key is checked by looking its row up by `id` and comparing the hash of
//! the whole presented token with the stored one in constant time.

use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use cryptun_proto::Secret;

use super::{Store, StoreError, now_unix};

/// Every token starts with this, so it is recognisable in a config file
/// (and by secret scanners).
pub const TOKEN_PREFIX: &str = "ck_";
/// Characters in a key id: 40 bits, enough to stay unique among the keys
/// one server issues (a collision is retried).
pub(crate) const ID_LEN: usize = 8;
/// Characters in a token's secret part: 200 bits.
pub(crate) const SECRET_LEN: usize = 40;
/// Longest human name for a key.
pub(crate) const MAX_NAME: usize = 64;

/// A key as listed (never its token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key's public id.
    pub id: String,
    /// What the operator called it.
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, if revoked.
    pub revoked_at: Option<i64>,
    /// The names reserved for it, sorted.
    pub reserved: Vec<String>,
    /// The TCP ports reserved for it, in order.
    pub reserved_ports: Vec<u16>,
}

/// A key just created, with the only copy of its token.
#[derive(Debug)]
pub struct NewKey {
    /// The stored part.
    pub info: KeyInfo,
    /// The token to hand to the client; not stored anywhere.
    pub token: Secret,
}

/// The SHA-256 of a token, as stored.
pub fn token_hash(token: &Secret) -> [u8; 32] {
    Sha256::digest(token.expose().as_bytes()).into()
}

/// `name` trimmed, if it is a valid name for a key: 1 to [`MAX_NAME`]
/// printable characters.
pub(crate) fn key_name(name: &str) -> Result<&str, StoreError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(StoreError::InvalidName(format!(
            "a key name is 1 to {MAX_NAME} printable characters"
        )));
    }
    Ok(name)
}

/// Whether `id` has the shape of the ids [`Store::create_key`] draws
/// ([`ID_LEN`] characters of `[a-z2-7]`): one of another shape could never
/// be presented in a token (see [`token_id`]).
pub(crate) fn is_key_id(id: &str) -> bool {
    cryptun_proto::is_random_id(id, ID_LEN)
}

/// The key id inside a well-formed token.
pub(crate) fn token_id(token: &Secret) -> Option<&str> {
    let rest = token.expose().strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == ID_LEN && !secret.is_empty()).then_some(id)
}

impl Store {
    /// Creates a key called `name` and returns it with its token.
    pub fn create_key(&self, name: &str) -> Result<NewKey, StoreError> {
        let name = key_name(name)?;
        let conn = self.conn();
        let created_at = now_unix();
        loop {
            let id = cryptun_proto::random_id(ID_LEN);
            let token = Secret::generate(&format!("{TOKEN_PREFIX}{id}_"), SECRET_LEN);
            let inserted = conn.execute(
                "INSERT OR IGNORE INTO keys (id, name, hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![id, name, token_hash(&token).as_slice(), created_at],
            )?;
            if inserted == 1 {
                let info = KeyInfo {
                    id,
                    name: name.to_owned(),
                    created_at,
                    revoked_at: None,
                    reserved: Vec::new(),
                    reserved_ports: Vec::new(),
                };
                return Ok(NewKey { info, token });
            }
            // The id collided with an existing key's: draw again.
        }
    }

    /// Every key, oldest first, with its reserved names and ports.
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>, StoreError> {
        let conn = self.conn();
        let mut keys = conn
            .prepare(
                "SELECT id, name, created_at, revoked_at FROM keys ORDER BY created_at, rowid",
            )?
            .query_map([], |row| {
                Ok(KeyInfo {
                    id: row.get(0)?,
                    name: row.get(1)?,
                    created_at: row.get(2)?,
                    revoked_at: row.get(3)?,
                    reserved: Vec::new(),
                    reserved_ports: Vec::new(),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut names =
            conn.prepare("SELECT name FROM reserved_names WHERE key_id = ?1 ORDER BY name")?;
        let mut ports =
            conn.prepare("SELECT port FROM reserved_ports WHERE key_id = ?1 ORDER BY port")?;
        for key in &mut keys {
            key.reserved = names
                .query_map([&key.id], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            key.reserved_ports = ports
                .query_map([&key.id], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
        }
        Ok(keys)
    }

    /// Revokes key `id`: from now on its token opens no tunnel, and a
    /// running server closes the sessions opened with it within its
    /// `revocation_poll` interval. Its
    /// reserved names stay reserved (claimable by nobody) until
    /// unreserved, so revoking a leaked key does not hand its names to the
    /// first comer.
    pub fn revoke_key(&self, id: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        let changed = conn.execute(
            "UPDATE keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, now_unix()],
        )?;
        if changed == 1 {
            self.revoked_locally();
            return Ok(());
        }
        let exists: Option<i64> = conn
            .query_row("SELECT 1 FROM keys WHERE id = ?1", [id], |row| row.get(0))
            .optional()?;
        match exists {
            Some(_) => Err(StoreError::Revoked(id.to_owned())),
            None => Err(StoreError::NoSuchKey(id.to_owned())),
        }
    }

    /// The ids of every revoked key. Revocation is an operator's act, so
    /// the list stays short; the server keeps it to cut live sessions.
    pub fn revoked_ids(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn();
        let ids = conn
            .prepare("SELECT id FROM keys WHERE revoked_at IS NOT NULL")?
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }

    /// The id of the live key whose token this is, or `None` (malformed,
    /// unknown, wrong secret or revoked: the caller learns no more).
    pub fn verify(&self, token: &Secret) -> Result<Option<String>, StoreError> {
        Ok(self.identify(token)?.map(|(id, _)| id))
    }

    /// Like [`verify`](Self::verify), with the key's name: `(id, name)`.
    pub fn identify(&self, token: &Secret) -> Result<Option<(String, String)>, StoreError> {
        let Some(id) = token_id(token) else {
            return Ok(None);
        };
        let row: Option<(Vec<u8>, Option<i64>, String)> = self
            .conn()
            .query_row(
                "SELECT hash, revoked_at, name FROM keys WHERE id = ?1",
                [id],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?;
        let Some((stored, revoked_at, name)) = row else {
            return Ok(None);
        };
        let matches: bool = stored.as_slice().ct_eq(&token_hash(token)).into();
        Ok((matches && revoked_at.is_none()).then(|| (id.to_owned(), name)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::TempDir;
    use super::*;

    #[test]
    fn a_created_key_verifies_until_revoked() {
        let dir = TempDir::new();
        let store = Store::open(&dir.0).unwrap();
        let key = store.create_key("laptop").unwrap();
        let token = key.token.expose();
        assert!(
            token.starts_with(&format!("ck_{}_", key.info.id)),
            "{token}"
        );
        assert_eq!(token.len(), 3 + ID_LEN + 1 + SECRET_LEN);
        assert_eq!(store.verify(&key.token).unwrap(), Some(key.info.id.clone()));
        let named = (key.info.id.clone(), "laptop".to_owned());
        assert_eq!(store.identify(&key.token).unwrap(), Some(named));

        store.revoke_key(&key.info.id).unwrap();
        assert_eq!(store.verify(&key.token).unwrap(), None);
        assert!(store.list_keys().unwrap()[0].revoked_at.is_some());
        assert!(matches!(
            store.revoke_key(&key.info.id),
            Err(StoreError::Revoked(_))
        ));
        assert_eq!(
            store.revoked_ids().unwrap(),
            std::slice::from_ref(&key.info.id)
        );
        assert!(matches!(
            store.revoke_key("nosuchid"),
            Err(StoreError::NoSuchKey(_))
        ));
    }

    #[test]
    fn wrong_or_malformed_tokens_do_not_verify() {
        let dir = TempDir::new();
        let store = Store::open(&dir.0).unwrap();
        let key = store.create_key("ci").unwrap();
        let id = &key.info.id;
        let mut flipped = key.token.expose().to_owned();
        let last = if flipped.ends_with('a') { "b" } else { "a" };
        flipped.replace_range(flipped.len() - 1.., last);
        for bad in [
            flipped.as_str(),
            &format!("ck_{id}_"),
            &format!("ck_{id}"),
            &format!("ck_aaaaaaaa_{}", &key.token.expose()[12..]),
            "",
            "ck_",
            "not a token",
        ] {
            assert_eq!(store.verify(&Secret::new(bad)).unwrap(), None, "{bad:?}");
        }
    }

    #[test]
    fn the_database_holds_the_hash_not_the_token() {
        let dir = TempDir::new();
        let store = Store::open(&dir.0).unwrap();
        let key = store.create_key("laptop").unwrap();
        let secret_part = &key.token.expose()[3 + ID_LEN + 1..];
        // Checkpoint the WAL so the file on disk holds everything.
        store
            .conn()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        drop(store);
        for entry in std::fs::read_dir(&dir.0).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(secret_part), "the token is stored in clear");
        }
    }

    #[test]
    fn key_names_are_checked() {
        let dir = TempDir::new();
        let store = Store::open(&dir.0).unwrap();
        for bad in ["", "   ", "a\nb", &"x".repeat(MAX_NAME + 1)] {
            assert!(store.create_key(bad).is_err(), "{bad:?}");
        }
    }
}
