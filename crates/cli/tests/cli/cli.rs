//! The `cryptun` binary as a person runs it: `server`, `http --hello --json`
//! and `demo`, as real processes on ephemeral loopback ports; and with TLS:
//! a development authority, a client over `https://` with and without
//! `--ca`, and a certificate reloaded on SIGHUP. The request
//! inspector is off unless a test asks for it (on port 0), so no test
//! takes the default port 4040.

use std::net::SocketAddr;
use std::process::Command;

use crate::common::{Proc, cryptun, listening_addr};
use cryptun_testkit::tls::TlsFiles;
use cryptun_testkit::{HttpsVisitor, Visitor, within};

/// The address the server logged for its `scheme` listener.
fn listening(proc: &Proc, scheme: &str) -> SocketAddr {
    let needle = format!("scheme={scheme} ");
    loop {
        let line = proc.log_with("listening");
        if line.contains(&needle) {
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="));
            return addr.expect("an address").parse().unwrap();
        }
    }
}

/// Starts `cryptun server` on an ephemeral port and returns it with its address.
fn server() -> (Proc, SocketAddr) {
    let proc = cryptun(&["server", "--listen", "127.0.0.1:0"]);
    let addr = listening_addr(&proc);
    (proc, addr)
}

fn host_of(public_url: &str) -> &str {
    public_url.strip_prefix("http://").unwrap()
}

#[tokio::test]
async fn http_hello_json_prints_tunnel_created_then_request_lines() {
    let (_server, addr) = server();
    let client = cryptun(&[
        "http",
        "--hello",
        "--json",
        "--server",
        &format!("http://{addr}"),
    ]);
    let first: serde_json::Value = serde_json::from_str(&client.line()).unwrap();
    assert_eq!(first["type"], "tunnel_created");
    let subdomain = first["subdomain"].as_str().unwrap();
    assert!(subdomain.starts_with("tunnel-"), "{subdomain}");
    assert_eq!(
        first["tunnel_id"].as_str().unwrap(),
        &subdomain["tunnel-".len()..]
    );
    let url = first["public_url"].as_str().unwrap();
    assert_eq!(url, format!("http://{subdomain}.localhost:{}", addr.port()));

    let reply = Visitor::new(addr).get(host_of(url), "/some/path?q=1").await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.text().contains("Hello from Cryptun!"),
        "{}",
        reply.text()
    );
    assert!(reply.text().contains("/some/path?q=1"));

    let logged: serde_json::Value = serde_json::from_str(&client.line()).unwrap();
    assert_eq!(logged["type"], "request");
    assert_eq!(logged["method"], "GET");
    assert_eq!(logged["path"], "/some/path?q=1");
    assert_eq!(logged["status"], 200);
    assert!(logged["duration_ms"].as_f64().unwrap() >= 0.0);
    // When it ended, RFC 3339 UTC to the millisecond: 2026-01-02T03:04:05.678Z.
    let stamp = logged["timestamp"].as_str().expect("a timestamp");
    let at = humantime::parse_rfc3339(stamp).expect("RFC 3339");
    assert!(stamp.len() == 24 && stamp.ends_with('Z'), "{stamp}");
    assert_eq!(&stamp[19..20], ".", "milliseconds: {stamp}");
    let age = std::time::SystemTime::now().duration_since(at).unwrap();
    assert!(age < std::time::Duration::from_secs(60), "{stamp}");
}

/// A stdout nobody reads (a paused pager, a stuck pipe) does not hold up
/// the tunnel (request lines queue for it), nor the client's exit. (The
/// bound on the queue, and the note on lines dropped past it, are unit
/// tests in `lines.rs`.)
#[tokio::test]
async fn a_stdout_nobody_reads_does_not_stall_the_tunnel() {
    use std::io::BufRead as _;
    let (_server, addr) = server();
    let mut client = Command::new(env!("CARGO_BIN_EXE_cryptun"))
        .args([
            "http",
            "--hello",
            "--json",
            "--server",
            &format!("http://{addr}"),
        ])
        .env("CRYPTUN_INSPECT", "off")
        .env("XDG_CONFIG_HOME", "/nonexistent/cryptun-tests")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Only the first line is read; after it, nobody reads the pipe.
    let mut stdout = std::io::BufReader::new(client.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    let host = host_of(first["public_url"].as_str().unwrap()).to_owned();
    // Each request line is ~150 bytes: 2,000 of them are several times
    // what a pipe holds (64 KiB on Linux).
    if !served_within_a_minute(addr, &host, 2000).await {
        client.kill().unwrap();
        panic!("the tunnel stalled behind its unread stdout");
    }
    // Lines are still queued for the full pipe: on SIGTERM the client waits
    // for them only so long (2 s), then exits anyway.
    assert!(
        terminated_within(&mut client, 15),
        "stuck on its unread stdout after SIGTERM"
    );
}

/// Whether `count` requests to `host` through the server at `addr` were
/// all answered 200 within a minute.
async fn served_within_a_minute(addr: SocketAddr, host: &str, count: usize) -> bool {
    let visitor = Visitor::new(addr);
    let served = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        for i in 0..count {
            let reply = visitor.get(host, &format!("/request/{i}")).await;
            assert_eq!(reply.status, 200, "request {i}");
        }
    });
    served.await.is_ok()
}

