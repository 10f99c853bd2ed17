//! The server's metrics: every family is created here, in
//! [`Metrics::register`], and travels in the server's state (no globals).
//! `GET /metrics` on the server's own host serves them in the OpenMetrics
//! text format, which Prometheus scrapes.
//!
//! No label takes a value a peer chooses: there is no per-tunnel or
//! per-subdomain series, and every `reason` comes from a closed set
//! ([`GatewayError::code`](crate::error::GatewayError::code), the protocol's
//! error codes, or a constant at the call site). So a visitor or client can
//! make the counters count, but never make the server keep more series.
//!
//! Per-request work is a handful of atomic additions: the counters that are
//! touched per body frame are looked up once, when the metrics are created.

use std::time::Duration;

use cryptun_proto::ErrorCode;
use cryptun_proto::message::{SERVER_TYPES, ServerMessage, decode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds of the request duration buckets, in seconds: from a quick
/// local answer to a long poll.
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Labels of `cryptun_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct Outcome {
    /// `1xx` .. `5xx`, or `none` when the visitor left before any answer.
    pub class: &'static str,
    /// `upstream` when the tunnel's client answered (whatever its status);
    /// otherwise the gateway's error code (`tunnel_not_found`, `timeout`,
    /// `client_gone`, `too_many_requests`, ...) or `visitor_gone`.
    pub reason: &'static str,
}

/// A `reason` label from a closed set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct Reason {
    /// Why.
    pub reason: &'static str,
}

/// Labels of the ACME series: the certificate, by its first name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AcmeCertificate {
    /// `*.{domain}` for the wildcard.
    pub name: String,
}

/// Labels of `cryptun_acme_orders_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AcmeOrder {
    /// The certificate.
    pub name: String,
    /// `issued` or `failed`.
    pub outcome: &'static str,
}

/// The `reason` label of a handshake failure.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HandshakeReason {
    /// `timeout`, `closed`, `protocol`, `upgrade_failed`, or the protocol
    /// error code the client was refused with (`subdomain_taken`, ...).
    pub reason: String,
}

/// Labels of `cryptun_own_route_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OwnRoute {
    /// `ws`, `healthz`, `readyz`, `metrics`, `api`, `dashboard` or `other`
    /// (see `admin::route_label`).
    pub route: &'static str,
    /// `1xx` .. `5xx` of the answer.
    pub class: &'static str,
}

/// Why a request was answered before it was routed to a tunnel or to the
/// server's own routes: the `reason` of `cryptun_refused_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A head hyper could not parse (400: a CR or NUL in a header, a
    /// folded line, a bad request line ...), or HTTP/2 on the HTTP/1 port.
    Malformed,
    /// A head over the size (64 KiB) or header-count (100) limit (431).
    HeadersTooLarge,
    /// Ambiguous framing, as `hardening::framing` judges it (400).
    BadFraming,
    /// A request target over `max_uri_length` (414).
    UriTooLong,
    /// A missing, repeated or malformed Host (400).
    BadHost,
    /// Sent to HTTPS from the plain listener (308).
    Redirect,
    /// A Host other than the TLS connection's SNI (421).
    Misdirected,
    /// Anything but `GET /ws` on a connection holding one of the slots
    /// kept for clients (503).
    ConnectionsFull,
}

impl Refused {
    /// Every reason, in the order of [`Metrics::refused_requests`].
    pub const ALL: [Refused; 8] = [
        Refused::Malformed,
        Refused::HeadersTooLarge,
        Refused::BadFraming,
        Refused::UriTooLong,
        Refused::BadHost,
        Refused::Redirect,
        Refused::Misdirected,
        Refused::ConnectionsFull,
    ];

    /// The label value; the gateway's error code where there is one.
    pub fn label(self) -> &'static str {
        match self {
            Refused::Malformed => "malformed",
            Refused::HeadersTooLarge => "headers_too_large",
            Refused::BadFraming => "bad_framing",
            Refused::UriTooLong => "uri_too_long",
            Refused::BadHost => "bad_host",
            Refused::Redirect => "redirect",
            Refused::Misdirected => "misdirected",
            Refused::ConnectionsFull => "max_connections",
        }
    }
}

/// `in` (from visitors) or `out` (to them).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct Direction {
    direction: &'static str,
}

