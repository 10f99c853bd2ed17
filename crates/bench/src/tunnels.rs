//! The idle-tunnel phase: server memory per connected tunnel.
//!
//! For each count N: a fresh `cryptun server` (its `--max-connections`
//! raised above N), its RSS once healthy, then `cryptun-bench swarm --count
//! N`; when the swarm reports every handshake done, the server's RSS again
//! (before asking `/healthz`, whose answer would itself allocate), the
//! live tunnel count from `/healthz`, and the server's RSS once the swarm
//! has gone. Per tunnel = (RSS with tunnels − RSS before) / N.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::procs::{self, Proc};
use crate::run::{Env, start_server};

/// What one count measured.
#[derive(Debug, Clone, Default)]
pub struct TunnelResult {
    /// Tunnels asked for.
    pub requested: usize,
    /// Set when the count was not run, with the reason.
    pub skipped: Option<String>,
    /// Tunnels whose handshake succeeded.
    pub connected: usize,
    /// Handshakes that failed.
    pub failed: usize,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// From the first connect to the last `tunnel_created`.
    pub elapsed_ms: f64,
    /// Live tunnels according to `/healthz`.
    pub listed: usize,
    /// Server RSS before the swarm, KiB.
    pub rss_before_kib: u64,
    /// Server RSS with every tunnel connected, KiB.
    pub rss_with_kib: u64,
    /// Server RSS after the swarm disconnected, KiB.
    pub rss_after_kib: u64,
    /// The swarm's own RSS, KiB.
    pub swarm_rss_kib: u64,
    /// Connection attempts the kernel dropped at the server's full listen
    /// queue while the swarm connected (each costs a 1 s SYN retry).
    pub listen_drops: Option<u64>,
}

impl TunnelResult {
    /// Server memory per connected tunnel, KiB.
    pub fn per_tunnel_kib(&self) -> f64 {
        self.rss_with_kib.saturating_sub(self.rss_before_kib) as f64 / self.connected.max(1) as f64
    }
}

/// What the swarm reports once every handshake has finished.
#[derive(Debug, Deserialize)]
pub struct Ready {
    /// Tunnels whose handshake succeeded.
    pub connected: usize,
    /// Handshakes that failed.
    pub failed: usize,
    /// From the first connect to the last `tunnel_created`.
    pub elapsed_ms: f64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// Starts `cryptun-bench swarm` with `count` tunnels against the server at
/// `addr` (its log `swarm-{label}.log`) and waits for it to report; the
/// swarm holds its tunnels until it is dropped or its stdin closed.
pub fn start_swarm(
    env: &Env,
    addr: std::net::SocketAddr,
    count: usize,
    concurrency: usize,
    label: &str,
) -> Result<(Proc, Ready)> {
    let mut swarm = Proc::spawn(
        "swarm",
        &env.bench,
        &[
            "swarm".into(),
            "--server".into(),
            format!("http://{addr}"),
            "--count".into(),
            count.to_string(),
            "--concurrency".into(),
            concurrency.to_string(),
        ],
        &env.logs.join(format!("swarm-{label}.log")),
    )?;
    // Bounded: every handshake has its own timeout, and the whole swarm a
    // generous one here.
    let line = swarm.next_line(Duration::from_secs(300))?;
    let ready: Ready =
        serde_json::from_str(&line).with_context(|| format!("swarm said: {line}"))?;
    eprintln!(
        "  {} connected, {} failed in {:.0} ms",
        ready.connected, ready.failed, ready.elapsed_ms
    );
    Ok((swarm, ready))
}

/// Runs the swarm for each count.
pub fn swarm_phase(env: &Env, counts: &[usize], concurrency: usize) -> Result<Vec<TunnelResult>> {
    let limit = procs::open_files_limit();
    let mut results = Vec::new();
    for &count in counts {
        // One fd per tunnel in the server and one in the swarm, plus slack.
        let needed = count as u64 + 512;
        if let Some(limit) = limit.filter(|&l| l < needed) {
            let why = format!("open-file limit {limit} < {needed} (run with `ulimit -n 65536`)");
            eprintln!("skipping {count} tunnels: {why}");
            results.push(TunnelResult {
                requested: count,
                skipped: Some(why),
                ..TunnelResult::default()
            });
            continue;
        }
        results.push(one(env, count, concurrency)?);
    }
    Ok(results)
}

fn one(env: &Env, count: usize, concurrency: usize) -> Result<TunnelResult> {
    eprintln!("swarm: {count} tunnels against a fresh server");
    let max = (count + 1_000).to_string();
    let (server, addr) = start_server(
        env,
        &["--max-connections", &max],
        &format!("server-swarm-{count}.log"),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let rss_before_kib = procs::rss_kib(server.pid())?;

    let drops_before = procs::listen_drops();
    let (mut swarm, ready) = start_swarm(env, addr, count, concurrency, &format!("{count}"))?;
    let listen_drops = procs::listen_drops()
        .zip(drops_before)
        .map(|(after, before)| after.saturating_sub(before));
    // Let the last sessions settle (their writer tasks start, first flushes).
    std::thread::sleep(Duration::from_secs(2));
    let rss_with_kib = procs::rss_kib(server.pid())?;
    let swarm_rss_kib = procs::rss_kib(swarm.pid())?;
    let listed = crate::http::tunnel_count(addr)?;

    swarm.close_stdin_and_wait(Duration::from_secs(10));
    // The server sees every socket close at once; give it time to clean up.
    std::thread::sleep(Duration::from_secs(3));
    let rss_after_kib = procs::rss_kib(server.pid())?;
    let left = crate::http::tunnel_count(addr)?;
    if left != 0 {
        eprintln!("  note: {left} tunnels still listed 3 s after the swarm left");
    }
    drop(server);
    Ok(TunnelResult {
        requested: count,
        skipped: None,
        connected: ready.connected,
        failed: ready.failed,
        first_error: ready.first_error,
        elapsed_ms: ready.elapsed_ms,
        listed,
        rss_before_kib,
        rss_with_kib,
        rss_after_kib,
        swarm_rss_kib,
        listen_drops,
    })
}
