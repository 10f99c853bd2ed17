//! Moving keys, reservations and held names between stores: a single
//! server's SQLite ([`Store`](super::Store)) and a cluster's Redis
//! (`crate::cluster::keys`), through one JSON document that `cryptun keys
//! export` writes and `cryptun keys import` reads.
//!
//! ```json
//! {"format": "cryptun-keys", "version": 1,
//!  "keys": [{"id": "k7x2abcd", "name": "laptop", "token_sha256": "9f86…",
//!            "created_at": 1700000000, "revoked_at": null}],
//!  "reservations": [{"name": "myapp", "key_id": "k7x2abcd", "created_at": 1700000100}],
//!  "port_reservations": [{"port": 20022, "key_id": "k7x2abcd", "created_at": 1700000200}],
//!  "holds": [{"name": "notes", "key_id": "k7x2abcd", "until_ms": 1700000130000}]}
//! ```
//!
//! A key travels as its token's SHA-256, which is all either store has:
//! no token is ever in a document, and an imported key opens tunnels with
//! the token it was created with. Times are Unix seconds, a hold's end
//! Unix milliseconds (an absolute time, so a document read a minute later
//! holds the name a minute less). A hold's owner is a key id or the
//! SHA-256 of an anonymous tunnel's reconnect secret (`secret_sha256`).
//!
//! The document is read strictly: another `format`, a `version` this build
//! does not know, a field it does not know (a later version's quota, say,
//! that it would silently drop) or an entry that could not have been
//! written by cryptun is refused before anything is written.
//!
//! # Layout
//!
//! - this file: the document, reading and checking it, errors;
//! - [`plan`]: what an import does, decided without I/O against what the
//!   target holds: add, leave, revoke, replace, or refuse a conflict;
//! - [`sqlite`]: export from, and import into, a server's database.

pub mod plan;
mod sqlite;

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use cryptun_proto::Subdomain;
use serde::{Deserialize, Serialize};

pub use plan::{Action, Conflict, Counts, Plan, Summary, plan};

use super::StoreError;
use super::holds::Owner;
use super::keys::{is_key_id, key_name};
use super::names::reservable;

/// `format` of every document.
pub const FORMAT: &str = "cryptun-keys";
/// The version this build writes and reads.
pub const VERSION: u64 = 1;

/// A whole store's keys, reservations and held names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`] when written by this build.
    pub version: u64,
    /// Every key, oldest first, in the order they were made.
    pub keys: Vec<KeyRecord>,
    /// Every reserved name, by name.
    pub reservations: Vec<ReservationRecord>,
    /// Every name held for its owner's reconnection, by name.
    pub holds: Vec<HoldRecord>,
    /// Every TCP port reserved for a key, by port (absent when none, as
    /// documents written before them have it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_reservations: Vec<PortReservationRecord>,
}

/// One TCP port reserved for a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortReservationRecord {
    /// The port.
    pub port: u16,
    /// The key it is reserved for.
    pub key_id: String,
    /// Unix seconds.
    #[serde(default)]
    pub created_at: Option<i64>,
}

/// One API key, as both stores keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// The key's public id.
    pub id: String,
    /// What the operator called it.
    pub name: String,
    /// The SHA-256 of its token (never the token).
    pub token_sha256: Sha256,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, if revoked.
    #[serde(default)]
    pub revoked_at: Option<i64>,
}

/// One reserved name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservationRecord {
    /// The label, lowercase.
    pub name: String,
    /// The key it is reserved for.
    pub key_id: String,
    /// Unix seconds; a cluster keeps no date for a reservation (`null`).
    #[serde(default)]
    pub created_at: Option<i64>,
}

/// One name held for its owner's reconnection. Exactly one of `key_id`
/// and `secret_sha256` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldRecord {
    /// The label, lowercase.
    pub name: String,
    /// The owner's key, for a tunnel opened with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The SHA-256 of an anonymous tunnel's reconnect secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_sha256: Option<Sha256>,
    /// When the hold ends, Unix milliseconds.
    pub until_ms: i64,
}

impl HoldRecord {
    /// A hold of `name` for `owner` until `until_ms`.
    pub fn new(name: String, owner: &Owner, until_ms: i64) -> Self {
        let (key_id, secret_sha256) = match owner {
            Owner::Key(id) => (Some(id.clone()), None),
            Owner::Secret(hash) => (None, Some(Sha256(*hash))),
        };
        HoldRecord {
            name,
            key_id,
            secret_sha256,
            until_ms,
        }
    }

    /// Its owner, if the record names exactly one.
    pub fn owner(&self) -> Option<Owner> {
        match (&self.key_id, &self.secret_sha256) {
            (Some(id), None) => Some(Owner::Key(id.clone())),
            (None, Some(hash)) => Some(Owner::Secret(hash.0)),
            _ => None,
        }
    }
}

/// A SHA-256, written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256(pub [u8; 32]);

impl From<[u8; 32]> for Sha256 {
    fn from(bytes: [u8; 32]) -> Self {
        Sha256(bytes)
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

impl FromStr for Sha256 {
    type Err = String;

    fn from_str(hex: &str) -> Result<Self, String> {
        let bad = || format!("{hex:?} is not a SHA-256 (64 hex digits)");
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| bad())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Sha256(bytes))
    }
}

impl TryFrom<String> for Sha256 {
    type Error = String;

    fn try_from(hex: String) -> Result<Self, String> {
        hex.parse()
    }
}

impl From<Sha256> for String {
    fn from(hash: Sha256) -> String {
        hash.to_string()
    }
}

