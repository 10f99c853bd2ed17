//! Why one exchange failed, by who failed, and what each failure becomes on
//! the wire: the answer the client sends for itself, if any (status,
//! headers, page), in [`ExchangeError::answer`] alone. (Why the connection
//! to the server failed is [`ClientError`](crate::ClientError).)
//!
//! The texts are part of the interface: visitors read them in the page,
//! the CLI prints them per request, and the inspector shows them.

use cryptun_proto::mux::{PumpError, StreamError};
use cryptun_proto::{CancelReason, HeadError, InlineBody, ResponseHead};

use crate::Target;
use crate::local::LocalError;

/// The party at fault, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The visitor: they went away, their request could not be carried,
    /// or their body broke off.
    Visitor,
    /// The server: it named a tunnel we do not serve, or the tunnel closed.
    Server,
    /// The local service: unreachable, or it failed mid-way.
    Local,
    /// The client itself: over its own limits.
    Client,
}

/// An exchange that could not be carried through.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    /// The request names a tunnel this connection does not carry.
    #[error("cryptun client: no tunnel {0:?} on this connection")]
    UnknownTunnel(String),
    /// The request head does not make a request for the local service.
    #[error("cryptun could not forward this request: {0}")]
    BadRequest(HeadError),
    /// The visitor went away (the server cancelled the stream).
    #[error("cancelled: the visitor went away")]
    VisitorGone,
    /// The server gave up waiting for the response head: the local service
    /// did not answer within the tunnel's request timeout.
    #[error("the local service did not answer in time (the visitor got 504)")]
    TimedOut,
    /// The server cancelled the request because it is shutting down.
    #[error("cancelled: the server is shutting down")]
    ServerShutdown,
    /// The tunnel (stream or session) closed before the response head
    /// went out.
    #[error("the tunnel closed before the response was sent")]
    TunnelClosed,
    /// No response from the local service: it could not be reached, or
    /// the request failed on the way (its body included).
    #[error("cryptun could not reach the local service at {target}: {}", Chain(.source))]
    Unreachable {
        target: Target,
        #[source]
        source: LocalError,
    },
    /// The local service's body failed before the whole of a small
    /// response, still unanswered, was read.
    #[error("the local service failed mid-response: {}", Chain(.0))]
    FailedMidResponse(#[source] hyper::Error),
    /// Streaming the response body stopped: its source failed, or the
    /// stream closed.
    #[error("response body: {0}")]
    ResponseBody(#[source] PumpError),
    /// The local service switched protocols but the connection could not
    /// be taken over.
    #[error("the local upgrade failed: {0}")]
    Upgrade(#[source] hyper::Error),
    /// Relaying the upgraded connection's bytes to the visitor failed.
    #[error("upgraded connection: {0}")]
    UpgradedOut(#[source] PumpError),
    /// Relaying the visitor's bytes to the upgraded connection failed.
    #[error("upgraded connection: {0}")]
    UpgradedIn(#[source] std::io::Error),
    /// More requests in flight than the client takes (see
    /// `session::busy_response`).
    #[error("cryptun client: too many requests in flight")]
    Busy,
}

impl ExchangeError {
    /// The server cancelled the exchange, for `reason` if it said (older
    /// servers do not: the visitor went away, or the request timed out).
    pub(crate) fn cancelled(reason: Option<CancelReason>) -> Self {
        match reason {
            Some(CancelReason::Timeout) => ExchangeError::TimedOut,
            Some(CancelReason::Shutdown) => ExchangeError::ServerShutdown,
            Some(CancelReason::VisitorGone) | None => ExchangeError::VisitorGone,
        }
    }

    /// The text for the terminal's request line: [`Display`](std::fmt::Display)'s,
    /// except that a local service refusing the connection is short enough
    /// (`:3000 refused`) for the line to fit 80 columns; the warning at
    /// start and the visitor's page say the rest.
    pub(crate) fn brief(&self) -> String {
        match self {
            ExchangeError::Unreachable {
                target,
                source: LocalError::Connect(io),
            } if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                format!(":{} refused", target.port())
            }
            other => other.to_string(),
        }
    }

    /// Who is at fault.
    pub(crate) fn side(&self) -> Side {
        match self {
            ExchangeError::BadRequest(_) | ExchangeError::VisitorGone => Side::Visitor,
            ExchangeError::UnknownTunnel(_)
            | ExchangeError::TunnelClosed
            | ExchangeError::ServerShutdown => Side::Server,
            ExchangeError::TimedOut => Side::Local,
            // The request body is the visitor's: its break is theirs.
            ExchangeError::Unreachable { source, .. } if from_stream(source) => Side::Visitor,
            ExchangeError::UpgradedIn(err) if err.get_ref().is_some_and(|e| from_stream(e)) => {
                Side::Visitor
            }
            ExchangeError::Unreachable { .. }
            | ExchangeError::FailedMidResponse(_)
            | ExchangeError::Upgrade(_)
            | ExchangeError::UpgradedIn(_) => Side::Local,
            ExchangeError::ResponseBody(err) | ExchangeError::UpgradedOut(err) => match err {
                PumpError::Source(_) => Side::Local,
                PumpError::Closed(_) => Side::Server,
            },
            ExchangeError::Busy => Side::Client,
        }
    }

    /// The response the client sends for itself, or `None` when there is
    /// nobody to answer (the visitor left, the tunnel closed) or a response
    /// is already on its way (its stream is reset instead).
    pub(crate) fn answer(&self) -> Option<ResponseHead> {
        let text_plain = ("content-type".into(), "text/plain; charset=utf-8".into());
        let (status, extra) = match self {
            // Every page of the client's own goes out under one code: to
            // the server and the visitor the whole client side is the
            // local service.
            ExchangeError::UnknownTunnel(_)
            | ExchangeError::Unreachable { .. }
            | ExchangeError::FailedMidResponse(_) => (502, ("x-cryptun-error", "local_service")),
            ExchangeError::BadRequest(_) => (400, ("x-cryptun-error", "local_service")),
            // The server frees a stream when it has the whole response; we
            // may hold ours a moment longer: soon there is room again.
            ExchangeError::Busy => (503, ("retry-after", "1")),
            ExchangeError::VisitorGone
            | ExchangeError::TimedOut
            | ExchangeError::ServerShutdown
            | ExchangeError::TunnelClosed
            | ExchangeError::ResponseBody(_)
            | ExchangeError::Upgrade(_)
            | ExchangeError::UpgradedOut(_)
            | ExchangeError::UpgradedIn(_) => return None,
        };
        Some(ResponseHead {
            status,
            headers: vec![text_plain, (extra.0.into(), extra.1.into())],
            body: InlineBody::inline(format!("{self}\n").as_bytes()),
        })
    }
}

/// Whether `err` is, or was caused by, a tunnel stream that broke off.
fn from_stream(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if err.is::<StreamError>() {
            return true;
        }
        next = err.source();
    }
    false
}

/// An error and its causes on one line ("client error (Connect): tcp
/// connect error: Connection refused (os error 111)").
struct Chain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&error_chain(self.0))
    }
}

