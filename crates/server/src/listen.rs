//! The sockets and the connections they bring: the accept loop over the
//! plain and HTTPS listeners with its connection limit, each HTTPS
//! connection's TLS handshake (bounded by `tls_handshake_timeout`), and the
//! HTTP/1.1 serving of every connection, with each request head scanned for
//! ambiguous framing below hyper, and idle connections parked without
//! hyper ([`crate::park`]). A head hyper refuses itself is
//! counted here, as the gateway never sees it.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span, warn};

use crate::https::Transport;
use crate::metrics::Refused;
use crate::park::{Activity, Parkable, Tracked};
use crate::{Certs, Peer, State, gateway, hardening};

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

/// How long a connection stays quiet between requests before it is parked
/// ([`crate::park`]).
const PARK_AFTER: Duration = Duration::from_millis(500);

/// The HTTP/1.1 connection builder every connection shares.
type Http = http1::Builder;

/// The connections being served, and the signal asking them to finish:
/// in-flight requests complete, idle connections close.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    /// Cancelled when the server has stopped accepting.
    pub(crate) stop: CancellationToken,
    /// Every connection's task.
    pub(crate) tasks: TaskTracker,
}

/// Accepts connections on `plain` and `https` until `stop` resolves, each
/// served in its own task tracked by `drain`; at most `max_connections` at
/// once. The listeners close when it returns.
pub(crate) async fn accept_until(
    state: &Arc<State>,
    plain: Option<TcpListener>,
    https: Option<TcpListener>,
    acceptor: Option<TlsAcceptor>,
    drain: &Drain,
    stop: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(state.config.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(state.config.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_REQUEST_HEADERS)
        .keep_alive(true);
    let http = Arc::new(http);
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
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            state.metrics.refused("max_connections");
            warn!(%peer, "connection limit reached; dropping connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let task = connection(
            Arc::clone(state),
            Arc::clone(&http),
            // A token of its own: each wake-up of the connection checks it,
            // and one shared by all would be a lock they all take.
            drain.stop.child_token(),
            (stream, peer, tls),
            permit,
        );
        drain
            .tasks
            .spawn(task.instrument(info_span!("conn", %peer)));
    }
}

/// The next connection on `listener`, or never if there is none.
async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Serves one accepted connection, after its TLS handshake if it came in
/// on the HTTPS listener; holds its connection slot until it closes.
async fn connection(
    state: Arc<State>,
    http: Arc<Http>,
    stop: CancellationToken,
    (stream, peer, tls): (TcpStream, SocketAddr, Option<TlsAcceptor>),
    _permit: OwnedSemaphorePermit,
) {
    let Some(acceptor) = tls else {
        return serve_http(state, &http, stop, stream, peer, Transport::Plain).await;
    };
    let limit = state.config.tls_handshake_timeout;
    // Boxed: a parked plain connection's task need not have room for it.
    let handshake = Box::pin(tokio::time::timeout(limit, acceptor.accept(stream)));
    let stream = match handshake.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            state.metrics.tls_handshake_failed("error");
            return debug!(%err, "TLS handshake failed");
        }
        Err(_) => {
            state.metrics.tls_handshake_failed("timeout");
            return debug!(?limit, "TLS handshake timed out");
        }
    };
    let sni = stream.get_ref().1.server_name().map(Arc::from);
    // Boxed, like the handshake: the TLS session is several KiB that a
    // plain connection's task need not have room for.
    Box::pin(serve_http(
        state,
        &http,
        stop,
        stream,
        peer,
        Transport::Tls { sni },
    ))
    .await;
}

/// A visitor's socket, and the TCP socket under it whose readability
/// wakes it when parked.
trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn tcp(&self) -> &TcpStream;
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// A TLS connection parks like a plain one: hyper's last read returned
/// Pending, so rustls holds no decrypted bytes (tokio-rustls reads the
/// socket until it has plaintext or the socket would block), and a record
/// that arrives only in part waits in rustls for the rest, whose arrival
/// makes the socket readable.
impl Socket for TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// How a stint of hyper serving a connection ended.
enum Stint {
    /// The connection closed, failed or was upgraded.
    Ended(hyper::Result<()>),
    /// Idle between requests: the socket can be taken back.
    Quiet,
}

