//! `cryptun http` pointed at development servers, as a person runs it:
//! `--host-header rewrite` to an app that refuses other Hosts, an
//! `https://` target with `--local-ca` or `--local-insecure` (and the
//! warning that goes with it), and the settings it refuses before
//! connecting.

use std::net::SocketAddr;

use crate::common::{Proc, cryptun, listening_addr};
use cryptun_testkit::Visitor;
use cryptun_testkit::devserver::{HostCheck, HttpsOrigin};

fn server() -> (Proc, SocketAddr) {
    let proc = cryptun(&["server", "--listen", "127.0.0.1:0"]);
    let addr = listening_addr(&proc);
    (proc, addr)
}

/// `cryptun http --json ARGS` against `addr`, and the Host of its URL.
fn client(addr: SocketAddr, args: &[&str]) -> (Proc, String) {
    let server = format!("http://{addr}");
    let mut argv = vec!["http", "--json", "--server", &server];
    argv.extend_from_slice(args);
    let proc = cryptun(&argv);
    let created: serde_json::Value = serde_json::from_str(&proc.line()).unwrap();
    let url = created["public_url"].as_str().expect("a public URL");
    let host = url.strip_prefix("http://").unwrap().to_owned();
    (proc, host)
}

#[tokio::test(flavor = "multi_thread")]
async fn host_header_rewrite_lets_a_host_checking_app_answer() {
    let (_server, addr) = server();
    let app = HostCheck::start().await;
    let (_plain, host) = client(addr, &[&app.target()]);
    assert_eq!(Visitor::new(addr).get(&host, "/").await.status, 403);
    let (_rewriting, host) = client(addr, &[&app.target(), "--host-header", "rewrite"]);
    let reply = Visitor::new(addr).get(&host, "/").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["host"], app.target());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_target_with_local_ca_or_local_insecure_is_served() {
    let (_server, addr) = server();
    let origin = HttpsOrigin::start().await;
    let ca = origin.files.ca.to_str().unwrap();
    let (_trusting, host) = client(addr, &[&origin.target(), "--local-ca", ca]);
    assert_eq!(Visitor::new(addr).get(&host, "/").await.status, 200);

    let (insecure, host) = client(addr, &[&origin.target(), "--local-insecure"]);
    assert_eq!(Visitor::new(addr).get(&host, "/").await.status, 200);
    let warning = tokio::task::block_in_place(|| insecure.log_with("--local-insecure"));
    assert!(warning.starts_with("warning: "), "{warning}");
    assert!(warning.contains(&origin.target()), "{warning}");
    assert!(warning.contains("not checked"), "{warning}");
}

/// The error `cryptun ARGS` exits with (non-zero) before it connects.
fn refused(args: &[&str]) -> String {
    let mut proc = cryptun(args);
    assert!(!proc.child.wait().unwrap().success(), "{args:?} ran");
    proc.finish().join("\n")
}

#[test]
fn bad_local_service_settings_are_refused_before_connecting() {
    let plain = refused(&["http", "3000", "--local-insecure"]);
    assert!(plain.contains("are for https:// targets"), "{plain}");
    let missing = refused(&[
        "http",
        "https://localhost:8443",
        "--local-ca",
        "/nonexistent/ca.pem",
    ]);
    assert!(
        missing.contains("cannot use --local-ca /nonexistent/ca.pem"),
        "{missing}"
    );
    let host = refused(&["http", "3000", "--host-header", "http://x/"]);
    assert!(host.contains("expected rewrite, preserve"), "{host}");
    let both = refused(&[
        "http",
        "https://localhost:8443",
        "--local-ca",
        "ca.pem",
        "--local-insecure",
    ]);
    assert!(both.contains("cannot be used with"), "{both}");
}
