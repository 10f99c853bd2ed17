//! The edge: the sockets and the connections they bring. The listeners
//! ([`Listeners`], [`Bound`]), the accept loop with its connection limit,
//! and (in `conn`) each connection's TLS handshake and HTTP/1.1 serving.
//!
//! The edge knows nothing of tunnels: every request it reads goes to a
//! [`Handler`] (the gateway), with the [`Conn`] it came on.
//!
//! - `conn`: one connection, from its TLS handshake to its close; who is on
//!   the other end ([`Conn`], [`Transport`]).
//! - [`framing`]: the verdict on each request head's framing, scanned below
//!   hyper on the (decrypted) bytes.
//! - `park`: idle keep-alive connections held without hyper's buffers.
//! - `slots`: who may hold a connection (per address, slots kept for
//!   clients), and what a refused connection is told.
//! - `proxy_protocol`: with `--proxy-protocol`, the PROXY protocol header
//!   a trusted L4 balancer sends first, naming the visitor.
//! - [`tls`]: the certificates and the TLS acceptor.

mod conn;
pub mod framing;
pub mod h2;
mod hello;
mod park;
mod proxy_protocol;
mod slots;
pub mod tls;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

pub(crate) use conn::{Conn, Handler, Held, PassThrough, Passing, Transport};
pub(crate) use park::VisitorBody;
use proxy_protocol::ProxyProtocol;
use slots::{Refusals, Slots};

use crate::config::Config;
use crate::metrics::Metrics;
use tls::Certs;

/// The address a connection came from.
pub(crate) type Peer = SocketAddr;

/// Limits on the visitor-facing HTTP/1 parser: over them, 431.
const MAX_HEAD_BYTES: usize = 64 << 10;
const MAX_REQUEST_HEADERS: usize = 100;

/// The sockets a server answers on.
#[derive(Debug, Default)]
pub struct Listeners {
    /// Plain HTTP. With `Config::redirect_http` it only redirects to HTTPS.
    pub http: Option<TcpListener>,
    /// HTTPS.
    pub https: Option<TlsListener>,
}

/// A listener for HTTPS and the certificate it presents.
#[derive(Debug)]
pub struct TlsListener {
    /// Where TLS connections arrive.
    pub listener: TcpListener,
    /// What they are served with; reload it to change the certificate.
    pub certs: Certs,
}

/// The listeners, ready to accept: the HTTPS one with its acceptor.
pub(crate) struct Bound {
    plain: Option<TcpListener>,
    https: Option<TcpListener>,
    acceptor: Option<TlsAcceptor>,
    /// The port public URLs use unless the configuration says otherwise:
    /// the HTTPS listener's if there is one, else the plain listener's.
    port: u16,
}

impl Bound {
    /// Readies `listeners`; at least one is needed.
    pub(crate) fn new(listeners: Listeners) -> io::Result<Self> {
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
        let port = public.local_addr()?.port();
        Ok(Bound {
            plain,
            https,
            acceptor,
            port,
        })
    }

    /// The internal hop's listener: plain, or TLS with `acceptor`.
    pub(crate) fn for_peers(
        listener: TcpListener,
        acceptor: Option<TlsAcceptor>,
    ) -> io::Result<Self> {
        let port = listener.local_addr()?.port();
        let (plain, https) = match acceptor {
            Some(_) => (None, Some(listener)),
            None => (Some(listener), None),
        };
        Ok(Bound {
            plain,
            https,
            acceptor,
            port,
        })
    }

    /// What the listeners settle in `config`: with HTTPS, public URLs are
    /// `https://`; `redirect_http` needs an HTTPS listener to send to.
    pub(crate) fn settle(&self, mut config: Config) -> io::Result<Config> {
        if self.https.is_some() {
            config.public_scheme = "https".into();
        } else if config.redirect_http {
            return Err(invalid("redirect_http needs an HTTPS listener"));
        }
        Ok(config)
    }

    /// The port public URLs name when the configuration does not.
    pub(crate) fn public_port(&self) -> u16 {
        self.port
    }

    /// The address the listeners are bound on (TCP tunnels' ports are
    /// bound on it too).
    pub(crate) fn ip(&self) -> std::net::IpAddr {
        [&self.plain, &self.https]
            .into_iter()
            .flatten()
            .find_map(|l| l.local_addr().ok())
            .map_or(std::net::Ipv4Addr::LOCALHOST.into(), |a| a.ip())
    }

    /// With `redirect_http`: the HTTPS port plain requests are sent to.
    pub(crate) fn redirect_to(&self, config: &Config) -> Option<u16> {
        (config.redirect_http && self.https.is_some())
            .then(|| config.public_port.unwrap_or(self.port))
    }

