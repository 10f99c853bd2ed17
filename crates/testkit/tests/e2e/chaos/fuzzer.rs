//! A protocol fuzzer over `/ws`: sessions sending random and hostile
//! messages, while health and a normal tunnel are probed.

use std::time::{Duration, Instant};

use cryptun_testkit::chaos::{MARGIN, Outcome, Rng, rss_kib, tagged};
use cryptun_testkit::raw::{eventually, frame, invalid_utf8_text};
use cryptun_testkit::{Origin, TestClient, TestServer, Visitor};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::Message;

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
        2 => json!(rng.next_u64() as i64 >> rng.below(64)),
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
    let mut rng = Rng::new(seed);
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
            let http = Visitor::new(visitor.server);
            let (mut failures, mut probes, mut rss) = (Vec::new(), 0, Vec::new());
            while !done.is_cancelled() {
                let health = visitor.get(&own, "/healthz").await.status;
                if health != 200 {
                    failures.push(format!("/healthz {health}"));
                }
                let token = format!("probe-{probes}");
                let outcome = tagged(&http, &host, &token, limit).await;
                if outcome != Outcome::Status(200) {
                    failures.push(format!("{token}: {outcome:?}"));
                }
                probes += 1;
                rss.push(rss_kib(None));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (failures, probes, rss)
        })
    };

    let started = Instant::now();
    let url = server.ws_url();
    let seeds: Vec<u64> = (0..SESSIONS).map(|_| rng.next_u64()).collect();
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
    eventually(
        Duration::from_secs(10),
        "the fuzzing sessions gone",
        || async { visitor.metric("cryptun_sessions").await == 1.0 },
    )
    .await;
    let reply = visitor.get(&client.host, "/token?t=last").await;
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "last")
    );
}
