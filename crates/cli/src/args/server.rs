//! `cryptun server`'s flags: listeners, domain, TLS, auth, limits, the
//! cluster; every one also a key of server.toml (`config/`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args};
use cryptun_server::AdminToken;
use cryptun_server::policy::Rate;

use crate::parse;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("tls").args(["tls_cert", "tls_self_signed", "acme_dns_server"])))]
pub(crate) struct ServerArgs {
    /// Config file: flags as keys (`request_timeout = "30s"`); flags and CRYPTUN_* variables win
    /// over it [default: $XDG_CONFIG_HOME/cryptun/server.toml or ~/.config/cryptun/server.toml].
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on for visitors and clients.
    #[arg(long, env = "CRYPTUN_LISTEN", default_value = "127.0.0.1:4000")]
    pub(crate) listen: SocketAddr,
    /// Tunnels are served at {subdomain}.{domain}.
    #[arg(long, env = "CRYPTUN_DOMAIN", default_value = "localhost")]
    pub(crate) domain: String,
    /// Port shown in public URLs (default: the listening port), e.g. behind a port forward.
    #[arg(long, env = "CRYPTUN_PUBLIC_PORT")]
    pub(crate) public_port: Option<u16>,
    /// Scheme shown in public URLs: https behind a reverse proxy that terminates TLS
    /// [default: https with a TLS listener (--tls-cert, --tls-self-signed), http otherwise].
    #[arg(long, env = "CRYPTUN_PUBLIC_SCHEME", value_parser = ["http", "https"])]
    pub(crate) public_scheme: Option<String>,
    /// How long a visitor waits for the local service's response head before 504.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub(crate) request_timeout: Duration,
    /// The longest request timeout a client may ask for (`cryptun http --request-timeout`).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub(crate) max_request_timeout: Duration,
    /// How often the server pings each client.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) heartbeat_interval: Duration,
    /// Silence after which a client is taken as gone (its tunnels close, pending requests get 502).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) heartbeat_timeout: Duration,
    /// How long a new client connection has to ask for a tunnel.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) handshake_timeout: Duration,
    /// Most requests in flight per client connection; beyond it visitors get 429.
    #[arg(long, default_value_t = 1024)]
    pub(crate) max_streams: usize,
    /// Most simultaneous TCP connections; a tenth are kept for clients reconnecting.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) max_connections: usize,
    /// Most simultaneous TCP connections from one address (IPv6: its /64); --trusted-proxy
    /// addresses are exempt.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) max_connections_per_ip: usize,
    /// Most tunnel requests in flight from one visitor address (IPv6: its /64); 429 beyond.
    #[arg(long, default_value_t = 256)]
    pub(crate) max_requests_per_ip: usize,
    /// Most client connections at once for one API key, or one address (IPv6: its /64) without a
    /// key.
    #[arg(long, default_value_t = 64)]
    pub(crate) max_sessions_per_ip: usize,
    /// Most live tunnels at once for one API key, or one address (IPv6: its /64) without a key.
    #[arg(long, default_value_t = 256)]
    pub(crate) max_tunnels_per_ip: usize,
    /// How long in-flight requests may finish after Ctrl-C or SIGTERM.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) shutdown_grace: Duration,
    /// Address for HTTPS, used when a certificate is given (--tls-cert or --tls-self-signed).
    #[arg(long, env = "CRYPTUN_TLS_LISTEN", default_value = "127.0.0.1:4443")]
    pub(crate) tls_listen: SocketAddr,
    /// PEM certificate chain for *.DOMAIN and DOMAIN (leaf first); SIGHUP reloads it.
    #[arg(long, env = "CRYPTUN_TLS_CERT", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "CRYPTUN_TLS_KEY", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Generate (or reuse) a development certificate in --data-dir; clients trust it with --ca.
    #[arg(long, conflicts_with = "tls_cert")]
    pub(crate) tls_self_signed: bool,
    /// ACME: get and renew the certificate for *.DOMAIN and DOMAIN by DNS-01, setting the
    /// _acme-challenge records by RFC 2136 dynamic updates (TSIG-signed) at this DNS server
    /// (HOST:PORT, the zone's primary). Needs --acme-agree-tos and --acme-tsig-key; kept in
    /// --data-dir. Excludes --tls-cert and --tls-self-signed.
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["tls_cert", "tls_self_signed"])]
    pub(crate) acme_dns_server: Option<SocketAddr>,
    /// The zone the DNS server takes updates for (default: --domain). A zone that does not hold
    /// DOMAIN works too: set _acme-challenge.DOMAIN CNAME _acme-challenge.DOMAIN.ZONE once.
    #[arg(long, value_name = "ZONE")]
    pub(crate) acme_dns_zone: Option<String>,
    /// The TSIG key for the updates, as tsig-keygen writes it (key "NAME" { algorithm
    /// hmac-sha256; secret "..."; };) or ALGORITHM:NAME:SECRET; the environment variable holds
    /// the key itself.
    #[arg(long, value_name = "FILE")]
    pub(crate) acme_tsig_key: Option<PathBuf>,
    /// Contact address for the ACME account (expiry notices).
    #[arg(long, value_name = "EMAIL")]
    pub(crate) acme_email: Option<String>,
    /// Agree to the ACME server's terms of service (Let's Encrypt's subscriber agreement).
    #[arg(long)]
    pub(crate) acme_agree_tos: bool,
    /// The ACME server's directory URL (default: Let's Encrypt's production).
    #[arg(long, value_name = "URL", conflicts_with = "acme_staging")]
    pub(crate) acme_directory: Option<String>,
    /// Use Let's Encrypt's staging directory (untrusted certificates, generous limits).
    #[arg(long)]
    pub(crate) acme_staging: bool,
    /// The root that signs a private ACME server's own HTTPS certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub(crate) acme_ca: Option<PathBuf>,
    /// Answer plain HTTP on --listen with a 308 redirect to HTTPS (every path, /ws included).
    #[arg(long, requires = "tls")]
    pub(crate) redirect_http: bool,
    /// How long a new HTTPS connection has to finish its TLS handshake.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) tls_handshake_timeout: Duration,
    /// Where the server keeps its files: the key database, the development certificate
    /// [default: $XDG_DATA_HOME/cryptun or ~/.local/share/cryptun].
    #[arg(long, env = "CRYPTUN_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Whether clients need an API key: required, optional or off. Default: off when listening on
    /// loopback with domain localhost (this machine only), required otherwise.
    #[arg(long, env = "CRYPTUN_AUTH")]
    pub(crate) auth: Option<cryptun_server::AuthMode>,
    /// How long a disconnected tunnel's name is kept for its client to reconnect (visitors get 503).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) reconnect_grace: Duration,
    /// Most names kept for reconnection at once for one API key, or for one client address
    /// (IPv6: its /64) without a key; over it, that identity's next name is not kept.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) max_holds_per_identity: usize,
    /// How often the key database is checked for revoked keys: a revoked key's live tunnels close
    /// within this interval.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) revocation_poll: Duration,
    /// How long a visitor has to send a request head (also how long a kept-alive connection may idle).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) header_read_timeout: Duration,
    /// How long a request body may stall before the visitor gets 408.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) body_read_timeout: Duration,
    /// The slowest a request body may arrive, in bytes a second, once past --min-body-grace (408
    /// beyond); 0 for no minimum.
    #[arg(long, default_value_t = 500)]
    pub(crate) min_body_rate: u64,
    /// How long a request body may keep the server waiting before --min-body-rate applies.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) min_body_grace: Duration,
    /// Longest request target (path and query), in bytes; 414 beyond.
    #[arg(long, default_value_t = 8192)]
    pub(crate) max_uri_length: usize,
    /// Largest request body on any tunnel (bytes, or 512K, 10M, 1G); 413 beyond. Default: no limit.
    #[arg(long, value_parser = parse::size)]
    pub(crate) max_body_size: Option<u64>,
    /// Requests per visitor address, over all tunnels: N/s, N/m or N/h, optionally :BURST (e.g. 20/s:40); 429 beyond. Default: no limit.
    #[arg(long, env = "CRYPTUN_RATE_LIMIT_IP")]
    pub(crate) rate_limit_ip: Option<Rate>,
    /// Requests per tunnel, over all its visitors (same syntax); 429 beyond. Default: no limit.
    #[arg(long, env = "CRYPTUN_RATE_LIMIT_TUNNEL")]
    pub(crate) rate_limit_tunnel: Option<Rate>,
    /// Most visitor addresses the per-address limit tracks at once; beyond it new addresses share one bucket.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) rate_limit_max_ips: usize,
    /// An HTTP reverse proxy in front of the server (nginx, Caddy, an application load balancer;
    /// a TCP passthrough one only with --proxy-protocol), by address or CIDR block (repeatable): a
    /// request from it counts as coming from the address it appended to X-Forwarded-For (IP
    /// lists, rate limits, handshake backoff, logs), with the scheme in its X-Forwarded-Proto.
    #[arg(long = "trusted-proxy", value_name = "CIDR", value_parser = parse::trusted_proxy)]
    pub(crate) trusted_proxies: Vec<cryptun_proto::net::Cidr>,
    /// Behind a TCP (L4) balancer (HAProxy, nginx stream, a cloud NLB) sending the PROXY protocol
    /// (v1 or v2): every connection from a --trusted-proxy must begin with its header, on both
    /// listeners, and the address it carries is the visitor's; a connection from anyone else that
    /// begins with one is refused.
    #[arg(long)]
    pub(crate) proxy_protocol: bool,
    /// Public ports TCP tunnels (`cryptun tcp`) may be given, as `A-B` or one port (repeatable).
    /// Without it, a server on loopback with domain localhost gives any free port, and any other
    /// server opens none (TCP tunnels are refused with tcp_disabled).
    #[arg(long = "tcp-ports", value_name = "A-B", value_parser = cryptun_server::TcpPorts::parse_range)]
    pub(crate) tcp_ports: Vec<std::ops::RangeInclusive<u16>>,
    /// How long a TCP tunnel's connection may pass no byte either way before it is closed.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub(crate) tcp_idle_timeout: std::time::Duration,
    /// Most connections open at once through one TCP tunnel; new visitors past it are closed.
    #[arg(long, default_value_t = 256)]
    pub(crate) tcp_max_connections: usize,
    /// Accept HTTP/2 with prior knowledge (h2c) on the plain listener, for a balancer in front
    /// that terminates TLS and speaks HTTP/2 to us. (HTTPS offers HTTP/2 by ALPN always.)
    #[arg(long)]
    pub(crate) h2c: bool,
    /// HSTS: answers over HTTPS carry `Strict-Transport-Security: max-age=` this long (e.g.
    /// 1y), unless the local service sent its own; browsers then use HTTPS for the name until it
    /// passes. Never sent over plain HTTP. Only once HTTPS works for every tunnel: a browser that
    /// saw it refuses plain HTTP for the name.
    #[arg(long, value_name = "MAX_AGE", value_parser = humantime::parse_duration)]
    pub(crate) hsts: Option<Duration>,
    /// Most requests (streams) at once on one HTTP/2 connection; the visitor's further ones are
    /// refused until one ends.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) h2_max_streams: u32,
    /// Bearer token for the admin API (/api/...), at least 16 characters. Without one, the admin API answers loopback addresses only.
    #[arg(long, env = "CRYPTUN_ADMIN_TOKEN", hide_env_values = true, value_parser = parse::admin_token)]
    pub(crate) admin_token: Option<AdminToken>,
    /// After Ctrl-C or SIGTERM, keep accepting this long with /readyz answering 503, so a load balancer stops sending traffic first.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub(crate) shutdown_delay: Duration,
    /// Join a cluster of servers that share tunnels through Redis: redis://HOST:PORT[/DB] or
    /// rediss://... (a password may be in the URL: prefer the environment variable). Needs
    /// --cluster-listen and --cluster-secret. See docs/CLUSTER.md.
    #[arg(
        long,
        env = "CRYPTUN_CLUSTER_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub(crate) cluster: Option<String>,
    /// This node's name in the cluster, unique among live nodes [default: the host name].
    #[arg(long, value_name = "NAME")]
    pub(crate) node_name: Option<String>,
    /// Where this node serves the requests other nodes forward to it: plain HTTP,
    /// authenticated with the cluster secret; keep it on a private network.
    #[arg(long, value_name = "ADDR")]
    pub(crate) cluster_listen: Option<SocketAddr>,
    /// The address other nodes dial to reach --cluster-listen, when not that one.
    #[arg(long, value_name = "ADDR")]
    pub(crate) cluster_advertise: Option<SocketAddr>,
    /// How long a node's claims on names live without renewal: the names of a node gone
    /// without a goodbye are held for their owners after this.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) cluster_lease: Duration,
    /// Most names this node looks up in Redis a second for visitors whose tunnel's route it has
    /// not cached (as many again in a burst): a flood of random names costs Redis no more. Past
    /// it, a route known before still serves and other names are answered 503 cluster_busy.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub(crate) cluster_lookup_rate: u32,
    /// TLS between nodes: this node's certificate chain (PEM), presented to peers as a server and
    /// as a client; with --cluster-tls-key and --cluster-tls-ca. Without, the hop is plain HTTP.
    #[arg(long, value_name = "FILE", requires_all = ["cluster_tls_key", "cluster_tls_ca"])]
    pub(crate) cluster_tls_cert: Option<PathBuf>,
    /// The private key of --cluster-tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "cluster_tls_cert")]
    pub(crate) cluster_tls_key: Option<PathBuf>,
    /// The CA that signs every node's --cluster-tls-cert (PEM): a peer without a certificate
    /// from it is refused, both ways.
    #[arg(long, value_name = "FILE", requires = "cluster_tls_cert")]
    pub(crate) cluster_tls_ca: Option<PathBuf>,
    /// The DNS name every node's certificate carries, checked on each peer instead of the IP
    /// address it is dialled at.
    #[arg(
        long,
        value_name = "NAME",
        requires = "cluster_tls_cert",
        value_parser = cryptun_server::cluster::peer_tls::check_name
    )]
    pub(crate) cluster_tls_name: Option<String>,
    /// The secret nodes prove to each other on the cluster listener (at least 16 characters, the
    /// same on every node); never logged.
    #[arg(long, env = "CRYPTUN_CLUSTER_SECRET", hide_env_values = true)]
    pub(crate) cluster_secret: Option<String>,
}
