//! Chaos, opt-in: a kill storm of a client's connection under tagged load,
//! a protocol fuzzer over `/ws`, and slowloris, each bounded in time, on
//! loopback only, printing its figures. A maintainer runs them before a
//! release (see "Chaos runs" in docs/SECURITY.md):
//!
//! ```text
//! cargo test -p cryptun-testkit --test chaos -- --ignored --nocapture
//! ```
//!
//! Random choices come from a small generator seeded from the clock; each
//! test prints its seed (`CHAOS_SEED` replays one).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cryptun_client::Event;
use cryptun_server::Config;
use cryptun_testkit::{Origin, TestClient, TestServer};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// xorshift64*: enough randomness for chaos, reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn seeded(test: &str) -> Self {
        let seed = std::env::var("CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                now.map_or(1, |d| d.as_nanos() as u64) | 1
            });
        eprintln!("{test}: CHAOS_SEED={seed}");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A TCP relay between a client and the server whose connections can all
/// be cut at once: a lost network, as the client and server both see it.
struct Cutter {
    addr: SocketAddr,
    relays: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Cutter {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let relays = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::clone(&relays);
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                held.lock().unwrap().push(relay.abort_handle());
            }
        });
        Cutter {
            addr,
            relays,
            accept: accept.abort_handle(),
        }
    }

    /// Drops every relayed connection without a word; returns how many.
    fn cut(&self) -> usize {
        let relays = std::mem::take(&mut *self.relays.lock().unwrap());
        relays.iter().for_each(AbortHandle::abort);
        relays.len()
    }
}

impl Drop for Cutter {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// What became of one tagged request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Status(u16),
    /// A 200 whose body is not the request's own token.
    Misrouted,
    /// No answer within the request timeout and its margin.
    Hung,
    /// The visitor's connection failed before a whole response.
    Broken,
}

type Http = Client<HttpConnector, Full<Bytes>>;

async fn tagged(
    http: &Http,
    server: SocketAddr,
    host: &str,
    token: &str,
    limit: Duration,
) -> Outcome {
    let req = http::Request::get(format!("http://{server}/token?t={token}"))
        .header("host", host)
        .body(Full::default())
        .unwrap();
    let exchange = async {
        let resp = http.request(req).await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some((status, body))
    };
    match tokio::time::timeout(limit, exchange).await {
        Err(_) => Outcome::Hung,
        Ok(None) => Outcome::Broken,
        Ok(Some((200, body))) if body != token.as_bytes() => Outcome::Misrouted,
        Ok(Some((status, _))) => Outcome::Status(status),
    }
}

fn print_table(test: &str, counts: &BTreeMap<Outcome, usize>) {
    eprintln!("{test}: outcome | count");
    for (outcome, n) in counts {
        eprintln!("{test}: {outcome:?} | {n}");
    }
}

const STORM: Duration = Duration::from_secs(20);
const CUT_EVERY: Duration = Duration::from_secs(2);
const VISITORS: usize = 8;
/// Past the server's request timeout, what a slow loopback may add.
const MARGIN: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "chaos: opt-in, see docs/SECURITY.md"]
async fn kill_storm_of_the_client_connection_under_tagged_load() {
    const TEST: &str = "kill_storm";
    let config = Config {
        request_timeout: Duration::from_secs(5),
        ..TestServer::test_config()
    };
    let limit = config.request_timeout + MARGIN;
    let server = TestServer::start_with(config).await;
    let origin = Origin::start().await;
    let cutter = Cutter::start(server.addr).await;
    let control = format!("ws://{}/ws", cutter.addr);
    let client = TestClient::start_reconnecting(&server, &origin.target(), |c| {
        c.control_url = control;
    })
    .await
    .unwrap();
    let mut rng = Rng::seeded(TEST);
    let run = rng.next();

    let started = Instant::now();
    let visitors: Vec<_> = (0..VISITORS)
        .map(|v| {
            let (host, addr) = (client.host.clone(), server.addr);
            tokio::spawn(async move {
                let http: Http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
                let mut counts = BTreeMap::new();
                let mut n = 0u64;
                while started.elapsed() < STORM {
                    let token = format!("{run:x}-{v}-{n}");
                    n += 1;
                    let outcome = tagged(&http, addr, &host, &token, limit).await;
                    *counts.entry(outcome).or_insert(0usize) += 1;
                }
                counts
            })
        })
        .collect();
    let mut cuts = 0;
    while started.elapsed() < STORM {
        tokio::time::sleep(CUT_EVERY).await;
        cuts += cutter.cut();
    }
    let mut counts = BTreeMap::new();
    for visitor in visitors {
        for (outcome, n) in visitor.await.unwrap() {
            *counts.entry(outcome).or_insert(0) += n;
        }
    }
    let reconnects = client
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::Reconnected { .. }))
        .count();
    eprintln!(
        "{TEST}: {:?}, {cuts} connections cut, {reconnects} reconnections",
        started.elapsed()
    );
    print_table(TEST, &counts);

    // The tunnel serves again once the storm stops.
    let http: Http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let healed = Instant::now();
    let last = loop {
        let outcome = tagged(&http, server.addr, &client.host, "after", limit).await;
        if outcome == Outcome::Status(200) || healed.elapsed() > Duration::from_secs(10) {
            break outcome;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("{TEST}: serving again after {:?}", healed.elapsed());
    assert_eq!(last, Outcome::Status(200));
    assert!(cuts >= 5, "the storm cut only {cuts} connections");
    for (outcome, n) in &counts {
        let allowed = matches!(outcome, Outcome::Status(200 | 502 | 503 | 504));
        assert!(allowed, "{n} requests ended {outcome:?}");
    }
    assert!(counts.get(&Outcome::Status(200)).copied().unwrap_or(0) > 0);
}
