//! A cluster of real `cryptun server` processes on a real `redis-server`,
//! with real `cryptun http` clients, all on loopback: a node killed with
//! SIGKILL is healed by its clients reconnecting to the other nodes and
//! taking their names back with their reconnect secrets (visitors get 503
//! meanwhile, never 404); a node paused with SIGSTOP past its lease, while
//! its client moved, never answers for the name again once it resumes.
//!
//! Every request carries a tag of its own (in its path and in an `x-tag`
//! header), which the origin echoes: no answer may carry another
//! request's. A client picks its server at random among its `--server`s,
//! so each is started again until it lands on the node under test.
//!
//! The client's heartbeat follows the server's `--heartbeat-interval`
//! (it gives up after three intervals of silence), so the nodes are given
//! short ones; `--cluster-lease 2s` keeps the tests short.
//!
//! Each test starts its own `redis-server` (`TestRedis`); it fails, not
//! skips, when Redis is not installed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{Proc, cryptun, listening_addr};
use cryptun_testkit::{Origin, TestRedis};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

const SECRET: &str = "cluster-nodes-test-secret-0123456789";
/// `--cluster-lease` of every node.
const LEASE: Duration = Duration::from_secs(2);
/// What the issue allows for a killed node's tunnels to answer again.
const HEAL_LIMIT: Duration = Duration::from_secs(20);

/// A node: `cryptun server` in a cluster, on ephemeral loopback ports.
struct Node {
    name: &'static str,
    proc: Proc,
    /// Its public listener (visitors and clients).
    addr: SocketAddr,
}

impl Node {
    /// Node `name` of the cluster on `redis`, its server pinging clients
    /// every `heartbeat`.
    fn start(redis: &TestRedis, name: &'static str, heartbeat: &str) -> Node {
        let url = redis.url();
        let lease = format!("{}s", LEASE.as_secs());
        let proc = cryptun(&[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--cluster",
            &url,
            "--node-name",
            name,
            "--cluster-listen",
            "127.0.0.1:0",
            "--cluster-secret",
            SECRET,
            "--cluster-lease",
            &lease,
            "--heartbeat-interval",
            heartbeat,
        ]);
        let addr = listening_addr(&proc);
        Node { name, proc, addr }
    }

    /// As a `--server` URL, and as the client's JSON names it.
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Runs `f`, which blocks (reading a process's output), without stopping
/// the runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The next stdout line of `proc`, as JSON.
fn json_line(proc: &Proc) -> Value {
    let line = proc.line();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// A `cryptun http --json` client and the tunnel it was given.
struct Client {
    proc: Proc,
    subdomain: String,
    /// The Host visitors use for the tunnel.
    host: String,
}

/// `cryptun http --json` to `origin` with `servers`, started again until
/// it is on `on` (it picks among its servers at random); those that land
/// elsewhere are killed.
fn client_on(origin: &Origin, servers: &[String], on: &str) -> Client {
    let target = origin.target();
    let mut args = vec!["http", target.as_str(), "--json"];
    for server in servers {
        args.extend(["--server", server.as_str()]);
    }
    for _ in 0..40 {
        let proc = cryptun(&args);
        let created = json_line(&proc);
        assert_eq!(created["type"], "tunnel_created", "{created}");
        if created["server"] == on {
            let public = created["public_url"].as_str().unwrap();
            return Client {
                subdomain: created["subdomain"].as_str().unwrap().to_owned(),
                host: public.strip_prefix("http://").unwrap().to_owned(),
                proc,
            };
        }
    }
    panic!("40 clients with {servers:?}, none on {on}");
}

/// The client's next `reconnected` line, past the `disconnected` and
/// `request` lines before it, within `limit` (and testkit's LIMIT for each
/// line).
fn reconnected(client: &Client, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        assert!(
            Instant::now() < deadline,
            "no reconnected line within {limit:?}"
        );
        let line = json_line(&client.proc);
        match line["type"].as_str() {
            Some("reconnected") => return line,
            Some("disconnected" | "request") => {}
            _ => panic!("unexpected line: {line}"),
        }
    }
}

/// What became of one tagged request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// 200, echoing the request's own tag.
    Served,
    /// Another status, with its `x-cryptun-error` code.
    Status(u16, String),
    /// 200 without the request's own tag: another request's answer.
    Misrouted(String),
    /// No whole answer within the limit.
    Hung,
    /// The connection failed before a whole answer.
    Broken(String),
}

/// A tag no other request of this run carries.
fn next_tag(test: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{test}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `GET /echo/TAG` with `x-tag: TAG` on `host` through the node at `node`,
/// on a connection of its own, within `limit`.
async fn tagged(node: SocketAddr, host: &str, tag: &str, limit: Duration) -> Outcome {
    let exchange = async {
        let mut stream = TcpStream::connect(node).await?;
        let request = format!(
            "GET /echo/{tag} HTTP/1.1\r\nHost: {host}\r\nx-tag: {tag}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = match tokio::time::timeout(limit, exchange).await {
        Err(_) => return Outcome::Hung,
        Ok(Err(err)) => return Outcome::Broken(err.to_string()),
        Ok(Ok(raw)) => raw,
    };
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Outcome::Broken(format!("no whole head: {text:?}"));
    };
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    if status != 200 {
        return Outcome::Status(status, header("x-cryptun-error").unwrap_or_default());
    }
    let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        dechunk(body)
    } else {
        body.to_owned()
    };
    let Ok(echo) = serde_json::from_str::<Value>(&body) else {
        return Outcome::Misrouted(body);
    };
    let path_ok = echo["path"] == format!("/echo/{tag}");
    let header_ok = echo["headers"].as_array().is_some_and(|all| {
        all.iter()
            .any(|h| h[0].as_str() == Some("x-tag") && h[1].as_str() == Some(tag))
    });
    if path_ok && header_ok {
        Outcome::Served
    } else {
        Outcome::Misrouted(body)
    }
}

/// A chunked body's content.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("0").trim(), 16);
        match size {
            Ok(n) if n > 0 && after.len() >= n => {
                out.push_str(&after[..n]);
                rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
            }
            _ => break,
        }
    }
    out
}

