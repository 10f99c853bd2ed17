//! The Cryptun server: a public HTTP gateway that routes each request by its
//! Host to a tunnel, and the `/ws` control endpoint where tunnel clients
//! connect.
//!
//! [`run`] takes a bound listener, a validated [`Config`] and a cancellation
//! token, and serves until the token fires; tests hand it a listener on
//! `127.0.0.1:0`. [`serve`] does the same for a plain listener, an HTTPS
//! listener with its [`Certs`], or both. This file builds the stages below
//! from the configuration, each holding only the handles it uses, and owns
//! the order in which they stop.
//!
//! # Layout: the stages a request goes through
//!
//! - [`edge`]: the sockets. Listeners, the accept loop and who may hold a
//!   connection (per address, slots kept for clients), TLS (certificates in [`edge::tls`]), HTTP/1.1 serving with each
//!   head's framing checked below hyper (`edge::framing`), and idle
//!   connections parked without hyper (`edge::park`). It hands every
//!   request to a [`edge::Handler`]: the gateway.
//! - [`gateway`]: one request. Host routing ([`gateway::host`]), the HTTPS
//!   rules, the checks hyper does not make, the visitor's address behind a
//!   trusted proxy, then the server's own routes (to `control` or `ops`)
//!   or a tunnel: the proxy, protocol switches, and the access log.
//! - [`policy`]: the rules a request or a client is held to: a tunnel's
//!   visitor rules ([`policy::access`]), request rates, body limits, the
//!   backoff for failed handshakes, and the shares one address or identity
//!   may hold ([`policy::quota`]).
//! - [`control`]: the clients. The `/ws` upgrade, the handshake and its
//!   authentication, admission of each tunnel, the session that owns a
//!   client's connection, and the cutting of revoked keys' sessions.
//! - [`registry`]: the live tunnels by name, the names held for
//!   reconnection, and each tunnel's request counters.
//! - [`store`]: the durable records (API keys, reserved names, held names
//!   across a restart) in SQLite.
//! - [`ports`]: TCP tunnels' public ports (ranges, leases, holds) and the
//!   relay carrying TCP and TLS tunnels' connections as raw streams.
//! - [`cluster`]: several nodes behind one domain, on Redis: a second
//!   registry whose names are claimed cluster-wide, and the internal hop
//!   that carries a request to the node serving its tunnel.
//! - [`ops`]: what operators use: the server's own routes (`/healthz`,
//!   `/readyz`, `/metrics`, `/api/...`, the dashboard) and the admin token.
//! - shared by the stages: [`config`] (every setting, validated once),
//!   [`error`] (every way a visitor's request fails, by side, and its
//!   response), [`metrics`] (every metric family, created in one place),
//!   the response [`Body`], and `counted` (a byte stream tallied as it
//!   passes, for the raw bytes of switched connections and TCP/TLS tunnels).
//!
//! Dependencies run down that list: the edge knows nothing of tunnels, the
//! gateway nothing of sockets, and none of them takes the whole server.
//!
//! # Tasks
//!
//! One task accepts connections on every listener; each TCP connection gets
//! a task that completes its TLS handshake (bounded by
//! `tls_handshake_timeout`), if any, then serves its HTTP requests. A `/ws`
//! upgrade spawns a session task that owns that WebSocket and everything
//! registered through it; a visitor's request runs in its connection's task
//! and, when it has a body, one upload task. With API keys, one more task
//! watches the store for revoked keys and cuts their sessions. Nothing is
//! shared between tunnels except the registry.

#![forbid(unsafe_code)]

mod body;
pub mod cluster;
pub mod config;
pub mod control;
pub mod edge;
pub mod error;
pub mod gateway;
pub mod metrics;
pub mod ops;
pub mod policy;
pub mod ports;
pub mod registry;
pub mod store;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, warn};

pub use config::{AuthMode, Config, RateLimits};
pub use edge::h2::Limits as H2Limits;
pub use edge::tls::{self, Certs};
pub use edge::{Listeners, TlsListener};
pub use metrics::Metrics;
pub use ops::AdminToken;
pub use ports::TcpPorts;
pub use registry::Registry;
pub use store::Store;

use control::Control;
use edge::{Drain, Edge};
use gateway::Gateway;
use ops::Ops;
use registry::keeper;

