//! Replay: a captured request sent again to the local service of the
//! tunnel that served it — same method, path, headers and body, or any of
//! them edited ([`Edits`]) — straight from the client, not through the
//! tunnel. The replay is an exchange of its own in the list, marked with
//! the one it replays, so its answer can be inspected like any other, and
//! it is reported to the session's events (the terminal shows it).
//!
//! An edited body makes a request whose body was truncated or not known
//! whole replayable; `Content-Length` is set to the body sent, whatever the
//! headers said.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use cryptun_proto::head::{headers_from_wire, headers_to_wire, strip_hop_by_hop};
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug_span};

use super::Inspector;
use super::capture::Recording;
use super::view::replay_refusal;
use crate::error::error_chain;
use crate::local::{self, LocalBody, LocalPool};
use crate::observe::Watch;
use crate::{Event, RequestDone, Target};

/// The longest a replay may run, its response body included; a replayed
/// long poll or event stream is cut there.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(300);

/// How long to wait for the local service to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds on rebuilding captured headers; they came through the same
/// bounds on the way in.
const MAX_HEADERS: usize = 1024;
const MAX_HEADER_BYTES: usize = 1 << 20;

/// The largest edits a replay request may carry (JSON, the body in it):
/// with [`MAX_REPLAYS`](super::MAX_REPLAYS) at once, replays hold at most
/// 16 MiB of request bodies.
pub(crate) const MAX_EDITS: usize = 1 << 20;

/// What to change in a replay; what is absent is sent as captured.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Edits {
    /// The method, e.g. `PUT`.
    pub(crate) method: Option<String>,
    /// Path and query, starting with `/`.
    pub(crate) path: Option<String>,
    /// Every header, in order, as `[name, value]` pairs.
    pub(crate) headers: Option<Vec<(String, String)>>,
    /// The body, as text.
    pub(crate) body: Option<String>,
    /// The body, as base64 (for bytes that are not text).
    pub(crate) body_base64: Option<String>,
}

/// Why a replay was not started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplayError {
    /// The exchange left the ring buffer, or never was.
    #[error("no exchange #{0}: it has left the list or never existed")]
    NotFound(u64),
    /// The request is not known whole (truncated, unfinished, a switch).
    #[error("cannot replay #{id}: {reason}")]
    Refused { id: u64, reason: String },
    /// [`MAX_REPLAYS`](super::MAX_REPLAYS) are running.
    #[error("too many replays in flight; try again when one has finished")]
    Busy,
    /// The captured head no longer makes a valid request.
    #[error("cannot replay #{id}: {reason}")]
    Invalid { id: u64, reason: String },
}

