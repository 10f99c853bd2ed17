//! What Redis does for the cluster's tunnels: per connect, per
//! disconnect, and at steady state.
//!
//! - [`connects`]: a node whose lease is long ([`CONNECT_LEASE`], so that
//!   no renewal falls in the window and every command counted belongs to a
//!   connect), `MONITOR` running, the swarm ([`crate::tunnels::start_swarm`])
//!   connects N tunnels; then, monitored again, the swarm leaves. Commands
//!   per connect = counted / N, split into those the node sent (each one
//!   round trip) and those the scripts ran inside Redis. The same node's
//!   idle background (its own name, the key revision it polls) is counted
//!   over [`IDLE_WINDOW`] beforehand, to show it is negligible.
//! - [`steady`]: a node with the default lease holds N idle tunnels from the
//!   swarm; over the window, `INFO commandstats` deltas give Redis's
//!   commands per second (every renewal is one script call), and `/proc`
//!   the CPU Redis and the node spent on them. Redis's `used_memory` and key
//!   count before and with the tunnels, and `MEMORY USAGE` of one real
//!   route record, give what a tunnel costs Redis in memory.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cluster::{Secret, start_node};
use crate::procs;
use crate::redis::{CommandStats, Monitor, Redis, Reply, Seen};
use crate::run::Env;
use crate::tunnels::start_swarm;

/// The lease of the node whose connects are counted: renewals every
/// 100 s, none within the window.
pub const CONNECT_LEASE: Duration = Duration::from_secs(300);

/// The node's idle background is counted over this long.
pub const IDLE_WINDOW: Duration = Duration::from_secs(3);

/// The lease of the steady-state node: the default `--cluster-lease`.
pub const STEADY_LEASE: Duration = Duration::from_secs(10);

/// Time for MONITOR's last lines, and for the last sessions to settle.
const SETTLE: Duration = Duration::from_secs(1);

/// Commands per tunnel connect and disconnect.
#[derive(Debug, Clone, Default)]
pub struct Connects {
    /// Tunnels asked for.
    pub requested: usize,
    /// Tunnels connected.
    pub connected: usize,
    /// The swarm's time from its first connect to its last tunnel.
    pub elapsed_ms: f64,
    /// What Redis ran while the node sat idle for [`IDLE_WINDOW`].
    pub idle: Seen,
    /// What Redis ran while the tunnels connected.
    pub on_connect: Seen,
    /// Tunnels gone from the node's list when the disconnects were counted.
    pub disconnected: usize,
    /// What Redis ran while they disconnected.
    pub on_disconnect: Seen,
}

/// One real route record.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// Its key.
    pub key: String,
    /// `MEMORY USAGE key SAMPLES 0`, bytes.
    pub bytes: u64,
    /// Its fields and values (`HGETALL`).
    pub fields: Vec<(String, String)>,
}

/// Redis with many idle tunnels on one node.
#[derive(Debug, Clone, Default)]
pub struct Steady {
    /// Tunnels asked for.
    pub requested: usize,
    /// Tunnels connected.
    pub connected: usize,
    /// Tunnels the node listed.
    pub listed: usize,
    /// The swarm's time from its first connect to its last tunnel.
    pub elapsed_ms: f64,
    /// The node's lease.
    pub lease: Duration,
    /// How long the window lasted.
    pub window: Duration,
    /// What Redis ran in the window (the benchmark's own `INFO` left out).
    pub commands: CommandStats,
    /// CPU ticks Redis spent in the window.
    pub redis_cpu_ticks: u64,
    /// CPU ticks the node spent in the window.
    pub node_cpu_ticks: u64,
    /// Redis's `used_memory` before the tunnels and with them, bytes.
    pub used_memory: [u64; 2],
    /// Redis's key count before the tunnels and with them.
    pub keys: [u64; 2],
    /// The node's RSS before the tunnels and with them, KiB.
    pub node_rss_kib: [u64; 2],
    /// One route record.
    pub record: Option<Record>,
}

/// Counts what Redis runs per tunnel connect and disconnect.
pub fn connects(
    env: &Env,
    redis: &Redis,
    secret: &Secret,
    count: usize,
    concurrency: usize,
) -> Result<Connects> {
    eprintln!("cluster: counting Redis's commands for {count} connects and disconnects");
    let lease = format!("{}s", CONNECT_LEASE.as_secs());
    let max = (count + 1_000).to_string();
    let extra = ["--cluster-lease", &lease, "--max-connections", &max];
    let (node, addr) = start_node(env, redis, secret, "c", &extra)?;
    // Past the keeper's first tick (at start).
    std::thread::sleep(SETTLE);
    let idle = Monitor::start(redis.addr)?.stop(IDLE_WINDOW)?;

    let monitor = Monitor::start(redis.addr)?;
    let (mut swarm, ready) = start_swarm(env, addr, count, concurrency, "cluster-connects")?;
    let on_connect = monitor.stop(SETTLE)?;

    let monitor = Monitor::start(redis.addr)?;
    swarm.close_stdin_and_wait(Duration::from_secs(10));
    let left = wait_for_count(addr, 0, Duration::from_secs(30))?;
    let on_disconnect = monitor.stop(SETTLE)?;
    drop(node);
    Ok(Connects {
        requested: count,
        connected: ready.connected,
        elapsed_ms: ready.elapsed_ms,
        idle,
        on_connect,
        disconnected: ready.connected.saturating_sub(left),
        on_disconnect,
    })
}

