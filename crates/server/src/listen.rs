//! The sockets and the connections they bring: the accept loop over the
//! plain and HTTPS listeners with its connection limit, each HTTPS
//! connection's TLS handshake (bounded by `tls_handshake_timeout`), and the
//! HTTP/1.1 serving of every connection, with each request head scanned for
//! ambiguous framing below hyper. A head hyper refuses itself is counted
//! here, as the gateway never sees it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info_span, warn};

use crate::https::Transport;
use crate::metrics::Refused;
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

/// The HTTP/1.1 connection builder every connection shares.
type Http = auto::Builder<TokioExecutor>;

/// Accepts connections on `plain` and `https` until `stop` resolves, each
/// served in its own task watched by `graceful`; at most `max_connections`
/// at once. The listeners close when it returns.
pub(crate) async fn accept_until(
    state: &Arc<State>,
    plain: Option<TcpListener>,
    https: Option<TcpListener>,
    acceptor: Option<TlsAcceptor>,
    graceful: &GracefulShutdown,
    stop: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(state.config.max_connections));
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.config.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_REQUEST_HEADERS)
        .keep_alive(true);
    let http = Arc::new(http.http1_only());
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
            graceful.watcher(),
            (stream, peer, tls),
            permit,
        );
        tokio::spawn(task.instrument(info_span!("conn", %peer)));
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
    watcher: Watcher,
    (stream, peer, tls): (TcpStream, SocketAddr, Option<TlsAcceptor>),
    _permit: OwnedSemaphorePermit,
) {
    let Some(acceptor) = tls else {
        return serve_http(state, &http, watcher, stream, peer, Transport::Plain).await;
    };
    let limit = state.config.tls_handshake_timeout;
    let stream = match tokio::time::timeout(limit, acceptor.accept(stream)).await {
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
    serve_http(state, &http, watcher, stream, peer, Transport::Tls { sni }).await;
}

/// Serves HTTP/1.1 (with upgrades) on `io` until it closes. Every request
/// head is scanned for ambiguous framing on the (decrypted) bytes before
/// hyper parses it.
async fn serve_http<I>(
    state: Arc<State>,
    http: &Http,
    watcher: Watcher,
    io: I,
    peer: Peer,
    transport: Transport,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let framing = Arc::new(hardening::framing::Verdicts::default());
    // The scan must see every head hyper accepts whole: a little over
    // hyper's own limit.
    let io = hardening::framing::Guarded::new(io, Arc::clone(&framing), MAX_HEAD_BYTES + 1024);
    let conn = Arc::new(Conn {
        peer,
        transport,
        framing,
    });
    // Boxed per request: hyper keeps the slot for a connection's service
    // future for as long as the connection lives, sized (and, once a
    // request has been served, resident) as the whole future — some 20 KiB
    // for `gateway::handle`. Boxing keeps that slot at a pointer, so an
    // idle keep-alive connection costs a few KiB, for a malloc and a free
    // per request.
    let metrics = state.metrics.clone();
    let service = service_fn(move |req| {
        Box::pin(gateway::handle(Arc::clone(&state), Arc::clone(&conn), req))
    });
    let serving = http.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(err) = watcher.watch(serving.into_owned()).await {
        if let Some(reason) = err
            .downcast_ref::<hyper::Error>()
            .and_then(refused_by_hyper)
        {
            metrics.refused_request(reason);
        }
        debug!(%err, "connection ended with an error");
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
