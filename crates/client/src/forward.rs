//! One request: from its `request` message to the local service and back,
//! with both bodies streamed. If the server abandons the request (the visitor
//! left), the local request is dropped at once, which closes its connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cryptun_proto::head::{
    accepts_trailers, forwardable_to_wire, headers_from_wire, headers_to_wire, keep_upgrade,
    strip_hop_by_hop, upgrade_protocol,
};
use cryptun_proto::message::{ClientMessage, encode};
use cryptun_proto::mux::{
    RecvBody, SendHalf, Stream, StreamClosed, copy_from_stream, copy_into_stream, pump,
};
use cryptun_proto::{HeadError, InlineBody, RequestHead, ResponseHead, binary_head};
use http::{HeaderValue, Method, Request};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::error::ExchangeError;
use crate::local::{self, DrivenBody, LocalBody, LocalPool};
use crate::observe::{Observer, Tee, Watch};
use crate::routes::{Route, Routes};
use crate::{ClientConfig, Event, Events, RequestDone, Target, TunnelCreated, page};

/// Bounds on a request head from the server. The server already limits what
/// visitors send; these only guard against a broken server.
const MAX_HEADERS: usize = 1024;
const MAX_HEADER_BYTES: usize = 1 << 20;

/// Response bodies up to this size, when their length is known, travel
/// inline in the response head (base64, so about 22 KiB of JSON at most).
const INLINE_RESPONSE_MAX: u64 = 16 << 10;

/// What every forwarded request shares: the pooled connections to the
/// local services and the tunnels' routes.
pub(crate) struct Forwarder {
    local: LocalPool,
    routes: Routes,
    events: Events,
    observer: Option<Arc<dyn Observer>>,
}

impl Forwarder {
    /// A forwarder for `created`, the tunnels of [`ClientConfig::tunnels`]
    /// in the same order, on the server at `server` (the address dialled).
    pub(crate) fn new(
        config: &ClientConfig,
        (created, server): (&[TunnelCreated], Option<std::net::SocketAddr>),
        events: Events,
    ) -> Self {
        let local = LocalPool::new(config.local_connect_timeout);
        let routes = Routes::new(config, created, server);
        let observer = config.observer();
        if let Some(observer) = &observer {
            // Each (re)connection brings the tunnels' current public URLs.
            observer.connected(routes.tunnels(), events.clone());
        }
        Forwarder {
            local,
            routes,
            events,
            observer,
        }
    }

    /// Where tunnel `tunnel_id`'s traffic goes, if the session has it.
    pub(crate) fn route(&self, tunnel_id: &str) -> Option<&Route> {
        self.routes.get(tunnel_id)
    }

    /// How long a connection to a local service may take.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.local.connect_timeout()
    }

    /// Reports `event`.
    pub(crate) fn emit(&self, event: Event) {
        self.events.emit(event);
    }
}

/// Forwards one request arriving on `tunnel_id` and reports it.
pub(crate) async fn forward(
    fwd: Arc<Forwarder>,
    tunnel_id: String,
    stream: Stream<()>,
    head: RequestHead,
) {
    let started = Instant::now();
    let (method, path) = (head.method.clone(), head.path.clone());
    fwd.events.emit(Event::RequestStarted);
    let Some(route) = fwd.routes.get(&tunnel_id).cloned() else {
        let unknown = ExchangeError::UnknownTunnel(tunnel_id.clone());
        let outcome = answer(stream.send, unknown, started).await;
        report(&fwd, tunnel_id, method, path, outcome);
        return;
    };
    let watch = Watch::start(fwd.observer.as_deref(), &route.name, &route.target, &head);
    let Stream {
        recv, send, gone, ..
    } = stream;
    let outcome = tokio::select! {
        biased;
        outcome = exchange(&fwd, &route, &watch, head, recv, send, started) => outcome,
        why = gone => Outcome::failed(0, started.elapsed(), ExchangeError::cancelled(why.ok())),
    };
    let error = outcome.error.as_ref().map(ToString::to_string);
    watch.finish(outcome.status, error);
    report(&fwd, route.name.to_string(), method, path, outcome);
}

/// Emits the event of an exchange that ended; the one place its failure,
/// if any, is logged.
fn report(fwd: &Forwarder, tunnel: String, method: String, path: String, outcome: Outcome) {
    if let Some(err) = &outcome.error {
        debug!(side = ?err.side(), error = %err, status = outcome.status, "exchange failed");
    }
    fwd.events.emit(Event::Request(RequestDone {
        tunnel,
        method,
        path,
        status: outcome.status,
        duration: outcome.duration,
        error: outcome.error.map(|err| err.brief()),
    }));
}

