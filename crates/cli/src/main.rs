//! `cryptun`: the one binary. Parses the command line, sets up logging, and
//! hands off to the library crates; no tunnel logic lives here.

#![forbid(unsafe_code)]

mod commands;
mod config;
mod guide;
mod held;
mod inspect;
mod keys;
mod lines;
mod local;
mod output;
mod parse;
mod paths;
mod start;
mod status;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};
use cryptun_client::{BasicAuth, HostHeader, Secret};
use cryptun_server::AdminToken;
use cryptun_server::policy::Rate;
use inspect::InspectArgs;

/// See `Cargo.toml` for why jemalloc.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
        after_help = "Examples:\n  cryptun server\n  cryptun server --listen 0.0.0.0:80 --domain tunnels.example.com\n  cryptun server --tls-self-signed\n  cryptun server --domain tunnels.example.com --listen 0.0.0.0:80 --tls-listen 0.0.0.0:443 \\\n      --tls-cert fullchain.pem --tls-key privkey.pem --redirect-http"
    )]
    Server(Box<ServerArgs>),
    /// Expose a local HTTP service through a server.
    #[command(
        after_help = "Examples:\n  cryptun http 3000\n  cryptun http 192.168.1.5:8080 --subdomain myapp\n  cryptun http --hello --json\n  cryptun http 3000 --server https://tunnels.example.com\n  cryptun http 3000 --server https://localhost:4443 --ca ca.pem\n  cryptun http 3000 --server https://a.example.com --server https://b.example.com\n  CRYPTUN_BASIC_AUTH=ann:secret cryptun http 3000 --allow-ip 203.0.113.0/24\n  cryptun http 5173 --host-header rewrite\n  cryptun http https://localhost:8443 --local-ca ~/.local/share/mkcert/rootCA.pem"
    )]
    Http(HttpArgs),
    /// Open tunnels declared in the client config file, over one connection.
    #[command(
        after_help = "The config file (default ~/.config/cryptun/client.toml):\n  servers = [\"https://a.tunnels.example.com\", \"https://b.tunnels.example.com\"]\n  [tunnels.web]\n  target = \"3000\"\n  subdomain = \"myapp\"\n  [tunnels.api]\n  target = \"localhost:8080\"\n\nExamples:\n  cryptun start --all\n  cryptun start web\n  cryptun start web api --json\n  cryptun start --all --config ./cryptun.toml\n  cryptun start --all --inspect=127.0.0.1:4041"
    )]
    Start(start::StartArgs),
    /// Server, hello service and client in one process: the whole product at once.
    #[command(after_help = "Example:\n  cryptun demo\n  curl http://tunnel-<id>.localhost:4000/")]
    Demo(DemoArgs),
    /// Manage the server's API keys and reserved names (run where the server's data directory is).
    #[command(
        after_help = "Examples:\n  cryptun keys create --name laptop\n  cryptun keys list\n  cryptun keys reserve k7x2abcd myapp\n  cryptun keys revoke k7x2abcd\n  cryptun keys --data-dir /var/lib/cryptun export --output keys.json\n  cryptun keys --cluster redis://10.0.0.5:6379 import --input keys.json"
    )]
    Keys(KeysArgs),
    /// Check an API key with the server and save it for `cryptun http` (in
    /// ~/.config/cryptun/client.toml, mode 0600).
    #[command(
        after_help = "Examples:\n  cryptun login ck_...\n  cryptun login --server https://tunnels.example.com ck_...   (saves the server too)\n  cryptun login < token.txt   (keeps the key out of shell history)"
    )]
    Login(LoginArgs),
    /// TCP tunnels: not supported yet (says so).
    #[command(hide = true)]
    Tcp(NotYet),
    /// TLS passthrough tunnels: not supported yet (says so).
    #[command(hide = true)]
    Tls(NotYet),
    /// Print a shell completion script to standard output.
    #[command(
        after_help = "Examples:\n  cryptun completions bash > /etc/bash_completion.d/cryptun\n  cryptun completions zsh > \"${fpath[1]}/_cryptun\"\n  cryptun completions fish > ~/.config/fish/completions/cryptun.fish"
    )]
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("tls").args(["tls_cert", "tls_self_signed"])))]
struct ServerArgs {
    /// Config file: flags as keys (`request_timeout = "30s"`); flags and CRYPTUN_* variables win
    /// over it [default: $XDG_CONFIG_HOME/cryptun/server.toml or ~/.config/cryptun/server.toml].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on for visitors and clients.
    #[arg(long, env = "CRYPTUN_LISTEN", default_value = "127.0.0.1:4000")]
    listen: SocketAddr,
    /// Tunnels are served at {subdomain}.{domain}.
    #[arg(long, env = "CRYPTUN_DOMAIN", default_value = "localhost")]
    domain: String,
    /// Port shown in public URLs (default: the listening port), e.g. behind a port forward.
    #[arg(long, env = "CRYPTUN_PUBLIC_PORT")]
    public_port: Option<u16>,
    /// Scheme shown in public URLs: https behind a reverse proxy that terminates TLS
    /// [default: https with a TLS listener (--tls-cert, --tls-self-signed), http otherwise].
    #[arg(long, env = "CRYPTUN_PUBLIC_SCHEME", value_parser = ["http", "https"])]
    public_scheme: Option<String>,
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
    /// Most simultaneous TCP connections; a tenth are kept for clients reconnecting.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Most simultaneous TCP connections from one address (IPv6: its /64); --trusted-proxy
    /// addresses are exempt.
    #[arg(long, default_value_t = 1_000)]
    max_connections_per_ip: usize,
    /// Most tunnel requests in flight from one visitor address (IPv6: its /64); 429 beyond.
    #[arg(long, default_value_t = 256)]
    max_requests_per_ip: usize,
    /// Most client connections at once for one API key, or one address (IPv6: its /64) without a
    /// key.
    #[arg(long, default_value_t = 64)]
    max_sessions_per_ip: usize,
    /// Most live tunnels at once for one API key, or one address (IPv6: its /64) without a key.
    #[arg(long, default_value_t = 256)]
    max_tunnels_per_ip: usize,
    /// How long in-flight requests may finish after Ctrl-C or SIGTERM.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Address for HTTPS, used when a certificate is given (--tls-cert or --tls-self-signed).
    #[arg(long, env = "CRYPTUN_TLS_LISTEN", default_value = "127.0.0.1:4443")]
    tls_listen: SocketAddr,
    /// PEM certificate chain for *.DOMAIN and DOMAIN (leaf first); SIGHUP reloads it.
    #[arg(long, env = "CRYPTUN_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "CRYPTUN_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Generate (or reuse) a development certificate in --data-dir; clients trust it with --ca.
    #[arg(long, conflicts_with = "tls_cert")]
    tls_self_signed: bool,
    /// Answer plain HTTP on --listen with a 308 redirect to HTTPS (every path, /ws included).
    #[arg(long, requires = "tls")]
    redirect_http: bool,
    /// How long a new HTTPS connection has to finish its TLS handshake.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    tls_handshake_timeout: Duration,
    /// Where the server keeps its files: the key database, the development certificate
    /// [default: $XDG_DATA_HOME/cryptun or ~/.local/share/cryptun].
    #[arg(long, env = "CRYPTUN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Whether clients need an API key: required, optional or off. Default: off when listening on
    /// loopback with domain localhost (this machine only), required otherwise.
    #[arg(long, env = "CRYPTUN_AUTH")]
    auth: Option<cryptun_server::AuthMode>,
    /// How long a disconnected tunnel's name is kept for its client to reconnect (visitors get 503).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    reconnect_grace: Duration,
    /// Most names kept for reconnection at once for one API key, or for one client address
    /// (IPv6: its /64) without a key; over it, that identity's next name is not kept.
    #[arg(long, default_value_t = 1_000)]
    max_holds_per_identity: usize,
    /// How often the key database is checked for revoked keys: a revoked key's live tunnels close
    /// within this interval.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    revocation_poll: Duration,
    /// How long a visitor has to send a request head (also how long a kept-alive connection may idle).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    header_read_timeout: Duration,
    /// How long a request body may stall before the visitor gets 408.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    body_read_timeout: Duration,
    /// The slowest a request body may arrive, in bytes a second, once past --min-body-grace (408
    /// beyond); 0 for no minimum.
    #[arg(long, default_value_t = 500)]
    min_body_rate: u64,
    /// How long a request body may keep the server waiting before --min-body-rate applies.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    min_body_grace: Duration,
    /// Longest request target (path and query), in bytes; 414 beyond.
    #[arg(long, default_value_t = 8192)]
    max_uri_length: usize,
    /// Largest request body on any tunnel (bytes, or 512K, 10M, 1G); 413 beyond. Default: no limit.
    #[arg(long, value_parser = parse::size)]
    max_body_size: Option<u64>,
    /// Requests per visitor address, over all tunnels: N/s, N/m or N/h, optionally :BURST (e.g. 20/s:40); 429 beyond. Default: no limit.
    #[arg(long, env = "CRYPTUN_RATE_LIMIT_IP")]
    rate_limit_ip: Option<Rate>,
    /// Requests per tunnel, over all its visitors (same syntax); 429 beyond. Default: no limit.
    #[arg(long, env = "CRYPTUN_RATE_LIMIT_TUNNEL")]
    rate_limit_tunnel: Option<Rate>,
    /// Most visitor addresses the per-address limit tracks at once; beyond it new addresses share one bucket.
    #[arg(long, default_value_t = 100_000)]
    rate_limit_max_ips: usize,
    /// An HTTP reverse proxy in front of the server (nginx, Caddy, an application load balancer;
    /// a TCP passthrough one only with --proxy-protocol), by address or CIDR block (repeatable): a
    /// request from it counts as coming from the address it appended to X-Forwarded-For (IP
    /// lists, rate limits, handshake backoff, logs), with the scheme in its X-Forwarded-Proto.
    #[arg(long = "trusted-proxy", value_name = "CIDR", value_parser = parse::trusted_proxy)]
    trusted_proxies: Vec<cryptun_proto::net::Cidr>,
    /// Behind a TCP (L4) balancer (HAProxy, nginx stream, a cloud NLB) sending the PROXY protocol
    /// (v1 or v2): every connection from a --trusted-proxy must begin with its header, on both
    /// listeners, and the address it carries is the visitor's; a connection from anyone else that
    /// begins with one is refused.
    #[arg(long)]
    proxy_protocol: bool,
    /// Bearer token for the admin API (/api/...), at least 16 characters. Without one, the admin API answers loopback addresses only.
    #[arg(long, env = "CRYPTUN_ADMIN_TOKEN", hide_env_values = true, value_parser = parse::admin_token)]
    admin_token: Option<AdminToken>,
    /// After Ctrl-C or SIGTERM, keep accepting this long with /readyz answering 503, so a load balancer stops sending traffic first.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    shutdown_delay: Duration,
    /// Join a cluster of servers that share tunnels through Redis: redis://HOST:PORT[/DB] or
    /// rediss://... (a password may be in the URL: prefer the environment variable). Needs
    /// --cluster-listen and --cluster-secret. See docs/CLUSTER.md.
    #[arg(
        long,
        env = "CRYPTUN_CLUSTER_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    cluster: Option<String>,
    /// This node's name in the cluster, unique among live nodes [default: the host name].
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// Where this node serves the requests other nodes forward to it: plain HTTP,
    /// authenticated with the cluster secret; keep it on a private network.
    #[arg(long, value_name = "ADDR")]
    cluster_listen: Option<SocketAddr>,
    /// The address other nodes dial to reach --cluster-listen, when not that one.
    #[arg(long, value_name = "ADDR")]
    cluster_advertise: Option<SocketAddr>,
    /// How long a node's claims on names live without renewal: the names of a node gone
    /// without a goodbye are held for their owners after this.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    cluster_lease: Duration,
    /// Most names this node looks up in Redis a second for visitors whose tunnel's route it has
    /// not cached (as many again in a burst): a flood of random names costs Redis no more. Past
    /// it, a route known before still serves and other names are answered 503 cluster_busy.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    cluster_lookup_rate: u32,
    /// TLS between nodes: this node's certificate chain (PEM), presented to peers as a server and
    /// as a client; with --cluster-tls-key and --cluster-tls-ca. Without, the hop is plain HTTP.
    #[arg(long, value_name = "FILE", requires_all = ["cluster_tls_key", "cluster_tls_ca"])]
    cluster_tls_cert: Option<PathBuf>,
    /// The private key of --cluster-tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "cluster_tls_cert")]
    cluster_tls_key: Option<PathBuf>,
    /// The CA that signs every node's --cluster-tls-cert (PEM): a peer without a certificate
    /// from it is refused, both ways.
    #[arg(long, value_name = "FILE", requires = "cluster_tls_cert")]
    cluster_tls_ca: Option<PathBuf>,
    /// The DNS name every node's certificate carries, checked on each peer instead of the IP
    /// address it is dialled at.
    #[arg(long, value_name = "NAME", requires = "cluster_tls_cert")]
    cluster_tls_name: Option<String>,
    /// The secret nodes prove to each other on the cluster listener (at least 16 characters, the
    /// same on every node); never logged.
    #[arg(long, env = "CRYPTUN_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
}

