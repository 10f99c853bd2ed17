//! Errors that say what to do, in process: the landing page at `/` on the
//! server's own host, `/api/whoami` (which key a token is, under the
//! handshake's backoff), a timeout told to the client as a timeout (the
//! `cancel`'s `reason`, the RESET's payload, and the client's own report),
//! a visitor who leaves and a shutdown told as such, and the page a
//! browser gets when the local service is down.

use std::time::Duration;

use bytes::Bytes;
use cryptun_client::Event;
use cryptun_server::policy::BackoffConfig;
use cryptun_server::{AuthMode, Store};
use cryptun_testkit::{RawWs, TempDir, TestClient, TestServer, Visitor, within};
use http::StatusCode;
use http_body_util::Full;
use serde_json::json;

#[tokio::test]
async fn the_servers_own_host_has_a_landing_page_that_says_how_to_connect() {
    let server = TestServer::start().await;
    let reply = Visitor::new(server.addr).get(&server.own_host(), "/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "text/html; charset=utf-8");
    let page = reply.text();
    let connect = format!("cryptun http --server http://{} 3000", server.own_host());
    assert!(page.contains(&connect), "{page}");
    assert!(page.contains(env!("CARGO_PKG_VERSION")), "{page}");
    assert!(page.contains("href=\"/dashboard\""), "{page}");
    // The dashboard's policy: no inline script (and none at all here).
    let csp = reply.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(!page.contains("<script"), "{page}");
    // A tunnel host's `/` is still the tunnel's (here: none, 404).
    let tunnel = Visitor::new(server.addr)
        .get(&server.host_of("nobody"), "/")
        .await;
    assert_eq!(tunnel.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_landing_page_of_a_server_with_keys_says_how_to_log_in() {
    let dir = TempDir::new();
    let server =
        TestServer::start_with(TestServer::auth_config(&dir.path, AuthMode::Required)).await;
    let page = Visitor::new(server.addr)
        .get(&server.own_host(), "/")
        .await
        .text();
    let login = format!("cryptun login --server http://{} ck_...", server.own_host());
    assert!(page.contains(&login), "{page}");
}

async fn whoami(server: &TestServer, token: Option<&str>) -> cryptun_testkit::Reply {
    let visitor = Visitor::new(server.addr);
    let mut req = visitor.builder("GET", &server.own_host(), "/api/whoami");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    visitor
        .fetch(req.body(Full::<Bytes>::default()).unwrap())
        .await
}

#[tokio::test]
async fn whoami_names_a_good_key_and_refuses_bad_ones_under_the_backoff() {
    let dir = TempDir::new();
    let server = TestServer::start_with(cryptun_server::Config {
        auth_backoff: BackoffConfig {
            free_failures: 2,
            ..BackoffConfig::default()
        },
        ..TestServer::auth_config(&dir.path, AuthMode::Required)
    })
    .await;
    let key = Store::open(&dir.path)
        .unwrap()
        .create_key("laptop")
        .unwrap();
    let good = whoami(&server, Some(key.token.expose())).await;
    assert_eq!(good.status, StatusCode::OK, "{}", good.text());
    assert_eq!(good.json()["id"], key.info.id.as_str());
    assert_eq!(good.json()["name"], "laptop");
    let none = whoami(&server, None).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.json()["error"], "unauthorized");
    let bad = whoami(&server, Some("ck_abcdefgh_nope")).await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED, "{}", bad.text());
    // The third failure (two are free) puts the address in backoff: even the
    // good key is turned away for a while, as at the handshake.
    let _ = whoami(&server, Some("ck_abcdefgh_nope")).await;
    let blocked = whoami(&server, Some(key.token.expose())).await;
    assert_eq!(
        blocked.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        blocked.text()
    );
    assert!(blocked.headers.contains_key("retry-after"));
    assert_eq!(blocked.json()["error"], "too_many_attempts");
}

#[tokio::test]
async fn whoami_on_a_server_without_keys_says_so() {
    let server = TestServer::start().await;
    let reply = whoami(&server, Some("ck_anything")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({ "auth": "off" }));
}

/// A local service that accepts connections and never answers.
async fn silent_service() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_timeout_reaches_a_json_client_as_a_cancel_with_reason_timeout() {
    let server = TestServer::start().await;
    let (mut ws, created) = RawWs::tunnel(&server, json!({ "request_timeout_ms": 300 })).await;
    let host = server.host_of(created["subdomain"].as_str().unwrap());
    let visitor = Visitor::new(server.addr);
    let request = tokio::spawn(async move { visitor.get(&host, "/slow").await });
    let asked = ws.recv_type("request").await;
    let cancel = ws.recv_type("cancel").await;
    assert_eq!(cancel["request_id"], asked["request_id"]);
    assert_eq!(cancel["reason"], "timeout", "{cancel}");
    let reply = request.await.unwrap();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        reply
            .text()
            .contains("the local service behind this tunnel did not answer"),
        "{}",
        reply.text()
    );
}

