//! Trailers through the tunnel (`trailers`, docs/PROTOCOL.md §5.6): a
//! visitor's request trailers reach the local service and the service's
//! response trailers reach the visitor, over HTTP/2 and HTTP/1.1 chunked;
//! a hand-written client sees them as TRAILERS frames, and the server
//! refuses what breaks the rules (a frame nobody negotiated, a payload that
//! does not parse: 1002; fields no header may have: that stream alone).
//! Then gRPC, end to end: a real gRPC service (Debian's `python3-grpcio`)
//! behind `--upstream h2c`, called through the public HTTPS URL by a real
//! gRPC client: unary, an error status with its metadata, bidirectional
//! ping-pong, and a server stream outlasting every idle timeout.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use cryptun_client::Upstream;
use cryptun_server::Config;
use cryptun_testkit::raw::{WAIT, frame, header_list};
use cryptun_testkit::{Proc, RawWs, TestClient, TestRedis, TestServer, sha256_hex};
use http::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::http2::h2c_server;

const DATA: u8 = 0;
const TRAILERS: u8 = 5;

/// What an HTTP/2 visitor got: status, the header `x-te` the service saw,
/// the body, and the trailers.
struct Got {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

/// POSTs `chunks` to `host` over a new h2c connection to `addr` (the `h2`
/// crate: it sends what it is told), with `te: trailers` if `te`, ending
/// the body with `trailers` if given.
async fn h2_post(
    addr: SocketAddr,
    host: &str,
    te: bool,
    chunks: &[&'static [u8]],
    trailers: Option<HeaderMap>,
) -> Result<Got, h2::Error> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await?;
    tokio::spawn(connection);
    let mut send = send.ready().await?;
    let mut req = http::Request::post(format!("http://{host}/sum"));
    if te {
        req = req.header("te", "trailers");
    }
    let (resp, mut body) = send.send_request(req.body(()).unwrap(), false)?;
    for chunk in chunks {
        body.send_data(Bytes::from_static(chunk), false)?;
    }
    match trailers {
        Some(trailers) => body.send_trailers(trailers)?,
        None => body.send_data(Bytes::new(), true)?,
    }
    let resp = tokio::time::timeout(WAIT, resp).await.unwrap()?;
    let (parts, mut recv) = resp.into_parts();
    let mut all = BytesMut::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        all.extend_from_slice(&chunk);
    }
    Ok(Got {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: all.freeze(),
        trailers: recv.trailers().await?,
    })
}

fn map(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

/// An HTTP/2-only local service (h2c) that reads the whole request and
/// answers its body's digest, the request trailer `x-check` and the `te`
/// it saw, as trailers after a body of its own (known length, so the
/// client's small-response path carries it).
async fn h2_summing_service() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let te = header_text(req.headers(), "te");
                    let got = req.into_body().collect().await?;
                    let check = got
                        .trailers()
                        .map_or("none".into(), |t| header_text(t, "x-check"));
                    let digest = sha256_hex(&got.to_bytes());
                    let trailers =
                        map(&[("x-digest", &digest), ("x-check", &check), ("x-te", &te)]);
                    let body = Full::new(Bytes::from_static(b"summed"))
                        .with_trailers(std::future::ready(Some(Ok(trailers))));
                    Ok::<_, hyper::Error>(http::Response::new(body))
                });
                let h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                let _ = h2.serve_connection(TokioIo::new(tcp), service).await;
            });
        }
    });
    addr
}