/// Measures Redis's steady load with `count` idle tunnels on one node.
pub fn steady(
    env: &Env,
    redis: &mut Redis,
    secret: &Secret,
    count: usize,
    concurrency: usize,
    window: Duration,
) -> Result<Steady> {
    eprintln!(
        "cluster: {count} idle tunnels on one node, Redis measured over {} s",
        window.as_secs()
    );
    let lease = format!("{}s", STEADY_LEASE.as_secs());
    let max = (count + 1_000).to_string();
    let extra = ["--cluster-lease", &lease, "--max-connections", &max];
    let (mut node, addr) = start_node(env, redis, secret, "d", &extra)?;
    std::thread::sleep(SETTLE);
    let memory = |redis: &Redis| -> Result<[u64; 2]> {
        Ok([redis.info_number("memory", "used_memory")?, dbsize(redis)?])
    };
    let [memory_before, keys_before] = memory(redis)?;
    let rss_before = procs::rss_kib(node.pid())?;

    let (swarm, ready) = start_swarm(env, addr, count, concurrency, "cluster-steady")?;
    // Every tunnel claimed and renewed at least once before the window.
    std::thread::sleep(STEADY_LEASE / 3 + SETTLE);
    let listed = crate::http::tunnel_count(addr)?;
    let [memory_with, keys_with] = memory(redis)?;
    let rss_with = procs::rss_kib(node.pid())?;
    let record = record(redis)?;

    let cpu = |redis: &mut Redis| -> Result<[u64; 2]> {
        Ok([
            procs::cpu_ticks(redis.proc().pid())?,
            procs::cpu_ticks(node.pid())?,
        ])
    };
    let stats_before = redis.commandstats()?;
    let cpu_before = cpu(redis)?;
    let started = Instant::now();
    std::thread::sleep(window);
    let cpu_after = cpu(redis)?;
    let elapsed = started.elapsed();
    let mut commands = redis.commandstats()?.since(&stats_before);
    // The INFO that read `stats_before` is the benchmark's, not the node's.
    commands.0.remove("info");
    node.check_alive()?;
    drop(swarm);
    drop(node);
    Ok(Steady {
        requested: count,
        connected: ready.connected,
        listed,
        elapsed_ms: ready.elapsed_ms,
        lease: STEADY_LEASE,
        window: elapsed,
        commands,
        redis_cpu_ticks: cpu_after[0].saturating_sub(cpu_before[0]),
        node_cpu_ticks: cpu_after[1].saturating_sub(cpu_before[1]),
        used_memory: [memory_before, memory_with],
        keys: [keys_before, keys_with],
        node_rss_kib: [rss_before, rss_with],
        record,
    })
}

fn dbsize(redis: &Redis) -> Result<u64> {
    let n = redis.command(&["DBSIZE"])?.int()?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// One route record, found with `SCAN` (at most 100 steps).
fn record(redis: &Redis) -> Result<Option<Record>> {
    let mut cursor = "0".to_owned();
    for _ in 0..100 {
        let reply = redis.command(&[
            "SCAN",
            &cursor,
            "MATCH",
            "cryptun:1:*:route",
            "COUNT",
            "1000",
        ])?;
        let Reply::Array(mut parts) = reply else {
            anyhow::bail!("SCAN answered {reply:?}");
        };
        let keys = parts.pop().context("SCAN without keys")?.texts()?;
        cursor = parts.pop().context("SCAN without a cursor")?.text()?;
        if let Some(key) = keys.into_iter().next() {
            let bytes = redis
                .command(&["MEMORY", "USAGE", &key, "SAMPLES", "0"])?
                .int()?;
            let flat = redis.command(&["HGETALL", &key])?.texts()?;
            let fields = flat
                .chunks(2)
                .filter_map(|kv| Some((kv.first()?.clone(), kv.get(1)?.clone())))
                .collect();
            return Ok(Some(Record {
                key,
                bytes: u64::try_from(bytes).unwrap_or(0),
                fields,
            }));
        }
        if cursor == "0" {
            break;
        }
    }
    Ok(None)
}

/// Polls the node's tunnel count until it is `want`, for at most `wait`;
/// returns the last count.
fn wait_for_count(addr: SocketAddr, want: usize, wait: Duration) -> Result<usize> {
    let deadline = Instant::now() + wait;
    loop {
        let now = crate::http::tunnel_count(addr)?;
        if now == want || Instant::now() > deadline {
            return Ok(now);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
