//! Connections to the local service, each driven by the task that forwards
//! the request on it.
//!
//! A pooled HTTP client runs every connection as a task of its own: the
//! request crosses to it over a channel and the response comes back over
//! another, two wake-ups (often two threads) per request. Here the task
//! forwarding a request polls the connection itself, while it waits for the
//! response and while it streams the response body ([`DrivenBody`]), so a
//! request and its response cross no task on the client. A request with a
//! body to upload is the exception: its connection gets a task of its own
//! ([`Conn::detach`]), so that the upload flows whatever the response does.
//!
//! When a response body has been read to its end, the connection goes back
//! to the pool: at most [`MAX_IDLE`] per target, for at most
//! [`POOL_IDLE`]. A pooled connection is checked for a close from the
//! local service before it is used; a request that a stale connection
//! never sent is sent again on a new one. A request abandoned midway drops
//! its connection, which closes it. A sweeper closes what idled too long.
//!
//! An `https://` target's connections are TLS (`local_tls`), pooled apart
//! from plain ones: the pool is keyed by what a connection is made with,
//! the address and the TLS settings ([`PoolKey`]), not by rules that only
//! shape each request (its `Host`).

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_util::either::Either;
// Tokio's clock, which tests can pause: the idle deadlines follow it.
use tokio::time::Instant;

use cryptun_proto::HeadError;

use crate::Target;
use crate::local_tls::{LocalTls, LocalTlsError};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way to the local service.
pub(crate) type LocalBody = BoxBody<Bytes, BoxError>;

/// Idle connections kept per target; more are closed.
pub(crate) const MAX_IDLE: usize = 128;

/// Idle connections are closed after this.
pub(crate) const POOL_IDLE: Duration = Duration::from_secs(60);

/// How often the sweeper looks for connections idle too long or closed.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

/// Why a request got no response from the local service.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LocalError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect: no answer within {0:?}")]
    ConnectTimeout(Duration),
    /// The TLS settings could not be used.
    #[error("{0}")]
    TlsSetup(LocalTlsError),
    /// The local service's certificate was refused, and why.
    #[error("its TLS certificate was refused: {0}")]
    Certificate(String),
    /// The TLS handshake failed otherwise (not a TLS port, ...).
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// The request's Host cannot be an HTTP/2 `:authority`.
    #[error("the request's Host {0:?} cannot name an HTTP/2 authority")]
    Authority(String),
}

/// Idle connections to the local services, by target. A clone shares them.
#[derive(Clone)]
pub(crate) struct LocalPool {
    idle: Arc<Mutex<Idle>>,
    /// HTTP/2 connections (`--upstream http2|h2c`), one per target, each
    /// taking every request at once; it runs as a task of its own.
    h2: Arc<Mutex<HashMap<PoolKey, H2Sender>>>,
    connect_timeout: Duration,
}

type H2Sender = hyper::client::conn::http2::SendRequest<LocalBody>;

type Idle = HashMap<PoolKey, Vec<(Conn, Instant)>>;

/// What a pooled connection was made with: connections made alike serve
/// alike. (Hashed twice a request: no more than it needs.)
#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    authority: Authority,
    tls: Option<LocalTls>,
}

impl PoolKey {
    fn of(target: &Target) -> Self {
        PoolKey {
            authority: target.authority().clone(),
            tls: target.tls().map(|(tls, _)| tls.clone()),
        }
    }
}

/// One HTTP/1.1 connection: the handle requests are sent on and the
/// connection itself, which nobody polls but the task using it.
struct Conn {
    sender: SendRequest<LocalBody>,
    /// `None` once the connection finished (closed, failed or upgraded) or
    /// went to a task of its own ([`Conn::detach`]).
    io: Option<Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>>,
}

impl Conn {
    /// Polls the connection once: reads what the local service sent,
    /// writes what is queued. Drops it when it finished, as a spawned
    /// connection task would: a request still queued on it (one that met a
    /// close from the local service before it was written) only comes
    /// back, unsent, when the connection is dropped.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(io) = &mut self.io {
            if io.as_mut().poll(cx).is_ready() {
                self.io = None;
            }
        }
    }

    fn done(&self) -> bool {
        self.io.is_none()
    }

    /// Hands the connection to a task of its own, as hyper's own client
    /// does. For a request whose body is still to be sent: the upload must
    /// keep flowing to the local service however the response is read (a
    /// visitor that sends everything before it reads, to a service that
    /// answers first, would otherwise wait on each other for good). Such a
    /// connection is not pooled again.
    fn detach(&mut self) {
        if let Some(io) = self.io.take() {
            tokio::spawn(async move {
                let _ = io.await;
            });
        }
    }

    /// Drives the connection without a task to wake: true while it can
    /// take another request.
    fn reusable(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop()));
        !self.done() && self.sender.is_ready()
    }
}