/// Serves HTTP/1.1 (with upgrades) on `io` until it closes, or until
/// `stop` once no request is in flight. Every request head is scanned for
/// ambiguous framing on the (decrypted) bytes before hyper parses it. A
/// connection idle between requests is parked without hyper until its next
/// bytes arrive: idle at most `header_read_timeout` in all, as long as
/// hyper itself waits for the next head. A head begun just before that
/// gets the fresh hyper connection's own `header_read_timeout`, so one
/// slow head may take up to twice that from the previous response.
async fn serve_http<I: Socket>(
    state: Arc<State>,
    http: &Http,
    stop: CancellationToken,
    io: I,
    peer: Peer,
    transport: Transport,
) {
    let idle_limit = state.config.header_read_timeout;
    let framing = Arc::new(hardening::framing::Verdicts::default());
    let io = hardening::framing::Guarded::new(io, Arc::clone(&framing), MAX_HEAD_BYTES);
    let conn = Arc::new(Conn {
        peer,
        transport,
        framing,
    });
    let activity = Arc::new(Activity::default());
    let mut io = Parkable::new(io, Arc::clone(&activity));
    // Boxed per request: hyper keeps the slot for a connection's service
    // future for as long as it serves the connection, sized (and, once a
    // request has been served, resident) as the whole future — 5 KiB for
    // `gateway::handle` (measured with `size_of_val`). Boxing keeps that
    // slot at a pointer, for a malloc, a copy of the future and a free per
    // request.
    let metrics = state.metrics.clone();
    let requests = Arc::clone(&activity);
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let req = req.map(|body| Tracked::new(body, requests.begin()));
        let busy = requests.begin();
        let handled = gateway::handle(Arc::clone(&state), Arc::clone(&conn), req);
        Box::pin(async move {
            let response = handled.await?;
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, busy)))
        })
    });
    loop {
        let seen = activity.finished();
        // Boxed, so that parking frees hyper's connection state whole.
        let mut serving = Box::new(
            http.serve_connection(TokioIo::new(io), service.clone())
                .with_upgrades(),
        );
        let mut stopping = std::pin::pin!(stop.cancelled());
        let mut stopped = false;
        // Quiet for PARK_AFTER: under load the next request follows at
        // once, and hyper's state is worth keeping for it.
        let mut settled = std::pin::pin!(tokio::time::sleep(PARK_AFTER));
        let mut settling = false;
        let stint = poll_fn(|cx| {
            if !stopped && stopping.as_mut().poll(cx).is_ready() {
                // In-flight requests finish; keep-alive ends with them.
                Pin::new(&mut *serving).graceful_shutdown();
                stopped = true;
            }
            if let Poll::Ready(ended) = Pin::new(&mut *serving).poll(cx) {
                return Poll::Ready(Stint::Ended(ended));
            }
            if stopped || !activity.quiet_since(seen) {
                settling = false;
                return Poll::Pending;
            }
            if !settling {
                settled
                    .as_mut()
                    .reset(tokio::time::Instant::now() + PARK_AFTER);
                settling = true;
            }
            settled.as_mut().poll(cx).map(|()| Stint::Quiet)
        })
        .await;
        if let Stint::Ended(ended) = stint {
            if let Err(err) = ended {
                if let Some(reason) = refused_by_hyper(&err) {
                    metrics.refused_request(reason);
                }
                debug!(%err, "connection ended with an error");
            }
            return;
        }
        let Some(parts) = serving.into_parts() else {
            return;
        };
        io = parts.io.into_inner();
        io.replay(parts.read_buf);
        if io.has_replay() {
            // The next request has begun arriving: serve it at once.
            continue;
        }
        let tcp = io.get_ref().get_ref().tcp();
        let woken = {
            let _parked = metrics.connection_parked();
            tokio::select! {
                readable = tcp.readable() => readable.is_ok(),
                // Quiet for PARK_AFTER already: together, as long as hyper
                // would have waited for the next head.
                () = tokio::time::sleep(idle_limit.saturating_sub(PARK_AFTER)) => {
                    debug!("idle keep-alive connection closed");
                    false
                }
                () = stop.cancelled() => false,
            }
        };
        if !woken {
            return;
        }
    }
}

/// The refusal behind a connection's error, if hyper refused a request head
/// itself (it has then answered 400, 414 or 431 and closed) before the
/// gateway saw it. A header read timeout is not one: hyper cannot tell a
/// slow head from an idle keep-alive connection.
fn refused_by_hyper(err: &hyper::Error) -> Option<Refused> {
    if err.is_parse_too_large() {
        // 431, or 414 for a URI over hyper's own cap (64 KiB, more than a
        // head may hold anyway).
        Some(Refused::HeadersTooLarge)
    } else if err.is_parse() {
        Some(Refused::Malformed)
    } else {
        None
    }
}

/// Who is on the other end of a connection, and how they came in.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    /// The visitor's or client's address.
    pub(crate) peer: Peer,
    /// Plain or TLS (with its SNI).
    pub(crate) transport: Transport,
    /// The framing verdicts on its request heads, one per request.
    pub(crate) framing: Arc<hardening::framing::Verdicts>,
}