#[derive(Debug, Args)]
struct HttpArgs {
    /// The local service: a port (3000), host:port, http://host:port or https://host:port.
    #[arg(required_unless_present = "hello", conflicts_with = "hello")]
    target: Option<String>,
    /// The Host requests carry to the local service: `preserve` (the visitor's), `rewrite` (the
    /// target's host:port, for dev servers that check it: Vite, webpack, Django, Rails) or a value.
    #[arg(long, value_name = "rewrite|preserve|VALUE", value_parser = parse::host_header)]
    host_header: Option<HostHeader>,
    /// Also trust the certificate authorities in this PEM file for an https:// target
    /// (besides the system's).
    #[arg(long, value_name = "FILE")]
    local_ca: Option<PathBuf>,
    /// Do not check an https:// target's certificate (self-signed development certificates).
    #[arg(long, conflicts_with = "local_ca")]
    local_insecure: bool,
    /// Serve the built-in hello page instead of a local service.
    #[arg(long)]
    hello: bool,
    /// Client config file, for its top-level keys (servers, token, ca) [default:
    /// $XDG_CONFIG_HOME/cryptun/client.toml or ~/.config/cryptun/client.toml].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The cryptun server to connect to. Repeatable (or comma-separated): the client connects
    /// to one of them, in random order, and to the next when it loses it; a name with several
    /// addresses counts as one server per address.
    #[arg(
        long = "server",
        value_name = "URL",
        env = "CRYPTUN_SERVER",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:4000",
        value_parser = parse::server
    )]
    servers: Vec<String>,
    /// Ask for this subdomain instead of a random one.
    #[arg(long)]
    subdomain: Option<String>,
    /// Print one JSON object per line (tunnel_created first, then inspector if on, then one per request).
    #[arg(long)]
    json: bool,
    /// How long visitors may wait for a response (e.g. 10m for long polling; the server caps it).
    #[arg(long, value_parser = humantime::parse_duration)]
    request_timeout: Option<Duration>,
    /// Also trust the certificate authorities in this PEM file for an https:// server
    /// (e.g. the ca.pem printed by `cryptun server --tls-self-signed`).
    #[arg(long, env = "CRYPTUN_CA")]
    ca: Option<PathBuf>,
    /// API key for the server [default: the one saved by `cryptun login`].
    #[arg(long, env = "CRYPTUN_TOKEN", hide_env_values = true, value_parser = secret)]
    token: Option<Secret>,
    /// Visitors must log in with USER:PASSWORD (HTTP Basic). Prefer the environment variable: arguments show in `ps`.
    #[arg(long, env = "CRYPTUN_BASIC_AUTH", hide_env_values = true, value_name = "USER:PASSWORD", value_parser = parse::basic_auth)]
    basic_auth: Option<BasicAuth>,
    /// Serve only visitors from this address or CIDR block (repeatable).
    #[arg(long = "allow-ip", value_name = "CIDR", value_parser = parse::cidr)]
    allow_ips: Vec<String>,
    /// Refuse visitors from this address or CIDR block (repeatable; wins over --allow-ip).
    #[arg(long = "deny-ip", value_name = "CIDR", value_parser = parse::cidr)]
    deny_ips: Vec<String>,
    /// Largest request body visitors may send (bytes, or 512K, 10M, 1G); the server may allow less.
    #[arg(long, value_parser = parse::size)]
    max_body_size: Option<u64>,
    #[command(flatten)]
    inspect: InspectArgs,
}

