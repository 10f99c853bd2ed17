//! Long requests are not cut while the tunnel is alive: a long poll waits
//! as long as its tunnel asked for (past the server's default timeout and
//! the heartbeat timeout), and a slow stream flows past both.

use std::time::{Duration, Instant};

use cryptun_testkit::{Origin, TestClient, TestServer, Visitor};

/// A server whose default request timeout (1 s) is shorter than the waits
/// below, with a 1 s heartbeat that gives up after 3 s of silence.
async fn strict_server() -> TestServer {
    let mut config = TestServer::test_config();
    config.request_timeout = Duration::from_secs(1);
    config.max_request_timeout = Duration::from_secs(30);
    TestServer::start_with(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_waits_as_long_as_its_tunnel_asked() {
    let server = strict_server().await;
    let origin = Origin::start().await;
    let patient = TestClient::start_with(&server, &origin.target(), |c| {
        c.tunnel.request_timeout = Some(Duration::from_secs(20));
    })
    .await
    .unwrap();
    assert_eq!(patient.tunnel.request_timeout_ms, 20_000);
    let visitor = Visitor::new(server.addr);
    let started = Instant::now();
    // Longer than the default timeout and the heartbeat timeout together.
    let reply = visitor.get(&patient.host, "/delay?ms=4500").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "done");
    assert!(started.elapsed() >= Duration::from_millis(4500));

    // A tunnel that asked for nothing keeps the server's default.
    let plain = TestClient::start(&server, &origin.target()).await;
    assert_eq!(plain.tunnel.request_timeout_ms, 1_000);
    let reply = visitor.get(&plain.host, "/delay?ms=3000").await;
    assert_eq!(reply.status, 504);
}

#[tokio::test]
async fn a_tunnel_cannot_ask_for_more_than_the_server_allows() {
    let server = strict_server().await;
    let origin = Origin::start().await;
    let greedy = TestClient::start_with(&server, &origin.target(), |c| {
        c.tunnel.request_timeout = Some(Duration::from_secs(24 * 3600));
    })
    .await
    .unwrap();
    assert_eq!(greedy.tunnel.request_timeout_ms, 30_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stream_flows_past_every_timeout() {
    let server = strict_server().await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let started = Instant::now();
    // Four chunks 1.5 s apart: 4.5 s in all, past the 1 s request timeout
    // and the 3 s heartbeat timeout; bytes and pings keep flowing.
    let reply = Visitor::new(server.addr)
        .get(&client.host, "/stream?chunks=4&interval_ms=1500")
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "chunk 0\nchunk 1\nchunk 2\nchunk 3\n");
    assert!(started.elapsed() >= Duration::from_millis(4500));
}