/// Every metric the server keeps. Cloning shares the same series.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Live tunnels (set from the registry when scraped).
    pub tunnels: Gauge,
    /// Connected clients: control sessions past their handshake.
    pub sessions: Gauge,
    /// Sessions that ended, by why (see `control::session::Ended`).
    pub sessions_ended: Family<Reason, Counter>,
    /// Visitor requests to tunnels by outcome.
    pub requests: Family<Outcome, Counter>,
    /// Visitor requests from arrival to the end of the response body.
    pub request_duration: Histogram,
    /// Visitor requests being served.
    pub in_flight: Gauge,
    /// Visitor connections idle between requests, held without
    /// hyper's buffers (see `park`).
    pub idle_connections: Gauge,
    /// Body bytes received from visitors (request bodies), counted per frame.
    pub bytes_in: Counter,
    /// Body bytes sent to visitors (response bodies), counted per frame.
    pub bytes_out: Counter,
    /// Control connections that ended before a tunnel was created.
    pub handshake_failures: Family<HandshakeReason, Counter>,
    /// Things refused because a limit was reached; see [`Metrics::refused`].
    pub refusals: Family<Reason, Counter>,
    /// Requests answered before routing, one counter per [`Refused`] (in
    /// [`Refused::ALL`]'s order), created up front so that each reads 0
    /// until it happens and counting is one atomic addition.
    pub refused_requests: [Counter; Refused::ALL.len()],
    /// Requests to the server's own routes, by route and status class.
    pub own_routes: Family<OwnRoute, Counter>,
    /// HTTPS connections whose TLS handshake failed (`error`: a bad or
    /// refused hello, a closed connection) or did not finish in time
    /// (`timeout`).
    pub tls_handshake_failures: Family<Reason, Counter>,
    /// When each ACME certificate served expires (Unix seconds).
    pub acme_not_after: Family<AcmeCertificate, Gauge>,
    /// ACME orders, by certificate and outcome.
    pub acme_orders: Family<AcmeOrder, Counter>,
    /// The last ACME error of each certificate, for the dashboard (none
    /// once an order succeeds).
    pub acme_last_error: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// TCP tunnels' visitor connections, counted when they end, by how
    /// (see [`Metrics::tcp_connection`]).
    pub tcp_connections: Family<TcpOutcome, Counter>,
    /// TCP tunnels' visitor connections open.
    pub tcp_open: Gauge,
    /// Bytes through TCP tunnels: from visitors (in) and to them (out).
    pub tcp_bytes: Family<Direction, Counter>,
}

/// How a TCP tunnel's visitor connection ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TcpOutcome {
    outcome: &'static str,
}

