//! TCP and TLS tunnels' visitor connections: each one accepted at a TCP
//! tunnel's port ([`Port`]), or handed over by the HTTPS listener for a
//! TLS tunnel's name ([`admit`]), becomes a raw stream to the tunnel's
//! client (an OPEN frame naming the tunnel and the visitor, then each
//! direction's bytes with the stream's credit), until both directions end.
//!
//! A direction ends with its side's FIN, carried as END: a visitor that
//! shuts down its writing half still gets the local service's answer, and
//! the other way round. A reset of the stream (the client could not reach
//! its local service, or the session closed) closes the visitor's
//! connection. Visitors outside the tunnel's `allow_ips`/`deny_ips` are
//! closed at once; so are those past the tunnel's connection cap, or
//! beyond its session's streams.
//!
//! A single server's port is accepted on by a loop that finds its tunnel by
//! name each time ([`Carrier`]), so that a pool's members share it: each
//! member's [`Relay`] holds the loop's guard, and when the last of them
//! leaves the registry (its session ended) the guard fires, the port stops
//! accepting and is held for the name; connections already open end with
//! their sessions' streams.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cryptun_proto::ResponseHead;
use cryptun_proto::mux::{Mux, relay};
use cryptun_proto::raw::OpenStream;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{Instrument, debug, debug_span, info};

use super::Lease;
use super::carrier::Carrier;
use crate::cluster::ports::PortClaim;
use crate::metrics::Metrics;
use crate::registry::{Stats, Tunnel};
use cryptun_proto::counted::{Counted, Tally};

/// Most connections open at once through one TCP tunnel, unless set.
pub(crate) const MAX_CONNECTIONS: usize = 256;

/// How long a TCP tunnel's connection may pass no byte either way before
/// it is closed, unless set.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// What a TCP or TLS tunnel carries its connections with; kept in its
/// [`Tunnel`].
#[derive(Debug)]
pub struct Relay {
    /// A TCP tunnel's public port.
    pub port: Option<u16>,
    /// Its connections' places: one per open connection, at most the cap.
    connections: Arc<Semaphore>,
    /// What lives as long as the tunnel.
    _keep: Keep,
}

/// What a [`Relay`] keeps for its tunnel's port.
#[derive(Debug, Clone)]
pub(crate) enum Keep {
    /// Nothing (a TLS tunnel).
    Nothing,
    /// A single server's port: stops its accept loop when the last of its
    /// tunnels (a pool's members share it) is dropped; the flag says
    /// whether the port is then held for the name (the last to leave
    /// decides: a tunnel closed on purpose leaves it free).
    Stop(
        #[expect(dead_code, reason = "kept for what its drop does")] Arc<DropGuard>,
        Arc<AtomicBool>,
    ),
    /// A cluster's port: its claim, held for the name when dropped.
    Claim(Arc<PortClaim>),
}

impl Relay {
    /// A TLS passthrough tunnel's: connections come from the HTTPS
    /// listener, at most `connections` at once.
    pub(crate) fn passthrough(connections: usize) -> Self {
        Relay {
            port: None,
            connections: Arc::new(Semaphore::new(connections)),
            _keep: Keep::Nothing,
        }
    }

    /// The tunnel was registered: its cluster port is held for its name
    /// once it ends.
    pub(crate) fn registered(&self) {
        if let Keep::Claim(claim) = &self._keep {
            claim.hold_after();
        }
    }

    /// The tunnel leaves the registry: its port is to be held for its name
    /// (`hold`: its client may come back) or freed (closed on purpose),
    /// once no other tunnel shares it.
    pub(crate) fn left(&self, hold: bool) {
        match &self._keep {
            Keep::Stop(_, held) => held.store(hold, Ordering::Relaxed),
            Keep::Claim(claim) if !hold => claim.free_after(),
            Keep::Claim(_) | Keep::Nothing => {}
        }
    }

    /// Its port, for another member of its tunnel's pool to share.
    pub(crate) fn share(&self) -> Option<Port> {
        let number = self.port?;
        Some(Port::Joined(number, self._keep.clone()))
    }
}

