//! Chaos, opt-in: a kill storm of a client's connection under tagged load,
//! a protocol fuzzer over `/ws`, and slowloris, each bounded in time, on
//! loopback only, printing its figures. A maintainer runs them before a
//! release (see "Chaos runs" in docs/SECURITY.md):
//!
//! ```text
//! cargo test -p cryptun-testkit --test e2e chaos:: -- --ignored --nocapture --test-threads=1
//! ```
//!
//! One at a time (`--test-threads=1`): the fuzzer measures the whole
//! process's memory, and the figures of each are its own.
//!
//! Random choices come from a small generator seeded from the clock; each
//! test prints its seed (`CHAOS_SEED` replays one).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cryptun_client::Event;
use cryptun_server::Config;
use cryptun_testkit::raw::{frame, invalid_utf8_text};
use cryptun_testkit::{Origin, TestClient, TestServer, Visitor};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::Message;

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

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// Up to `max` random bytes.
    fn some_bytes(&mut self, max: u64) -> Vec<u8> {
        let len = self.below(max) as usize;
        self.bytes(len)
    }

    /// Up to `max` random bytes, read as text (invalid sequences replaced).
    fn text(&mut self, max: u64) -> String {
        String::from_utf8_lossy(&self.some_bytes(max)).into_owned()
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

/// Sessions opened at most; the run stops opening them after [`FUZZ_FOR`].
const SESSIONS: usize = 20_000;
const FUZZ_FOR: Duration = Duration::from_secs(20);
const AT_ONCE: usize = 16;
const MESSAGES: u64 = 300;
/// Types the protocol knows (both directions) and a few it does not.
const TYPES: [&str; 12] = [
    "create_tunnel",
    "response",
    "cancel",
    "ping",
    "pong",
    "request",
    "tunnel_created",
    "error",
    "going_away",
    "",
    "PING",
    "create_tunnel\u{0}",
];

/// A random JSON value, nested at most `depth` deep.
fn value(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(rng.next() as i64 >> rng.below(64)),
        3 => json!(rng.below(u64::from(u32::MAX) + 2)),
        4 => json!(rng.text(40)),
        5 => Value::Array((0..rng.below(8)).map(|_| value(rng, depth - 1)).collect()),
        _ => Value::Object(object(rng, depth - 1)),
    }
}

const FIELDS: [&str; 10] = [
    "request_id",
    "response",
    "status",
    "headers",
    "body",
    "subdomain",
    "version",
    "capabilities",
    "binary_streams",
    "stream",
];

fn object(rng: &mut Rng, depth: u32) -> Map<String, Value> {
    (0..rng.below(6))
        .map(|_| {
            let name = FIELDS[rng.below(FIELDS.len() as u64) as usize];
            (name.to_owned(), value(rng, depth))
        })
        .collect()
}

/// One hostile message: JSON of a real or made-up type, a binary frame of
/// any kind, an oversized one, text that is not UTF-8, or plain noise.
fn hostile(rng: &mut Rng, oversized: usize) -> Message {
    match rng.below(100) {
        // Well formed and harmless, so that a session lives long enough
        // for the rest to reach deeper states.
        0..=39 => Message::text(json!({ "type": "ping" }).to_string()),
        40..=44 => {
            Message::text(json!({ "type": "cancel", "request_id": rng.below(4) }).to_string())
        }
        45..=66 => {
            let mut msg = object(rng, 3);
            let ty = TYPES[rng.below(TYPES.len() as u64) as usize];
            msg.insert("type".to_owned(), json!(ty));
            Message::text(Value::Object(msg).to_string())
        }
        67..=79 => {
            let payload = rng.some_bytes(2048);
            frame(rng.below(8) as u8, rng.below(8) as u32, &payload)
        }
        80..=87 => Message::binary(rng.some_bytes(5)),
        88..=93 => Message::text(rng.text(200)),
        94..=97 => invalid_utf8_text(),
        98 => Message::Ping(rng.some_bytes(126).into()),
        _ => Message::binary(vec![0u8; oversized]),
    }
}

/// What one fuzzing session saw.
#[derive(Default, Debug)]
struct Fuzzed {
    refused: usize,
    sent: usize,
    closed_by_server: usize,
    /// A session that got its tunnel.
    created: usize,
}

