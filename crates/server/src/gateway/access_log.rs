//! One visitor request as operators see it: the metrics it moves and its
//! access log line (target `cryptun::access`).
//!
//! An [`Exchange`] starts when a request for a tunnel arrives and ends when
//! its response body has been written, or abandoned by the visitor, or the
//! request was dropped before any answer: its `Drop` does the accounting, so
//! every request is counted exactly once however it ends. Body bytes are
//! counted as frames pass through [`RequestBody`] and [`ResponseBody`]: a
//! few atomic additions per frame.
//!
//! Besides the metrics, an exchange moves the dashboard's [`Stats`]: the
//! server's, and the tunnel's when the Host named a live one.
//!
//! The log line holds the path without its query string: query strings
//! often carry tokens and other secrets. It is a `tracing` event, unless
//! the server was given an [`AccessSink`]: then the sink gets the line's
//! fields and writes it as it likes (`cryptun server` formats its own text
//! or JSON line there: through `tracing`, the line cost about 9,600
//! instructions per request, docs/BENCHMARKS.md). It is written by a task of its own,
//! spawned when the exchange ends: the end comes as hyper takes the last
//! body bytes, before it writes them to the visitor, and formatting the line
//! there added about 4 µs to every response's latency on one connection
//! (docs/BENCHMARKS.md, "Third round").

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use prometheus_client::metrics::counter::Counter;
use tracing::{Instrument as _, Level, info};

use tokio_util::task::TaskTracker;

use crate::body::{Body, BoxError};
use crate::edge::Peer;
use crate::edge::VisitorBody;
use crate::metrics::{Metrics, Outcome, class_of};
use crate::policy::Place;
use crate::registry::Stats;

/// The `reason` of a request the tunnel's client answered.
const UPSTREAM: &str = "upstream";

/// What every exchange reports to: the metrics, the server's dashboard
/// counters, the tasks that write log lines (awaited on shutdown), and
/// where the lines go.
pub(crate) struct AccessLog {
    metrics: Metrics,
    totals: Arc<Stats>,
    tasks: TaskTracker,
    sink: Option<AccessSink>,
}

impl AccessLog {
    pub(crate) fn new(
        metrics: Metrics,
        totals: Arc<Stats>,
        tasks: TaskTracker,
        sink: Option<AccessSink>,
    ) -> Self {
        AccessLog {
            metrics,
            totals,
            tasks,
            sink,
        }
    }
}

/// One request's access log line, for an [`AccessSink`]: the fields of the
/// `cryptun::access` event (docs/OPERATIONS.md lists them).
#[derive(Debug, Clone, Copy)]
pub struct AccessLine<'a> {
    /// The subdomain asked for, `-` when the Host was unusable.
    pub tunnel: &'a str,
    /// The request's method.
    pub method: &'a str,
    /// The request's path, without its query string.
    pub path: &'a str,
    /// The status sent (0: the visitor left before any answer).
    pub status: u16,
    /// `upstream`, or the gateway's error code.
    pub outcome: &'a str,
    /// From arrival to the end of the response body, to the microsecond.
    pub duration_ms: f64,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes.
    pub bytes_out: u64,
    /// Whether the response body was sent to its end.
    pub complete: bool,
    /// The visitor's address as the server saw it.
    pub visitor: std::net::SocketAddr,
}

/// Where access log lines go instead of `tracing`, if set: called once per
/// request, off the response's path, while `cryptun::access` is enabled
/// at `INFO`.
#[derive(Clone)]
pub struct AccessSink(pub Arc<dyn Fn(&AccessLine<'_>) + Send + Sync>);

impl std::fmt::Debug for AccessSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessSink")
    }
}

impl AccessLog {
    /// The dashboard counters that the bytes of a protocol switch to
    /// `tunnel` (a WebSocket) move as they pass: the tunnel's and the
    /// server's. (The exchange itself ends with the 101.)
    pub(crate) fn switched(&self, tunnel: Arc<Stats>) -> Switched {
        Switched(Tallies {
            server: Arc::clone(&self.totals),
            tunnel: Some(tunnel),
        })
    }
}