#[tokio::test]
async fn a_timeout_is_reported_by_the_client_as_the_local_service_being_slow() {
    let server = TestServer::start().await;
    let (slow, _task) = silent_service().await;
    let client = TestClient::start_with(&server, &slow.to_string(), |c| {
        c.tunnel.request_timeout = Some(Duration::from_millis(300));
    })
    .await
    .unwrap();
    let reply = Visitor::new(server.addr).get(&client.host, "/slow").await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    let event = client
        .wait_event("the request's report", |e| matches!(e, Event::Request(_)))
        .await;
    let Event::Request(done) = event else {
        unreachable!()
    };
    let error = done.error.unwrap_or_default();
    assert!(error.contains("did not answer in time"), "{error}");
    assert!(!error.contains("visitor went away"), "{error}");
}

#[tokio::test]
async fn a_browser_gets_an_html_page_naming_the_tunnel_and_the_port_that_refused() {
    let server = TestServer::start().await;
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let client = TestClient::start_with(&server, &format!("127.0.0.1:{port}"), |c| {
        c.tunnel.subdomain = Some("down-app".into());
    })
    .await
    .unwrap();
    let visitor = Visitor::new(server.addr);
    let browser = visitor
        .builder("GET", &client.host, "/")
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .body(Full::<Bytes>::default())
        .unwrap();
    let page = within("the browser's GET", visitor.fetch(browser)).await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let html = page.text();
    assert!(html.contains("<strong>down-app</strong>"), "{html}");
    assert!(
        html.contains(&format!("<code>127.0.0.1:{port}</code>")),
        "{html}"
    );
    let curl = within("curl's GET", visitor.get(&client.host, "/")).await;
    assert_eq!(curl.status, StatusCode::BAD_GATEWAY);
    assert!(
        curl.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(curl.text().contains("could not reach the local service"));
}

#[tokio::test]
async fn a_visitor_who_leaves_reaches_a_json_client_as_visitor_gone() {
    let server = TestServer::start().await;
    let (mut ws, created) = RawWs::tunnel(&server, json!({})).await;
    let host = server.host_of(created["subdomain"].as_str().unwrap());
    let visitor = Visitor::new(server.addr);
    let request = tokio::spawn(async move { visitor.get(&host, "/left").await });
    let asked = ws.recv_type("request").await;
    // The visitor hangs up before any answer.
    request.abort();
    let cancel = ws.recv_type("cancel").await;
    assert_eq!(cancel["request_id"], asked["request_id"]);
    assert_eq!(cancel["reason"], "visitor_gone", "{cancel}");
}

#[tokio::test]
async fn a_request_still_in_flight_at_shutdown_is_cancelled_with_reason_shutdown() {
    let server = TestServer::start_with(cryptun_server::Config {
        shutdown_grace: Duration::from_millis(200),
        ..TestServer::test_config()
    })
    .await;
    let (mut ws, created) = RawWs::tunnel(&server, json!({})).await;
    let host = server.host_of(created["subdomain"].as_str().unwrap());
    let visitor = Visitor::new(server.addr);
    let _request = tokio::spawn(async move { visitor.get(&host, "/never").await });
    let asked = ws.recv_type("request").await;
    server.begin_stop();
    // The drain waits for the request up to the grace, then the session
    // closes, telling the client why the request ends.
    let cancel = ws.recv_type("cancel").await;
    assert_eq!(cancel["request_id"], asked["request_id"]);
    assert_eq!(cancel["reason"], "shutdown", "{cancel}");
}
