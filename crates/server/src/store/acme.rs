//! ACME's durable state: the account of each ACME directory (its key and
//! URL, as instant-acme's credentials JSON), and each certificate obtained
//! (its chain and private key, PEM), by its first name. Written whole in
//! one statement each, so a reader finds the old pair or the new one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::OptionalExtension;

use super::{BoxFuture, Store, StoreError};

/// Where ACME's state is kept: this server's database ([`Store`]) or, in a
/// cluster, the cluster's Redis (`crate::cluster::acme`), where every node
/// serves the one certificate and one node at a time renews it.
pub trait AcmeKeep: Send + Sync + 'static {
    /// The account credentials kept for ACME directory `directory`.
    fn account(&self, directory: String) -> BoxFuture<'_, Result<Option<String>, StoreError>>;
    /// Keeps `credentials` as the account for `directory`.
    fn save_account(
        &self,
        directory: String,
        credentials: String,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The certificate kept under `name`.
    fn certificate(
        &self,
        name: String,
    ) -> BoxFuture<'_, Result<Option<KeptCertificate>, StoreError>>;
    /// Keeps `kept` under `name`, expiring at `not_after` (Unix seconds).
    fn save_certificate(
        &self,
        name: String,
        kept: KeptCertificate,
        not_after: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Takes the right to order `name` for `ttl`, as `holder`: `false` if
    /// another holds it (alone, a server always gets it).
    fn lock(
        &self,
        name: String,
        holder: String,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Gives the right back, if `holder` still has it.
    fn unlock(&self, name: String, holder: String) -> BoxFuture<'_, Result<(), StoreError>>;
}

impl AcmeKeep for Store {
    fn account(&self, directory: String) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        Box::pin(self.call(move |store| store.acme_account(&directory)))
    }

    fn save_account(
        &self,
        directory: String,
        credentials: String,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.call(move |store| store.save_acme_account(&directory, &credentials)))
    }

    fn certificate(
        &self,
        name: String,
    ) -> BoxFuture<'_, Result<Option<KeptCertificate>, StoreError>> {
        Box::pin(self.call(move |store| store.acme_certificate(&name)))
    }

    fn save_certificate(
        &self,
        name: String,
        kept: KeptCertificate,
        not_after: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.call(move |store| store.save_acme_certificate(&name, &kept, not_after)))
    }

    fn lock(&self, _: String, _: String, _: Duration) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async { Ok(true) })
    }

    fn unlock(&self, _: String, _: String) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A certificate kept: its chain (leaf first) and its key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct KeptCertificate {
    /// The chain.
    pub chain: String,
    /// Its private key.
    pub key: String,
}

impl std::fmt::Debug for KeptCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptCertificate").finish_non_exhaustive()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Store {
    /// The account credentials kept for ACME directory `directory`.
    pub fn acme_account(&self, directory: &str) -> Result<Option<String>, StoreError> {
        let conn = self.conn();
        let found = conn
            .query_row(
                "SELECT credentials FROM acme_accounts WHERE directory = ?1",
                [directory],
                |row| row.get(0),
            )
            .optional()?;
        Ok(found)
    }

    /// Keeps `credentials` as the account for `directory`.
    pub fn save_acme_account(&self, directory: &str, credentials: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO acme_accounts (directory, credentials, created_at)
             VALUES (?1, ?2, ?3)",
            (directory, credentials, now()),
        )?;
        Ok(())
    }

    /// The certificate kept under `name`.
    pub fn acme_certificate(&self, name: &str) -> Result<Option<KeptCertificate>, StoreError> {
        let conn = self.conn();
        let found = conn
            .query_row(
                "SELECT chain, key FROM acme_certificates WHERE name = ?1",
                [name],
                |row| {
                    Ok(KeptCertificate {
                        chain: row.get(0)?,
                        key: row.get(1)?,
                    })
                },
            )
            .optional()?;
        Ok(found)
    }

    /// Keeps `kept` under `name` (replacing the one before, in one
    /// statement), expiring at `not_after` (Unix seconds).
    pub fn save_acme_certificate(
        &self,
        name: &str,
        kept: &KeptCertificate,
        not_after: i64,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO acme_certificates (name, chain, key, not_after, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            (name, &kept.chain, &kept.key, not_after, now()),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_by_directory_and_certificates_by_name_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.acme_account("https://a/dir").unwrap(), None);
        store
            .save_acme_account("https://a/dir", "{\"id\":1}")
            .unwrap();
        store
            .save_acme_account("https://b/dir", "{\"id\":2}")
            .unwrap();
        let kept = KeptCertificate {
            chain: "CHAIN".into(),
            key: "KEY".into(),
        };
        store.save_acme_certificate("*.t.test", &kept, 100).unwrap();
        let newer = KeptCertificate {
            chain: "CHAIN2".into(),
            key: "KEY2".into(),
        };
        store
            .save_acme_certificate("*.t.test", &newer, 200)
            .unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.acme_account("https://a/dir").unwrap().as_deref(),
            Some("{\"id\":1}")
        );
        assert_eq!(
            store.acme_account("https://b/dir").unwrap().as_deref(),
            Some("{\"id\":2}")
        );
        assert_eq!(store.acme_certificate("*.t.test").unwrap(), Some(newer));
        assert_eq!(store.acme_certificate("*.other").unwrap(), None);
        assert!(!format!("{kept:?}").contains("KEY"), "no key in logs");
    }
}