/// A TCP tunnel's port.
pub(crate) enum Port {
    /// A single server's, with its own listener.
    Own(TcpListener, Lease),
    /// A cluster's, claimed cluster-wide and served by every node's
    /// listeners (`crate::cluster::ports`).
    Claimed(PortClaim),
    /// Another member's of the same pool: served as it is.
    Joined(u16, Keep),
}

/// A single server's port, ready to accept once its tunnel is registered.
pub(crate) struct Accepting {
    listener: TcpListener,
    lease: Lease,
    stop: CancellationToken,
    /// Whether the port is held for the name once it stops.
    hold: Arc<AtomicBool>,
}

impl Port {
    /// The public port.
    pub(crate) fn number(&self) -> u16 {
        match self {
            Port::Own(_, lease) => lease.port(),
            Port::Claimed(claim) => claim.port(),
            Port::Joined(number, _) => *number,
        }
    }

    /// The relay its tunnel keeps, with at most `connections` at once,
    /// and for a port of its own the loop that accepts there once the
    /// tunnel is registered (a try that fails drops its tunnel, and with
    /// it the relay, which stops the loop before it starts).
    pub(crate) fn into_relay(self, connections: usize) -> (Relay, Option<Accepting>) {
        let port = Some(self.number());
        let connections = Arc::new(Semaphore::new(connections));
        let (keep, accepting) = match self {
            Port::Own(listener, lease) => {
                let stop = CancellationToken::new();
                let hold = Arc::new(AtomicBool::new(true));
                let keep = Keep::Stop(Arc::new(stop.clone().drop_guard()), Arc::clone(&hold));
                let accepting = Accepting {
                    listener,
                    lease,
                    stop,
                    hold,
                };
                (keep, Some(accepting))
            }
            Port::Claimed(claim) => (Keep::Claim(Arc::new(claim)), None),
            Port::Joined(_, keep) => (keep, None),
        };
        let relay = Relay {
            port,
            connections,
            _keep: keep,
        };
        (relay, accepting)
    }
}

impl Accepting {
    /// Accepts visitors for the tunnel `name` (one tunnel, or a pool's
    /// members) with `carrier` until every tunnel that shares the port is
    /// gone; then the port is held for the name for `grace`.
    pub(crate) fn spawn(mut self, name: &str, carrier: Carrier, grace: Duration) {
        self.lease.hold_after(name, grace);
        let span = debug_span!("tcp", port = self.lease.port(), subdomain = %name);
        tokio::spawn(self.serve(name.to_owned(), carrier).instrument(span));
    }

    async fn serve(mut self, name: String, carrier: Carrier) {
        let port = self.lease.port();
        super::accept_until(&self.listener, &self.stop, |stream, visitor| {
            let (name, carrier) = (name.clone(), carrier.clone());
            tokio::spawn(
                async move { carrier.carry_tcp((name, port), (stream, visitor)).await }
                    .instrument(debug_span!("visitor", %visitor)),
            );
        })
        .await;
        if !self.hold.load(Ordering::Relaxed) {
            self.lease.hold_after(&name, Duration::ZERO);
        }
        debug!("TCP tunnel's port closed");
    }
}

/// A visitor's connection to `tunnel` (at a TCP tunnel's port, or with a
/// TLS tunnel's name as its SNI; here, or at another node of a cluster
/// that carried it over the hop), as its two halves: within the tunnel's
/// address rules and connection cap, carried over a new raw stream with
/// `first` (a TLS ClientHello already read) ahead of what is read from it,
/// `held` (the edge's slot for it) kept until it ends; else closed.
pub(crate) fn admit<R, W>(
    tunnel: &Tunnel,
    (reader, writer, visitor): (R, W, SocketAddr),
    (first, held): (Bytes, Box<dyn std::any::Any + Send>),
    (metrics, idle): (&Metrics, Duration),
) where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    if let Err(err) = tunnel.access.check_ip(visitor.ip()) {
        debug!(%visitor, %err, "visitor refused");
        return metrics.tcp_connection("refused_ip");
    }
    let Some(relay) = &tunnel.relay else {
        return metrics.tcp_connection("no_stream");
    };
    let Ok(permit) = Arc::clone(&relay.connections).try_acquire_owned() else {
        debug!(%visitor, "connection cap reached: visitor refused");
        return metrics.tcp_connection("refused_cap");
    };
    let mux = tunnel.mux.clone();
    let open = OpenStream {
        tunnel_id: tunnel.id.clone(),
        visitor,
    };
    let stats = Arc::clone(&tunnel.stats);
    let metrics = metrics.clone();
    tokio::spawn(
        async move {
            let _open = metrics.tcp_open();
            let outcome = carry(
                (reader, writer, first),
                &mux,
                open,
                (&stats, &metrics),
                idle,
            )
            .await;
            metrics.tcp_connection(outcome);
            drop((permit, held));
        }
        .instrument(debug_span!("visitor", %visitor)),
    );
}

