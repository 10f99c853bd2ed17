//! A client that stops on purpose releases its names: `close_tunnel`,
//! answered by `tunnel_closed`, frees a name at once instead of holding it
//! for a reconnection that will not come; strangers asking for a name that
//! is held get `subdomain_held` with when the hold ends, not
//! `subdomain_taken`.

use std::time::Duration;

use cryptun_testkit::raw::{WAIT, eventually};
use cryptun_testkit::{Origin, RawWs, TestClient, TestServer, Visitor};
use http::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_closed_tunnels_name_is_free_at_once_and_the_session_goes_on() {
    let server = TestServer::start().await;
    let offer = json!({ "subdomain": "closing", "capabilities": ["close_tunnel"] });
    let (ws, created) = RawWs::tunnel(&server, offer).await;
    assert_eq!(
        created["capabilities"],
        json!(["close_tunnel"]),
        "{created}"
    );
    let id = created["tunnel_id"].clone();
    // A second tunnel on the same connection stays.
    let (mut ws, second) = ws.ask(json!({ "subdomain": "staying" })).await;
    assert_eq!(second["type"], "tunnel_created", "{second}");

    ws.send_json(&json!({ "type": "close_tunnel", "tunnel_id": id }))
        .await;
    let closed = ws.recv_json().await;
    assert_eq!(closed, json!({ "type": "tunnel_closed", "tunnel_id": id }));
    // Gone, not held: visitors get 404, and anyone may take the name.
    let visitor = Visitor::new(server.addr);
    let reply = visitor.get(&server.host_of("closing"), "/").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let (_other, taken) = RawWs::tunnel(&server, json!({ "subdomain": "closing" })).await;
    assert_eq!(taken["subdomain"], "closing");

    // A tunnel the connection does not have: refused, the session goes on.
    ws.send_json(&json!({ "type": "close_tunnel", "tunnel_id": id }))
        .await;
    let refused = ws.recv_json().await;
    assert_eq!(refused["code"], "no_tunnel", "{refused}");
    ws.send_json(&json!({ "type": "ping" })).await;
    assert_eq!(ws.recv_type("pong").await["type"], "pong");
    // The other tunnel stays, beside the stranger's.
    let health = visitor.admin_get("/healthz").await.json();
    assert_eq!(health["tunnels"], 2, "{health}");
}

#[tokio::test]
async fn a_client_that_stops_frees_its_name_and_one_that_drops_leaves_it_held() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let named = |name: &'static str| {
        move |c: &mut cryptun_client::ClientConfig| c.tunnel.subdomain = Some(name.to_owned())
    };
    let stopping = TestClient::start_with(&server, &origin.target(), named("stops"))
        .await
        .unwrap();
    stopping.stop().await.unwrap();
    // At once: no hold, the next client (without the secret) gets it.
    let again = TestClient::start_with(&server, &origin.target(), named("stops")).await;
    assert_eq!(again.unwrap().tunnel.subdomain, "stops");

    // A client that only drops its connection leaves the name held: a
    // stranger is told it is held, and for how long.
    let dropping = TestClient::start_with(&server, &origin.target(), named("drops"))
        .await
        .unwrap();
    dropping.kill().await;
    let visitor = Visitor::new(server.addr);
    let host = server.host_of("drops");
    eventually(WAIT, "the name is held", || async {
        visitor.get(&host, "/").await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let (_ws, refused) = RawWs::create(&server, json!({ "subdomain": "drops" })).await;
    assert_eq!(refused["code"], "subdomain_held", "{refused}");
    let left = Duration::from_millis(refused["retry_after_ms"].as_u64().unwrap());
    assert!(
        left > Duration::ZERO && left <= TestServer::test_config().reconnect_grace,
        "{left:?}"
    );
    let held = TestClient::start_with(&server, &origin.target(), named("drops")).await;
    assert!(
        matches!(held, Err(cryptun_client::ClientError::Held { retry_after, .. }) if retry_after <= left),
        "{:?}",
        held.err()
    );
}
