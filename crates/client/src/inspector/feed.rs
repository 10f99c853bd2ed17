//! The live feed behind `GET /api/events`: Server-Sent Events telling the
//! page what changed, so it never polls.
//!
//! | event | data | meaning |
//! |---|---|---|
//! | `ready` | `{}` | the feed is live: load the list now |
//! | `update` | an exchange's summary | added, or moved on |
//! | `evict` | `{"id": N}` | left the ring buffer |
//! | `clear` | `{}` | the list was cleared |
//! | `resync` | `{}` | this subscriber fell behind: reload the list |
//! | `tunnels` | `{}` | the session (re)connected: reload `/api/status` |

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::http::Body;
use super::{Change, Inspector, view};

/// An event-stream comment this often lets a closed page be noticed.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The live feed: an event per change, the summary included for updates.
/// A subscriber that falls behind gets `resync` and reloads the list.
pub(crate) fn events(inspector: &Inspector, shutdown: &CancellationToken) -> Response<Body> {
    struct Feed {
        changes: broadcast::Receiver<Change>,
        inspector: Inspector,
        shutdown: CancellationToken,
        keepalive: tokio::time::Interval,
        hello: bool,
    }
    let mut keepalive = tokio::time::interval(KEEPALIVE);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let feed = Feed {
        changes: inspector.subscribe(),
        inspector: inspector.clone(),
        shutdown: shutdown.clone(),
        keepalive,
        hello: true,
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        if std::mem::take(&mut feed.hello) {
            // Reconnect after 2 s if the connection drops; `ready` lets the
            // page know the feed is live before it loads the list.
            let text = "retry: 2000\nevent: ready\ndata: {}\n\n".to_owned();
            return Some((Ok(Frame::data(Bytes::from(text))), feed));
        }
        let text = tokio::select! {
            () = feed.shutdown.cancelled() => return None,
            _ = feed.keepalive.tick() => ": keepalive\n\n".to_owned(),
            change = feed.changes.recv() => match change {
                Ok(Change::Updated(id)) => match feed.inspector.get(id) {
                    Some(entry) => event("update", &view::summary(&entry)),
                    None => event("evict", &json!({ "id": id })),
                },
                Ok(Change::Evicted(id)) => event("evict", &json!({ "id": id })),
                Ok(Change::Cleared) => event("clear", &json!({})),
                Ok(Change::Tunnels) => event("tunnels", &json!({})),
                Err(broadcast::error::RecvError::Lagged(_)) => event("resync", &json!({})),
                Err(broadcast::error::RecvError::Closed) => return None,
            },
        };
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(text))), feed))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed());
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// One Server-Sent Event; JSON has no raw newlines, so `data` is one line.
fn event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}
