//! One request: from its `request` message to the local service and back,
//! with both bodies streamed. If the server abandons the request (the visitor
//! left), the local request is dropped at once, which closes its connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cryptun_proto::head::{
    headers_from_wire, headers_to_wire, keep_upgrade, strip_hop_by_hop, upgrade_protocol,
};
use cryptun_proto::message::{ClientMessage, encode};
use cryptun_proto::mux::{
    RecvBody, SendHalf, Stream, StreamClosed, copy_from_stream, copy_into_stream, pump,
};
use cryptun_proto::{HeadError, InlineBody, RequestHead, ResponseHead};
use http::{HeaderValue, Method, Request};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::local::{self, DrivenBody, LocalBody, LocalPool};
use crate::observe::{Observer, Watch};
use crate::routes::Routes;
use crate::{ClientConfig, Event, Events, Target, TunnelCreated};

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
    /// in the same order.
    pub(crate) fn new(config: &ClientConfig, created: &[TunnelCreated], events: Events) -> Self {
        let local = LocalPool::new(config.local_connect_timeout);
        let routes = Routes::new(config, created);
        let observer = config.observer();
        if let Some(observer) = &observer {
            // Each (re)connection brings the tunnels' current public URLs.
            observer.connected(routes.tunnels());
        }
        Forwarder {
            local,
            routes,
            events,
            observer,
        }
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
        let text = format!("cryptun client: no tunnel {tunnel_id:?} on this connection");
        let outcome = answer_error(stream.send, 502, text, started).await;
        fwd.events.emit(Event::Request {
            tunnel: tunnel_id,
            method,
            path,
            status: outcome.status,
            duration: outcome.duration,
            error: outcome.error,
        });
        return;
    };
    let watch = Watch::start(fwd.observer.as_deref(), &route.name, &route.target, &head);
    let Stream {
        recv, send, gone, ..
    } = stream;
    let outcome = tokio::select! {
        biased;
        outcome = exchange(&fwd, &route.target, &watch, head, recv, send, started) => outcome,
        _ = gone => Outcome { status: 0, duration: started.elapsed(), error: Some("cancelled: the visitor went away".into()) },
    };
    watch.finish(outcome.status, outcome.error.clone());
    fwd.events.emit(Event::Request {
        tunnel: route.name.to_string(),
        method,
        path,
        status: outcome.status,
        duration: outcome.duration,
        error: outcome.error,
    });
}

struct Outcome {
    status: u16,
    duration: Duration,
    error: Option<String>,
}

async fn exchange(
    fwd: &Forwarder,
    target: &Target,
    watch: &Watch,
    head: RequestHead,
    recv: RecvBody<()>,
    mut send: SendHalf<()>,
    started: Instant,
) -> Outcome {
    let (request, upgrade) = match local_request(target, head, recv) {
        Ok(parts) => parts,
        Err(why) => {
            return answer_error(
                send,
                400,
                format!("cryptun could not forward this request: {why}"),
                started,
            )
            .await;
        }
    };
    let request = request.map(|body| watch.request_body(body));
    let mut response = match fwd.local.send(target, request).await {
        Ok(response) => response,
        Err(err) => {
            let why = error_chain(&err);
            let text = format!("cryptun could not reach the local service at {target}: {why}");
            return answer_error(send, 502, text, started).await;
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
    let (parts, body) = response.into_parts();
    let body = watch.response_body(body);
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    let headers = headers_to_wire(&headers);
    let small = body
        .size_hint()
        .exact()
        .is_some_and(|len| len <= INLINE_RESPONSE_MAX);
    if small {
        // A small body of known length rides inside the head: one message
        // instead of a head and a frame, and the visitor gets a plain
        // Content-Length response.
        let bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) => {
                let text = format!(
                    "the local service failed mid-response: {}",
                    error_chain(&err)
                );
                return answer_error(send, 502, text, started).await;
            }
        };
        let head = ResponseHead {
            status,
            headers,
            body: InlineBody::inline(&bytes),
        };
        if send_head(&send, head).await.is_err() {
            return closed(status, started);
        }
        send.finish();
        return Outcome {
            status,
            duration: started.elapsed(),
            error: None,
        };
    }
    let head = ResponseHead {
        status,
        headers,
        body: InlineBody::streamed(),
    };
    if send_head(&send, head).await.is_err() {
        return closed(status, started);
    }
    let duration = started.elapsed();
    match pump(body, send).await {
        Ok(_) => Outcome {
            status,
            duration,
            error: None,
        },
        Err(err) => Outcome {
            status,
            duration,
            error: Some(format!("response body: {err}")),
        },
    }
}

/// The request for the local service, its body streaming from the tunnel.
/// A protocol switch gets no body: the stream's inbound bytes are returned
/// with the protocol, for after the 101.
fn local_request(
    target: &Target,
    head: RequestHead,
    recv: RecvBody<()>,
) -> Result<(Request<LocalBody>, Option<Upgrade>), String> {
    let method = Method::from_bytes(head.method.as_bytes())
        .map_err(|_| HeadError::Method(head.method.clone()).to_string())?;
    let uri = local::origin_form(&head.path).map_err(|e| e.to_string())?;
    let mut headers = headers_from_wire(&head.headers, MAX_HEADERS, MAX_HEADER_BYTES)
        .map_err(|e| e.to_string())?;
    let protocol = upgrade_protocol(&headers).filter(|_| head.body.body_stream);
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
            let inline = head.body.decode().map_err(|e| e.to_string())?;
            (
                Full::new(inline).map_err(|never| match never {}).boxed(),
                None,
            )
        }
    };
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
        return closed(101, started);
    }
    let duration = started.elapsed();
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(err) => {
            return Outcome {
                status: 101,
                duration,
                error: Some(format!("the local upgrade failed: {err}")),
            };
        }
    };
    let (reader, writer) = tokio::io::split(TokioIo::new(upgraded));
    let (up, down) = tokio::join!(
        copy_into_stream(reader, send),
        copy_from_stream(recv, writer)
    );
    let error = match (up, down) {
        (Ok(_), Ok(_)) => None,
        (Err(err), _) => Some(format!("upgraded connection: {err}")),
        (_, Err(err)) => Some(format!("upgraded connection: {err}")),
    };
    Outcome {
        status: 101,
        duration,
        error,
    }
}

async fn send_head(send: &SendHalf<()>, head: ResponseHead) -> Result<(), StreamClosed> {
    let id = send.id();
    send.send_text(encode(&ClientMessage::Response {
        request_id: id,
        response: head,
    }))
    .await
}

/// Answers the visitor with an error page from the client itself.
async fn answer_error(
    mut send: SendHalf<()>,
    status: u16,
    text: String,
    started: Instant,
) -> Outcome {
    debug!(status, %text, "answering with an error");
    let head = ResponseHead {
        status,
        headers: vec![
            ("content-type".into(), "text/plain; charset=utf-8".into()),
            ("x-cryptun-error".into(), "local_service".into()),
        ],
        body: InlineBody::inline(format!("{text}\n").as_bytes()),
    };
    if send_head(&send, head).await.is_err() {
        return closed(status, started);
    }
    send.finish();
    Outcome {
        status,
        duration: started.elapsed(),
        error: Some(text),
    }
}

fn closed(status: u16, started: Instant) -> Outcome {
    Outcome {
        status,
        duration: started.elapsed(),
        error: Some("the tunnel closed before the response was sent".into()),
    }
}

/// An error and its causes on one line ("client error (Connect): tcp
/// connect error: Connection refused (os error 111)").
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
