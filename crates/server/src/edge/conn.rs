//! One connection, from accept to close: with `--proxy-protocol` its PROXY
//! protocol header ([`super::proxy_protocol`]), its ClientHello (whose SNI
//! may hand it to a TLS passthrough tunnel, [`super::hello`]) and TLS
//! handshake (together bounded by `tls_handshake_timeout`) if it came in on
//! the HTTPS listener, then
//! HTTP/1.1 in stints of hyper serving it, each request head scanned for
//! ambiguous framing below hyper, and the connection parked without hyper
//! ([`super::park`]) whenever it is idle between requests. A head hyper
//! refuses itself is counted here, as the gateway never sees it.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::server::conn::http1::{self, Parts};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Peer;
use super::framing::{Guarded, Verdicts};
use super::hello::{self, Rewind};
use super::park::{Activity, Parkable, Tracked, VisitorBody};
use super::proxy_protocol::{Arrival, ProxyProtocol};
use super::slots::{KEPT_FOR, Slot};
use crate::body::Body;
use crate::metrics::{Metrics, Refused};

/// How long a connection stays quiet between requests before it is parked
/// ([`super::park`]).
const PARK_AFTER: Duration = Duration::from_millis(500);

/// What the edge hands each request to, with the connection it came on.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Answers `req`; every failure is an answer too.
    fn handle(
        self: Arc<Self>,
        conn: Arc<Conn>,
        req: Request<VisitorBody>,
    ) -> impl Future<Output = Response<Body>> + Send + 'static;

    /// Whether a TLS connection from `visitor` whose ClientHello asks for
    /// `sni` is carried elsewhere undecrypted (a TLS passthrough tunnel):
    /// if so, what takes it, with the ClientHello's bytes and what the
    /// edge holds for the connection (its slot) until it ends. By default
    /// every one is terminated here.
    fn pass_through(&self, _sni: &str, _visitor: SocketAddr) -> Passing {
        Passing::Terminate
    }
}

/// Whether a TLS connection is passed through, as
/// [`Handler::pass_through`] answers.
pub(crate) enum Passing {
    /// Terminated here.
    Terminate,
    /// Taken by this.
    Take(PassThrough),
    /// Not known without asking elsewhere (a cluster's store): the answer,
    /// once there (`None`: terminated here).
    Ask(Pin<Box<dyn Future<Output = Option<PassThrough>> + Send>>),
}

/// What takes a passed-through TLS connection: the TCP stream, the bytes
/// of its ClientHello already read, and what is to be held as long as it
/// is carried.
pub(crate) type PassThrough = Box<dyn FnOnce(TcpStream, Bytes, Held) + Send>;

/// What the edge holds for a connection (its slot), handed on with it.
pub(crate) type Held = Box<dyn std::any::Any + Send>;

/// Who is on the other end of a connection, and how they came in.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    /// The visitor's or client's address: with `--proxy-protocol`, the one
    /// a trusted proxy's header carried.
    pub(crate) peer: Peer,
    /// `peer` is a PROXY protocol header's: a proxy's claim, which (like
    /// `X-Forwarded-For`) never makes the request this machine's own.
    pub(crate) relayed: bool,
    /// Plain or TLS (with its SNI).
    pub(crate) transport: Transport,
    /// The framing verdicts on its request heads, one per request.
    pub(crate) framing: Arc<Verdicts>,
    /// It holds one of the slots kept for clients: it may only ask for
    /// `GET /ws` (see `slots`).
    pub(crate) clients_only: bool,
}

/// How a connection reached the server.
#[derive(Debug, Clone)]
pub(crate) enum Transport {
    /// Plain HTTP.
    Plain,
    /// HTTPS, with the server name the client's handshake asked for.
    Tls {
        /// The SNI, if the client sent one (clients send none for an IP).
        sni: Option<Arc<str>>,
    },
    /// Another node of the cluster, on the internal hop (plain or TLS):
    /// its requests are visitors' as the first node received them, already
    /// redirected or checked against their SNI there.
    Hop,
}

impl Transport {
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub(crate) fn scheme(&self) -> &'static str {
        match self {
            Transport::Plain | Transport::Hop => "http",
            Transport::Tls { .. } => "https",
        }
    }
}

