//! The cluster's nodes in Redis: each node's own lease on its name (with
//! its hop address), the list of nodes, and the store's marker that tells
//! a node the store was emptied.

use std::net::SocketAddr;
use std::time::Duration;

use redis::Cmd;

use super::{PREFIX, Shared, SharedError, millis};

impl Shared {
    /// Takes (or keeps) `node` as this process's name for `lease`: false if
    /// another live process has it.
    pub async fn hold_node(
        &self,
        node: &str,
        token: &str,
        hop: SocketAddr,
        lease: Duration,
    ) -> Result<bool, SharedError> {
        let held: i64 = self
            .run(|mut conn| {
                let mut call = self.scripts.node.key(format!("{PREFIX}:node:{{{node}}}"));
                call.arg(token).arg(hop.to_string()).arg(millis(lease));
                async move { Ok(call.invoke_async(&mut conn).await?) }
            })
            .await?;
        Ok(held == 1)
    }

    /// Lists `node` among the cluster's nodes.
    pub async fn list_node(&self, node: &str) -> Result<(), SharedError> {
        let _: i64 = self
            .query(
                Cmd::new()
                    .arg("SADD")
                    .arg(format!("{PREFIX}:nodes"))
                    .arg(node),
            )
            .await?;
        Ok(())
    }

    /// The live nodes and their hop addresses; nodes whose lease lapsed
    /// are taken off the list.
    pub async fn nodes(&self) -> Result<Vec<(String, SocketAddr)>, SharedError> {
        let names: Vec<String> = self
            .query(Cmd::new().arg("SMEMBERS").arg(format!("{PREFIX}:nodes")))
            .await?;
        // Each node's lease at once (its own key: on a Redis Cluster they
        // are in different slots, so not one MGET).
        let leases = futures_util::future::join_all(names.into_iter().map(|name| async move {
            let key = format!("{PREFIX}:node:{{{name}}}");
            let value: Result<Option<String>, _> = self.query(Cmd::new().arg("GET").arg(key)).await;
            (name, value)
        }))
        .await;
        let mut live = Vec::new();
        for (name, value) in leases {
            match value?
                .as_deref()
                .and_then(|v| v.split_whitespace().nth(1)?.parse().ok())
            {
                Some(hop) => live.push((name, hop)),
                None => {
                    let _: i64 = self
                        .query(
                            Cmd::new()
                                .arg("SREM")
                                .arg(format!("{PREFIX}:nodes"))
                                .arg(&name),
                        )
                        .await?;
                }
            }
        }
        Ok(live)
    }

    /// The store's marker: a random value written by the first node to
    /// find none, kept as long as the store keeps its data. A node that
    /// sees it change knows the store was emptied since it last looked.
    pub async fn mark(&self) -> Result<String, SharedError> {
        self.run(|mut conn| async move {
            let key = format!("{PREFIX}:joined");
            let _: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(cryptun_proto::random_id(16))
                .arg("NX")
                .query_async(&mut conn)
                .await?;
            let value: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
            Ok(value.unwrap_or_default())
        })
        .await
    }
}