/// How an exchange ended.
struct Outcome {
    /// The status the visitor got (0: none, they went away first).
    status: u16,
    /// From the request's arrival to the response head.
    duration: Duration,
    error: Option<ExchangeError>,
}

impl Outcome {
    fn done(status: u16, duration: Duration) -> Self {
        Outcome {
            status,
            duration,
            error: None,
        }
    }

    fn failed(status: u16, duration: Duration, error: ExchangeError) -> Self {
        Outcome {
            status,
            duration,
            error: Some(error),
        }
    }

    /// The tunnel closed before the response head with `status` went out.
    fn closed(status: u16, started: Instant) -> Self {
        Outcome::failed(status, started.elapsed(), ExchangeError::TunnelClosed)
    }
}

/// The exchange proper: the request to the local service, and its
/// response back, relayed plain or as a protocol switch.
async fn exchange(
    fwd: &Forwarder,
    route: &Route,
    watch: &Watch,
    head: RequestHead,
    recv: RecvBody<()>,
    send: SendHalf<()>,
    started: Instant,
) -> Outcome {
    let target = &route.target;
    let html = page::wants_html(&head.headers);
    let (request, upgrade) = match local_request(target, head, recv) {
        Ok(parts) => parts,
        Err(err) => return answer(send, ExchangeError::BadRequest(err), started).await,
    };
    let request = request.map(|body| watch.request_body(body));
    let mut response = match fwd.local.send(target, request).await {
        Ok(response) => response,
        Err(source) => {
            let browser = html.then(|| page::unreachable(&route.name, target, &source));
            let target = target.clone();
            let err = ExchangeError::Unreachable { target, source };
            return answer_with(send, err, browser, started).await;
        }
    };
    let status = response.status().as_u16();
    watch.response_head(status, response.headers());
    if let Some((protocol, recv)) = upgrade {
        if status == 101 {
            let on_upgrade = hyper::upgrade::on(&mut response);
            return switch(response, protocol, on_upgrade, recv, send, started).await;
        }
        // Not switched: the request direction carries nothing; dropping
        // it lets the stream finish with the plain response.
        drop(recv);
    }
    respond(watch, response, send, started).await
}

/// Relays a plain response: its head, with the body inline when it is
/// small and of known length, else streamed after the head.
async fn respond(
    watch: &Watch,
    response: http::Response<DrivenBody>,
    send: SendHalf<()>,
    started: Instant,
) -> Outcome {
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let body = watch.response_body(body);
    let headers = forwardable_to_wire(&parts.headers, &[]);
    let small = body
        .size_hint()
        .exact()
        .is_some_and(|len| len <= INLINE_RESPONSE_MAX);
    if small {
        respond_inline(status, headers, body, send, started).await
    } else {
        respond_streamed(status, headers, body, send, started).await
    }
}

/// A small body of known length rides inside the head: one message
/// instead of a head and a frame, and the visitor gets a plain
/// Content-Length response. One that ends with trailers goes as frames
/// after all (a head carries none).
async fn respond_inline(
    status: u16,
    headers: WireHeaders,
    body: Tee<DrivenBody>,
    mut send: SendHalf<()>,
    started: Instant,
) -> Outcome {
    let collected = match body.collect().await {
        Ok(collected) => collected,
        Err(err) => return answer(send, ExchangeError::FailedMidResponse(err), started).await,
    };
    if let Some(trailers) = collected.trailers().cloned() {
        let whole = Full::new(collected.to_bytes())
            .map_err(|never| match never {})
            .with_trailers(std::future::ready(Some(Ok(trailers))));
        return respond_streamed(status, headers, whole, send, started).await;
    }
    let bytes = collected.to_bytes();
    let head = ResponseHead {
        status,
        headers,
        // As bytes: a HEAD frame carries them so, a JSON head as base64.
        body: InlineBody::raw(bytes),
    };
    if send_head(&send, head).await.is_err() {
        return Outcome::closed(status, started);
    }
    send.finish();
    Outcome::done(status, started.elapsed())
}

/// The head, then the body as frames while it comes.
async fn respond_streamed<B>(
    status: u16,
    headers: WireHeaders,
    body: B,
    send: SendHalf<()>,
    started: Instant,
) -> Outcome
where
    B: http_body::Body<Data = Bytes, Error = hyper::Error>,
{
    let head = ResponseHead {
        status,
        headers,
        body: InlineBody::streamed(),
    };
    if send_head(&send, head).await.is_err() {
        return Outcome::closed(status, started);
    }
    let duration = started.elapsed();
    match pump(body, send).await {
        Ok(_) => Outcome::done(status, duration),
        Err(err) => Outcome::failed(status, duration, ExchangeError::ResponseBody(err)),
    }
}

