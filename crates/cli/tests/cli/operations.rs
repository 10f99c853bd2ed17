//! The `cryptun` binary in operation: SIGTERM drains the request in flight
//! (and writes its access line) and exits 0 while its client says it is
//! reconnecting, and cuts one that outlives `--shutdown-grace`, logged too; `--log-format
//! json` writes one JSON object per line, with an access line per request
//! that leaves the query string out, and says `complete` of a large
//! response delivered whole.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::{Proc, cryptun};
use cryptun_testkit::raw::{WAIT, eventually};
use cryptun_testkit::{Origin, Visitor, within};

/// Starts `cryptun server` on an ephemeral port with `extra` arguments;
/// returns it with its address, read from its text or JSON log.
fn server(extra: &[&str]) -> (Proc, SocketAddr) {
    let mut args = vec!["server", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let proc = cryptun(&args);
    let line = proc.log_with("listening");
    let addr = if line.starts_with('{') {
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        json["addr"].as_str().unwrap().to_owned()
    } else {
        let word = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="));
        word.expect("the listening line names the address")
            .to_owned()
    };
    (proc, addr.parse().unwrap())
}

/// Starts `cryptun http TARGET --json` against `addr`; returns it with the
/// Host of its public URL.
fn client(addr: SocketAddr, target: &[&str]) -> (Proc, String) {
    let server = format!("http://{addr}");
    let mut args = vec!["http", "--json", "--server", &server];
    args.extend_from_slice(target);
    let proc = cryptun(&args);
    let created: serde_json::Value = serde_json::from_str(&proc.line()).unwrap();
    assert_eq!(created["type"], "tunnel_created", "{created}");
    let url = created["public_url"].as_str().unwrap();
    let host = url.strip_prefix("http://").unwrap().to_owned();
    (proc, host)
}

/// A server with `--shutdown-grace grace`, its client tunnelling to an
/// origin, and a visitor's `GET path` that has reached the origin.
async fn request_in_flight(
    grace: &str,
    path: &'static str,
) -> (
    Proc,
    Proc,
    Origin,
    tokio::task::JoinHandle<cryptun_testkit::Reply>,
) {
    let (server, addr) = server(&["--shutdown-grace", grace]);
    let origin = Origin::start().await;
    let (client, host) = client(addr, &[&origin.target()]);
    let reply = {
        let visitor = Visitor::new(addr);
        tokio::spawn(async move { visitor.get(&host, path).await })
    };
    eventually(WAIT, "the request reaches the origin", || async {
        origin.requests() >= 1
    })
    .await;
    (server, client, origin, reply)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let (mut server, client, _origin, slow) = request_in_flight("20s", "/delay?ms=1500").await;

    server.signal("TERM");
    let reply = within("the request in flight", slow).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "done");
    let status = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(30)));
    assert!(status.success(), "{status:?}");
    // Its access line is written before the server says it stopped.
    let lines = server.log_until("stopped");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("cryptun::access") && l.contains("path=/delay")),
        "{lines:#?}"
    );
    // The client noticed, and says what it does about it.
    let lost = tokio::task::block_in_place(|| client.log_with("connection lost"));
    assert!(lost.contains("going away"), "{lost}");
    assert!(lost.contains("reconnecting in"), "{lost}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_outliving_the_shutdown_grace_is_cut_and_still_logged() {
    let (mut server, _client, _origin, stuck) = request_in_flight("300ms", "/hang").await;

    server.signal("TERM");
    let started = std::time::Instant::now();
    let status = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(30)));
    assert!(status.success(), "{status:?}");
    // The grace, then at most the 2 s the sessions get to close.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let lines = server.log_until("stopped");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("still running at the shutdown deadline")),
        "{lines:#?}"
    );
    // Its access line, written after the drain stopped waiting for tasks.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("cryptun::access") && l.contains("path=/hang status=502")),
        "{lines:#?}"
    );
    let reply = within("the cut request", stuck).await.unwrap();
    assert_eq!(reply.status, 502, "{}", reply.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_have_an_access_line_per_request_without_the_query() {
    let (server, addr) = server(&["--log-format", "json"]);
    let (_client, host) = client(addr, &["--hello"]);
    let reply = Visitor::new(addr)
        .get(&host, "/some/path?token=s3cret")
        .await;
    assert_eq!(reply.status, 200);

    let line = tokio::task::block_in_place(|| server.log_with("cryptun::access"));
    let access: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(access["target"], "cryptun::access", "{access}");
    assert_eq!(access["method"], "GET");
    assert_eq!(access["path"], "/some/path");
    assert_eq!(access["status"], 200);
    assert_eq!(access["outcome"], "upstream");
    assert_eq!(access["tunnel"], host.split('.').next().unwrap());
    assert!(access["bytes_out"].as_u64().unwrap() > 0, "{access}");
    assert_eq!(access["bytes_in"], 0);
    assert!(access["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(
        access["visitor"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{access}"
    );
    for line in &server.seen() {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "not JSON: {line}");
        assert!(!line.contains("s3cret"), "a secret was logged: {line}");
    }
}

/// A response delivered whole is logged `complete`, however large: hyper
/// stops reading a body of known length at its last byte, before the body
/// itself says it ended (64 KiB and 1 MiB, streamed over the tunnel).
#[tokio::test(flavor = "multi_thread")]
async fn large_responses_delivered_whole_are_logged_complete() {
    let (server, addr) = server(&["--log-format", "json"]);
    let origin = Origin::start().await;
    let (_client, host) = client(addr, &[&origin.target()]);
    for n in [64usize << 10, 1 << 20] {
        let path = format!("/bytes?n={n}");
        let reply = Visitor::new(addr).get(&host, &path).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body.len(), n);
        let line = tokio::task::block_in_place(|| server.log_with("cryptun::access"));
        let access: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(access["bytes_out"], n as u64, "{access}");
        assert_eq!(access["complete"], true, "{access}");
    }
}
