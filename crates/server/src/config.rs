//! The server's settings, validated once before any socket is bound.

use std::path::PathBuf;
use std::time::Duration;

use cryptun_proto::Limits;
use cryptun_proto::mux::Heartbeat;

use std::net::SocketAddr;

use cryptun_proto::net::Cidr;

use crate::cluster::ClusterConfig;
use crate::ops::admin::AdminToken;
use crate::policy::{BackoffConfig, MinRate, Rate};

/// Everything `run` needs to know besides its listener.
#[derive(Debug, Clone)]
pub struct Config {
    /// Tunnels live at `{subdomain}.{domain}`. Lowercase, no trailing dot.
    pub domain: String,
    /// Scheme of public URLs: `http` or `https`. `serve` sets `https` when
    /// the server has a TLS listener; set it to `https` behind a reverse
    /// proxy that terminates TLS.
    pub public_scheme: String,
    /// Port shown in public URLs (and, with TLS, where redirects go);
    /// `None` means the listener's own port: the HTTPS one when there is
    /// one. 80 for `http` (443 for `https`) is left out of the URL.
    pub public_port: Option<u16>,
    /// How long a visitor waits for the client's response head before 504,
    /// unless the tunnel asked for another value.
    pub request_timeout: Duration,
    /// The longest request timeout a tunnel may ask for (long polling).
    pub max_request_timeout: Duration,
    /// How long a new control connection may take to send `create_tunnel`.
    pub handshake_timeout: Duration,
    /// Ping interval, and the silence after which a client is taken as gone.
    /// A half-open client is detected within `timeout + interval`.
    pub heartbeat: Heartbeat,
    /// Bounds on what one session may make the server hold.
    pub limits: Limits,
    /// Most simultaneous TCP connections (visitors and clients together).
    pub max_connections: usize,
    /// Most TCP connections from one address (IPv6: its /64) at once;
    /// trusted proxies are exempt.
    pub max_connections_per_ip: usize,
    /// Most tunnel requests in flight from one visitor address (IPv6: its
    /// /64) at once; 429 beyond.
    pub max_requests_per_ip: usize,
    /// Most client sessions (connections to `/ws`) at once for one API key,
    /// or one address (IPv6: its /64) without a key.
    pub max_sessions_per_ip: usize,
    /// Most live tunnels at once for one API key, or one address (IPv6:
    /// its /64) without a key.
    pub max_tunnels_per_ip: usize,
    /// How long in-flight requests may run on after shutdown is asked for.
    pub shutdown_grace: Duration,
    /// How long a new HTTPS connection may take to finish its TLS handshake
    /// before it is closed, so a silent client cannot hold a connection.
    /// With `proxy_protocol`, also how long any connection has for its
    /// PROXY protocol header (on HTTPS, the header and the handshake
    /// together).
    pub tls_handshake_timeout: Duration,
    /// With a TLS listener, answer every request on the plain listener with
    /// a 308 redirect to the same host and path over HTTPS.
    pub redirect_http: bool,
    /// Whether clients need an API key. `Off` by default here, so an
    /// embedded or test server needs no data directory; `cryptun server`
    /// picks its own default with [`AuthMode::default_for`].
    pub auth: AuthMode,
    /// Where the database of keys and reserved names lives. Needed unless
    /// `auth` is off (and not opened when it is).
    pub data_dir: Option<PathBuf>,
    /// How often the server checks the database for revoked keys, to close
    /// the live sessions opened with them: a revocation takes effect on
    /// live tunnels within this interval. Each check reads only SQLite's
    /// change counter unless something changed.
    pub revocation_poll: Duration,
    /// How long a disconnected tunnel's name is held for its owner to
    /// reconnect (visitors get 503 meanwhile). Zero frees it at once.
    pub reconnect_grace: Duration,
    /// Most names held for reconnection at once; beyond it a disconnected
    /// tunnel's name is not held (no hold ends early for another's).
    pub max_held_names: usize,
    /// Most names held at once for one identity: an API key, or the
    /// address (IPv6: its /64) anonymous clients connect from. Over it, the
    /// identity's next disconnected name is not held; nobody else's hold
    /// ever ends early for it.
    pub max_holds_per_identity: usize,
    /// Backoff for failed handshakes, per source address.
    pub auth_backoff: BackoffConfig,
    /// How long a visitor has to send a complete request head, the wait for
    /// the next request on a kept-alive connection included; then the
    /// connection is closed.
    pub header_read_timeout: Duration,
    /// How long the server waits for the next bytes of a request body
    /// before answering 408 (or closing the connection, if the response has
    /// begun).
    pub body_read_timeout: Duration,
    /// The slowest a request body may arrive, once past its grace (408
    /// beyond); `None` for no minimum.
    pub min_body_rate: Option<MinRate>,
    /// Longest request target (path and query), in bytes; 414 beyond.
    pub max_uri_length: usize,
    /// Largest request body on any tunnel, in bytes; 413 beyond. A tunnel
    /// may ask for less. `None`: no limit (bodies stream, so size costs no
    /// memory).
    pub max_body_size: Option<u64>,
    /// Request rates per visitor address and per tunnel.
    pub rate_limits: RateLimits,
    /// Reverse proxies and load balancers in front of the server: a request
    /// from one of them is taken to come from the address it appended to
    /// `X-Forwarded-For` (see `forwarded.rs`). Empty: the header is never
    /// trusted.
    pub trusted_proxies: Vec<Cidr>,
    /// Bearer token for the admin API (`/api/...`). `None`: the admin API is
    /// served to loopback peers only.
    pub admin_token: Option<AdminToken>,
    /// How long the server keeps accepting connections after shutdown is
    /// asked for, with `/readyz` answering 503, so that a load balancer
    /// stops sending it traffic before it stops listening. Zero by default.
    pub shutdown_delay: Duration,
    /// Membership of a cluster of servers sharing names through Redis
    /// (see `crate::cluster`). `None`: a single server, nothing shared.
    pub cluster: Option<ClusterConfig>,
    /// Every connection from a trusted proxy begins with a PROXY protocol
    /// header (v1 or v2), whose address is then the visitor's; one from
    /// anyone else that begins with one is refused (see
    /// `edge/proxy_protocol.rs`). Needs `trusted_proxies`.
    pub proxy_protocol: bool,
    /// Where access log lines go instead of `tracing` events (target
    /// `cryptun::access`), if set; see [`crate::gateway::access_log`].
    pub access_sink: Option<crate::gateway::access_log::AccessSink>,
    /// Which public ports TCP tunnels may be given (see `crate::ports`).
    /// `Off` here; `cryptun server` picks its own default with
    /// [`crate::TcpPorts::default_for`].
    pub tcp_ports: crate::TcpPorts,
    /// How long a TCP tunnel's connection may pass no byte before it is
    /// closed.
    pub tcp_idle_timeout: Duration,
    /// Most connections open at once through one TCP tunnel; new visitors
    /// past it are closed.
    pub tcp_max_connections: usize,
    /// HTTP/2's limits per visitor connection (TLS connections choose it
    /// by ALPN; plain ones with `h2c`).
    pub h2: crate::edge::h2::Limits,
    /// Whether plain connections may speak HTTP/2 with prior knowledge
    /// (behind a balancer that terminates TLS and speaks h2c).
    pub h2c: bool,
    /// HSTS: every answer over HTTPS says `Strict-Transport-Security:
    /// max-age=` this many seconds (unless the local service set its own);
    /// `None` sends none. Never over plain HTTP (RFC 6797 §7.2).
    pub hsts: Option<Duration>,
    /// ACME: obtain and renew the HTTPS listener's wildcard certificate
    /// (its certificates must then be [`crate::Certs::managed`]); kept
    /// under `data_dir`, which it needs.
    pub acme: Option<crate::tls::acme::AcmeConfig>,
}

