//! What an idle keep-alive visitor connection holds in the server: every
//! byte of heap (dhat's count), per parked connection, plain and HTTPS,
//! against a bound (docs/BENCHMARKS.md has the figures and where they go);
//! and an idle HTTP/2 connection's (h2c: HTTP/2 keeps its connection state,
//! it is not parked), against its own.
//!
//! A test binary of its own, apart from `e2e`: it counts every allocation
//! of the process, so it has one test, and the visitors live in another
//! process (this binary again, as a "holder" that opens connections when
//! told and keeps them).
//!
//! Each figure is the growth of the heap between two counts taken with the
//! server's parked connections at 100 and at 500, divided by 400: one-time
//! costs (caches, pools, the first connections' tasks) are in both counts.
//!
//! `CRYPTUN_DHAT=1` writes `dhat-heap.json`: the live bytes by allocation
//! site while the 500 HTTPS connections are parked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader as StdBufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use cryptun_testkit::raw::{WAIT, eventually};
use cryptun_testkit::tls::HttpsVisitor;
use cryptun_testkit::visitor::read_response;
use cryptun_testkit::{Origin, TestClient, TestServer, Visitor};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// Set in the holder process: the server's address, its CA (for HTTPS) and
/// the tunnel's host.
const HOLD: &str = "CRYPTUN_TEST_HOLD";
const HOLD_CA: &str = "CRYPTUN_TEST_HOLD_CA";
const HOLD_HOST: &str = "CRYPTUN_TEST_HOLD_HOST";
const HOLD_H2: &str = "CRYPTUN_TEST_HOLD_H2";

/// Connections open before the first count, and added before the second.
const FIRST: usize = 100;
const MORE: usize = 400;

/// The most heap a parked connection may hold, bytes.
const PLAIN_MAX: u64 = 2_304;
const HTTPS_MAX: u64 = 10_752;
/// The most heap an idle HTTP/2 connection may hold: hyper's and h2's
/// state (HPACK tables, stream store, the codec's buffers) kept whole,
/// measured at 39,674 B.
const H2_MAX: u64 = 45_056;

#[test]
fn an_idle_connection_holds_little_heap() {
    if std::env::var_os(HOLD).is_some() {
        return hold();
    }
    let mut profiler = Some(if std::env::var_os("CRYPTUN_DHAT").is_some() {
        dhat::Profiler::new_heap()
    } else {
        dhat::Profiler::builder().testing().build()
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = TestServer::start_tls(TestServer::test_config()).await;
        let origin = Origin::start().await;
        let client = TestClient::start(&server, &origin.target()).await;
        let scraper = Visitor::new(server.addr);
        let tls = server.tls.as_ref().unwrap();

        let plain = per_connection(
            &scraper,
            Kind::Plain,
            &server.addr.to_string(),
            &client.host,
            &mut None,
        )
        .await;
        let https = per_connection(
            &scraper,
            Kind::Https(&tls.ca),
            &tls.addr.to_string(),
            &client.host,
            &mut profiler,
        )
        .await;
        let h2c = TestServer::start_with(cryptun_server::Config {
            h2c: true,
            ..TestServer::test_config()
        })
        .await;
        let h2_client = TestClient::start(&h2c, &origin.target()).await;
        let scraper = Visitor::new(h2c.addr);
        let h2 = per_connection(
            &scraper,
            Kind::H2c,
            &h2c.addr.to_string(),
            &h2_client.host,
            &mut None,
        )
        .await;
        eprintln!(
            "a parked connection holds {plain} B of heap, {https} B over HTTPS; an idle HTTP/2 one {h2} B"
        );
        assert!(plain <= PLAIN_MAX, "plain: {plain} B");
        assert!(https <= HTTPS_MAX, "HTTPS: {https} B");
        assert!(h2 <= H2_MAX, "HTTP/2: {h2} B");
    });
}

/// Heap bytes per parked connection: a holder process opens `FIRST`, then
/// `MORE` connections to `addr`, each making one request to `host`. With
/// `CRYPTUN_DHAT`, `profile` is ended (its file written) while they are
/// all held.
async fn per_connection(
    scraper: &Visitor,
    kind: Kind<'_>,
    addr: &str,
    host: &str,
    profile: &mut Option<dhat::Profiler>,
) -> u64 {
    let mut holder = Holder::start(kind, addr, host);
    holder.open(FIRST);
    settled(scraper, kind, FIRST).await;
    let first = dhat::HeapStats::get().curr_bytes as u64;
    holder.open(MORE);
    settled(scraper, kind, FIRST + MORE).await;
    let more = dhat::HeapStats::get().curr_bytes as u64;
    if std::env::var_os("CRYPTUN_DHAT").is_some() {
        drop(profile.take());
    }
    drop(holder);
    if !matches!(kind, Kind::H2c) {
        parked(scraper, 0).await;
    }
    more.saturating_sub(first) / MORE as u64
}

