//! The Cryptun server: a public HTTP gateway that routes each request by its
//! Host to a tunnel, and the `/ws` control endpoint where tunnel clients
//! connect.
//!
//! [`run`] takes a bound listener, a validated [`Config`] and a cancellation
//! token, and serves until the token fires; tests hand it a listener on
//! `127.0.0.1:0`.
//!
//! # Layout
//!
//! - [`config`]: settings and their validation.
//! - [`host`]: Host header parsing and routing decisions.
//! - `gateway`: the hyper service: checks every request, then dispatches it
//!   to the server's own routes or to a tunnel.
//! - [`hardening`]: what hyper lets through that we refuse: ambiguous
//!   framing (scanned below hyper, in [`hardening::framing`]), long targets,
//!   odd paths on our own routes, `h2c` upgrades.
//! - [`access`]: a tunnel's visitor rules: IP allow and deny lists, Basic
//!   credentials.
//! - [`limits`]: request rates, body size and body idle timeout.
//! - [`admin`]: the server's own routes and the admin token.
//! - `proxy`: carries one visitor request through a tunnel and back.
//! - `passthrough`: after a `101`, the raw bytes of an upgraded connection
//!   (WebSocket) both ways.
//! - `control`: the `/ws` endpoint: WebSocket upgrade, handshake, and the
//!   session that owns one client connection and its tunnels.
//! - [`registry`]: live tunnels by subdomain.
//! - [`error`]: what can fail, by whom, and the response each failure becomes.
//!
//! # Tasks
//!
//! One task accepts connections; each TCP connection gets a task serving its
//! HTTP requests. A `/ws` upgrade spawns a session task that owns that
//! WebSocket and everything registered through it; a visitor's request runs
//! in its connection's task and, when it has a body, one upload task. Nothing
//! is shared between tunnels except the registry.

#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod config;
mod control;
pub mod error;
mod gateway;
pub mod hardening;
pub mod host;
pub mod limits;
mod passthrough;
mod proxy;
pub mod registry;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

pub use admin::AdminToken;
pub use config::{Config, RateLimits};
pub use registry::Registry;

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

/// Limits on the visitor-facing HTTP/1 parser: over them, 431.
const MAX_HEAD_BYTES: usize = 64 << 10;
const MAX_REQUEST_HEADERS: usize = 100;

/// Shared by every task of one server.
pub(crate) struct State {
    pub(crate) config: Config,
    pub(crate) registry: Arc<Registry>,
    /// The port the listener is bound to, for public URLs.
    pub(crate) listen_port: u16,
    /// Fires when sessions must close (after in-flight requests drained).
    pub(crate) sessions_stop: CancellationToken,
    /// Session tasks, awaited on shutdown.
    pub(crate) tasks: TaskTracker,
    /// The per-address request rate, if one is set.
    pub(crate) ip_limiter: Option<limits::IpLimiter>,
}

/// One visitor connection, as its requests see it.
pub(crate) struct Conn {
    /// The address it came from.
    pub(crate) peer: Peer,
    /// The framing verdicts on its request heads, one per request.
    pub(crate) framing: Arc<hardening::framing::Verdicts>,
}

/// Serves on `listener` until `shutdown` fires, then stops accepting, lets
/// in-flight requests finish for up to `config.shutdown_grace`, closes every
/// session with "going away", and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    let state = Arc::new(State {
        listen_port: addr.port(),
        registry: Arc::new(Registry::default()),
        sessions_stop: CancellationToken::new(),
        tasks: TaskTracker::new(),
        ip_limiter: config.rate_limits.per_ip.map(|rate| {
            let limits = &config.rate_limits;
            limits::IpLimiter::new(rate, limits.max_tracked_ips, limits.sweep_interval)
        }),
        config,
    });
    info!(%addr, domain = %state.config.domain, "listening");
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(state.config.max_connections));
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_REQUEST_HEADERS)
        .keep_alive(true);
    let http = http.http1_only();

    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // Out of file descriptors and the like: back off briefly
                    // rather than spin; the listener itself is fine.
                    warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            warn!(%peer, "connection limit reached; dropping connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let framing = Arc::new(hardening::framing::Verdicts::default());
        // The scan must see every head hyper accepts whole: a little over
        // hyper's own limit.
        let io =
            hardening::framing::Guarded::new(stream, Arc::clone(&framing), MAX_HEAD_BYTES + 1024);
        let conn = Arc::new(Conn { peer, framing });
        let service =
            service_fn(move |req| gateway::handle(Arc::clone(&state), Arc::clone(&conn), req));
        let conn = http.serve_connection_with_upgrades(TokioIo::new(io), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(
            async move {
                if let Err(err) = conn.await {
                    debug!(%err, "connection ended with an error");
                }
                drop(permit);
            }
            .instrument(info_span!("conn", %peer)),
        );
    }

    drop(listener);
    info!("shutting down: draining in-flight requests");
    if tokio::time::timeout(state.config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("in-flight requests still running at the shutdown deadline");
    }
    state.sessions_stop.cancel();
    state.tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), state.tasks.wait()).await;
    info!("stopped");
    Ok(())
}

/// A never-failing service result, as hyper wants it.
pub(crate) type ServiceResult = Result<http::Response<Body>, Infallible>;

/// The address a connection came from.
pub(crate) type Peer = SocketAddr;
