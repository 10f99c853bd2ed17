//! Slow request bodies, the cheapest way to take a tunnel offline: many
//! addresses each holding a few requests whose bodies drip a byte at a
//! time. The tunnel keeps serving everyone else: small bodies are read
//! whole before anything reaches the client (they never hold a stream or
//! the local service), larger ones may hold at most three quarters of the
//! session's streams, every body must arrive at a minimum rate past its
//! grace, and one address holds at most `max_requests_per_ip` requests.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use cryptun_server::Config;
use cryptun_server::policy::MinRate;
use cryptun_testkit::visitor::{connect_from, status_of};
use cryptun_testkit::{Origin, TestClient, TestServer, Visitor, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `per_address` requests from each of `addresses` loopback addresses
/// (127.0.N.M), each a head declaring `length` body bytes and one byte of
/// it; the connections, held open.
async fn drip(
    server: &TestServer,
    host: &str,
    (addresses, per_address): (usize, usize),
    length: usize,
) -> Vec<TcpStream> {
    let head =
        format!("POST /sha256 HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n\r\nx");
    let mut held = Vec::with_capacity(addresses * per_address);
    for a in 0..addresses {
        let source: IpAddr = format!("127.0.{}.{}", 10 + a / 200, 1 + a % 200)
            .parse()
            .unwrap();
        for _ in 0..per_address {
            let mut stream = connect_from(source, server.addr).await;
            stream.write_all(head.as_bytes()).await.unwrap();
            held.push(stream);
        }
    }
    held
}

/// The latencies of `n` GETs by one visitor, sorted, all of them 200.
async fn timed_gets(visitor: &Visitor, host: &str, n: usize) -> Vec<Duration> {
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        let reply = visitor.get(host, &format!("/token?t={i}")).await;
        took.push(start.elapsed());
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
        assert_eq!(reply.text(), i.to_string());
    }
    took.sort();
    took
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() * 99 / 100]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_keeps_serving_while_1200_uploads_drip_from_300_addresses() {
    // No minimum rate here: what keeps the tunnel serving must be the
    // upload share alone, for as long as the drip lasts.
    let config = Config {
        min_body_rate: None,
        ..TestServer::test_config()
    };
    let server = TestServer::start_with(config).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let visitor = Visitor::new(server.addr);
    let baseline = timed_gets(&visitor, &client.host, 200).await;

    // 1,200 bodies of a megabyte each, a byte sent: more than the
    // session's 1,024 streams.
    let _attack = drip(&server, &client.host, (300, 4), 1_000_000).await;
    let share = r#"cryptun_refusals_total{reason="max_uploads"}"#;
    let refused = within("the surplus is refused", async {
        loop {
            let refused = visitor.metric(share).await;
            if refused >= 1200.0 - 768.0 {
                return refused;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(
        refused,
        1200.0 - 768.0,
        "three quarters of 1,024 streams upload"
    );

    let during = timed_gets(&visitor, &client.host, 500).await;
    // A small body, arrived whole, needs no share of the uploads: served.
    let posted = visitor.call("POST", &client.host, "/sha256", "small").await;
    assert_eq!(posted.status, 200, "{}", posted.text());
    assert_eq!(
        posted.json()["sha256"],
        cryptun_testkit::sha256_hex(b"small")
    );
    let (before, after) = (p99(&baseline), p99(&during));
    assert!(
        after <= before * 3,
        "p99 {after:?} while dripping, {before:?} before"
    );
}

#[tokio::test]
async fn small_dripping_bodies_never_reach_the_app_and_are_cut_when_too_slow() {
    let config = Config {
        min_body_rate: Some(MinRate {
            bytes_per_sec: 500,
            grace: Duration::from_secs(1),
        }),
        ..TestServer::test_config()
    };
    let server = TestServer::start_with(config).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let visitor = Visitor::new(server.addr);

    // 1,200 small bodies, a byte each: read at the gateway, none of them
    // reaches the client, so the app sees nothing and streams stay free.
    let attack = drip(&server, &client.host, (300, 4), 100).await;
    let during = timed_gets(&visitor, &client.host, 100).await;
    assert_eq!(during.len(), 100);
    assert_eq!(
        origin.requests(),
        100,
        "only the visitor's requests reached the app"
    );

    // Past the grace they are cut: 408, and why.
    for mut stream in attack.into_iter().step_by(97) {
        let mut reply = Vec::new();
        let _ = within("the slow body is cut", stream.read_to_end(&mut reply)).await;
        let reply = String::from_utf8_lossy(&reply).into_owned();
        assert_eq!(status_of(&reply), 408, "{reply}");
        let lower = reply.to_ascii_lowercase();
        assert!(lower.contains("x-cryptun-error: body_too_slow"), "{reply}");
    }
    assert_eq!(origin.requests(), 100);
}

#[tokio::test]
async fn one_address_holds_at_most_its_share_of_requests_in_flight() {
    let config = Config {
        max_requests_per_ip: 8,
        ..TestServer::test_config()
    };
    let server = TestServer::start_with(config).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    // Twelve requests from one address, each holding its body back.
    let mut held = drip(&server, &client.host, (1, 12), 1_000_000).await;
    // Four over the share are answered at once: 429, why, and when.
    let mut refused = 0;
    for stream in &mut held {
        let mut first = [0u8; 512];
        let read = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut first)).await;
        if let Ok(Ok(n)) = read {
            let reply = String::from_utf8_lossy(&first[..n]).to_ascii_lowercase();
            assert!(reply.starts_with("http/1.1 429"), "{reply}");
            assert!(
                reply.contains("x-cryptun-error: max_requests_per_ip"),
                "{reply}"
            );
            assert!(reply.contains("retry-after: 1"), "{reply}");
            refused += 1;
        }
    }
    assert_eq!(refused, 4);
    // Everyone else is served meanwhile.
    let reply = Visitor::new(server.addr)
        .get(&client.host, "/token?t=ok")
        .await;
    assert_eq!(reply.text(), "ok");
}
