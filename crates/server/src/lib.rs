//! The Cryptun server: a public HTTP gateway that routes each request by its
//! Host to a tunnel, and the `/ws` control endpoint where tunnel clients
//! connect.
//!
//! [`run`] takes a bound listener, a validated [`Config`] and a cancellation
//! token, and serves until the token fires; tests hand it a listener on
//! `127.0.0.1:0`. [`serve`] does the same for a plain listener, an HTTPS
//! listener with its [`tls::Certs`], or both. This file holds those two and
//! the state every task of a server shares; the sockets are `listen`'s.
//!
//! # Layout
//!
//! - [`config`]: settings and their validation.
//! - `listen`: the listeners ([`Listeners`]), the accept loop and its
//!   connection limit, each connection's TLS handshake and HTTP/1.1 serving.
//! - `park`: idle keep-alive connections held without hyper's buffers,
//!   picked up again by their next bytes.
//! - [`host`]: Host header parsing and routing decisions.
//! - [`tls`]: the certificates (the operator's files, reloadable, or a
//!   development authority) and the TLS acceptor.
//! - `https`: what HTTPS changes per request: SNI must match Host (421),
//!   plain requests redirect (308), `X-Forwarded-Proto`.
//! - `gateway`: the hyper service: checks every request, then dispatches it
//!   to the server's own routes or to a tunnel.
//! - [`hardening`]: what hyper lets through that we refuse: ambiguous
//!   framing (scanned below hyper, in [`hardening::framing`]), long targets,
//!   odd paths on our own routes, `h2c` upgrades.
//! - [`access`]: a tunnel's visitor rules: IP allow and deny lists, Basic
//!   credentials.
//! - `forwarded`: the visitor's address behind a trusted reverse proxy
//!   (`X-Forwarded-For`, trusted only from `--trusted-proxy` peers).
//! - [`limits`]: request rates, body size and body idle timeout.
//! - [`admin`]: the server's own routes and the admin token.
//! - `proxy`: carries one visitor request through a tunnel and back.
//! - `passthrough`: after a `101`, the raw bytes of an upgraded connection
//!   (WebSocket) both ways.
//! - `control`: the `/ws` endpoint: WebSocket upgrade, handshake, and the
//!   session that owns one client connection and its tunnels.
//! - `admit`: who may open which tunnel: name rules, reserved names, the
//!   reconnect grace, and the registration itself.
//! - [`auth`]: auth modes, checking API keys at the handshake, the
//!   backoff for failed handshakes, and the watcher that cuts the sessions
//!   of revoked keys.
//! - [`store`]: the SQLite database of keys, reserved names, and names
//!   held for reconnection across a restart.
//! - [`registry`]: live tunnels by subdomain, and names held for
//!   reconnection.
//! - [`error`]: what can fail, by whom, and the response each failure becomes.
//! - [`metrics`]: every metric family, created in one place.
//! - [`stats`]: the dashboard's request counters, per tunnel and in all.
//! - `dashboard`: the live page on the server's own host, and the
//!   snapshot behind it (`/api/dashboard`).
//! - `access_log`: one visitor request's metrics and access log line.
//!
//! # Tasks
//!
//! One task accepts connections on every listener; each TCP connection gets
//! a task that completes its TLS handshake (bounded by
//! `tls_handshake_timeout`), if any, then serves its HTTP requests. A `/ws`
//! upgrade spawns a session task that owns that WebSocket and everything
//! registered through it; a visitor's request runs in its connection's task
//! and, when it has a body, one upload task. With a key store, one more
//! task watches it for revoked keys and cuts their sessions. Nothing is
//! shared between tunnels except the registry.

#![forbid(unsafe_code)]

pub mod access;
mod access_log;
pub mod admin;
mod admit;
pub mod auth;
pub mod config;
mod control;
mod dashboard;
pub mod error;
mod forwarded;
mod gateway;
pub mod hardening;
pub mod host;
mod https;
pub mod limits;
mod listen;
pub mod metrics;
mod park;
mod passthrough;
mod proxy;
pub mod registry;
pub mod stats;
pub mod store;
pub mod tls;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use admin::AdminToken;
pub use auth::AuthMode;
pub use config::{Config, RateLimits};
pub use listen::{Listeners, TlsListener};
pub use metrics::Metrics;
pub use registry::Registry;
pub use store::Store;
pub use tls::Certs;