    /// Says where the server listens, and where its dashboard is.
    pub(crate) fn log_listening(&self, domain: &str) {
        for (listener, scheme) in [(&self.plain, "http"), (&self.https, "https")] {
            if let Some(addr) = listener.as_ref().and_then(|l| l.local_addr().ok()) {
                // Bound to every address: the name that reaches it from this
                // machine, which the admin routes accept without a token.
                let dashboard = if addr.ip().is_unspecified() {
                    format!("{scheme}://localhost:{}/dashboard", addr.port())
                } else {
                    format!("{scheme}://{addr}/dashboard")
                };
                info!(%addr, %scheme, %domain, %dashboard, "listening");
            }
        }
    }
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, why.to_owned())
}

/// The connections being served, and the signal asking them to finish:
/// in-flight requests complete, idle connections close.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    /// Cancelled when the server has stopped accepting.
    pub(crate) stop: CancellationToken,
    /// Every connection's task.
    pub(crate) tasks: TaskTracker,
}

/// The accept loop and what each connection is served with.
pub(crate) struct Edge {
    slots: Arc<Slots>,
    refusals: Arc<Refusals>,
    /// With `--proxy-protocol`: the headers connections begin with.
    proxy: Option<Arc<ProxyProtocol>>,
    tls_handshake_timeout: Duration,
    /// Also how long a connection may stay idle between requests.
    header_read_timeout: Duration,
    metrics: Metrics,
    /// The internal hop's edge ([`Edge::for_peers`]).
    peers: bool,
    /// HTTP/2's limits.
    h2: h2::Limits,
    /// `--h2c`: HTTP/2 with prior knowledge on the plain listener.
    h2c: bool,
}

impl Edge {
    /// The edge of a server configured by `config`.
    pub(crate) fn new(config: &Config, metrics: Metrics) -> Self {
        let slots = Slots::new(
            config.max_connections,
            config.max_connections_per_ip,
            config.trusted_proxies.clone(),
        );
        let refusals = Arc::new(Refusals::new(metrics.clone()));
        let proxy = config.proxy_protocol.then(|| {
            Arc::new(ProxyProtocol::new(
                config.trusted_proxies.clone(),
                Arc::clone(&slots),
                Arc::clone(&refusals),
            ))
        });
        Edge {
            slots,
            refusals,
            proxy,
            tls_handshake_timeout: config.tls_handshake_timeout,
            header_read_timeout: config.header_read_timeout,
            metrics,
            peers: false,
            h2: config.h2,
            h2c: config.h2c,
        }
    }

    /// The edge of a cluster's internal listener: its peers are the other
    /// nodes, few addresses with many connections, so no address is held
    /// to less than the whole; they dial it directly, without a balancer's
    /// PROXY protocol header, and name the visitor themselves.
    pub(crate) fn for_peers(config: &Config, metrics: Metrics) -> Self {
        Edge {
            slots: Slots::new(config.max_connections, config.max_connections, Vec::new()),
            proxy: None,
            peers: true,
            h2c: false,
            ..Edge::new(config, metrics)
        }
    }

    /// Accepts connections on `bound` until `stop` resolves, each served in
    /// its own task tracked by `drain`, its requests handed to `handler`;
    /// each needs a slot (`slots`). The listeners close when it returns.
    pub(crate) async fn accept_until<H: Handler>(
        &self,
        bound: Bound,
        handler: Arc<H>,
        drain: &Drain,
        stop: impl Future<Output = ()>,
    ) {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(MAX_HEAD_BYTES)
            .max_headers(MAX_REQUEST_HEADERS)
            .keep_alive(true);
        let serving = Arc::new(conn::Serving {
            http,
            h2: h2::builder(self.h2),
            h2c: self.h2c,
            handler,
            metrics: self.metrics.clone(),
            tls_handshake_timeout: self.tls_handshake_timeout,
            proxy: self.proxy.clone(),
            idle_limit: self.header_read_timeout,
            max_head_bytes: MAX_HEAD_BYTES,
            peers: self.peers,
        });
        let Bound {
            plain,
            https,
            acceptor,
            ..
        } = bound;
        tokio::pin!(stop);
        loop {
            let (accepted, tls) = tokio::select! {
                () = &mut stop => break,
                accepted = accept(plain.as_ref()) => (accepted, None),
                accepted = accept(https.as_ref()) => (accepted, acceptor.clone()),
            };
            let (stream, peer) = match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // Out of file descriptors and the like: back off briefly
                    // rather than spin; the listener itself is fine.
                    warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let slot = match self.slots.admit(peer) {
                Ok(slot) => slot,
                Err(refusal) => {
                    self.refusals.refuse(stream, peer, refusal, tls.is_none());
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let task = conn::connection(
                Arc::clone(&serving),
                // A token of its own: each wake-up of the connection checks
                // it, and one shared by all would be a lock they all take.
                drain.stop.child_token(),
                (stream, peer, tls),
                slot,
            );
            drain
                .tasks
                .spawn(task.instrument(info_span!("conn", %peer)));
        }
    }
}

/// The next connection on `listener`, or never if there is none.
async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}
