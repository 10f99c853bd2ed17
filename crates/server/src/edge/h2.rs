//! HTTP/2 on the public side: a TLS connection whose ALPN chose `h2`, or
//! with `--h2c` a plain one that opens with HTTP/2's preface (prior
//! knowledge, behind a balancer that terminates TLS). Its requests go to
//! the same handler as HTTP/1.1's, with the same rules; what differs is
//! below them:
//!
//! - each request gets a `Host` from its `:authority` when it has none, so
//!   routing, the SNI rule and the local service see one host, as on
//!   HTTP/1.1; one whose `Host` names another host than `:authority` is
//!   refused by the gateway (400), so the two cannot route differently;
//! - framing is HTTP/2's own (frames with lengths, no `Content-Length`
//!   versus `Transfer-Encoding` to disagree on), checked by the `h2`
//!   crate: connection-specific headers (`Connection`, `Transfer-Encoding`,
//!   `Keep-Alive`, `Upgrade`, `TE` other than `trailers`), a body longer or
//!   shorter than its `content-length`, pseudo-headers out of place and
//!   values with CR, LF or NUL are malformed and reset, never forwarded. So
//!   nothing reaches a local service (over HTTP/1.1) that could frame two
//!   ways there: no h2-to-h1 smuggling;
//! - the limits are HTTP/2's ([`Limits`]): streams at once per connection,
//!   the header list's size (431 past it, as HTTP/1.1's head limit), flow
//!   control windows that bound what a visitor may send ahead, and the
//!   reset floods (CVE-2023-44487 "rapid reset": streams the visitor opens
//!   and resets at once; streams it makes the server reset by misbehaving)
//!   answered with `GOAWAY`;
//! - an idle connection (no stream for the keep-alive time) is closed with
//!   `GOAWAY`; a dead one is found by PING.
//!
//! WebSockets are not offered over HTTP/2 (no extended CONNECT, RFC 8441):
//! browsers open them on a connection of their own, over HTTP/1.1.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::{HeaderValue, Request, header};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::MAX_HEAD_BYTES;
use super::conn::{Conn, Handler};
use super::park::{Activity, Tracked};

/// The preface every HTTP/2 connection opens with (RFC 9113 §3.4).
pub(super) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HTTP/2's limits on one connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Streams (requests) open at once; past it the visitor's new streams
    /// are refused (`REFUSED_STREAM`), as the SETTINGS told it.
    pub max_concurrent_streams: u32,
    /// What one stream may send ahead of the tunnel reading it.
    pub stream_window: u32,
    /// What all of a connection's streams together may send ahead.
    pub connection_window: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // As nginx and most servers: enough for a page's resources.
            max_concurrent_streams: 100,
            // A tunnel stream's own window (proto's `stream_window`).
            stream_window: 256 * 1024,
            connection_window: 1024 * 1024,
        }
    }
}

/// Streams a visitor may open and reset before their handler took them,
/// before the connection is closed (`ENHANCE_YOUR_CALM`): hyper's default,
/// named here.
const MAX_PENDING_RESETS: usize = 20;

/// Streams the server may reset for a visitor's errors before it closes
/// the connection.
const MAX_ERROR_RESETS: usize = 256;

/// How often a quiet connection is pinged, and how long the answer may
/// take before it counts as dead.
const PING_EVERY: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// The HTTP/2 server every connection of one listener is served with.
pub(super) fn builder(limits: Limits) -> http2::Builder<TokioExecutor> {
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .initial_stream_window_size(limits.stream_window)
        .initial_connection_window_size(limits.connection_window)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_ERROR_RESETS)
        .keep_alive_interval(PING_EVERY)
        .keep_alive_timeout(PING_TIMEOUT);
    h2
}