/// How the holder's connections speak.
#[derive(Clone, Copy)]
enum Kind<'a> {
    Plain,
    /// HTTPS, trusting this CA.
    Https(&'a Path),
    /// HTTP/2 with prior knowledge.
    H2c,
}

/// Waits until the server's `n` connections are idle: parked, or for
/// HTTP/2 (never parked) a moment after their last answers.
async fn settled(scraper: &Visitor, kind: Kind<'_>, n: usize) {
    match kind {
        Kind::H2c => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        _ => parked(scraper, n).await,
    }
}

/// Waits until the server counts `n` parked connections, and a moment
/// more for what their last requests left behind to settle.
async fn parked(scraper: &Visitor, n: usize) {
    let what = format!("{n} parked connections");
    eventually(WAIT, &what, || async {
        scraper.metric("cryptun_idle_connections").await == n as f64
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
}

/// The holder process, told how many connections to add on its stdin.
struct Holder {
    child: Child,
    tell: ChildStdin,
    hear: StdBufReader<ChildStdout>,
}

impl Holder {
    fn start(kind: Kind<'_>, addr: &str, host: &str) -> Self {
        let me = std::env::current_exe().unwrap();
        let mut cmd = Command::new(me);
        cmd.args([
            "--exact",
            "an_idle_connection_holds_little_heap",
            "--nocapture",
        ])
        .env(HOLD, addr)
        .env(HOLD_HOST, host)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
        match kind {
            Kind::Https(ca) => {
                cmd.env(HOLD_CA, ca);
            }
            Kind::H2c => {
                cmd.env(HOLD_H2, "1");
            }
            Kind::Plain => {}
        }
        let mut child = cmd.spawn().unwrap();
        let tell = child.stdin.take().unwrap();
        let hear = StdBufReader::new(child.stdout.take().unwrap());
        Holder { child, tell, hear }
    }

    /// Opens `n` more connections, each after one request; returns once
    /// they are all answered.
    fn open(&mut self, n: usize) {
        writeln!(self.tell, "{n}").unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                self.hear.read_line(&mut line).unwrap() > 0,
                "the holder died"
            );
            if line.starts_with("opened") {
                return;
            }
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The holder: opens connections when told, keeps them until killed.
fn hold() {
    let addr = std::env::var(HOLD).unwrap();
    let host = std::env::var(HOLD_HOST).unwrap();
    let ca = std::env::var_os(HOLD_CA);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let https = ca.map(|ca| HttpsVisitor::new(addr.parse().unwrap(), Path::new(&ca)));
        let h2 = std::env::var_os(HOLD_H2).is_some();
        let mut kept: Vec<Box<dyn Send>> = Vec::new();
        let mut lines = std::io::stdin().lock().lines();
        while let Some(Ok(line)) = lines.next() {
            let n: usize = line.trim().parse().unwrap();
            for _ in 0..n {
                match &https {
                    None if h2 => {
                        let tcp = TcpStream::connect(&addr).await.unwrap();
                        kept.push(Box::new(one_h2_request(tcp, &host).await));
                    }
                    Some(https) => {
                        let name = host.split(':').next().unwrap();
                        let tls = https.connect(Some(name)).await.unwrap();
                        kept.push(Box::new(one_request(tls, &host).await));
                    }
                    None => {
                        let tcp = TcpStream::connect(&addr).await.unwrap();
                        kept.push(Box::new(one_request(tcp, &host).await));
                    }
                }
            }
            println!("opened {}", kept.len());
        }
    });
}

/// An HTTP/2 connection on `tcp` after one `GET /token` to `host`
/// answered 200: its sender (the connection runs as a task).
async fn one_h2_request(tcp: TcpStream, host: &str) -> h2::client::SendRequest<bytes::Bytes> {
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let req = http::Request::get(format!("http://{host}/token?t=idle"))
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    send
}

/// `io` after one `GET /token` to `host` answered 200.
async fn one_request<S: AsyncRead + AsyncWrite + Unpin>(io: S, host: &str) -> S {
    let mut io = BufReader::new(io);
    let head = format!("GET /token?t=idle HTTP/1.1\r\nHost: {host}\r\n\r\n");
    io.write_all(head.as_bytes()).await.unwrap();
    let resp = read_response(&mut io).await;
    assert_eq!(resp.status, 200);
    io.into_inner()
}