#[derive(Debug, Args)]
struct KeysArgs {
    /// The server's data directory [default: $XDG_DATA_HOME/cryptun or ~/.local/share/cryptun].
    #[arg(long, env = "CRYPTUN_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Manage the keys of a cluster, in its Redis (redis://HOST:PORT[/DB]), instead of a data directory's.
    #[arg(
        long,
        env = "CRYPTUN_CLUSTER_URL",
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
    cluster: Option<String>,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key; its token is shown once, only here.
    Create {
        /// What the key is for (a person, a machine, CI).
        #[arg(long)]
        name: String,
        /// Print {"id","name","token"} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their tokens) and their reserved names.
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: it opens no new tunnel, and a running server closes its live ones within seconds (5 s by default).
    Revoke {
        /// The key's id (see `keys list`).
        id: String,
    },
    /// Reserve a subdomain for a key: only that key can claim it, also after restarts.
    Reserve {
        /// The key's id.
        key_id: String,
        /// The subdomain label.
        name: String,
    },
    /// Release a reserved subdomain.
    Unreserve {
        /// The subdomain label.
        name: String,
    },
    /// Write every key (its token's hash, never a token), reserved name and held name as one JSON
    /// document, for `keys import` into another store (a data directory's or a cluster's).
    Export(keys::ExportArgs),
    /// Read a document from `keys export` into this store; entries already there are left, and one
    /// that differs (a key id with another hash, a name reserved for another key) refuses the whole
    /// import unless --replace.
    Import(keys::ImportArgs),
}

#[derive(Debug, Args)]
struct LoginArgs {
    /// The API key (from `cryptun keys create` on the server). Read from standard input when absent.
    #[arg(value_parser = secret)]
    token: Option<Secret>,
    /// The server to check the key with (the first, if several), saved with it (as `servers` in
    /// client.toml) when given on the command line [default: the servers of client.toml, else
    /// http://127.0.0.1:4000].
    #[arg(
        long = "server",
        value_name = "URL",
        env = "CRYPTUN_SERVER",
        value_delimiter = ',',
        value_parser = parse::server
    )]
    servers: Vec<String>,
    /// Whether `servers` came from the command line (not the environment or
    /// the file): only those are saved. Set by [`config::parse_from`].
    #[arg(skip)]
    servers_given: bool,
    /// Also trust the certificate authorities in this PEM file for an https:// server.
    #[arg(long, env = "CRYPTUN_CA")]
    ca: Option<PathBuf>,
}

