//! `cryptun-bench run`: the orchestrator.
//!
//! 1. Starts the origin (`cryptun-bench origin`), `cryptun server` and
//!    `cryptun http ORIGIN --json` as separate processes on loopback.
//! 2. For each scenario runs wrk twice, straight at the origin and through the
//!    tunnel (`-H "Host: tunnel-….localhost:PORT"` against the server's
//!    127.0.0.1 address), sampling every process's RSS and CPU time meanwhile.
//!    Then, against a fresh server and client, holds `--idle-visitors`
//!    keep-alive connections open to measure what each costs
//!    ([`crate::visitors`]).
//! 3. Runs the swarm ([`crate::tunnels`]) against a fresh server per count.
//! 4. Prints a readable report and the same tables in markdown.
//!
//! Every load is bounded: wrk runs for `--duration` seconds (and is killed
//! 30 s past that), the swarm's handshakes time out, and every wait for a
//! child has a deadline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::Args;

use crate::origin::{LARGE_LEN, SMALL_BODY};
use crate::procs::{self, Proc};
use crate::report::{self, Report};
use crate::sample::{Measured, Roles, measure, rss_of};
use crate::wrk::{self, Load};

/// Arguments of `cryptun-bench run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where `cryptun` is (default: beside this binary, e.g. target/release).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Keep-alive connections for the ~100-byte scenario.
    #[arg(long, default_value_t = 50)]
    pub connections: u32,
    /// Keep-alive connections for the 1 MiB scenario.
    #[arg(long, default_value_t = 10)]
    pub large_connections: u32,
    /// Idle-tunnel counts to measure, each against a fresh server
    /// [default: 1000,10000; with --quick: 1000].
    #[arg(long, value_delimiter = ',')]
    pub tunnels: Option<Vec<usize>>,
    /// Most tunnel handshakes in flight at once in the swarm.
    #[arg(long, default_value_t = 100)]
    pub swarm_concurrency: usize,
    /// A quick run: 3 s per wrk run (overrides --duration), 1,000 tunnels.
    #[arg(long)]
    pub quick: bool,
    /// Skip the load scenarios (only the idle-tunnel swarm).
    #[arg(long)]
    pub skip_load: bool,
    /// Idle keep-alive visitor connections to hold open through the tunnel
    /// (before the load runs) to measure what each costs; 0 skips it.
    #[arg(long, default_value_t = crate::visitors::DEFAULT_COUNT)]
    pub idle_visitors: usize,
    /// Skip the idle-tunnel swarm.
    #[arg(long)]
    pub skip_swarm: bool,
    /// Also write the markdown report to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
}

/// The executables and the folder for their logs.
pub struct Env {
    /// `cryptun`.
    pub cryptun: PathBuf,
    /// This binary, for `origin` and `swarm`.
    pub bench: PathBuf,
    /// Children's stderr goes to files here.
    pub logs: PathBuf,
}

/// One load scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Short label for tables.
    pub label: String,
    /// Origin path.
    pub path: &'static str,
    /// wrk -c.
    pub connections: u32,
    /// wrk -t.
    pub threads: u32,
    /// Whether throughput in MiB/s is the headline.
    pub large: bool,
}

/// A scenario, direct and through the tunnel.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    /// What ran.
    pub scenario: Scenario,
    /// Straight at the origin.
    pub direct: Measured,
    /// Through server and client.
    pub tunnel: Measured,
}

/// Everything the load phase measured.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Per scenario.
    pub scenarios: Vec<ScenarioResult>,
    /// RSS once the tunnel is up, before any load, KiB.
    pub idle_rss_kib: Roles<u64>,
    /// Held-open idle visitor connections and what they cost.
    pub idle_visitors: Option<crate::visitors::IdleVisitors>,
    /// RSS two seconds after the last run, KiB.
    pub after_rss_kib: Roles<u64>,
    /// Clock ticks per second, to turn ticks into time.
    pub ticks_per_sec: u64,
}