impl ReplayError {
    /// The status the API answers with.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ReplayError::NotFound(_) => StatusCode::NOT_FOUND,
            ReplayError::Refused { .. } | ReplayError::Invalid { .. } => StatusCode::CONFLICT,
            ReplayError::Busy => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

/// Starts replaying exchange `id`, with `edits`, to the local service of
/// the tunnel that served it; returns the replay's own id at once.
/// The replay runs until its response ends, [`REPLAY_TIMEOUT`] passes, or
/// `shutdown` fires.
pub(crate) fn start(
    inspector: &Inspector,
    id: u64,
    edits: Edits,
    shutdown: CancellationToken,
) -> Result<u64, ReplayError> {
    let entry = inspector.get(id).ok_or(ReplayError::NotFound(id))?;
    let invalid = |reason: String| ReplayError::Invalid { id, reason };
    let edited_body = match (edits.body, edits.body_base64) {
        (Some(_), Some(_)) => return Err(invalid("give body or body_base64, not both".into())),
        (Some(text), None) => Some(Bytes::from(text)),
        (None, Some(b64)) => Some(Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| invalid(format!("body_base64: {e}")))?,
        )),
        (None, None) => None,
    };
    let (method, path, headers, body) = {
        let record = entry.lock();
        let refusal = match &edited_body {
            None => replay_refusal(&record),
            // A new body stands in for one not known whole; a switch of
            // protocols is still no request to send again.
            Some(_) => replay_refusal(&record).filter(|_| record.upgraded),
        };
        if let Some(reason) = refusal {
            return Err(ReplayError::Refused { id, reason });
        }
        let body =
            edited_body.unwrap_or_else(|| Bytes::copy_from_slice(&record.request_body.bytes));
        let method = edits.method.unwrap_or_else(|| record.method.clone());
        let path = edits.path.unwrap_or_else(|| record.path.clone());
        let headers = edits
            .headers
            .unwrap_or_else(|| record.request_headers.clone());
        (method, path, headers, body)
    };
    let via = entry.via.clone();
    let target = via.target.clone();
    let method = Method::from_bytes(method.trim().as_bytes())
        .map_err(|_| invalid(format!("{method:?} is not a method")))?;
    let uri = local::origin_form(&path).map_err(|e| invalid(e.to_string()))?;
    let mut header_map = headers_from_wire(&headers, MAX_HEADERS, MAX_HEADER_BYTES)
        .map_err(|e| invalid(e.to_string()))?;
    strip_hop_by_hop(&mut header_map);
    // The body sent is whole and known: its length, whatever was said.
    let declared = header_map.remove(header::CONTENT_LENGTH).is_some();
    if declared || !body.is_empty() {
        header_map.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let permit = Arc::clone(inspector.replay_permits())
        .try_acquire_owned()
        .map_err(|_| ReplayError::Busy)?;

    let shown = headers_to_wire(&header_map);
    let entry = inspector.record(via, method.to_string(), path, shown, Some(id));
    let replay_id = entry.id;
    let report = Report {
        of: id,
        tunnel: entry.via.tunnel.to_string(),
        method: method.to_string(),
        path: entry.lock().path.clone(),
    };
    let tap = Watch::with(Box::new(Recording {
        inspector: inspector.clone(),
        entry,
    }));
    let body: LocalBody = Full::new(body).map_err(|never| match never {}).boxed();
    let mut request = Request::new(tap.request_body(body));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = header_map;
    local::address(&mut request, &target);
    let pool = inspector.replay_pool(CONNECT_TIMEOUT);
    let events = inspector.events();
    let task = async move {
        let _permit = permit;
        let started = Instant::now();
        let outcome = tokio::select! {
            () = shutdown.cancelled() => Err("cancelled: the inspector stopped".to_owned()),
            done = tokio::time::timeout(REPLAY_TIMEOUT, send(&tap, &pool, request, &target)) => {
                done.map_err(|_| format!("the replay took longer than {REPLAY_TIMEOUT:?}"))
            }
        };
        let (status, head_after, error) =
            outcome.unwrap_or_else(|error| (0, started.elapsed(), Some(error)));
        tap.finish(status, error.clone());
        events.emit(Event::Replayed {
            of: report.of,
            done: RequestDone {
                tunnel: report.tunnel,
                method: report.method,
                path: report.path,
                status,
                duration: head_after,
                error,
            },
        });
    };
    tokio::spawn(task.instrument(debug_span!("replay", of = id, id = replay_id)));
    Ok(replay_id)
}

/// What the session's events are told of a replay.
struct Report {
    of: u64,
    tunnel: String,
    method: String,
    path: String,
}

/// Sends the request and reads the response to its end through the tap;
/// returns the status, the time to the response head and what failed, if
/// anything.
async fn send(
    tap: &Watch,
    pool: &LocalPool,
    request: Request<LocalBody>,
    target: &Target,
) -> (u16, Duration, Option<String>) {
    let started = Instant::now();
    let response = match pool.send(target, request).await {
        Ok(response) => response,
        Err(err) => {
            let why = error_chain(&err);
            let text = format!("could not reach the local service at {target}: {why}");
            return (502, started.elapsed(), Some(text));
        }
    };
    let after = started.elapsed();
    let status = response.status().as_u16();
    tap.response_head(status, response.headers());
    let mut body = tap.response_body(response.into_body());
    while let Some(frame) = body.frame().await {
        if let Err(err) = frame {
            let why = format!("response body: {}", error_chain(&err));
            return (status, after, Some(why));
        }
    }
    (status, after, None)
}
