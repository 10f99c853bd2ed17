//! What operators see: `/metrics` counting requests by outcome, bytes,
//! durations, sessions, handshake failures and refusals, requests refused
//! before routing (by reason), requests to the server's own routes and
//! failed TLS handshakes, without a series per tunnel or per bad Host;
//! `/healthz` and `/readyz`, before and after shutdown begins.

use std::time::Duration;

use cryptun_client::ClientError;
use cryptun_testkit::raw::{WAIT, eventually};
use cryptun_testkit::visitor::{raw_exchange, sample, status_of};
use cryptun_testkit::{Origin, RawWs, Reply, TestClient, TestServer, Visitor, within};
use serde_json::json;

fn requests(class: &str, reason: &str) -> String {
    format!("cryptun_requests_total{{class=\"{class}\",reason=\"{reason}\"}}")
}

fn refused(reason: &str) -> String {
    format!("cryptun_refused_requests_total{{reason=\"{reason}\"}}")
}

fn own(route: &str, class: &str) -> String {
    format!("cryptun_own_route_requests_total{{route=\"{route}\",class=\"{class}\"}}")
}

/// Sends raw `request` bytes on a new connection and returns the status
/// of the answer (the server closes after each of these).
async fn raw_status(server: &TestServer, request: &str) -> u16 {
    let reply = raw_exchange(server.addr, request.as_bytes(), WAIT).await;
    status_of(&reply)
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
            // The killed client's connection just dropped.
            ("cryptun_sessions_ended_total{reason=\"lost\"}".into(), 1.0),
        ],
    )
    .await;
    // The other one says goodbye.
    impatient.stop().await.unwrap();
    expect_metrics(
        &visitor,
        &[
            ("cryptun_sessions".into(), 0.0),
            (
                "cryptun_sessions_ended_total{reason=\"client_closed\"}".into(),
                1.0,
            ),
            ("cryptun_sessions_ended_total{reason=\"lost\"}".into(), 1.0),
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
async fn requests_refused_before_routing_are_counted_by_reason() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let h = &client.host;
    let get = |headers: &str| format!("GET /echo HTTP/1.1\r\n{headers}Connection: close\r\n\r\n");
    // Each reason a different number of times, so that no two can be
    // mistaken for each other.
    let smuggle = format!(
        "POST /echo HTTP/1.1\r\nHost: {h}\r\nContent-Length: 5\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    let many_headers: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let huge_header = format!("X-Big: {}\r\n", "b".repeat(70_000));
    // Just over the 64 KiB head limit: hyper checks its limit only between
    // reads, so this one may reach the gateway whole; 431 either way.
    let just_over = format!("X-Big: {}\r\n", "b".repeat(65_600));
    let long_target = format!("/echo?{}", "q".repeat(server.config.max_uri_length));
    let cases: Vec<(String, u16)> = vec![
        (smuggle, 400),
        (get(&format!("Host: {h}\r\nX-Evil: a\0b\r\n")), 400),
        (get(&format!("Host: {h}\r\nX-Evil : a\r\n")), 400),
        (get(&format!("Host: {h}\r\n{many_headers}")), 431),
        (get(&format!("Host: {h}\r\n{many_headers}")), 431),
        (get(&format!("Host: {h}\r\n{huge_header}")), 431),
        (get(&format!("Host: {h}\r\n{just_over}")), 431),
        (
            format!("GET {long_target} HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n"),
            414,
        ),
        (get(""), 400),
        (get("Host: no..such..host\r\n"), 400),
        (get(&format!("Host: {h}\r\nHost: {h}\r\n")), 400),
    ];
    for (request, status) in &cases {
        let got = raw_status(&server, request).await;
        assert_eq!(got, *status, "{}", &request[..request.len().min(120)]);
    }

    // The server's own routes, each under its own label.
    let visitor = Visitor::new(server.addr);
    let own_host = server.own_host();
    for (path, status) in [
        ("/healthz", 200),
        ("/healthz", 200),
        ("/readyz", 200),
        ("/dashboard", 200),
        ("/ws", 400),
        ("/nothing-here", 404),
        ("/api/nothing-here", 404),
    ] {
        assert_eq!(visitor.get(&own_host, path).await.status, status, "{path}");
    }
    // Loopback, but under a name a rebinding page could send: refused.
    let rebound = visitor.get("rebind.example", "/api/tunnels").await;
    assert_eq!(rebound.status, 403, "{}", rebound.text());

    expect_metrics(
        &visitor,
        &[
            (refused("bad_framing"), 1.0),
            (refused("malformed"), 2.0),
            (refused("headers_too_large"), 4.0),
            (refused("uri_too_long"), 1.0),
            (refused("bad_host"), 3.0),
            (refused("redirect"), 0.0),
            (refused("misdirected"), 0.0),
            (own("healthz", "2xx"), 2.0),
            (own("readyz", "2xx"), 1.0),
            (own("dashboard", "2xx"), 1.0),
            (own("ws", "4xx"), 1.0),
            (own("other", "4xx"), 1.0),
            (own("api", "4xx"), 2.0),
        ],
    )
    .await;
    let text = visitor.metrics().await;
    assert!(sample(&text, &own("metrics", "2xx")) >= 1.0, "{text}");
    // None of them reached the app, nor counts as a tunnel's request.
    assert_eq!(origin.requests(), 0);
    assert!(!text.contains("cryptun_requests_total{"), "{text}");
}

#[tokio::test]
async fn redirects_and_misdirected_requests_are_counted() {
    let config = cryptun_server::Config {
        redirect_http: true,
        ..TestServer::test_config()
    };
    let server = TestServer::start_tls(config).await;
    for host in ["tunnel-x.localhost", "localhost"] {
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        assert_eq!(raw_status(&server, &request).await, 308);
    }
    let https = server.tls.as_ref().unwrap().visitor();
    for sni in [Some("other.localhost"), Some("tunnel-x.localhost"), None] {
        let reply = within("get", https.get(sni, "tunnel-y.localhost", "/")).await;
        assert_eq!(reply.status, 421, "{sni:?}: {}", reply.text());
    }
    // The plain listener only redirects: read the page over HTTPS.
    let reply = within("metrics", https.get(None, "127.0.0.1", "/metrics")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let text = reply.text();
    assert_eq!(sample(&text, &refused("redirect")), 2.0, "{text}");
    assert_eq!(sample(&text, &refused("misdirected")), 3.0, "{text}");
    assert_eq!(sample(&text, &refused("bad_host")), 0.0, "{text}");
}

#[tokio::test]
async fn no_series_grows_with_what_visitors_ask_for() {
    let server = TestServer::start().await;
    let visitor = Visitor::new(server.addr);
    visitor.get(&server.host_of("ghost-0"), "/").await;
    // Scraping counts itself: the first scrape's own series appears on the
    // second.
    visitor.metrics().await;
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
    let text = visitor.metrics().await;
    assert_eq!(series(&text), before, "no new series:\n{text}");
    assert!(!text.contains("ghost"), "{text}");
    assert_eq!(sample(&text, &requests("4xx", "tunnel_not_found")), 40.0);
}

#[tokio::test]
async fn forty_bad_hosts_add_no_series() {
    let server = TestServer::start().await;
    let visitor = Visitor::new(server.addr);
    let bad = |host: &str| format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    assert_eq!(raw_status(&server, &bad("first..bad")).await, 400);
    // Scraping counts itself: the first scrape's own series appears on the
    // second.
    visitor.metrics().await;
    let series = |text: &str| text.lines().filter(|l| !l.starts_with('#')).count();
    let before = series(&visitor.metrics().await);
    for i in 0..40 {
        let host = match i % 4 {
            0 => format!("bad-{i}..localhost"),
            1 => format!("bad_{i} space.localhost"),
            2 => format!("bad-{i}.localhost:{}", 70_000 + i),
            _ => format!("[::{i}x]"),
        };
        assert_eq!(raw_status(&server, &bad(&host)).await, 400, "{host}");
    }
    let text = visitor.metrics().await;
    assert_eq!(series(&text), before, "no new series:\n{text}");
    assert!(!text.contains("bad-"), "{text}");
    assert_eq!(sample(&text, &refused("bad_host")), 41.0, "{text}");
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

#[tokio::test]
async fn failed_tls_handshakes_are_counted_by_reason() {
    let config = cryptun_server::Config {
        tls_handshake_timeout: Duration::from_millis(300),
        ..TestServer::test_config()
    };
    let server = TestServer::start_tls(config).await;
    let https = server.tls.as_ref().unwrap().addr;
    let visitor = Visitor::new(server.addr);
    let failures =
        |reason: &str| format!("cryptun_tls_handshake_failures_total{{reason=\"{reason}\"}}");
    expect_metrics(
        &visitor,
        &[(failures("error"), 0.0), (failures("timeout"), 0.0)],
    )
    .await;
    // Plain HTTP on the HTTPS port is no TLS hello.
    raw_exchange(https, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", WAIT).await;
    // A connection that says nothing past the handshake limit.
    let _silent = tokio::net::TcpStream::connect(https).await.unwrap();
    expect_metrics(
        &visitor,
        &[(failures("error"), 1.0), (failures("timeout"), 1.0)],
    )
    .await;
    // A good handshake counts as neither.
    let reply = within(
        "https",
        server
            .tls
            .as_ref()
            .unwrap()
            .visitor()
            .get(None, "localhost", "/healthz"),
    )
    .await;
    assert_eq!(reply.status, 200);
    expect_metrics(
        &visitor,
        &[(failures("error"), 1.0), (failures("timeout"), 1.0)],
    )
    .await;
}
