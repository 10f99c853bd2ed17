//! API keys at the handshake, end to end: a real server with its key
//! database in a temp folder, keys made with the same `Store` the
//! `cryptun keys` commands use, and both the real client and hand-written
//! JSON clients. Under `--auth required` a client without a valid key is
//! refused (`unauthorized`, close 1008) before any tunnel exists; under
//! `optional` anonymous clients are let in but a bad key is not; `off`
//! opens no database. Addresses that keep failing are turned away for a
//! while, even with a right key.

use std::time::Duration;

use cryptun_client::{ClientError, Secret};
use cryptun_proto::ErrorCode;
use cryptun_server::policy::BackoffConfig;
use cryptun_server::{AuthMode, Store};
use cryptun_testkit::{Origin, RawWs, TempDir, TestClient, TestServer, Visitor};
use http::StatusCode;
use serde_json::{Value, json};

/// Sends `create` as a connection's first message; returns the `error`
/// the server answers with and its close code.
async fn refused(server: &TestServer, create: Value) -> (Value, u16) {
    let (mut ws, error) = RawWs::create(server, create).await;
    assert_eq!(error["type"], "error", "{error}");
    (error, ws.expect_close().await)
}

/// A token for a new key named `name` in the database in `dir`.
fn new_key(dir: &TempDir, name: &str) -> (String, Secret) {
    let key = Store::open(&dir.path).unwrap().create_key(name).unwrap();
    (key.info.id, key.token)
}

async fn start_client(
    server: &TestServer,
    origin: &Origin,
    token: Option<&Secret>,
    subdomain: Option<&str>,
) -> Result<TestClient, ClientError> {
    TestClient::start_with(server, &origin.target(), |c| {
        c.token = token.cloned();
        c.tunnel.subdomain = subdomain.map(str::to_owned);
    })
    .await
}

fn refusal_code(result: Result<TestClient, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Refused { code, .. }) => code,
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(client) => panic!("expected a refusal, got {}", client.tunnel.public_url),
    }
}

#[tokio::test]
async fn required_refuses_a_client_without_a_key_before_any_tunnel_exists() {
    let dir = TempDir::new();
    let server =
        TestServer::start_with(TestServer::auth_config(&dir.path, AuthMode::Required)).await;
    let (error, code) = refused(&server, json!({ "subdomain": "app" })).await;
    assert_eq!(error["code"], "unauthorized", "{error}");
    assert!(error["message"].as_str().unwrap().contains("API key"));
    assert_eq!(code, 1008);
    let (error, code) = refused(&server, json!({ "subdomain": "app", "token": "ck_nope" })).await;
    assert_eq!(error["code"], "unauthorized", "{error}");
    assert_eq!(code, 1008);
    let origin = Origin::start().await;
    let code = refusal_code(start_client(&server, &origin, None, None).await);
    assert_eq!(code, ErrorCode::Unauthorized);

    // Nothing was registered, and nothing is held for reconnection: the
    // name is free for the first client with a key.
    let visitor = Visitor::new(server.addr);
    assert!(visitor.tunnels().await.is_empty());
    let reply = visitor.get(&server.host_of("app"), "/").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let (_, token) = new_key(&dir, "laptop");
    let client = start_client(&server, &origin, Some(&token), Some("app"))
        .await
        .unwrap();
    assert_eq!(client.tunnel.subdomain, "app");
}

