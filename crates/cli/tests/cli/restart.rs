//! Keeping a URL across the user's own restarts, with the real `cryptun`
//! binary: a client stopped with Ctrl-C or SIGTERM releases its name, so
//! the same command started again at once gets it; a client killed outright
//! takes its name back on its next start with the reconnect secret it
//! saved (owner-only, in its state directory), while a stranger is told the
//! name is held, waits on one line, and gets it when the hold ends. A run
//! refused for its key keeps the saved secrets for a run with the right one.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::{Proc, cryptun, cryptun_with_state, data_home, listening_addr};
use serde_json::Value;

/// `cryptun server` on an ephemeral port holding names `grace` after a
/// disconnect, and its address.
fn server(grace: &str) -> (Proc, SocketAddr) {
    let proc = cryptun(&[
        "server",
        "--listen",
        "127.0.0.1:0",
        "--reconnect-grace",
        grace,
    ]);
    let addr = listening_addr(&proc);
    (proc, addr)
}

/// `cryptun http --hello --json --subdomain NAME` against `addr`, keeping
/// its state in `state`.
fn client(addr: SocketAddr, name: &str, state: &str) -> Proc {
    let url = format!("http://{addr}");
    let args = [
        "http",
        "--hello",
        "--json",
        "--server",
        &url,
        "--subdomain",
        name,
    ];
    cryptun_with_state(&args, state)
}

/// The first stdout line of `client`, which must be its `tunnel_created`.
fn created(client: &Proc) -> Value {
    let line = client.line();
    let created: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(created["type"], "tunnel_created", "{created}");
    created
}

#[test]
fn a_client_stopped_with_ctrl_c_or_sigterm_leaves_its_name_free() {
    // A grace far longer than the test: a hold would show as a wait.
    let (_server, addr) = server("5m");
    for signal in ["INT", "TERM"] {
        let name = format!("myapp-{}", signal.to_ascii_lowercase());
        let state = data_home();
        let mut first = client(addr, &name, &state);
        assert_eq!(created(&first)["subdomain"], name.as_str());
        first.signal(signal);
        assert!(first.wait_exit(Duration::from_secs(10)).success());
        // Started again at once, even without the secret (another state
        // directory): the name is free.
        let started = Instant::now();
        let again = client(addr, &name, &data_home());
        assert_eq!(created(&again)["subdomain"], name.as_str(), "{signal}");
        assert!(started.elapsed() < Duration::from_secs(5), "{signal}");
        // The released name's secret was removed with it.
        let saved = format!("{state}/cryptun/reconnect/localhost/{name}.json");
        assert!(!std::path::Path::new(&saved).exists(), "{saved}");
    }
}

#[test]
fn a_killed_client_takes_its_name_back_and_a_stranger_waits_for_the_hold() {
    let (_server, addr) = server("4s");
    let state = data_home();
    let mut first = client(addr, "myapp", &state);
    created(&first);
    // The secret is saved per domain and name, for the user only.
    let saved = format!("{state}/cryptun/reconnect/localhost/myapp.json");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&saved).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{saved}");
    first.child.kill().unwrap();
    let _ = first.child.wait();

    // A stranger (no secret) is told the name is held, on one line, and
    // waits instead of exiting.
    let stranger = client(addr, "myapp", &data_home());
    let told = stranger.log_with("held for its previous client");
    assert!(told.contains("asking again in"), "{told}");
    // The killed client, started again, takes its name back at once.
    let started = Instant::now();
    let back = client(addr, "myapp", &state);
    assert_eq!(created(&back)["subdomain"], "myapp");
    assert!(started.elapsed() < Duration::from_secs(3));
    // The stranger, asking again when the hold would have ended, finds the
    // name live and gives up with the server's refusal.
    let mut stranger = stranger;
    let status = stranger.wait_exit(Duration::from_secs(15));
    assert!(!status.success());
    let said = stranger.finish().join("\n");
    assert!(said.contains("in use by another tunnel"), "{said}");
}