/// What every connection of one accept loop is served with.
pub(super) struct Serving<H> {
    pub(super) http: http1::Builder,
    /// HTTP/2, for TLS connections whose ALPN chose it (and with `h2c`
    /// plain ones opening with its preface).
    pub(super) h2: hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor>,
    /// `--h2c`: plain connections may speak HTTP/2 with prior knowledge.
    pub(super) h2c: bool,
    pub(super) handler: Arc<H>,
    pub(super) metrics: Metrics,
    pub(super) tls_handshake_timeout: Duration,
    /// With `--proxy-protocol`: the header each connection begins with.
    pub(super) proxy: Option<Arc<ProxyProtocol>>,
    /// How long a connection may stay idle between requests.
    pub(super) idle_limit: Duration,
    /// The internal hop's listener: its connections are [`Transport::Hop`].
    pub(super) peers: bool,
    pub(super) max_head_bytes: usize,
}

/// Serves one accepted connection, after its TLS handshake if it came in
/// on the HTTPS listener; holds its connection slot until it closes.
///
/// The future is the connection's task, all of it allocated for as long as
/// the connection lives, parked or not; so it is built by plain functions,
/// not `async fn`s: an `async fn` holds its arguments twice (as passed, and
/// moved into its body), and a value moved out of one of its locals keeps
/// its place. What only some connections need (the PROXY header, TLS, the
/// timer of a slot kept for clients) is boxed, so that a plain connection's
/// task has no room for it. A parked plain connection's heap went from
/// 3.0 to 2.0 KB with this, an HTTPS one's from 12.3 to 10.2 KB
/// (`testkit/tests/idle_memory.rs`).
pub(super) fn connection<H: Handler>(
    serving: Arc<Serving<H>>,
    stop: CancellationToken,
    (stream, peer, tls): (TcpStream, SocketAddr, Option<TlsAcceptor>),
    slot: Slot,
) -> impl Future<Output = ()> + Send + 'static {
    let clients_only = slot.clients_only;
    let at = Accepted {
        peer,
        relayed: false,
        clients_only,
        slot,
    };
    let served = serve(serving, stop, stream, at, tls);
    if clients_only {
        // A slot kept for clients is for asking `/ws` at once: an upgrade
        // ends the connection well within this.
        return Either::Left(Box::pin(async move {
            if tokio::time::timeout(KEPT_FOR, served).await.is_err() {
                debug!("a connection on a slot kept for clients took too long");
            }
        }));
    }
    Either::Right(served)
}

/// Serves `stream` after its PROXY protocol header if it is to have one,
/// and after its TLS handshake if `tls` (an HTTPS listener's connection).
fn serve<H: Handler>(
    serving: Arc<Serving<H>>,
    stop: CancellationToken,
    stream: TcpStream,
    at: Accepted,
    tls: Option<TlsAcceptor>,
) -> impl Future<Output = ()> + Send + 'static {
    if serving.proxy.is_none() && tls.is_none() && !serving.h2c {
        let transport = plain_transport(&serving);
        return Either::Left(serve_http(serving, stop, stream, at, transport));
    }
    Either::Right(Box::pin(arrive_then_serve(serving, stop, stream, at, tls)))
}

