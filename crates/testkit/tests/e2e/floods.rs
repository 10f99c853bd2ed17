//! Connection floods over real sockets from many loopback addresses: one
//! address cannot take every connection slot (it gets its share,
//! `max_connections_per_ip`), a tunnel's client can always reconnect while
//! visitors' connections fill the server (slots kept for `GET /ws`, which
//! idle connections cannot sit on), and a refused connection is told why
//! (503 with `Retry-After`) rather than reset.
//!
//! The server's connection limit is lowered so that a flood several times
//! over it stays far within the machine's open-file limit.

use std::net::IpAddr;
use std::time::Duration;

use cryptun_server::Config;
use cryptun_testkit::raw::{RawWs, WAIT, eventually};
use cryptun_testkit::visitor::{connect_from, status_of};
use cryptun_testkit::{Origin, TestClient, TestServer, Visitor, within};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn at(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// `n` TCP connections from `source`, opened and left idle.
pub(crate) async fn idle_from(server: &TestServer, source: IpAddr, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(connect_from(source, server.addr).await);
    }
    conns
}

/// A request for `host` from `source` on a new connection, and whatever
/// the server answers before it closes.
async fn request_from(server: &TestServer, source: IpAddr, host: &str, path: &str) -> String {
    let mut stream = connect_from(source, server.addr).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = within(
        "the server answers and closes",
        stream.read_to_end(&mut out),
    )
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Opens a tunnel on a new `/ws` connection from `source`.
async fn reconnect_from(server: &TestServer, source: IpAddr) -> serde_json::Value {
    let ws = RawWs::connect_from(server, source, None).await;
    let (_ws, created) = ws.ask(json!({})).await;
    created
}

#[tokio::test]
async fn one_address_gets_its_share_and_everyone_else_is_served() {
    let config = Config {
        max_connections: 200,
        max_connections_per_ip: 50,
        ..TestServer::test_config()
    };
    let server = TestServer::start_with(config).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let visitor = Visitor::new(server.addr);

    // 300 idle connections from one address: 250 more than its share.
    let flooder = at("127.0.2.1");
    let _flood = idle_from(&server, flooder, 300).await;
    let refused = r#"cryptun_refusals_total{reason="max_connections_per_ip"}"#;
    eventually(WAIT, "the flood's surplus is refused", || async {
        visitor.metric(refused).await >= 250.0
    })
    .await;

    // Another address is served, and a client reconnects.
    let reply = visitor.get(&client.host, "/token?t=served").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "served");
    let created = reconnect_from(&server, at("127.0.0.3")).await;
    assert_eq!(created["type"], "tunnel_created", "{created}");

    // The flooding address is answered, not reset: 503, why, and when to
    // come back. (Answers are written by at most 64 tasks at once, each
    // waiting up to a second for the request: the flood's idle connections
    // may hold them all for that long, and are then closed unanswered.)
    let deadline = tokio::time::Instant::now() + WAIT;
    let answer = loop {
        let answer = request_from(&server, flooder, &client.host, "/").await;
        if status_of(&answer) == 503 {
            break answer.to_ascii_lowercase();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never answered: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        answer.contains("x-cryptun-error: max_connections_per_ip"),
        "{answer}"
    );
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
}

#[tokio::test]
async fn when_visitors_fill_the_server_a_client_still_reconnects() {
    // 90 open slots and 10 kept for clients.
    let config = Config {
        max_connections: 100,
        max_connections_per_ip: 30,
        ..TestServer::test_config()
    };
    let server = TestServer::start_with(config).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;

    // Four addresses, 30 idle connections each: the 90 open slots, then 8
    // of the kept ones (an address's most) for the fourth.
    let mut flood = Vec::new();
    for a in 1..=4 {
        flood.extend(idle_from(&server, at(&format!("127.0.3.{a}")), 30).await);
    }
    // A visitor gets one of the kept slots: told the server is full, with
    // when to come back, and the connection closed.
    let answer = request_from(&server, at("127.0.0.1"), &client.host, "/").await;
    assert_eq!(status_of(&answer), 503, "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains("x-cryptun-error: max_connections"),
        "{answer}"
    );
    assert!(lower.contains("retry-after: 1"), "{answer}");
    // A client reconnecting from elsewhere gets its tunnel.
    let created = reconnect_from(&server, at("127.0.0.3")).await;
    assert_eq!(created["type"], "tunnel_created", "{created}");

    // The fourth address's idle connections on kept slots are closed
    // within seconds: nobody sits on them.
    let kept = flood.split_off(90);
    let mut closed = 0;
    for mut conn in kept {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut byte)).await;
        if matches!(read, Ok(Ok(0) | Err(_))) {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 30,
        "every connection over the open slots was closed"
    );
    // With the kept slots free again, another client comes back.
    let created = reconnect_from(&server, at("127.0.0.4")).await;
    assert_eq!(created["type"], "tunnel_created", "{created}");
}