/// Sends SIGTERM to `child` and waits up to `secs` for it to exit (killing
/// it if it does not): whether it exited.
fn terminated_within(child: &mut std::process::Child, secs: u64) -> bool {
    let stopping = std::time::Instant::now();
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        if stopping.elapsed() > std::time::Duration::from_secs(secs) {
            child.kill().unwrap();
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A server whose stderr nobody reads (`cryptun server 2>&1 | less`,
/// paused) keeps serving (its access log lines queue for it), and it still
/// exits promptly.
#[tokio::test]
async fn a_server_log_nobody_reads_does_not_stall_the_server() {
    let mut server = Command::new(env!("CARGO_BIN_EXE_cryptun"))
        .args(["server", "--listen", "127.0.0.1:0"])
        .env("XDG_CONFIG_HOME", "/nonexistent/cryptun-tests")
        .env("XDG_DATA_HOME", crate::common::data_home())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Only the lines up to the listening address are read; after them,
    // nobody reads the pipe.
    let mut stderr = std::io::BufReader::new(server.stderr.take().unwrap());
    let addr: SocketAddr = loop {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0);
        if let Some(addr) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
        {
            break addr.parse().unwrap();
        }
    };
    let client = cryptun(&[
        "http",
        "--hello",
        "--json",
        "--server",
        &format!("http://{addr}"),
    ]);
    let first: serde_json::Value = serde_json::from_str(&client.line()).unwrap();
    let host = host_of(first["public_url"].as_str().unwrap()).to_owned();
    // Each access log line is ~250 bytes: 2,000 of them are several times
    // what a pipe holds (64 KiB on Linux).
    if !served_within_a_minute(addr, &host, 2000).await {
        server.kill().unwrap();
        panic!("the server stalled behind its unread stderr");
    }
    assert!(
        terminated_within(&mut server, 20),
        "stuck on its unread stderr after SIGTERM"
    );
}

#[tokio::test]
async fn http_prints_the_url_plainly_and_refuses_a_taken_name() {
    let (_server, addr) = server();
    let server_url = format!("http://{addr}");
    let first = cryptun(&[
        "http",
        "--hello",
        "--subdomain",
        "myapp",
        "--server",
        &server_url,
    ]);
    let line = first.line();
    assert!(
        line.contains(&format!("http://myapp.localhost:{}", addr.port())),
        "{line}"
    );
    let mut second = cryptun(&[
        "http",
        "--hello",
        "--subdomain",
        "myapp",
        "--server",
        &server_url,
    ]);
    let status = second.child.wait().unwrap();
    assert!(!status.success());
    let error = second.log_with("error");
    assert!(error.contains("in use"), "{error}");
}

#[tokio::test]
async fn demo_serves_the_hello_page() {
    let demo = cryptun(&["demo", "--listen", "127.0.0.1:0"]);
    let url = loop {
        let line = demo.line();
        if let Some(url) = line.trim().strip_prefix("Public URL") {
            break url.trim().to_owned();
        }
    };
    let curl = demo.line();
    assert!(curl.contains(&format!("curl {url}")), "{curl}");
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let reply = Visitor::new(SocketAddr::from(([127, 0, 0, 1], port)))
        .get(host_of(&url), "/")
        .await;
    assert_eq!(reply.status, 200);
    assert!(reply.text().contains("Hello from Cryptun!"));
}

#[test]
fn bad_target_is_refused_clearly() {
    let mut proc = cryptun(&["http", "ftp://nowhere:21"]);
    assert!(!proc.child.wait().unwrap().success());
    let error = proc.log_with("error");
    assert!(error.contains("invalid target"), "{error}");
}

#[tokio::test]
async fn self_signed_server_and_a_client_over_https() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let server = cryptun(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-self-signed",
        "--data-dir",
        data_dir,
    ]);
    assert!(server.line().contains("certificate authority"));
    let ca = server.line().trim().to_owned();
    assert!(ca.starts_with(data_dir) && ca.ends_with("ca.pem"), "{ca}");
    let https = listening(&server, "https");
    let url = format!("https://localhost:{}", https.port());

    let client = cryptun(&["http", "--hello", "--json", "--server", &url, "--ca", &ca]);
    let first: serde_json::Value = serde_json::from_str(&client.line()).unwrap();
    let public = first["public_url"].as_str().unwrap();
    let host = public.strip_prefix("https://").unwrap();
    assert_eq!(
        host,
        format!(
            "{}.localhost:{}",
            first["subdomain"].as_str().unwrap(),
            https.port()
        )
    );
    let name = host.split(':').next().unwrap();
    let visitor = HttpsVisitor::new(https, ca.as_ref());
    let reply = within("https get", visitor.get(Some(name), host, "/")).await;
    assert_eq!(reply.status, 200);
    assert!(reply.text().contains("Hello from Cryptun!"));

    let refused = cryptun(&["http", "--hello", "--server", &url]);
    let error = refused.log_with("error");
    assert!(error.contains("certificate not trusted"), "{error}");
    assert!(error.contains("--ca FILE"), "{error}");
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_the_certificate_files() {
    let files = TlsFiles::generate("localhost");
    let server = cryptun(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        files.cert.to_str().unwrap(),
        "--tls-key",
        files.key.to_str().unwrap(),
    ]);
    let https = listening(&server, "https");
    let old = HttpsVisitor::new(https, &files.ca);
    let served = within("handshake", old.served_leaf("localhost")).await;
    assert_eq!(served.unwrap(), files.leaf());

    let renewed = TlsFiles::generate("localhost");
    std::fs::copy(&renewed.cert, &files.cert).unwrap();
    std::fs::copy(&renewed.key, &files.key).unwrap();
    let pid = server.child.id().to_string();
    let kill = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(kill.success());
    server.log_with("certificate reloaded");
    let new = HttpsVisitor::new(https, &renewed.ca);
    let served = within("handshake", new.served_leaf("localhost")).await;
    assert_eq!(served.unwrap(), renewed.leaf());
}

