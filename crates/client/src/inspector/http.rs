//! The inspector's own HTTP server: the page and the JSON API under it.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the page (`page.html`); its style and scripts at `/page.css`, `/page.js`, `/tools.js` |
//! | `GET /api/status` | the session's tunnels (public URL, target, name) and the limits |
//! | `GET /api/requests` | summaries, newest first |
//! | `DELETE /api/requests` | clears the list |
//! | `GET /api/requests.har` | the list as HAR 1.2 |
//! | `GET /api/requests/{id}` | one exchange with heads and bodies |
//! | `POST /api/requests/{id}/replay` | replays it, edited by a JSON body if any (`method`, `path`, `headers`, `body` or `body_base64`); `202` with the replay's id |
//! | `GET /api/events` | Server-Sent Events: `update`, `evict`, `clear`, `resync`, `tunnels` |
//!
//! It shows the tunnels' traffic to whoever can reach it, without a login,
//! so it binds to loopback by default, answers only to loopback names there
//! (a page elsewhere cannot read it through DNS rebinding), and refuses
//! cross-origin writes (a page elsewhere cannot trigger a replay).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{Inspector, feed, har, replay, view};

pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// The page, and its style and scripts: files of their own, so the
/// Content-Security-Policy allows no inline script or style at all.
const PAGE: &str = include_str!("page.html");
const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");
const TOOLS: &str = include_str!("tools.js");

/// Connections served at once. The page holds one or two; this only
/// bounds a runaway script.
const MAX_CONNECTIONS: usize = 64;

/// Ports tried by [`bind`]: the one asked for and the next ones, as ngrok
/// does, so several `cryptun http` on one machine each get an inspector.
pub const BIND_ATTEMPTS: u16 = 10;

/// Why the inspector could not start.
#[derive(Debug, thiserror::Error)]
pub enum InspectorError {
    /// Every port tried was taken (or binding failed otherwise).
    #[error("could not listen on {addr} or the {} ports after it: {source}", BIND_ATTEMPTS - 1)]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The last failure.
        source: std::io::Error,
    },
}

/// Binds `addr`; if its port is taken, the next ones up to
/// [`BIND_ATTEMPTS`] in all. Port 0 takes any free port.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, InspectorError> {
    let attempts = if addr.port() == 0 { 1 } else { BIND_ATTEMPTS };
    let mut last = None;
    for offset in 0..attempts {
        let Some(port) = addr.port().checked_add(offset) else {
            break;
        };
        match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
            Ok(listener) => return Ok(listener),
            Err(err) => last = Some(err),
        }
    }
    Err(InspectorError::Bind {
        addr,
        source: last.unwrap_or_else(|| std::io::Error::other("no port left to try")),
    })
}

/// Serves the inspector for `inspector` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, inspector: Inspector, shutdown: CancellationToken) {
    let local = listener.local_addr().ok();
    let loopback_only = local.is_none_or(|a| a.ip().is_loopback());
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    debug!(%err, "inspector accept failed");
                    continue;
                }
            },
        };
        let (inspector, shutdown) = (inspector.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let stop = shutdown.clone();
            let service = service_fn(move |req| {
                let (inspector, shutdown) = (inspector.clone(), shutdown.clone());
                async move {
                    let refused = guard(&req, loopback_only);
                    Ok::<_, Infallible>(match refused {
                        Some(refused) => refused,
                        None => route(req, &inspector, &shutdown).await,
                    })
                }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

/// Refuses requests from elsewhere: a Host that is not a loopback name
/// when listening on loopback (DNS rebinding), and writes from another
/// origin (a page on another site posting a replay).
fn guard(req: &Request<Incoming>, loopback_only: bool) -> Option<Response<Body>> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if loopback_only && !is_loopback_name(host) {
        let text = format!(
            "the inspector answers only to localhost and loopback addresses, not to Host {host:?}"
        );
        return Some(error(StatusCode::FORBIDDEN, &text));
    }
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD);
    let origin = req.headers().get(header::ORIGIN).map(|o| o.as_bytes());
    if writes && origin.is_some_and(|o| o != format!("http://{host}").as_bytes()) {
        let text = "cross-origin requests may not change the inspector";
        return Some(error(StatusCode::FORBIDDEN, text));
    }
    None
}

/// `localhost`, `*.localhost`, or a loopback IP, with or without a port.
fn is_loopback_name(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn route(
    req: Request<Incoming>,
    inspector: &Inspector,
    shutdown: &CancellationToken,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::GET, [""]) => page(),
        (&Method::GET, ["page.css"]) => asset(STYLE, "text/css; charset=utf-8"),
        (&Method::GET, ["page.js"]) => asset(SCRIPT, "text/javascript; charset=utf-8"),
        (&Method::GET, ["tools.js"]) => asset(TOOLS, "text/javascript; charset=utf-8"),
        (&Method::GET, ["api", "status"]) => json_ok(status(inspector)),
        (&Method::GET, ["api", "requests"]) => {
            let mut list: Vec<Value> = inspector
                .entries()
                .iter()
                .map(|e| view::summary(e))
                .collect();
            list.reverse();
            json_ok(Value::Array(list))
        }
        (&Method::DELETE, ["api", "requests"]) => {
            inspector.clear();
            empty(StatusCode::NO_CONTENT)
        }
        (&Method::GET, ["api", "requests.har"]) => {
            let har = har::export(&inspector.entries(), &inspector.tunnel_infos());
            let mut resp = json_ok(har);
            resp.headers_mut().insert(
                header::CONTENT_DISPOSITION,
                header::HeaderValue::from_static("attachment; filename=\"cryptun.har\""),
            );
            resp
        }
        (&Method::GET, ["api", "requests", id]) => {
            match id.parse().ok().and_then(|id| inspector.get(id)) {
                Some(entry) => json_ok(view::detail(&entry, inspector.limits().max_body)),
                None => error(
                    StatusCode::NOT_FOUND,
                    &format!("no exchange {id:?} in the list"),
                ),
            }
        }
        (&Method::POST, ["api", "requests", id, "replay"]) => {
            let Ok(id) = id.parse::<u64>() else {
                return error(
                    StatusCode::NOT_FOUND,
                    &format!("no exchange {id:?} in the list"),
                );
            };
            let edits = match edits(req.into_body()).await {
                Ok(edits) => edits,
                Err(refused) => return refused,
            };
            match replay::start(inspector, id, edits, shutdown.clone()) {
                Ok(new) => {
                    let mut resp =
                        json_response(StatusCode::ACCEPTED, json!({ "id": new, "replay_of": id }));
                    if let Ok(location) =
                        header::HeaderValue::from_str(&format!("/api/requests/{new}"))
                    {
                        resp.headers_mut().insert(header::LOCATION, location);
                    }
                    resp
                }
                Err(err) => error(err.status(), &err.to_string()),
            }
        }
        (&Method::GET, ["api", "events"]) => feed::events(inspector, shutdown),
        (
            _,
            [""]
            | ["page.css" | "page.js" | "tools.js"]
            | ["api", "status" | "requests" | "requests.har" | "events"]
            | ["api", "requests", _]
            | ["api", "requests", _, "replay"],
        ) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{method} is not allowed on {path}"),
        ),
        _ => error(StatusCode::NOT_FOUND, &format!("no route {path}")),
    }
}

