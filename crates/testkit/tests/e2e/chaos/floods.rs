//! Connection floods as a chaos run: for 15 s, 20 addresses each open
//! waves of 10-80 idle connections (some with half a request head), hold
//! them 0.5-3 s and drop them, over a server of 600 connections (40 an
//! address), while a visitor is measured and a client opens a tunnel on a
//! new connection every second.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use cryptun_server::Config;
use cryptun_testkit::chaos::{MARGIN, Outcome, Rng, merge, print_table, quantile, rss_kib, tagged};
use cryptun_testkit::visitor::{connect_from, status_of};
use cryptun_testkit::{Origin, TestClient, TestServer, Visitor};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

const RUN_FOR: Duration = Duration::from_secs(15);
const FLOODERS: u64 = 20;
/// How long a client may take to get a tunnel during the flood: the slots
/// kept for clients are taken too, by idle connections that are closed
/// within a second or two, so a try may meet a full server.
const RECONNECT_WITHIN: Duration = Duration::from_secs(5);

/// Opens a tunnel on a new `/ws` connection from an address of its own;
/// whether it got one.
async fn reconnect(server: std::net::SocketAddr, url: &str) -> bool {
    let tcp = connect_from("127.0.0.7".parse().unwrap(), server).await;
    let Ok(Ok((mut ws, _))) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async(url, tcp),
    )
    .await
    else {
        return false;
    };
    let create = json!({ "type": "create_tunnel" }).to_string();
    if ws.send(Message::text(create)).await.is_err() {
        return false;
    }
    let first = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    matches!(first, Ok(Some(Ok(Message::Text(t)))) if t.contains("tunnel_created"))
}

/// How each flooding connection stood when its wave was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stood {
    /// Still open, unanswered.
    Open,
    /// Answered with this status (503: refused, and told why).
    Answered(u16),
    /// Closed by the server without a word.
    Closed,
}

fn stood(conn: &tokio::net::TcpStream) -> Stood {
    let mut buf = [0u8; 512];
    match conn.try_read(&mut buf) {
        Ok(0) => Stood::Closed,
        Ok(n) => Stood::Answered(status_of(&String::from_utf8_lossy(&buf[..n]))),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Stood::Open,
        Err(_) => Stood::Closed,
    }
}

async fn flood(
    server: std::net::SocketAddr,
    source: IpAddr,
    mut rng: Rng,
    until: Instant,
) -> BTreeMap<Stood, usize> {
    let mut stood_counts = BTreeMap::new();
    while Instant::now() < until {
        let mut wave = Vec::new();
        for _ in 0..rng.between(10, 80) {
            let mut conn = connect_from(source, server).await;
            if rng.below(3) == 0 {
                let _ = conn.write_all(b"GET / HTTP/1.1\r\nHost: loc").await;
            }
            wave.push(conn);
        }
        tokio::time::sleep(rng.millis(500, 3000)).await;
        for conn in &wave {
            *stood_counts.entry(stood(conn)).or_insert(0) += 1;
        }
    }
    stood_counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "chaos: opt-in, see docs/SECURITY.md"]
async fn connection_floods_with_a_visitor_and_a_client_meanwhile() {
    const TEST: &str = "floods";
    let config = Config {
        max_connections: 600,
        max_connections_per_ip: 40,
        ..TestServer::test_config()
    };
    let server = TestServer::start_with(config).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let mut rng = Rng::seeded(TEST);
    let rss_before = rss_kib(None);
    let until = Instant::now() + RUN_FOR;
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|f| {
            let source: IpAddr = format!("127.0.40.{}", 1 + f).parse().unwrap();
            tokio::spawn(flood(server.addr, source, Rng::new(rng.next_u64()), until))
        })
        .collect();
    // A client reconnecting every second, from an address of its own,
    // trying again every 200 ms as a client's backoff does.
    let reconnects = async {
        let (mut tries, mut took) = (Vec::new(), Vec::new());
        while Instant::now() < until {
            let started = Instant::now();
            let mut n = 1;
            while !reconnect(server.addr, &server.ws_url()).await
                && started.elapsed() < RECONNECT_WITHIN
            {
                n += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            tries.push(n);
            took.push(started.elapsed());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        (tries, took)
    };
    let visits = async {
        let http = Visitor::new(server.addr);
        let limit = server.config.request_timeout + MARGIN;
        let (mut latencies, mut visits) = (Vec::new(), BTreeMap::new());
        while Instant::now() < until {
            let token = format!("visit-{}", latencies.len());
            let sent = Instant::now();
            let outcome = tagged(&http, &client.host, &token, limit).await;
            if outcome == Outcome::Status(200) {
                latencies.push(sent.elapsed());
            }
            *visits.entry(outcome).or_insert(0usize) += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (latencies, visits)
    };
    let ((tries, mut took), (mut latencies, visits)) = tokio::join!(reconnects, visits);
    took.sort();
    let mut stood_counts = BTreeMap::new();
    for task in flooders {
        merge(&mut stood_counts, task.await.unwrap());
    }
    // With the flood gone, the visitor is served again.
    let http = Visitor::new(server.addr);
    let after = tagged(&http, &client.host, "after", Duration::from_secs(5)).await;
    let rss_after = rss_kib(None);
    latencies.sort();
    let visitor = cryptun_testkit::Visitor::new(server.addr);
    for reason in ["max_connections", "max_connections_per_ip"] {
        let series = format!("cryptun_refusals_total{{reason=\"{reason}\"}}");
        eprintln!(
            "{TEST}: refused ({reason}): {}",
            visitor.metric(&series).await
        );
    }

    eprintln!("{TEST}: flooding connections, as each wave was dropped | count");
    print_table(TEST, &stood_counts);
    print_table(TEST, &visits);
    eprintln!(
        "{TEST}: visits served p50 {:?}, p99 {:?}; {} reconnections, {} at the first try, the slowest in {:?} \
         ({} tries); after the flood {after:?}; RSS {rss_before} KiB before, {rss_after} KiB after",
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        tries.len(),
        tries.iter().filter(|n| **n == 1).count(),
        took.last(),
        tries.iter().max().unwrap_or(&0),
    );
    assert!(
        took.last().is_some_and(|t| *t < RECONNECT_WITHIN),
        "{took:?}"
    );
    for (outcome, n) in &visits {
        // 503: every open slot taken (the visitor's address is under its
        // share), told so at once.
        let allowed = matches!(outcome, Outcome::Status(200 | 503));
        assert!(allowed, "{n} visits ended {outcome:?}");
    }
    assert!(visits.get(&Outcome::Status(200)).copied().unwrap_or(0) > 0);
    assert!(quantile(&latencies, 0.99) < Duration::from_secs(1));
    for stood in stood_counts.keys() {
        assert!(
            matches!(
                stood,
                Stood::Open | Stood::Closed | Stood::Answered(503 | 408)
            ),
            "{stood:?}"
        );
    }
    assert_eq!(after, Outcome::Status(200));
    assert!(
        rss_after.saturating_sub(rss_before) < 100 << 10,
        "{rss_before} -> {rss_after} KiB"
    );
}
