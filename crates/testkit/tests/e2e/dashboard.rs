//! The server dashboard's API: the page is served to anyone and holds no
//! data; `/api/dashboard` wants the admin token (401 without it), or
//! without one a loopback caller under a loopback name, and lists
//! live tunnels with their counters (requests, statuses with 502 and 504
//! apart, bytes, rate, in flight), their clients and key names, and the
//! server's totals and state; a WebSocket's messages count in its tunnel's
//! bytes while the connection is open.

use std::time::Duration;

use cryptun_server::{AdminToken, AuthMode, Store};
use cryptun_testkit::raw::{WAIT, eventually};
use cryptun_testkit::wsecho::{self, WsEcho};
use cryptun_testkit::{Origin, RawWs, TempDir, TestClient, TestServer, Visitor, within};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "dashboard-admin-token-0123456789";

fn guarded(mut config: cryptun_server::Config) -> cryptun_server::Config {
    config.admin_token = Some(AdminToken::new(TOKEN).unwrap());
    config
}

/// `/api/dashboard` as an admin sees it.
async fn snapshot(admin: &Visitor) -> Value {
    let reply = within("the dashboard snapshot", admin.admin_get("/api/dashboard")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.headers["cache-control"], "no-store");
    reply.json()
}

/// Waits until `check` holds for the snapshot (the server counts a request
/// once its response is written, a moment after the visitor may have read
/// it), and returns that snapshot.
async fn snapshot_when(admin: &Visitor, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let held = tokio::time::timeout(WAIT, async {
        loop {
            last = snapshot(admin).await;
            if check(&last) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(held.is_ok(), "{what}: not within {WAIT:?} in {last:#}");
    last
}

fn tunnel<'a>(snapshot: &'a Value, subdomain: &str) -> Option<&'a Value> {
    snapshot["tunnels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["subdomain"] == subdomain)
}

#[tokio::test]
async fn the_page_is_open_but_its_data_wants_the_admin_token() {
    let server = TestServer::start_with(guarded(TestServer::test_config())).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let stranger = Visitor::new(server.addr);
    let wrong = Visitor::new(server.addr).with_admin_token("dashboard-admin-token-012345678X");
    let admin = Visitor::new(server.addr).with_admin_token(TOKEN);

    for visitor in [&stranger, &wrong] {
        let reply = within("refused", visitor.admin_get("/api/dashboard")).await;
        assert_eq!(reply.status, 401, "{}", reply.text());
        assert_eq!(reply.headers["x-cryptun-error"], "admin_unauthorized");
        assert!(!reply.text().contains(&client.tunnel.subdomain));
    }
    let data = snapshot(&admin).await;
    assert!(
        tunnel(&data, &client.tunnel.subdomain).is_some(),
        "{data:#}"
    );

    // The page, its script and its style: for anyone, with strict headers,
    // and nothing of the server's state in them.
    for (path, kind) in [
        ("/dashboard", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/app.css", "text/css"),
    ] {
        let reply = within(path, stranger.admin_get(path)).await;
        assert_eq!(reply.status, 200, "{path}");
        let header = |name: &str| reply.headers[name].to_str().unwrap().to_owned();
        assert!(header("content-type").starts_with(kind), "{path}");
        let csp = header("content-security-policy");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(header("x-frame-options"), "DENY");
        assert_eq!(header("x-content-type-options"), "nosniff");
        assert!(!reply.text().contains(&client.tunnel.subdomain), "{path}");
    }
    // Only those paths; and a tunnel's own /dashboard is the app's.
    for path in ["/dashboard/", "/dashboard/other.js", "/dashboard.js"] {
        let reply = within(path, stranger.admin_get(path)).await;
        assert_eq!(reply.status, 404, "{path}");
    }
    let app = within("the app", stranger.get(&client.host, "/echo/dashboard")).await;
    assert_eq!(app.json()["path"], "/echo/dashboard");
}

#[tokio::test]
async fn without_a_token_loopback_gets_the_data_under_a_loopback_name() {
    let server = TestServer::start().await;
    let visitor = Visitor::new(server.addr);
    let data = snapshot(&visitor).await;
    assert_eq!(data["totals"]["tunnels"], 0);
    assert_eq!(data["tunnels"], serde_json::json!([]));
    assert_eq!(data["server"]["draining"], false);
    assert_eq!(data["server"]["version"], env!("CARGO_PKG_VERSION"));

    // Other loopback names work; a name that merely points at 127.0.0.1
    // (a page elsewhere rebinding its DNS) gets the page, not the data.
    let port = server.addr.port();
    for host in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        let reply = within(&host, visitor.get(&host, "/api/dashboard")).await;
        assert_eq!(reply.status, 200, "{host}: {}", reply.text());
    }
    let rebound = format!("attacker.example:{port}");
    for path in ["/api/dashboard", "/api/tunnels", "/metrics"] {
        let reply = within(path, visitor.get(&rebound, path)).await;
        assert_eq!(reply.status, 403, "{path}: {}", reply.text());
        assert_eq!(reply.headers["x-cryptun-error"], "admin_host");
    }
    let page = within("the page", visitor.get(&rebound, "/dashboard")).await;
    assert_eq!(page.status, 200);
}

#[tokio::test]
async fn a_draining_server_says_so() {
    let mut config = TestServer::test_config();
    config.shutdown_delay = Duration::from_secs(5);
    let server = TestServer::start_with(config).await;
    let visitor = Visitor::new(server.addr);
    assert_eq!(snapshot(&visitor).await["server"]["draining"], false);
    server.begin_stop();
    // Still accepting for `shutdown_delay`, and saying it is draining.
    assert_eq!(snapshot(&visitor).await["server"]["draining"], true);
}

#[tokio::test]
async fn tunnels_are_listed_with_their_counters_clients_and_totals() {
    let mut config = guarded(TestServer::test_config());
    config.limits.max_streams = 1;
    let server = TestServer::start_with(config).await;
    let admin = Visitor::new(server.addr).with_admin_token(TOKEN);
    let origin = Origin::start().await;
    let client = TestClient::start_with(&server, &origin.target(), |c| {
        c.tunnel.request_timeout = Some(Duration::from_secs(2));
    })
    .await
    .unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = closed.local_addr().unwrap().to_string();
    drop(closed);
    let broken = TestClient::start(&server, &nowhere).await;
    let visitor = Visitor::new(server.addr);
    let (host, sub) = (client.host.clone(), client.tunnel.subdomain.clone());

    let fresh = snapshot(&admin).await;
    let t = tunnel(&fresh, &sub).unwrap();
    assert_eq!(t["stats"]["requests"], 0);
    assert_eq!(t["public_url"], client.tunnel.public_url.as_str());
    assert_eq!(t["key_name"], Value::Null);

    // Two 200s (one with an upload), a 404 and a 503 from the app.
    assert_eq!(visitor.get(&host, "/echo").await.status, 200);
    let upload = visitor.call("POST", &host, "/sha256", vec![7u8; 10_000]);
    assert_eq!(upload.await.status, 200);
    assert_eq!(visitor.get(&host, "/status?code=404").await.status, 404);
    assert_eq!(visitor.get(&host, "/status?code=503").await.status, 503);

    // A request the app never answers is in flight, and holds the
    // tunnel's only stream: the next is refused (429, counted for the
    // tunnel too); the first ends in 504 at the tunnel's timeout.
    let before = origin.requests();
    let hanging = {
        let (visitor, host) = (visitor.clone(), host.clone());
        tokio::spawn(async move { visitor.get(&host, "/hang").await })
    };
    eventually(WAIT, "the hanging request reaches the origin", || async {
        origin.requests() > before
    })
    .await;
    snapshot_when(&admin, "one request in flight", |d| {
        tunnel(d, &sub).is_some_and(|t| t["stats"]["in_flight"] == 1)
    })
    .await;
    assert_eq!(visitor.get(&host, "/echo").await.status, 429);
    assert_eq!(within("the hang", hanging).await.unwrap().status, 504);

    // A 502 on the other tunnel (nothing listens where it points), and a
    // name nobody has.
    assert_eq!(visitor.get(&broken.host, "/").await.status, 502);
    let unknown = visitor.get(&server.host_of("nobody"), "/").await;
    assert_eq!(unknown.status, 404);

    let data = snapshot_when(&admin, "every request counted, none in flight", |d| {
        d["totals"]["requests"] == 8 && d["totals"]["in_flight"] == 0
    })
    .await;
    let stats = &tunnel(&data, &sub).unwrap()["stats"];
    assert_eq!(stats["requests"], 6, "{stats:#}");
    assert_eq!(stats["in_flight"], 0, "{stats:#}");
    let status = &stats["status"];
    assert_eq!(status["2xx"], 2, "{status:#}");
    assert_eq!(status["4xx"], 2, "{status:#}");
    assert_eq!(status["5xx"], 2, "{status:#}");
    assert_eq!((&status["502"], &status["504"]), (&0.into(), &1.into()));
    assert_eq!(stats["bytes_in"], 10_000);
    assert!(stats["bytes_out"].as_u64().unwrap() > 0, "{stats:#}");
    // Six requests within the last ten seconds.
    assert!(stats["rate"].as_f64().unwrap() >= 0.5, "{stats:#}");
    let other = &tunnel(&data, &broken.tunnel.subdomain).unwrap()["stats"];
    assert_eq!(other["requests"], 1, "{other:#}");
    assert_eq!(other["status"]["502"], 1, "{other:#}");
    assert_eq!(other["status"]["5xx"], 1, "{other:#}");

    // The server's totals count every request for a tunnel host, the
    // unknown name included.
    let totals = &data["totals"];
    assert_eq!(totals["tunnels"], 2);
    assert_eq!(totals["clients"], 2);
    assert_eq!(totals["status"]["4xx"], 3, "{totals:#}");
    assert_eq!(totals["status"]["5xx"], 3, "{totals:#}");
    assert_eq!(totals["status"]["502"], 1, "{totals:#}");
    assert_eq!(totals["status"]["504"], 1, "{totals:#}");
    assert_eq!(totals["bytes_in"], 10_000);
    let clients = &data["clients"];
    let clients_list = clients.as_array().unwrap();
    assert_eq!(clients_list.len(), 2, "{clients:#}");
    assert!(
        clients_list
            .iter()
            .any(|c| c["tunnels"] == serde_json::json!([sub])),
        "{clients:#}"
    );

    // A tunnel leaves the list with its client; the totals stay.
    client.stop().await.unwrap();
    let data = snapshot_when(&admin, "the tunnel gone", |d| tunnel(d, &sub).is_none()).await;
    assert_eq!(data["totals"]["requests"], 8);
    assert_eq!(data["totals"]["tunnels"], 1);
}

#[tokio::test]
async fn a_tunnel_opened_with_a_key_shows_the_key_name() {
    let dir = TempDir::new();
    let config = TestServer::auth_config(&dir.path, AuthMode::Required);
    let server = TestServer::start_with(guarded(config)).await;
    let key = Store::open(&dir.path)
        .unwrap()
        .create_key("ci runner <b>")
        .unwrap();
    let origin = Origin::start().await;
    let client = TestClient::start_with(&server, &origin.target(), |c| {
        c.token = Some(key.token.clone());
    })
    .await
    .unwrap();
    let admin = Visitor::new(server.addr).with_admin_token(TOKEN);
    let data = snapshot(&admin).await;
    let t = tunnel(&data, &client.tunnel.subdomain).unwrap();
    assert_eq!(t["key_name"], "ci runner <b>");
    assert_eq!(t["key_id"], key.info.id.as_str());
    assert_eq!(data["clients"][0]["key_name"], "ci runner <b>");
    assert_eq!(data["server"]["auth"], "required");
    // The key's token appears nowhere.
    let text = within("raw", admin.admin_get("/api/dashboard"))
        .await
        .text();
    assert!(!text.contains(key.token.expose()));
}

#[tokio::test]
async fn a_busy_node_lists_at_most_500_tunnels_and_counts_them_all() {
    let limit = 500;
    let mut config = TestServer::test_config();
    config.limits.max_tunnels_per_session = limit + 2;
    config.max_tunnels_per_ip = limit + 2;
    let server = TestServer::start_with(config).await;
    let (mut ws, _) = RawWs::tunnel(&server, serde_json::json!({})).await;
    for _ in 0..limit {
        ws.send_json(&serde_json::json!({ "type": "create_tunnel" }))
            .await;
        within("a tunnel", ws.recv_type("tunnel_created")).await;
    }
    let data = snapshot(&Visitor::new(server.addr)).await;
    assert_eq!(data["totals"]["tunnels"], limit + 1);
    assert_eq!(data["tunnels"].as_array().unwrap().len(), limit);
    assert_eq!(data["omitted"], 1);
    // One client, holding the listed tunnels.
    let clients = data["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0]["tunnels"].as_array().unwrap().len(), limit);
}

/// The bytes of an upgraded connection count in its tunnel's `bytes_in`
/// (visitor to app) and `bytes_out` (app to visitor), and the server's, as
/// they pass: while the WebSocket is still open, not only once it closes.
#[tokio::test]
async fn websocket_messages_count_in_the_tunnels_bytes_as_they_pass() {
    let server = TestServer::start_with(guarded(TestServer::test_config())).await;
    let admin = Visitor::new(server.addr).with_admin_token(TOKEN);
    let app = WsEcho::start().await;
    let client = TestClient::start(&server, &app.target()).await;
    let sub = client.tunnel.subdomain.clone();
    let mut ws = within(
        "the WebSocket handshake",
        wsecho::connect(server.addr, &client.host, "/"),
    )
    .await
    .unwrap();
    let message = Message::binary(vec![42u8; 100_000]);
    for _ in 0..3 {
        ws.send(message.clone()).await.unwrap();
        let echoed = within("the echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(echoed, message);
    }
    // Three 100,000-byte messages each way, in frames (a few bytes of
    // header each; the visitor's masked): at least 300,000 bytes each way.
    let data = snapshot_when(&admin, "the messages counted", |d| {
        tunnel(d, &sub).is_some_and(|t| {
            t["stats"]["bytes_in"].as_u64().unwrap() >= 300_000
                && t["stats"]["bytes_out"].as_u64().unwrap() >= 300_000
        })
    })
    .await;
    let stats = &tunnel(&data, &sub).unwrap()["stats"];
    assert!(stats["bytes_in"].as_u64().unwrap() < 301_000, "{stats:#}");
    assert!(stats["bytes_out"].as_u64().unwrap() < 301_000, "{stats:#}");
    let totals = &data["totals"];
    assert!(
        totals["bytes_in"].as_u64().unwrap() >= 300_000,
        "{totals:#}"
    );
    assert!(
        totals["bytes_out"].as_u64().unwrap() >= 300_000,
        "{totals:#}"
    );
    ws.close(None).await.unwrap();
}