/// Headers as they travel in a head.
type WireHeaders = Vec<(String, String)>;

/// The request for the local service, its body streaming from the tunnel.
/// A protocol switch gets no body: the stream's inbound bytes are returned
/// with the protocol, for after the 101.
fn local_request(
    target: &Target,
    head: RequestHead,
    recv: RecvBody<()>,
) -> Result<(Request<LocalBody>, Option<Upgrade>), HeadError> {
    let method = Method::from_bytes(head.method.as_bytes())
        .map_err(|_| HeadError::Method(head.method.clone()))?;
    let uri = local::origin_form(&head.path)?;
    let mut headers = headers_from_wire(&head.headers, MAX_HEADERS, MAX_HEADER_BYTES)?;
    let protocol = upgrade_protocol(&headers).filter(|_| head.body.body_stream);
    // The server says `te: trailers` only on a session that carries them.
    let trailers = accepts_trailers(&headers);
    let empty = || {
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed()
    };
    let (body, upgrade): (LocalBody, _) = match protocol {
        Some(protocol) => {
            keep_upgrade(&mut headers, protocol.clone());
            (empty(), Some((protocol, recv)))
        }
        None if head.body.body_stream => {
            strip_hop_by_hop(&mut headers);
            (recv.map_err(Into::into).boxed(), None)
        }
        None => {
            strip_hop_by_hop(&mut headers);
            let inline = head.body.decode()?;
            (
                Full::new(inline).map_err(|never| match never {}).boxed(),
                None,
            )
        }
    };
    if trailers && upgrade.is_none() {
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    local::address(&mut request, target);
    Ok((request, upgrade))
}

/// A requested protocol switch: the protocol, and the visitor's bytes.
type Upgrade = (HeaderValue, RecvBody<()>);

/// The app accepted a protocol switch: relays its 101, then joins the
/// tunnel stream and the local connection until both directions end.
async fn switch(
    response: http::Response<DrivenBody>,
    protocol: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
    recv: RecvBody<()>,
    send: SendHalf<()>,
    started: Instant,
) -> Outcome {
    let mut headers = response.headers().clone();
    let protocol = headers
        .get(http::header::UPGRADE)
        .cloned()
        .unwrap_or(protocol);
    keep_upgrade(&mut headers, protocol);
    let head = ResponseHead {
        status: 101,
        headers: headers_to_wire(&headers),
        body: InlineBody::streamed(),
    };
    if send_head(&send, head).await.is_err() {
        return Outcome::closed(101, started);
    }
    let duration = started.elapsed();
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(err) => return Outcome::failed(101, duration, ExchangeError::Upgrade(err)),
    };
    let (reader, writer) = tokio::io::split(TokioIo::new(upgraded));
    let (up, down) = tokio::join!(
        copy_into_stream(reader, send),
        copy_from_stream(recv, writer)
    );
    match (up, down) {
        (Ok(_), Ok(_)) => Outcome::done(101, duration),
        (Err(err), _) => Outcome::failed(101, duration, ExchangeError::UpgradedOut(err)),
        (_, Err(err)) => Outcome::failed(101, duration, ExchangeError::UpgradedIn(err)),
    }
}

/// The response head, as a HEAD frame where the session has binary heads,
/// else as a `response` message.
async fn send_head(send: &SendHalf<()>, head: ResponseHead) -> Result<(), StreamClosed> {
    let id = send.id();
    if send.binary_heads() {
        return send
            .send_frame(binary_head::encode_response(id, &head))
            .await;
    }
    send.send_text(encode(&ClientMessage::Response {
        request_id: id,
        response: head,
    }))
    .await
}

/// Answers the visitor with the client's own page for `err`.
async fn answer(send: SendHalf<()>, err: ExchangeError, started: Instant) -> Outcome {
    answer_with(send, err, None, started).await
}

/// [`answer`], with `page` instead of the plain-text one when given.
async fn answer_with(
    mut send: SendHalf<()>,
    err: ExchangeError,
    page: Option<ResponseHead>,
    started: Instant,
) -> Outcome {
    let Some(head) = page.or_else(|| err.answer()) else {
        // Nothing to say (not an error the client answers for): dropping
        // `send` resets the stream.
        return Outcome::failed(0, started.elapsed(), err);
    };
    let status = head.status;
    if send_head(&send, head).await.is_err() {
        return Outcome::closed(status, started);
    }
    send.finish();
    Outcome::failed(status, started.elapsed(), err)
}
