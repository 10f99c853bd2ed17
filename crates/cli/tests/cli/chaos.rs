//! Chaos, opt-in: a kill storm of the server itself under tagged load. The
//! real `cryptun server` process is stopped over and over, with SIGKILL
//! (no goodbye: its database is all that is left) or SIGTERM (a graceful
//! stop), at random, and started again on the same port and data
//! directory, while a reconnecting client serves an origin that echoes a
//! token and visitors send `GET /token?t=<unique>` in a loop. The rest of
//! the chaos suite is in `cryptun-testkit`'s `tests/e2e/chaos`; see
//! docs/SECURITY.md, "Chaos runs":
//!
//! ```text
//! cargo test -p cryptun --test cli chaos:: -- --ignored --nocapture
//! ```
//!
//! The client is the library's (testkit's `TestClient`, in this process)
//! rather than a `cryptun http` process: the binary's reconnect backoff
//! starts again from 1 s only after a connection that lasted 5 s, by
//! design, so under restarts every 2-3 s its waits grow to 30 s and it
//! would spend the storm waiting; the library client here takes steps of
//! 100-500 ms. Its memory is this process's resident set (origin and
//! visitors included, so an upper bound).
//!
//! `CHAOS_SEED=<seed>` replays a run's random choices (printed first).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{Proc, cryptun, listening_addr};
use cryptun_client::{ClientConfig, Event, Target};
use cryptun_testkit::chaos::{MARGIN, Outcome, Rng, print_table, rss_kib, tagged, tagged_load};
use cryptun_testkit::{Origin, TestClient, Visitor};

const STORM: Duration = Duration::from_secs(20);
const VISITORS: usize = 8;
/// The server's request timeout (`--request-timeout`).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon the tunnel must serve again after the last restart: the
/// client's longest backoff step (500 ms, jittered up to 750 ms), a
/// handshake, and a loaded loopback's margin.
const HEALED_WITHIN: Duration = Duration::from_secs(5);
/// How much this process (client, origin, visitors) may grow over the
/// storm: pools and buffers that settle, not a leak per restart.
const RSS_GROWTH_KIB: u64 = 16 << 10;

/// `cryptun server` on `listen`, keeping its database in `data`, holding
/// names a minute after a disconnect.
fn server(listen: &str, data: &Path) -> Proc {
    let data = data.to_str().unwrap();
    let timeout = format!("{}s", REQUEST_TIMEOUT.as_secs());
    cryptun(&[
        "server",
        "--listen",
        listen,
        "--data-dir",
        data,
        "--reconnect-grace",
        "1m",
        "--request-timeout",
        &timeout,
        "--shutdown-grace",
        "1s",
        "--heartbeat-interval",
        "1s",
        "--heartbeat-timeout",
        "3s",
    ])
}

/// How one server run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Kill,
    Term,
}

/// What the storm did, as the stopping thread saw it.
struct Storm {
    /// The server left running.
    server: Proc,
    stops: Vec<(Stop, Duration)>,
    /// When the last server was started.
    last_start: Instant,
    /// The subdomain of every reconnection, in order.
    names: Vec<String>,
    /// Why the client's connections and attempts failed, and how often.
    errors: BTreeMap<String, usize>,
    /// This process's resident set at each stop, in KiB.
    rss: Vec<u64>,
}

