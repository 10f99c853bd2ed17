//! A local HTTP service to tunnel to, with routes that exercise the tunnel:
//!
//! | route | answer |
//! |---|---|
//! | `/echo`, `/echo/...` | JSON: method, path, headers (in order), body length and SHA-256 |
//! | `/bytes?n=N` | `N` bytes of [`pattern`](crate::pattern), streamed in 64 KiB chunks |
//! | `/sha256` | reads the body as it streams ([`Origin::uploaded`] counts the bytes); JSON: its length and SHA-256 |
//! | `/delay?ms=N` | `done` after `N` ms |
//! | `/hang` | never answers; [`Origin::dropped`] counts those abandoned |
//! | `/status?code=N` | status `N` |
//! | `/headers` | repeated `set-cookie` and `x-multi` response headers, and its own `strict-transport-security: max-age=60` |
//! | `/stream?chunks=N&interval_ms=M` | `N` chunks, `M` ms apart, chunked |
//! | `/token?t=X` | `X` |
//! | `/zeros?n=N` | `N` zero bytes, streamed from one static buffer (for GiB tests) |
//! | `/answer-first?n=N` | `N` zero bytes at once, while the request body is read to its end on the side ([`Origin::uploaded`] counts it) |

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sha2::Digest;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

type Body = BoxBody<Bytes, Infallible>;

#[derive(Default)]
struct Stats {
    requests: AtomicUsize,
    dropped: AtomicUsize,
    uploaded: AtomicUsize,
    changed: Notify,
}

/// A running origin; stops accepting when dropped.
pub struct Origin {
    pub addr: SocketAddr,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
}

impl Origin {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        let shutdown = CancellationToken::new();
        serve(listener, Arc::clone(&stats), shutdown.clone());
        Origin {
            addr,
            stats,
            shutdown,
        }
    }

    /// The target string for a client: `127.0.0.1:PORT`.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    /// A further tunnel of a session (`ClientConfig::more_tunnels`) to this
    /// origin, named `name` and asking for the subdomain `name`.
    pub fn tunnel(&self, name: &str) -> cryptun_client::TunnelConfig {
        let target = cryptun_client::Target::parse(&self.target()).expect("an origin's address");
        let mut tunnel = cryptun_client::TunnelConfig::new(target);
        tunnel.name = Some(name.into());
        tunnel.subdomain = Some(name.into());
        tunnel
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }

    /// `/hang` requests abandoned by their caller so far.
    pub fn dropped(&self) -> usize {
        self.stats.dropped.load(Ordering::SeqCst)
    }

    /// Waits until `/hang` requests abandoned reach `n` (or `limit` passes).
    pub async fn wait_dropped(&self, n: usize, limit: Duration) -> bool {
        self.wait_until(limit, || self.dropped() >= n).await
    }

    /// Body bytes `/sha256` has read so far, over all its requests.
    pub fn uploaded(&self) -> usize {
        self.stats.uploaded.load(Ordering::SeqCst)
    }

    /// Waits until `/sha256` has read at least `n` bytes (or `limit` passes).
    pub async fn wait_uploaded(&self, n: usize, limit: Duration) -> bool {
        self.wait_until(limit, || self.uploaded() >= n).await
    }

    async fn wait_until(&self, limit: Duration, done: impl Fn() -> bool) -> bool {
        tokio::time::timeout(limit, async {
            loop {
                let changed = self.stats.changed.notified();
                if done() {
                    return;
                }
                changed.await;
            }
        })
        .await
        .is_ok()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Serves `listener` until `shutdown`.
fn serve(listener: TcpListener, stats: Arc<Stats>, shutdown: CancellationToken) {
    crate::accept_until(listener, shutdown, move |stream| {
        let stats = Arc::clone(&stats);
        async move {
            let _ = stream.set_nodelay(true);
            let service = service_fn(move |req| {
                let stats = Arc::clone(&stats);
                async move {
                    stats.requests.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(route(req, stats).await)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    });
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.to_owned())
    })
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed());
    *resp.status_mut() = status;
    resp
}

struct DropCounter(Arc<Stats>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.dropped.fetch_add(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// The table of routes in the module's doc: each answers in a function
/// of its own.
async fn route(req: Request<Incoming>, stats: Arc<Stats>) -> Response<Body> {
    let num = |key: &str, default: u64| {
        query(&req, key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    match req.uri().path() {
        path if path == "/echo" || path.starts_with("/echo/") => echo(req).await,
        "/bytes" => bytes(num("n", 0) as usize),
        "/sha256" => sha256(req.into_body(), &stats).await,
        "/delay" => {
            tokio::time::sleep(Duration::from_millis(num("ms", 0))).await;
            text(StatusCode::OK, "done")
        }
        "/hang" => hang(stats).await,
        "/status" => {
            let code = StatusCode::from_u16(num("code", 200) as u16).unwrap_or(StatusCode::OK);
            text(code, format!("status {}", code.as_u16()))
        }
        "/headers" => headers(),
        "/stream" => stream(
            num("chunks", 3),
            Duration::from_millis(num("interval_ms", 100)),
        ),
        "/token" => text(StatusCode::OK, query(&req, "t").unwrap_or_default()),
        "/answer-first" => {
            let n = num("n", 0);
            answer_first(req.into_body(), n, stats)
        }
        "/zeros" => zeros(num("n", 0)),
        _ => text(StatusCode::NOT_FOUND, "origin: no such route"),
    }
}

/// `/echo`: the request as JSON (method, path, headers in order, body
/// length and SHA-256).
async fn echo(req: Request<Incoming>) -> Response<Body> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json = serde_json::json!({
        "method": method,
        "path": path,
        "headers": headers,
        "body_len": body.len(),
        "body_sha256": crate::sha256_hex(&body),
    });
    let mut resp = text(StatusCode::OK, json.to_string());
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    resp
}

/// `/bytes`: `n` bytes of [`pattern`](crate::pattern), in 64 KiB chunks.
fn bytes(n: usize) -> Response<Body> {
    // Each chunk is made as it is sent: a large body neither sits
    // in memory nor blocks the runtime while it is generated.
    let chunks = (0..n).step_by(64 << 10).map(move |i| {
        let chunk = pattern_range(i, n.min(i + (64 << 10)));
        Ok::<_, Infallible>(Frame::data(Bytes::from(chunk)))
    });
    let stream = futures_util::stream::iter(chunks);
    let mut resp = Response::new(StreamBody::new(stream).boxed());
    resp.headers_mut().insert("content-length", n.into());
    resp
}

/// `/sha256`: hashes `body` as it streams, counting its bytes in
/// `stats.uploaded`; answers its length and SHA-256 as JSON.
async fn sha256(mut body: Incoming, stats: &Stats) -> Response<Body> {
    let mut hasher = sha2::Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    len += data.len() as u64;
                    hasher.update(&data);
                    stats.uploaded.fetch_add(data.len(), Ordering::SeqCst);
                    stats.changed.notify_waiters();
                }
            }
            Err(err) => return text(StatusCode::BAD_REQUEST, format!("body error: {err}")),
        }
    }
    let json = serde_json::json!({ "len": len, "sha256": crate::hex(&hasher.finalize()) });
    text(StatusCode::OK, json.to_string())
}