fn header_text(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trailers_cross_both_ways_between_an_http2_visitor_and_an_http2_service() {
    let server = h2c_server().await;
    let service = h2_summing_service().await;
    let client = TestClient::start_with(&server, &service.to_string(), |c| {
        c.tunnel.target.set_upstream(Upstream::H2c).unwrap();
    })
    .await
    .unwrap();
    assert!(
        client
            .tunnel
            .capabilities
            .contains(cryptun_proto::Capability::Trailers),
        "the real client and server speak trailers"
    );
    let host = server.host_of(&client.tunnel.subdomain);
    let got = h2_post(
        server.addr,
        &host,
        true,
        &[b"hello ", b"world"],
        Some(map(&[("x-check", "42")])),
    )
    .await
    .unwrap();
    assert_eq!((got.status, &got.body[..]), (200, &b"summed"[..]));
    let trailers = got.trailers.expect("the service's trailers");
    assert_eq!(trailers["x-digest"], sha256_hex(b"hello world"));
    assert_eq!(trailers["x-check"], "42", "the visitor's trailer arrived");
    assert_eq!(trailers["x-te"], "trailers", "te: trailers went through");
    assert_eq!(got.headers["content-length"], "6");

    // A visitor that does not say it takes trailers: no te reaches the
    // service (HTTP/2 visitors get the trailers all the same).
    let got = h2_post(server.addr, &host, false, &[b"x"], None)
        .await
        .unwrap();
    let trailers = got.trailers.expect("trailers on HTTP/2 regardless");
    assert_eq!(trailers["x-te"], "none");
    assert_eq!(trailers["x-check"], "none");
}

/// An HTTP/1.1 local service answering with a chunked body that announces
/// `Trailer: x-digest` and ends with it.
async fn h1_trailing_service() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_req: http::Request<hyper::body::Incoming>| async {
                    let frames: Vec<Result<Frame<Bytes>, hyper::Error>> = vec![
                        Ok(Frame::data(Bytes::from_static(b"part one, "))),
                        Ok(Frame::data(Bytes::from_static(b"part two"))),
                        Ok(Frame::trailers(map(&[("x-digest", "d1g3st")]))),
                    ];
                    let body = StreamBody::new(futures_util::stream::iter(frames));
                    let resp = http::Response::builder()
                        .header("trailer", "x-digest")
                        .body(body)
                        .unwrap();
                    Ok::<_, hyper::Error>(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

/// The raw HTTP/1.1 response `host` gives a GET, with `TE: trailers` if
/// `te`.
async fn h1_get(addr: SocketAddr, host: &str, te: bool) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let te = if te { "TE: trailers\r\n" } else { "" };
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n{te}Connection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&raw).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_http1_visitor_gets_the_trailers_it_asked_for_in_the_chunked_body() {
    let server = TestServer::start().await;
    let service = h1_trailing_service().await;
    let client = TestClient::start(&server, &service.to_string()).await;
    let host = server.host_of(&client.tunnel.subdomain);
    let asked = h1_get(server.addr, &host, true).await;
    assert!(asked.starts_with("HTTP/1.1 200"), "{asked}");
    assert!(
        asked.contains("transfer-encoding: chunked"),
        "chunked, to carry trailers: {asked}"
    );
    assert!(
        asked.ends_with("\r\n0\r\nx-digest: d1g3st\r\n\r\n"),
        "the trailer ends the body: {asked:?}"
    );
    assert!(asked.contains("part one, ") && asked.contains("part two"));
    // Not asked for: the body alone (HTTP/1.1 sends trailers only to
    // those who take them).
    let unasked = h1_get(server.addr, &host, false).await;
    assert!(unasked.ends_with("\r\n0\r\n\r\n"), "{unasked:?}");
    assert!(!unasked.contains("x-digest: d1g3st"), "{unasked}");
}

// ---- a hand-written client ------------------------------------------------

/// A TRAILERS frame for `stream` as the doc lays it out.
fn trailers_frame(stream: u32, fields: &[(&str, &str)]) -> Message {
    frame(TRAILERS, stream, &header_list(fields))
}

/// Reads a header list as the doc lays it out.
fn read_header_list(mut buf: Bytes) -> Vec<(String, String)> {
    let count = buf.get_u16();
    let text = |buf: &mut Bytes, len: usize| String::from_utf8(buf.split_to(len).to_vec());
    let fields = (0..count)
        .map(|_| {
            let len = buf.get_u16().into();
            let name = text(&mut buf, len).unwrap();
            let len = buf.get_u32() as usize;
            (name, text(&mut buf, len).unwrap())
        })
        .collect();
    assert!(buf.is_empty(), "nothing after the list");
    fields
}

/// A tunnel on `server` from a hand-written client offering
/// `capabilities` (JSON heads), and its host.
async fn raw_tunnel(server: &TestServer, capabilities: &[&str]) -> (RawWs, Value, String) {
    let (ws, created) = RawWs::tunnel(server, json!({ "capabilities": capabilities })).await;
    let host = server.host_of(created["subdomain"].as_str().unwrap());
    (ws, created, host)
}

/// The next `request` message, skipping the request body's frames.
async fn next_request(ws: &mut RawWs) -> Value {
    loop {
        if let Message::Text(text) = ws.recv().await {
            let msg: Value = serde_json::from_str(&text).unwrap();
            if msg["type"] == "request" {
                return msg;
            }
        }
    }
}

fn has_header(request: &Value, name: &str, value: &str) -> bool {
    request["request"]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|pair| pair[0] == name && pair[1] == value)
}

/// Answers `request` with a streamed body `ok`, then `last`.
async fn answer_with(ws: &mut RawWs, request: &Value, last: Message) {
    let id = &request["request_id"];
    ws.respond(
        id,
        json!({ "status": 200, "headers": [], "body_stream": true }),
    )
    .await;
    ws.send(frame(DATA, id.as_u64().unwrap() as u32, b"ok"))
        .await;
    ws.send(last).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_speaks_trailers_gets_te_and_trailers_frames_both_ways() {
    let server = h2c_server().await;
    let (mut ws, created, host) = raw_tunnel(&server, &["binary_streams", "trailers"]).await;
    assert_eq!(
        created["capabilities"],
        json!(["binary_streams", "trailers"])
    );
    let addr = server.addr;
    let visitor = {
        let host = host.clone();
        tokio::spawn(async move {
            let trailers = map(&[("x-check", "7"), ("proxy-authorization", "Basic c2VjcmV0")]);
            h2_post(addr, &host, true, &[b"body"], Some(trailers)).await
        })
    };
    let request = next_request(&mut ws).await;
    assert!(has_header(&request, "te", "trailers"), "{request}");
    let id = request["request_id"].as_u64().unwrap() as u32;
    // The request body, then its trailers, hop-by-hop fields left out.
    let mut body = Vec::new();
    let fields = loop {
        let Message::Binary(mut bytes) = ws.recv().await else {
            continue;
        };
        let (kind, stream) = (bytes.get_u8(), bytes.get_u32());
        assert_eq!(stream, id);
        match kind {
            DATA => body.extend_from_slice(&bytes),
            TRAILERS => break read_header_list(bytes),
            other => panic!("unexpected frame kind {other}"),
        }
    };
    assert_eq!(body, b"body");
    assert_eq!(fields, [("x-check".to_owned(), "7".to_owned())]);
    let request = json!({ "request_id": id });
    let last = trailers_frame(id, &[("grpc-status", "0"), ("grpc-message", "fine")]);
    answer_with(&mut ws, &request, last).await;
    let got = visitor.await.unwrap().unwrap();
    assert_eq!((got.status, &got.body[..]), (200, &b"ok"[..]));
    let trailers = got.trailers.unwrap();
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "fine");
    assert!(got.headers.get("te").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broken_trailers_fail_their_stream_or_close_the_session() {
    let server = h2c_server().await;
    let (mut ws, _, host) = raw_tunnel(&server, &["binary_streams", "trailers"]).await;
    let limit = server.config.limits.max_headers;
    let too_many: Vec<(String, String)> = (0..=limit)
        .map(|i| (format!("x-{i}"), "v".to_owned()))
        .collect();
    let too_many: Vec<(&str, &str)> = too_many
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    // Fields no header may have, or more than the session's limit: that
    // visitor's response breaks off, and the session serves on.
    for bad in [
        vec![("bad name", "v")],
        vec![("x-ok", "line\r\nbreak")],
        too_many,
    ] {
        let addr = server.addr;
        let pending = {
            let host = host.clone();
            tokio::spawn(async move { h2_post(addr, &host, true, &[], None).await })
        };
        let request = next_request(&mut ws).await;
        let id = request["request_id"].as_u64().unwrap() as u32;
        answer_with(&mut ws, &request, trailers_frame(id, &bad)).await;
        let got = pending.await.unwrap();
        assert!(
            got.is_err() || got.as_ref().is_ok_and(|g| g.trailers.is_none()),
            "{bad:?}: the visitor saw no trailers"
        );
        if let Err(err) = got {
            assert!(err.is_reset() || err.is_io() || err.is_go_away(), "{err}");
        }
    }
    let pending = {
        let host = host.clone();
        let addr = server.addr;
        tokio::spawn(async move { h2_post(addr, &host, true, &[], None).await })
    };
    let request = next_request(&mut ws).await;
    let id = request["request_id"].as_u64().unwrap() as u32;
    answer_with(&mut ws, &request, trailers_frame(id, &[("x-fine", "1")])).await;
    let got = pending.await.unwrap().unwrap();
    assert_eq!(
        got.trailers.unwrap()["x-fine"],
        "1",
        "the session serves on"
    );

    // A payload that is not a header list: the session closes, 1002.
    let mut cut = header_list(&[("x-a", "b")]);
    cut.pop();
    let code = ws.send_expecting_close(frame(TRAILERS, 99, &cut)).await;
    assert_eq!(code, 1002);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_without_trailers_gets_no_te_an_end_and_may_send_none() {
    let server = h2c_server().await;
    let (mut ws, created, host) = raw_tunnel(&server, &["binary_streams"]).await;
    assert_eq!(created["capabilities"], json!(["binary_streams"]));
    let addr = server.addr;
    let visitor = {
        let host = host.clone();
        tokio::spawn(async move {
            let trailers = map(&[("x-check", "7")]);
            h2_post(addr, &host, true, &[b"body"], Some(trailers)).await
        })
    };
    let request = next_request(&mut ws).await;
    assert!(!request.to_string().contains("\"te\""), "{request}");
    let id = request["request_id"].as_u64().unwrap() as u32;
    // The body ends with END (kind 1): the trailers are dropped.
    let mut kinds = Vec::new();
    while kinds.last() != Some(&1) {
        if let Message::Binary(bytes) = ws.recv().await {
            kinds.push(bytes[0]);
        }
    }
    assert!(!kinds.contains(&TRAILERS), "{kinds:?}");
    // A TRAILERS frame it did not negotiate closes its session, 1002.
    let request = json!({ "request_id": id });
    let code = {
        ws.respond(
            &request["request_id"],
            json!({ "status": 200, "headers": [], "body_stream": true }),
        )
        .await;
        ws.send_expecting_close(trailers_frame(id, &[("grpc-status", "0")]))
            .await
    };
    assert_eq!(code, 1002);
    drop(visitor);
}

// ---- gRPC ------------------------------------------------------------------

/// Debian's Python, which `python3-grpcio` installs into (a `python3`
/// earlier on the PATH, from pyenv say, would not have it).
fn debian_python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn peer_script() -> String {
    format!("{}/tests/e2e/grpc/peer.py", env!("CARGO_MANIFEST_DIR"))
}

/// The gRPC service, killed when dropped, and its port.
fn grpc_service() -> (Proc, u16) {
    let mut cmd = Command::new(debian_python());
    cmd.arg(peer_script()).arg("serve");
    let service = Proc::start(cmd);
    let port = service.line();
    let port = port
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("a port, not {port:?}: is python3-grpcio installed?"));
    (service, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_works_end_to_end_through_the_public_https_url() {
    // Short timeouts, so that the calls below outlast each: a request body
    // may idle 1 s, a connection without streams 1 s, a response head may
    // take 3 s; the stream runs 8 messages 0.6 s apart, the ping-pong
    // pauses 1.2 s.
    let interval = 0.6;
    let server = TestServer::start_tls(Config {
        body_read_timeout: Duration::from_secs(1),
        header_read_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(3),
        ..TestServer::test_config()
    })
    .await;
    let (_service, port) = grpc_service();
    let client = TestClient::start_with(&server, &format!("127.0.0.1:{port}"), |c| {
        c.tunnel.target.set_upstream(Upstream::H2c).unwrap();
    })
    .await
    .unwrap();
    let tls = server.tls.as_ref().unwrap();
    let authority = format!("{}.{}", client.tunnel.subdomain, server.config.domain);
    grpc_calls(tls.addr, &authority, Some(&tls.ca), interval).await;
}

/// Runs every gRPC check of `peer.py` against `addr` for `authority`
/// (over TLS trusting `ca`, else cleartext), failing the test with what it
/// said if one fails.
async fn grpc_calls(addr: SocketAddr, authority: &str, ca: Option<&Path>, interval: f64) {
    let mut cmd = Command::new("timeout");
    cmd.args(["60", debian_python(), &peer_script(), "call"])
        .arg(addr.to_string())
        .arg(authority)
        .arg(ca.map_or("-".into(), |ca| ca.display().to_string()))
        .arg(interval.to_string());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}\n{errors}");
    for check in ["unary", "status", "bidi", "stream"] {
        assert!(said.contains(&format!("ok {check}:")), "{check}: {said}");
    }
}

/// Node `name` of a cluster on `redis`, taking h2c.
fn node(redis: &TestRedis, name: &str) -> Config {
    Config {
        h2c: true,
        ..TestServer::cluster_config(&redis.url(), name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_works_through_a_node_that_does_not_hold_the_tunnel() {
    // The serving node waits 1 s at most for a request body's bytes; the
    // ping-pong pauses 1.2 s, and each message is answered before the next.
    let redis = TestRedis::start();
    let short = |name| Config {
        body_read_timeout: Duration::from_secs(1),
        ..node(&redis, name)
    };
    let a = TestServer::start_with(short("a")).await;
    let b = TestServer::start_with(short("b")).await;
    let (_service, port) = grpc_service();
    let client = TestClient::start_with(&a, &format!("127.0.0.1:{port}"), |c| {
        c.tunnel.target.set_upstream(Upstream::H2c).unwrap();
    })
    .await
    .unwrap();
    // Through node b, which forwards over the hop to a.
    let authority = b.host_of(&client.tunnel.subdomain);
    grpc_calls(b.addr, &authority, None, 0.6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn trailers_cross_the_hop_as_one_node_would_give_them() {
    let redis = TestRedis::start();
    let a = TestServer::start_with(node(&redis, "a")).await;
    let b = TestServer::start_with(node(&redis, "b")).await;
    // An HTTP/1.1 service announcing its trailer, to HTTP/1.1 visitors of
    // the other node: with TE, the trailer; without, none.
    let service = h1_trailing_service().await;
    let client = TestClient::start(&a, &service.to_string()).await;
    let host = b.host_of(&client.tunnel.subdomain);
    let asked = h1_get(b.addr, &host, true).await;
    assert!(
        asked.ends_with("\r\n0\r\nx-digest: d1g3st\r\n\r\n"),
        "{asked:?}"
    );
    assert!(asked.contains("trailer: x-digest\r\n"), "{asked}");
    assert!(
        !asked.contains("x-cryptun"),
        "nothing of the hop's: {asked}"
    );
    let unasked = h1_get(b.addr, &host, false).await;
    assert!(unasked.ends_with("\r\n0\r\n\r\n"), "{unasked:?}");
    // An HTTP/2 service's trailers, named nowhere, to an HTTP/2 visitor;
    // the service sees `te` only from a visitor who sent it.
    let service = h2_summing_service().await;
    let client = TestClient::start_with(&a, &service.to_string(), |c| {
        c.tunnel.target.set_upstream(Upstream::H2c).unwrap();
    })
    .await
    .unwrap();
    let host = b.host_of(&client.tunnel.subdomain);
    for te in [true, false] {
        let got = h2_post(b.addr, &host, te, &[b"hello ", b"world"], None)
            .await
            .unwrap();
        let trailers = got
            .trailers
            .expect("the service's trailers, through the hop");
        assert_eq!(trailers["x-digest"], sha256_hex(b"hello world"));
        assert_eq!(trailers["x-te"], if te { "trailers" } else { "none" });
        assert!(got.headers.get("trailer").is_none(), "{:?}", got.headers);
        assert_eq!(got.headers["content-length"], "6", "its length kept");
    }
}