/// Counts an upgraded connection's bytes in the dashboard's `bytes_in`
/// (from the visitor) and `bytes_out` (to the visitor).
pub(crate) struct Switched(Tallies);

impl cryptun_proto::counted::Tally for Switched {
    /// `n` bytes came from the visitor.
    fn add_in(&self, n: u64) {
        self.0.each(|s| s.add_in(n));
    }

    /// `n` bytes went to the visitor.
    fn add_out(&self, n: u64) {
        self.0.each(|s| s.add_out(n));
    }
}

/// One visitor request to a tunnel, from arrival to the end of its response.
pub(crate) struct Exchange {
    /// For the metrics at the end: one reference, where a copy of
    /// `Metrics` would be a reference count per metric.
    log: Arc<AccessLog>,
    started: Instant,
    visitor: Peer,
    method: Method,
    path: String,
    /// The tunnel label asked for, if the Host named one.
    tunnel: Option<String>,
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
    tallies: Tallies,
    /// The status sent, once there is one (0: none yet).
    status: u16,
    reason: &'static str,
    complete: bool,
    /// Its place among its address's requests in flight, given back at
    /// the end.
    place: Option<Place<IpAddr>>,
}

impl Exchange {
    /// Holds `place` until the exchange ends.
    pub(crate) fn hold(&mut self, place: Place<IpAddr>) {
        self.place = Some(place);
    }

    /// Starts accounting for `req` from `visitor` to the tunnel `tunnel`
    /// names (whose counters are `stats` if it is live), and returns the
    /// request with its body counted.
    pub(crate) fn begin(
        log: &Arc<AccessLog>,
        visitor: Peer,
        tunnel: Option<String>,
        stats: Option<Arc<Stats>>,
        req: Request<VisitorBody>,
    ) -> (Self, Request<RequestBody>) {
        let metrics = &log.metrics;
        metrics.in_flight.inc();
        let started = Instant::now();
        let tallies = Tallies {
            server: Arc::clone(&log.totals),
            tunnel: stats,
        };
        tallies.each(|s| s.begin(started));
        let bytes_in = Arc::new(AtomicU64::new(0));
        let exchange = Exchange {
            log: Arc::clone(log),
            started,
            visitor,
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            tunnel,
            bytes_in: Arc::clone(&bytes_in),
            bytes_out: 0,
            tallies: tallies.clone(),
            status: 0,
            reason: "visitor_gone",
            complete: false,
            place: None,
        };
        let total = metrics.bytes_in.clone();
        let req = req.map(|inner| RequestBody {
            inner,
            seen: bytes_in,
            total,
            tallies,
        });
        (exchange, req)
    }

    /// The response is ready: `reason` is the gateway's error code, or
    /// `None` when the tunnel's client answered. The exchange ends with the
    /// returned response's body.
    pub(crate) fn respond(
        mut self,
        resp: Response<Body>,
        reason: Option<&'static str>,
    ) -> Response<Body> {
        self.status = resp.status().as_u16();
        self.reason = reason.unwrap_or(UPSTREAM);
        // An empty body may never be polled.
        self.complete = resp.body().is_end_stream();
        let total = self.log.metrics.bytes_out.clone();
        let length = declared_length(&resp);
        resp.map(|inner| {
            BoxBody::new(ResponseBody {
                inner,
                exchange: self,
                total,
                length,
            })
        })
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let duration = self.started.elapsed();
        let metrics = &self.log.metrics;
        metrics.in_flight.dec();
        let status = self.status;
        self.tallies.each(|s| s.end(status));
        metrics.request_done(
            Outcome {
                class: class_of(self.status),
                reason: self.reason,
            },
            duration,
        );
        if !tracing::enabled!(target: "cryptun::access", Level::INFO) {
            return;
        }
        let line = Line {
            sink: self.log.sink.clone(),
            tunnel: self.tunnel.take(),
            method: std::mem::take(&mut self.method),
            path: std::mem::take(&mut self.path),
            status,
            outcome: self.reason,
            duration_ms: (duration.as_secs_f64() * 1e6).round() / 1e3,
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out,
            complete: self.complete,
            visitor: self.visitor,
        };
        // A spawned task normally runs once the one that spawned it yields:
        // here, once hyper has written the response. A tracked one, so that
        // shutdown waits for it. Once shutdown stopped waiting (a request
        // that outlived the drain), or without a runtime (never, in the
        // server), the line is written at once instead.
        if !self.log.tasks.is_closed() && tokio::runtime::Handle::try_current().is_ok() {
            let write = async move { line.write() }.instrument(tracing::Span::current());
            self.log.tasks.spawn(write);
        } else {
            line.write();
        }
    }
}