/// Errors as they cross crate boundaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response the gateway writes.
pub type Body = BoxBody<Bytes, BoxError>;

/// A complete body from bytes.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Shared by every task of one server.
pub(crate) struct State {
    pub(crate) config: Config,
    pub(crate) registry: Arc<Registry>,
    /// The port public URLs use unless `config.public_port` says otherwise:
    /// the HTTPS listener's if there is one, else the plain listener's.
    pub(crate) listen_port: u16,
    /// With `redirect_http`: the HTTPS port plain requests are sent to.
    pub(crate) redirect_to: Option<u16>,
    /// Fires when sessions must close (after in-flight requests drained).
    pub(crate) sessions_stop: CancellationToken,
    /// Session tasks and access log lines, awaited on shutdown.
    pub(crate) tasks: TaskTracker,
    /// Keys and reserved names; `None` when auth is off.
    pub(crate) store: Option<Store>,
    /// Failed handshakes by address.
    pub(crate) backoff: auth::Backoff,
    /// Live sessions by API key, cut when their key is revoked.
    pub(crate) key_sessions: Arc<auth::KeySessions>,
    /// The per-address request rate, if one is set.
    pub(crate) ip_limiter: Option<limits::IpLimiter>,
    /// The metric families, and the registry `/metrics` encodes.
    pub(crate) metrics: Metrics,
    pub(crate) metrics_registry: prometheus_client::registry::Registry,
    /// Every visitor request to a tunnel host, for the dashboard.
    pub(crate) totals: Arc<stats::Stats>,
    /// When the server started, for its uptime.
    pub(crate) started: (Instant, SystemTime),
    /// Fires when shutdown begins: from then on the server is draining
    /// (`/readyz` answers 503, new clients are refused, sessions are told
    /// the server is going away).
    pub(crate) draining: CancellationToken,
}

impl State {
    /// Whether shutdown has begun.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }
}

/// Serves plain HTTP on `listener` until `shutdown` fires; see [`serve`].
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let listeners = Listeners {
        http: Some(listener),
        https: None,
    };
    serve(listeners, config, shutdown).await
}

