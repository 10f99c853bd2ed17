//! The server's own routes: with an admin token set, the admin API wants it
//! from everyone (401 with a Bearer challenge otherwise) and `/healthz`
//! shows the tunnel count only to admins; without one, loopback callers are
//! admins (the rest of the suite relies on it). Dot segments and encoded
//! separators are refused on the server's routes (400) but reach a tunnel's
//! app byte for byte.

use cryptun_server::AdminToken;
use cryptun_testkit::visitor::{raw_exchange, status_of};
use cryptun_testkit::{LIMIT, Origin, TestClient, TestServer, Visitor, within};
use serde_json::Value;

const TOKEN: &str = "test-admin-token-0123456789abcdef";

async fn guarded_server() -> TestServer {
    let mut config = TestServer::test_config();
    config.admin_token = Some(AdminToken::new(TOKEN).unwrap());
    TestServer::start_with(config).await
}

#[tokio::test]
async fn with_a_token_the_admin_api_wants_it_even_from_loopback() {
    let server = guarded_server().await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let stranger = Visitor::new(server.addr);
    let wrong = Visitor::new(server.addr).with_admin_token("test-admin-token-0123456789abcdeX");
    let admin = Visitor::new(server.addr).with_admin_token(TOKEN);

    for path in [
        "/api/tunnels",
        "/api/limits",
        "/api/nope",
        "/api",
        "/metrics",
    ] {
        for visitor in [&stranger, &wrong] {
            let reply = within(path, visitor.admin_get(path)).await;
            assert_eq!(reply.status, 401, "{path}: {}", reply.text());
            assert_eq!(
                reply.headers["www-authenticate"],
                "Bearer realm=\"cryptun admin\""
            );
            assert_eq!(reply.headers["x-cryptun-error"], "admin_unauthorized");
        }
    }
    // Basic credentials carrying the token are not a bearer token.
    let own = format!("localhost:{}", server.addr.port());
    let basic = format!(
        "GET /api/tunnels HTTP/1.1\r\nHost: {own}\r\nAuthorization: Basic {}\r\nConnection: close\r\n\r\n",
        cryptun_testkit::raw::base64_encode(format!("admin:{TOKEN}").as_bytes())
    );
    let reply = raw_exchange(server.addr, basic.as_bytes(), LIMIT).await;
    assert_eq!(status_of(&reply), 401, "{reply}");

    let list = within("tunnels", admin.tunnels()).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["subdomain"], client.tunnel.subdomain.as_str());
    let limits = within("limits", admin.admin_get("/api/limits")).await;
    assert_eq!(limits.status, 200);
    assert_eq!(limits.json()["rate_limit_ip"], Value::Null);
    let metrics = within("metrics", admin.admin_get("/metrics")).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.text().contains("cryptun_tunnels 1"),
        "{}",
        metrics.text()
    );
    let missing = within("nope", admin.admin_get("/api/nope")).await;
    assert_eq!(missing.status, 404);

    // Health is for everyone; how many tunnels, for admins only.
    let health = within("health", stranger.admin_get("/healthz")).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json(), serde_json::json!({"status": "ok"}));
    let health = within("health", admin.admin_get("/healthz")).await;
    assert_eq!(health.json()["tunnels"], 1);
}

#[tokio::test]
async fn without_a_token_loopback_callers_are_admins() {
    let server = TestServer::start().await;
    assert!(server.config.admin_token.is_none());
    let visitor = Visitor::new(server.addr);
    assert!(within("tunnels", visitor.tunnels()).await.is_empty());
    let health = within("health", visitor.admin_get("/healthz")).await;
    assert_eq!(health.json()["tunnels"], 0);
}

#[tokio::test]
async fn odd_paths_are_refused_on_own_routes_but_reach_tunnels_unchanged() {
    let server = guarded_server().await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let own = format!("localhost:{}", server.addr.port());
    let request = |host: &str, path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        )
    };
    let odd = [
        "/api/../api/tunnels",
        "/api/tunnels/..",
        "/./healthz",
        "/api%2Ftunnels",
        "/api%2ftunnels",
        "/api/%2e%2e/api/tunnels",
        "/api/.%2E/api/tunnels",
        "/api%5Ctunnels",
        "/api\\tunnels",
        "/healthz%00",
    ];
    for path in odd {
        let reply = raw_exchange(server.addr, request(&own, path).as_bytes(), LIMIT).await;
        assert_eq!(status_of(&reply), 400, "{path}: {reply}");
        assert!(reply.contains("bad_path"), "{path}: {reply}");
        assert!(!reply.contains("tunnel_id"), "{path}: {reply}");
    }
    for path in odd {
        let path = format!("/echo{path}");
        let raw = raw_exchange(server.addr, request(&client.host, &path).as_bytes(), LIMIT).await;
        assert_eq!(status_of(&raw), 200, "{path}: {raw}");
        let body = raw.split("\r\n\r\n").nth(1).unwrap();
        let json: Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["path"], path.as_str());
    }
    assert_eq!(origin.requests(), odd.len());
}