/// Serves `io` as HTTP/2 for `conn`'s visitor, its requests to `handler`,
/// until the visitor closes it, it stays idle `idle_limit`, or `stop` fires (then
/// `GOAWAY`, and the streams open finish).
pub(super) async fn serve<H: Handler, I>(
    (h2, handler): (&http2::Builder<TokioExecutor>, &Arc<H>),
    io: I,
    conn: Conn,
    (idle_limit, stop): (Duration, &CancellationToken),
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    let activity = Arc::new(Activity::default());
    let requests = Arc::clone(&activity);
    let handler = Arc::clone(handler);
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let mut req = req.map(|body| Tracked::new(body, requests.begin()));
        with_host(&mut req);
        let busy = requests.begin();
        let handled = Arc::clone(&handler).handle(Arc::clone(&conn), req);
        Box::pin(async move {
            let response = handled.await;
            Ok::<_, Infallible>(response.map(|body| Tracked::new(body, busy)))
        })
    });
    let mut served = std::pin::pin!(h2.serve_connection(TokioIo::new(io), service));
    let mut stopping = std::pin::pin!(stop.cancelled());
    let mut idle = std::pin::pin!(tokio::time::sleep(idle_limit));
    let mut seen = activity.finished();
    let mut closing = false;
    let ended = poll_fn(|cx| {
        if !closing && stopping.as_mut().poll(cx).is_ready() {
            closing = true;
            served.as_mut().graceful_shutdown();
        }
        if let Poll::Ready(ended) = served.as_mut().poll(cx) {
            return Poll::Ready(ended);
        }
        // Idle: nothing in flight, and nothing finished, for idle_limit.
        if !closing && idle.as_mut().poll(cx).is_ready() {
            let finished = activity.finished();
            if activity.in_flight() == 0 && finished == seen {
                debug!(?idle_limit, "idle HTTP/2 connection closed");
                closing = true;
                served.as_mut().graceful_shutdown();
            } else {
                seen = finished;
                idle.as_mut()
                    .reset(tokio::time::Instant::now() + idle_limit);
                let _ = idle.as_mut().poll(cx);
            }
            if let Poll::Ready(ended) = served.as_mut().poll(cx) {
                return Poll::Ready(ended);
            }
        }
        Poll::Pending
    })
    .await;
    if let Err(err) = ended {
        debug!(%err, "HTTP/2 connection ended with an error");
    }
}

/// Gives `req` a `Host` from its `:authority` if it has none: what the
/// gateway routes by and the local service reads, as on HTTP/1.1.
fn with_host<B>(req: &mut Request<B>) {
    if req.headers().contains_key(header::HOST) {
        return;
    }
    let Some(authority) = req.uri().authority() else {
        return;
    };
    if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
        req.headers_mut().insert(header::HOST, host);
    }
}

/// Whether `start`, the first bytes of a plain connection, may still be
/// HTTP/2's preface (all of it once 24 bytes are there).
pub(super) fn may_be_preface(start: &[u8]) -> bool {
    let n = start.len().min(PREFACE.len());
    start[..n] == PREFACE[..n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_is_told_from_http1_at_its_first_differing_byte() {
        assert!(may_be_preface(b""));
        assert!(may_be_preface(b"PRI * HTTP/2.0\r\n"));
        assert!(may_be_preface(PREFACE));
        assert!(!may_be_preface(b"GET / HTTP/1.1\r\n"));
        assert!(!may_be_preface(b"POST"));
        assert!(!may_be_preface(b"PUT"));
        assert!(!may_be_preface(b"PRI * HTTP/1.1"));
    }

    #[test]
    fn a_request_without_host_takes_its_authority() {
        let mut req = Request::builder()
            .uri("https://app.localhost:4443/x")
            .body(())
            .unwrap();
        with_host(&mut req);
        assert_eq!(req.headers()[header::HOST], "app.localhost:4443");
        let mut req = Request::builder()
            .uri("https://app.localhost/x")
            .header(header::HOST, "other.localhost")
            .body(())
            .unwrap();
        with_host(&mut req);
        assert_eq!(req.headers()[header::HOST], "other.localhost");
    }
}
