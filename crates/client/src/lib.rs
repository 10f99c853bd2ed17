//! The Cryptun client: connects to a server's `/ws`, creates a tunnel (or
//! several, over the one connection), and carries each request that arrives
//! on it to its tunnel's local service.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use cryptun_client::{ClientConfig, Target, connect};
//! let config = ClientConfig::new("http://127.0.0.1:4000", Target::parse("3000")?)?;
//! let session = connect(&config).await?;
//! println!("{}", session.tunnel().public_url);
//! // Serve until Ctrl-C, reconnecting whenever the connection is lost.
//! cryptun_client::serve(&config, session, Default::default(), cryptun_client::Events::none())
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Layout
//!
//! - [`target`]: parsing the local target and the server address.
//! - [`servers`]: the candidate servers (every `--server`, every address
//!   of each name), resolved and shuffled each round.
//! - `handshake`: opening a session on one server (one `create_tunnel`
//!   per tunnel), and the first connection, over the candidates.
//! - `session`: the connection: reader, writer, heartbeats.
//! - `transport`: TCP, or TLS over it for `wss://`, and certificate trust.
//! - `probe`: which scheme a port speaks, when a handshake failed as if
//!   `--server` named the wrong one.
//! - [`reconnect`]: keeping the tunnel up across lost connections and
//!   server restarts: the next server at once, then backoff and jitter,
//!   asking for the same tunnels again.
//! - `names`: the tunnels' names and reconnect secrets, kept by the domain
//!   that issued them, for the next connection.
//! - `state`: the same secrets on disk, per domain and name, for the next
//!   run of a client that was killed.
//! - `forward`: one request, from its `request` message to the local
//!   service and back.
//! - `error`: why an exchange failed, by side, and the answer each
//!   failure becomes.
//! - `page`: the HTML page a browser gets when the local service cannot
//!   be reached.
//! - `local`: connections to the local service, pooled, each driven by
//!   the task forwarding the request on it.
//! - `local_tls`: TLS to an `https://` local service ([`LocalTls`]: the
//!   system's authorities, `--local-ca`, or `--local-insecure`).
//! - `host_header`: the `Host` requests carry to the local service
//!   ([`HostHeader`]: `preserve`, `rewrite` or a value).
//! - `observe`: what `forward` reports of each exchange, to whoever watches
//!   (the inspector).
//! - `routes`: which tunnel's local service a request goes to.
//! - [`hello`]: the built-in hello service used by `--hello` and the demo.
//! - [`saved`]: `client.toml`, where `cryptun login` keeps the API key
//!   (and the user their tunnels).
//! - [`inspector`]: the request inspector, a web page of recent exchanges
//!   with replay and HAR export (`--inspect`).
//! - [`whoami`]: which API key a token is, asked of a server before
//!   `cryptun login` saves it.
//! - `events`: [`Event`], what the client reports (each request, each
//!   loss and reconnect), for the CLI to print.

#![forbid(unsafe_code)]

mod error;
mod events;
mod forward;
mod handshake;
pub mod hello;
mod host_header;
pub mod inspector;
mod local;
mod local_tls;
mod names;
mod observe;
mod page;
mod probe;
mod raw;
pub mod reconnect;
mod routes;
pub mod saved;
pub mod servers;
mod session;
mod state;
pub mod target;
mod transport;
pub mod whoami;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use cryptun_proto::message::{BasicAuth, TunnelCreated};
pub use cryptun_proto::{Secret, TunnelProtocol};
pub use events::{ConnectionDone, Event, Events, RequestDone};
pub use handshake::connect;
pub use host_header::HostHeader;
pub use inspector::{Inspector, InspectorLimits};
pub use local_tls::{LocalTls, LocalTlsError};
pub use raw::LocalProxyProtocol;
pub use reconnect::{Reconnect, serve};
pub use servers::Endpoint;
pub use session::Session;
pub use target::{AddressError, Target, Upstream};

/// How the client connects and forwards: the servers, the connection's
/// settings, and the tunnels it carries — [`tunnel`](ClientConfig::tunnel)
/// (the only one of `cryptun http`) and any [`more_tunnels`](ClientConfig::more_tunnels)
/// (`cryptun start`).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// WebSocket URL of the server's control endpoint (the first server).
    pub control_url: String,
    /// Control URLs of further servers: the client connects to one of them
    /// all, in random order, and to another when it loses one (see
    /// [`servers`] and [`reconnect`]).
    pub more_servers: Vec<String>,
    /// The session's first (often only) tunnel.
    pub tunnel: TunnelConfig,
    /// Further tunnels opened on the same connection (the server allows
    /// up to 16 per connection).
    pub more_tunnels: Vec<TunnelConfig>,
    /// How long to wait for the server to accept the connection and tunnel.
    pub connect_timeout: Duration,
    /// How long to wait for the local service to accept a connection.
    pub local_connect_timeout: Duration,
    /// PEM file of extra certificate authorities to trust for a `wss://`
    /// server, besides the public roots (`--ca`; e.g. the `ca.pem` of
    /// `cryptun server --tls-self-signed`).
    pub ca: Option<PathBuf>,
    /// The API key to present (`--token`, `CRYPTUN_TOKEN`, or the saved
    /// config written by `cryptun login`).
    pub token: Option<Secret>,
    /// Where to record exchanges for the request inspector, if anywhere.
    pub inspector: Option<Inspector>,
    /// How [`serve`] reconnects after a lost connection.
    pub reconnect: Reconnect,
    /// Where the reconnect secrets of named tunnels are kept between runs
    /// (the CLI's is `$XDG_STATE_HOME/cryptun`); `None`: in memory only.
    pub state_dir: Option<PathBuf>,
}