/// [`serve`] for a connection that begins with a PROXY protocol header or
/// a TLS handshake, or both: the two together bounded by
/// `tls_handshake_timeout`.
async fn arrive_then_serve<H: Handler>(
    serving: Arc<Serving<H>>,
    stop: CancellationToken,
    stream: TcpStream,
    mut at: Accepted,
    tls: Option<TlsAcceptor>,
) {
    let deadline = tokio::time::Instant::now() + serving.tls_handshake_timeout;
    let stream = match &serving.proxy {
        Some(proxy) => {
            let plain = tls.is_none();
            // Boxed, like the handshake: freed once the header is read.
            let arrived = Box::pin(proxy.arrive(stream, at.peer, &mut at.slot, plain, deadline));
            match arrived.await {
                Some((stream, Arrival::Direct)) => stream,
                Some((stream, Arrival::Relayed(visitor))) => {
                    at.peer = visitor;
                    at.relayed = true;
                    stream
                }
                None => return,
            }
        }
        None => stream,
    };
    let Some(acceptor) = tls else {
        let transport = plain_transport(&serving);
        if !serving.h2c {
            return serve_http(serving, stop, stream, at, transport).await;
        }
        // With --h2c: HTTP/2 if it opens with the preface, else HTTP/1.1
        // from its first byte (read again).
        let mut stream = stream;
        let sniffed = Box::pin(tokio::time::timeout_at(deadline, sniff(&mut stream)));
        let Ok(Ok((start, h2))) = sniffed.await else {
            return debug!("no request began in time");
        };
        let stream = Rewind::new(start, stream);
        if h2 {
            return Box::pin(serve_h2(&serving, &stop, stream, at, transport)).await;
        }
        return serve_http(serving, stop, stream, at, transport).await;
    };
    // The ClientHello first: its SNI may name a TLS passthrough tunnel.
    // Boxed, like the handshake: rustls's Acceptor is 1.3 KB, which every
    // HTTPS connection's task would otherwise keep room for as long as the
    // connection lives.
    let mut stream = stream;
    let reading = Box::pin(tokio::time::timeout_at(deadline, hello::read(&mut stream)));
    let (sni, hello) = match reading.await {
        Ok(Ok(read)) => read,
        Ok(Err(err)) => {
            serving.metrics.tls_handshake_failed("error");
            return debug!(%err, "TLS handshake failed");
        }
        Err(_) => {
            serving.metrics.tls_handshake_failed("timeout");
            let limit = serving.tls_handshake_timeout;
            return debug!(?limit, "TLS handshake timed out");
        }
    };
    let passing = sni.as_deref().map_or(Passing::Terminate, |sni| {
        serving.handler.pass_through(sni, at.peer)
    });
    let passed = match passing {
        Passing::Terminate => None,
        Passing::Take(take) => Some(take),
        // Within the handshake's time, like the rest of it.
        Passing::Ask(asking) => tokio::time::timeout_at(deadline, asking)
            .await
            .ok()
            .flatten(),
    };
    if let Some(take) = passed {
        return take(stream, hello, Box::new(at));
    }
    let stream = Rewind::new(hello, stream);
    let Some(stream) = Box::pin(handshake(&serving, acceptor, stream, deadline)).await else {
        return;
    };
    let transport = if serving.peers {
        Transport::Hop
    } else {
        let sni = stream.get_ref().1.server_name().map(Arc::from);
        Transport::Tls { sni }
    };
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        return Box::pin(serve_h2(&serving, &stop, stream, at, transport)).await;
    }
    serve_http(serving, stop, stream, at, transport).await;
}

/// Serves `io` as HTTP/2, holding the connection's slot until it closes.
async fn serve_h2<H: Handler, I>(
    serving: &Serving<H>,
    stop: &CancellationToken,
    io: I,
    at: Accepted,
    transport: Transport,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _slot = at.slot;
    let conn = Conn {
        peer: at.peer,
        relayed: at.relayed,
        transport,
        framing: Arc::new(super::framing::Verdicts::unscanned()),
        // On a slot kept for clients only `/ws` is served, and that is
        // never HTTP/2's (no extended CONNECT): every request is refused.
        clients_only: at.clients_only,
    };
    super::h2::serve(
        (&serving.h2, &serving.handler),
        io,
        conn,
        (serving.idle_limit, stop),
    )
    .await;
}

/// Reads the first bytes of a plain connection until they are HTTP/2's
/// whole preface or cannot be (at their first byte that differs); the
/// bytes read, and whether it is the preface. A connection closed first
/// is an error.
async fn sniff(stream: &mut TcpStream) -> std::io::Result<(Bytes, bool)> {
    use tokio::io::AsyncReadExt;
    let mut start = Vec::with_capacity(super::h2::PREFACE.len());
    while start.len() < super::h2::PREFACE.len() && super::h2::may_be_preface(&start) {
        let mut byte = [0; 24];
        let want = super::h2::PREFACE.len() - start.len();
        let n = stream.read(&mut byte[..want]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        start.extend_from_slice(&byte[..n]);
    }
    let h2 = start.len() == super::h2::PREFACE.len() && super::h2::may_be_preface(&start);
    Ok((Bytes::from(start), h2))
}

/// The TLS session of `stream` once its handshake is done by `deadline`;
/// boxed, so that the futures holding it hold a pointer (the session is
/// 1.2 KB, and a value moved out of an async function's local keeps its
/// place there).
async fn handshake<H>(
    serving: &Serving<H>,
    acceptor: TlsAcceptor,
    stream: Rewind,
    deadline: tokio::time::Instant,
) -> Option<Box<TlsStream<Rewind>>> {
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(Box::new(stream)),
        Ok(Err(err)) => {
            serving.metrics.tls_handshake_failed("error");
            debug!(%err, "TLS handshake failed");
            None
        }
        Err(_) => {
            serving.metrics.tls_handshake_failed("timeout");
            let limit = serving.tls_handshake_timeout;
            debug!(?limit, "TLS handshake timed out");
            None
        }
    }
}