#[tokio::test]
async fn required_serves_a_valid_key_and_refuses_wrong_and_revoked_ones() {
    let dir = TempDir::new();
    let server =
        TestServer::start_with(TestServer::auth_config(&dir.path, AuthMode::Required)).await;
    let origin = Origin::start().await;
    // The key is made while the server runs, as `cryptun keys create` does.
    let (id, token) = new_key(&dir, "laptop");
    let client = start_client(&server, &origin, Some(&token), None)
        .await
        .unwrap();
    // A keyed tunnel is reclaimed by its key; it gets no reconnect secret.
    assert!(client.tunnel.reconnect_secret.is_none());
    let reply = Visitor::new(server.addr)
        .get(&client.host, "/token?t=keyed")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "keyed");

    let mut wrong = token.expose().to_owned();
    let last = if wrong.ends_with('a') { "b" } else { "a" };
    wrong.replace_range(wrong.len() - 1.., last);
    let (error, code) = refused(&server, json!({ "token": wrong })).await;
    assert_eq!(
        (error["code"].as_str().unwrap(), code),
        ("unauthorized", 1008)
    );

    Store::open(&dir.path).unwrap().revoke_key(&id).unwrap();
    let code = refusal_code(start_client(&server, &origin, Some(&token), None).await);
    assert_eq!(code, ErrorCode::Unauthorized);
    // The live tunnel is cut too, within `revocation_poll`: see revoke.rs.
    drop(client);
}

#[tokio::test]
async fn optional_lets_anonymous_clients_in_but_refuses_a_bad_key() {
    let dir = TempDir::new();
    let server =
        TestServer::start_with(TestServer::auth_config(&dir.path, AuthMode::Optional)).await;
    let (_ws, created) = RawWs::tunnel(&server, json!({})).await;
    assert!(created["reconnect_secret"].as_str().unwrap().len() >= 32);
    let (error, code) = refused(&server, json!({ "token": "ck_abcdefgh_wrong" })).await;
    assert_eq!(
        (error["code"].as_str().unwrap(), code),
        ("unauthorized", 1008)
    );
    let (_, token) = new_key(&dir, "ci");
    let (_ws, created) = RawWs::tunnel(&server, json!({ "token": token.expose() })).await;
    assert!(created.get("reconnect_secret").is_none(), "{created}");
}

#[tokio::test]
async fn off_ignores_keys_but_keeps_its_database() {
    let dir = TempDir::new();
    let server = TestServer::start_with(TestServer::auth_config(&dir.path, AuthMode::Off)).await;
    let (_ws, created) = RawWs::tunnel(&server, json!({ "token": "anything" })).await;
    assert_eq!(created["type"], "tunnel_created");
    // Anonymous: a token is not looked at, so no key's tunnel.
    assert!(created["reconnect_secret"].is_string(), "{created}");
    // The server's own records (names held across a restart) are kept
    // with auth off too.
    assert!(
        dir.path.join(cryptun_server::store::DB_FILE).is_file(),
        "the database is opened in the data directory whatever the auth mode"
    );
}

#[tokio::test]
async fn repeated_failures_turn_an_address_away_even_with_a_right_key() {
    let dir = TempDir::new();
    let config = cryptun_server::Config {
        auth_backoff: BackoffConfig {
            free_failures: 2,
            base: Duration::from_secs(60),
            ..BackoffConfig::default()
        },
        ..TestServer::auth_config(&dir.path, AuthMode::Required)
    };
    let server = TestServer::start_with(config).await;
    let (_, token) = new_key(&dir, "laptop");
    // Two free failures, then the third starts a refusal.
    for attempt in 0..3 {
        let (error, _) = refused(&server, json!({ "token": format!("ck_guess{attempt}_x") })).await;
        assert_eq!(error["code"], "unauthorized", "attempt {attempt}: {error}");
    }
    let (error, code) = refused(&server, json!({ "token": token.expose() })).await;
    assert_eq!(error["code"], "too_many_attempts", "{error}");
    assert_eq!(code, 1008);
    let wait = error["retry_after_ms"].as_u64().unwrap();
    assert!(wait > 50_000 && wait <= 60_000, "{wait}");
    // The real client reports it as such.
    let origin = Origin::start().await;
    let code = refusal_code(start_client(&server, &origin, Some(&token), None).await);
    assert_eq!(code, ErrorCode::TooManyAttempts);
}