/// Request rates, and the bounds of the per-address table.
#[derive(Debug, Clone)]
pub struct RateLimits {
    /// Per visitor address (IPv6 by /64), over every request for a tunnel
    /// host (unknown ones included). `None`: no limit.
    pub per_ip: Option<Rate>,
    /// Per tunnel, across all its visitors. `None`: no limit.
    pub per_tunnel: Option<Rate>,
    /// Most addresses tracked at once; beyond it, new addresses share one
    /// bucket. 100,000 entries cost a few MiB.
    pub max_tracked_ips: usize,
    /// How often addresses whose bucket has refilled are forgotten.
    pub sweep_interval: Duration,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            per_ip: None,
            per_tunnel: None,
            max_tracked_ips: 100_000,
            sweep_interval: Duration::from_secs(10),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domain: "localhost".into(),
            public_scheme: "http".into(),
            public_port: None,
            request_timeout: Duration::from_secs(60),
            max_request_timeout: Duration::from_secs(3600),
            handshake_timeout: Duration::from_secs(10),
            heartbeat: Heartbeat {
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(30),
            },
            limits: Limits::default(),
            max_connections: 10_000,
            // A browser opens six or so per host; a thousand leaves room for
            // an office behind one address, and ten addresses are needed to
            // take every slot (a tenth is kept for clients regardless).
            max_connections_per_ip: 1_000,
            // Far more than a browser has in flight to one site; a few
            // addresses cannot hold a tunnel's 1,024 streams with it.
            max_requests_per_ip: 256,
            // A client holds one session (a few while reconnecting) with up
            // to 16 tunnels: room for many behind one address (an office's
            // NAT, a CI host), none for the 40,000 tunnels one address
            // opened in 20 s of an anonymous server.
            max_sessions_per_ip: 64,
            max_tunnels_per_ip: 256,
            shutdown_grace: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            redirect_http: false,
            auth: AuthMode::Off,
            data_dir: None,
            // Seconds matter to an operator cutting off a leaked key; a
            // check that reads no disk costs nothing at this rate.
            revocation_poll: Duration::from_secs(5),
            // Long enough for a client to notice a dropped connection and
            // dial again (its own heartbeat takes up to 30 s to notice a
            // silent one), short enough that a name abandoned for good is
            // free again soon.
            reconnect_grace: Duration::from_secs(30),
            // About 200 bytes each (the name twice, the owner, its holder,
            // two instants): some 20 MiB at worst, reached only by a hundred
            // identities each opening and dropping a thousand tunnels.
            max_held_names: 100_000,
            // A client holds at most 16 names per connection; a thousand
            // leaves room for many clients behind one address (an office's
            // NAT) while a hundred identities are needed to fill the table.
            max_holds_per_identity: 1_000,
            auth_backoff: BackoffConfig::default(),
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            // Apache's `mod_reqtimeout` default: 500 bytes a second, after
            // a grace for a slow start. A byte every ten seconds (which no
            // idle timeout catches) is cut after the grace.
            min_body_rate: Some(MinRate {
                bytes_per_sec: 500,
                grace: Duration::from_secs(10),
            }),
            max_uri_length: 8 << 10,
            max_body_size: None,
            rate_limits: RateLimits::default(),
            trusted_proxies: Vec::new(),
            admin_token: None,
            shutdown_delay: Duration::ZERO,
            cluster: None,
            proxy_protocol: false,
            access_sink: None,
            tcp_ports: crate::TcpPorts::Off,
            tcp_idle_timeout: crate::ports::relay::IDLE_TIMEOUT,
            tcp_max_connections: crate::ports::relay::MAX_CONNECTIONS,
            h2: crate::edge::h2::Limits::default(),
            h2c: false,
            hsts: None,
            acme: None,
        }
    }
}

