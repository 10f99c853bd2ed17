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
//! - `gateway`: the hyper service: the server's own routes, and dispatch to
//!   tunnels.
//! - `proxy`: carries one visitor request through a tunnel and back.
//! - `passthrough`: after a `101`, the raw bytes of an upgraded connection
//!   (WebSocket) both ways.
//! - `control`: the `/ws` endpoint: WebSocket upgrade, handshake, and the
//!   session that owns one client connection and its tunnels.
//! - [`registry`]: live tunnels by subdomain.
//! - [`error`]: what can fail, by whom, and the response each failure becomes.
//! - [`metrics`]: every metric family, created in one place.
//! - `access`: one visitor request's metrics and access log line.
//!
//! # Tasks
//!
//! One task accepts connections; each TCP connection gets a task serving its
//! HTTP requests. A `/ws` upgrade spawns a session task that owns that
//! WebSocket and everything registered through it; a visitor's request runs
//! in its connection's task and, when it has a body, one upload task. Nothing
//! is shared between tunnels except the registry.

#![forbid(unsafe_code)]

mod access;
pub mod config;
mod control;
pub mod error;
mod gateway;
pub mod host;
pub mod metrics;
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

pub use config::Config;
pub use metrics::Metrics;
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

/// Limits on the visitor-facing HTTP/1 parser.
const MAX_HEAD_BYTES: usize = 64 << 10;
const MAX_REQUEST_HEADERS: usize = 100;
/// A visitor has this long to send a complete request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// The metric families, and the registry `/metrics` encodes.
    pub(crate) metrics: Metrics,
    pub(crate) metrics_registry: prometheus_client::registry::Registry,
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

/// Serves on `listener` until `shutdown` fires. Then it drains: `/readyz`
/// answers 503 and clients are told the server is going away; it keeps
/// accepting for `config.shutdown_delay`, stops accepting, lets in-flight
/// requests finish for up to `config.shutdown_grace`, closes every session
/// with "going away", and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    let mut metrics_registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut metrics_registry);
    let state = Arc::new(State {
        listen_port: addr.port(),
        registry: Arc::new(Registry::default()),
        sessions_stop: CancellationToken::new(),
        tasks: TaskTracker::new(),
        metrics,
        metrics_registry,
        draining: shutdown.clone(),
        config,
    });
    info!(%addr, domain = %state.config.domain, "listening");
    let acceptor = Acceptor::new(listener, Arc::clone(&state));
    acceptor.accept_until(shutdown.cancelled()).await;
    let delay = state.config.shutdown_delay;
    if !delay.is_zero() {
        info!(?delay, "shutting down: not ready, still accepting");
        acceptor.accept_until(tokio::time::sleep(delay)).await;
    }
    let graceful = acceptor.stop();
    info!("shutting down: draining in-flight requests");
    if tokio::time::timeout(state.config.shutdown_grace, graceful.shutdown())
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
    info!("stopped");
    Ok(())
}

/// The accept loop's parts: the listener, the connection semaphore, the
/// HTTP settings, and the watcher that drains connections on shutdown.
struct Acceptor {
    listener: TcpListener,
    state: Arc<State>,
    graceful: GracefulShutdown,
    slots: Arc<Semaphore>,
    http: auto::Builder<TokioExecutor>,
}

impl Acceptor {
    fn new(listener: TcpListener, state: Arc<State>) -> Self {
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEAD_BYTES)
            .max_headers(MAX_REQUEST_HEADERS)
            .keep_alive(true);
        Acceptor {
            listener,
            slots: Arc::new(Semaphore::new(state.config.max_connections)),
            state,
            graceful: GracefulShutdown::new(),
            http: http.http1_only(),
        }
    }

    /// Accepts and serves connections until `stop` completes.
    async fn accept_until(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let (stream, peer) = tokio::select! {
                () = &mut stop => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(err) => {
                        // Out of file descriptors and the like: back off
                        // briefly rather than spin; the listener is fine.
                        warn!(%err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            self.serve(stream, peer);
        }
    }

    fn serve(&self, stream: tokio::net::TcpStream, peer: Peer) {
        let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() else {
            self.state.metrics.refused("max_connections");
            warn!(%peer, "connection limit reached; dropping connection");
            return;
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&self.state);
        let service = service_fn(move |req| gateway::handle(Arc::clone(&state), peer, req));
        let conn = self
            .http
            .serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = self.graceful.watch(conn.into_owned());
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

    /// Stops listening; returns the watcher that drains the connections.
    fn stop(self) -> GracefulShutdown {
        self.graceful
    }
}

/// A never-failing service result, as hyper wants it.
pub(crate) type ServiceResult = Result<http::Response<Body>, Infallible>;

/// The address a connection came from.
pub(crate) type Peer = SocketAddr;