/// One tunnel of a session: what to ask the server for, and where its
/// requests go.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// The tunnel's name, as the user calls it; `None`: its subdomain.
    pub name: Option<String>,
    /// The local service.
    pub target: Target,
    /// A subdomain to ask for.
    pub subdomain: Option<String>,
    /// How long visitors may wait for a response head; `None`: the server's default.
    pub request_timeout: Option<Duration>,
    /// The secret of an earlier tunnel with the same `subdomain`.
    pub reconnect_secret: Option<Secret>,
    /// Credentials visitors must present (HTTP Basic).
    pub basic_auth: Option<BasicAuth>,
    /// Only visitors from these CIDR blocks are served (empty: everyone).
    pub allow_ips: Vec<String>,
    /// Visitors from these CIDR blocks are refused.
    pub deny_ips: Vec<String>,
    /// The largest request body visitors may send (the server caps it).
    pub max_body_size: Option<u64>,
    /// HTTP requests, or TCP connections (to the target's host and port).
    pub protocol: TunnelProtocol,
    /// For a TCP tunnel: the public port to ask for.
    pub remote_port: Option<u16>,
    /// For a TCP tunnel: a PROXY protocol header, in this version, before
    /// each connection's bytes to the local service, naming the visitor.
    pub local_proxy_protocol: Option<LocalProxyProtocol>,
    /// Join the pool serving `subdomain`: several clients of one key (or
    /// one `pool_secret`) serve one name together.
    pub pool: bool,
    /// Without an API key: the secret a pool's members share.
    pub pool_secret: Option<Secret>,
}

impl TunnelConfig {
    /// The local service as the user would write it: `host:port` for a
    /// TCP tunnel, the URL for an HTTP one.
    pub fn shown_target(&self) -> String {
        match self.protocol {
            TunnelProtocol::Tcp | TunnelProtocol::Tls => self.target.address().to_owned(),
            TunnelProtocol::Http => self.target.to_string(),
        }
    }

    /// A tunnel to `target` with every other setting left to the server.
    pub fn new(target: Target) -> Self {
        TunnelConfig {
            name: None,
            target,
            subdomain: None,
            request_timeout: None,
            reconnect_secret: None,
            basic_auth: None,
            allow_ips: Vec::new(),
            deny_ips: Vec::new(),
            max_body_size: None,
            protocol: TunnelProtocol::Http,
            remote_port: None,
            local_proxy_protocol: None,
            pool: false,
            pool_secret: None,
        }
    }
}

impl ClientConfig {
    /// Settings for `server` (see [`target::control_url`]) and one tunnel
    /// to `target`.
    pub fn new(server: &str, target: Target) -> Result<Self, AddressError> {
        Ok(ClientConfig {
            control_url: target::control_url(server)?,
            more_servers: Vec::new(),
            tunnel: TunnelConfig::new(target),
            more_tunnels: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            local_connect_timeout: Duration::from_secs(5),
            ca: None,
            token: None,
            inspector: None,
            reconnect: Reconnect::default(),
            state_dir: None,
        })
    }

    /// Settings for `server` and several tunnels over one connection.
    /// `None` if `tunnels` is empty.
    pub fn with_tunnels(
        server: &str,
        tunnels: Vec<TunnelConfig>,
    ) -> Result<Option<Self>, AddressError> {
        let mut tunnels = tunnels.into_iter();
        let Some(first) = tunnels.next() else {
            return Ok(None);
        };
        let mut config = ClientConfig::new(server, first.target.clone())?;
        config.tunnel = first;
        config.more_tunnels = tunnels.collect();
        Ok(Some(config))
    }

    /// Sets the servers to connect to (each as for [`new`](Self::new)),
    /// the first one first; a server given twice counts once. At least
    /// one, at most [`servers::MAX_SERVERS`].
    pub fn set_servers(&mut self, servers: &[impl AsRef<str>]) -> Result<(), AddressError> {
        let mut urls: Vec<String> = Vec::with_capacity(servers.len());
        for server in servers {
            let url = target::control_url(server.as_ref())?;
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
        if urls.len() > servers::MAX_SERVERS {
            let max = servers::MAX_SERVERS;
            return Err(AddressError(format!(
                "at most {max} servers, not {}",
                urls.len()
            )));
        }
        let mut urls = urls.into_iter();
        let first = urls
            .next()
            .ok_or_else(|| AddressError("no server given".into()))?;
        self.control_url = first;
        self.more_servers = urls.collect();
        Ok(())
    }

    /// The control URL of every server, the first one first.
    pub fn servers(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.control_url.as_str())
            .chain(self.more_servers.iter().map(String::as_str))
    }