/// The session's tunnels, first one first, and the limits. `public_url`
/// and `target` at the top are the first tunnel's, as before sessions had
/// several; `null` until a session has connected.
fn status(inspector: &Inspector) -> Value {
    let tunnels = inspector.tunnel_infos();
    let limits = inspector.limits();
    let first = tunnels.first();
    let list: Vec<Value> = tunnels
        .iter()
        .map(|t| {
            json!({
                "name": &*t.name,
                "subdomain": t.subdomain,
                "public_url": t.public_url,
                "target": t.target.to_string(),
            })
        })
        .collect();
    json!({
        "public_url": first.map(|t| t.public_url.clone()),
        "target": first.map(|t| t.target.to_string()),
        "tunnels": list,
        "capacity": limits.capacity,
        "max_body": limits.max_body,
        "max_bytes": limits.max_bytes,
        "count": inspector.len(),
        "bytes": inspector.bytes(),
    })
}

/// A replay's edits from its request body: none when empty, else JSON of
/// at most [`replay::MAX_EDITS`] bytes.
async fn edits(body: Incoming) -> Result<replay::Edits, Response<Body>> {
    let limited = http_body_util::Limited::new(body, replay::MAX_EDITS);
    let bytes = match limited.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let text = format!(
                "the replay's edits are larger than {} bytes, or did not arrive whole",
                replay::MAX_EDITS
            );
            return Err(error(StatusCode::PAYLOAD_TOO_LARGE, &text));
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(replay::Edits::default());
    }
    serde_json::from_slice(&bytes).map_err(|err| {
        let text = format!(
            "the replay's edits are not valid: {err} (expected JSON with method, path, headers as [name, value] pairs, body or body_base64)"
        );
        error(StatusCode::BAD_REQUEST, &text)
    })
}

fn page() -> Response<Body> {
    let mut resp = Response::new(full(PAGE));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page shows what visitors sent; even if a bug let that reach the
    // DOM as markup, nothing could load or be sent anywhere else.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    resp
}

/// The page's style or a script, as files of their own.
fn asset(text: &'static str, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(text));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    resp
}

fn json_ok(value: Value) -> Response<Body> {
    json_response(StatusCode::OK, value)
}

fn json_response(status: StatusCode, value: Value) -> Response<Body> {
    let mut resp = Response::new(full(value.to_string()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    resp
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, json!({ "error": message }))
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(full(""));
    *resp.status_mut() = status;
    resp
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::is_loopback_name;

    #[test]
    fn loopback_names() {
        for host in [
            "localhost",
            "localhost:4040",
            "127.0.0.1:4040",
            "[::1]:4040",
            "app.localhost",
            "127.9.9.9",
        ] {
            assert!(is_loopback_name(host), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "evil.example:4040",
            "localhost.evil.example",
            "10.0.0.1:4040",
            "[::2]:1",
        ] {
            assert!(!is_loopback_name(host), "{host}");
        }
    }
}