/// Stops and restarts the server at `addr` until `until`: after 2-3 s up,
/// or one time in four after 50-500 ms (a stop during start-up); with
/// SIGKILL or SIGTERM at random; down for 0-500 ms. Drains the client's
/// events as it goes, keeping the names it reconnected with. Blocks.
fn storm(
    mut server: Proc,
    addr: SocketAddr,
    data: &Path,
    mut rng: Rng,
    events: &Mutex<Vec<Event>>,
    until: Instant,
) -> Storm {
    let (mut stops, mut names, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    let mut errors = BTreeMap::new();
    let mut last_start = Instant::now();
    let listen = addr.to_string();
    while Instant::now() < until {
        let up = if rng.below(4) == 0 {
            rng.millis(50, 500)
        } else {
            rng.millis(2000, 3000)
        };
        std::thread::sleep(up);
        drain(events, &mut names, &mut errors);
        rss.push(rss_kib(None));
        let stop = if rng.below(2) == 0 {
            Stop::Kill
        } else {
            Stop::Term
        };
        server.signal(if stop == Stop::Kill { "KILL" } else { "TERM" });
        let stopping = Instant::now();
        server.wait_exit(Duration::from_secs(10));
        stops.push((stop, stopping.elapsed()));
        std::thread::sleep(rng.millis(0, 500));
        server = self::server(&listen, data);
        assert_eq!(listening_addr(&server), addr);
        last_start = Instant::now();
    }
    drain(events, &mut names, &mut errors);
    Storm {
        server,
        stops,
        last_start,
        names,
        errors,
        rss,
    }
}

/// Takes the client's events so far: the name of each reconnection into
/// `names`, and why each connection or attempt failed into `errors`.
fn drain(
    events: &Mutex<Vec<Event>>,
    names: &mut Vec<String>,
    errors: &mut BTreeMap<String, usize>,
) {
    for event in events.lock().unwrap().drain(..) {
        match event {
            Event::Reconnected { tunnel } => names.push(tunnel.subdomain),
            Event::Disconnected { error, .. } => *errors.entry(error).or_insert(0) += 1,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "chaos: opt-in, see docs/SECURITY.md"]
async fn kill_storm_of_the_server_under_tagged_load() {
    const TEST: &str = "server_storm";
    let mut rng = Rng::seeded(TEST);
    let run = rng.next_u64();
    let data = tempfile::tempdir().unwrap();
    let first = server("127.0.0.1:0", data.path());
    let addr = listening_addr(&first);
    let origin = Origin::start().await;
    let target = Target::parse(&origin.target()).unwrap();
    let config = ClientConfig::new(&format!("http://{addr}"), target).unwrap();
    let client = TestClient::start_config(config).await.unwrap();
    let name = client.tunnel.subdomain.clone();
    let limit = REQUEST_TIMEOUT + MARGIN;
    let http = Visitor::new(addr);
    let first_answer = tagged(&http, &client.host, "first", limit).await;
    assert_eq!(first_answer, Outcome::Status(200));
    // The server's keeper saves live names as holds within a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rss_before = rss_kib(None);

    let until = Instant::now() + STORM;
    let load = {
        let host = client.host.clone();
        let until = tokio::time::Instant::from_std(until);
        tokio::spawn(async move { tagged_load(VISITORS, addr, &host, run, until, limit).await })
    };
    let stormed = {
        let (events, dir) = (Arc::clone(&client.events), data.path().to_owned());
        tokio::task::spawn_blocking(move || storm(first, addr, &dir, rng, &events, until))
    };
    let stormed = stormed.await.unwrap();
    let counts = load.await.unwrap();

    // The tunnel serves again after the last restart.
    let healed = loop {
        let outcome = tagged(&http, &client.host, "after", limit).await;
        let since = stormed.last_start.elapsed();
        if outcome == Outcome::Status(200) || since > Duration::from_secs(15) {
            break (outcome, since);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let rss_after = rss_kib(None);

    let kills = stormed.stops.iter().filter(|s| s.0 == Stop::Kill).count();
    let terms = stormed.stops.len() - kills;
    let slowest_term = stormed
        .stops
        .iter()
        .filter(|s| s.0 == Stop::Term)
        .map(|s| s.1)
        .max();
    eprintln!(
        "{TEST}: {} restarts ({kills} SIGKILL, {terms} SIGTERM, the slowest graceful stop {slowest_term:?}), \
         {} reconnections, all as {:?}: {}",
        stormed.stops.len(),
        stormed.names.len(),
        name,
        stormed.names.iter().all(|n| *n == name),
    );
    print_table(TEST, &counts);
    print_table(TEST, &stormed.errors);
    eprintln!(
        "{TEST}: serving again {:?} after the last restart ({:?})",
        healed.1, healed.0
    );
    eprintln!(
        "{TEST}: RSS (client, origin, visitors) {rss_before} KiB before, {:?} at each stop, {rss_after} KiB after",
        stormed.rss
    );

    assert_eq!(healed.0, Outcome::Status(200));
    assert!(healed.1 < HEALED_WITHIN, "{:?}", healed.1);
    assert!(
        stormed.stops.len() >= 5,
        "only {} restarts",
        stormed.stops.len()
    );
    for (outcome, n) in &counts {
        // 404 would be a name the server forgot: held names survive a kill.
        let allowed = matches!(
            outcome,
            Outcome::Status(200 | 502 | 503 | 504) | Outcome::Refused | Outcome::Broken
        );
        assert!(allowed, "{n} requests ended {outcome:?}");
    }
    // A connection cut by a kill loses at most the request on it: one per
    // visitor per stop.
    let broken = counts.get(&Outcome::Broken).copied().unwrap_or(0);
    assert!(broken <= VISITORS * stormed.stops.len(), "{broken} broken");
    assert!(counts.get(&Outcome::Status(200)).copied().unwrap_or(0) > 0);
    assert!(!stormed.names.is_empty(), "the client never reconnected");
    assert!(
        stormed.names.iter().all(|n| *n == name),
        "{:?}",
        stormed.names
    );
    assert!(
        rss_after.saturating_sub(rss_before) < RSS_GROWTH_KIB,
        "RSS {rss_before} -> {rss_after} KiB"
    );
    drop(stormed.server);
}