/// A TCP relay to `upstream` that never passes a close on: when one side
/// goes, the other is left open and silent (what it sends is read and
/// dropped), as when a host vanishes without resets or a network splits.
/// A connection `upstream` refuses is closed at once.
struct SilentRelay {
    addr: SocketAddr,
    accept: AbortHandle,
    relays: Arc<Mutex<Vec<AbortHandle>>>,
}

impl SilentRelay {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let relays = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::clone(&relays);
        let accept = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    let Ok(up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (down_read, down_write) = down.into_split();
                    let (up_read, up_write) = up.into_split();
                    // Both sides stay open, whatever the other did, until
                    // the relay is dropped.
                    let _open =
                        tokio::join!(one_way(down_read, up_write), one_way(up_read, down_write));
                    std::future::pending::<()>().await;
                });
                held.lock().unwrap().push(relay.abort_handle());
            }
        });
        SilentRelay {
            addr,
            accept: accept.abort_handle(),
            relays,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SilentRelay {
    fn drop(&mut self) {
        self.accept.abort();
        for relay in self.relays.lock().unwrap().drain(..) {
            relay.abort();
        }
    }
}

/// Copies `from` to `to` until `from` ends; once `to` fails, what comes is
/// dropped. Neither is closed: both are handed back.
async fn one_way(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
) -> (OwnedReadHalf, OwnedWriteHalf) {
    let mut buf = vec![0u8; 16 << 10];
    let mut passing = true;
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        if passing && to.write_all(&buf[..n]).await.is_err() {
            passing = false;
        }
    }
    (from, to)
}

/// One tagged request of the continuous load.
struct Record {
    /// Which client's tunnel.
    client: usize,
    node: &'static str,
    sent: Instant,
    done: Instant,
    outcome: Outcome,
}

type Records = Arc<Mutex<Vec<Record>>>;