    /// Every tunnel of the session, the first one first.
    pub fn tunnels(&self) -> impl Iterator<Item = &TunnelConfig> {
        std::iter::once(&self.tunnel).chain(&self.more_tunnels)
    }

    /// [`tunnels`](Self::tunnels), to change them.
    pub fn tunnels_mut(&mut self) -> impl Iterator<Item = &mut TunnelConfig> {
        std::iter::once(&mut self.tunnel).chain(&mut self.more_tunnels)
    }

    /// The reconnect secrets saved between runs, if kept.
    pub(crate) fn saved(&self) -> Option<state::Saved> {
        self.state_dir.as_deref().map(state::Saved::new)
    }

    /// Who watches the exchanges: the inspector, if any.
    pub(crate) fn observer(&self) -> Option<Arc<dyn observe::Observer>> {
        let inspector = self.inspector.clone()?;
        Some(Arc::new(inspector))
    }
}

/// Why the client stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or the WebSocket handshake failed.
    #[error("could not connect to {url}: {source}")]
    Connect {
        /// The control URL.
        url: String,
        /// What went wrong.
        source: Box<cryptun_proto::tungstenite::Error>,
    },
    /// The server refused the tunnel (name taken, invalid, ...).
    #[error("the server refused the tunnel: {message}")]
    Refused {
        /// The server's error code.
        code: cryptun_proto::ErrorCode,
        /// The server's explanation.
        message: String,
    },
    /// The subdomain asked for is held for its previous client to
    /// reconnect (`subdomain_held`): it is free after `retry_after`, unless
    /// that client comes back first.
    #[error("the server refused the tunnel: {message}")]
    Held {
        /// The server's explanation.
        message: String,
        /// How long the hold lasts.
        retry_after: Duration,
    },
    /// The server did not answer in time.
    #[error("the server did not answer within {0:?}")]
    Timeout(Duration),
    /// The server broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection to the server was lost or closed.
    #[error("disconnected from the server: {0}")]
    Disconnected(String),
    /// The server's TLS certificate did not check out.
    #[error("certificate not trusted for {url}: {reason}")]
    Untrusted {
        /// The control URL.
        url: String,
        /// What is wrong with the certificate, and what to do about it.
        reason: String,
    },
    /// The `--ca` file cannot be used.
    #[error("cannot use --ca {}: {reason}", path.display())]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The server's port speaks the other scheme: `--server http://`
    /// against an HTTPS port, or `https://` against a plain one.
    #[error("{server} speaks {speaks}, not {tried}: connect with --server {suggest}")]
    WrongScheme {
        /// The server as given (`http://HOST:PORT`, with the address
        /// dialled when the host is a name).
        server: String,
        /// What the port speaks: `HTTPS (TLS)` or `plain HTTP`.
        speaks: &'static str,
        /// What the address said to speak.
        tried: &'static str,
        /// The `--server` value that would work.
        suggest: String,
    },
    /// The server answered the control connection with a redirect: it
    /// serves clients over TLS only.
    #[error("{url} redirects to {location}; connect with --server {suggest}")]
    Redirected {
        /// The control URL.
        url: String,
        /// Where the server sends us.
        location: String,
        /// The `--server` value that would work.
        suggest: String,
    },
    /// The server ended the session because the API key it was opened with
    /// was revoked (`key_revoked`). Final: the key will not work again.
    #[error("the server closed the session: {message}")]
    KeyRevoked {
        /// The server's explanation.
        message: String,
    },
    /// The server closed the connection because it is shutting down or
    /// restarting.
    #[error("the server is going away (shutting down or restarting)")]
    GoingAway {
        /// How long the server suggested waiting before reconnecting.
        reconnect_after: Duration,
    },
}

impl ClientError {
    /// Whether trying again cannot help: the server refused the tunnel or
    /// the client (an HTTP 4xx on the upgrade), revoked the client's key,
    /// the address is not a WebSocket URL, or the server speaks another
    /// protocol. Lost
    /// connections, timeouts and servers going away are not final.
    pub fn is_final(&self) -> bool {
        use cryptun_proto::tungstenite::Error;
        match self {
            ClientError::Refused { .. }
            | ClientError::Held { .. }
            | ClientError::KeyRevoked { .. }
            | ClientError::Protocol(_)
            | ClientError::Untrusted { .. }
            | ClientError::Ca { .. }
            | ClientError::WrongScheme { .. }
            | ClientError::Redirected { .. } => true,
            ClientError::Connect { source, .. } => match source.as_ref() {
                Error::Http(resp) => {
                    let status = resp.status();
                    status.is_client_error()
                        && status != http::StatusCode::REQUEST_TIMEOUT
                        && status != http::StatusCode::TOO_MANY_REQUESTS
                }
                Error::Url(_) => true,
                _ => false,
            },
            ClientError::Timeout(_)
            | ClientError::Disconnected(_)
            | ClientError::GoingAway { .. } => false,
        }
    }
}