/// The access log line of one exchange.
struct Line {
    sink: Option<AccessSink>,
    tunnel: Option<String>,
    method: Method,
    path: String,
    status: u16,
    outcome: &'static str,
    duration_ms: f64,
    bytes_in: u64,
    bytes_out: u64,
    complete: bool,
    visitor: Peer,
}

impl Line {
    fn write(self) {
        let line = AccessLine {
            tunnel: self.tunnel.as_deref().unwrap_or("-"),
            method: self.method.as_str(),
            path: &self.path,
            status: self.status,
            outcome: self.outcome,
            duration_ms: self.duration_ms,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            complete: self.complete,
            visitor: self.visitor,
        };
        match &self.sink {
            Some(sink) => (sink.0)(&line),
            None => line.trace(),
        }
    }
}

impl AccessLine<'_> {
    /// The line as the `tracing` event a server without an [`AccessSink`]
    /// logs (target `cryptun::access`, message `request`).
    pub fn trace(&self) {
        info!(
            target: "cryptun::access",
            tunnel = self.tunnel,
            method = %self.method,
            path = %self.path,
            status = self.status,
            outcome = self.outcome,
            duration_ms = self.duration_ms,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            complete = self.complete,
            visitor = %self.visitor,
            "request"
        );
    }
}

/// A visitor's request body, counted as it is read.
pub(crate) struct RequestBody {
    inner: VisitorBody,
    seen: Arc<AtomicU64>,
    total: Counter,
    tallies: Tallies,
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let n = data.len() as u64;
                self.seen.fetch_add(n, Ordering::Relaxed);
                self.total.inc_by(n);
                self.tallies.each(|s| s.add_in(n));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The length a response declares (its body's exact size, else its
/// `Content-Length`): hyper writes that many bytes and then stops reading
/// the body, so a body streamed over the tunnel, whose end is a frame of
/// its own, is dropped before it can say it ended. Reaching this length is
/// the response delivered whole.
fn declared_length(resp: &Response<Body>) -> Option<u64> {
    resp.body().size_hint().exact().or_else(|| {
        resp.headers()
            .get(http::header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    })
}

/// A response body on its way to the visitor, counted as it is written;
/// dropping it ends the exchange.
struct ResponseBody {
    inner: Body,
    exchange: Exchange,
    total: Counter,
    /// The length it declared ([`declared_length`]), if any.
    length: Option<u64>,
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    self.exchange.bytes_out += n;
                    self.total.inc_by(n);
                    self.exchange.tallies.each(|s| s.add_out(n));
                }
                let all = self
                    .length
                    .is_some_and(|len| self.exchange.bytes_out >= len);
                if all || self.inner.is_end_stream() {
                    self.exchange.complete = true;
                }
            }
            Poll::Ready(None) => self.exchange.complete = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The dashboard counters one request moves: the server's, and its
/// tunnel's when the tunnel was live.
#[derive(Clone)]
struct Tallies {
    server: Arc<Stats>,
    tunnel: Option<Arc<Stats>>,
}

impl Tallies {
    fn each(&self, f: impl Fn(&Stats)) {
        f(&self.server);
        if let Some(tunnel) = &self.tunnel {
            f(tunnel);
        }
    }
}
