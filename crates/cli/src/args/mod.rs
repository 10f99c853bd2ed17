//! The command line: every subcommand and its flags (clap), and the
//! parsing of a key given on it. What each subcommand does is in
//! `commands.rs`, `keys.rs` and `start.rs`; config files fill these
//! flags' defaults (`config/`). The server's flags are in [`server`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use cryptun_client::{BasicAuth, HostHeader, Secret};

mod server;

pub(crate) use server::ServerArgs;

use crate::inspect::InspectArgs;
use crate::{keys, parse, start};

/// Self-hosted secure tunnels: expose a local service at a public URL.
#[derive(Debug, Parser)]
#[command(name = "cryptun", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// Log format on stderr: `text` for people, `json` (one object per line) for machines.
    #[arg(long, global = true, env = "CRYPTUN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines (colours on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    /// Expose a local TCP service (SSH, a database, a game server) on a public port.
    #[command(
        after_help = "Examples:\n  cryptun tcp 22\n  cryptun tcp 6379 --remote-port 20079 --json\n  cryptun tcp 192.168.1.5:5432 --server https://tunnels.example.com\n  cryptun tcp 22 --allow-ip 203.0.113.0/24"
    )]
    Tcp(TcpArgs),
    /// Pass TLS connections for a name through to a local TLS service, undecrypted: its
    /// certificate is the one visitors see (the server reads only the SNI).
    #[command(
        after_help = "Examples:\n  cryptun tls 8443 --subdomain secure\n  cryptun tls 192.168.1.5:443 --subdomain intranet --server https://tunnels.example.com\n\nVisitors connect to https://secure.DOMAIN (the server's HTTPS port); the local service\nneeds a certificate for that name."
    )]
    Tls(TcpArgs),
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
pub(crate) struct HttpArgs {
    /// The local service: a port (3000), host:port, http://host:port or https://host:port.
    #[arg(required_unless_present = "hello", conflicts_with = "hello")]
    pub(crate) target: Option<String>,
    /// The Host requests carry to the local service: `preserve` (the visitor's), `rewrite` (the
    /// target's host:port, for dev servers that check it: Vite, webpack, Django, Rails) or a value.
    #[arg(long, value_name = "rewrite|preserve|VALUE", value_parser = parse::host_header)]
    pub(crate) host_header: Option<HostHeader>,
    /// Also trust the certificate authorities in this PEM file for an https:// target
    /// (besides the system's).
    #[arg(long, value_name = "FILE")]
    pub(crate) local_ca: Option<PathBuf>,
    /// Do not check an https:// target's certificate (self-signed development certificates).
    #[arg(long, conflicts_with = "local_ca")]
    pub(crate) local_insecure: bool,
    /// What to speak to the local service: http1 (the default; WebSockets included), http2
    /// (HTTP/2 by ALPN, to an https:// target) or h2c (HTTP/2 with prior knowledge, to an
    /// http:// one).
    #[arg(long, value_name = "http1|http2|h2c")]
    pub(crate) upstream: Option<cryptun_client::Upstream>,
    /// Serve the built-in hello page instead of a local service.
    #[arg(long)]
    pub(crate) hello: bool,
    #[command(flatten)]
    pub(crate) reach: Reach,
    /// Ask for this subdomain instead of a random one.
    #[arg(long)]
    pub(crate) subdomain: Option<String>,
    /// Print one JSON object per line (tunnel_created first, then inspector if on, then one per request).
    #[arg(long)]
    pub(crate) json: bool,
    /// How long visitors may wait for a response (e.g. 10m for long polling; the server caps it).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) request_timeout: Option<Duration>,
    /// Visitors must log in with USER:PASSWORD (HTTP Basic). Prefer the environment variable: arguments show in `ps`.
    #[arg(long, env = "CRYPTUN_BASIC_AUTH", hide_env_values = true, value_name = "USER:PASSWORD", value_parser = parse::basic_auth)]
    pub(crate) basic_auth: Option<BasicAuth>,
    /// Serve only visitors from this address or CIDR block (repeatable).
    #[arg(long = "allow-ip", value_name = "CIDR", value_parser = parse::cidr)]
    pub(crate) allow_ips: Vec<String>,
    /// Refuse visitors from this address or CIDR block (repeatable; wins over --allow-ip).
    #[arg(long = "deny-ip", value_name = "CIDR", value_parser = parse::cidr)]
    pub(crate) deny_ips: Vec<String>,
    /// Largest request body visitors may send (bytes, or 512K, 10M, 1G); the server may allow less.
    #[arg(long, value_parser = parse::size)]
    pub(crate) max_body_size: Option<u64>,
    #[command(flatten)]
    pub(crate) pool: PoolArgs,
    #[command(flatten)]
    pub(crate) inspect: InspectArgs,
}

/// Which servers a client connects to, and how: shared by `cryptun http`,
/// `cryptun tcp` and `cryptun start` (their config files' top-level keys).
#[derive(Debug, Args)]
pub(crate) struct Reach {
    /// Client config file: its top-level keys (servers, token, ca), and for `cryptun start` its
    /// tunnels [default: $XDG_CONFIG_HOME/cryptun/client.toml or ~/.config/cryptun/client.toml].
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
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
    pub(crate) servers: Vec<String>,
    /// Also trust the certificate authorities in this PEM file for an https:// server
    /// (e.g. the ca.pem printed by `cryptun server --tls-self-signed`).
    #[arg(long, env = "CRYPTUN_CA")]
    pub(crate) ca: Option<PathBuf>,
    /// API key for the server [default: the one saved by `cryptun login`].
    #[arg(long, env = "CRYPTUN_TOKEN", hide_env_values = true, value_parser = secret)]
    pub(crate) token: Option<Secret>,
}

