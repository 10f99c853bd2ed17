//! Revoking a key cuts its live tunnels, end to end: a real server with its
//! key database in a temp folder and a short `revocation_poll`, the real
//! client (reconnecting, as `cryptun http` runs it), and the revocation
//! written by a second `Store` on the same file, as `cryptun keys revoke`
//! does from its own process. The revoked key's session gets `key_revoked`
//! and a 1008 close, its tunnel leaves `/api/tunnels` at once (404, not a
//! held 503), a request in flight gets 502, and the client stops instead
//! of reconnecting; another key's tunnel on the same server is untouched.
//! A name held for a revoked key's disconnected client is let go.

use std::time::{Duration, Instant};

use cryptun_client::{ClientError, Event, Secret};
use cryptun_server::{AuthMode, Config, Store};
use cryptun_testkit::raw::{WAIT, eventually};
use cryptun_testkit::{Origin, RawWs, TempDir, TestClient, TestServer, Visitor, within};
use http::StatusCode;
use serde_json::json;

const POLL: Duration = Duration::from_millis(200);

fn config(dir: &TempDir) -> Config {
    Config {
        revocation_poll: POLL,
        // Long, so a name held after the cut would show as 503.
        reconnect_grace: Duration::from_secs(30),
        ..TestServer::auth_config(&dir.path, AuthMode::Required)
    }
}

fn new_key(dir: &TempDir, name: &str) -> (String, Secret) {
    let key = Store::open(&dir.path).unwrap().create_key(name).unwrap();
    (key.info.id, key.token)
}

async fn client(
    server: &TestServer,
    origin: &Origin,
    token: &Secret,
    subdomain: &str,
) -> TestClient {
    TestClient::start_reconnecting(server, &origin.target(), |c| {
        c.token = Some(token.clone());
        c.tunnel.subdomain = Some(subdomain.to_owned());
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn revoking_a_key_cuts_its_live_tunnels_and_no_others() {
    let dir = TempDir::new();
    let server = TestServer::start_with(config(&dir)).await;
    let origin = Origin::start().await;
    let (leaked, leaked_token) = new_key(&dir, "leaked");
    let (_, kept_token) = new_key(&dir, "kept");
    let alpha = client(&server, &origin, &leaked_token, "alpha").await;
    let beta = client(&server, &origin, &kept_token, "beta").await;
    let visitor = Visitor::new(server.addr);
    assert_eq!(visitor.tunnels().await.len(), 2);

    // A request in flight on the leaked key's tunnel when the cut comes.
    let in_flight = tokio::spawn({
        let (visitor, host) = (visitor.clone(), alpha.host.clone());
        async move { visitor.get(&host, "/hang").await }
    });
    // Wait until it reached the origin's /hang (counted as open there).
    within("the request reaches the tunnel", async {
        while visitor.tunnels().await[0]["in_flight"] != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // As `cryptun keys revoke` does, from another connection to the file.
    let revoked_at = Instant::now();
    Store::open(&dir.path).unwrap().revoke_key(&leaked).unwrap();

    let reply = within("the in-flight request ends", in_flight)
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    // A reconnecting client: it ends only because the error is final.
    let (events, alpha_host) = (alpha.events.clone(), alpha.host.clone());
    let ended = within("the client stops", alpha.finished()).await;
    let elapsed = revoked_at.elapsed();
    match ended {
        Err(ClientError::KeyRevoked { message }) => {
            assert!(message.contains(&leaked), "{message}");
            assert!(message.contains("revoked"), "{message}");
        }
        other => panic!("expected KeyRevoked, got {other:?}"),
    }
    assert!(elapsed < POLL * 10, "took {elapsed:?}");
    let reconnects = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::Disconnected { .. }))
        .count();
    assert_eq!(reconnects, 0, "the client tried to reconnect");

    assert_eq!(
        visitor
            .metric("cryptun_sessions_ended_total{reason=\"revoked\"}")
            .await,
        1.0
    );

    // Gone at once, name not held: 404, not 503.
    let tunnels = visitor.tunnels().await;
    assert_eq!(tunnels.len(), 1, "{tunnels:?}");
    assert_eq!(tunnels[0]["subdomain"], "beta");
    let reply = visitor.get(&alpha_host, "/").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);

    // The other key's tunnel still serves, on the same session.
    let reply = visitor.get(&beta.host, "/token?t=kept").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "kept");
    assert!(
        !beta
            .events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, Event::Disconnected { .. }))
    );
    // And the revoked key opens nothing new.
    let again = TestClient::start_with(&server, &origin.target(), |c| {
        c.token = Some(leaked_token.clone());
    })
    .await;
    assert!(
        matches!(again, Err(ClientError::Refused { .. })),
        "{:?}",
        again.err()
    );
}

#[tokio::test]
async fn a_client_speaking_raw_json_gets_key_revoked_then_1008() {
    let dir = TempDir::new();
    let server = TestServer::start_with(config(&dir)).await;
    let (id, token) = new_key(&dir, "raw");
    let (mut ws, created) = RawWs::tunnel(&server, json!({ "token": token.expose() })).await;
    assert_eq!(created["type"], "tunnel_created", "{created}");
    // A second tunnel on the same connection goes too.
    ws.send_json(&json!({ "type": "create_tunnel", "subdomain": "second" }))
        .await;
    let second = ws.recv_type("tunnel_created").await;
    assert_eq!(second["type"], "tunnel_created", "{second}");
    assert_eq!(Visitor::new(server.addr).tunnels().await.len(), 2);

    Store::open(&dir.path).unwrap().revoke_key(&id).unwrap();
    let error = tokio::time::timeout(POLL * 25, ws.recv_type("error"))
        .await
        .expect("no key_revoked error");
    assert_eq!(error["code"], "key_revoked", "{error}");
    assert_eq!(ws.expect_close().await, 1008);
    assert!(Visitor::new(server.addr).tunnels().await.is_empty());
}

#[tokio::test]
async fn revoking_a_key_lets_go_of_the_names_held_for_it() {
    let dir = TempDir::new();
    let server = TestServer::start_with(config(&dir)).await;
    let origin = Origin::start().await;
    let (key, token) = new_key(&dir, "laptop");
    let client = TestClient::start_with(&server, &origin.target(), |c| {
        c.token = Some(token.clone());
        c.tunnel.subdomain = Some("gamma".into());
    })
    .await
    .unwrap();
    let visitor = Visitor::new(server.addr);
    let host = server.host_of("gamma");
    // The client goes away without a goodbye: its name is held for it
    // (503, for 30 s).
    client.kill().await;
    eventually(WAIT, "the name is held", || async {
        visitor.get(&host, "/").await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;

    Store::open(&dir.path).unwrap().revoke_key(&key).unwrap();
    eventually(WAIT, "the hold ends with the key", || async {
        visitor.get(&host, "/").await.status == StatusCode::NOT_FOUND
    })
    .await;
}
