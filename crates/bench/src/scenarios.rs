//! The load scenarios and the one code path that measures a tunnel with
//! them.
//!
//! A [`Target`] is where wrk sends its requests: the origin itself
//! ("direct") or a tunnel's public side. [`Runner::tunnel`] measures one
//! tunnel: its processes' resident memory once it is up and idle, a warm-up,
//! every scenario (each wrk run sampled by [`crate::sample::measure`]), and
//! the memory once idle again. Cryptun's tunnel and bore's both go through
//! it, so their numbers compare.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::http::check_paths;
use crate::procs::Proc;
use crate::run::RunArgs;
use crate::sample::{Measured, NO_PROCESS, Roles, Sampled, measure, measure_all, rss_of};
use crate::wrk::{self, Load, WrkResult};

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

/// Where wrk sends its requests.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its name in messages and tables ("direct", "tunnel", "bore", ...).
    pub name: &'static str,
    /// The address wrk connects to.
    pub addr: SocketAddr,
    /// Host header to send, if not the address.
    pub host: Option<String>,
    /// Whether visitors speak TLS: the URL is then `https://` + `host`
    /// (also the TLS server name), connected at `addr`.
    pub tls: bool,
}

impl Target {
    fn url(&self, path: &str) -> String {
        match (&self.host, self.tls) {
            (Some(host), true) => format!("https://{host}{path}"),
            (None, true) => format!("https://{}{path}", self.addr),
            (_, false) => format!("http://{}{path}", self.addr),
        }
    }

    /// wrk's load for `url`: connected at `addr` whatever the URL's host.
    fn load(&self, url: String, connections: u32, threads: u32, duration: Duration) -> Load {
        Load {
            url,
            resolve: self.tls.then(|| self.addr.ip()),
            host: self.host.clone(),
            connections,
            threads,
            duration,
        }
    }
}

/// One tunnel's side of the load phase.
#[derive(Debug, Clone, Default)]
pub struct TunnelLoad {
    /// Its name in the tables.
    pub name: &'static str,
    /// One run per scenario, in the order of [`Runner::scenarios`].
    pub runs: Vec<Measured>,
    /// RSS once the tunnel is up, before any load, KiB.
    pub idle_rss_kib: Roles<u64>,
    /// RSS two seconds after the last run, KiB.
    pub after_rss_kib: Roles<u64>,
    /// Whether it has a client process (nginx as a proxy has none).
    pub has_client: bool,
}

/// What every wrk run of the load phase shares.
#[derive(Debug, Clone)]
pub struct Runner {
    /// The scenarios, in the order they run.
    pub scenarios: Vec<Scenario>,
    /// wrk's Lua script ([`wrk::install_script`]).
    script: PathBuf,
    /// Seconds per measured run.
    duration: Duration,
    /// How long each target is warmed up with `/small` before its first run.
    warm: Duration,
    /// Connections during the warm-up.
    warm_connections: u32,
}

impl Runner {
    /// The four scenarios of `run`'s arguments, run with wrk's `script`.
    pub fn new(args: &RunArgs, script: PathBuf) -> Self {
        let scenarios = vec![
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
            // Nagle's algorithm meeting delayed ACKs anywhere on the path
            // would show here as p99 tens of milliseconds over direct.
            Scenario {
                label: "1 MiB, 1 conn".to_owned(),
                path: "/1m",
                connections: 1,
                threads: 1,
                large: true,
            },
        ];
        Runner {
            scenarios,
            script,
            duration: Duration::from_secs(args.duration),
            warm: Duration::from_secs(if args.quick { 1 } else { 2 }),
            warm_connections: args.connections,
        }
    }

    /// The same runner with only the scenarios of many connections
    /// (100 B and 1 MiB), for the HTTPS phase.
    pub fn concurrent_only(&self) -> Runner {
        let mut runner = self.clone();
        runner.scenarios.retain(|s| s.connections > 1);
        runner
    }

