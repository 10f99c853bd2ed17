//! Several tunnels on one connection (`cryptun start`): each request goes
//! to its own tunnel's local service and is reported with the tunnel's
//! name; a restarted server gets every tunnel back, each at its URL; a
//! refusal of any tunnel fails the connection and names the tunnel.

use cryptun_client::{ClientError, Event};
use cryptun_proto::ErrorCode;
use cryptun_testkit::raw::{WAIT, eventually};
use cryptun_testkit::{Origin, TestClient, TestServer, Visitor};

fn served_by(client: &TestClient, path: &str) -> Option<String> {
    client.events.lock().unwrap().iter().find_map(|e| match e {
        Event::Request(done) if done.path == path => Some(done.tunnel.clone()),
        _ => None,
    })
}

#[tokio::test]
async fn each_tunnel_of_a_connection_reaches_its_own_origin() {
    let server = TestServer::start().await;
    let (one, two) = (Origin::start().await, Origin::start().await);
    let client = TestClient::start_with(&server, &one.target(), |c| {
        c.tunnel.name = Some("first".into());
        c.more_tunnels.push(two.tunnel("second"));
    })
    .await
    .unwrap();
    let visitor = Visitor::new(server.addr);
    let live = visitor.tunnels().await;
    assert_eq!(live.len(), 2, "{live:?}");
    assert_eq!(live[0]["client_addr"], live[1]["client_addr"]);

    let reply = visitor.get(&client.host, "/echo?n=1").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = visitor.get(&server.host_of("second"), "/echo?n=2").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["path"], "/echo?n=2");
    assert_eq!((one.requests(), two.requests()), (1, 1));
    eventually(WAIT, "both requests reported", || async {
        served_by(&client, "/echo?n=2").is_some()
    })
    .await;
    assert_eq!(served_by(&client, "/echo?n=1").as_deref(), Some("first"));
    assert_eq!(served_by(&client, "/echo?n=2").as_deref(), Some("second"));
}

#[tokio::test]
async fn a_restarted_server_gets_every_tunnel_back() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let (one, two) = (Origin::start().await, Origin::start().await);
    let client = TestClient::start_reconnecting(&server, &one.target(), |c| {
        c.more_tunnels.push(two.tunnel("second"));
    })
    .await
    .unwrap();
    let (first_host, second_host) = (client.host.clone(), server.host_of("second"));
    assert_eq!(
        Visitor::new(addr).get(&second_host, "/echo").await.status,
        200
    );

    server.stop().await;
    let _restarted = TestServer::start_on(addr, TestServer::test_config()).await;
    eventually(WAIT, "both tunnels reconnected", || async {
        let events = client.events.lock().unwrap();
        events
            .iter()
            .filter(|e| matches!(e, Event::Reconnected { .. }))
            .count()
            >= 2
    })
    .await;
    let back: Vec<String> = client
        .events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Reconnected { tunnel } => Some(tunnel.public_url.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(back[0], client.tunnel.public_url);
    assert!(back[1].contains("://second."), "{back:?}");

    let visitor = Visitor::new(addr);
    assert_eq!(visitor.tunnels().await.len(), 2);
    let reply = visitor.get(&first_host, "/echo?again=1").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = visitor.get(&second_host, "/echo?again=2").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!((one.requests(), two.requests()), (1, 2));
}

#[tokio::test]
async fn a_refused_tunnel_fails_the_connection_and_is_named() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let taken = TestClient::start_with(&server, &origin.target(), |c| {
        c.tunnel.subdomain = Some("second".into());
    })
    .await
    .unwrap();
    let refused = TestClient::start_with(&server, &origin.target(), |c| {
        c.more_tunnels.push(origin.tunnel("second"));
    })
    .await;
    let Err(ClientError::Refused { code, message }) = refused else {
        panic!("not refused: {:?}", refused.err());
    };
    assert_eq!(code, ErrorCode::SubdomainTaken);
    assert!(message.starts_with("tunnel second: "), "{message}");
    // The first tunnel of the refused connection does not linger.
    let visitor = Visitor::new(server.addr);
    eventually(WAIT, "only the taken tunnel left", || async {
        visitor.tunnels().await.len() == 1
    })
    .await;
    drop(taken);
}

/// A broken server that floods the handshake (sends messages for the first
/// tunnel before it answers for the second, without end) is left with an
/// error once the client has kept 4,096 of them, not followed into memory.
#[tokio::test]
async fn a_server_flooding_the_handshake_is_left_at_the_bound() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        ws.next().await; // the first create_tunnel
        let created = serde_json::json!({
            "type": "tunnel_created", "version": 1, "tunnel_id": "aaa",
            "subdomain": "tunnel-aaa", "public_url": "http://tunnel-aaa.localhost",
            "binary_streams": true, "request_timeout_ms": 60000,
            "limits": {
                "max_message_bytes": 1048576, "max_frame_payload": 65536,
                "stream_window": 262144, "max_inline_body": 16384,
                "max_streams": 1024, "heartbeat_interval_ms": 10000,
            },
        });
        ws.send(Message::text(created.to_string())).await.unwrap();
        // Frames for the first tunnel, and never a second tunnel_created.
        let mut sent = 0u32;
        while ws.send(Message::binary(vec![0u8; 8])).await.is_ok() && sent < 100_000 {
            sent += 1;
        }
        sent
    });
    let origin = Origin::start().await;
    let mut config = cryptun_client::ClientConfig::new(
        &format!("http://{addr}"),
        cryptun_client::Target::parse(&origin.target()).unwrap(),
    )
    .unwrap();
    config.more_tunnels.push(origin.tunnel("second"));
    let outcome = cryptun_testkit::within("the handshake", cryptun_client::connect(&config)).await;
    let Err(ClientError::Protocol(why)) = outcome else {
        panic!("not left: {:?}", outcome.err());
    };
    assert!(why.contains("too many messages"), "{why}");
    // The client hung up well before the server's own limit.
    assert!(server.await.unwrap() < 100_000);
}
