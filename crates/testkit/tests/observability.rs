//! What operators see: `/metrics` counting requests by outcome, bytes,
//! durations, sessions, handshake failures and refusals, without a series
//! per tunnel; `/healthz` and `/readyz`, before and after shutdown begins.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cryptun_client::ClientError;
use cryptun_testkit::raw::{WAIT, eventually};
use cryptun_testkit::visitor::sample;
use cryptun_testkit::{Origin, RawWs, Reply, TestClient, TestServer, Visitor, within};
use serde_json::json;

fn requests(class: &str, reason: &str) -> String {
    format!("cryptun_requests_total{{class=\"{class}\",reason=\"{reason}\"}}")
}

/// Waits until every `(series, value)` holds in `/metrics`: the server
/// counts a request when its response has been written, a moment after the
/// visitor may have read it.
async fn expect_metrics(visitor: &Visitor, expected: &[(String, f64)]) {
    let mut last = String::new();
    let all_hold = tokio::time::timeout(WAIT, async {
        loop {
            last = visitor.metrics().await;
            if expected.iter().all(|(s, v)| sample(&last, s) == *v) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(all_hold.is_ok(), "expected {expected:?} in:\n{last}");
}

#[tokio::test]
async fn metrics_count_requests_by_outcome_with_bytes_and_durations() {
    let mut config = TestServer::test_config();
    config.limits.max_streams = 1;
    let server = TestServer::start_with(config).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let impatient = TestClient::start_with(&server, &origin.target(), |c| {
        c.tunnel.request_timeout = Some(Duration::from_millis(300));
    })
    .await
    .unwrap();
    let visitor = Visitor::new(server.addr);
    let host = client.host.clone();

    assert_eq!(visitor.get(&host, "/echo").await.status, 200);
    let upload = visitor
        .call("POST", &host, "/sha256", vec![7u8; 10_000])
        .await;
    assert_eq!(upload.status, 200);
    assert_eq!(visitor.get(&host, "/bytes?n=5000").await.body.len(), 5000);
    assert_eq!(visitor.get(&host, "/status?code=503").await.status, 503);
    let unknown = visitor.get(&server.host_of("nobody"), "/").await;
    assert_eq!(unknown.status, 404);
    let slow = visitor.get(&impatient.host, "/hang").await;
    assert_eq!(slow.status, 504);

    // One request in flight fills the tunnel's only stream: the next is
    // refused, and the gauge shows it.
    let hanging = {
        let (visitor, host) = (visitor.clone(), host.clone());
        tokio::spawn(async move { visitor.get(&host, "/hang").await })
    };
    let before = origin.requests();
    eventually(WAIT, "the hanging request reaches the origin", || async {
        origin.requests() > before
    })
    .await;
    expect_metrics(&visitor, &[("cryptun_requests_in_flight".into(), 1.0)]).await;
    let refused = visitor.get(&host, "/echo").await;
    assert_eq!(refused.status, 429);
    client.kill().await;
    let gone: Reply = within("the hanging request fails", hanging).await.unwrap();
    assert_eq!(gone.status, 502);

    expect_metrics(
        &visitor,
        &[
            (requests("2xx", "upstream"), 3.0),
            (requests("5xx", "upstream"), 1.0),
            (requests("4xx", "tunnel_not_found"), 1.0),
            (requests("5xx", "timeout"), 1.0),
            (requests("4xx", "too_many_requests"), 1.0),
            (requests("5xx", "client_gone"), 1.0),
            ("cryptun_request_duration_seconds_count".into(), 8.0),
            ("cryptun_requests_in_flight".into(), 0.0),
            ("cryptun_refusals_total{reason=\"max_streams\"}".into(), 1.0),
            ("cryptun_sessions".into(), 1.0),
            ("cryptun_tunnels".into(), 1.0),
        ],
    )
    .await;
    let text = visitor.metrics().await;
    let bytes_in = sample(&text, "cryptun_body_bytes_total{direction=\"in\"}");
    let bytes_out = sample(&text, "cryptun_body_bytes_total{direction=\"out\"}");
    assert!(bytes_in >= 10_000.0, "{bytes_in}");
    assert!(bytes_out >= 5_000.0, "{bytes_out}");
    // The 504 took the tunnel's timeout; the histogram has it above 0.25 s.
    let quick = sample(
        &text,
        "cryptun_request_duration_seconds_bucket{le=\"0.25\"}",
    );
    assert!(quick <= 7.0, "{quick}\n{text}");
}

#[tokio::test]
async fn no_series_grows_with_what_visitors_ask_for() {
    let server = TestServer::start().await;
    let visitor = Visitor::new(server.addr);
    visitor.get(&server.host_of("ghost-0"), "/").await;
    let series = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    let before = series(&visitor.metrics().await);
    for i in 1..40 {
        let reply = visitor
            .get(
                &server.host_of(&format!("ghost-{i}")),
                &format!("/p{i}?t={i}"),
            )
            .await;
        assert_eq!(reply.status, 404);
    }
    visitor.get("no..such..host", "/").await;
    let text = visitor.metrics().await;
    // A malformed Host is refused before routing, like bad framing: it is
    // not a tunnel request, and adds no series either.
    assert_eq!(series(&text), before, "no new series:\n{text}");
    assert!(!text.contains("ghost"), "{text}");
    assert_eq!(sample(&text, &requests("4xx", "tunnel_not_found")), 40.0);
}

#[tokio::test]
async fn handshake_failures_are_counted_by_reason() {
    let server = TestServer::start().await;
    let (_holder, _) = RawWs::tunnel(&server, json!({ "subdomain": "taken" })).await;
    let mut ws = RawWs::connect(&server).await;
    ws.send_json(&json!({ "type": "ping" })).await;
    ws.send_json(&json!({ "type": "cancel", "request_id": 1 }))
        .await;
    assert_eq!(ws.expect_close().await, 1008);
    for subdomain in ["taken", "-bad-"] {
        let mut ws = RawWs::connect(&server).await;
        ws.send_json(&json!({ "type": "create_tunnel", "subdomain": subdomain }))
            .await;
        assert_eq!(ws.recv_type("error").await["type"], "error");
        assert_eq!(ws.expect_close().await, 1008);
    }
    let visitor = Visitor::new(server.addr);
    let failures =
        |reason: &str| format!("cryptun_handshake_failures_total{{reason=\"{reason}\"}}");
    expect_metrics(
        &visitor,
        &[
            (failures("no_tunnel"), 1.0),
            (failures("subdomain_taken"), 1.0),
            (failures("invalid_subdomain"), 1.0),
            ("cryptun_sessions".into(), 1.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn readyz_answers_503_once_shutdown_begins_while_healthz_stays_200() {
    let mut config = TestServer::test_config();
    // Long enough to look around while the server still accepts.
    config.shutdown_delay = Duration::from_secs(5);
    let server = TestServer::start_with(config).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let visitor = Visitor::new(server.addr);
    let own = server.own_host();
    let ready = visitor.get(&own, "/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");

    server.begin_stop();
    let draining = Visitor::new(server.addr);
    let ready = draining.get(&own, "/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(ready.json()["status"], "draining");
    assert_eq!(draining.get(&own, "/healthz").await.status, 200);
    // Tunnels still serve while the load balancer moves away...
    assert_eq!(draining.get(&client.host, "/echo").await.status, 200);
    // ...but new clients are turned away, and may try again elsewhere.
    let refused = TestClient::start_with(&server, &origin.target(), |_| {})
        .await
        .err()
        .expect("a new client is refused while draining");
    assert!(
        matches!(&refused, ClientError::Connect { .. }) && !refused.is_final(),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("503"), "{refused}");
}
