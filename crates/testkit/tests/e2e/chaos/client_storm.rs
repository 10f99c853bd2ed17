//! A kill storm of a client's connection under tagged load: a relay
//! between the client and the server cuts every connection every 2 s.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cryptun_client::Event;
use cryptun_server::Config;
use cryptun_testkit::chaos::{MARGIN, Outcome, Rng, print_table, tagged, tagged_load};
use cryptun_testkit::{Origin, TestClient, TestServer, Visitor};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

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

const STORM: Duration = Duration::from_secs(20);
const CUT_EVERY: Duration = Duration::from_secs(2);
const VISITORS: usize = 8;

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
    let run = rng.next_u64();

    let started = Instant::now();
    let until = tokio::time::Instant::now() + STORM;
    let load = {
        let (host, addr) = (client.host.clone(), server.addr);
        tokio::spawn(async move { tagged_load(VISITORS, addr, &host, run, until, limit).await })
    };
    let mut cuts = 0;
    while started.elapsed() < STORM {
        tokio::time::sleep(CUT_EVERY).await;
        cuts += cutter.cut();
    }
    let counts = load.await.unwrap();
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
    let http = Visitor::new(server.addr);
    let healed = Instant::now();
    let last = loop {
        let outcome = tagged(&http, &client.host, "after", limit).await;
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
