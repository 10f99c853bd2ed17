//! The cluster scenario (`cryptun-bench run --cluster`): what sharing
//! tunnels through Redis costs.
//!
//! In one run, against one `redis-server` started for it on loopback:
//!
//! 1. [`hop`]: two nodes, A and B, and a tunnel whose client is on B. wrk
//!    sends the small-response scenarios straight to the origin, through B
//!    (the node that serves the tunnel) and through A (the other node,
//!    which forwards each request to B over the internal hop), CPU sampled
//!    for both nodes, the client, the origin and Redis in every run;
//! 2. [`store`]: what Redis runs per tunnel connect and disconnect (counted
//!    with `MONITOR`), then, with many idle tunnels on one node, Redis's
//!    steady load (commands per second from `INFO commandstats`, its CPU),
//!    and the memory of a name's route record (`MEMORY USAGE`).
//!
//! Redis is emptied (`FLUSHALL`) between the parts, when no node runs, so
//! that each starts from nothing. Every wait has a deadline; everything
//! stays on 127.0.0.1.

pub mod hop;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::procs::{self, Proc};
use crate::redis::Redis;
use crate::run::{Env, RunArgs, start_server};

/// Everything the cluster scenario measured.
#[derive(Debug, Clone)]
pub struct ClusterReport {
    /// `redis_version` from `INFO server`.
    pub redis_version: String,
    /// Visitors through the right node and the wrong one.
    pub hop: hop::HopReport,
    /// Redis's commands per tunnel connect and disconnect.
    pub connects: store::Connects,
    /// Redis with many idle tunnels on one node.
    pub steady: store::Steady,
    /// Clock ticks per second, to turn ticks into time.
    pub ticks_per_sec: u64,
}

/// What the scenario's arguments come to.
struct Plan {
    redis_server: PathBuf,
    tunnels: usize,
    connects: usize,
    window: Duration,
}

fn plan(args: &RunArgs) -> Result<Plan> {
    let redis_server = match &args.redis_server {
        Some(path) => path.clone(),
        None => crate::redis::find_server()
            .context("redis-server is not installed (scripts/bench.sh --cluster installs it)")?,
    };
    ensure!(
        redis_server.is_file(),
        "{} not found (--redis-server)",
        redis_server.display()
    );
    let tunnels = args
        .cluster_tunnels
        .unwrap_or(if args.quick { 1_000 } else { 10_000 });
    let window = args
        .cluster_window
        .unwrap_or(if args.quick { 10 } else { 30 });
    ensure!(
        tunnels > 0 && args.cluster_connects > 0 && window > 0,
        "--cluster-tunnels, --cluster-connects and --cluster-window must be at least 1"
    );
    Ok(Plan {
        redis_server,
        tunnels,
        connects: args.cluster_connects,
        window: Duration::from_secs(window),
    })
}

/// Checks, before anything runs, what the scenario needs: redis-server,
/// wrk, and descriptors for its tunnels (one in the node and one in the
/// swarm each).
pub fn check(args: &RunArgs) -> Result<()> {
    let plan = plan(args)?;
    ensure!(
        crate::wrk::available(),
        "wrk is not installed (scripts/bench.sh installs it)"
    );
    let needed = plan.tunnels.max(plan.connects) as u64 + 512;
    if let Some(limit) = procs::open_files_limit() {
        ensure!(
            limit >= needed,
            "open-file limit {limit} < {needed} for --cluster (run with `ulimit -n 65536`)"
        );
    }
    Ok(())
}

/// Runs the scenario.
pub fn phase(env: &Env, args: &RunArgs) -> Result<ClusterReport> {
    let plan = plan(args)?;
    let mut redis = Redis::start(&plan.redis_server, &env.logs)?;
    let redis_version = redis
        .info("server")?
        .get("redis_version")
        .cloned()
        .unwrap_or_default();
    eprintln!("cluster: redis-server {redis_version} on {}", redis.addr);
    let secret = Secret::new();

    let hop = hop::measure(env, args, &mut redis, &secret)?;
    empty(&redis)?;
    let concurrency = args.swarm_concurrency;
    let connects = store::connects(env, &redis, &secret, plan.connects, concurrency)?;
    empty(&redis)?;
    let steady = store::steady(
        env,
        &mut redis,
        &secret,
        plan.tunnels,
        concurrency,
        plan.window,
    )?;
    Ok(ClusterReport {
        redis_version,
        hop,
        connects,
        steady,
        ticks_per_sec: procs::clock_ticks_per_sec(),
    })
}

/// Empties Redis between parts (no node runs then).
fn empty(redis: &Redis) -> Result<()> {
    redis.command(&["FLUSHALL"])?;
    Ok(())
}

/// The cluster's secret for this run: random enough for loopback, never
/// the same twice.
pub struct Secret(String);

impl Secret {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Secret(format!("cryptun-bench-{}-{nanos}", std::process::id()))
    }
}

/// Starts `cryptun server` as node `name` of the cluster on `redis` (its
/// hop on a free loopback port), with `extra` arguments, and waits until it
/// is healthy.
pub fn start_node(
    env: &Env,
    redis: &Redis,
    secret: &Secret,
    name: &str,
    extra: &[&str],
) -> Result<(Proc, SocketAddr)> {
    let url = redis.url();
    let mut args = vec![
        "--cluster",
        &url,
        "--node-name",
        name,
        "--cluster-listen",
        "127.0.0.1:0",
        "--cluster-secret",
        &secret.0,
    ];
    args.extend_from_slice(extra);
    let started = start_server(env, &args, &format!("node-{name}.log"))
        .with_context(|| format!("starting cluster node {name}"))?;
    eprintln!("cluster: node {name} on {}", started.1);
    Ok(started)
}
