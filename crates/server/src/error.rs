//! Every way a visitor's request can fail, by who failed, and the response
//! each becomes.

use std::time::Duration;

use cryptun_proto::HeadError;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{Body, full};

/// Why a request has no usable Host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Neither a Host header nor an absolute request target.
    #[error("the request has no Host header")]
    Missing,
    /// More than one Host header.
    #[error("the request has more than one Host header")]
    Repeated,
    /// Not a valid host name, IPv4 or bracketed IPv6 address with an optional port.
    #[error("the Host header is not a valid host name")]
    Malformed,
    /// An HTTP/2 request whose Host names another host than its
    /// `:authority` (RFC 9113 §8.3.1: malformed).
    #[error("the Host header and :authority name different hosts")]
    Conflicting,
}

/// The party at fault, for logs (and, later, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The visitor sent something we refuse.
    Visitor,
    /// The tunnel's client (or the local service behind it) failed.
    Client,
    /// The server itself.
    Server,
}

/// A request the gateway could not carry through.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The Host header is missing, repeated or malformed.
    #[error("{0}")]
    BadHost(#[from] HostError),
    /// No live tunnel has this subdomain.
    #[error("no tunnel is serving {0}")]
    UnknownTunnel(String),
    /// No such route on the server's own host.
    #[error("not found")]
    NotFound,
    /// The name is a TCP tunnel's, reached at this URL, not over HTTP.
    #[error("this tunnel carries TCP, not HTTP: connect to {0}")]
    NotHttp(String),
    /// The tunnel has as many requests in flight as it may.
    #[error("too many requests in flight on this tunnel")]
    TooManyStreams,
    /// The visitor's address has this many requests in flight already.
    #[error("your address has {0} requests in flight already; try again when one is answered")]
    TooManyInFlight(usize),
    /// The tunnel has as many requests still uploading as it may; requests
    /// without a body (or a small one) are still served.
    #[error("too many uploads in flight on this tunnel")]
    TooManyUploads,
    /// The request head is longer than the server takes.
    #[error("the request head is larger than {0} bytes")]
    HeadTooLarge(usize),
    /// The request body is larger than this tunnel can take.
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(u64),
    /// Reading the visitor's body failed.
    #[error("could not read the request body: {0}")]
    VisitorBody(String),
    /// The tunnel's client disconnected (before or during the request).
    #[error("the tunnel's client is not connected")]
    ClientGone,
    /// The client abandoned the request.
    #[error("the tunnel's client abandoned the request")]
    ClientReset,
    /// The client's response head was not valid HTTP.
    #[error("the tunnel's client sent an invalid response: {0}")]
    BadResponse(#[from] HeadError),
    /// No response head within the request timeout: the local service (or
    /// the client in front of it) did not answer in time.
    #[error("the local service behind this tunnel did not answer within {0:?}")]
    Timeout(Duration),
    /// A WebSocket upgrade request was not valid.
    #[error("bad WebSocket upgrade: {0}")]
    BadUpgrade(&'static str),
    /// An HTTPS request whose Host is not the name its connection's TLS
    /// handshake asked for (SNI).
    #[error("this connection was opened for {}, not {host}; open a new connection for {host}", sni.as_deref().unwrap_or("no name (no SNI)"))]
    Misdirected {
        /// The server name the handshake asked for, if any.
        sni: Option<String>,
        /// The request's Host name.
        host: String,
    },
    /// The tunnel's client disconnected; its name is held this much longer
    /// for it to reconnect.
    #[error("the tunnel's client is reconnecting; try again shortly")]
    Reconnecting(Duration),
    /// The visitor's address is kept out by the tunnel's allow or deny list.
    #[error("your address may not reach this tunnel")]
    Forbidden,
    /// The tunnel wants HTTP Basic credentials (for this realm) that the
    /// visitor did not present.
    #[error("this tunnel needs a user name and password")]
    Unauthorized(String),
    /// Over a request rate: the visitor's address or the tunnel's.
    #[error("too many requests {scope}; try again in {} s", retry_secs(*.retry_after))]
    RateLimited {
        /// Whose rate.
        scope: RateScope,
        /// How long until a request would be allowed.
        retry_after: Duration,
    },
    /// The request's framing is ambiguous or unsupported.
    #[error("ambiguous request framing: {0}")]
    BadFraming(&'static str),
    /// The request target is longer than allowed.
    #[error("the request target is longer than {0} bytes")]
    UriTooLong(usize),
    /// The visitor stopped sending its body for this long.
    #[error("the request body stalled for {0:?}")]
    BodyTimeout(Duration),
    /// The visitor's body arrived slower than this many bytes a second.
    #[error("the request body arrived slower than {0} bytes a second")]
    BodyTooSlow(u64),
    /// A path on the server's own routes with dot segments or encoded
    /// separators.
    #[error("the path has dot segments or encoded separators")]
    BadPath,
    /// The admin API needs the admin token.
    #[error("the admin API needs Authorization: Bearer <admin token>")]
    AdminUnauthorized,
    /// No admin token is configured and the caller is not on loopback.
    #[error("the admin API is served to loopback addresses only (the server has no --admin-token)")]
    AdminForbidden,
    /// No admin token is configured, and a loopback caller asked under a
    /// Host that is neither a loopback name nor the server's domain: what
    /// a web page does through DNS rebinding.
    #[error(
        "without --admin-token, the admin API answers only under localhost, a loopback address or the server's domain"
    )]
    AdminHost,
    /// The server is shutting down and takes no new clients.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// Every connection slot but those kept for clients is taken, and this
    /// connection holds one of those: it may only ask for `/ws`.
    #[error("the server holds as many connections as it takes; try again shortly")]
    ConnectionsFull,
    /// Cluster: the tunnel is not on this node and the cluster's shared
    /// store, which says where it is, cannot be reached.
    #[error("this server cannot reach its cluster's shared store now; try again shortly")]
    ClusterUnavailable,
    /// Cluster: the tunnel is not on this node, none of its routes is
    /// cached, and this node is asking its shared store as often as it
    /// may (`--cluster-lookup-rate`; a flood of unknown names).
    #[error("this server is looking up too many names now; try again shortly")]
    ClusterBusy,
    /// Cluster: the node serving the tunnel did not answer (it may have
    /// gone; its client will reconnect to another node).
    #[error("the node serving this tunnel is unreachable; try again shortly")]
    NodeUnreachable,
    /// Cluster: a request on the internal hop without the cluster's secret.
    #[error("this listener is for the cluster's own nodes")]
    HopForbidden,
    /// Cluster: a forwarded request for a name this node does not serve
    /// (the first node's route was stale; it asks again).
    #[error("the tunnel is not served by this node")]
    NotHere,
}

/// Whose request rate was exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateScope {
    /// The visitor's address, across the whole server.
    Visitor,
    /// The tunnel, across all its visitors.
    Tunnel,
}