/// The arguments of a subcommand that is not there yet, whatever they are.
#[derive(Debug, Args)]
struct NotYet {
    #[arg(num_args = 0.., trailing_var_arg = true, allow_hyphen_values = true)]
    _args: Vec<String>,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Address for the demo's server.
    #[arg(long, default_value = "127.0.0.1:4000")]
    listen: SocketAddr,
    #[command(flatten)]
    inspect: InspectArgs,
}

/// Parses a key given on the command line or in the environment, so that
/// it is a [`Secret`] (hidden from `Debug`) from the start.
fn secret(value: &str) -> Result<Secret, String> {
    let value = value.trim();
    if value.is_empty() || value.contains(char::is_whitespace) {
        return Err("an API key is one word, like ck_...".into());
    }
    Ok(Secret::new(value))
}

fn main() -> std::process::ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (cli, file) = match config::parse_from(&argv) {
        Ok(parsed) => parsed,
        Err(err) => match err.downcast::<clap::Error>() {
            Ok(clap) => clap.exit(),
            Err(err) => {
                eprintln!("error: {}", report(&err));
                return std::process::ExitCode::from(2);
            }
        },
    };
    if let Command::Completions { shell } = cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut command, "cryptun", &mut std::io::stdout());
        return std::process::ExitCode::SUCCESS;
    }
    if let Command::Tcp(_) | Command::Tls(_) = cli.command {
        let kind = if matches!(cli.command, Command::Tcp(_)) {
            "tcp"
        } else {
            "tls"
        };
        eprintln!("{}", guide::not_yet(kind));
        return std::process::ExitCode::from(guide::NOT_YET_EXIT);
    }
    init_logging(cli.log_format, default_level(&cli.command));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: could not start the runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = run(&runtime, cli, file);
    // The error goes after the lines and log events still queued, through
    // the same queue, so that a stderr nobody reads cannot keep the process
    // from exiting (a stuck stream loses them, as it would anyway).
    let code = match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            lines::eprint(&format!("error: {}", report(&err)));
            std::process::ExitCode::FAILURE
        }
    };
    lines::flush(Duration::from_secs(2));
    code
}