/// How a connection without TLS came in.
fn plain_transport<H>(serving: &Serving<H>) -> Transport {
    if serving.peers {
        Transport::Hop
    } else {
        Transport::Plain
    }
}

/// An accepted connection: who it came from, and the slot it holds until
/// it closes.
struct Accepted {
    peer: Peer,
    /// `peer` is the one a trusted proxy's PROXY protocol header carried.
    relayed: bool,
    clients_only: bool,
    slot: Slot,
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

impl Socket for Rewind {
    fn tcp(&self) -> &TcpStream {
        Rewind::tcp(self)
    }
}

/// A TLS connection parks like a plain one: hyper's last read returned
/// Pending, so rustls holds no decrypted bytes (tokio-rustls reads the
/// socket until it has plaintext or the socket would block), and a record
/// that arrives only in part waits in rustls for the rest, whose arrival
/// makes the socket readable.
impl Socket for Box<TlsStream<Rewind>> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0.tcp()
    }
}

/// How a stint of hyper serving a connection ended.
enum Stint {
    /// The connection closed, failed or was upgraded.
    Ended(hyper::Result<()>),
    /// Idle between requests: the socket can be taken back.
    Quiet,
}

/// Where a stint stands between two wake-ups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request is in flight, or finished since the stint began.
    Busy,
    /// Nothing in flight: the park timer runs.
    Settling,
    /// The server is stopping: in-flight requests finish, keep-alive ends
    /// with them, and the connection is never parked.
    Stopping,
}

impl Phase {
    /// The phase after a wake-up that saw the stop fire (`stop`) or not,
    /// and the connection `quiet` or not.
    fn next(self, stop: bool, quiet: bool) -> Phase {
        match self {
            Phase::Stopping => Phase::Stopping,
            _ if stop => Phase::Stopping,
            _ if quiet => Phase::Settling,
            _ => Phase::Busy,
        }
    }
}

/// Serves HTTP/1.1 (with upgrades) on `io` until it closes, or until
/// `stop` once no request is in flight. Every request head is scanned for
/// ambiguous framing on the (decrypted) bytes before hyper parses it. A
/// connection idle between requests is parked without hyper until its next
/// bytes arrive: idle at most `idle_limit` in all, as long as hyper itself
/// waits for the next head. A head begun just before that gets the fresh
/// hyper connection's own `header_read_timeout`, so one slow head may take
/// up to twice that from the previous response.
///
/// An `async move` block rather than an `async fn`, which would hold its
/// arguments twice for as long as the connection lives ([`connection`]).
#[expect(clippy::manual_async_fn, reason = "an async fn's future is larger")]
fn serve_http<H: Handler, I: Socket>(
    serving: Arc<Serving<H>>,
    stop: CancellationToken,
    io: I,
    accepted: Accepted,
    transport: Transport,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        // The slot is held until the connection closes: a use moves it into
        // this block, and a reference keeps the block from holding it twice.
        let _slot = &accepted.slot;
        let framing = Arc::new(Verdicts::default());
        let io = Guarded::new(io, Arc::clone(&framing), serving.max_head_bytes);
        let conn = Arc::new(Conn {
            peer: accepted.peer,
            relayed: accepted.relayed,
            transport,
            framing,
            clients_only: accepted.clients_only,
        });
        let activity = Arc::new(Activity::default());
        let mut io = Parkable::new(io, Arc::clone(&activity));
        // Boxed per request: hyper keeps the slot for a connection's service
        // future for as long as it serves the connection, sized (and, once a
        // request has been served, resident) as the whole future — 5 KiB for
        // the gateway's (measured with `size_of_val`). Boxing keeps that slot
        // at a pointer, for a malloc, a copy of the future and a free per
        // request.
        let handler = Arc::clone(&serving.handler);
        let requests = Arc::clone(&activity);
        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
            let req = req.map(|body| Tracked::new(body, requests.begin()));
            let busy = requests.begin();
            let handled = Arc::clone(&handler).handle(Arc::clone(&conn), req);
            Box::pin(async move {
                let response = handled.await;
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, busy)))
            })
        });
        loop {
            let seen = activity.finished();
            // Boxed, so that parking frees hyper's connection state whole.
            let mut hyper_conn = Box::new(
                serving
                    .http
                    .serve_connection(TokioIo::new(io), service.clone())
                    .with_upgrades(),
            );
            let stint = stint(
                Pin::new(&mut *hyper_conn),
                |conn| conn.graceful_shutdown(),
                &activity,
                seen,
                &stop,
            )
            .await;
            if let Stint::Ended(ended) = stint {
                if let Err(err) = ended {
                    if let Some(reason) = refused_by_hyper(&err) {
                        serving.metrics.refused_request(reason);
                    }
                    debug!(%err, "connection ended with an error");
                }
                return;
            }
            let Some(Parts {
                io: back, read_buf, ..
            }) = unboxed(hyper_conn, |conn| conn.into_parts())
            else {
                return;
            };
            io = back.into_inner();
            io.replay(read_buf);
            if io.has_replay() {
                // The next request has begun arriving: serve it at once.
                continue;
            }
            if !park(io.get_ref().get_ref().tcp(), &serving, &stop).await {
                return;
            }
        }
    }
}