/// Sends tagged requests for `host` through `node`, one after another,
/// until `stop`, into `records`.
fn load(
    records: &Records,
    stop: &Arc<AtomicBool>,
    client: usize,
    host: &str,
    node: &Node,
) -> tokio::task::JoinHandle<()> {
    let (records, stop, host) = (Arc::clone(records), Arc::clone(stop), host.to_owned());
    let (name, addr) = (node.name, node.addr);
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let tag = next_tag("kill");
            let sent = Instant::now();
            let outcome = tagged(addr, &host, &tag, Duration::from_secs(5)).await;
            records.lock().unwrap().push(Record {
                client,
                node: name,
                sent,
                done: Instant::now(),
                outcome,
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// When each (client, node) first answered a request sent after `since`
/// with its tunnel's own answer.
fn first_served(records: &[Record], since: Instant) -> BTreeMap<(usize, &'static str), Instant> {
    let mut first = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.sent >= since && r.outcome == Outcome::Served)
    {
        let at = first.entry((r.client, r.node)).or_insert(r.done);
        *at = (*at).min(r.done);
    }
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_heals_within_20s() {
    let redis = TestRedis::start();
    // Servers ping every 2 s: a client that hears nothing gives up after
    // 6 s, well past the lease.
    let a = Node::start(&redis, "a", "2s");
    let mut b = Node::start(&redis, "b", "2s");
    let c = Node::start(&redis, "c", "2s");
    let origin = Origin::start().await;
    // Two clients on B: one connected straight to it, which sees the
    // connection close when B dies and moves at once; one through a relay
    // that hides B's death, which notices only when its heartbeat times
    // out, after B's lease lapsed: its name must be held for it meanwhile.
    let relay = SilentRelay::start(b.addr).await;
    let (direct, silent) = blocking(|| {
        (
            client_on(&origin, &[b.url(), a.url(), c.url()], &b.url()),
            client_on(&origin, &[relay.url(), a.url(), c.url()], &relay.url()),
        )
    });
    let clients = [&direct, &silent];
    for client in clients {
        for node in [&a, &b, &c] {
            let outcome = tagged(
                node.addr,
                &client.host,
                &next_tag("kill"),
                Duration::from_secs(10),
            )
            .await;
            assert_eq!(
                outcome,
                Outcome::Served,
                "{} via {}",
                client.host,
                node.name
            );
        }
    }

    // Visitors through A and C all along, for both tunnels.
    let records: Records = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut visitors = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        for node in [&a, &c] {
            visitors.push(load(&records, &stop, i, &client.host, node));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let killed = Instant::now();
    b.proc.signal("KILL");
    b.proc.wait_exit(Duration::from_secs(5));

    // Both tunnels answer again through A and C, within the limit.
    let healed = loop {
        let first = first_served(&records.lock().unwrap(), killed);
        if first.len() == 4 {
            break first;
        }
        assert!(
            killed.elapsed() < HEAL_LIMIT,
            "not served again through both nodes within {HEAL_LIMIT:?} of the kill: only {:?}",
            first.keys().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Then it stays so for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for visitor in visitors {
        tokio::time::timeout(Duration::from_secs(10), visitor)
            .await
            .expect("a visitor's last request ends within its limit")
            .unwrap();
    }

    // Each client says it is on A or C now, with the name it had.
    let nodes_left = [a.url(), c.url()];
    for client in clients {
        let line = blocking(|| reconnected(client, Duration::from_secs(10)));
        assert_eq!(line["subdomain"], client.subdomain.as_str(), "{line}");
        let on = line["server"].as_str().unwrap();
        assert!(nodes_left.iter().any(|n| n == on), "{line}");
    }

    let records = records.lock().unwrap();
    let names = ["direct", "silent"];
    for ((client, node), at) in &healed {
        let gap = *at - killed;
        eprintln!(
            "a_killed_node_heals_within_20s: {} client's tunnel served again through {node} {gap:?} after the kill",
            names[*client]
        );
        assert!(gap < HEAL_LIMIT, "{gap:?}");
    }
    let mut counts: BTreeMap<(usize, &Outcome), usize> = BTreeMap::new();
    for r in records.iter() {
        *counts.entry((r.client, &r.outcome)).or_default() += 1;
    }
    for ((client, outcome), n) in &counts {
        eprintln!(
            "a_killed_node_heals_within_20s: {} client: {n} x {outcome:?}",
            names[*client]
        );
    }
    for r in records.iter() {
        let what = format!(
            "{} client via {}, sent {:?} after the kill",
            names[r.client],
            r.node,
            r.sent.saturating_duration_since(killed)
        );
        match &r.outcome {
            Outcome::Served => {}
            Outcome::Status(404, _) => panic!("{what}: 404, as if the name were unknown"),
            Outcome::Status(503, code)
                if r.done > killed
                    && ["node_unreachable", "tunnel_reconnecting"].contains(&code.as_str()) => {}
            other => panic!("{what}: {other:?}"),
        }
        // Once served again through a node, always.
        if let Some(at) = healed.get(&(r.client, r.node)) {
            if r.sent > *at {
                assert_eq!(r.outcome, Outcome::Served, "{what}: after the heal");
            }
        }
    }
    // The silent client was away past B's lease: its name was held for it
    // (not freed), and it took it back with its reconnect secret.
    let held = Outcome::Status(503, "tunnel_reconnecting".into());
    assert!(
        counts.contains_key(&(1, &held)),
        "the silent client's name was never seen held: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_never_answers_for_a_name_that_moved() {
    let redis = TestRedis::start();
    // Servers ping every 300 ms: a client gives up on a silent one within
    // a second.
    let a = Node::start(&redis, "a", "300ms");
    let b = Node::start(&redis, "b", "300ms");
    let c = Node::start(&redis, "c", "300ms");
    let origin = Origin::start().await;
    // The client reaches B through a relay that keeps B's side of the
    // connection open after the client gives up on it: when B wakes up,
    // its session looks alive, and any request it sends there is lost.
    let relay = SilentRelay::start(b.addr).await;
    let client = blocking(|| client_on(&origin, &[relay.url(), a.url(), c.url()], &relay.url()));
    let host = client.host.clone();
    // Enough for a request to wait out the pause and be answered.
    let limit = Duration::from_secs(10);
    // Through every node: A and C now have B's route cached.
    for node in [&a, &b, &c] {
        let outcome = tagged(node.addr, &host, &next_tag("pause"), limit).await;
        assert_eq!(outcome, Outcome::Served, "via {}", node.name);
    }

    b.proc.signal("STOP");
    let paused = Instant::now();
    // The client hears nothing from B, moves, and takes its name back
    // with its reconnect secret while B is still paused.
    let line = blocking(|| reconnected(&client, Duration::from_secs(20)));
    let moved_in = paused.elapsed();
    assert_eq!(line["subdomain"], client.subdomain.as_str(), "{line}");
    let new_node = [&a, &c]
        .into_iter()
        .find(|n| line["server"] == n.url())
        .unwrap_or_else(|| panic!("moved to neither A nor C: {line}"));
    eprintln!(
        "a_paused_node_never_answers_for_a_name_that_moved: the client moved to {} {moved_in:?} after B was paused",
        new_node.name
    );
    let route = redis.command(&[
        "HGETALL",
        &format!("cryptun:1:{{{}}}:route", client.subdomain),
    ]);
    assert!(
        route
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(new_node.name)),
        "the route names {}: {route}",
        new_node.name
    );

    // Requests reach the paused node: through B itself, and through A
    // and C, either of which may still send them to B by its cached
    // route. They wait in B's sockets.
    let mut waiting = Vec::new();
    for node in [&b, &a, &c] {
        for _ in 0..6 {
            let (addr, name, host) = (node.addr, node.name, host.clone());
            waiting.push(tokio::spawn(async move {
                let tag = next_tag("pause");
                (name, tagged(addr, &host, &tag, limit).await)
            }));
        }
    }
    // B stays paused well past its lease.
    let resume_at = (paused + LEASE + Duration::from_millis(1500))
        .max(Instant::now() + Duration::from_millis(500));
    tokio::time::sleep_until(resume_at.into()).await;
    b.proc.signal("CONT");
    let resumed = Instant::now();

    // Every one is answered by the client's new session, with its own
    // tag: B asked Redis before serving, found its claim gone, and sent
    // them on (a stale session would have lost them in the relay).
    for waiter in waiting {
        let (node, outcome) = tokio::time::timeout(limit + Duration::from_secs(5), waiter)
            .await
            .expect("a waiting request ends within its limit")
            .unwrap();
        assert_eq!(outcome, Outcome::Served, "a request waiting via {node}");
    }
    // And so on for a while, through every node.
    let mut rounds = 0;
    while resumed.elapsed() < Duration::from_secs(3) {
        for node in [&a, &b, &c] {
            let outcome = tagged(node.addr, &host, &next_tag("pause"), limit).await;
            assert_eq!(
                outcome,
                Outcome::Served,
                "via {} {:?} after B resumed",
                node.name,
                resumed.elapsed()
            );
        }
        rounds += 1;
    }
    eprintln!(
        "a_paused_node_never_answers_for_a_name_that_moved: B paused {:?}; 18 waiting requests and {rounds} rounds through A, B and C after, all served by the new session",
        resumed - paused
    );
    // B dropped its stale tunnel when it found its claim taken.
    let dropped = blocking(|| b.proc.log_with("another node claimed this name"));
    assert!(dropped.contains(&client.subdomain), "{dropped}");
}