pub use body::{Body, BoxError};

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
    config: Config,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let managed = listeners.https.as_ref().map(|https| https.certs.clone());
    let bound = edge::Bound::new(listeners)?;
    let config = Arc::new(bound.settle(config)?);
    let store = open_store(&config).await?;
    let joined = match &config.cluster {
        Some(cluster) => Some(cluster::join(&config, cluster).await?),
        None => None,
    };
    // Keys and reserved names: the cluster's, shared, or this server's own.
    let keys: Arc<dyn store::Keys> = match &joined {
        Some(joined) => joined.keys.clone(),
        None => Arc::new(store.clone()),
    };
    // A cluster node listens on every port of the cluster's TCP ranges.
    let (shared_ports, port_listeners) = match (&joined, &config.cluster, &config.tcp_ports) {
        (Some(joined), Some(cluster), ports::TcpPorts::Ranges(ranges)) => {
            let shared = joined.registry.shared().clone();
            let at = (bound.ip(), ranges.as_slice());
            let (ports, listeners) =
                cluster::ports::SharedPorts::bind(at, shared, cluster, config.reconnect_grace)?;
            (Some(ports), listeners)
        }
        _ => (None, Vec::new()),
    };
    let stages = Stages::build(
        &config,
        &bound,
        Arc::clone(&keys),
        shutdown.clone(),
        (joined.as_ref(), shared_ports.clone()),
    );
    bound.log_listening(&config.domain);
    let database = match &config.cluster {
        Some(cluster) => cluster.redacted_url(),
        None => store.path().display().to_string(),
    };
    match config.auth {
        AuthMode::Off => {
            info!(auth = %config.auth, %database, "no API keys: any client may open tunnels, reserved names are not enforced")
        }
        AuthMode::Optional | AuthMode::Required => {
            info!(auth = %config.auth, %database, "clients are checked against the key database");
            stages.control.spawn_revocation_watcher(Arc::clone(&keys));
        }
    }
    if let Some(acme) = &config.acme {
        // Alone, the database keeps the certificate: it must be on disk.
        let kept_somewhere = joined.is_some() || !store.is_in_memory();
        let Some(certs) = managed.filter(|_| kept_somewhere) else {
            return Err(io::Error::other(
                "ACME needs an HTTPS listener and a data directory (its database keeps the certificate)",
            ));
        };
        // In a cluster, the certificate is the cluster's: kept in Redis,
        // ordered by one node at a time.
        let keep: (Arc<dyn store::acme::AcmeKeep>, String) = match &joined {
            Some(joined) => (joined.keys.clone(), joined.node.clone()),
            None => (Arc::new(store.clone()), "server".into()),
        };
        let acme = edge::tls::acme::Acme::new(
            acme.clone(),
            &config.domain,
            keep,
            certs,
            stages.metrics.clone(),
        );
        tokio::spawn(
            acme.run(shutdown.clone())
                .instrument(tracing::info_span!("acme")),
        );
    }
    keeper::restore(stages.registry.as_ref(), &store).await;
    // A server with a database keeps its holds there as they are made, so a
    // crash loses none; a cluster's live in Redis.
    let keeping = CancellationToken::new();
    let kept = (!store.is_in_memory() && joined.is_none()).then(|| {
        tokio::spawn(
            keeper::keep(
                Arc::clone(&stages.registry),
                store.clone(),
                config.reconnect_grace,
                keeping.clone(),
            )
            .instrument(tracing::info_span!("holds_keeper")),
        )
    });
    let drain = Drain::default();

    // Shutdown begins with `draining` (the shutdown token itself): /readyz
    // answers 503 and clients are told; the server keeps accepting for
    // `shutdown_delay` so a load balancer can notice, then stops.
    let delay = config.shutdown_delay;
    let stop_accepting = CancellationToken::new();
    let stop = async {
        shutdown.cancelled().await;
        if !delay.is_zero() {
            info!(?delay, "shutting down: not ready, still accepting");
            tokio::time::sleep(delay).await;
        }
        stop_accepting.cancel();
    };
    if let Some(shared_ports) = &shared_ports {
        let carrier = stages.gateway.carrier().clone();
        shared_ports.serve(port_listeners, carrier, stop_accepting.clone());
    }
    let public = stages.edge.accept_until(
        bound,
        Arc::clone(&stages.gateway),
        &drain,
        stop_accepting.cancelled(),
    );
    // A cluster node also serves the requests other nodes forward.
    let hop = async {
        let Some(joined) = joined else { return };
        let Some(secret) = config.cluster.as_ref().map(|c| c.secret.clone()) else {
            return;
        };
        let edge = Edge::for_peers(&config, stages.metrics.clone());
        let Some(listing) = stages.listing.clone() else {
            return;
        };
        let server = Arc::new(cluster::hop::HopServer {
            gateway: Arc::clone(&stages.gateway),
            secret,
            listing,
        });
        match edge::Bound::for_peers(joined.listener, joined.tls.map(|tls| tls.acceptor)) {
            Ok(bound) => {
                edge.accept_until(bound, server, &drain, stop_accepting.cancelled())
                    .await
            }
            Err(err) => warn!(%err, "the cluster listener could not be served"),
        }
    };
    tokio::join!(stop, public, hop);

    info!("shutting down: draining in-flight requests");
    drain.stop.cancel();
    drain.tasks.close();
    if tokio::time::timeout(config.shutdown_grace, drain.tasks.wait())
        .await
        .is_err()
    {
        warn!("in-flight requests still running at the shutdown deadline");
    }
    // Only now do sessions close: the requests that drained above needed
    // their tunnels' sessions alive to finish.
    stages.sessions_stop.cancel();
    stages.tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), stages.tasks.wait()).await;
    // A cluster node gives its names back (held for their owners) in the
    // shared store.
    let _ = tokio::time::timeout(Duration::from_secs(2), stages.registry.close()).await;
    // Keep the names held for reconnection, those of sessions that just
    // ended and of any still ending, for the next start (the keeper first
    // stopped, so that its last save cannot come after this one).
    keeping.cancel();
    if let Some(kept) = kept {
        let _ = kept.await;
    }
    keeper::save(stages.registry.as_ref(), &store).await;
    // Requests the deadline cut have failed with their sessions (502): let
    // their connections answer and log them before the runtime goes.
    let _ = tokio::time::timeout(Duration::from_secs(1), drain.tasks.wait()).await;
    info!("stopped");
    Ok(())
}