impl LocalPool {
    /// A pool whose new connections give up after `connect_timeout`. Its
    /// sweeper runs while the pool lives (call from within the runtime).
    pub(crate) fn new(connect_timeout: Duration) -> Self {
        let idle = Arc::new(Mutex::new(Idle::new()));
        tokio::spawn(sweep(Arc::downgrade(&idle)));
        LocalPool {
            idle,
            h2: Arc::default(),
            connect_timeout,
        }
    }

    /// How long a new connection may take.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// Sends `request` (origin-form URI, `Host` set) to `target` and
    /// returns its response. Its body drives the connection; read to its
    /// end, it gives the connection back to the pool. (A request with a
    /// body to upload has its connection driven by a task of its own
    /// instead, and not pooled: see [`Conn::detach`].) After a `101`, the
    /// connection has already handed its socket to `hyper::upgrade::on`.
    pub(crate) async fn send(
        &self,
        target: &Target,
        request: Request<LocalBody>,
    ) -> Result<Response<DrivenBody>, LocalError> {
        if target.upstream() != crate::Upstream::Http1 {
            return self.send_h2(target, request).await;
        }
        self.send_on(None, target, request).await
    }

    /// [`send`](Self::send) over HTTP/2: on the target's connection, made
    /// if it has none or it closed. The request's URI takes the scheme
    /// and its `Host` as authority, as HTTP/2 carries them.
    async fn send_h2(
        &self,
        target: &Target,
        mut request: Request<LocalBody>,
    ) -> Result<Response<DrivenBody>, LocalError> {
        let key = PoolKey::of(target);
        let cached = lock(&self.h2).get(&key).filter(|s| !s.is_closed()).cloned();
        let mut sender = match cached {
            Some(sender) => sender,
            None => {
                let io = self.dial(target).await?;
                let (sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                        .await?;
                tokio::spawn(async move {
                    if let Err(err) = conn.await {
                        tracing::debug!(%err, "HTTP/2 connection to the local service ended");
                    }
                });
                lock(&self.h2).insert(key, sender.clone());
                sender
            }
        };
        let scheme = if target.is_https() { "https" } else { "http" };
        let authority = request
            .headers()
            .get(http::header::HOST)
            .and_then(|host| host.to_str().ok())
            .map_or_else(|| target.authority().to_string(), str::to_owned);
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        *request.uri_mut() = http::Uri::builder()
            .scheme(scheme)
            .authority(authority.as_str())
            .path_and_query(path)
            .build()
            .map_err(|_| LocalError::Authority(authority))?;
        *request.version_mut() = http::Version::HTTP_2;
        request.headers_mut().remove(http::header::HOST);
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        Ok(response.map(|body| DrivenBody {
            body,
            ended: false,
            conn: None,
            home: None,
        }))
    }

    /// [`send`](Self::send), trying `checked_out` first: a pooled
    /// connection already past the check in [`checkout`](Self::checkout).
    /// Tests hand in one that the local service closed after that check,
    /// as happens when the close arrives between the check and the write.
    async fn send_on(
        &self,
        mut checked_out: Option<Conn>,
        target: &Target,
        mut request: Request<LocalBody>,
    ) -> Result<Response<DrivenBody>, LocalError> {
        let key = PoolKey::of(target);
        loop {
            let next = checked_out.take().or_else(|| self.checkout(&key));
            let (mut conn, pooled) = match next {
                Some(conn) => (conn, true),
                None => (self.connect(target).await?, false),
            };
            if !request.body().is_end_stream() {
                conn.detach();
            }
            let mut sending = std::pin::pin!(conn.sender.try_send_request(request));
            let sent = poll_fn(|cx| {
                if let Poll::Ready(sent) = sending.as_mut().poll(cx) {
                    return Poll::Ready(sent);
                }
                conn.drive(cx);
                // A finished connection (dropped by `drive`) has answered
                // (a 101), failed the request or given it back unsent:
                // either way the response future is ready now.
                sending.as_mut().poll(cx)
            })
            .await;
            match sent {
                Ok(response) => {
                    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                        // Let the connection hand its socket to the upgrade.
                        poll_fn(|cx| {
                            conn.drive(cx);
                            if conn.done() {
                                Poll::Ready(())
                            } else {
                                Poll::Pending
                            }
                        })
                        .await;
                    }
                    let pool = Arc::downgrade(&self.idle);
                    let home = key;
                    return Ok(response.map(|body| DrivenBody {
                        body,
                        ended: false,
                        conn: Some(conn),
                        home: Some((pool, home)),
                    }));
                }
                Err(mut err) => match err.take_message() {
                    // A pooled connection the local service had closed as
                    // the request went out: it was not sent; again, on a
                    // new connection.
                    Some(unsent) if pooled => request = unsent,
                    _ => return Err(err.into_error().into()),
                },
            }
        }
    }