    /// Measures a relay whose public side is `addr` (bore or rathole, a
    /// `server` and a `client` process; nginx as a proxy, a server alone):
    /// its paths checked, then every scenario through it, its processes and
    /// the `origin` sampled.
    pub fn relay(
        &self,
        name: &'static str,
        addr: SocketAddr,
        server: &mut Proc,
        client: Option<&mut Proc>,
        origin: &mut Proc,
    ) -> Result<TunnelLoad> {
        check_paths(addr, &addr.to_string())?;
        let target = Target {
            name,
            addr,
            host: None,
            tls: false,
        };
        let pids = Roles {
            server: server.pid(),
            client: client.as_ref().map_or(NO_PROCESS, |c| c.pid()),
            origin: origin.pid(),
        };
        let (load, []) = match client {
            Some(client) => self.tunnel(&target, [], pids, &mut [server, client, origin])?,
            None => self.tunnel(&target, [], pids, &mut [server, origin])?,
        };
        Ok(load)
    }

    /// Measures the tunnel reached at `tunnel`, whose processes are `pids`:
    /// RSS once idle, every scenario, RSS 2 s after the last run. Each of
    /// `paired` (direct, say) runs each scenario just before the tunnel
    /// does, so that the two are measured under the same conditions; their
    /// runs come back beside the tunnel's. `procs` are checked to be alive
    /// after every run.
    pub fn tunnel<const N: usize>(
        &self,
        tunnel: &Target,
        paired: [&Target; N],
        pids: Roles<u32>,
        procs: &mut [&mut Proc],
    ) -> Result<(TunnelLoad, [Vec<Measured>; N])> {
        std::thread::sleep(Duration::from_secs(1));
        let idle_rss_kib = rss_of(pids)?;
        for target in paired.iter().chain([&tunnel]) {
            self.warm_up(target)?;
        }
        let mut paired_runs: [Vec<Measured>; N] = std::array::from_fn(|_| Vec::new());
        let mut runs = Vec::new();
        for scenario in &self.scenarios {
            for (target, target_runs) in paired.iter().zip(&mut paired_runs) {
                target_runs.push(self.measure(scenario, target, pids, procs)?);
            }
            runs.push(self.measure(scenario, tunnel, pids, procs)?);
        }
        std::thread::sleep(Duration::from_secs(2));
        let load = TunnelLoad {
            name: tunnel.name,
            runs,
            idle_rss_kib,
            after_rss_kib: rss_of(pids)?,
            has_client: pids.client != NO_PROCESS,
        };
        Ok((load, paired_runs))
    }

    /// Sends `/small` to `target` for the warm-up time.
    pub fn warm_up(&self, target: &Target) -> Result<()> {
        let url = target.url("/small");
        eprintln!("warm-up {url}");
        let load = target.load(url, self.warm_connections, 2, self.warm);
        wrk::run(&load, &self.script)?;
        Ok(())
    }

    fn measure(
        &self,
        scenario: &Scenario,
        target: &Target,
        pids: Roles<u32>,
        procs: &mut [&mut Proc],
    ) -> Result<Measured> {
        let url = target.url(scenario.path);
        self.announce(scenario, target, &url);
        let load = self.load(scenario, target, url);
        let measured = measure(&load, &self.script, pids)?;
        check(procs, &measured.wrk)?;
        Ok(measured)
    }

    /// Runs `scenario` against `target` once, with what each process of
    /// `pids` spent meanwhile (the same sampling as [`Runner::tunnel`]'s);
    /// `procs` are checked to be alive after the run.
    pub fn sample(
        &self,
        scenario: &Scenario,
        target: &Target,
        pids: &[u32],
        procs: &mut [&mut Proc],
    ) -> Result<Sampled> {
        let url = target.url(scenario.path);
        self.announce(scenario, target, &url);
        let load = self.load(scenario, target, url);
        let sampled = measure_all(&load, &self.script, pids)?;
        check(procs, &sampled.wrk)?;
        Ok(sampled)
    }

    fn announce(&self, scenario: &Scenario, target: &Target, url: &str) {
        eprintln!(
            "{} {}: wrk -t{} -c{} -d{}s {url}",
            scenario.label,
            target.name,
            scenario.threads,
            scenario.connections,
            self.duration.as_secs()
        );
    }

    fn load(&self, scenario: &Scenario, target: &Target, url: String) -> Load {
        target.load(url, scenario.connections, scenario.threads, self.duration)
    }
}

/// Fails if one of `procs` has exited; prints the run's summary.
fn check(procs: &mut [&mut Proc], w: &WrkResult) -> Result<()> {
    for proc in procs.iter_mut() {
        proc.check_alive()?;
    }
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
    Ok(())
}