/// Whether clients must present an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// No keys: every client is anonymous, reserved names are not enforced
    /// and no database is opened. The default on loopback with domain
    /// `localhost`, where only this machine can connect.
    #[default]
    Off,
    /// A key is checked when one is given (a bad one is refused); clients
    /// without one are anonymous and may claim any free name that is not
    /// reserved.
    Optional,
    /// Every connection needs a valid key. The default otherwise.
    Required,
}

impl AuthMode {
    /// The mode when none is chosen: `Off` only when the server can be
    /// reached from this machine alone *and* serves the `localhost` domain
    /// (the quick start and `cryptun demo`); `Required` otherwise, so a
    /// server on a public address, or behind a reverse proxy with a real
    /// domain, is closed unless its operator opens it.
    pub fn default_for(listen: SocketAddr, domain: &str) -> AuthMode {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let local_domain = domain == "localhost" || domain.ends_with(".localhost");
        if listen.ip().is_loopback() && local_domain {
            AuthMode::Off
        } else {
            AuthMode::Required
        }
    }
}

impl std::str::FromStr for AuthMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(AuthMode::Off),
            "optional" => Ok(AuthMode::Optional),
            "required" => Ok(AuthMode::Required),
            other => Err(format!(
                "unknown auth mode {other:?} (expected required, optional or off)"
            )),
        }
    }
}

