//! `cryptun tcp` as a person runs it: a real `redis-server` behind a TCP
//! tunnel, reached by a real `redis-cli` through the public port; the JSON
//! lines it prints; and a server that opens no TCP ports saying so.

use std::process::Command;

use cryptun_testkit::TestRedis;

use crate::common::{cryptun, listening_addr};

#[test]
fn redis_cli_talks_to_redis_server_through_a_tcp_tunnel() {
    let redis = TestRedis::start();
    let server = cryptun(&["server", "--listen", "127.0.0.1:0"]);
    let addr = listening_addr(&server);
    let client = cryptun(&[
        "tcp",
        &redis.addr.port().to_string(),
        "--json",
        "--server",
        &format!("http://{addr}"),
    ]);
    let created: serde_json::Value = serde_json::from_str(&client.line()).unwrap();
    assert_eq!(created["type"], "tunnel_created");
    assert_eq!(created["protocol"], "tcp");
    let port = created["remote_port"].as_u64().expect("a port") as u16;
    assert_eq!(created["public_url"], format!("tcp://localhost:{port}"));

    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli runs (apt-get install redis-tools)");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    assert_eq!(cli(&["SET", "through", "the tunnel"]), "OK");
    assert_eq!(cli(&["GET", "through"]), "the tunnel");

    // One line per connection, each with what passed.
    for _ in 0..2 {
        let line: serde_json::Value = serde_json::from_str(&client.line()).unwrap();
        assert_eq!(line["type"], "connection", "{line}");
        assert!(
            line["remote_addr"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:")
        );
        assert!(line["bytes_in"].as_u64().unwrap() > 0, "{line}");
        assert!(line["bytes_out"].as_u64().unwrap() > 0, "{line}");
        assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(line["error"], serde_json::Value::Null);
    }
}

#[test]
fn a_server_on_a_public_address_opens_no_tcp_port_without_a_range() {
    // Not loopback with domain localhost: auth and TCP ports both closed
    // unless opened; auth is opened here, TCP is not.
    let server = cryptun(&[
        "server",
        "--listen",
        "0.0.0.0:0",
        "--domain",
        "tunnels.example.com",
        "--auth",
        "off",
    ]);
    let addr = listening_addr(&server);
    let mut client = cryptun(&[
        "tcp",
        "22",
        "--server",
        &format!("http://127.0.0.1:{}", addr.port()),
    ]);
    let status = client.wait_exit(std::time::Duration::from_secs(20));
    assert!(!status.success());
    let error = client.log_with("error");
    assert!(error.contains("--tcp-ports"), "{error}");
}

#[test]
fn a_tcp_tunnels_target_is_a_port_or_host_and_port() {
    let mut client = cryptun(&["tcp", "http://localhost:22"]);
    let status = client.wait_exit(std::time::Duration::from_secs(20));
    assert!(!status.success());
    let error = client.log_with("error");
    assert!(error.contains("a port (22) or host:port"), "{error}");
}
