//! The arguments of `cryptun-bench run`: what to measure, for how long,
//! and which yardsticks to run beside Cryptun.

use std::path::PathBuf;

use clap::Args;

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
    /// (after the load runs, against a fresh server and client) to measure
    /// what each costs; 0 skips it.
    #[arg(long, default_value_t = crate::visitors::DEFAULT_COUNT)]
    pub idle_visitors: usize,
    /// Skip the idle-tunnel swarm.
    #[arg(long)]
    pub skip_swarm: bool,
    /// Also write the markdown report to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Also run the load scenarios through bore, an established TCP tunnel,
    /// with this `bore` binary (scripts/bench.sh --compare installs one).
    #[arg(long, conflicts_with = "skip_load")]
    pub bore: Option<PathBuf>,
    /// Also run the load scenarios through rathole, a second established
    /// TCP tunnel, with this `rathole` binary (scripts/bench.sh --compare
    /// installs one).
    #[arg(long, conflicts_with = "skip_load")]
    pub rathole: Option<PathBuf>,
    /// Also run the load scenarios through nginx as a one-hop reverse proxy
    /// in front of the origin, with this `nginx` binary (one worker,
    /// keep-alive upstream connections); with --https it also terminates
    /// TLS, the HTTPS scenario's yardstick.
    #[arg(long, conflicts_with = "skip_load")]
    pub nginx_proxy: Option<PathBuf>,
    /// Also measure visitors over HTTPS: Cryptun's HTTPS listener (and
    /// nginx terminating TLS, with --nginx-proxy), 100 B and 1 MiB with
    /// many connections, ratios to plain direct. Needs `openssl`.
    #[arg(long, conflicts_with = "skip_load")]
    pub https: bool,
    /// Use nginx, with this `nginx` binary, as the origin instead of our own
    /// (scripts/bench.sh --nginx installs one): the origin issue 3's
    /// yardstick figures were measured with.
    #[arg(long, conflicts_with = "skip_load")]
    pub nginx: Option<PathBuf>,
    /// Also measure a cluster: a Redis and two nodes, visitors through the
    /// node that serves the tunnel and through the other one, and what
    /// Redis does per tunnel ([`crate::cluster`]). Runs after the other
    /// phases, whatever --skip-load and --skip-swarm say of those.
    #[arg(long)]
    pub cluster: bool,
    /// The `redis-server` for --cluster [default: the one on the PATH].
    #[arg(long, requires = "cluster")]
    pub redis_server: Option<PathBuf>,
    /// Idle tunnels held on one node while Redis's steady load is measured
    /// [default: 10000; with --quick: 1000].
    #[arg(long, requires = "cluster")]
    pub cluster_tunnels: Option<usize>,
    /// Tunnels connected, then disconnected, while Redis's commands are
    /// counted.
    #[arg(long, default_value_t = 1_000, requires = "cluster")]
    pub cluster_connects: usize,
    /// Seconds over which Redis's steady load is measured [default: 30;
    /// with --quick: 10].
    #[arg(long, requires = "cluster")]
    pub cluster_window: Option<u64>,
}