impl std::fmt::Display for AuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthMode::Off => "off",
            AuthMode::Optional => "optional",
            AuthMode::Required => "required",
        })
    }
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid server configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Normalises the domain and checks that the settings fit together.
    pub fn validated(mut self) -> Result<Self, ConfigError> {
        self.domain = dns_name(&self.domain)?;
        check_session_limits(&self.limits)?;
        if !matches!(self.public_scheme.as_str(), "http" | "https") {
            return Err(ConfigError(format!(
                "the public scheme is http or https, not {:?}",
                self.public_scheme
            )));
        }
        if self.tcp_max_connections == 0 {
            return Err(ConfigError(
                "a TCP tunnel must take at least one connection (tcp_max_connections)".into(),
            ));
        }
        if self.heartbeat.timeout <= self.heartbeat.interval {
            return Err(ConfigError(
                "the heartbeat timeout must exceed its interval".into(),
            ));
        }
        if self.max_request_timeout < self.request_timeout {
            return Err(ConfigError(
                "the maximum request timeout must be at least the default one".into(),
            ));
        }
        if self.auth != AuthMode::Off && self.data_dir.is_none() && self.cluster.is_none() {
            return Err(ConfigError(format!(
                "--auth {} needs a data directory for its keys (--data-dir), or a cluster (--cluster)",
                self.auth
            )));
        }
        let b = &self.auth_backoff;
        if b.forget_after < b.max || b.max < b.base || b.max_entries == 0 {
            return Err(ConfigError(
                "the handshake backoff must have base <= max <= forget_after and room for an entry"
                    .into(),
            ));
        }
        self.check_durations()?;
        if self.max_uri_length < 64 {
            return Err(ConfigError(
                "the maximum URI length must be at least 64 bytes".into(),
            ));
        }
        if self.max_connections == 0
            || self.max_connections_per_ip == 0
            || self.max_requests_per_ip == 0
            || self.max_sessions_per_ip == 0
            || self.max_tunnels_per_ip == 0
        {
            return Err(ConfigError(
                "the connection limits must allow at least one connection".into(),
            ));
        }
        if let Some(cluster) = &self.cluster {
            cluster.check().map_err(ConfigError)?;
        }
        if self.rate_limits.max_tracked_ips == 0 {
            return Err(ConfigError(
                "the rate limiter must track at least one address".into(),
            ));
        }
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            return Err(ConfigError(
                "--proxy-protocol needs --trusted-proxy: the balancers whose headers are believed"
                    .into(),
            ));
        }
        Ok(self)
    }

    /// Every timeout and interval must be more than zero.
    fn check_durations(&self) -> Result<(), ConfigError> {
        for (name, d) in [
            ("request timeout", self.request_timeout),
            ("handshake timeout", self.handshake_timeout),
            ("heartbeat interval", self.heartbeat.interval),
            ("TLS handshake timeout", self.tls_handshake_timeout),
            ("header read timeout", self.header_read_timeout),
            ("body read timeout", self.body_read_timeout),
            ("rate limit sweep interval", self.rate_limits.sweep_interval),
            ("revocation poll interval", self.revocation_poll),
        ] {
            if d.is_zero() {
                return Err(ConfigError(format!("the {name} must be more than zero")));
            }
        }
        Ok(())
    }

    /// The public URL of a subdomain, given the port the server listens on.
    pub fn public_url(&self, subdomain: &str, listen_port: u16) -> String {
        let port = self.public_port.unwrap_or(listen_port);
        let default = match self.public_scheme.as_str() {
            "https" => 443,
            _ => 80,
        };
        if port == default {
            format!("{}://{subdomain}.{}", self.public_scheme, self.domain)
        } else {
            format!(
                "{}://{subdomain}.{}:{port}",
                self.public_scheme, self.domain
            )
        }
    }
}