#[test]
fn a_stranger_gets_a_held_name_when_its_hold_ends() {
    let (_server, addr) = server("3s");
    let mut first = client(addr, "mine", &data_home());
    created(&first);
    first.child.kill().unwrap();
    let _ = first.child.wait();
    let stranger = client(addr, "mine", &data_home());
    stranger.log_with("held for its previous client");
    assert_eq!(created(&stranger)["subdomain"], "mine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_outright_keeps_the_names_it_served() {
    // The server's database keeps its live names as holds as they come; a
    // crash (SIGKILL, no goodbye) loses none.
    let data = data_home();
    let args = |listen: &str| {
        vec![
            "server".to_owned(),
            "--listen".to_owned(),
            listen.to_owned(),
            "--data-dir".to_owned(),
            data.clone(),
            "--reconnect-grace".to_owned(),
            "1m".to_owned(),
        ]
    };
    let first_args = args("127.0.0.1:0");
    let mut first = cryptun(&first_args.iter().map(String::as_str).collect::<Vec<_>>());
    let addr = listening_addr(&first);
    let state = data_home();
    let owner = client(addr, "crashy", &state);
    created(&owner);
    // Within the keeper's second, the name is in the database.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The owner is held still (it cannot reconnect), the server killed and
    // started again on the same address and data.
    owner.signal("STOP");
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10));
    let again_args = args(&addr.to_string());
    let again = cryptun(&again_args.iter().map(String::as_str).collect::<Vec<_>>());
    listening_addr(&again);
    let host = format!("crashy.localhost:{}", addr.port());
    let visitor = cryptun_testkit::Visitor::new(addr);
    let reply = visitor.get(&host, "/").await;
    assert_eq!(reply.status, 503, "held after the crash: {}", reply.text());
    assert_eq!(reply.headers["x-cryptun-error"], "tunnel_reconnecting");
    // A stranger is told it is held.
    let mut stranger = client(addr, "crashy", &data_home());
    stranger.log_with("held for its previous client");
    stranger.child.kill().unwrap();
    let _ = stranger.child.wait();
    // The owner, let go, takes its name back with its secret.
    owner.signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = visitor.get(&host, "/").await;
        if reply.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the owner did not take its name back: {} {}",
            reply.status,
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `cryptun server` on `listen` with its database in `data`, holding
/// names a minute.
fn server_on(listen: &str, data: &std::path::Path) -> Proc {
    let data = data.to_str().unwrap();
    let args = [
        "server",
        "--listen",
        listen,
        "--data-dir",
        data,
        "--reconnect-grace",
        "1m",
    ];
    cryptun(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_taken_back_survives_a_crash_right_after() {
    // Found by the server kill storm (chaos.rs): a server killed
    // within a second of a client taking its name back (before its keeper
    // saved the change) came back holding the name for the secret the
    // client had used, while the client had been issued a new one; the
    // client was refused its own name ("unauthorized") and gave up.
    let data = tempfile::tempdir().unwrap();
    let mut first = server_on("127.0.0.1:0", data.path());
    let addr = listening_addr(&first);
    let origin = cryptun_testkit::Origin::start().await;
    let target = cryptun_client::Target::parse(&origin.target()).unwrap();
    let config = cryptun_client::ClientConfig::new(&format!("http://{addr}"), target).unwrap();
    let session = cryptun_client::connect(&config).await.unwrap();
    let name = session.tunnel().subdomain.clone();
    // Saved within the keeper's second; then a crash.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10));

    // The client takes its name back from the next start, which is killed
    // at once, before its keeper's next save.
    let mut second = server_on(&addr.to_string(), data.path());
    listening_addr(&second);
    let back = cryptun_client::connect(&session.reconnect_config())
        .await
        .unwrap();
    assert_eq!(back.tunnel().subdomain, name);
    second.signal("KILL");
    second.wait_exit(Duration::from_secs(10));

    // The start after that still gives the client its name.
    let third = server_on(&addr.to_string(), data.path());
    listening_addr(&third);
    let again = cryptun_client::connect(&back.reconnect_config()).await;
    let again = again.unwrap_or_else(|e| panic!("refused its own name: {e}"));
    assert_eq!(again.tunnel().subdomain, name);
}

#[test]
fn a_client_started_with_a_bad_key_keeps_its_saved_secrets() {
    // The server answers a bad key as it answers a stale secret
    // (`unauthorized`): the client must not take one for the other and
    // throw away the secrets a run with the right key will need.
    let args = [
        "server",
        "--listen",
        "127.0.0.1:0",
        "--auth",
        "optional",
        "--reconnect-grace",
        "5m",
    ];
    let server = cryptun(&args);
    let addr = listening_addr(&server);
    let state = data_home();
    let mut first = client(addr, "kept", &state);
    created(&first);
    let saved = format!("{state}/cryptun/reconnect/localhost/kept.json");
    let secret = std::fs::read_to_string(&saved).unwrap();
    first.child.kill().unwrap();
    let _ = first.child.wait();

    let url = format!("http://{addr}");
    let bad = [
        "http",
        "--hello",
        "--json",
        "--server",
        &url,
        "--subdomain",
        "kept",
        "--token",
        "ck_aaaaaaaa_wrong",
    ];
    let mut bad = cryptun_with_state(&bad, &state);
    assert!(!bad.wait_exit(Duration::from_secs(15)).success());
    let said = bad.finish().join("\n");
    assert!(said.contains("unknown or revoked"), "{said}");
    assert_eq!(
        std::fs::read_to_string(&saved).ok().as_deref(),
        Some(secret.as_str()),
        "the saved secret is kept"
    );

    // Without the bad key, the same state takes the name back.
    let back = client(addr, "kept", &state);
    assert_eq!(created(&back)["subdomain"], "kept");
}
