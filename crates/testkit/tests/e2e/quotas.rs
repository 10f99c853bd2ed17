//! Anonymous use, bounded: one address (IPv6: its /64), or one API key,
//! holds at most `max_sessions_per_ip` client connections and
//! `max_tunnels_per_ip` live tunnels at once (one address used to open
//! 40,000 tunnels in 20 s of a server without keys). Over either, the
//! client is refused with `quota_exceeded` and `retry_after_ms`; every
//! other address goes on opening tunnels.

use std::net::IpAddr;

use cryptun_server::Config;
use cryptun_testkit::{RawWs, TestServer};
use serde_json::{Value, json};

fn at(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A session from `source` asking for `n` tunnels; the session and every
/// answer.
async fn session(server: &TestServer, source: IpAddr, n: usize) -> (RawWs, Vec<Value>) {
    let mut ws = RawWs::connect_from(server, source, None).await;
    let mut answers = Vec::new();
    for _ in 0..n {
        let (next, answer) = ws.ask(json!({})).await;
        ws = next;
        let refused = answer["type"] == "error";
        answers.push(answer);
        if refused && answers.len() == 1 {
            break;
        }
    }
    (ws, answers)
}

fn created(answers: &[Value]) -> usize {
    answers
        .iter()
        .filter(|a| a["type"] == "tunnel_created")
        .count()
}

#[tokio::test]
async fn one_address_holds_its_share_of_tunnels_and_no_more() {
    let config = Config {
        max_tunnels_per_ip: 20,
        ..TestServer::test_config()
    };
    let server = TestServer::start_with(config).await;
    let flooder = at("127.0.5.1");
    // 16 tunnels, then 4 more on a second connection, then none: the
    // session goes on, told why and when to try again.
    let (_one, first) = session(&server, flooder, 16).await;
    assert_eq!(created(&first), 16);
    let (_two, second) = session(&server, flooder, 6).await;
    assert_eq!(created(&second), 4, "{second:?}");
    let refusal = second.last().unwrap();
    assert_eq!(refusal["code"], "quota_exceeded", "{refusal}");
    assert!(refusal["retry_after_ms"].as_u64().unwrap() > 0, "{refusal}");
    // A third connection with no tunnel left to open: its first
    // create_tunnel is refused, and the connection closed.
    let (mut three, third) = session(&server, flooder, 1).await;
    assert_eq!(third[0]["code"], "quota_exceeded", "{third:?}");
    assert_eq!(three.expect_close().await, 1008);
    // Everyone else is served.
    let (_other, answers) = session(&server, at("127.0.5.2"), 16).await;
    assert_eq!(created(&answers), 16);
    // A tunnel that ends gives its place back.
    drop(_one);
    let mut again = Vec::new();
    for _ in 0..50 {
        let (_ws, answers) = session(&server, flooder, 1).await;
        if created(&answers) == 1 {
            again = answers;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(created(&again), 1);
}

#[tokio::test]
async fn one_address_holds_its_share_of_client_connections_and_no_more() {
    let config = Config {
        max_sessions_per_ip: 2,
        ..TestServer::test_config()
    };
    let server = TestServer::start_with(config).await;
    let flooder = at("127.0.6.1");
    let (_one, first) = session(&server, flooder, 1).await;
    let (_two, second) = session(&server, flooder, 1).await;
    assert_eq!(created(&first) + created(&second), 2);
    // A third connection is refused at its handshake.
    let (mut three, third) = session(&server, flooder, 1).await;
    assert_eq!(third[0]["code"], "quota_exceeded", "{third:?}");
    let message = third[0]["message"].as_str().unwrap();
    assert!(message.contains("sessions"), "{message}");
    assert_eq!(three.expect_close().await, 1008);
    // Everyone else is served.
    let (_other, answers) = session(&server, at("127.0.6.2"), 1).await;
    assert_eq!(created(&answers), 1);
}