async fn fuzz_session(url: String, seed: u64, oversized: usize) -> Fuzzed {
    let mut rng = Rng(seed | 1);
    let mut seen = Fuzzed::default();
    let wait = Duration::from_secs(5);
    let Ok(Ok((ws, _))) = tokio::time::timeout(wait, tokio_tungstenite::connect_async(url)).await
    else {
        seen.refused = 1;
        return seen;
    };
    let (mut sink, mut stream) = ws.split();
    // Read everything the server says, so its writes never stall on us.
    let reader = tokio::spawn(async move {
        let mut created = 0;
        while let Some(Ok(msg)) = stream.next().await {
            if msg
                .to_text()
                .is_ok_and(|t| t.contains("\"tunnel_created\""))
            {
                created = 1;
            }
        }
        created
    });
    if rng.below(2) == 0 {
        let create = json!({ "type": "create_tunnel", "binary_streams": rng.below(2) == 0 });
        let _ = sink.send(Message::text(create.to_string())).await;
    }
    for _ in 0..MESSAGES {
        match tokio::time::timeout(wait, sink.send(hostile(&mut rng, oversized))).await {
            Ok(Ok(())) => seen.sent += 1,
            _ => {
                seen.closed_by_server = 1;
                break;
            }
        }
    }
    let _ = tokio::time::timeout(wait, sink.close()).await;
    if let Ok(Ok(created)) = tokio::time::timeout(wait, reader).await {
        seen.created = created;
    }
    seen
}

/// This process's resident set, in KiB (the server runs in it).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resident memory may grow this much from the first third of a fuzz run
/// to its last: 16 sessions at once, each holding at most a 2 MiB message
/// in the server and one more on our side, is 64 MiB at the very worst if
/// all peaked at the same instant; the allocator keeps what it freed, so
/// the thirds compare peaks, and what stays must be well under that.
const RSS_GROWTH_KIB: u64 = 50 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "chaos: opt-in, see docs/SECURITY.md"]
async fn protocol_fuzzer_over_ws() {
    const TEST: &str = "fuzzer";
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let visitor = Visitor::new(server.addr);
    let own = server.own_host();
    let oversized = server.config.limits.max_message_bytes + 1;
    let mut rng = Rng::seeded(TEST);

    // Meanwhile: health, the normal tunnel, and memory, every 100 ms.
    let done = tokio_util::sync::CancellationToken::new();
    let probe = {
        let (done, visitor, host) = (done.clone(), visitor.clone(), client.host.clone());
        let limit = server.config.request_timeout + MARGIN;
        let own = own.clone();
        tokio::spawn(async move {
            let http: Http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
            let (mut failures, mut probes, mut rss) = (Vec::new(), 0, Vec::new());
            while !done.is_cancelled() {
                let health = visitor.get(&own, "/healthz").await.status;
                if health != 200 {
                    failures.push(format!("/healthz {health}"));
                }
                let token = format!("probe-{probes}");
                let outcome = tagged(&http, visitor.server, &host, &token, limit).await;
                if outcome != Outcome::Status(200) {
                    failures.push(format!("{token}: {outcome:?}"));
                }
                probes += 1;
                rss.push(rss_kib());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (failures, probes, rss)
        })
    };

    let started = Instant::now();
    let url = server.ws_url();
    let seeds: Vec<u64> = (0..SESSIONS).map(|_| rng.next()).collect();
    let results: Vec<Fuzzed> = futures_util::stream::iter(seeds)
        .take_while(|_| std::future::ready(started.elapsed() < FUZZ_FOR))
        .map(|seed| fuzz_session(url.clone(), seed, oversized))
        .buffer_unordered(AT_ONCE)
        .collect()
        .await;
    let elapsed = started.elapsed();
    done.cancel();
    let (failures, probes, rss) = probe.await.unwrap();

    let sum = |f: fn(&Fuzzed) -> usize| results.iter().map(f).sum::<usize>();
    let third = rss.len() / 3;
    let first = rss[..third.max(1)].iter().max().copied().unwrap_or(0);
    let last = rss[rss.len() - third.max(1)..]
        .iter()
        .max()
        .copied()
        .unwrap_or(0);
    eprintln!(
        "{TEST}: {} sessions ({AT_ONCE} at once) in {elapsed:?}: {} with a tunnel, {} messages sent \
         (at most {} in one), {} sessions closed by the server, {} refused",
        results.len(),
        sum(|f| f.created),
        sum(|f| f.sent),
        results.iter().map(|f| f.sent).max().unwrap_or(0),
        sum(|f| f.closed_by_server),
        sum(|f| f.refused),
    );
    eprintln!(
        "{TEST}: {probes} probes, {} failed; RSS peak first third {first} KiB, last third {last} KiB",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        last.saturating_sub(first) < RSS_GROWTH_KIB,
        "RSS grew {first} -> {last} KiB"
    );
    // Every fuzzing session is gone; the normal one remains and serves.
    let settled = Instant::now();
    while visitor.metric("cryptun_sessions").await != 1.0
        && settled.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(visitor.metric("cryptun_sessions").await, 1.0);
    let reply = visitor.get(&client.host, "/token?t=last").await;
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "last")
    );
}

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
    let http: Http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    while started.elapsed() < Duration::from_secs(10) {
        let token = format!("visit-{}", latencies.len());
        let sent = Instant::now();
        let outcome = tagged(&http, server.addr, &client.host, &token, deadline).await;
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
