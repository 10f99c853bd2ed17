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
//! - one `m:TOKEN` field per member: `LEASE_UNTIL NODE HOP_ADDR TUNNEL_ID`,
//!   the lease in Redis's own milliseconds. One member today; a pool of
//!   members behind one name adds fields, not a new layout.
//!
//! The key expires `lease + grace` after its last renewal: once every
//! member's lease has lapsed, what is left is the reconnect hold, for the
//! owner only, until the key goes. Times are Redis's (`TIME`), so nodes'
//! clocks never have to agree.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
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
    /// `NODE HOP_ADDR TUNNEL_ID`.
    pub member: String,
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
}

struct Scripts {
    claim: Script,
    renew: Script,
    release: Script,
    resolve: Script,
    node: Script,
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
            scripts: Arc::new(Scripts {
                claim: Script::new(CLAIM),
                renew: Script::new(RENEW),
                release: Script::new(RELEASE),
                resolve: Script::new(RESOLVE),
                node: Script::new(NODE),
            }),
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
                    .arg(millis(grace));
                async move { Ok(call.invoke_async(&mut conn).await?) }
            })
            .await?;
        let left = Duration::from_millis(left);
        Ok(match kind.as_str() {
            "ok" => Claimed::Yes,
            "live" => Claimed::Live(left),
            "held" => Claimed::Held(left),
            "wrong_secret" => Claimed::WrongSecret(left),
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
                        .arg(&entry.member);
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
        let mut live = Vec::new();
        for name in names {
            let value: Option<String> = self
                .query(
                    Cmd::new()
                        .arg("GET")
                        .arg(format!("{PREFIX}:node:{{{name}}}")),
                )
                .await?;
            match value
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

/// A name's record.
fn route_key(name: &str) -> String {
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

/// Reads [`RESOLVE`]'s answer.
fn parse_found(reply: &[String]) -> Result<Found, SharedError> {
    let bad = || SharedError::Unexpected(format!("{reply:?}"));
    match reply.first().map(String::as_str) {
        Some("free") => Ok(Found::Free),
        Some("held") => {
            let left = reply.get(1).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
            Ok(Found::Held(Duration::from_millis(left)))
        }
        Some("members") => reply[1..]
            .chunks(4)
            .map(|m| match m {
                [token, left, node, hop] => Ok(Member {
                    node: node.clone(),
                    hop: hop.parse().map_err(|_| bad())?,
                    token: token.clone(),
                    lease_left: Duration::from_millis(left.parse().map_err(|_| bad())?),
                }),
                _ => Err(bad()),
            })
            .collect::<Result<_, _>>()
            .map(Found::Members),
        _ => Err(bad()),
    }
}

// KEYS[1] route; ARGV: proof_key, proof_secret, owner, token, member,
// epoch, lease_ms, grace_ms. Same owner (either proof) takes the name over,
// live member or not; anyone else only when no lease is live and no hold.
const CLAIM: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function lease_of(v) return tonumber(string.match(v, '^(%d+)')) end
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner then
  local same = (ARGV[1] ~= '' and owner == ARGV[1]) or (ARGV[2] ~= '' and owner == ARGV[2])
  if not same then
    local all = redis.call('HGETALL', KEYS[1])
    for i = 1, #all, 2 do
      if string.sub(all[i], 1, 2) == 'm:' then
        local lease = lease_of(all[i + 1])
        if lease and lease > now then return {'live', lease - now} end
      end
    end
    local left = redis.call('PTTL', KEYS[1])
    if left < 0 then left = 0 end
    if string.sub(owner, 1, 2) == 's:' and ARGV[2] ~= '' then return {'wrong_secret', left} end
    return {'held', left}
  end
end
local lease = tonumber(ARGV[7])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'owner', ARGV[3], 'epoch', ARGV[6], 'm:' .. ARGV[4], (now + lease) .. ' ' .. ARGV[5])
redis.call('PEXPIRE', KEYS[1], lease + tonumber(ARGV[8]))
return {'ok', 0}
";

// KEYS[1] route; ARGV: token, lease_ms, grace_ms, owner, epoch, member.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
local field = 'm:' .. ARGV[1]
if redis.call('HEXISTS', KEYS[1], field) == 1 then
  redis.call('HSET', KEYS[1], field, (now + lease) .. ' ' .. ARGV[6])
  redis.call('PEXPIRE', KEYS[1], lease + tonumber(ARGV[3]))
  return 'ok'
end
if redis.call('EXISTS', KEYS[1]) == 1 then return 'lost' end
redis.call('HSET', KEYS[1], 'owner', ARGV[4], 'epoch', ARGV[5], field, (now + lease) .. ' ' .. ARGV[6])
redis.call('PEXPIRE', KEYS[1], lease + tonumber(ARGV[3]))
return 'reasserted'
";

// KEYS[1] route; ARGV: token, hold_ms. The member goes; with no member
// left the record stays as the owner's hold for hold_ms, or goes.
const RELEASE: &str = r"
if redis.call('HDEL', KEYS[1], 'm:' .. ARGV[1]) == 0 then return 0 end
local all = redis.call('HKEYS', KEYS[1])
for _, f in ipairs(all) do
  if string.sub(f, 1, 2) == 'm:' then return 1 end
end
local hold = tonumber(ARGV[2])
if hold > 0 then redis.call('PEXPIRE', KEYS[1], hold) else redis.call('DEL', KEYS[1]) end
return 1
";

// KEYS[1] route. {'members', token, left, node, hop, ...} | {'held', left} | {'free'}
const RESOLVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
if #all == 0 then return {'free'} end
local out = {'members'}
for i = 1, #all, 2 do
  if string.sub(all[i], 1, 2) == 'm:' then
    local lease, node, hop = string.match(all[i + 1], '^(%d+) (%S+) (%S+)')
    lease = tonumber(lease)
    if lease and lease > now then
      table.insert(out, string.sub(all[i], 3))
      table.insert(out, tostring(lease - now))
      table.insert(out, node)
      table.insert(out, hop)
    end
  end
end
if #out > 1 then return out end
local left = redis.call('PTTL', KEYS[1])
if left < 0 then left = 0 end
return {'held', tostring(left)}
";

// KEYS[1] node; ARGV: token, hop, lease_ms. 1 if the name is (now) this
// process's, 0 if another live process has it.
const NODE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.match(v, '^(%S+)') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'PX', tonumber(ARGV[3]))
return 1
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_answers_are_read() {
        let s = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(parse_found(&s(&["free"])).unwrap(), Found::Free);
        assert_eq!(
            parse_found(&s(&["held", "1500"])).unwrap(),
            Found::Held(Duration::from_millis(1500))
        );
        let found = parse_found(&s(&["members", "tok", "900", "a", "127.0.0.1:9"])).unwrap();
        assert_eq!(
            found,
            Found::Members(vec![Member {
                node: "a".into(),
                hop: "127.0.0.1:9".parse().unwrap(),
                token: "tok".into(),
                lease_left: Duration::from_millis(900),
            }])
        );
        assert!(parse_found(&s(&["members", "tok"])).is_err());
        assert!(parse_found(&s(&["what"])).is_err());
    }
}