/// [`Chain`], as a string.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page the client answered with before errors had types.
    fn page(status: u16, text: &str) -> ResponseHead {
        ResponseHead {
            status,
            headers: vec![
                ("content-type".into(), "text/plain; charset=utf-8".into()),
                ("x-cryptun-error".into(), "local_service".into()),
            ],
            body: InlineBody::inline(format!("{text}\n").as_bytes()),
        }
    }

    fn refused() -> LocalError {
        LocalError::Connect(std::io::ErrorKind::ConnectionRefused.into())
    }

    #[test]
    fn the_client_answers_with_the_same_pages_as_ever() {
        let target = Target::parse("127.0.0.1:9").expect("a target");
        let unreachable = ExchangeError::Unreachable {
            target,
            source: refused(),
        };
        assert_eq!(
            unreachable.answer(),
            Some(page(
                502,
                "cryptun could not reach the local service at http://127.0.0.1:9: connect: connection refused"
            ))
        );
        let unknown = ExchangeError::UnknownTunnel("abc".into());
        let text = "cryptun client: no tunnel \"abc\" on this connection";
        assert_eq!(unknown.answer(), Some(page(502, text)));
        let bad = ExchangeError::BadRequest(HeadError::Path("x".into()));
        let why = HeadError::Path("x".into());
        let text = format!("cryptun could not forward this request: {why}");
        assert_eq!(bad.answer(), Some(page(400, &text)));
        let busy = ResponseHead {
            status: 503,
            headers: vec![
                ("content-type".into(), "text/plain; charset=utf-8".into()),
                ("retry-after".into(), "1".into()),
            ],
            body: InlineBody::inline(b"cryptun client: too many requests in flight\n"),
        };
        assert_eq!(ExchangeError::Busy.answer(), Some(busy));
    }

    #[test]
    fn failures_after_the_head_or_without_a_visitor_get_no_answer() {
        assert_eq!(ExchangeError::VisitorGone.answer(), None);
        assert_eq!(ExchangeError::TunnelClosed.answer(), None);
        let closed = PumpError::Closed(cryptun_proto::mux::StreamClosed);
        assert_eq!(ExchangeError::ResponseBody(closed).answer(), None);
        assert_eq!(
            ExchangeError::VisitorGone.to_string(),
            "cancelled: the visitor went away"
        );
    }

    #[test]
    fn each_failure_names_its_side() {
        let target = Target::parse("3000").expect("a target");
        let local = ExchangeError::Unreachable {
            target: target.clone(),
            source: refused(),
        };
        assert_eq!(local.side(), Side::Local);
        // A request body that broke off on the tunnel is the visitor's.
        let broken = StreamError("reset by peer".into());
        let upload = ExchangeError::UpgradedIn(std::io::Error::other(broken.clone()));
        assert_eq!(upload.side(), Side::Visitor);
        let source = PumpError::Source(Box::new(std::io::Error::other("local reset")));
        assert_eq!(ExchangeError::ResponseBody(source).side(), Side::Local);
        let closed = PumpError::Closed(cryptun_proto::mux::StreamClosed);
        assert_eq!(ExchangeError::ResponseBody(closed).side(), Side::Server);
        assert_eq!(ExchangeError::Busy.side(), Side::Client);
        assert_eq!(ExchangeError::VisitorGone.side(), Side::Visitor);
        assert_eq!(ExchangeError::TunnelClosed.side(), Side::Server);
    }

    #[test]
    fn a_refused_local_service_is_brief_on_the_terminal() {
        let target = Target::parse("127.0.0.1:65535").expect("a target");
        let refused = ExchangeError::Unreachable {
            target,
            source: refused(),
        };
        assert_eq!(refused.brief(), ":65535 refused");
        assert_eq!(ExchangeError::Busy.brief(), ExchangeError::Busy.to_string());
    }

    #[test]
    fn a_cancel_says_why_and_a_timeout_blames_the_local_service() {
        let timeout = ExchangeError::cancelled(Some(CancelReason::Timeout));
        assert_eq!(timeout.side(), Side::Local);
        assert_eq!(
            timeout.to_string(),
            "the local service did not answer in time (the visitor got 504)"
        );
        assert_eq!(timeout.answer(), None);
        let shutdown = ExchangeError::cancelled(Some(CancelReason::Shutdown));
        assert_eq!(shutdown.side(), Side::Server);
        for gone in [None, Some(CancelReason::VisitorGone)] {
            assert!(matches!(
                ExchangeError::cancelled(gone),
                ExchangeError::VisitorGone
            ));
        }
    }
}
