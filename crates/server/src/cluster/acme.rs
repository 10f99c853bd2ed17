//! ACME's state in the cluster's Redis: every node serves the one
//! certificate kept there, and one node at a time orders it, under a lock
//! that expires if its holder dies mid-order.
//!
//! - `cryptun:1:acme:account:{DIRECTORY}`: the account's credentials;
//! - `cryptun:1:acme:cert:{NAME}`: a hash of `chain`, `key` (PEM) and
//!   `not_after` (Unix seconds), written in one `HSET`;
//! - `cryptun:1:acme:lock:{NAME}`: the orderer's node name, `SET NX PX`,
//!   taken off only by its holder (compare and delete, one script).
//!
//! Redis keeps the private keys as the single server's database does:
//! protect it as the docs say (ACL, TLS, no public port).

use std::time::Duration;

use redis::Cmd;

use super::keys::SharedKeys;
use super::shared::PREFIX;
use crate::store::acme::{AcmeKeep, KeptCertificate};
use crate::store::{BoxFuture, StoreError};

fn account_key(directory: &str) -> String {
    format!("{PREFIX}:acme:account:{{{directory}}}")
}

fn cert_key(name: &str) -> String {
    format!("{PREFIX}:acme:cert:{{{name}}}")
}

fn lock_key(name: &str) -> String {
    format!("{PREFIX}:acme:lock:{{{name}}}")
}

/// Deletes the lock if `ARGV[1]` holds it.
const UNLOCK: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                      return redis.call('DEL', KEYS[1]) else return 0 end";

impl AcmeKeep for SharedKeys {
    fn account(&self, directory: String) -> BoxFuture<'_, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            let cmd = Cmd::new().arg("GET").arg(account_key(&directory)).clone();
            Ok(self.shared().query(&cmd).await?)
        })
    }

    fn save_account(
        &self,
        directory: String,
        credentials: String,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let cmd = Cmd::new()
                .arg("SET")
                .arg(account_key(&directory))
                .arg(credentials)
                .clone();
            let _: () = self.shared().query(&cmd).await?;
            Ok(())
        })
    }

    fn certificate(
        &self,
        name: String,
    ) -> BoxFuture<'_, Result<Option<KeptCertificate>, StoreError>> {
        Box::pin(async move {
            let cmd = Cmd::new()
                .arg("HMGET")
                .arg(cert_key(&name))
                .arg("chain")
                .arg("key")
                .clone();
            let (chain, key): (Option<String>, Option<String>) = self.shared().query(&cmd).await?;
            Ok(chain
                .zip(key)
                .map(|(chain, key)| KeptCertificate { chain, key }))
        })
    }

    fn save_certificate(
        &self,
        name: String,
        kept: KeptCertificate,
        not_after: i64,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let cmd = Cmd::new()
                .arg("HSET")
                .arg(cert_key(&name))
                .arg("chain")
                .arg(kept.chain)
                .arg("key")
                .arg(kept.key)
                .arg("not_after")
                .arg(not_after)
                .clone();
            let _: i64 = self.shared().query(&cmd).await?;
            Ok(())
        })
    }

    fn lock(
        &self,
        name: String,
        holder: String,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let cmd = Cmd::new()
                .arg("SET")
                .arg(lock_key(&name))
                .arg(holder)
                .arg("NX")
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .clone();
            let set: Option<String> = self.shared().query(&cmd).await?;
            Ok(set.is_some())
        })
    }

    fn unlock(&self, name: String, holder: String) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let cmd = Cmd::new()
                .arg("EVAL")
                .arg(UNLOCK)
                .arg(1)
                .arg(lock_key(&name))
                .arg(holder)
                .clone();
            let _: i64 = self.shared().query(&cmd).await?;
            Ok(())
        })
    }
}