/// Runs the benchmark.
pub fn run(mut args: RunArgs) -> Result<()> {
    if args.quick {
        args.duration = 3;
    }
    let counts = args.tunnels.clone().unwrap_or_else(|| {
        if args.quick {
            vec![1_000]
        } else {
            vec![1_000, 10_000]
        }
    });
    let bench = std::env::current_exe().context("locating this binary")?;
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => bench.parent().context("no parent dir")?.to_path_buf(),
    };
    let cryptun = bin_dir.join("cryptun");
    ensure!(
        cryptun.is_file(),
        "{} not found: build it first (cargo build --release -p cryptun -p cryptun-bench)",
        cryptun.display()
    );
    let logs = std::env::temp_dir().join(format!("cryptun-bench-{}", std::process::id()));
    std::fs::create_dir_all(&logs)?;
    eprintln!("logs of the children: {}", logs.display());
    let env = Env {
        cryptun,
        bench,
        logs,
    };

    let load = if args.skip_load {
        None
    } else {
        ensure!(
            wrk::available(),
            "wrk is not installed (scripts/bench.sh installs it)"
        );
        Some(load_phase(&env, &args)?)
    };
    let tunnels = if args.skip_swarm {
        Vec::new()
    } else {
        crate::tunnels::swarm_phase(&env, &counts, args.swarm_concurrency)?
    };
    let report = Report {
        machine: report::Machine::detect(),
        duration_s: args.duration,
        load,
        tunnels,
    };
    println!("{}", report.text());
    let markdown = report.markdown();
    println!("\n---- markdown ----\n\n{markdown}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &markdown).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("markdown written to {}", path.display());
    }
    Ok(())
}

/// Starts `cryptun server` on a free loopback port and waits until healthy.
pub fn start_server(env: &Env, extra: &[&str], log: &str) -> Result<(Proc, SocketAddr)> {
    let addr = crate::http::free_port()?;
    let mut args = vec!["server".to_owned(), "--listen".to_owned(), addr.to_string()];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let server = Proc::spawn("server", &env.cryptun, &args, &env.logs.join(log))?;
    crate::http::wait_healthy(addr, Duration::from_secs(15))?;
    Ok((server, addr))
}

fn load_phase(env: &Env, args: &RunArgs) -> Result<LoadReport> {
    let script = wrk::install_script(&env.logs)?;
    let mut origin = Proc::spawn(
        "origin",
        &env.bench,
        &["origin".into(), "--listen".into(), "127.0.0.1:0".into()],
        &env.logs.join("origin.log"),
    )?;
    let origin_addr: SocketAddr = origin.next_line(Duration::from_secs(10))?.trim().parse()?;
    let (mut server, server_addr) = start_server(env, &[], "server.log")?;
    let (mut client, host, public_url) = start_client(env, origin_addr, server_addr, "client.log")?;
    eprintln!("origin {origin_addr}, server {server_addr}, tunnel {public_url}");
    check_paths(origin_addr, &origin_addr.to_string())?;
    check_paths(server_addr, &host)?;

    let pids = Roles {
        server: server.pid(),
        client: client.pid(),
        origin: origin.pid(),
    };
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss_kib = rss_of(pids)?;

    let direct_url = |path: &str| format!("http://{origin_addr}{path}");
    let tunnel_url = |path: &str| format!("http://{server_addr}{path}");
    let duration = Duration::from_secs(args.duration);
    let warm = Duration::from_secs(if args.quick { 1 } else { 2 });
    for (url, host) in [
        (direct_url("/small"), None),
        (tunnel_url("/small"), Some(host.clone())),
    ] {
        eprintln!("warm-up {url}");
        let load = Load {
            url,
            host,
            connections: args.connections,
            threads: 2,
            duration: warm,
        };
        wrk::run(&load, &script)?;
    }

    let scenarios = [
        Scenario {
            label: format!("100 B, {} conns", args.connections),
            path: "/small",
            connections: args.connections,
            threads: 2,
            large: false,
        },
        Scenario {
            label: format!("1 MiB, {} conns", args.large_connections),
            path: "/1m",
            connections: args.large_connections,
            threads: 2,
            large: true,
        },
        Scenario {
            label: "100 B, 1 conn".to_owned(),
            path: "/small",
            connections: 1,
            threads: 1,
            large: false,
        },
    ];
    let mut results = Vec::new();
    for scenario in scenarios {
        let mut run = |url: String, host: Option<String>, what: &str| -> Result<Measured> {
            eprintln!(
                "{} {what}: wrk -t{} -c{} -d{}s {url}",
                scenario.label, scenario.threads, scenario.connections, args.duration
            );
            let load = Load {
                url,
                host,
                connections: scenario.connections,
                threads: scenario.threads,
                duration,
            };
            let measured = measure(&load, &script, pids)?;
            for proc in [&mut server, &mut client, &mut origin] {
                proc.check_alive()?;
            }
            let w = measured.wrk;
            eprintln!(
                "  {:.0} req/s, {:.1} MiB/s, latency mean {:.0} p50 {} p90 {} p99 {} max {} µs, {} errors",
                w.rps(),
                w.mib_per_sec(),
                w.mean_us,
                w.p50_us,
                w.p90_us,
                w.p99_us,
                w.max_us,
                w.errors()
            );
            Ok(measured)
        };
        let direct = run(direct_url(scenario.path), None, "direct")?;
        let tunnel = run(tunnel_url(scenario.path), Some(host.clone()), "tunnel")?;
        results.push(ScenarioResult {
            scenario,
            direct,
            tunnel,
        });
    }
    std::thread::sleep(Duration::from_secs(2));
    let after_rss_kib = rss_of(pids)?;
    drop((server, client));
    let idle_visitors = match args.idle_visitors {
        0 => None,
        count => Some(idle_visitors(env, origin_addr, origin.pid(), count)?),
    };
    Ok(LoadReport {
        scenarios: results,
        idle_rss_kib,
        idle_visitors,
        after_rss_kib,
        ticks_per_sec: procs::clock_ticks_per_sec(),
    })
}

