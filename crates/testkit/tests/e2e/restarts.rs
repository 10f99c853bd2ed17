//! Staying up: a server shutting down lets the requests in flight finish
//! through their tunnels, tells its clients it is going away and closes
//! with 1001; a client reconnects by itself to a restarted server and gets
//! its public URL back, and gives up on a refusal instead of retrying it.

use cryptun_client::{ClientError, Event};
use cryptun_proto::ErrorCode;
use cryptun_testkit::raw::{WAIT, eventually};
use cryptun_testkit::{Origin, RawWs, TestClient, TestServer, Visitor, within};
use serde_json::json;

#[tokio::test]
async fn a_request_in_flight_when_shutdown_begins_completes() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let visitor = Visitor::new(server.addr);
    let slow = {
        let (visitor, host) = (visitor.clone(), client.host.clone());
        tokio::spawn(async move { visitor.get(&host, "/delay?ms=1500").await })
    };
    eventually(WAIT, "the request reaches the origin", || async {
        origin.requests() >= 1
    })
    .await;

    server.begin_stop();
    let reply = within("the request in flight", slow).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "done");
    server.stopped().await;
    // The client was told, and the connection closed only after the drain.
    let ended = within("the client's session ends", client.finished()).await;
    assert!(
        matches!(ended, Err(ClientError::GoingAway { reconnect_after }) if !reconnect_after.is_zero()),
        "{ended:?}"
    );
}

#[tokio::test]
async fn the_server_says_going_away_then_closes_with_1001() {
    let server = TestServer::start().await;
    let (mut ws, _) = RawWs::tunnel(&server, json!({})).await;
    server.begin_stop();
    let going = ws.recv_type("going_away").await;
    assert!(going["reconnect_after_ms"].as_u64().unwrap() > 0, "{going}");
    assert_eq!(ws.expect_close().await, 1001);
    server.stopped().await;
}

fn is_reconnected(e: &Event) -> bool {
    matches!(e, Event::Reconnected { .. })
}

#[tokio::test]
async fn a_client_reconnects_to_a_restarted_server_and_keeps_its_url() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let origin = Origin::start().await;
    let client = TestClient::start_reconnecting(&server, &origin.target(), |_| {})
        .await
        .unwrap();
    let host = client.host.clone();
    assert_eq!(Visitor::new(addr).get(&host, "/echo").await.status, 200);

    server.stop().await;
    // Nothing listens now: attempts fail and are retried.
    client
        .wait_event(
            "a failed reconnect",
            |e| matches!(e, Event::Disconnected { attempt, .. } if *attempt >= 2),
        )
        .await;
    let _restarted = TestServer::start_on(addr, TestServer::test_config()).await;
    let Event::Reconnected { tunnel } = client.wait_event("reconnected", is_reconnected).await
    else {
        unreachable!()
    };
    assert_eq!(tunnel.public_url, client.tunnel.public_url);
    let reply = Visitor::new(addr).get(&host, "/echo?again=1").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["path"], "/echo?again=1");

    let events = client.events.lock().unwrap().clone();
    let first = events
        .iter()
        .find_map(|e| match e {
            Event::Disconnected {
                error, attempt: 1, ..
            } => Some(error.clone()),
            _ => None,
        })
        .unwrap();
    assert!(first.contains("going away"), "{first}");
}

#[tokio::test]
async fn a_refused_reconnect_is_final() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let origin = Origin::start().await;
    let client = TestClient::start_reconnecting(&server, &origin.target(), |_| {})
        .await
        .unwrap();
    server.stop().await;
    // The server comes back refusing every tunnel.
    let mut config = TestServer::test_config();
    config.limits.max_tunnels_per_session = 0;
    let _restarted = TestServer::start_on(addr, config).await;
    let ended = within("the client gives up", client.finished()).await;
    assert!(
        matches!(
            ended,
            Err(ClientError::Refused {
                code: ErrorCode::TooManyTunnels,
                ..
            })
        ),
        "{ended:?}"
    );
}

#[tokio::test]
async fn a_handshake_still_under_way_when_sessions_close_is_dropped() {
    let server = TestServer::start_with(cryptun_server::Config {
        handshake_timeout: std::time::Duration::from_secs(30),
        ..TestServer::test_config()
    })
    .await;
    // Upgraded, but no create_tunnel yet.
    let mut pending = RawWs::connect(&server).await;
    let started = std::time::Instant::now();
    server.stop().await;
    // Not held up by the handshake (sessions get 2 s to end), and nothing
    // could open after the server saved what it holds.
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_millis(1500), "{took:?}");
    pending.expect_disconnect().await;
}