impl std::fmt::Display for RateScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RateScope::Visitor => "from your address",
            RateScope::Tunnel => "to this tunnel",
        })
    }
}

/// Whole seconds to wait, rounded up, at least 1 (for `Retry-After`).
pub(crate) fn retry_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// The longest `Retry-After` for a tunnel that is reconnecting: a client
/// usually comes back within seconds, well before the grace ends.
const MAX_RECONNECT_RETRY: Duration = Duration::from_secs(5);

impl GatewayError {
    /// The status the visitor gets.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadHost(_)
            | GatewayError::VisitorBody(_)
            | GatewayError::BadUpgrade(_)
            | GatewayError::BadFraming(_)
            | GatewayError::BadPath => StatusCode::BAD_REQUEST,
            GatewayError::Unauthorized(_) | GatewayError::AdminUnauthorized => {
                StatusCode::UNAUTHORIZED
            }
            GatewayError::Forbidden | GatewayError::AdminForbidden | GatewayError::AdminHost => {
                StatusCode::FORBIDDEN
            }
            GatewayError::RateLimited { .. } | GatewayError::TooManyInFlight(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            GatewayError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            GatewayError::BodyTimeout(_) | GatewayError::BodyTooSlow(_) => {
                StatusCode::REQUEST_TIMEOUT
            }
            GatewayError::UnknownTunnel(_) | GatewayError::NotFound | GatewayError::NotHttp(_) => {
                StatusCode::NOT_FOUND
            }
            GatewayError::TooManyStreams | GatewayError::TooManyUploads => {
                StatusCode::TOO_MANY_REQUESTS
            }
            GatewayError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::HeadTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::ClientGone | GatewayError::ClientReset | GatewayError::BadResponse(_) => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            GatewayError::Reconnecting(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::ShuttingDown
            | GatewayError::ConnectionsFull
            | GatewayError::ClusterUnavailable
            | GatewayError::ClusterBusy
            | GatewayError::NodeUnreachable => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::HopForbidden => StatusCode::FORBIDDEN,
            GatewayError::NotHere => StatusCode::MISDIRECTED_REQUEST,
        }
    }

    /// Who is at fault.
    pub fn side(&self) -> Side {
        match self {
            GatewayError::BadHost(_)
            | GatewayError::UnknownTunnel(_)
            | GatewayError::NotFound
            | GatewayError::NotHttp(_)
            | GatewayError::BodyTooLarge(_)
            | GatewayError::HeadTooLarge(_)
            | GatewayError::VisitorBody(_)
            | GatewayError::BadUpgrade(_)
            | GatewayError::Misdirected { .. }
            | GatewayError::Forbidden
            | GatewayError::Unauthorized(_)
            | GatewayError::RateLimited { .. }
            | GatewayError::TooManyInFlight(_)
            | GatewayError::BadFraming(_)
            | GatewayError::UriTooLong(_)
            | GatewayError::BodyTimeout(_)
            | GatewayError::BodyTooSlow(_)
            | GatewayError::BadPath
            | GatewayError::AdminUnauthorized
            | GatewayError::AdminForbidden
            | GatewayError::AdminHost
            | GatewayError::HopForbidden => Side::Visitor,
            GatewayError::ClientGone
            | GatewayError::ClientReset
            | GatewayError::BadResponse(_)
            | GatewayError::Timeout(_)
            | GatewayError::Reconnecting(_) => Side::Client,
            GatewayError::TooManyStreams
            | GatewayError::TooManyUploads
            | GatewayError::ShuttingDown
            | GatewayError::ConnectionsFull
            | GatewayError::ClusterUnavailable
            | GatewayError::ClusterBusy
            | GatewayError::NodeUnreachable
            | GatewayError::NotHere => Side::Server,
        }
    }