/// `f` applied to what `boxed` holds, the box freed at once: a box moved
/// out of in the caller's loop would be freed at the end of that turn of
/// the loop, after the park (hyper's connection, 0.7 KB per parked
/// connection).
#[expect(clippy::boxed_local, reason = "the box is what is to be freed")]
fn unboxed<C, R>(boxed: Box<C>, f: impl FnOnce(C) -> R) -> R {
    f(*boxed)
}

/// Polls hyper serving a connection until the connection ends, or until
/// it has been quiet since `seen` (nothing in flight) for `PARK_AFTER`.
/// When `stop` fires, `graceful` asks hyper to finish what is in flight and
/// end keep-alive; the connection is then never parked.
async fn stint<C>(
    mut conn: Pin<&mut C>,
    graceful: fn(Pin<&mut C>),
    activity: &Activity,
    seen: u64,
    stop: &CancellationToken,
) -> Stint
where
    C: Future<Output = hyper::Result<()>>,
{
    let mut stopping = std::pin::pin!(stop.cancelled());
    // Quiet for PARK_AFTER: under load the next request follows at once,
    // and hyper's state is worth keeping for it.
    let mut settled = std::pin::pin!(tokio::time::sleep(PARK_AFTER));
    let mut phase = Phase::Busy;
    poll_fn(|cx| {
        let stop = phase != Phase::Stopping && stopping.as_mut().poll(cx).is_ready();
        if stop {
            graceful(conn.as_mut());
        }
        if let Poll::Ready(ended) = conn.as_mut().poll(cx) {
            return Poll::Ready(Stint::Ended(ended));
        }
        let next = phase.next(stop, activity.quiet_since(seen));
        if next == Phase::Settling && phase != Phase::Settling {
            settled
                .as_mut()
                .reset(tokio::time::Instant::now() + PARK_AFTER);
        }
        phase = next;
        match phase {
            Phase::Settling => settled.as_mut().poll(cx).map(|()| Stint::Quiet),
            Phase::Busy | Phase::Stopping => Poll::Pending,
        }
    })
    .await
}

/// Waits, holding nothing but the socket, for a parked connection's next
/// bytes; false if it is to close instead (idle too long, or stopping).
async fn park<H>(tcp: &TcpStream, serving: &Serving<H>, stop: &CancellationToken) -> bool {
    let _parked = serving.metrics.connection_parked();
    // Quiet for PARK_AFTER already: together, as long as hyper would have
    // waited for the next head.
    let mut idle = std::pin::pin!(tokio::time::sleep(
        serving.idle_limit.saturating_sub(PARK_AFTER)
    ));
    let mut stopping = std::pin::pin!(stop.cancelled());
    // Readiness polled, not awaited: `readable()`'s future would be 152
    // bytes more in every parked connection's task.
    poll_fn(|cx| {
        if let Poll::Ready(ready) = tcp.poll_read_ready(cx) {
            return Poll::Ready(ready.is_ok());
        }
        if stopping.as_mut().poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        if idle.as_mut().poll(cx).is_ready() {
            debug!("idle keep-alive connection closed");
            return Poll::Ready(false);
        }
        Poll::Pending
    })
    .await
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

#[cfg(test)]
mod tests {
    use super::Phase;

    #[test]
    fn a_stint_settles_only_while_quiet_and_never_once_stopping() {
        assert_eq!(Phase::Busy.next(false, false), Phase::Busy);
        assert_eq!(Phase::Busy.next(false, true), Phase::Settling);
        assert_eq!(Phase::Settling.next(false, false), Phase::Busy);
        assert_eq!(Phase::Settling.next(true, true), Phase::Stopping);
        assert_eq!(Phase::Stopping.next(false, true), Phase::Stopping);
    }
}