#[tokio::test]
async fn http_json_announces_the_inspector_which_lists_requests() {
    let (_server, addr) = server();
    let client = cryptun(&[
        "http",
        "--hello",
        "--json",
        "--inspect=127.0.0.1:0",
        "--server",
        &format!("http://{addr}"),
    ]);
    let first: serde_json::Value = serde_json::from_str(&client.line()).unwrap();
    assert_eq!(first["type"], "tunnel_created");
    let second: serde_json::Value = serde_json::from_str(&client.line()).unwrap();
    assert_eq!(second["type"], "inspector");
    let inspector_url = second["url"].as_str().unwrap();
    let inspector: SocketAddr = inspector_url
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap();
    assert!(inspector.ip().is_loopback(), "{inspector}");

    let url = first["public_url"].as_str().unwrap();
    let reply = Visitor::new(addr)
        .get(host_of(url), "/seen?by=inspector")
        .await;
    assert_eq!(reply.status, 200);
    let logged: serde_json::Value = serde_json::from_str(&client.line()).unwrap();
    assert_eq!(logged["type"], "request");

    let page = Visitor::new(inspector)
        .get(&inspector.to_string(), "/")
        .await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("Cryptun inspector"));
    let list = Visitor::new(inspector)
        .get(&inspector.to_string(), "/api/requests")
        .await
        .json();
    assert_eq!(list[0]["path"], "/seen?by=inspector", "{list}");
    assert_eq!(list[0]["status"], 200, "{list}");
}

