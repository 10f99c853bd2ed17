//! Carries one visitor request through a tunnel: the head as a `request`
//! message, the body as flow-controlled frames (or inline for JSON-only
//! clients), and the client's response back to the visitor as it streams in.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cryptun_proto::head::{accepts_trailers, forwardable_to_wire, upgrade_protocol, value_to_wire};
use cryptun_proto::message::{ServerMessage, encode};
use cryptun_proto::mux::{Mux, OpenError, RecvBody, SendHalf, Stream, pump};
use cryptun_proto::{InlineBody, RequestHead, ResponseHead, binary_head};
use futures_util::FutureExt as _;
use http::{HeaderMap, HeaderValue, Request, Response, Version};
use http_body::Body as _;
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::upgrade::OnUpgrade;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, timeout_at};
use tracing::{Instrument, debug, debug_span};

use super::access_log::{AccessLog, RequestBody, Switched};
use super::response::{build_response, refuse_response};
use super::{hardening, passthrough};
use crate::body::BoxError;
use crate::body::{Body, full};
use crate::edge::Peer;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::policy::{BodyGuard, MinRate, Tripwire};
use crate::registry::Tunnel;

/// What forwarding needs besides the tunnel: the server's settings and
/// counters for it.
pub(crate) struct Proxy<'a> {
    pub(crate) metrics: &'a Metrics,
    /// Where a protocol switch's bytes are counted.
    pub(crate) log: &'a AccessLog,
    /// How long a visitor's body may leave the server waiting (408).
    pub(crate) body_read_timeout: Duration,
    /// The slowest a visitor's body may arrive (408).
    pub(crate) min_body_rate: Option<MinRate>,
}

/// The largest request body read whole before the request goes to the
/// client (nginx buffers request bodies before passing them on, too): a
/// visitor dripping a small body holds neither a stream of the tunnel nor
/// a connection of the local service meanwhile. It then goes as frames
/// like any other, so the wire protocol does not change. Larger ones
/// stream as they come, at most [`upload_share`] of the session's streams
/// at once.
pub(crate) const SMALL_BODY: usize = 16 << 10;

/// The share of a session's streams that requests still uploading may hold
/// (three quarters): requests whose body is complete, or has none, always
/// find a stream, however many slow uploads are in flight.
pub(crate) fn upload_share(max_streams: usize) -> usize {
    (max_streams * 3 / 4).max(1)
}

/// A visitor's request made ready for the client: its head, and its body
/// still to read (inline, for a JSON-only client) or to send.
struct Outgoing {
    head: RequestHead,
    upload: Upload,
    /// The visitor's connection once switched, if the request offers a
    /// protocol switch the tunnel can carry.
    on_upgrade: Option<OnUpgrade>,
    /// What stopped the visitor's body, if a limit did.
    tripwire: Arc<Tripwire>,
    /// How much of a body to wait for before the request goes.
    wait: Wait,
}

/// The HTTP version the visitor spoke, when the request reached this node
/// in another (over the cluster's hop, HTTP/1.1 whatever the visitor
/// spoke): a request extension the hop sets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VisitorSpoke(pub(crate) Version);

/// How much of a request body the server waits for before sending the
/// request on: a small body whole, unless the body may be a conversation.
#[derive(Clone, Copy)]
enum Wait {
    /// Up to [`SMALL_BODY`]: a body of declared length, or an HTTP/1.1
    /// chunked one.
    Small,
    /// Only what has arrived already: an HTTP/2 body without a declared
    /// length may be a stream of messages each awaiting an answer (a gRPC
    /// streaming call sends one and waits), which waiting for its end
    /// would stall until the body timeout. Once answered, such a body is
    /// one side of a conversation and may pause ([`Tripwire::converse`]).
    Arrived,
}

/// What becomes of a request's body.
enum Upload {
    /// None to send.
    None,
    /// Read whole into the head, for a JSON-only client.
    Inline(BodyGuard<RequestBody>),
    /// Read whole if small ([`SMALL_BODY`]), else streamed as frames
    /// beside the response.
    Stream(BodyGuard<RequestBody>),
}

/// A body too large to read whole, its first bytes read already: a body
/// again, those bytes first (and its trailers, if it ended with them).
struct Begun {
    read: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    rest: BodyGuard<RequestBody>,
}

