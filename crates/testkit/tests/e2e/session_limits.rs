//! The server's own bounds on clients and connections: a session that asks
//! for more tunnels than it may gets `too_many_tunnels` and keeps the ones
//! it has; a connection beyond `max_connections` is dropped at once (and
//! counted), and the server serves again as soon as a slot frees.

use std::time::Duration;

use cryptun_testkit::{LIMIT, RawWs, TestServer, Visitor, within};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn a_session_over_its_tunnel_limit_gets_an_error_and_keeps_its_tunnels() {
    let mut config = TestServer::test_config();
    config.limits.max_tunnels_per_session = 2;
    let server = TestServer::start_with(config).await;
    let (mut ws, first) = RawWs::tunnel(&server, json!({})).await;
    ws.send_json(&json!({ "type": "create_tunnel" })).await;
    let second = within("the second tunnel", ws.recv_type("tunnel_created")).await;
    assert_ne!(first["subdomain"], second["subdomain"]);
    ws.send_json(&json!({ "type": "create_tunnel" })).await;
    let refused = within("the refusal", ws.recv_type("error")).await;
    assert_eq!(refused["code"], "too_many_tunnels", "{refused}");
    // The session and both of its tunnels are still there.
    ws.send_json(&json!({ "type": "ping" })).await;
    within("the pong", ws.recv_type("pong")).await;
    assert_eq!(Visitor::new(server.addr).tunnels().await.len(), 2);
}

#[tokio::test]
async fn a_connection_beyond_the_limit_is_dropped_until_a_slot_frees() {
    let mut config = TestServer::test_config();
    config.max_connections = 2;
    let server = TestServer::start_with(config).await;
    let held = [
        TcpStream::connect(server.addr).await.unwrap(),
        TcpStream::connect(server.addr).await.unwrap(),
    ];
    // The third is accepted and closed without a byte.
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(LIMIT, third.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the third connection was not dropped: {read:?}"
    );
    drop(held);
    // Slots free as the server notices the closes; then it serves again.
    let visitor = Visitor::new(server.addr);
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let host = format!("localhost:{}", server.addr.port());
        let req = visitor
            .builder("GET", &host, "/healthz")
            .body(Default::default())
            .unwrap();
        let attempt = tokio::time::timeout(Duration::from_secs(2), async {
            tokio::spawn({
                let visitor = visitor.clone();
                async move { visitor.fetch(req).await }
            })
            .await
        })
        .await;
        if let Ok(Ok(reply)) = attempt {
            assert_eq!(reply.status, 200);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refusals = visitor
        .metric(r#"cryptun_refusals_total{reason="max_connections"}"#)
        .await;
    assert!(refusals >= 1.0, "{refusals}");
}