/// Binds ten consecutive loopback ports (the inspector's whole range).
/// Many tries: with thousands of connections open on the machine (a
/// benchmark's swarm), ten free neighbours can be rare.
fn ten_taken_ports() -> (u16, Vec<std::net::TcpListener>) {
    for _ in 0..1000 {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        let Some(last) = port.checked_add(9) else {
            continue;
        };
        let rest: Vec<_> = (port + 1..=last)
            .map_while(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if rest.len() == 9 {
            let mut all = vec![first];
            all.extend(rest);
            return (port, all);
        }
    }
    panic!("no ten consecutive free loopback ports in 1000 tries");
}

#[tokio::test]
async fn a_taken_inspector_port_moves_up_and_a_full_range_only_warns() {
    let (_server, addr) = server();
    let server_url = format!("http://{addr}");
    let (port, held) = ten_taken_ports();

    // All ten taken: a warning, and the tunnel runs without the inspector.
    let wanted = format!("127.0.0.1:{port}");
    let args = [
        "http",
        "--hello",
        &format!("--inspect={wanted}"),
        "--server",
        &server_url,
    ];
    let client = cryptun(&args);
    let warning = client.log_with("request inspector");
    assert!(warning.contains("warning"), "{warning}");
    assert!(client.line().starts_with("Forwarding"));

    // The first one taken: the next free one is used and announced.
    let mut held = held;
    let _first = held.remove(0);
    drop(held);
    let client = cryptun(&args);
    assert!(client.line().starts_with("Forwarding"));
    let line = client.line();
    let shown = line
        .strip_prefix("Inspector")
        .unwrap_or_else(|| panic!("{line}"));
    let shown: SocketAddr = shown
        .trim()
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        shown.port() > port && shown.port() <= port + 9,
        "{shown} after {port}"
    );
}

#[test]
fn completions_for_every_shell_name_the_subcommands() {
    for (shell, marker) in [
        ("bash", "_cryptun()"),
        ("zsh", "#compdef cryptun"),
        ("fish", "complete -c cryptun"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_cryptun"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: {script:.200}");
        for sub in ["server", "http", "start", "demo", "keys", "login"] {
            assert!(script.contains(sub), "{shell} lacks {sub}");
        }
    }
}

#[test]
fn every_subcommand_has_examples_in_its_help() {
    for sub in [
        "server",
        "http",
        "start",
        "demo",
        "keys",
        "login",
        "completions",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_cryptun"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(
            help.contains("Example"),
            "`cryptun {sub} --help` has no example:\n{help}"
        );
    }
}

/// `cryptun server` with the ACME flags (the key from the environment)
/// gets its wildcard from Pebble through Knot, and a tunnel is reached
/// over HTTPS with it, verified against Pebble's root.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_with_acme_flags_serves_its_tunnels_with_the_certificate_it_got() {
    let dns = cryptun_testkit::TestDns::start("tunnels.test");
    let pebble = cryptun_testkit::TestPebble::start(dns.addr, std::time::Duration::from_secs(3600));
    let data = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cryptun"));
    cmd.args([
        "server",
        "--listen",
        "127.0.0.1:0",
        "--tls-listen",
        "127.0.0.1:0",
    ])
    .args(["--domain", "tunnels.test", "--auth", "off"])
    .args(["--acme-dns-server", &dns.addr.to_string()])
    .args(["--acme-directory", &pebble.directory])
    .arg("--acme-ca")
    .arg(&pebble.api_ca)
    .args(["--acme-email", "ops@tunnels.test", "--acme-agree-tos"])
    .arg("--data-dir")
    .arg(data.path())
    .env("CRYPTUN_ACME_TSIG_KEY", dns.key())
    .env("RUST_LOG", "info")
    .env("CRYPTUN_INSPECT", "off")
    .env("XDG_CONFIG_HOME", "/nonexistent/cryptun-tests");
    let server = Proc::start(cmd);
    let plain = listening(&server, "http");
    let https = listening(&server, "https");
    server.log_with("ACME certificate installed");

    let client = cryptun(&[
        "http",
        "--hello",
        "--json",
        "--server",
        &format!("http://{plain}"),
    ]);
    let first: serde_json::Value = serde_json::from_str(&client.line()).unwrap();
    let public = first["public_url"].as_str().unwrap();
    let host = public.strip_prefix("https://").unwrap();
    let name = host.split(':').next().unwrap();
    assert!(name.ends_with(".tunnels.test"), "{public}");
    let visitor = HttpsVisitor::new(https, &pebble.issuing_root);
    let reply = within("https get", visitor.get(Some(name), host, "/")).await;
    assert_eq!(reply.status, 200);
    assert!(reply.text().contains("Hello from Cryptun!"));
}
