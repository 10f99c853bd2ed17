//! Slow bodies as a chaos run: for 15 s, 200 uploaders from 100 loopback
//! addresses each send `POST /sha256` bodies of random length (100 B to
//! 1 MB) at a random rate, mostly under the server's minimum body rate,
//! some over it, while a normal visitor is measured.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use cryptun_server::Config;
use cryptun_server::policy::MinRate;
use cryptun_testkit::chaos::{MARGIN, Outcome, Rng, merge, print_table, quantile, rss_kib, tagged};
use cryptun_testkit::visitor::{connect_from, status_of};
use cryptun_testkit::{Origin, TestClient, TestServer, Visitor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const RUN_FOR: Duration = Duration::from_secs(15);
const UPLOADERS: u64 = 200;
const ADDRESSES: u64 = 100;
/// The server's minimum body rate, and its grace.
const MIN_RATE: u64 = 1000;
const GRACE: Duration = Duration::from_secs(2);
/// Past this an upload is counted as never ended (status 1).
const UPLOAD_LIMIT: Duration = Duration::from_secs(20);

/// How one upload ended: the status it was answered with (0: closed
/// without an answer, 1: no end within [`UPLOAD_LIMIT`]), and whether it was sent slower than the minimum.
type Ended = (bool, u16);

/// One upload from `source`: a head declaring `length` bytes, then chunks
/// of `chunk` bytes every `every`, until the server answers or closes.
async fn upload(
    server: SocketAddr,
    host: &str,
    source: IpAddr,
    (length, chunk, every): (usize, usize, Duration),
) -> u16 {
    let mut conn = connect_from(source, server).await;
    let head = format!("POST /sha256 HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n\r\n");
    if conn.write_all(head.as_bytes()).await.is_err() {
        return 0;
    }
    let (mut sent, mut answer) = (0, Vec::new());
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            read = conn.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            },
            () = tokio::time::sleep(every), if sent < length => {
                let n = chunk.min(length - sent);
                if conn.write_all(&vec![b'x'; n]).await.is_err() {
                    // Cut: the answer, if any, is there to read.
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn.read_to_end(&mut answer)).await;
                    break;
                }
                sent += n;
            }
        }
    }
    status_of(&String::from_utf8_lossy(&answer))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "chaos: opt-in, see docs/SECURITY.md"]
async fn slow_bodies_with_a_visitor_measured_meanwhile() {
    const TEST: &str = "slow_bodies";
    let config = Config {
        min_body_rate: Some(MinRate {
            bytes_per_sec: MIN_RATE,
            grace: GRACE,
        }),
        ..TestServer::test_config()
    };
    let server = TestServer::start_with(config).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let mut rng = Rng::seeded(TEST);
    let rss_before = rss_kib(None);
    let until = Instant::now() + RUN_FOR;

    let uploaders: Vec<_> = (0..UPLOADERS)
        .map(|u| {
            let (addr, host, seed) = (server.addr, client.host.clone(), rng.next_u64());
            tokio::spawn(async move {
                let mut rng = Rng::new(seed);
                let source: IpAddr = format!("127.0.30.{}", 1 + u % ADDRESSES).parse().unwrap();
                let mut ended: BTreeMap<Ended, usize> = BTreeMap::new();
                let mut longest = Duration::ZERO;
                while Instant::now() < until {
                    // One in five fast (16-64 KiB every 50-200 ms, at most
                    // 200 kB: done in seconds), the rest a few bytes a
                    // tick, under half the minimum rate (400 B/s at most).
                    let (length, chunk, every) = if rng.below(5) == 0 {
                        (
                            rng.between(100, 200_000),
                            rng.between(16_384, 65_536),
                            rng.millis(50, 200),
                        )
                    } else {
                        (
                            rng.between(100, 1_000_000),
                            rng.between(1, 40),
                            rng.millis(50, 1000),
                        )
                    };
                    let (length, chunk) = (length as usize, chunk as usize);
                    let slow = (chunk as f64 / every.as_secs_f64()) < MIN_RATE as f64;
                    let started = Instant::now();
                    let upload = upload(addr, &host, source, (length, chunk, every));
                    // 1: no end within the limit.
                    let status = tokio::time::timeout(UPLOAD_LIMIT, upload)
                        .await
                        .unwrap_or(1);
                    if slow {
                        longest = longest.max(started.elapsed());
                    }
                    *ended.entry((slow, status)).or_insert(0) += 1;
                }
                (ended, longest)
            })
        })
        .collect();

    let http = Visitor::new(server.addr);
    let limit = server.config.request_timeout + MARGIN;
    let (mut latencies, mut visits) = (Vec::new(), BTreeMap::new());
    while Instant::now() < until {
        let token = format!("visit-{}", latencies.len());
        let sent = Instant::now();
        let outcome = tagged(&http, &client.host, &token, limit).await;
        latencies.push(sent.elapsed());
        *visits.entry(outcome).or_insert(0usize) += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut ended, mut longest) = (BTreeMap::new(), Duration::ZERO);
    for task in uploaders {
        let (more, long) = task.await.unwrap();
        merge(&mut ended, more);
        longest = longest.max(long);
    }
    let rss_after = rss_kib(None);
    latencies.sort();

    eprintln!("{TEST}: uploads (slower than the minimum, status: 0 closed unanswered) | count");
    print_table(TEST, &ended);
    eprintln!("{TEST}: the longest slow upload lasted {longest:?}");
    print_table(TEST, &visits);
    eprintln!(
        "{TEST}: {} visits, p50 {:?}, p99 {:?}, max {:?}; RSS {rss_before} KiB before, {rss_after} KiB after",
        latencies.len(),
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
    );

    assert_eq!(visits.keys().collect::<Vec<_>>(), [&Outcome::Status(200)]);
    assert!(quantile(&latencies, 0.99) < Duration::from_secs(1));
    for ((slow, status), n) in &ended {
        // A slow body is cut (408), or refused over the address's share
        // of requests (429) or the tunnel's of uploads (503); a fast one
        // is served, or refused likewise.
        let allowed = if *slow {
            [408, 429, 503].contains(status)
        } else {
            [200, 429, 503].contains(status)
        };
        assert!(allowed, "{n} uploads (slow: {slow}) ended {status}");
    }
    // A body at under half the rate is cut within twice the grace (it is
    // then a grace's worth behind), and a margin.
    assert!(longest < GRACE * 2 + MARGIN * 2, "{longest:?}");
    assert!(
        rss_after.saturating_sub(rss_before) < 100 << 10,
        "{rss_before} -> {rss_after} KiB"
    );
}