impl Begun {
    fn new(rest: BodyGuard<RequestBody>) -> Self {
        Begun {
            read: VecDeque::new(),
            trailers: None,
            rest,
        }
    }
}

impl http_body::Body for Begun {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(bytes) = self.read.pop_front() {
            return std::task::Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        if let Some(trailers) = self.trailers.take() {
            return std::task::Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        std::pin::Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.trailers.is_none() && self.rest.is_end_stream()
    }
}

impl Proxy<'_> {
    /// Forwards `req` from `visitor`, who came in over `scheme` (`http` or
    /// `https`), through `tunnel` and returns the response.
    pub(crate) async fn forward(
        &self,
        tunnel: &Arc<Tunnel>,
        visitor: Peer,
        scheme: &str,
        req: Request<RequestBody>,
    ) -> Result<Response<Body>, GatewayError> {
        tunnel
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mux = &tunnel.mux;
        let deadline = Instant::now() + tunnel.request_timeout;
        let Outgoing {
            mut head,
            upload,
            on_upgrade,
            tripwire,
            wait,
        } = self.prepare(tunnel, visitor, scheme, req)?;
        let upload = match upload {
            // Boxed, both: a request without a body (most) need not carry
            // room for reading one in its future, which is moved whole
            // into its place as it starts.
            Upload::Inline(body) => {
                let whole = Box::pin(read_inline(body, &tripwire)).await?;
                head.body = InlineBody::inline(&whole);
                None
            }
            Upload::Stream(body) => match Box::pin(read_small(body, &tripwire, wait)).await? {
                // Trailers go as a frame of their own: such a body streams.
                (begun, Whole::Yes) if begun.trailers.is_some() => Some((begun, None)),
                (begun, Whole::Yes) if begun.read.is_empty() => {
                    head.body = InlineBody::default();
                    None
                }
                // Arrived whole, on a session with binary heads: it rides
                // in the HEAD frame, one message instead of a head and an
                // END frame (as the client's small responses do).
                (begun, Whole::Yes) if mux.binary_heads() => {
                    head.body = InlineBody::raw(joined(begun.read));
                    None
                }
                // Arrived whole: sent at once, it needs no share.
                (begun, Whole::Yes) => Some((begun, None)),
                // Still uploading: it holds one of the upload share, taken
                // before the stream.
                (begun, Whole::No) => {
                    let Ok(slot) = Arc::clone(&tunnel.uploads).try_acquire_owned() else {
                        self.metrics.refused("max_uploads");
                        return Err(GatewayError::TooManyUploads);
                    };
                    Some((begun, Some(slot)))
                }
            },
            Upload::None => None,
        };
        let stream = mux.open(head.body.body_stream).map_err(|err| match err {
            OpenError::TooMany => {
                self.metrics.refused("max_streams");
                GatewayError::TooManyStreams
            }
            OpenError::Closed | OpenError::Duplicate(_) => GatewayError::ClientGone,
        })?;
        let Stream {
            id,
            head: response_head,
            recv,
            send,
            ..
        } = stream;
        // The deadline covers queueing the head too: a client that stopped
        // reading must not hold a visitor longer than one that is slow to
        // answer.
        // The client is told why, so it says the local service was too slow
        // rather than that the visitor left.
        let timed_out = |_| {
            mux.reset_for(id, Some(cryptun_proto::CancelReason::Timeout));
            GatewayError::Timeout(tunnel.request_timeout)
        };
        let sent = async {
            if send.binary_heads() {
                send.send_frame(binary_head::encode_request(id, &tunnel.id, &head))
                    .await
            } else {
                send.send_text(encode(&ServerMessage::Request {
                    request_id: id,
                    tunnel_id: tunnel.id.clone(),
                    request: head,
                }))
                .await
            }
        };
        timeout_at(deadline, sent)
            .await
            .map_err(timed_out)?
            .map_err(|_| GatewayError::ClientGone)?;
        let send = match upload {
            Some((begun, slot)) => {
                spawn_upload(begun, slot, send);
                None
            }
            None => Some(send),
        };
        let response = match timeout_at(deadline, response_head)
            .await
            .map_err(timed_out)?
        {
            Ok(response) => {
                if let Wait::Arrived = wait {
                    tripwire.converse();
                }
                response
            }
            Err(_) if mux.is_closed() => return Err(GatewayError::ClientGone),
            // Our upload stopped the visitor's body (and so reset the stream).
            Err(_) => {
                return Err(tripwire
                    .tripped()
                    .map_or(GatewayError::ClientReset, Into::into));
            }
        };
        let switch = on_upgrade.zip(send).map(|(on_upgrade, send)| {
            let counted = self.log.switched(Arc::clone(&tunnel.stats));
            (on_upgrade, send, counted)
        });
        answer(mux, id, response, switch, recv)
    }