impl Metrics {
    /// Creates every family and registers it in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let bytes = Family::<Direction, Counter>::default();
        // One statement each: `get_or_create` returns a read guard, which
        // must be gone before the next series is created.
        let bytes_in = bytes.get_or_create(&Direction { direction: "in" }).clone();
        let bytes_out = bytes.get_or_create(&Direction { direction: "out" }).clone();
        let refused = Family::<Reason, Counter>::default();
        let refused_requests = Refused::ALL.map(|r| {
            let reason = r.label();
            refused.get_or_create(&Reason { reason }).clone()
        });
        let metrics = Metrics {
            tunnels: Gauge::default(),
            sessions: Gauge::default(),
            sessions_ended: Family::default(),
            requests: Family::default(),
            request_duration: Histogram::new(DURATION_BUCKETS),
            in_flight: Gauge::default(),
            idle_connections: Gauge::default(),
            bytes_in,
            bytes_out,
            handshake_failures: Family::default(),
            refusals: Family::default(),
            tls_handshake_failures: Family::default(),
            acme_not_after: Family::default(),
            acme_orders: Family::default(),
            acme_last_error: std::sync::Arc::default(),
            refused_requests,
            own_routes: Family::default(),
            tcp_connections: Family::default(),
            tcp_open: Gauge::default(),
            tcp_bytes: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("cryptun");
        r.register("tunnels", "Live tunnels", metrics.tunnels.clone());
        r.register(
            "sessions",
            "Connected clients (control sessions)",
            metrics.sessions.clone(),
        );
        r.register(
            "sessions_ended",
            "Client sessions that ended, by reason",
            metrics.sessions_ended.clone(),
        );
        r.register(
            "requests",
            "Visitor requests to tunnels, by status class and reason",
            metrics.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Visitor requests from arrival to the end of the response body",
            metrics.request_duration.clone(),
        );
        r.register(
            "requests_in_flight",
            "Visitor requests being served",
            metrics.in_flight.clone(),
        );
        r.register(
            "idle_connections",
            "Visitor connections idle between requests, held without HTTP buffers",
            metrics.idle_connections.clone(),
        );
        r.register(
            "body_bytes",
            "Body bytes from visitors (in) and to visitors (out)",
            bytes,
        );
        r.register(
            "handshake_failures",
            "Control connections that ended before a tunnel was created",
            metrics.handshake_failures.clone(),
        );
        r.register(
            "refusals",
            "Connections, requests or tunnels refused because a limit was reached",
            metrics.refusals.clone(),
        );
        r.register(
            "refused_requests",
            "Requests answered before routing: bad framing or head, bad Host, \
             redirected to HTTPS, misdirected",
            refused,
        );
        r.register(
            "own_route_requests",
            "Requests to the server's own routes, by route and status class",
            metrics.own_routes.clone(),
        );
        // Both series from the start, at 0, for `rate()`; one statement
        // each (see above).
        metrics.tls_handshake_failed_by("error");
        metrics.tls_handshake_failed_by("timeout");
        r.register(
            "tls_handshake_failures",
            "HTTPS connections whose TLS handshake failed (error) or took too long (timeout)",
            metrics.tls_handshake_failures.clone(),
        );
        r.register(
            "acme_certificate_not_after_seconds",
            "When the ACME certificate served expires, as a Unix time (days left: (this - time()) / 86400)",
            metrics.acme_not_after.clone(),
        );
        r.register(
            "acme_orders",
            "ACME certificate orders, by certificate and outcome (issued, failed)",
            metrics.acme_orders.clone(),
        );
        r.register(
            "tcp_connections",
            "TCP tunnels' visitor connections, by how they ended",
            metrics.tcp_connections.clone(),
        );
        r.register(
            "tcp_connections_open",
            "TCP tunnels' visitor connections open",
            metrics.tcp_open.clone(),
        );
        r.register(
            "tcp_bytes",
            "Bytes through TCP tunnels, from visitors (in) and to them (out)",
            metrics.tcp_bytes.clone(),
        );
        metrics
    }

    /// Counts a TCP tunnel's visitor connection that ended: `outcome` is
    /// `closed` (both directions ended), `cut` (reset, or a socket failed),
    /// `idle` (past the idle timeout), `refused_ip` (the tunnel's address
    /// rules), `refused_cap` (past its connection cap) or `no_stream` (the
    /// session's streams were all taken, or it closed).
    pub fn tcp_connection(&self, outcome: &'static str) {
        self.tcp_connections
            .get_or_create(&TcpOutcome { outcome })
            .inc();
    }

    /// A TCP tunnel's visitor connection is open until the guard drops.
    pub fn tcp_open(&self) -> GaugeGuard {
        GaugeGuard::count(&self.tcp_open)
    }

    /// Bytes a TCP tunnel's visitor connection carried, each way.
    pub fn tcp_carried(&self, bytes_in: u64, bytes_out: u64) {
        self.tcp_bytes
            .get_or_create(&Direction { direction: "in" })
            .inc_by(bytes_in);
        self.tcp_bytes
            .get_or_create(&Direction { direction: "out" })
            .inc_by(bytes_out);
    }

