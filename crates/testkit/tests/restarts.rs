//! Staying up: a server shutting down lets the requests in flight finish
//! through their tunnels, tells its clients it is going away and closes
//! with 1001.

#![allow(clippy::unwrap_used)]

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
    drop(client);
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