/// Serves on `listeners` until `shutdown` fires, then stops accepting, lets
/// in-flight requests finish for up to `config.shutdown_grace`, closes every
/// session with "going away", and returns.
///
/// With an HTTPS listener, public URLs are `https://` on its port, and
/// `config.redirect_http` may turn the plain listener into a redirector.
pub async fn serve(
    listeners: Listeners,
    mut config: Config,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let invalid = |why: &str| io::Error::new(io::ErrorKind::InvalidInput, why.to_owned());
    let Listeners { http: plain, https } = listeners;
    let (https, acceptor) = match https {
        Some(tls) => (
            Some(tls.listener),
            Some(tls.certs.acceptor().map_err(io::Error::other)?),
        ),
        None => (None, None),
    };
    let public = https
        .as_ref()
        .or(plain.as_ref())
        .ok_or_else(|| invalid("no listener"))?;
    let listen_port = public.local_addr()?.port();
    if https.is_some() {
        config.public_scheme = "https".into();
    }
    let redirect_to = match (config.redirect_http, https.is_some()) {
        (true, true) => Some(config.public_port.unwrap_or(listen_port)),
        (true, false) => return Err(invalid("redirect_http needs an HTTPS listener")),
        (false, _) => None,
    };
    let store = open_store(&config).await?;
    let mut metrics_registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut metrics_registry);
    let state = Arc::new(State {
        listen_port,
        redirect_to,
        registry: Arc::new(Registry::new(config.reconnect_grace, config.max_held_names)),
        sessions_stop: CancellationToken::new(),
        tasks: TaskTracker::new(),
        store,
        backoff: auth::Backoff::new(config.auth_backoff),
        key_sessions: Arc::default(),
        ip_limiter: config.rate_limits.per_ip.map(|rate| {
            let limits = &config.rate_limits;
            limits::IpLimiter::new(rate, limits.max_tracked_ips, limits.sweep_interval)
        }),
        metrics,
        metrics_registry,
        totals: Arc::default(),
        started: (Instant::now(), SystemTime::now()),
        draining: shutdown.clone(),
        config,
    });
    for (listener, scheme) in [(&plain, "http"), (&https, "https")] {
        if let Some(addr) = listener.as_ref().and_then(|l| l.local_addr().ok()) {
            // Bound to every address: the name that reaches it from this
            // machine, which the admin routes accept without a token.
            let dashboard = if addr.ip().is_unspecified() {
                format!("{scheme}://localhost:{}/dashboard", addr.port())
            } else {
                format!("{scheme}://{addr}/dashboard")
            };
            info!(%addr, %scheme, domain = %state.config.domain, %dashboard, "listening");
        }
    }
    match &state.store {
        Some(store) => {
            info!(auth = %state.config.auth, database = %store.path().display(), "clients are checked against the key database")
        }
        None => {
            info!(auth = %state.config.auth, "no API keys: any client may open tunnels, reserved names are not enforced")
        }
    }
    if let Some(store) = &state.store {
        restore_holds(&state.registry, store).await;
        auth::spawn_watcher(&state, store.clone(), state.sessions_stop.clone());
    }
    let drain = listen::Drain::default();

    // Shutdown begins with `draining` (the shutdown token itself): /readyz
    // answers 503 and clients are told; the server keeps accepting for
    // `shutdown_delay` so a load balancer can notice, then stops.
    let delay = state.config.shutdown_delay;
    let stop = async {
        shutdown.cancelled().await;
        if !delay.is_zero() {
            info!(?delay, "shutting down: not ready, still accepting");
            tokio::time::sleep(delay).await;
        }
    };
    listen::accept_until(&state, plain, https, acceptor, &drain, stop).await;

    info!("shutting down: draining in-flight requests");
    drain.stop.cancel();
    drain.tasks.close();
    if tokio::time::timeout(state.config.shutdown_grace, drain.tasks.wait())
        .await
        .is_err()
    {
        warn!("in-flight requests still running at the shutdown deadline");
    }
    // Only now do sessions close: the requests that drained above needed
    // their tunnels' sessions alive to finish.
    state.sessions_stop.cancel();
    state.tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), state.tasks.wait()).await;
    // Keep the names held for reconnection, those of sessions that just
    // ended and of any still ending, for the next start.
    if let Some(store) = &state.store {
        save_holds(&state.registry, store).await;
    }
    // Requests the deadline cut have failed with their sessions (502): let
    // their connections answer and log them before the runtime goes.
    let _ = tokio::time::timeout(Duration::from_secs(1), drain.tasks.wait()).await;
    info!("stopped");
    Ok(())
}

/// Opens the key database unless auth is off.
async fn open_store(config: &Config) -> io::Result<Option<Store>> {
    let Some(dir) = config
        .data_dir
        .clone()
        .filter(|_| config.auth != AuthMode::Off)
    else {
        return Ok(None);
    };
    let opened = tokio::task::spawn_blocking(move || Store::open(&dir))
        .await
        .map_err(io::Error::other)?;
    opened
        .map(Some)
        .map_err(|err| io::Error::other(format!("could not open the key database: {err}")))
}

/// Holds again the names the last run saved when it stopped. A failure
/// costs only those holds: the server starts all the same.
async fn restore_holds(registry: &Registry, store: &Store) {
    match auth::blocking(store, Store::take_holds).await {
        Ok(saved) if saved.is_empty() => {}
        Ok(saved) => {
            info!(
                names = saved.len(),
                "names held for reconnection when the server last stopped are held again"
            );
            registry.restore_holds(saved);
        }
        Err(err) => warn!(%err, "could not read the names held when the server last stopped"),
    }
}

/// Saves the names held for reconnection, for the next start.
async fn save_holds(registry: &Registry, store: &Store) {
    let saved = registry.saved_holds();
    let names = saved.len();
    match auth::blocking(store, move |store| store.save_holds(&saved)).await {
        Ok(()) if names > 0 => info!(
            names,
            "names held for reconnection saved for the next start"
        ),
        Ok(()) => {}
        Err(err) => warn!(%err, "could not save the names held for reconnection"),
    }
}

/// A never-failing service result, as hyper wants it.
pub(crate) type ServiceResult = Result<http::Response<Body>, Infallible>;

/// The address a connection came from.
pub(crate) type Peer = SocketAddr;