/// Why a document could not be read, or an import did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// Not JSON, or not of this format's shape.
    #[error("not a cryptun keys document: {0}")]
    Malformed(#[source] serde_json::Error),
    /// JSON, but of another format.
    #[error("not a cryptun keys document: its format is {found}, not {FORMAT:?}")]
    UnknownFormat {
        /// What `format` said (or that it was missing).
        found: String,
    },
    /// Of this format, in a version this build does not read.
    #[error(
        "a cryptun keys document of version {found}, which this cryptun does not read (it reads version {VERSION}{newer})",
        newer = if *found > VERSION { "; upgrade cryptun to import it" } else { "" }
    )]
    UnsupportedVersion {
        /// The document's version.
        found: u64,
    },
    /// An entry that cryptun could not have written.
    #[error("invalid document: {0}")]
    Invalid(String),
    /// Entries that differ from what the target holds.
    #[error("{}", plan::describe(.0))]
    Conflicts(Vec<Conflict>),
    /// The target changed between reading it and writing an entry.
    #[error(
        "{0} changed in the target during the import (entries before it were written); run the import again"
    )]
    Raced(String),
    /// The target store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Document {
    /// A document of `keys`, as the store lists them (oldest first, in
    /// the order they were made: an import makes them in this order, so
    /// they list alike there), and of `reservations` and `holds`, put in
    /// order by name so two exports of one store are the same text.
    pub fn new(
        keys: Vec<KeyRecord>,
        mut reservations: Vec<ReservationRecord>,
        mut holds: Vec<HoldRecord>,
    ) -> Self {
        reservations.sort_by(|a, b| a.name.cmp(&b.name));
        holds.sort_by(|a, b| a.name.cmp(&b.name));
        Document {
            format: FORMAT.to_owned(),
            version: VERSION,
            keys,
            reservations,
            holds,
            port_reservations: Vec::new(),
        }
    }

    /// This document with `ports` reserved, in order by port.
    #[must_use]
    pub fn with_ports(mut self, mut ports: Vec<PortReservationRecord>) -> Self {
        ports.sort_by_key(|p| p.port);
        self.port_reservations = ports;
        self
    }

    /// Reads and checks a document: its format and version first, so that
    /// another file or a later version is named as such rather than as a
    /// shape error.
    pub fn parse(text: &str) -> Result<Document, TransferError> {
        use serde_json::Value;
        let value: Value = serde_json::from_str(text).map_err(TransferError::Malformed)?;
        let Some(object) = value.as_object() else {
            return Err(TransferError::UnknownFormat {
                found: "missing (not a JSON object)".into(),
            });
        };
        match object.get("format") {
            Some(Value::String(format)) if format == FORMAT => {}
            Some(other) => {
                return Err(TransferError::UnknownFormat {
                    found: other.to_string(),
                });
            }
            None => {
                return Err(TransferError::UnknownFormat {
                    found: "missing".into(),
                });
            }
        }
        match object.get("version").and_then(Value::as_u64) {
            Some(VERSION) => {}
            Some(found) => return Err(TransferError::UnsupportedVersion { found }),
            None => return Err(TransferError::Invalid("no version number".into())),
        }
        let document: Document = serde_json::from_value(value).map_err(TransferError::Malformed)?;
        document.check()?;
        Ok(document)
    }

    /// Refuses what no store of cryptun's could hold: ids, names and
    /// labels of the wrong shape, an entry twice, a reservation for a key
    /// the document does not carry, a hold with no owner or two.
    fn check(&self) -> Result<(), TransferError> {
        let invalid = |what: String| Err(TransferError::Invalid(what));
        let mut ids = HashSet::new();
        for key in &self.keys {
            if !is_key_id(&key.id) {
                return invalid(format!("{:?} is not a key id", key.id));
            }
            if key_name(&key.name).ok() != Some(key.name.as_str()) {
                return invalid(format!(
                    "key {}: {:?} is not a key's name",
                    key.id, key.name
                ));
            }
            if !ids.insert(key.id.as_str()) {
                return invalid(format!("key {} is there twice", key.id));
            }
        }
        let mut names = HashSet::new();
        for reservation in &self.reservations {
            let name = &reservation.name;
            if reservable(name).ok().as_ref() != Some(name) {
                return invalid(format!("{name:?} is not a name that can be reserved"));
            }
            if !ids.contains(reservation.key_id.as_str()) {
                return invalid(format!(
                    "{name} is reserved for key {}, which is not in the document",
                    reservation.key_id
                ));
            }
            if !names.insert(name.as_str()) {
                return invalid(format!("{name} is reserved twice"));
            }
        }
        let mut ports = HashSet::new();
        for reserved in &self.port_reservations {
            let port = reserved.port;
            if port == 0 {
                return invalid("port 0 cannot be reserved".into());
            }
            if !ids.contains(reserved.key_id.as_str()) {
                return invalid(format!(
                    "port {port} is reserved for key {}, which is not in the document",
                    reserved.key_id
                ));
            }
            if !ports.insert(port) {
                return invalid(format!("port {port} is reserved twice"));
            }
        }
        let mut held = HashSet::new();
        for hold in &self.holds {
            let name = &hold.name;
            if Subdomain::parse(name).ok().map(String::from).as_ref() != Some(name) {
                return invalid(format!("{name:?} is not a subdomain"));
            }
            match hold.owner() {
                Some(Owner::Key(id)) if !is_key_id(&id) => {
                    return invalid(format!("the hold of {name}: {id:?} is not a key id"));
                }
                Some(_) => {}
                None => {
                    return invalid(format!(
                        "the hold of {name} needs one owner: key_id or secret_sha256"
                    ));
                }
            }
            if !held.insert(name.as_str()) {
                return invalid(format!("{name} is held twice"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
