//! Slowloris: connections sending a request head a byte a second, while a
//! visitor is measured.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cryptun_server::Config;
use cryptun_testkit::chaos::{MARGIN, Outcome, tagged};
use cryptun_testkit::{Origin, TestClient, TestServer, Visitor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SLOW_CONNECTIONS: usize = 300;
/// A slow connection still open this long has outlived any sane deadline.
const SLOW_GIVE_UP: Duration = Duration::from_secs(15);

/// Opens a connection and sends a request head one byte a second, never
/// finishing it; returns how long the server kept it open (`None`: still
/// open at [`SLOW_GIVE_UP`], or never opened).
async fn slow_loris(addr: SocketAddr) -> Option<Duration> {
    let opened = Instant::now();
    let mut socket = TcpStream::connect(addr).await.ok()?;
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .ok()?;
    let mut buf = [0u8; 512];
    while opened.elapsed() < SLOW_GIVE_UP {
        tokio::select! {
            read = socket.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(opened.elapsed()),
                // A 408 before the close: read on to the end.
                Ok(_) => {}
            },
            () = tokio::time::sleep(Duration::from_secs(1)) => {
                if socket.write_all(b"a").await.is_err() {
                    return Some(opened.elapsed());
                }
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "chaos: opt-in, see docs/SECURITY.md"]
async fn slowloris_with_a_visitor_measured_meanwhile() {
    const TEST: &str = "slowloris";
    let config = Config {
        header_read_timeout: Duration::from_secs(5),
        ..TestServer::test_config()
    };
    let deadline = config.header_read_timeout + MARGIN;
    let server = TestServer::start_with(config).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;

    let slow: Vec<_> = (0..SLOW_CONNECTIONS)
        .map(|_| tokio::spawn(slow_loris(server.addr)))
        .collect();
    let http = Visitor::new(server.addr);
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    while started.elapsed() < Duration::from_secs(10) {
        let token = format!("visit-{}", latencies.len());
        let sent = Instant::now();
        let outcome = tagged(&http, &client.host, &token, deadline).await;
        latencies.push(sent.elapsed());
        if outcome != Outcome::Status(200) {
            failures.push(format!("{token}: {outcome:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut held = Vec::new();
    for task in slow {
        held.push(task.await.unwrap());
    }
    latencies.sort();
    let closed: Vec<Duration> = held.iter().flatten().copied().collect();
    eprintln!(
        "{TEST}: {SLOW_CONNECTIONS} slow connections, {} closed by the server, the last after {:?}",
        closed.len(),
        closed.iter().max()
    );
    eprintln!(
        "{TEST}: {} visits meanwhile, {} failed; latency p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        failures.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100],
        latencies[latencies.len() - 1],
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        closed.len(),
        SLOW_CONNECTIONS,
        "some slow connections stayed open"
    );
    assert!(closed.iter().all(|c| *c < deadline), "{closed:?}");
    assert!(latencies[latencies.len() - 1] < Duration::from_secs(1));
}
