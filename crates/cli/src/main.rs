//! `cryptun`: the one binary. Parses the command line, sets up logging, and
//! hands off to the library crates; no tunnel logic lives here.

#![forbid(unsafe_code)]

mod commands;
mod output;

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Self-hosted secure tunnels: expose a local service at a public URL.
#[derive(Debug, Parser)]
#[command(name = "cryptun", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr: `text` for people, `json` (one object per line) for machines.
    #[arg(long, global = true, env = "CRYPTUN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines (colours on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the tunnel server (gateway on --listen, clients connect to /ws).
    #[command(
        after_help = "Examples:\n  cryptun server\n  cryptun server --listen 0.0.0.0:80 --domain tunnels.example.com"
    )]
    Server(ServerArgs),
    /// Expose a local HTTP service through a server.
    #[command(
        after_help = "Examples:\n  cryptun http 3000\n  cryptun http 192.168.1.5:8080 --subdomain myapp\n  cryptun http --hello --json"
    )]
    Http(HttpArgs),
    /// Server, hello service and client in one process: the whole product at once.
    #[command(after_help = "Example:\n  cryptun demo\n  curl http://tunnel-<id>.localhost:4000/")]
    Demo(DemoArgs),
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// Address to listen on for visitors and clients.
    #[arg(long, env = "CRYPTUN_LISTEN", default_value = "127.0.0.1:4000")]
    listen: SocketAddr,
    /// Tunnels are served at {subdomain}.{domain}.
    #[arg(long, env = "CRYPTUN_DOMAIN", default_value = "localhost")]
    domain: String,
    /// Port shown in public URLs (default: the listening port), e.g. behind a port forward.
    #[arg(long, env = "CRYPTUN_PUBLIC_PORT")]
    public_port: Option<u16>,
    /// How long a visitor waits for the local service's response head before 504.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// The longest request timeout a client may ask for (`cryptun http --request-timeout`).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    max_request_timeout: Duration,
    /// How often the server pings each client.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// Silence after which a client is taken as gone (its tunnels close, pending requests get 502).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    heartbeat_timeout: Duration,
    /// How long a new client connection has to ask for a tunnel.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    handshake_timeout: Duration,
    /// Most requests in flight per client connection; beyond it visitors get 429.
    #[arg(long, default_value_t = 1024)]
    max_streams: usize,
    /// Most simultaneous TCP connections.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// How long in-flight requests may finish after Ctrl-C or SIGTERM.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// After Ctrl-C or SIGTERM, keep accepting this long with /readyz answering 503, so a load balancer stops sending traffic first.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    shutdown_delay: Duration,
}

#[derive(Debug, Args)]
struct HttpArgs {
    /// The local service: a port (3000), host:port, or http://host:port.
    #[arg(required_unless_present = "hello", conflicts_with = "hello")]
    target: Option<String>,
    /// Serve the built-in hello page instead of a local service.
    #[arg(long)]
    hello: bool,
    /// The cryptun server to connect to.
    #[arg(long, env = "CRYPTUN_SERVER", default_value = "http://127.0.0.1:4000")]
    server: String,
    /// Ask for this subdomain instead of a random one.
    #[arg(long)]
    subdomain: Option<String>,
    /// Print one JSON object per line (tunnel_created first, then one per request).
    #[arg(long)]
    json: bool,
    /// How long visitors may wait for a response (e.g. 10m for long polling; the server caps it).
    #[arg(long, value_parser = humantime::parse_duration)]
    request_timeout: Option<Duration>,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Address for the demo's server.
    #[arg(long, default_value = "127.0.0.1:4000")]
    listen: SocketAddr,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Server(_) => "info",
        Command::Http(_) | Command::Demo(_) => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: could not start the runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let json_logs = cli.log_format == LogFormat::Json;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => commands::server(args).await,
            Command::Http(args) => commands::http(args, json_logs).await,
            Command::Demo(args) => commands::demo(args, json_logs).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
