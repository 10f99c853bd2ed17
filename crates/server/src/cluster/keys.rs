//! API keys and reserved names shared by a cluster's nodes, in Redis: the
//! same records and rules as a single server's SQLite (`crate::store`), so
//! that a key made or revoked on one node holds on every node, and a name
//! reserved for a key is refused to others wherever they connect.
//!
//! - `cryptun:1:key:{ID}`: a hash of `name`, `hash` (the token's SHA-256,
//!   hex), `created_at`, `seq` (from the counter `cryptun:1:keys-seq`: the
//!   order keys were made in, which a second of `created_at` does not
//!   tell; keys list in it, as a server's database lists them) and, once
//!   revoked, `revoked_at`;
//! - `cryptun:1:keys` and `cryptun:1:revoked`: the sets of key ids, all and
//!   revoked;
//! - `cryptun:1:{NAME}:reserved`: the id of the key a name is reserved
//!   for, in the name's slot (beside its route); `cryptun:1:reserved`, the
//!   set of reserved names;
//! - `cryptun:1:keys-rev`: a counter moved by every change, which nodes
//!   poll to cut revoked keys' sessions within `--revocation-poll`.
//!
//! Every step touches one key, so it works on a Redis Cluster as on one
//! Redis; a reservation is taken atomically (`SET NX`).
//!
//! `transfer`: export and import, for `cryptun keys export|import`.

mod transfer;

use cryptun_proto::{Secret, Subdomain};
use redis::Cmd;
use subtle::ConstantTimeEq;

use super::shared::{PREFIX, Shared, SharedError};
use crate::store::keys::{ID_LEN, SECRET_LEN, TOKEN_PREFIX, key_name, token_hash, token_id};
use crate::store::names::reservable;
use crate::store::transfer::Sha256;
use crate::store::{BoxFuture, KeyInfo, Keys, NewKey, PortReservation, Reservation, StoreError};

/// A key's record as Redis has it.
struct Stored {
    info: KeyInfo,
    /// The token's SHA-256, hex.
    hash: Option<String>,
    /// Its place in the order keys were made (0 before that was kept).
    seq: i64,
}

/// Keys and reserved names in the cluster's Redis.
#[derive(Clone)]
pub struct SharedKeys {
    shared: Shared,
}

impl From<SharedError> for StoreError {
    fn from(err: SharedError) -> Self {
        StoreError::Shared(err.to_string())
    }
}

fn key_key(id: &str) -> String {
    format!("{PREFIX}:key:{{{id}}}")
}

fn reserved_key(name: &str) -> String {
    format!("{PREFIX}:{{{name}}}:reserved")
}

/// The TCP ports reserved for keys: port → `KEY_ID CREATED_AT`, beside the
/// ports given (`shared::ports`), in their slot.
pub(super) fn reserved_ports_key() -> String {
    format!("{PREFIX}:{{ports}}:reserved")
}

impl SharedKeys {
    /// Keys kept in `shared`.
    pub fn new(shared: Shared) -> Self {
        SharedKeys { shared }
    }

