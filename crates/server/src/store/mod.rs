//! The server's durable state: API keys, reserved names, and the names held
//! for reconnection while the server restarts, in an embedded SQLite
//! database (`cryptun.db`) in the data directory.
//!
//! The database is created on first use and brought up to date by an
//! ordered list of migrations: `PRAGMA user_version` counts those applied,
//! and each one that is missing runs in its own transaction. A database
//! from a newer cryptun (a higher version than this build knows) is
//! refused rather than guessed at.
//!
//! What is stored, and why it is safe to keep: a key's *hash* (SHA-256 of
//! the token), never the token; its id, name and dates; and which key owns
//! which reserved name; across a restart, which names are held for whom
//! (a key id, or the hash of a reconnect secret) and until when; with ACME,
//! the account keys and the certificates' private keys (the file is the
//! owner's only, in a directory that is too). See `docs/SECURITY.md`.
//!
//! rusqlite is blocking. The server touches the store at handshake time
//! (one indexed lookup to check a key, one to check a reserved name) and
//! every few seconds to notice revocations ([`Store::revision`], then the
//! revoked ids when it moved), and does so through [`Store::call`] (the blocking pool), so a slow disk never
//! stalls the runtime; the `cryptun keys` commands call it directly. Both
//! may run at once against the same file: the database is in WAL mode with
//! a busy timeout, so a writer (the CLI) and a reader (the server) do not
//! trip over each other.
//!
//! # Layout
//!
//! - this file: opening, pragmas, migrations, errors.
//! - [`keys`]: creating, listing, revoking and checking API keys.
//! - [`names`]: reserving names for keys.
//! - [`holds`]: names held for reconnection, saved as they change and
//!   taken back at start.
//! - [`transfer`]: all of it as one JSON document, to move it to a
//!   cluster's store and back (`cryptun keys export|import`).
//! - [`acme`]: the ACME accounts and the certificates obtained with them.

pub mod acme;
pub mod holds;
pub mod keys;
pub mod names;
pub mod transfer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cryptun_proto::Secret;
use rusqlite::Connection;

pub use holds::{Owner, SavedHold};
pub use keys::{KeyInfo, NewKey};
pub use names::{PortReservation, Reservation};

/// The database file inside the data directory.
pub const DB_FILE: &str = "cryptun.db";

/// What [`Store::path`] says of a database in memory (SQLite's own name).
const IN_MEMORY: &str = ":memory:";

/// How long a statement waits for another process's write lock (the CLI
/// writing while the server reads) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations, oldest first. Entry `i` takes the database from
/// `user_version` `i` to `i + 1`. Never edit one that has shipped: append.
const MIGRATIONS: &[&str] = &[
    // 1: keys and reserved names.
    "CREATE TABLE keys (
        id         TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        hash       BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE TABLE reserved_names (
        name       TEXT PRIMARY KEY,
        key_id     TEXT NOT NULL REFERENCES keys(id),
        created_at INTEGER NOT NULL
    );
    CREATE INDEX reserved_names_by_key ON reserved_names(key_id);",
    // 2: names held for reconnection across a restart (written at shutdown,
    // read and emptied at start). One owner each: a key or a secret's hash.
    "CREATE TABLE held_names (
        name        TEXT PRIMARY KEY,
        key_id      TEXT,
        secret_hash BLOB,
        until_ms    INTEGER NOT NULL,
        CHECK ((key_id IS NULL) <> (secret_hash IS NULL))
    );",
    // 3: TCP ports reserved for a key.
    "CREATE TABLE reserved_ports (
        port       INTEGER PRIMARY KEY CHECK (port BETWEEN 1 AND 65535),
        key_id     TEXT NOT NULL REFERENCES keys(id),
        created_at INTEGER NOT NULL
    );
    CREATE INDEX reserved_ports_by_key ON reserved_ports(key_id);",
    // 4: ACME: each directory's account, and the certificates obtained.
    "CREATE TABLE acme_accounts (
        directory   TEXT PRIMARY KEY,
        credentials TEXT NOT NULL,
        created_at  INTEGER NOT NULL
    );
    CREATE TABLE acme_certificates (
        name       TEXT PRIMARY KEY,
        chain      TEXT NOT NULL,
        key        TEXT NOT NULL,
        not_after  INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// What went wrong with the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created or opened.
    #[error("data directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The task running a store call failed (it panicked).
    #[error("store task failed: {0}")]
    Task(String),
    /// The database was written by a newer cryptun.
    #[error(
        "the database has schema version {found}, newer than this cryptun knows ({known}); upgrade cryptun"
    )]
    TooNew {
        /// Version in the file.
        found: u32,
        /// Newest version this build knows.
        known: u32,
    },
    /// No key has this id.
    #[error("no key with id {0:?}")]
    NoSuchKey(String),
    /// The key was revoked.
    #[error("key {0:?} is revoked")]
    Revoked(String),
    /// The name cannot be reserved (not a DNS label, or generated-looking).
    #[error("{0}")]
    InvalidName(String),
    /// Another key already holds the reservation.
    #[error("{name:?} is already reserved for key {key_id:?}")]
    NameTaken {
        /// The name.
        name: String,
        /// Its owner.
        key_id: String,
    },
    /// Port 0 is no port to reserve.
    #[error("port 0 cannot be reserved (1-65535)")]
    InvalidPort,
    /// Another key already holds the port's reservation.
    #[error("port {port} is already reserved for key {key_id:?}")]
    PortTaken {
        /// The port.
        port: u16,
        /// Its owner.
        key_id: String,
    },
    /// A row this build cannot read.
    #[error("the database holds {0}")]
    Corrupt(String),
    /// The cluster's shared store failed or could not be reached.
    #[error("the cluster store: {0}")]
    Shared(String),
}