    /// The request's head for the client, its body guarded by the tunnel's
    /// limits: read whole into the head for a JSON-only client, else left
    /// to stream. A declared length over the limit is refused before a byte
    /// is read.
    fn prepare(
        &self,
        tunnel: &Tunnel,
        visitor: Peer,
        scheme: &str,
        mut req: Request<RequestBody>,
    ) -> Result<Outgoing, GatewayError> {
        let mux = &tunnel.mux;
        // A protocol switch is offered only to clients that stream, for
        // requests without a body, and never to h2c; anything else is plain
        // HTTP with Upgrade stripped.
        let upgrade = upgrade_protocol(req.headers()).filter(|p| {
            mux.binary() && req.body().is_end_stream() && hardening::honoured_upgrade(p)
        });
        let on_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let limit = tunnel.max_body_size;
        if let Some(limit) = limit.filter(|l| body.size_hint().lower() > *l) {
            return Err(GatewayError::BodyTooLarge(limit));
        }
        let tripwire = Arc::new(Tripwire::default());
        let idle = (self.body_read_timeout, self.min_body_rate);
        let spoke = parts
            .extensions
            .get::<VisitorSpoke>()
            .map_or(parts.version, |spoke| spoke.0);
        let wait = if spoke == Version::HTTP_2 && body.size_hint().exact().is_none() {
            Wait::Arrived
        } else {
            Wait::Small
        };
        let mut head = RequestHead {
            method: parts.method.as_str().to_owned(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            headers: forwarded_headers(
                &parts.headers,
                (visitor, scheme),
                upgrade.as_ref(),
                mux.trailers(),
            ),
            body: InlineBody::default(),
        };
        let upload = if !mux.binary() {
            let inline = mux.limits().max_inline_body as u64;
            let limit = limit.map_or(inline, |l| l.min(inline));
            Upload::Inline(BodyGuard::new(
                body,
                Some(limit),
                idle,
                Arc::clone(&tripwire),
            ))
        } else if !body.is_end_stream() {
            Upload::Stream(BodyGuard::new(body, limit, idle, Arc::clone(&tripwire)))
        } else {
            Upload::None
        };
        // After a switch, the request direction carries the visitor's bytes.
        if matches!(upload, Upload::Stream(_)) || upgrade.is_some() {
            head.body = InlineBody::streamed();
        }
        Ok(Outgoing {
            head,
            upload,
            on_upgrade,
            tripwire,
            wait,
        })
    }
}

/// The visitor's response from the client's `response` head for stream
/// `id`: the protocol switch if one was offered (`switch`) and the app took
/// it, else the head checked and its body inline or streaming from `recv`.
fn answer(
    mux: &Mux<ResponseHead>,
    id: u32,
    response: ResponseHead,
    switch: Option<(OnUpgrade, SendHalf<ResponseHead>, Switched)>,
    recv: RecvBody<ResponseHead>,
) -> Result<Response<Body>, GatewayError> {
    if let Some((on_upgrade, send, counted)) = switch {
        if response.status == 101 {
            return passthrough::switch(response, mux, on_upgrade, send, recv, counted);
        }
        // The app declined the switch: the connection stays plain HTTP, and
        // the request direction ends without bytes.
        tokio::spawn(async move {
            let mut send = send;
            let _ = send.send(Bytes::new(), true).await;
        });
    }
    let streamed = response.body.body_stream;
    let (mut resp, inline) = match build_response(response, mux.limits(), mux.binary()) {
        Ok(parts) => parts,
        Err(err) => return Err(refuse_response(mux, id, err)),
    };
    *resp.body_mut() = if streamed {
        recv.map_err(Into::into).boxed()
    } else {
        full(inline)
    };
    Ok(resp)
}

/// Sends the visitor's body beside the response: the local service may
/// answer (or stream its answer) before it has read the whole request. It
/// ends with the body, or when the stream completes or is reset, and gives
/// its `slot` of the upload share, if it holds one, back then.
fn spawn_upload(begun: Begun, slot: Option<OwnedSemaphorePermit>, send: SendHalf<ResponseHead>) {
    let id = send.id();
    tokio::spawn(
        async move {
            if let Err(err) = pump(begun, send).await {
                debug!(%err, "request body upload stopped");
            }
            drop(slot);
        }
        .instrument(debug_span!("upload", stream = id)),
    );
}

/// Whether a body has been read to its end.
enum Whole {
    Yes,
    No,
}

/// The pieces of a body read whole, as one buffer (the piece itself when
/// there is one, as most small bodies arrive).
fn joined(mut pieces: VecDeque<Bytes>) -> Bytes {
    if pieces.len() <= 1 {
        return pieces.pop_front().unwrap_or_default();
    }
    let mut all = bytes::BytesMut::with_capacity(pieces.iter().map(Bytes::len).sum());
    for piece in pieces {
        all.extend_from_slice(&piece);
    }
    all.freeze()
}

/// Reads `body` to its end if it is at most [`SMALL_BODY`] bytes (with
/// [`Wait::Arrived`], if it has all arrived already); otherwise as much as
/// that, the rest left to stream. A body declared longer is not read at all.
async fn read_small(
    body: BodyGuard<RequestBody>,
    tripwire: &Tripwire,
    wait: Wait,
) -> Result<(Begun, Whole), GatewayError> {
    let mut begun = Begun::new(body);
    if begun.rest.size_hint().lower() > SMALL_BODY as u64 {
        return Ok((begun, Whole::No));
    }
    let mut total = 0;
    while total <= SMALL_BODY {
        let next = begun.rest.frame();
        let next = match wait {
            Wait::Small => next.await,
            Wait::Arrived => match next.now_or_never() {
                Some(next) => next,
                None => return Ok((begun, Whole::No)),
            },
        };
        match next {
            None => return Ok((begun, Whole::Yes)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    total += data.len();
                    begun.read.push_back(data);
                }
                Err(frame) => begun.trailers = frame.into_trailers().ok(),
            },
            Some(Err(err)) => {
                return Err(tripwire
                    .tripped()
                    .map_or_else(|| GatewayError::VisitorBody(err.to_string()), Into::into));
            }
        }
    }
    Ok((begun, Whole::No))
}