/// `/hang`: never answers; counted in `stats.dropped` when abandoned.
async fn hang(stats: Arc<Stats>) -> Response<Body> {
    let _counter = DropCounter(stats);
    std::future::pending::<()>().await;
    unreachable!()
}

/// `/headers`: repeated `set-cookie` and `x-multi`, interleaved, and an
/// HSTS policy of the service's own.
fn headers() -> Response<Body> {
    let mut resp = text(StatusCode::OK, "headers");
    let h = resp.headers_mut();
    h.append("set-cookie", "a=1".parse().unwrap());
    h.append("x-multi", "1".parse().unwrap());
    h.append("set-cookie", "b=2".parse().unwrap());
    h.append("x-multi", "2".parse().unwrap());
    h.append("strict-transport-security", "max-age=60".parse().unwrap());
    resp
}

/// `/stream`: `chunks` lines, `interval` apart, as an event stream.
fn stream(chunks: u64, interval: Duration) -> Response<Body> {
    let stream = futures_util::stream::unfold(0u64, move |i| async move {
        if i >= chunks {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(interval).await;
        }
        Some((
            Ok::<_, Infallible>(Frame::data(Bytes::from(format!("chunk {i}\n")))),
            i + 1,
        ))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed());
    resp.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    resp
}

/// `/answer-first`: `n` zero bytes at once, while `body` is read to its
/// end on the side (counted in `stats.uploaded`). Like a service that
/// streams its answer while it still reads the upload (a transcoder, an
/// echo): the two directions progress independently.
fn answer_first(mut body: Incoming, n: u64, stats: Arc<Stats>) -> Response<Body> {
    tokio::spawn(async move {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                stats.uploaded.fetch_add(data.len(), Ordering::SeqCst);
                stats.changed.notify_waiters();
            }
        }
    });
    zeros(n)
}

/// `n` zero bytes, streamed from one static buffer, with `content-length`.
fn zeros(n: u64) -> Response<Body> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let stream = futures_util::stream::unfold(0u64, move |sent| async move {
        (sent < n).then(|| {
            let len = (n - sent).min(ZEROS.len() as u64) as usize;
            (
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(&ZEROS[..len]))),
                sent + len as u64,
            )
        })
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed());
    resp.headers_mut().insert("content-length", n.into());
    resp
}

/// Bytes `start..end` of [`pattern`](crate::pattern).
fn pattern_range(start: usize, end: usize) -> Vec<u8> {
    (start..end)
        .map(|i| ((i * 7 + i / 251) % 256) as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn pattern_range_is_a_slice_of_pattern() {
        let whole = crate::pattern(200_000);
        for (start, end) in [(0, 0), (0, 1000), (65_536, 131_072), (199_999, 200_000)] {
            assert_eq!(super::pattern_range(start, end), &whole[start..end]);
        }
    }
}
