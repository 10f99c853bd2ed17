//! Every way a visitor's request can fail, by who failed, and the response
//! each becomes.

use std::time::Duration;

use cryptun_proto::HeadError;
use http::{HeaderValue, Response, StatusCode, header};

use crate::host::HostError;
use crate::{Body, full};

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
    /// The tunnel has as many requests in flight as it may.
    #[error("too many requests in flight on this tunnel")]
    TooManyStreams,
    /// The request body is larger than this tunnel can take.
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(usize),
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
    /// The client did not answer within the request timeout.
    #[error("the tunnel's client did not answer within {0:?}")]
    Timeout(Duration),
    /// A WebSocket upgrade request was not valid.
    #[error("bad WebSocket upgrade: {0}")]
    BadUpgrade(&'static str),
    /// The server is shutting down and takes no new clients.
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl GatewayError {
    /// The status the visitor gets.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadHost(_)
            | GatewayError::VisitorBody(_)
            | GatewayError::BadUpgrade(_) => StatusCode::BAD_REQUEST,
            GatewayError::UnknownTunnel(_) | GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::TooManyStreams => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::ClientGone | GatewayError::ClientReset | GatewayError::BadResponse(_) => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Who is at fault.
    pub fn side(&self) -> Side {
        match self {
            GatewayError::BadHost(_)
            | GatewayError::UnknownTunnel(_)
            | GatewayError::NotFound
            | GatewayError::BodyTooLarge(_)
            | GatewayError::VisitorBody(_)
            | GatewayError::BadUpgrade(_) => Side::Visitor,
            GatewayError::ClientGone
            | GatewayError::ClientReset
            | GatewayError::BadResponse(_)
            | GatewayError::Timeout(_) => Side::Client,
            GatewayError::TooManyStreams | GatewayError::ShuttingDown => Side::Server,
        }
    }

    /// A short machine-readable name, sent as `x-cryptun-error`.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::BadHost(_) => "bad_host",
            GatewayError::UnknownTunnel(_) => "tunnel_not_found",
            GatewayError::NotFound => "not_found",
            GatewayError::TooManyStreams => "too_many_requests",
            GatewayError::BodyTooLarge(_) => "body_too_large",
            GatewayError::VisitorBody(_) => "bad_request_body",
            GatewayError::ClientGone => "client_gone",
            GatewayError::ClientReset => "client_reset",
            GatewayError::BadResponse(_) => "bad_response",
            GatewayError::Timeout(_) => "timeout",
            GatewayError::BadUpgrade(_) => "bad_upgrade",
            GatewayError::ShuttingDown => "shutting_down",
        }
    }

    /// The plain-text page the visitor sees.
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
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
