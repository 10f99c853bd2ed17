//! The server's settings, validated once before any socket is bound.

use std::time::Duration;

use cryptun_proto::Limits;
use cryptun_proto::mux::Heartbeat;

/// Everything `run` needs to know besides its listener.
#[derive(Debug, Clone)]
pub struct Config {
    /// Tunnels live at `{subdomain}.{domain}`. Lowercase, no trailing dot.
    pub domain: String,
    /// Scheme of public URLs (`http` until TLS is configured).
    pub public_scheme: String,
    /// Port shown in public URLs; `None` means the listener's own port.
    /// 80 for `http` (443 for `https`) is left out of the URL.
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
    /// How long in-flight requests may run on after shutdown is asked for.
    pub shutdown_grace: Duration,
    /// How long the server keeps accepting connections after shutdown is
    /// asked for, with `/readyz` answering 503, so that a load balancer
    /// stops sending it traffic before it stops listening. Zero by default.
    pub shutdown_delay: Duration,
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
            shutdown_grace: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid server configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Normalises the domain and checks that the settings fit together.
    pub fn validated(mut self) -> Result<Self, ConfigError> {
        self.domain = self.domain.trim_end_matches('.').to_ascii_lowercase();
        if self.domain.is_empty()
            || !self
                .domain
                .split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err(ConfigError(format!(
                "--domain {:?} is not a DNS name",
                self.domain
            )));
        }
        let l = &self.limits;
        if l.max_frame_payload as u64 * 2 > u64::from(l.stream_window) {
            return Err(ConfigError(
                "the stream window must hold at least two maximum-size frames".into(),
            ));
        }
        if l.max_message_bytes < l.max_inline_body / 3 * 4 + l.max_header_bytes + 1024 {
            return Err(ConfigError(
                "max message size must fit a base64 inline body plus its head".into(),
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
        for (name, d) in [
            ("request timeout", self.request_timeout),
            ("handshake timeout", self.handshake_timeout),
            ("heartbeat interval", self.heartbeat.interval),
        ] {
            if d.is_zero() {
                return Err(ConfigError(format!("the {name} must be more than zero")));
            }
        }
        Ok(self)
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
