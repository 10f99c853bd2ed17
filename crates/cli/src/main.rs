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
    /// Print one JSON object per line (tunnel_created first, then inspector if on, then one per request).
    #[arg(long)]
    json: bool,
    /// How long visitors may wait for a response (e.g. 10m for long polling; the server caps it).
    #[arg(long, value_parser = humantime::parse_duration)]
    request_timeout: Option<Duration>,
    /// Where the request inspector serves its page (recent requests, replay, HAR); `off` disables it.
    /// If the port is taken the next nine are tried.
    #[arg(long, env = "CRYPTUN_INSPECT", default_value = "127.0.0.1:4040", value_parser = parse_inspect)]
    inspect: Inspect,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Address for the demo's server.
    #[arg(long, default_value = "127.0.0.1:4000")]
    listen: SocketAddr,
    /// Where the request inspector serves its page; `off` disables it.
    #[arg(long, env = "CRYPTUN_INSPECT", default_value = "127.0.0.1:4040", value_parser = parse_inspect)]
    inspect: Inspect,
}

/// `--inspect`: an address, or `off`.
#[derive(Debug, Clone, Copy)]
struct Inspect(Option<SocketAddr>);

fn parse_inspect(value: &str) -> Result<Inspect, String> {
    match value.to_ascii_lowercase().as_str() {
        "off" | "false" | "no" | "none" => Ok(Inspect(None)),
        _ => value.parse().map(|addr| Inspect(Some(addr))).map_err(|_| {
            format!("expected an address such as 127.0.0.1:4040, or off; got {value:?}")
        }),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Server(_) => "info",
        Command::Http(_) | Command::Demo(_) => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: could not start the runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => commands::server(args).await,
            Command::Http(args) => commands::http(args).await,
            Command::Demo(args) => commands::demo(args).await,
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
