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
//!    With `--nginx PATH` the origin is nginx ([`crate::nginx`]) instead.
//!    With `--bore PATH`, after Cryptun's runs and before the idle visitors,
//!    the same scenarios run through bore ([`crate::bore`]) against the same
//!    origin, for a yardstick measured in the same run; so do rathole
//!    ([`crate::rathole`]) with `--rathole PATH` and nginx as a one-hop
//!    reverse proxy ([`crate::nginx::proxy`]) with `--nginx-proxy PATH`.
//!    With `--https`, visitors over TLS ([`crate::https`]) follow.
//! 3. Runs the swarm ([`crate::tunnels`]) against a fresh server per count.
//! 4. With `--cluster`, measures a cluster of two nodes on a Redis
//!    ([`crate::cluster`]).
//! 5. Prints a readable report and the same tables in markdown.
//!
//! Every load is bounded: wrk runs for `--duration` seconds (and is killed
//! 30 s past that), the swarm's handshakes time out, and every wait for a
//! child has a deadline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

pub use crate::args::RunArgs;
use crate::http::check_paths;
use crate::procs::{self, Proc};
use crate::report::{self, Report};
use crate::sample::{Measured, Roles};
use crate::scenarios::{Runner, Scenario, Target, TunnelLoad};
use crate::visitors::Speaks;
use crate::wrk;

/// The executables and the folder for their logs.
pub struct Env {
    /// `cryptun`.
    pub cryptun: PathBuf,
    /// This binary, for `origin` and `swarm`.
    pub bench: PathBuf,
    /// Children's stderr goes to files here.
    pub logs: PathBuf,
}