/// The stages of one server, built from its configuration, and what
/// `serve` itself keeps to stop them in order.
struct Stages {
    edge: Edge,
    gateway: Arc<Gateway>,
    control: Arc<Control>,
    registry: Arc<dyn Registry>,
    metrics: Metrics,
    /// In a cluster: the cluster-wide list of tunnels.
    listing: Option<Arc<cluster::listing::Listing>>,
    /// Fires when sessions must close (after in-flight requests drained).
    sessions_stop: CancellationToken,
    /// Session tasks, the revocation watcher and access log lines, awaited
    /// on shutdown.
    tasks: TaskTracker,
}

impl Stages {
    /// `draining` fires when shutdown begins: from then on `/readyz`
    /// answers 503, new clients are refused and sessions are told the
    /// server is going away.
    fn build(
        config: &Arc<Config>,
        bound: &edge::Bound,
        keys: Arc<dyn store::Keys>,
        draining: CancellationToken,
        (joined, shared_ports): (
            Option<&cluster::Joined>,
            Option<Arc<cluster::ports::SharedPorts>>,
        ),
    ) -> Self {
        let mut metrics_registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::register(&mut metrics_registry);
        if let Some(joined) = joined {
            joined.metrics.register(&mut metrics_registry);
        }
        let registry: Arc<dyn Registry> = match joined {
            Some(joined) => joined.registry.clone(),
            None => Arc::new(registry::Local::new(
                config.reconnect_grace,
                config.max_held_names,
                config.max_holds_per_identity,
            )),
        };
        let listing = joined
            .zip(config.cluster.as_ref())
            .map(|(joined, cluster)| {
                Arc::new(cluster::listing::Listing::new(
                    joined.registry.shared().clone(),
                    joined.node.clone(),
                    Arc::clone(&registry),
                    cluster.secret.clone(),
                    joined.peers.clone(),
                ))
            });
        let sessions_stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let ip_limiter = config.rate_limits.per_ip.map(|rate| {
            let limits = &config.rate_limits;
            Arc::new(policy::IpLimiter::new(
                rate,
                limits.max_tracked_ips,
                limits.sweep_interval,
            ))
        });
        let totals = Arc::new(registry::Stats::default());
        let control = Arc::new(Control::new(control::Parts {
            config: Arc::clone(config),
            registry: Arc::clone(&registry),
            store: keys,
            metrics: metrics.clone(),
            listen_port: bound.public_port(),
            ports: ports::Ports::new(config.tcp_ports.clone(), bound.ip()),
            shared_ports,
            tasks: tasks.clone(),
            sessions_stop: sessions_stop.clone(),
            draining: draining.clone(),
        }));
        let ops = Ops::new(ops::Parts {
            config: Arc::clone(config),
            registry: Arc::clone(&registry),
            metrics: metrics.clone(),
            metrics_registry,
            ip_limiter: ip_limiter.clone(),
            totals: Arc::clone(&totals),
            draining,
            listing: listing.clone(),
            cluster: joined.map(|joined| Arc::clone(&joined.registry)),
        });
        let gateway = Arc::new(Gateway::new(gateway::Parts {
            config: Arc::clone(config),
            registry: Arc::clone(&registry),
            metrics: metrics.clone(),
            ip_limiter,
            redirect_to: bound.redirect_to(config),
            log: gateway::AccessLog::new(
                metrics.clone(),
                totals,
                tasks.clone(),
                config.access_sink.clone(),
            ),
            control: Arc::clone(&control),
            ops,
            hop: joined.map(|joined| Arc::clone(&joined.forwarder)),
        }));
        Stages {
            edge: Edge::new(config, metrics.clone()),
            gateway,
            control,
            registry,
            metrics,
            listing,
            sessions_stop,
            tasks,
        }
    }
}

/// Opens the server's database: in its data directory, or in memory when
/// it has none.
async fn open_store(config: &Config) -> io::Result<Store> {
    let dir = config.data_dir.clone();
    let opened = tokio::task::spawn_blocking(move || match dir {
        Some(dir) => Store::open(&dir),
        None => Store::in_memory(),
    })
    .await
    .map_err(io::Error::other)?;
    opened.map_err(|err| io::Error::other(format!("could not open the database: {err}")))
}