    /// The cluster store itself.
    pub(super) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Connects to the cluster store at `url` (for `cryptun keys --cluster`).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let shared = Shared::connect(url, std::time::Duration::from_secs(5)).await?;
        Ok(SharedKeys { shared })
    }

    async fn changed(&self) -> Result<(), StoreError> {
        let _: i64 = self
            .shared
            .query(Cmd::new().arg("INCR").arg(format!("{PREFIX}:keys-rev")))
            .await?;
        Ok(())
    }

    /// Makes a key named `name`; its token is shown once.
    pub async fn create_key(&self, name: &str) -> Result<NewKey, StoreError> {
        let name = key_name(name)?;
        let created_at = crate::store::now_unix();
        loop {
            let id = cryptun_proto::random_id(ID_LEN);
            let token = Secret::generate(&format!("{TOKEN_PREFIX}{id}_"), SECRET_LEN);
            let made: bool = self
                .shared
                .query(
                    Cmd::new()
                        .arg("HSETNX")
                        .arg(key_key(&id))
                        .arg("hash")
                        .arg(Sha256(token_hash(&token)).to_string()),
                )
                .await?;
            if !made {
                continue;
            }
            let _: i64 = self
                .shared
                .query(
                    Cmd::new()
                        .arg("HSET")
                        .arg(key_key(&id))
                        .arg("name")
                        .arg(name)
                        .arg("created_at")
                        .arg(created_at)
                        .arg("seq")
                        .arg(self.next_seq().await?),
                )
                .await?;
            self.add_to("keys", &id).await?;
            self.changed().await?;
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
    }

    /// Adds `member` to the set `cryptun:1:{set}`.
    async fn add_to(&self, set: &str, member: &str) -> Result<(), StoreError> {
        let mut add = Cmd::new();
        add.arg("SADD").arg(format!("{PREFIX}:{set}")).arg(member);
        let _: i64 = self.shared.query(&add).await?;
        Ok(())
    }

    /// The next place in the order keys are made in.
    async fn next_seq(&self) -> Result<i64, StoreError> {
        Ok(self
            .shared
            .query(Cmd::new().arg("INCR").arg(format!("{PREFIX}:keys-seq")))
            .await?)
    }

    async fn stored(&self, id: &str) -> Result<Option<Stored>, StoreError> {
        type Fields = (
            Option<String>,
            Option<i64>,
            Option<i64>,
            Option<String>,
            Option<i64>,
        );
        let (name, created_at, revoked_at, hash, seq): Fields = self
            .shared
            .query(
                Cmd::new()
                    .arg("HMGET")
                    .arg(key_key(id))
                    .arg("name")
                    .arg("created_at")
                    .arg("revoked_at")
                    .arg("hash")
                    .arg("seq"),
            )
            .await?;
        Ok(name.map(|name| Stored {
            info: KeyInfo {
                id: id.to_owned(),
                name,
                created_at: created_at.unwrap_or_default(),
                revoked_at,
                reserved: Vec::new(),
                reserved_ports: Vec::new(),
            },
            hash,
            seq: seq.unwrap_or_default(),
        }))
    }

    async fn key(&self, id: &str) -> Result<Option<KeyInfo>, StoreError> {
        Ok(self.stored(id).await?.map(|stored| stored.info))
    }

    /// Every key's record, oldest first, in the order they were made.
    async fn stored_all(&self) -> Result<Vec<Stored>, StoreError> {
        let ids: Vec<String> = self
            .shared
            .query(Cmd::new().arg("SMEMBERS").arg(format!("{PREFIX}:keys")))
            .await?;
        let mut all = Vec::new();
        for id in ids {
            all.extend(self.stored(&id).await?);
        }
        all.sort_by(|a, b| {
            (a.info.created_at, a.seq, &a.info.id).cmp(&(b.info.created_at, b.seq, &b.info.id))
        });
        Ok(all)
    }

    /// Every key, oldest first, with its reserved names.
    pub async fn list_keys(&self) -> Result<Vec<KeyInfo>, StoreError> {
        let reservations = self.reservations().await?;
        let ports = self.port_reservations().await?;
        let mut keys = Vec::new();
        for Stored { mut info, .. } in self.stored_all().await? {
            info.reserved = reservations
                .iter()
                .filter(|r| r.key_id == info.id)
                .map(|r| r.name.clone())
                .collect();
            info.reserved_ports = ports
                .iter()
                .filter(|r| r.key_id == info.id)
                .map(|r| r.port)
                .collect();
            keys.push(info);
        }
        Ok(keys)
    }

    /// Revokes key `id`: every node refuses it from now on and cuts its
    /// sessions within its revocation poll.
    pub async fn revoke_key(&self, id: &str) -> Result<(), StoreError> {
        match self.key(id).await? {
            None => return Err(StoreError::NoSuchKey(id.to_owned())),
            Some(key) if key.revoked_at.is_some() => {
                return Err(StoreError::Revoked(id.to_owned()));
            }
            Some(_) => {}
        }
        let _: i64 = self
            .shared
            .query(
                Cmd::new()
                    .arg("HSET")
                    .arg(key_key(id))
                    .arg("revoked_at")
                    .arg(crate::store::now_unix()),
            )
            .await?;
        self.add_to("revoked", id).await?;
        self.changed().await
    }

    /// Reserves `name` for key `key_id`.
    pub async fn reserve(&self, key_id: &str, name: &str) -> Result<Reservation, StoreError> {
        let name = reservable(name)?;
        match self.key(key_id).await? {
            None => return Err(StoreError::NoSuchKey(key_id.to_owned())),
            Some(key) if key.revoked_at.is_some() => {
                return Err(StoreError::Revoked(key_id.to_owned()));
            }
            Some(_) => {}
        }
        let set: Option<String> = self
            .shared
            .query(
                Cmd::new()
                    .arg("SET")
                    .arg(reserved_key(&name))
                    .arg(key_id)
                    .arg("NX"),
            )
            .await?;
        if set.is_none() {
            let owner: Option<String> = self
                .shared
                .query(Cmd::new().arg("GET").arg(reserved_key(&name)))
                .await?;
            if let Some(owner) = owner.filter(|owner| owner != key_id) {
                return Err(StoreError::NameTaken {
                    name,
                    key_id: owner,
                });
            }
        }
        self.add_to("reserved", &name).await?;
        self.changed().await?;
        Ok(Reservation {
            name,
            key_id: key_id.to_owned(),
            created_at: crate::store::now_unix(),
        })
    }

    /// Ends the reservation of `name`; whether there was one.
    pub async fn unreserve(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_ascii_lowercase();
        let removed: i64 = self
            .shared
            .query(Cmd::new().arg("DEL").arg(reserved_key(&name)))
            .await?;
        let _: i64 = self
            .shared
            .query(
                Cmd::new()
                    .arg("SREM")
                    .arg(format!("{PREFIX}:reserved"))
                    .arg(&name),
            )
            .await?;
        self.changed().await?;
        Ok(removed == 1)
    }

    /// Reserves TCP `port` for key `key_id`.
    pub async fn reserve_port(
        &self,
        key_id: &str,
        port: u16,
    ) -> Result<PortReservation, StoreError> {
        if port == 0 {
            return Err(StoreError::InvalidPort);
        }
        match self.key(key_id).await? {
            None => return Err(StoreError::NoSuchKey(key_id.to_owned())),
            Some(key) if key.revoked_at.is_some() => {
                return Err(StoreError::Revoked(key_id.to_owned()));
            }
            Some(_) => {}
        }
        let created_at = crate::store::now_unix();
        let value = format!("{key_id} {created_at}");
        let set: i64 = self
            .shared
            .query(
                Cmd::new()
                    .arg("HSETNX")
                    .arg(reserved_ports_key())
                    .arg(port)
                    .arg(&value),
            )
            .await?;
        if set == 0 {
            let owner: Option<String> = self
                .shared
                .query(Cmd::new().arg("HGET").arg(reserved_ports_key()).arg(port))
                .await?;
            let owner = owner.as_deref().and_then(|v| v.split(' ').next());
            if let Some(owner) = owner.filter(|owner| *owner != key_id) {
                return Err(StoreError::PortTaken {
                    port,
                    key_id: owner.to_owned(),
                });
            }
        }
        self.changed().await?;
        Ok(PortReservation {
            port,
            key_id: key_id.to_owned(),
            created_at,
        })
    }

    /// Ends the reservation of `port`; whether there was one.
    pub async fn unreserve_port(&self, port: u16) -> Result<bool, StoreError> {
        let removed: i64 = self
            .shared
            .query(Cmd::new().arg("HDEL").arg(reserved_ports_key()).arg(port))
            .await?;
        self.changed().await?;
        Ok(removed == 1)
    }

    /// Every reserved port, in order.
    pub async fn port_reservations(&self) -> Result<Vec<PortReservation>, StoreError> {
        let all: Vec<(u16, String)> = self
            .shared
            .query(Cmd::new().arg("HGETALL").arg(reserved_ports_key()))
            .await?;
        let mut reservations: Vec<PortReservation> = all
            .into_iter()
            .filter_map(|(port, value)| {
                let (key_id, created_at) = value.split_once(' ')?;
                Some(PortReservation {
                    port,
                    key_id: key_id.to_owned(),
                    created_at: created_at.parse().unwrap_or(0),
                })
            })
            .collect();
        reservations.sort_by_key(|r| r.port);
        Ok(reservations)
    }

    /// Every reservation, by name.
    pub async fn reservations(&self) -> Result<Vec<Reservation>, StoreError> {
        let mut names: Vec<String> = self
            .shared
            .query(Cmd::new().arg("SMEMBERS").arg(format!("{PREFIX}:reserved")))
            .await?;
        names.sort();
        let mut all = Vec::new();
        for name in names {
            let owner: Option<String> = self
                .shared
                .query(Cmd::new().arg("GET").arg(reserved_key(&name)))
                .await?;
            if let Some(key_id) = owner {
                all.push(Reservation {
                    name,
                    key_id,
                    created_at: 0,
                });
            }
        }
        Ok(all)
    }

    async fn identify_token(&self, token: &Secret) -> Result<Option<(String, String)>, StoreError> {
        let Some(id) = token_id(token) else {
            return Ok(None);
        };
        let (hash, revoked_at, name): (Option<String>, Option<i64>, Option<String>) = self
            .shared
            .query(
                Cmd::new()
                    .arg("HMGET")
                    .arg(key_key(id))
                    .arg("hash")
                    .arg("revoked_at")
                    .arg("name"),
            )
            .await?;
        let (Some(hash), Some(name)) = (hash, name) else {
            return Ok(None);
        };
        // A stored hash that is not one (not written by us) matches nothing.
        let matches = hash
            .parse::<Sha256>()
            .is_ok_and(|stored| stored.0.ct_eq(&token_hash(token)).into());
        Ok((matches && revoked_at.is_none()).then(|| (id.to_owned(), name)))
    }
}