/// What the control stage asks of the keys and reserved names, wherever
/// they are kept: in this server's SQLite ([`Store`]) or, in a cluster,
/// shared through Redis (`crate::cluster::keys`).
pub trait Keys: Send + Sync + 'static {
    /// The id and name of the live key `token` is, if it is one.
    fn identify(
        &self,
        token: Secret,
    ) -> BoxFuture<'_, Result<Option<(String, String)>, StoreError>>;

    /// The id of the key `name` is reserved for, if it is.
    fn reserved_for(&self, name: String) -> BoxFuture<'_, Result<Option<String>, StoreError>>;

    /// Every TCP port reserved for a key, with the key's id.
    fn reserved_ports(&self) -> BoxFuture<'_, Result<Vec<(u16, String)>, StoreError>>;

    /// A value that changes whenever keys may have been revoked.
    fn revision(&self) -> BoxFuture<'_, Result<(i64, u64), StoreError>>;

    /// Every revoked key's id.
    fn revoked_ids(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>>;
}

/// A future a [`Keys`] returns.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Keys for Store {
    fn identify(
        &self,
        token: Secret,
    ) -> BoxFuture<'_, Result<Option<(String, String)>, StoreError>> {
        Box::pin(self.call(move |store| store.identify(&token)))
    }

    fn reserved_for(&self, name: String) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        Box::pin(self.call(move |store| store.reserved_for(&name)))
    }

    fn reserved_ports(&self) -> BoxFuture<'_, Result<Vec<(u16, String)>, StoreError>> {
        Box::pin(self.call(|store| {
            let all = store.port_reservations()?;
            Ok(all.into_iter().map(|r| (r.port, r.key_id)).collect())
        }))
    }

    fn revision(&self) -> BoxFuture<'_, Result<(i64, u64), StoreError>> {
        Box::pin(self.call(Store::revision))
    }

    fn revoked_ids(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(self.call(Store::revoked_ids))
    }
}

/// A handle on the database; cheap to clone, shared by every session.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    /// Revocations made through this handle (its own connection's writes
    /// do not move `PRAGMA data_version`); see [`Store::revision`].
    local_revocations: Arc<AtomicU64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if need be) the database in `dir`, creating `dir`
    /// readable by its owner only, and applies any missing migrations.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let dir_error = |source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        };
        create_private_dir(dir).map_err(dir_error)?;
        let path = dir.join(DB_FILE);
        create_private_file(&path).map_err(dir_error)?;
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // WAL lets the server read while `cryptun keys` writes.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path,
            local_revocations: Arc::default(),
        })
    }

    /// A database in memory, for a server given no data directory (a
    /// library user's, or a test's): the same schema and rules, kept for
    /// the life of the process.
    pub fn in_memory() -> Result<Store, StoreError> {
        let mut conn = Connection::open_in_memory()?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            path: PathBuf::from(IN_MEMORY),
            local_revocations: Arc::default(),
        })
    }

    /// Whether this is a database in memory ([`Store::in_memory`]), gone
    /// with the process.
    pub fn is_in_memory(&self) -> bool {
        self.path() == Path::new(IN_MEMORY)
    }

    /// The database file (`:memory:` for [`Store::in_memory`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A number that changes whenever the database may have changed since
    /// the last call: `PRAGMA data_version` (moved by every commit of
    /// another connection, such as `cryptun keys revoke` in another
    /// process) together with the revocations made through this handle.
    /// Costs no disk read, so it can be polled every few seconds.
    pub fn revision(&self) -> Result<(i64, u64), StoreError> {
        let conn = self.conn();
        let version: i64 = conn.pragma_query_value(None, "data_version", |row| row.get(0))?;
        Ok((version, self.local_revocations.load(Ordering::Acquire)))
    }

    /// Runs `f` against the database on the blocking pool, for async
    /// callers: SQLite calls block, and a slow disk must not hold up the
    /// runtime's workers.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .unwrap_or_else(|join| Err(StoreError::Task(join.to_string())))
    }

    pub(crate) fn revoked_locally(&self) {
        self.local_revocations.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable:
        // every write runs in a transaction SQLite rolls back.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The schema version of an open database.
pub fn schema_version(conn: &Connection) -> Result<u32, rusqlite::Error> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Applies, in order, each migration the database has not had yet.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let found = schema_version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as u32 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates `path` readable by its owner only, unless it exists. SQLite
/// gives its journal files the database's mode, so they follow.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}

/// Seconds since the Unix epoch, as stored.
pub(crate) fn now_unix() -> i64 {
    since_epoch().as_secs().try_into().unwrap_or(i64::MAX)
}

/// Time since the Unix epoch (zero if the clock is before it).
fn since_epoch() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests;
