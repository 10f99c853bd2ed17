//! Limits with the right status, over raw sockets: request bodies over the
//! server's or the tunnel's size get 413 (before reading when the length is
//! declared); a stalled head or body ends its own connection (408 or close)
//! while other visitors are served; and a local app that answers garbage
//! gives its visitor 502, never a corrupted response.

use std::time::Duration;

use cryptun_client::ClientConfig;
use cryptun_testkit::raw::RawWs;
use cryptun_testkit::visitor::status_of;
use cryptun_testkit::{Origin, TestClient, TestServer, Visitor, sha256_hex, within};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn client_with(
    server: &TestServer,
    origin: &Origin,
    adjust: impl FnOnce(&mut ClientConfig),
) -> TestClient {
    let target = origin.target();
    let started = TestClient::start_with(server, &target, adjust);
    within("tunnel", started).await.unwrap()
}

/// Writes `request` on a new connection and reads until the server closes it.
async fn until_close(server: &TestServer, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = within("the server closes", stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A chunked upload of `total` bytes in 500-byte chunks to `/sha256`, the
/// connection to close after it.
fn chunked_upload(host: &str, total: usize) -> Vec<u8> {
    let mut request = format!(
        "POST /sha256 HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    let mut left = total;
    while left > 0 {
        let n = left.min(500);
        request.extend_from_slice(format!("{n:x}\r\n{}\r\n", "b".repeat(n)).as_bytes());
        left -= n;
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let mut config = TestServer::test_config();
    config.max_body_size = Some(1000);
    let server = TestServer::start_with(config).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    assert_eq!(client.tunnel.max_body_size, Some(1000));
    let h = &client.host;

    // Declared too long: refused before the body is asked for.
    let head = format!(
        "POST /sha256 HTTP/1.1\r\nHost: {h}\r\nContent-Length: 1001\r\nExpect: 100-continue\r\n\r\n"
    );
    let reply = until_close(&server, head.as_bytes()).await;
    assert_eq!(status_of(&reply), 413, "{reply}");
    assert!(!reply.contains("100 Continue"), "{reply}");
    assert!(reply.contains("connection: close"), "{reply}");
    assert_eq!(origin.requests(), 0);

    // Chunked: cut off at the first byte over.
    let reply = until_close(&server, &chunked_upload(h, 1001)).await;
    assert_eq!(status_of(&reply), 413, "{reply}");
    assert!(reply.contains("body_too_large"), "{reply}");

    // Exactly the limit passes, both ways of framing it.
    let visitor = Visitor::new(server.addr);
    let fits = within("fits", visitor.call("POST", h, "/sha256", vec![b'b'; 1000])).await;
    assert_eq!(fits.status, 200, "{}", fits.text());
    assert_eq!(fits.json()["sha256"], sha256_hex(&[b'b'; 1000]));
    let chunked = chunked_upload(h, 1000);
    let reply = until_close(&server, &chunked).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
}

#[tokio::test]
async fn a_tunnel_may_ask_for_a_smaller_body_limit_only() {
    let mut config = TestServer::test_config();
    config.max_body_size = Some(1000);
    let server = TestServer::start_with(config).await;
    let origin = Origin::start().await;
    let small = client_with(&server, &origin, |c| c.tunnel.max_body_size = Some(100)).await;
    let big = client_with(&server, &origin, |c| c.tunnel.max_body_size = Some(5000)).await;
    assert_eq!(small.tunnel.max_body_size, Some(100));
    assert_eq!(big.tunnel.max_body_size, Some(1000), "capped by the server");
    let visitor = Visitor::new(server.addr);
    let post = |host: &String, n: usize| {
        let (visitor, host) = (visitor.clone(), host.clone());
        async move { visitor.call("POST", &host, "/sha256", vec![0; n]).await }
    };
    assert_eq!(within("small", post(&small.host, 100)).await.status, 200);
    assert_eq!(within("small", post(&small.host, 101)).await.status, 413);
    assert_eq!(within("big", post(&big.host, 1000)).await.status, 200);
    assert_eq!(within("big", post(&big.host, 1001)).await.status, 413);

    // JSON-only clients too: their limit is the smaller of the inline one
    // and the body limit.
    let (mut ws, created) = RawWs::tunnel(&server, json!({"max_body_size": 10})).await;
    assert_eq!(created["max_body_size"], 10);
    let host = server.host_of(created["subdomain"].as_str().unwrap());
    let refused = within("json", post(&host, 11)).await;
    assert_eq!(refused.status, 413, "{}", refused.text());
    let pending = tokio::spawn({
        let visitor = visitor.clone();
        async move { visitor.call("POST", &host, "/fits", vec![1; 10]).await }
    });
    let req = ws.recv_type("request").await;
    assert_eq!(
        req["request"]["path"], "/fits",
        "the refused one never came"
    );
    ws.respond(&req["request_id"], json!({"status": 204})).await;
    assert_eq!(within("fits", pending).await.unwrap().status, 204);
}

/// Whether the server has closed `stream` or sent anything on it yet.
fn still_waiting(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(stream.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// A server whose visitors have 2 s to send a head or the next body bytes.
async fn impatient() -> (TestServer, Origin, TestClient) {
    let mut config = TestServer::test_config();
    config.header_read_timeout = Duration::from_secs(2);
    config.body_read_timeout = Duration::from_secs(2);
    let server = TestServer::start_with(config).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    (server, origin, client)
}

#[tokio::test]
async fn a_stalled_head_closes_only_its_own_connection() {
    let (server, _origin, client) = impatient().await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    let partial = format!("GET /token?t=slow HTTP/1.1\r\nHost: {}\r\n", client.host);
    slow.write_all(partial.as_bytes()).await.unwrap();
    // Others are served meanwhile, and the slow one is still waiting.
    let visitor = Visitor::new(server.addr);
    let other = within("other", visitor.get(&client.host, "/token?t=other")).await;
    assert_eq!(other.text(), "other");
    assert!(
        still_waiting(&slow),
        "the slow head was cut before the others ran"
    );
    // Then the slow connection is closed (with or without a 408).
    let mut out = Vec::new();
    let _ = within("slow head closed", slow.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.is_empty() || status_of(&out) == 408, "{out}");
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_others_are_served() {
    let (server, origin, client) = impatient().await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /sha256 HTTP/1.1\r\nHost: {}\r\nContent-Length: 100\r\n\r\n0123456789",
        client.host
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let visitor = Visitor::new(server.addr);
    let other = within("other", visitor.get(&client.host, "/token?t=other")).await;
    assert_eq!(other.text(), "other");
    assert!(
        still_waiting(&slow),
        "the slow body was cut before the others ran"
    );
    let mut out = Vec::new();
    let _ = within("slow body answered", slow.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&out), 408, "{out}");
    assert!(out.contains("connection: close"), "{out}");
    assert!(out.contains("body_timeout"), "{out}");
    assert!(origin.uploaded() <= 10, "the app got bytes never sent");
}

/// A "local app" that reads a request head and answers `reply` verbatim,
/// then closes: a broken or hostile HTTP server.
async fn raw_origin(reply: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(reply).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr.to_string()
}

#[tokio::test]
async fn a_local_app_answering_garbage_gives_502() {
    let server = TestServer::start().await;
    let visitor = Visitor::new(server.addr);
    for reply in [
        &b"this is not HTTP\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nX-Evil: a\rX-Injected: yes\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-Evil: a\0b\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nBad Name: v\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 999999 Nope\r\n\r\n",
        b"",
    ] {
        let target = raw_origin(reply).await;
        let client = TestClient::start(&server, &target).await;
        let got = within("garbage", visitor.get(&client.host, "/")).await;
        let shown = String::from_utf8_lossy(reply);
        assert_eq!(got.status, 502, "{shown:?}: {}", got.text());
        assert!(!got.headers.contains_key("x-evil"), "{shown:?}");
        assert!(!got.headers.contains_key("x-injected"), "{shown:?}");
    }
}
