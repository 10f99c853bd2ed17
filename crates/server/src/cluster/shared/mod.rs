//! Redis as the cluster uses it: one connection (to a single Redis, or to a
//! Redis Cluster, found out at connect), the atomic steps on a name's route
//! record as Lua scripts, and whether Redis answers now.
//!
//! A name's record is one hash, `cryptun:1:{NAME}:route` (the braces are
//! the hash tag: everything about a name lives in one slot):
//!
//! - `owner`: who may take the name back (`k:KEY_ID`, or `s:` and the
//!   SHA-256 of the reconnect secret, hex);
//! - `epoch`: the claim's number, from the cluster-wide counter
//!   `cryptun:1:epoch` (later claims have larger ones);
//! - `pool`: `1` if the name is served by a pool;
//! - one `m:TOKEN` field per member: `LEASE_UNTIL NODE HOP_ADDR TUNNEL_ID
//!   PROTOCOL`, the lease in Redis's own milliseconds, the protocol `http`,
//!   `tcp` or `tls` (a record without one, of an earlier version, is
//!   `http`). A pool has one per member.
//!
//! The key expires `lease + grace` after its last renewal: once every
//! member's lease has lapsed, what is left is the reconnect hold, for the
//! owner only, until the key goes. Times are Redis's (`TIME`), so nodes'
//! clocks never have to agree.
//!
//! # Layout
//!
//! - this file: the connection and the steps on names;
//! - [`scripts`]: the Lua scripts and the reading of their answers;
//! - [`nodes`]: nodes' own leases, their list, the store's marker;
//! - [`ports`]: TCP tunnels' ports, claimed cluster-wide.

mod nodes;
mod ports;
mod scripts;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use ports::PortScripts;
pub use ports::{PortClaimed, PortEntry};
use scripts::{Scripts, parse_found};
use tracing::{info, warn};

/// The version in every key: a node of a later layout uses another prefix
/// or reads this one.
pub const PREFIX: &str = "cryptun:1";

/// Why a step on Redis did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// Redis answered with an error, or the connection failed.
    #[error("the cluster store failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer in time.
    #[error("the cluster store did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered something this version does not read.
    #[error("the cluster store answered {0}")]
    Unexpected(String),
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// The name is this member's now.
    Yes,
    /// Another identity's member holds a live lease, for this much longer.
    Live(Duration),
    /// Held for another identity's reconnection, this much longer.
    Held(Duration),
    /// Held for a reconnect secret other than the one offered.
    WrongSecret(Duration),
    /// Live as a pool while a single tunnel is asked for, or the other way
    /// round.
    PoolConflict,
}

/// What renewing a member's lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewed {
    /// Still ours, lease extended.
    Yes,
    /// The record was gone (Redis lost it, or it expired while this node
    /// could not renew): written again as ours.
    Reasserted,
    /// Another claim has the name now: this member must stop serving it.
    Lost,
}

/// A live member of a name, as Redis has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The node serving it.
    pub node: String,
    /// That node's hop address.
    pub hop: SocketAddr,
    /// The member's claim token.
    pub token: String,
    /// How much longer its lease runs without renewal.
    pub lease_left: Duration,
    /// What its tunnel carries.
    pub protocol: cryptun_proto::TunnelProtocol,
}

/// Where a name points, cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Members with live leases.
    Members(Vec<Member>),
    /// No live member; held for its owner this much longer.
    Held(Duration),
    /// Nothing.
    Free,
}

/// One member's claim on a name, as written in its record.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The name.
    pub name: String,
    /// The owner, encoded (`k:...` or `s:...`).
    pub owner: String,
    /// The member's random token.
    pub token: String,
    /// The claim's epoch.
    pub epoch: u64,
    /// `NODE HOP_ADDR TUNNEL_ID PROTOCOL`.
    pub member: String,
    /// Whether it is a pool's member.
    pub pool: bool,
}

/// The connection, to a single Redis or to a Redis Cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Redis, shared by the node's stages: cheap to clone.
#[derive(Clone)]
pub struct Shared {
    conn: Conn,
    /// How long any one step may take.
    timeout: Duration,
    up: Arc<AtomicBool>,
    scripts: Arc<Scripts>,
    port_scripts: Arc<PortScripts>,
}