impl Keys for SharedKeys {
    fn identify(
        &self,
        token: Secret,
    ) -> BoxFuture<'_, Result<Option<(String, String)>, StoreError>> {
        Box::pin(async move { self.identify_token(&token).await })
    }

    fn reserved_for(&self, name: String) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            match Subdomain::parse(&name) {
                Ok(name) if !name.is_generated() => Ok(self
                    .shared
                    .query(Cmd::new().arg("GET").arg(reserved_key(name.as_str())))
                    .await?),
                _ => Ok(None),
            }
        })
    }

    fn reserved_ports(&self) -> BoxFuture<'_, Result<Vec<(u16, String)>, StoreError>> {
        Box::pin(async move {
            let all = self.port_reservations().await?;
            Ok(all.into_iter().map(|r| (r.port, r.key_id)).collect())
        })
    }

    fn revision(&self) -> BoxFuture<'_, Result<(i64, u64), StoreError>> {
        Box::pin(async move {
            let rev: Option<i64> = self
                .shared
                .query(Cmd::new().arg("GET").arg(format!("{PREFIX}:keys-rev")))
                .await?;
            Ok((rev.unwrap_or_default(), 0))
        })
    }

    fn revoked_ids(&self) -> BoxFuture<'_, Result<Vec<String>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .shared
                .query(Cmd::new().arg("SMEMBERS").arg(format!("{PREFIX}:revoked")))
                .await?)
        })
    }
}