#[derive(Debug, Args)]
pub(crate) struct TcpArgs {
    /// The local service: a port (22) or host:port.
    pub(crate) target: String,
    /// Ask for this public port (the server must have it free, and in its --tcp-ports; TCP only).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) remote_port: Option<u16>,
    /// Begin each connection to the local service with a PROXY protocol header (v1 text, v2
    /// binary) naming the visitor: for services that read it (nginx, HAProxy, Postfix).
    #[arg(long, value_name = "v1|v2")]
    pub(crate) local_proxy_protocol: Option<cryptun_client::LocalProxyProtocol>,
    #[command(flatten)]
    pub(crate) reach: Reach,
    /// Ask for this name (the tunnel's, held and reserved as HTTP tunnels' names are).
    #[arg(long)]
    pub(crate) subdomain: Option<String>,
    /// Print one JSON object per line (tunnel_created first, then one per connection).
    #[arg(long)]
    pub(crate) json: bool,
    /// Accept only visitors from this address or CIDR block (repeatable).
    #[arg(long = "allow-ip", value_name = "CIDR", value_parser = parse::cidr)]
    pub(crate) allow_ips: Vec<String>,
    /// Refuse visitors from this address or CIDR block (repeatable; wins over --allow-ip).
    #[arg(long = "deny-ip", value_name = "CIDR", value_parser = parse::cidr)]
    pub(crate) deny_ips: Vec<String>,
    #[command(flatten)]
    pub(crate) pool: PoolArgs,
}

/// Joining a pool: shared by `cryptun http`, `tcp` and `tls`.
#[derive(Debug, Args)]
pub(crate) struct PoolArgs {
    /// Serve --subdomain together with the other clients of this pool (same API key, or same
    /// --pool-secret): visitors and connections are spread over them. A TCP pool's members all
    /// ask for its port with --remote-port.
    #[arg(long, requires = "subdomain")]
    pub(crate) pool: bool,
    /// Without an API key: the secret a pool's members share (16+ characters). Prefer the
    /// environment variable: arguments show in `ps`.
    #[arg(long, env = "CRYPTUN_POOL_SECRET", hide_env_values = true, value_parser = secret, requires = "pool")]
    pub(crate) pool_secret: Option<Secret>,
}

#[derive(Debug, Args)]
pub(crate) struct KeysArgs {
    /// The server's data directory [default: $XDG_DATA_HOME/cryptun or ~/.local/share/cryptun].
    #[arg(long, env = "CRYPTUN_DATA_DIR", global = true)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Manage the keys of a cluster, in its Redis (redis://HOST:PORT[/DB]), instead of a data directory's.
    #[arg(
        long,
        env = "CRYPTUN_CLUSTER_URL",
        hide_env_values = true,
        global = true,
        value_name = "URL"
    )]
    pub(crate) cluster: Option<String>,
    #[command(subcommand)]
    pub(crate) command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
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
    /// Reserve a subdomain (or with --port a TCP tunnel's public port) for a key: only that key
    /// can claim it, also after restarts.
    Reserve {
        /// The key's id.
        key_id: String,
        /// The subdomain label.
        #[arg(required_unless_present = "port", conflicts_with = "port")]
        name: Option<String>,
        /// A TCP port instead: given only to tunnels of this key that ask for it (--remote-port),
        /// never to anyone else.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
    },
    /// Release a reserved subdomain (or with --port a reserved TCP port).
    Unreserve {
        /// The subdomain label.
        #[arg(required_unless_present = "port", conflicts_with = "port")]
        name: Option<String>,
        /// A reserved TCP port instead.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
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
pub(crate) struct LoginArgs {
    /// The API key (from `cryptun keys create` on the server). Read from standard input when absent.
    #[arg(value_parser = secret)]
    pub(crate) token: Option<Secret>,
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
    pub(crate) servers: Vec<String>,
    /// Whether `servers` came from the command line (not the environment or
    /// the file): only those are saved. Set by [`config::parse_from`].
    #[arg(skip)]
    pub(crate) servers_given: bool,
    /// Also trust the certificate authorities in this PEM file for an https:// server.
    #[arg(long, env = "CRYPTUN_CA")]
    pub(crate) ca: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Address for the demo's server.
    #[arg(long, default_value = "127.0.0.1:4000")]
    pub(crate) listen: SocketAddr,
    #[command(flatten)]
    pub(crate) inspect: InspectArgs,
}

/// Parses a key given on the command line or in the environment, so that
/// it is a [`Secret`] (hidden from `Debug`) from the start.
pub(crate) fn secret(value: &str) -> Result<Secret, String> {
    let value = value.trim();
    if value.is_empty() || value.contains(char::is_whitespace) {
        return Err("an API key is one word, like ck_...".into());
    }
    Ok(Secret::new(value))
}
