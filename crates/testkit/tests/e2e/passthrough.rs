//! WebSocket passthrough: after the local app's `101`, bytes flow both ways
//! through the tunnel until either side closes; anything else stays HTTP.

use std::time::Duration;

use cryptun_testkit::visitor::raw_exchange;
use cryptun_testkit::wsecho::{self, WsEcho};
use cryptun_testkit::{Origin, TestClient, TestServer, Visitor};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_thousand_messages_echo_through_a_tunnel() {
    let server = TestServer::start().await;
    let app = WsEcho::start().await;
    let client = TestClient::start(&server, &app.target()).await;
    let mut ws = wsecho::connect(server.addr, &client.host, "/socket")
        .await
        .unwrap();
    tokio::time::timeout(LIMIT, async {
        for i in 0..1000usize {
            // Mostly small messages, every 100th one large (up to 1 MiB).
            let len = if i % 100 == 99 { 1 << 20 } else { i % 200 };
            let msg = if i % 2 == 0 {
                Message::text("t".repeat(len) + &i.to_string())
            } else {
                Message::binary(vec![(i % 251) as u8; len + 1])
            };
            ws.send(msg.clone()).await.unwrap();
            let echoed = ws.next().await.unwrap().unwrap();
            assert_eq!(echoed, msg, "message {i}");
        }
        ws.close(None).await.unwrap();
    })
    .await
    .expect("echoes within the limit");
}

#[tokio::test]
async fn closing_either_side_ends_the_passthrough() {
    let server = TestServer::start().await;
    let app = WsEcho::start().await;
    let client = TestClient::start(&server, &app.target()).await;
    let mut ws = wsecho::connect(server.addr, &client.host, "/")
        .await
        .unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    ws.close(None).await.unwrap();
    // The close handshake completes through the tunnel and the stream ends.
    let end = tokio::time::timeout(LIMIT, async {
        while let Some(msg) = ws.next().await {
            if msg.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the connection ends after close");
    let visitor = Visitor::new(server.addr);
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let tunnels = visitor.tunnels().await;
        if tunnels[0]["in_flight"] == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream never finished: {tunnels:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A masked client text frame, as a browser sends it.
fn masked_text(payload: &[u8]) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[tokio::test]
async fn bytes_sent_before_the_switch_follow_it() {
    let server = TestServer::start().await;
    let app = WsEcho::start().await;
    let client = TestClient::start(&server, &app.target()).await;
    let mut bytes = format!(
        "GET /early HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        client.host
    )
    .into_bytes();
    // The first message rides in the same packet as the upgrade request.
    bytes.extend(masked_text(b"early"));
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(LIMIT, async {
        while !got.windows(5).any(|w| w == b"early") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the early message is echoed");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{text}"
    );
    let head_end = text.find("\r\n\r\n").unwrap();
    // After the head: an unmasked text frame carrying "early".
    assert_eq!(&got[head_end + 4..head_end + 4 + 7], b"\x81\x05early");
}

#[tokio::test]
async fn a_refused_upgrade_stays_plain_http() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let request = format!(
        "GET /echo HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\
         GET /token?t=second HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        host = client.host
    );
    let reply = raw_exchange(server.addr, request.as_bytes(), Duration::from_secs(10)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    // The origin saw the upgrade offer, answered 200, and the connection
    // went on serving HTTP: the second request got its own answer.
    assert!(reply.contains(r#"["upgrade","websocket"]"#), "{reply}");
    assert!(reply.ends_with("second"), "{reply}");
}

#[tokio::test]
async fn upgrade_without_connection_upgrade_is_not_offered() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let visitor = Visitor::new(server.addr);
    let req = visitor
        .builder("GET", &client.host, "/echo")
        .header("upgrade", "websocket")
        .body(Default::default())
        .unwrap();
    let reply = visitor.fetch(req).await;
    assert_eq!(reply.status, 200);
    let headers = reply.json()["headers"].to_string();
    assert!(!headers.contains("upgrade"), "{headers}");
}