    /// A short machine-readable name, sent as `x-cryptun-error`.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::BadHost(_) => "bad_host",
            GatewayError::UnknownTunnel(_) => "tunnel_not_found",
            GatewayError::NotFound => "not_found",
            GatewayError::NotHttp(_) => "not_http",
            GatewayError::TooManyStreams => "too_many_requests",
            GatewayError::TooManyUploads => "too_many_uploads",
            GatewayError::BodyTooLarge(_) => "body_too_large",
            GatewayError::HeadTooLarge(_) => "headers_too_large",
            GatewayError::VisitorBody(_) => "bad_request_body",
            GatewayError::ClientGone => "client_gone",
            GatewayError::ClientReset => "client_reset",
            GatewayError::BadResponse(_) => "bad_response",
            GatewayError::Timeout(_) => "timeout",
            GatewayError::BadUpgrade(_) => "bad_upgrade",
            GatewayError::Misdirected { .. } => "misdirected",
            GatewayError::Reconnecting(_) => "tunnel_reconnecting",
            GatewayError::Forbidden => "forbidden",
            GatewayError::Unauthorized(_) => "unauthorized",
            GatewayError::RateLimited { .. } => "rate_limited",
            GatewayError::TooManyInFlight(_) => "max_requests_per_ip",
            GatewayError::BadFraming(_) => "bad_framing",
            GatewayError::UriTooLong(_) => "uri_too_long",
            GatewayError::BodyTimeout(_) => "body_timeout",
            GatewayError::BodyTooSlow(_) => "body_too_slow",
            GatewayError::BadPath => "bad_path",
            GatewayError::AdminUnauthorized => "admin_unauthorized",
            GatewayError::AdminForbidden => "admin_forbidden",
            GatewayError::AdminHost => "admin_host",
            GatewayError::ShuttingDown => "shutting_down",
            GatewayError::ConnectionsFull => "max_connections",
            GatewayError::ClusterUnavailable => "cluster_unavailable",
            GatewayError::ClusterBusy => "cluster_busy",
            GatewayError::NodeUnreachable => "node_unreachable",
            GatewayError::HopForbidden => "hop_forbidden",
            GatewayError::NotHere => "not_here",
        }
    }

    /// Whether the connection must close after this answer: the request's
    /// body was not read to its end, or its framing cannot be trusted.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            GatewayError::BadFraming(_)
                | GatewayError::HeadTooLarge(_)
                | GatewayError::BodyTooLarge(_)
                | GatewayError::BodyTimeout(_)
                | GatewayError::BodyTooSlow(_)
                | GatewayError::VisitorBody(_)
                | GatewayError::ConnectionsFull
        )
    }

    /// The plain-text page the visitor sees, with the headers its status
    /// calls for (`WWW-Authenticate`, `Retry-After`, `Connection: close`).
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let text = format!(
            "{} {}\n\n{}\n\n-- cryptun\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            self
        );
        let mut resp = Response::new(full(text));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert("x-cryptun-error", HeaderValue::from_static(self.code()));
        match &self {
            GatewayError::RateLimited { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, retry_secs(*retry_after).into());
            }
            GatewayError::TooManyStreams
            | GatewayError::TooManyUploads
            | GatewayError::TooManyInFlight(_)
            | GatewayError::ShuttingDown
            | GatewayError::ConnectionsFull
            | GatewayError::ClusterUnavailable
            | GatewayError::ClusterBusy
            | GatewayError::NodeUnreachable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            GatewayError::Unauthorized(realm) => {
                // The realm is a subdomain label: a token, safe in quotes.
                let challenge = format!("Basic realm=\"{realm}\", charset=\"UTF-8\"");
                if let Ok(value) = HeaderValue::from_str(&challenge) {
                    headers.insert(header::WWW_AUTHENTICATE, value);
                }
            }
            GatewayError::AdminUnauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"cryptun admin\""),
                );
            }
            _ => {}
        }
        if self.closes_connection() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let GatewayError::Reconnecting(left) = self {
            let secs = left.min(MAX_RECONNECT_RETRY).as_secs_f64().ceil().max(1.0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs as u64));
        }
        resp
    }
}