/// Everything the load phase measured.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// The scenarios, in the order they ran.
    pub scenarios: Vec<Scenario>,
    /// Straight at the origin, one run per scenario.
    pub direct: Vec<Measured>,
    /// Cryptun's tunnel, then bore, rathole and the nginx proxy if asked for.
    pub tunnels: Vec<TunnelLoad>,
    /// Visitors over TLS, with `--https`.
    pub https: Option<crate::https::HttpsReport>,
    /// Held-open idle visitor connections and what they cost: HTTP/1.1,
    /// then HTTP/2.
    pub idle_visitors: Vec<crate::visitors::IdleVisitors>,
    /// Clock ticks per second, to turn ticks into time.
    pub ticks_per_sec: u64,
    /// What served as the origin.
    pub origin: &'static str,
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
    if let Some(nginx) = &args.nginx {
        ensure!(nginx.is_file(), "{} not found (--nginx)", nginx.display());
    }
    if let Some(bore) = &args.bore {
        ensure!(bore.is_file(), "{} not found (--bore)", bore.display());
        crate::bore::ensure_control_port_free()?;
    }
    for (program, flag) in [
        (&args.rathole, "--rathole"),
        (&args.nginx_proxy, "--nginx-proxy"),
    ] {
        if let Some(program) = program {
            ensure!(
                program.is_file(),
                "{} not found ({flag})",
                program.display()
            );
        }
    }
    if args.https {
        // Needed only once the loads are done (to check both sides agree on
        // the TLS suite): found missing then, the whole run would be lost.
        let found = std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|out| out.status.success());
        ensure!(
            found,
            "openssl not found: --https needs it (apt-get install openssl)"
        );
    }
    let logs = std::env::temp_dir().join(format!("cryptun-bench-{}", std::process::id()));
    std::fs::create_dir_all(&logs)?;
    eprintln!("logs of the children: {}", logs.display());
    let env = Env {
        cryptun,
        bench,
        logs,
    };

    if args.cluster {
        crate::cluster::check(&args)?;
    }
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
    let cluster = if args.cluster {
        Some(crate::cluster::phase(&env, &args)?)
    } else {
        None
    };
    let report = Report {
        machine: report::Machine::detect(),
        duration_s: args.duration,
        load,
        tunnels,
        cluster,
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
    // A data directory of its own beside its log, never the user's: a
    // server keeps its records there, and builds of different schema
    // versions must not meet in one database.
    let data = env
        .logs
        .join(format!("data-{}", log.trim_end_matches(".log")));
    args.extend(["--data-dir".to_owned(), data.display().to_string()]);
    // Every load comes from 127.0.0.1 here, standing for many visitors and
    // clients: the per-address shares are raised out of the way.
    for share in [
        "--max-connections-per-ip",
        "--max-requests-per-ip",
        "--max-sessions-per-ip",
        "--max-tunnels-per-ip",
    ] {
        args.extend([share.to_owned(), "1000000".to_owned()]);
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let server = Proc::spawn("server", &env.cryptun, &args, &env.logs.join(log))?;
    crate::http::wait_healthy(addr, Duration::from_secs(15))?;
    Ok((server, addr))
}

fn load_phase(env: &Env, args: &RunArgs) -> Result<LoadReport> {
    let runner = Runner::new(args, wrk::install_script(&env.logs)?);
    let (mut origin, origin_addr, origin_name) = start_origin(env, args)?;
    let (mut server, server_addr) = start_server(env, &[], "server.log")?;
    let (mut client, host, public_url) = start_client(env, origin_addr, server_addr, "client.log")?;
    eprintln!("origin {origin_addr}, server {server_addr}, tunnel {public_url}");
    check_paths(origin_addr, &origin_addr.to_string())?;
    check_paths(server_addr, &host)?;

    let direct = Target {
        name: "direct",
        addr: origin_addr,
        host: None,
        tls: false,
    };
    let tunnel = Target {
        // Alone it is "the tunnel", as in the tables recorded before bore.
        name: if args.bore.is_some() || args.rathole.is_some() || args.nginx_proxy.is_some() {
            "cryptun"
        } else {
            "tunnel"
        },
        addr: server_addr,
        host: Some(host),
        tls: false,
    };
    let pids = Roles {
        server: server.pid(),
        client: client.pid(),
        origin: origin.pid(),
    };
    let (cryptun, [direct_runs]) = runner.tunnel(
        &tunnel,
        [&direct],
        pids,
        &mut [&mut server, &mut client, &mut origin],
    )?;
    drop((server, client));
    let mut tunnels = vec![cryptun];
    if let Some(bore) = &args.bore {
        let logs = &env.logs;
        tunnels.push(crate::bore::measure(
            bore,
            &runner,
            logs,
            &mut origin,
            origin_addr,
        )?);
    }
    if let Some(rathole) = &args.rathole {
        let logs = &env.logs;
        tunnels.push(crate::rathole::measure(
            rathole,
            &runner,
            logs,
            &mut origin,
            origin_addr,
        )?);
    }
    if let Some(nginx) = &args.nginx_proxy {
        let logs = &env.logs;
        tunnels.push(crate::nginx::proxy::measure(
            nginx,
            &runner,
            logs,
            &mut origin,
            origin_addr,
        )?);
    }
    let https = match args.https {
        true => {
            let nginx = args.nginx_proxy.as_deref();
            Some(crate::https::phase(
                env,
                &runner,
                &mut origin,
                origin_addr,
                nginx,
            )?)
        }
        false => None,
    };
    let mut idle_visitors = Vec::new();
    if args.idle_visitors > 0 {
        for speaks in [Speaks::Http1, Speaks::H2c] {
            let origin = (origin_addr, origin.pid());
            idle_visitors.push(idle_visitors_of(env, origin, speaks, args.idle_visitors)?);
        }
    }
    Ok(LoadReport {
        scenarios: runner.scenarios,
        direct: direct_runs,
        tunnels,
        idle_visitors,
        https,
        ticks_per_sec: procs::clock_ticks_per_sec(),
        origin: origin_name,
    })
}

/// Starts the origin `args` ask for (nginx with `--nginx`, else our own);
/// returns it with its address and a description for the report.
pub fn start_origin(env: &Env, args: &RunArgs) -> Result<(Proc, SocketAddr, &'static str)> {
    Ok(match &args.nginx {
        Some(nginx) => {
            let (proc, addr) = crate::nginx::start(nginx, &env.logs)?;
            (proc, addr, "nginx, one worker per CPU")
        }
        None => {
            let mut proc = Proc::spawn(
                "origin",
                &env.bench,
                &["origin".into(), "--listen".into(), "127.0.0.1:0".into()],
                &env.logs.join("origin.log"),
            )?;
            let addr = proc.next_line(Duration::from_secs(10))?.trim().parse()?;
            (proc, addr, "cryptun-bench origin")
        }
    })
}

/// Starts `cryptun http ORIGIN` against the server at `server_addr`; returns
/// it with its tunnel's Host and public URL.
pub fn start_client(
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
            "--inspect=off".into(),
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
        .or_else(|| public_url.strip_prefix("https://"))
        .unwrap_or(&public_url)
        .trim_end_matches('/')
        .to_owned();
    Ok((client, host, public_url))
}

/// Idle visitor connections speaking `speaks` through a fresh server and
/// client, so that neither the load runs' RSS nor this measurement (nor the
/// other protocol's) colours the other.
fn idle_visitors_of(
    env: &Env,
    (origin_addr, origin_pid): (SocketAddr, u32),
    speaks: Speaks,
    count: usize,
) -> Result<crate::visitors::IdleVisitors> {
    let flags: &[&str] = match speaks {
        Speaks::Http1 => &[],
        Speaks::H2c => &["--h2c"],
    };
    let (server, server_addr) = start_server(env, flags, "server-visitors.log")?;
    let (client, host, _) = start_client(env, origin_addr, server_addr, "client-visitors.log")?;
    check_paths(server_addr, &host)?;
    std::thread::sleep(Duration::from_secs(1));
    let pids = Roles {
        server: server.pid(),
        client: client.pid(),
        origin: origin_pid,
    };
    eprintln!(
        "holding {count} idle {} visitor connections open",
        speaks.name()
    );
    crate::visitors::measure((server_addr, &host), speaks, count, pids)
}
