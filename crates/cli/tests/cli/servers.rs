//! `cryptun http` and `cryptun start` with several servers, as real
//! processes on ephemeral loopback ports: `--server` repeated, the client
//! says which server it is on, and when that server's process is killed it
//! moves to the other with the same name, which then serves its visitors;
//! `servers = [...]` in `client.toml` is tried past a server that is down.

use std::net::SocketAddr;

use crate::common::{Proc, cryptun, listening_addr};
use cryptun_testkit::Visitor;
use serde_json::Value;

/// `cryptun server` on an ephemeral port, and its address.
fn server() -> (Proc, SocketAddr) {
    let proc = cryptun(&["server", "--listen", "127.0.0.1:0"]);
    let addr = listening_addr(&proc);
    (proc, addr)
}

/// The next stdout line of `client`, as JSON.
fn json_line(client: &Proc) -> Value {
    let line = client.line();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// The Host of tunnel `subdomain` on the server at `addr`.
fn host(subdomain: &str, addr: SocketAddr) -> String {
    format!("{subdomain}.localhost:{}", addr.port())
}

#[tokio::test]
async fn http_moves_to_the_other_server_when_its_server_is_killed() {
    let (a, a_addr) = server();
    let (b, b_addr) = server();
    let (a_url, b_url) = (format!("http://{a_addr}"), format!("http://{b_addr}"));
    let args = [
        "http", "--hello", "--json", "--server", &a_url, "--server", &b_url,
    ];
    let client = cryptun(&args);
    let created = json_line(&client);
    assert_eq!(created["type"], "tunnel_created", "{created}");
    let subdomain = created["subdomain"].as_str().unwrap().to_owned();
    let on = created["server"].as_str().unwrap().to_owned();
    assert_eq!(created["server_addr"], on.strip_prefix("http://").unwrap());
    let (mut on_proc, on_addr, other_addr) = if on == a_url {
        (a, a_addr, b_addr)
    } else {
        assert_eq!(on, b_url, "{created}");
        (b, b_addr, a_addr)
    };
    let reply = Visitor::new(on_addr)
        .get(&host(&subdomain, on_addr), "/")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // The server's process dies: no going_away, the connection just drops.
    on_proc.child.kill().unwrap();
    let _ = on_proc.child.wait();
    let reconnected = loop {
        let line = json_line(&client);
        match line["type"].as_str() {
            Some("reconnected") => break line,
            Some("disconnected" | "request") => continue,
            _ => panic!("unexpected line: {line}"),
        }
    };
    assert_eq!(reconnected["server"], format!("http://{other_addr}"));
    assert_eq!(reconnected["server_addr"], other_addr.to_string());
    assert_eq!(
        reconnected["subdomain"],
        subdomain.as_str(),
        "the same name"
    );
    // People are told too, on stderr.
    let told = client.log_with("connected to");
    assert!(told.contains(&other_addr.to_string()), "{told}");
    let reply = Visitor::new(other_addr)
        .get(&host(&subdomain, other_addr), "/after")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply.text().contains("Hello from Cryptun!"),
        "{}",
        reply.text()
    );
}

#[tokio::test]
async fn start_takes_servers_from_client_toml_and_skips_one_that_is_down() {
    let (_live, live) = server();
    // An address where nothing listens.
    let spare = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = spare.local_addr().unwrap();
    drop(spare);
    let origin = cryptun_testkit::Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("client.toml");
    let text = format!(
        "servers = [\"http://{down}\", \"http://{live}\"]\njson = true\n\n[tunnels.web]\ntarget = \"{}\"\n",
        origin.target()
    );
    std::fs::write(&path, text).unwrap();
    let client = cryptun(&["start", "--all", "--config", path.to_str().unwrap()]);
    let created = json_line(&client);
    assert_eq!(created["type"], "tunnel_created", "{created}");
    assert_eq!(created["name"], "web");
    assert_eq!(created["server"], format!("http://{live}"));
    let subdomain = created["subdomain"].as_str().unwrap();
    let reply = Visitor::new(live)
        .get(&host(subdomain, live), "/echo")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}
