//! Visitors: HTTP requests to the server's address with any Host header,
//! and raw sockets for byte-level tests.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A pooled HTTP client aimed at one server.
#[derive(Clone)]
pub struct Visitor {
    pub server: SocketAddr,
    http: Client<HttpConnector, Full<Bytes>>,
    /// Sent as `Authorization: Bearer` by [`tunnels`](Self::tunnels).
    admin_token: Option<String>,
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

impl Visitor {
    pub fn new(server: SocketAddr) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Visitor {
            server,
            http: Client::builder(TokioExecutor::new()).build(connector),
            admin_token: None,
        }
    }

    /// The same visitor, presenting `token` to the admin API.
    pub fn with_admin_token(mut self, token: &str) -> Self {
        self.admin_token = Some(token.to_owned());
        self
    }

    /// A request builder for `path` on `host`, aimed at the server.
    pub fn builder(&self, method: &str, host: &str, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.server))
            .header("host", host)
    }

    /// Sends `req` and returns the response with its body still streaming.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> http::Response<Incoming> {
        self.try_send(req).await.expect("request failed")
    }

    /// [`send`](Self::send), a failure returned rather than failing the
    /// test (a chaos run counts them).
    pub async fn try_send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<http::Response<Incoming>, hyper_util::client::legacy::Error> {
        self.http.request(req).await
    }

    /// Sends `req` and reads the whole response.
    pub async fn fetch(&self, req: Request<Full<Bytes>>) -> Reply {
        let resp = self.send(req).await;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .expect("response body failed")
            .to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// `GET path` on `host`.
    pub async fn get(&self, host: &str, path: &str) -> Reply {
        self.fetch(
            self.builder("GET", host, path)
                .body(Full::default())
                .unwrap(),
        )
        .await
    }

    /// `METHOD path` on `host` with `body`.
    pub async fn call(
        &self,
        method: &str,
        host: &str,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Reply {
        self.fetch(
            self.builder(method, host, path)
                .body(Full::new(body.into()))
                .unwrap(),
        )
        .await
    }

    /// `GET path` on the server's own host, with the admin token if set.
    pub async fn admin_get(&self, path: &str) -> Reply {
        let mut req = self.builder("GET", &format!("localhost:{}", self.server.port()), path);
        if let Some(token) = &self.admin_token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        self.fetch(req.body(Full::default()).unwrap()).await
    }

    /// The server's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let reply = self
            .get(&format!("localhost:{}", self.server.port()), "/metrics")
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.text()
    }

    /// The value of the sample `series` (name and labels exactly as
    /// exposed) in the server's `/metrics`, or 0 if it is absent.
    pub async fn metric(&self, series: &str) -> f64 {
        sample(&self.metrics().await, series)
    }

    /// The server's `/api/tunnels`.
    pub async fn tunnels(&self) -> Vec<serde_json::Value> {
        let reply = self.admin_get("/api/tunnels").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json().as_array().cloned().unwrap_or_default()
    }
}

/// The value of the sample `series` in a metrics page, or 0 if absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Writes `request` bytes on a new connection to `addr` and reads until the
/// server closes or `limit` passes; returns what was read.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> String {
    exchange_on(TcpStream::connect(addr).await.unwrap(), request, limit).await
}

/// [`raw_exchange`] from the loopback address `source`.
pub async fn raw_exchange_from(
    source: IpAddr,
    addr: SocketAddr,
    request: &[u8],
    limit: Duration,
) -> String {
    exchange_on(connect_from(source, addr).await, request, limit).await
}

async fn exchange_on(mut stream: TcpStream, request: &[u8], limit: Duration) -> String {
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A connection to `addr` from `source`, an IPv4 loopback address: on
/// Linux every 127.x.y.z is the local machine, so tests can be visitors
/// from as many addresses as they like.
pub async fn connect_from(source: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source, 0))
        .unwrap_or_else(|e| panic!("cannot bind {source}: {e}"));
    tokio::time::timeout(crate::LIMIT, socket.connect(addr))
        .await
        .expect("connect timed out")
        .unwrap()
}

/// The status code of a raw response (0 if there is none).
pub fn status_of(raw: &str) -> u16 {
    raw.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// A response read off a raw socket by [`read_response`].
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Names lowercased, values trimmed, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked if it was chunked.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut found = self.headers.iter().filter(|(n, _)| n == name);
        found.next().map(|(_, v)| v.as_str())
    }
}

/// Reads one HTTP/1.1 response with a Content-Length or chunked body from
/// a raw connection, leaving it ready for the next response; panics if the
/// connection ends first. Bound it with a timeout.
pub async fn read_response(r: &mut (impl AsyncBufRead + Unpin)) -> RawResponse {
    async fn line(r: &mut (impl AsyncBufRead + Unpin)) -> String {
        let mut buf = Vec::new();
        r.read_until(b'\n', &mut buf).await.unwrap();
        assert!(buf.ends_with(b"\n"), "connection closed mid-response");
        String::from_utf8_lossy(&buf).trim_end().to_owned()
    }
    let status_line = line(r).await;
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok());
    let status = status.unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let l = line(r).await;
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':').unwrap();
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    let mut resp = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    if let Some(len) = resp.header("content-length") {
        resp.body.resize(len.parse().unwrap(), 0);
        r.read_exact(&mut resp.body).await.unwrap();
    } else if resp
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let size = line(r).await;
            let size = usize::from_str_radix(size.split(';').next().unwrap(), 16).unwrap();
            if size == 0 {
                while !line(r).await.is_empty() {}
                break;
            }
            let start = resp.body.len();
            resp.body.resize(start + size, 0);
            r.read_exact(&mut resp.body[start..]).await.unwrap();
            line(r).await;
        }
    }
    resp
}