/// Carries one visitor connection over a new raw stream of `mux`, `first`
/// ahead of what is read from it; how it ended, as
/// [`Metrics::tcp_connection`] counts it.
async fn carry<R, W>(
    (reader, writer, first): (R, W, Bytes),
    mux: &Mux<ResponseHead>,
    open: OpenStream,
    (stats, metrics): (&Stats, &Metrics),
    idle: Duration,
) -> &'static str
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let visitor: SocketAddr = open.visitor;
    let raw = match mux.open_raw() {
        Ok(raw) => raw,
        Err(err) => {
            debug!(%err, "no stream for the visitor: closed");
            return "no_stream";
        }
    };
    let id = raw.id;
    let mut send = raw.send;
    if send.send_frame(open.encode(id)).await.is_err() {
        return "no_stream";
    }
    let ahead = first.len() as u64;
    if !first.is_empty() && send.send(first, false).await.is_err() {
        return "cut";
    }
    let started = std::time::Instant::now();
    let activity = Arc::new(Activity::default());
    let reader = Counted::new(reader, Tallied(Arc::clone(&activity)));
    let writer = Counted::new(writer, Tallied(Arc::clone(&activity)));
    let outcome = tokio::select! {
        relayed = relay(reader, writer, send, raw.recv) => match relayed {
            Ok(_) => {
                debug!("connection ended");
                "closed"
            }
            // The stream is gone (reset, session closed) or a socket
            // failed: the visitor's connection closes with it.
            Err(err) => {
                debug!(%err, "connection cut");
                mux.reset(id);
                "cut"
            }
        },
        () = activity.idle_for(idle) => {
            debug!(?idle, "idle connection closed");
            mux.reset(id);
            "idle"
        }
    };
    let (bytes_in, bytes_out) = activity.totals();
    let bytes_in = bytes_in + ahead;
    stats.add_in(bytes_in);
    stats.add_out(bytes_out);
    metrics.tcp_carried(bytes_in, bytes_out);
    info!(
        target: "cryptun::tcp",
        %visitor, bytes_in, bytes_out,
        duration_ms = started.elapsed().as_millis() as u64,
        outcome,
        "tcp connection"
    );
    outcome
}

/// Bytes each way, and when the last one passed.
#[derive(Debug, Default)]
struct Activity {
    bytes_in: std::sync::atomic::AtomicU64,
    bytes_out: std::sync::atomic::AtomicU64,
    /// Milliseconds since `EPOCH` at the last byte.
    last: std::sync::atomic::AtomicU64,
}

/// The clock [`Activity::last`] counts from.
static EPOCH: std::sync::LazyLock<tokio::time::Instant> =
    std::sync::LazyLock::new(tokio::time::Instant::now);

impl Activity {
    fn touch(&self) {
        let now = EPOCH.elapsed().as_millis() as u64;
        self.last.store(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// Resolves once no byte has passed for `idle`.
    async fn idle_for(&self, idle: Duration) {
        self.touch();
        loop {
            let last = Duration::from_millis(self.last.load(std::sync::atomic::Ordering::Relaxed));
            let deadline = *EPOCH + last + idle;
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    fn totals(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.bytes_in.load(Relaxed), self.bytes_out.load(Relaxed))
    }
}

/// A connection's [`Activity`], as its halves tally their bytes.
struct Tallied(Arc<Activity>);

impl Tally for Tallied {
    fn add_in(&self, n: u64) {
        self.0
            .bytes_in
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        self.0.touch();
    }

    fn add_out(&self, n: u64) {
        self.0
            .bytes_out
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        self.0.touch();
    }
}