/// `domain` normalised (lowercase, no trailing dot), if it is a DNS name.
fn dns_name(domain: &str) -> Result<String, ConfigError> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let label =
        |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if domain.is_empty() || !domain.split('.').all(label) {
        return Err(ConfigError(format!(
            "--domain {domain:?} is not a DNS name"
        )));
    }
    Ok(domain)
}

/// The session limits must fit together: two frames in a window, the
/// protocol's header cap, an inline body and its head in a message.
fn check_session_limits(l: &Limits) -> Result<(), ConfigError> {
    if l.max_frame_payload as u64 * 2 > u64::from(l.stream_window) {
        return Err(ConfigError(
            "the stream window must hold at least two maximum-size frames".into(),
        ));
    }
    if l.max_headers > cryptun_proto::limits::MAX_WIRE_HEADERS {
        return Err(ConfigError(format!(
            "at most {} headers per head can be allowed",
            cryptun_proto::limits::MAX_WIRE_HEADERS
        )));
    }
    if l.max_message_bytes < l.max_inline_body / 3 * 4 + l.max_header_bytes + 1024 {
        return Err(ConfigError(
            "max message size must fit a base64 inline body plus its head".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mode_is_off_only_on_loopback_with_a_local_domain() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            AuthMode::default_for(at("127.0.0.1:4000"), "localhost"),
            AuthMode::Off
        );
        assert_eq!(
            AuthMode::default_for(at("[::1]:4000"), "Dev.Localhost."),
            AuthMode::Off
        );
        assert_eq!(
            AuthMode::default_for(at("0.0.0.0:80"), "localhost"),
            AuthMode::Required
        );
        assert_eq!(
            AuthMode::default_for(at("192.0.2.1:80"), "localhost"),
            AuthMode::Required
        );
        // Loopback behind a reverse proxy serving a real domain.
        assert_eq!(
            AuthMode::default_for(at("127.0.0.1:4000"), "tunnels.example.com"),
            AuthMode::Required
        );
    }

    #[test]
    fn modes_parse_and_print() {
        for mode in [AuthMode::Off, AuthMode::Optional, AuthMode::Required] {
            assert_eq!(mode.to_string().parse::<AuthMode>(), Ok(mode));
        }
        assert!("maybe".parse::<AuthMode>().is_err());
    }

    #[test]
    fn public_urls_follow_the_scheme_and_leave_out_its_default_port() {
        let mut config = Config {
            domain: "tunnels.example.com".into(),
            ..Config::default()
        };
        assert_eq!(
            config.public_url("app", 80),
            "http://app.tunnels.example.com"
        );
        assert_eq!(
            config.public_url("app", 4000),
            "http://app.tunnels.example.com:4000"
        );
        // Behind a proxy terminating TLS on 443, the server itself on 4000.
        config.public_scheme = "https".into();
        config.public_port = Some(443);
        assert_eq!(
            config.public_url("app", 4000),
            "https://app.tunnels.example.com"
        );
        assert!(config.clone().validated().is_ok());
        config.public_scheme = "ftp".into();
        assert!(config.validated().is_err());
    }

    #[test]
    fn every_share_must_allow_at_least_one() {
        let zero: [fn(&mut Config); 5] = [
            |c| c.max_connections = 0,
            |c| c.max_connections_per_ip = 0,
            |c| c.max_requests_per_ip = 0,
            |c| c.max_sessions_per_ip = 0,
            |c| c.max_tunnels_per_ip = 0,
        ];
        for set in zero {
            let mut config = Config::default();
            set(&mut config);
            assert!(config.validated().is_err());
        }
        assert!(Config::default().validated().is_ok());
    }

    #[test]
    fn the_proxy_protocol_needs_trusted_proxies() {
        let mut config = Config {
            proxy_protocol: true,
            ..Config::default()
        };
        let err = config.clone().validated().unwrap_err();
        assert!(err.to_string().contains("--trusted-proxy"), "{err}");
        config.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(config.validated().is_ok());
    }

    #[test]
    fn a_header_limit_above_what_the_wire_carries_is_refused() {
        let mut config = Config::default();
        config.limits.max_headers = cryptun_proto::limits::MAX_WIRE_HEADERS;
        assert!(config.clone().validated().is_ok());
        config.limits.max_headers += 1;
        let err = config.validated().unwrap_err();
        assert!(err.to_string().contains("at most 1024 headers"), "{err}");
    }
}