/// Starts `cryptun http ORIGIN` against the server at `server_addr`; returns
/// it with its tunnel's Host and public URL.
fn start_client(
    env: &Env,
    origin_addr: SocketAddr,
    server_addr: SocketAddr,
    log: &str,
) -> Result<(Proc, String, String)> {
    let mut client = Proc::spawn(
        "client",
        &env.cryptun,
        &[
            "http".into(),
            origin_addr.to_string(),
            "--server".into(),
            format!("http://{server_addr}"),
            "--json".into(),
            // The tunnel itself is measured; the request inspector (a
            // debugging aid that copies the start of every body) is not.
            "--inspect".into(),
            "off".into(),
        ],
        &env.logs.join(log),
    )?;
    let created: serde_json::Value =
        serde_json::from_str(&client.next_line(Duration::from_secs(15))?)?;
    // One line per request follows; the reader thread drains them.
    client.release_stdout();
    let public_url = created["public_url"]
        .as_str()
        .context("no public_url in the client's first line")?
        .to_owned();
    let host = public_url
        .strip_prefix("http://")
        .unwrap_or(&public_url)
        .trim_end_matches('/')
        .to_owned();
    Ok((client, host, public_url))
}

/// Idle visitor connections through a fresh server and client, so that
/// neither the load runs' RSS nor this measurement colours the other.
fn idle_visitors(
    env: &Env,
    origin_addr: SocketAddr,
    origin_pid: u32,
    count: usize,
) -> Result<crate::visitors::IdleVisitors> {
    let (server, server_addr) = start_server(env, &[], "server-visitors.log")?;
    let (client, host, _) = start_client(env, origin_addr, server_addr, "client-visitors.log")?;
    check_paths(server_addr, &host)?;
    std::thread::sleep(Duration::from_secs(1));
    let pids = Roles {
        server: server.pid(),
        client: client.pid(),
        origin: origin_pid,
    };
    eprintln!("holding {count} idle visitor connections open");
    crate::visitors::measure(server_addr, &host, count, pids)
}

/// Checks that `/small` and `/1m` answer in full at `addr` with Host `host`.
fn check_paths(addr: SocketAddr, host: &str) -> Result<()> {
    let (status, body) = crate::http::get(addr, host, "/small")?;
    if status != 200 || body != SMALL_BODY {
        bail!(
            "GET /small via {addr} (Host {host}) gave {status}, {} bytes",
            body.len()
        );
    }
    let (status, body) = crate::http::get(addr, host, "/1m")?;
    if status != 200 || body.len() != LARGE_LEN {
        bail!(
            "GET /1m via {addr} (Host {host}) gave {status}, {} bytes",
            body.len()
        );
    }
    Ok(())
}