/// The least severe level logged unless `RUST_LOG` says otherwise: the
/// server tells what it does, a client only what goes wrong.
fn default_level(command: &Command) -> &'static str {
    match command {
        Command::Server(_) => "info",
        Command::Http(_)
        | Command::Start(_)
        | Command::Demo(_)
        | Command::Keys(_)
        | Command::Login(_)
        | Command::Tcp(_)
        | Command::Tls(_)
        | Command::Completions { .. } => "warn",
    }
}

/// Sends log events to stderr (through [`lines`]) in `format`, filtered by
/// `RUST_LOG`, else at `default_level`.
fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(lines::Logs);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

/// Runs the subcommand on `runtime` to its end. A panic in it is raised
/// again here, after the log lines that led up to it.
fn run(
    runtime: &tokio::runtime::Runtime,
    cli: Cli,
    file: Option<config::ConfigFile>,
) -> anyhow::Result<()> {
    let json_logs = cli.log_format == LogFormat::Json;
    let command = async move {
        match cli.command {
            Command::Server(args) => commands::server(*args).await,
            Command::Http(args) => commands::http(args, json_logs).await,
            Command::Start(args) => start::start(args, file, json_logs).await,
            Command::Demo(args) => commands::demo(args, json_logs).await,
            Command::Keys(args) => keys::keys(args).await,
            Command::Login(args) => keys::login(args).await,
            // Answered before the runtime started.
            Command::Completions { .. } | Command::Tcp(_) | Command::Tls(_) => Ok(()),
        }
    };
    // The command runs as a task on the worker threads, not on this one:
    // a future that `block_on` polls lives on the main thread, and every
    // wake-up of it (each message of a session loop) would cross threads.
    match runtime.block_on(runtime.spawn(command)) {
        Ok(result) => result,
        Err(err) => match err.try_into_panic() {
            Ok(panic) => {
                // The log lines that led up to it go out first.
                lines::flush(Duration::from_secs(2));
                std::panic::resume_unwind(panic)
            }
            Err(err) => Err(anyhow::anyhow!("the command was cancelled: {err}")),
        },
    }
}

/// An error and its causes on one line, each cause once: many errors (the
/// WebSocket library's among them) already print their source in their own
/// message, and `{:#}` would repeat it.
fn report(err: &anyhow::Error) -> String {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::report;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let inner = anyhow::Error::new(io).context("IO error: refused");
        let err = inner.context("could not connect");
        assert_eq!(report(&err), "could not connect: IO error: refused");
        let plain = anyhow::anyhow!("no tunnel").context("starting");
        assert_eq!(report(&plain), "starting: no tunnel");
    }
}
