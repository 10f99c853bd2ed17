//! HTTP details a visitor relies on: `Expect: 100-continue` is honoured
//! before the body is sent, and an oversized request head gets 431.

use std::time::Duration;

use cryptun_testkit::visitor::raw_exchange;
use cryptun_testkit::{Origin, TestClient, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /sha256 HTTP/1.1\r\nHost: {}\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        client.host
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Nothing of the body is sent until the interim answer arrives.
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("an interim response before any body byte")
        .unwrap();
    let interim = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    stream.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let reply = String::from_utf8_lossy(&rest);
    assert!(reply.contains("200 OK"), "{reply}");
    assert!(
        reply.contains(&cryptun_testkit::sha256_hex(b"hello")),
        "{reply}"
    );
}

#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let big = "x".repeat(70 << 10);
    let request = format!(
        "GET /echo HTTP/1.1\r\nHost: {}\r\nX-Big: {big}\r\n\r\n",
        client.host
    );
    let reply = raw_exchange(server.addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply:.200}");
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let request = format!("GET /echo HTTP/1.1\r\nHost: {}\r\n{many}\r\n", client.host);
    let reply = raw_exchange(server.addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply:.200}");
    assert_eq!(origin.requests(), 0);
}