    /// Counts something refused by a limiter. `reason` names the limit
    /// (`max_connections`, `max_streams`, `max_tunnels`, ...): a constant,
    /// never anything a peer sent.
    pub fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&Reason { reason }).inc();
    }

    /// Counts an HTTPS connection whose TLS handshake failed: `reason` is
    /// `error` or `timeout`.
    pub fn tls_handshake_failed(&self, reason: &'static str) {
        self.tls_handshake_failed_by(reason).inc();
    }

    fn tls_handshake_failed_by(&self, reason: &'static str) -> Counter {
        self.tls_handshake_failures
            .get_or_create(&Reason { reason })
            .clone()
    }

    /// Records an ACME order for certificate `name`: its `error`, or the
    /// new certificate's `not_after` (a certificate loaded at start gives
    /// `not_after` without an order: no `error`, nothing counted).
    pub fn acme_outcome(
        &self,
        name: &str,
        error: Option<&str>,
        not_after: Option<std::time::SystemTime>,
    ) {
        let label = |outcome| AcmeOrder {
            name: name.to_owned(),
            outcome,
        };
        if let Some(error) = error {
            self.acme_orders.get_or_create(&label("failed")).inc();
            *self
                .acme_last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(error.to_owned());
            return;
        }
        if let Some(not_after) = not_after {
            let secs = not_after
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let cert = AcmeCertificate {
                name: name.to_owned(),
            };
            self.acme_not_after
                .get_or_create(&cert)
                .set(i64::try_from(secs).unwrap_or(i64::MAX));
            *self
                .acme_last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// The last ACME order's error, until one succeeds.
    pub fn acme_last_error(&self) -> Option<String> {
        self.acme_last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Counts an issued ACME order for certificate `name`.
    pub fn acme_issued(&self, name: &str) {
        let label = AcmeOrder {
            name: name.to_owned(),
            outcome: "issued",
        };
        self.acme_orders.get_or_create(&label).inc();
    }

    /// Counts a request answered before routing.
    pub fn refused_request(&self, reason: Refused) {
        // `ALL` lists the variants in order (a unit test checks), so this
        // always finds one; a variant left out of it is not counted rather
        // than panicking on a visitor's request.
        if let Some(counter) = self.refused_requests.get(reason as usize) {
            counter.inc();
        }
    }

    /// Counts a request to the server's own `route` answered with `status`.
    pub fn own_route(&self, route: &'static str, status: u16) {
        let class = class_of(status);
        self.own_routes
            .get_or_create(&OwnRoute { route, class })
            .inc();
    }

    /// Counts a failed handshake.
    pub fn handshake(&self, failure: &HandshakeFailure) {
        match failure {
            HandshakeFailure::Code(code) => self.handshake_refused(*code),
            HandshakeFailure::Other(reason) => self.handshake_failed(reason),
        }
    }

    /// Counts a session that ended, under its reason.
    pub fn session_ended(&self, reason: &'static str) {
        self.sessions_ended.get_or_create(&Reason { reason }).inc();
    }

    /// Counts a failed handshake under a fixed reason.
    pub fn handshake_failed(&self, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&HandshakeReason {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a handshake refused with a protocol error code.
    pub fn handshake_refused(&self, code: ErrorCode) {
        // The wire name of the code: a closed set, whatever codes later
        // versions add.
        let name = serde_json::to_value(code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "other".to_owned());
        self.handshake_failures
            .get_or_create(&HandshakeReason { reason: name })
            .inc();
    }

    /// Records one finished visitor request.
    pub fn request_done(&self, outcome: Outcome, duration: Duration) {
        self.requests.get_or_create(&outcome).inc();
        self.request_duration.observe(duration.as_secs_f64());
    }

    /// Counts a connected client until the guard drops.
    pub fn session_started(&self) -> GaugeGuard {
        GaugeGuard::count(&self.sessions)
    }

    /// Counts a parked visitor connection until the guard drops.
    pub fn connection_parked(&self) -> GaugeGuard {
        GaugeGuard::count(&self.idle_connections)
    }
}

/// Why a control connection ended before its first tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Refused with a protocol error code.
    Code(ErrorCode),
    /// Ended otherwise: `closed`, `protocol`, ...
    Other(&'static str),
}

impl HandshakeFailure {
    /// The failure behind an `error` message the server is about to send
    /// (as `create_tunnel` hands it back, encoded).
    pub fn refused_with(error: &str) -> Self {
        match decode::<ServerMessage>(error, SERVER_TYPES) {
            Ok(ServerMessage::Error(e)) => HandshakeFailure::Code(e.code),
            _ => HandshakeFailure::Other("refused"),
        }
    }
}

/// The status class label of `status` (0: no answer).
pub fn class_of(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

/// Decrements its gauge when dropped, however the holder ends.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    /// Increments `gauge` now, and decrements it when dropped.
    fn count(gauge: &Gauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The registry's text in the OpenMetrics format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail; an encoding error would be a bug in
    // a metric type, and a partial page is still the best answer.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