    /// The most recently used idle connection to `target` that is still
    /// open.
    fn checkout(&self, key: &PoolKey) -> Option<Conn> {
        let mut idle = lock(&self.idle);
        let list = idle.get_mut(key)?;
        while let Some((mut conn, since)) = list.pop() {
            if since.elapsed() < POOL_IDLE && conn.reusable() {
                return Some(conn);
            }
        }
        None
    }

    async fn connect(&self, target: &Target) -> Result<Conn, LocalError> {
        let io = self.dial(target).await?;
        let (sender, io) = http1::handshake(TokioIo::new(io)).await?;
        Ok(Conn {
            sender,
            io: Some(Box::pin(io.with_upgrades())),
        })
    }

    /// A new connection to `target`, TLS's handshake done for an
    /// `https://` one, within the connect timeout.
    async fn dial(
        &self,
        target: &Target,
    ) -> Result<Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>, LocalError> {
        let address = target.authority().as_str();
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| LocalError::ConnectTimeout(self.connect_timeout))?
            .map_err(LocalError::Connect)?;
        // Heads and small bodies go out at once, not after a delayed ACK.
        tcp.set_nodelay(true).map_err(LocalError::Connect)?;
        let io = match target.tls() {
            None => Either::Left(tcp),
            Some((tls, connector)) => {
                let host = target.authority().host();
                let handshake = connector.handshake(tls, host, tcp);
                let tls = tokio::time::timeout(self.connect_timeout, handshake)
                    .await
                    .map_err(|_| LocalError::ConnectTimeout(self.connect_timeout))??;
                Either::Right(tls)
            }
        };
        Ok(io)
    }
}

/// Keeps a connection for the next request to `target`, if it can take
/// one and there is room.
fn check_in(idle: &Mutex<Idle>, key: PoolKey, mut conn: Conn) {
    if !conn.reusable() {
        return;
    }
    let mut idle = lock(idle);
    let list = idle.entry(key).or_default();
    if list.len() < MAX_IDLE {
        list.push((conn, Instant::now()));
    }
}

/// Closes, every [`SWEEP_EVERY`], the connections idle for [`POOL_IDLE`]
/// or closed by the local service, until the pool is gone.
async fn sweep(idle: Weak<Mutex<Idle>>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(idle) = idle.upgrade() else {
            return;
        };
        lock(&idle).retain(|_, list| {
            list.retain_mut(|(conn, since)| since.elapsed() < POOL_IDLE && conn.reusable());
            !list.is_empty()
        });
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A response body from the local service that drives its connection as
/// it is read, and gives the connection back to the pool once read to its
/// end. Dropped before that, it closes the connection.
pub(crate) struct DrivenBody {
    body: Incoming,
    /// The body said it ended (a chunked one never reports it beforehand).
    ended: bool,
    conn: Option<Conn>,
    home: Option<(Weak<Mutex<Idle>>, PoolKey)>,
}

impl Body for DrivenBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(conn) = &mut this.conn {
            conn.drive(cx);
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for DrivenBody {
    fn drop(&mut self) {
        if !self.ended && !self.body.is_end_stream() {
            return;
        }
        if let (Some(conn), Some((idle, target))) = (self.conn.take(), self.home.take()) {
            if let Some(idle) = idle.upgrade() {
                check_in(&idle, target, conn);
            }
        }
    }
}

/// The URI of `path` for a request sent straight to the local service:
/// origin-form (or `*`), nothing else.
pub(crate) fn origin_form(path: &str) -> Result<http::Uri, HeadError> {
    path.parse::<http::Uri>()
        .ok()
        .filter(|uri| uri.scheme().is_none() && (uri.path().starts_with('/') || uri.path() == "*"))
        .ok_or_else(|| HeadError::Path(path.to_owned()))
}

/// Gives `request` (its URI from [`origin_form`]) the `Host` the target's
/// [`HostHeader`](crate::HostHeader) says, and one naming `target` when it
/// has none, as a direct connection needs.
pub(crate) fn address(request: &mut Request<LocalBody>, target: &Target) {
    let headers = request.headers_mut();
    let chosen = target
        .host_header()
        .host(target.authority(), target.is_https());
    if let Some(host) = chosen {
        headers.insert(http::header::HOST, host);
    } else if !headers.contains_key(http::header::HOST) {
        let rewrite = crate::HostHeader::Rewrite;
        if let Some(host) = rewrite.host(target.authority(), target.is_https()) {
            headers.insert(http::header::HOST, host);
        }
    }
}

#[cfg(test)]
#[path = "local_tests.rs"]
mod tests;
