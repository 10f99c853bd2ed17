//! Visitors through the right node and through the wrong one.
//!
//! Nodes A and B share a Redis; the tunnel's client connects to B. For each
//! small-response scenario of the load phase ([`Runner`]'s, without the
//! 1 MiB ones), wrk runs three times in a row: straight at the origin, at B
//! (which serves the tunnel: the path of a single server) and at A (which
//! finds the name's route in Redis, caches it, and carries every request to
//! B over the internal hop). Each run samples the CPU of both nodes, the
//! client, the origin and Redis with [`Runner::sample`], the same code that
//! samples a single server's, and counts the commands Redis ran meanwhile.

use anyhow::Result;

use crate::cluster::{Secret, start_node};
use crate::http::check_paths;
use crate::redis::Redis;
use crate::run::{Env, RunArgs, start_client, start_origin};
use crate::sample::Sampled;
use crate::scenarios::{Runner, Scenario, Target};

/// The processes whose CPU each run samples, in the order of
/// [`Sampled::cpu_ticks`].
pub const PROCESSES: [&str; 5] = ["node A", "node B", "client", "origin", "redis"];

/// The targets of each scenario, in the order of [`HopReport::runs`].
pub const TARGETS: [&str; 3] = ["direct", "right node (B)", "wrong node (A)"];

/// One wrk run and what Redis did meanwhile.
#[derive(Debug, Clone, Default)]
pub struct HopRun {
    /// wrk's summary and each process's CPU.
    pub sampled: Sampled,
    /// Commands Redis ran during the run (`total_commands_processed`).
    pub redis_commands: u64,
}

/// What the hop part measured.
#[derive(Debug, Clone)]
pub struct HopReport {
    /// The scenarios, in the order they ran.
    pub scenarios: Vec<Scenario>,
    /// Per scenario, one run per [`TARGETS`].
    pub runs: Vec<[HopRun; 3]>,
    /// What served as the origin.
    pub origin: &'static str,
}

/// Starts the origin, nodes A and B and a client on B; runs the scenarios.
pub fn measure(env: &Env, args: &RunArgs, redis: &mut Redis, secret: &Secret) -> Result<HopReport> {
    let mut runner = Runner::new(args, crate::wrk::install_script(&env.logs)?);
    runner.scenarios.retain(|s| !s.large);
    let (mut origin, origin_addr, origin_name) = start_origin(env, args)?;
    let (mut a, a_addr) = start_node(env, redis, secret, "a", &[])?;
    let (mut b, b_addr) = start_node(env, redis, secret, "b", &[])?;
    let (mut client, host, public_url) = start_client(env, origin_addr, b_addr, "client-b.log")?;
    eprintln!("cluster: tunnel {public_url}, its client on node b");
    check_paths(b_addr, &host)?;
    check_paths(a_addr, &host)?;

    let targets = [
        Target {
            name: "direct",
            addr: origin_addr,
            host: None,
            tls: false,
        },
        Target {
            name: "right node",
            addr: b_addr,
            host: Some(host.clone()),
            tls: false,
        },
        Target {
            name: "wrong node",
            addr: a_addr,
            host: Some(host),
            tls: false,
        },
    ];
    let pids = [
        a.pid(),
        b.pid(),
        client.pid(),
        origin.pid(),
        redis.proc().pid(),
    ];
    for target in &targets {
        runner.warm_up(target)?;
    }
    let mut runs = Vec::new();
    for scenario in &runner.scenarios {
        let mut three: [HopRun; 3] = Default::default();
        for (target, run) in targets.iter().zip(&mut three) {
            let before = redis.info_number("stats", "total_commands_processed")?;
            let procs = &mut [&mut a, &mut b, &mut client, &mut origin, redis.proc()];
            let sampled = runner.sample(scenario, target, &pids, procs)?;
            let after = redis.info_number("stats", "total_commands_processed")?;
            *run = HopRun {
                sampled,
                // The INFO that read `before` counts itself.
                redis_commands: after.saturating_sub(before + 1),
            };
        }
        runs.push(three);
    }
    Ok(HopReport {
        scenarios: runner.scenarios,
        runs,
        origin: origin_name,
    })
}