/// Reads a whole body for a JSON-only session, within its guard's limits
/// (refused before reading when Content-Length is over the size limit).
async fn read_inline(
    body: BodyGuard<RequestBody>,
    tripwire: &Tripwire,
) -> Result<Bytes, GatewayError> {
    if let Some(limit) = body.limit().filter(|l| body.size_hint().lower() > *l) {
        return Err(GatewayError::BodyTooLarge(limit));
    }
    match body.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) => Err(tripwire
            .tripped()
            .map_or_else(|| GatewayError::VisitorBody(err.to_string()), Into::into)),
    }
}

/// Headers the visitor may send that only this server sets: dropped, then
/// set from what it saw.
const FORWARDING: [&str; 5] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-real-ip",
];

/// The visitor's headers as the local service should see them, on the
/// wire: hop-by-hop headers removed, the `X-Forwarded-*` set from what this
/// server saw of the `visitor` and its scheme (replacing anything the
/// visitor claimed), `te: trailers` if the visitor takes trailers and the
/// session carries them, and for a protocol switch `Connection: upgrade`
/// with its `Upgrade`, last.
fn forwarded_headers(
    headers: &HeaderMap,
    (visitor, scheme): (Peer, &str),
    upgrade: Option<&HeaderValue>,
    trailers: bool,
) -> Vec<(String, String)> {
    let mut wire = forwardable_to_wire(headers, &FORWARDING);
    if trailers && accepts_trailers(headers) {
        wire.push(("te".into(), "trailers".into()));
    }
    // The Host that is forwarded (none if `Connection` named it).
    let host = wire
        .iter()
        .find(|(name, _)| name == "host")
        .map(|(_, v)| v.clone());
    wire.push(("x-forwarded-for".into(), visitor.ip().to_string()));
    wire.push(("x-forwarded-proto".into(), scheme.into()));
    if let Some(host) = host {
        wire.push(("x-forwarded-host".into(), host));
    }
    if let Some(protocol) = upgrade {
        wire.push(("connection".into(), "upgrade".into()));
        wire.push(("upgrade".into(), value_to_wire(protocol)));
    }
    wire
}