impl Shared {
    /// Connects to `url` (a Redis Cluster if the server says it is one),
    /// each later step bounded by `timeout`.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Shared, SharedError> {
        let client = redis::Client::open(url)?;
        let mut probe = bounded(timeout, async {
            Ok(client.get_multiplexed_async_connection().await?)
        })
        .await?;
        let info: String = bounded(timeout, async {
            Ok(redis::cmd("INFO")
                .arg("cluster")
                .query_async(&mut probe)
                .await?)
        })
        .await?;
        let conn = if info.contains("cluster_enabled:1") {
            let cluster = redis::cluster::ClusterClient::builder(vec![url])
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .build()?;
            Conn::Cluster(
                bounded(timeout, async { Ok(cluster.get_async_connection().await?) }).await?,
            )
        } else {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1));
            Conn::Single(
                bounded(timeout, async {
                    Ok(client.get_connection_manager_with_config(config).await?)
                })
                .await?,
            )
        };
        Ok(Shared {
            conn,
            timeout,
            up: Arc::new(AtomicBool::new(true)),
            scripts: Arc::new(Scripts::new()),
            port_scripts: Arc::new(PortScripts::new()),
        })
    }

    /// Whether Redis answered the last step.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// Runs `step` on a connection, bounded in time, noting (and logging
    /// once per change) whether Redis answered. A connection found dropped
    /// (Redis restarted) is made again and the step tried once more: every
    /// step is safe to repeat.
    async fn run<T, F, Fut>(&self, step: F) -> Result<T, SharedError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<T, SharedError>>,
    {
        let mut result = bounded(self.timeout, step(self.conn.clone())).await;
        if let Err(SharedError::Redis(err)) = &result {
            if err.is_connection_dropped() || err.is_io_error() {
                result = bounded(self.timeout, step(self.conn.clone())).await;
            }
        }
        let reached = !matches!(
            &result,
            Err(SharedError::Timeout(_)) | Err(SharedError::Redis(_))
        );
        let was = self.up.swap(reached, Ordering::Relaxed);
        match (was, &result) {
            (true, Err(err)) if !reached => {
                warn!(%err, "the cluster store is unreachable: serving live tunnels, refusing new ones")
            }
            (false, _) if reached => info!("the cluster store is reachable again"),
            _ => {}
        }
        result
    }

    /// Runs one command.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, SharedError> {
        self.run(|mut conn| async move { Ok(cmd.query_async(&mut conn).await?) })
            .await
    }

    /// The next claim epoch, cluster-wide.
    pub async fn next_epoch(&self) -> Result<u64, SharedError> {
        self.run(|mut conn| async move {
            Ok(redis::cmd("INCR")
                .arg(format!("{PREFIX}:epoch"))
                .query_async(&mut conn)
                .await?)
        })
        .await
    }

    /// Claims `entry.name` for `entry`'s member unless another identity
    /// has it (live or held). The claimant proves ownership with `proofs`
    /// (its key's and its secret's encoded forms, `""` for none).
    pub async fn claim(
        &self,
        entry: &Entry,
        proofs: [&str; 2],
        lease: Duration,
        grace: Duration,
    ) -> Result<Claimed, SharedError> {
        let (kind, left): (String, u64) = self
            .run(|mut conn| {
                let mut call = self.scripts.claim.key(route_key(&entry.name));
                call.arg(proofs[0])
                    .arg(proofs[1])
                    .arg(&entry.owner)
                    .arg(&entry.token)
                    .arg(&entry.member)
                    .arg(entry.epoch)
                    .arg(millis(lease))
                    .arg(millis(grace))
                    .arg(if entry.pool { "1" } else { "0" });
                async move { Ok(call.invoke_async(&mut conn).await?) }
            })
            .await?;
        let left = Duration::from_millis(left);
        Ok(match kind.as_str() {
            "ok" => Claimed::Yes,
            "live" => Claimed::Live(left),
            "held" => Claimed::Held(left),
            "wrong_secret" => Claimed::WrongSecret(left),
            "pool_conflict" => Claimed::PoolConflict,
            other => return Err(SharedError::Unexpected(other.into())),
        })
    }

    /// Renews the leases of `entries` (all at once: the connection
    /// pipelines them), writing back any whose record is gone.
    pub async fn renew(
        &self,
        entries: &[Entry],
        lease: Duration,
        grace: Duration,
    ) -> Result<Vec<Renewed>, SharedError> {
        self.run(|conn| {
            let calls: Vec<_> = entries
                .iter()
                .map(|entry| {
                    let mut conn = conn.clone();
                    let mut call = self.scripts.renew.key(route_key(&entry.name));
                    call.arg(&entry.token)
                        .arg(millis(lease))
                        .arg(millis(grace))
                        .arg(&entry.owner)
                        .arg(entry.epoch)
                        .arg(&entry.member)
                        .arg(if entry.pool { "1" } else { "0" });
                    async move {
                        let kind: String = call.invoke_async(&mut conn).await?;
                        Ok::<_, SharedError>(match kind.as_str() {
                            "ok" => Renewed::Yes,
                            "reasserted" => Renewed::Reasserted,
                            _ => Renewed::Lost,
                        })
                    }
                })
                .collect();
            async move {
                futures_util::future::join_all(calls)
                    .await
                    .into_iter()
                    .collect()
            }
        })
        .await
    }

    /// Takes member `token` off `name`, leaving the name held for its
    /// owner for `hold` (zero: freed when no member is left).
    pub async fn release(
        &self,
        name: &str,
        token: &str,
        hold: Duration,
    ) -> Result<bool, SharedError> {
        let done: i64 = self
            .run(|mut conn| {
                let mut call = self.scripts.release.key(route_key(name));
                call.arg(token).arg(millis(hold));
                async move { Ok(call.invoke_async(&mut conn).await?) }
            })
            .await?;
        Ok(done == 1)
    }

    /// Where `name` points now.
    pub async fn resolve(&self, name: &str) -> Result<Found, SharedError> {
        let reply: Vec<String> = self
            .run(|mut conn| {
                let mut call = self.scripts.resolve.key(route_key(name));
                call.arg(0);
                async move { Ok(call.invoke_async(&mut conn).await?) }
            })
            .await?;
        parse_found(&reply)
    }
}

/// A name's record.
pub(crate) fn route_key(name: &str) -> String {
    format!("{PREFIX}:{{{name}}}:route")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn bounded<T>(
    timeout: Duration,
    step: impl Future<Output = Result<T, SharedError>>,
) -> Result<T, SharedError> {
    tokio::time::timeout(timeout, step)
        .await
        .map_err(|_| SharedError::Timeout(timeout))?
}
