//! Replay: a captured request sent again to the local service of the
//! tunnel that served it — same method, path, headers and body — straight
//! from the client, not through the tunnel. The replay is an exchange of its own in the list, marked
//! with the one it replays, so its answer can be inspected like any other.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cryptun_proto::head::{headers_from_wire, strip_hop_by_hop};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug_span};

use super::Inspector;
use super::capture::Recording;
use super::view::replay_refusal;
use crate::error::error_chain;
use crate::local::{self, LocalBody, LocalPool};
use crate::observe::Watch;

/// The longest a replay may run, its response body included; a replayed
/// long poll or event stream is cut there.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(300);

/// How long to wait for the local service to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds on rebuilding captured headers; they came through the same
/// bounds on the way in.
const MAX_HEADERS: usize = 1024;
const MAX_HEADER_BYTES: usize = 1 << 20;

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

/// Starts replaying exchange `id` to the local service of the tunnel that
/// served it; returns the replay's own id at once.
/// The replay runs until its response ends, [`REPLAY_TIMEOUT`] passes, or
/// `shutdown` fires.
pub(crate) fn start(
    inspector: &Inspector,
    id: u64,
    shutdown: CancellationToken,
) -> Result<u64, ReplayError> {
    let entry = inspector.get(id).ok_or(ReplayError::NotFound(id))?;
    let (method, path, headers, body) = {
        let record = entry.lock();
        if let Some(reason) = replay_refusal(&record) {
            return Err(ReplayError::Refused { id, reason });
        }
        let body = Bytes::copy_from_slice(&record.request_body.bytes);
        let headers = record.request_headers.clone();
        (record.method.clone(), record.path.clone(), headers, body)
    };
    let via = entry.via.clone();
    let target = via.target.clone();
    let invalid = |reason: String| ReplayError::Invalid { id, reason };
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| invalid(e.to_string()))?;
    let uri = local::origin_form(&path).map_err(|e| invalid(e.to_string()))?;
    let mut header_map = headers_from_wire(&headers, MAX_HEADERS, MAX_HEADER_BYTES)
        .map_err(|e| invalid(e.to_string()))?;
    strip_hop_by_hop(&mut header_map);
    let permit = Arc::clone(inspector.replay_permits())
        .try_acquire_owned()
        .map_err(|_| ReplayError::Busy)?;

    let entry = inspector.record(via, method.to_string(), path, headers, Some(id));
    let replay_id = entry.id;
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
    let task = async move {
        let _permit = permit;
        let outcome = tokio::select! {
            () = shutdown.cancelled() => Err("cancelled: the inspector stopped".to_owned()),
            done = tokio::time::timeout(REPLAY_TIMEOUT, send(&tap, &pool, request, &target)) => {
                done.map_err(|_| format!("the replay took longer than {REPLAY_TIMEOUT:?}"))
            }
        };
        let (status, error) = outcome.unwrap_or_else(|error| (0, Some(error)));
        tap.finish(status, error);
    };
    tokio::spawn(task.instrument(debug_span!("replay", of = id, id = replay_id)));
    Ok(replay_id)
}

/// Sends the request and reads the response to its end through the tap;
/// returns the status and what failed, if anything.
async fn send(
    tap: &Watch,
    pool: &LocalPool,
    request: Request<LocalBody>,
    target: &crate::Target,
) -> (u16, Option<String>) {
    let response = match pool.send(target, request).await {
        Ok(response) => response,
        Err(err) => {
            let why = error_chain(&err);
            let text = format!("could not reach the local service at {target}: {why}");
            return (502, Some(text));
        }
    };
    let status = response.status().as_u16();
    tap.response_head(status, response.headers());
    let mut body = tap.response_body(response.into_body());
    while let Some(frame) = body.frame().await {
        if let Err(err) = frame {
            return (
                status,
                Some(format!("response body: {}", error_chain(&err))),
            );
        }
    }
    (status, None)
}
