//! Failure handling end to end: a client killed mid-request, a local service
//! that is down or never answers, a visitor who leaves, a half-open client,
//! isolation between tunnels, and the per-tunnel limit on requests in flight.
//! Each failure must reach the visitor as the right status, quickly, and
//! leave the server serving.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cryptun_testkit::raw::{WAIT, eventually};
use cryptun_testkit::{Origin, RawWs, Reply, TestClient, TestServer, Visitor};
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// A failure the server notices itself must reach the visitor within this.
const QUICK: Duration = Duration::from_secs(2);

/// `GET path` on `host`, in the background.
fn spawn_get(visitor: &Visitor, host: &str, path: &str) -> JoinHandle<Reply> {
    let (visitor, host, path) = (visitor.clone(), host.to_owned(), path.to_owned());
    tokio::spawn(async move { visitor.get(&host, &path).await })
}

/// The reply of a background request, waiting at most `limit`.
async fn reply_within(pending: JoinHandle<Reply>, limit: Duration) -> Reply {
    timeout(limit, pending)
        .await
        .expect("the visitor got no answer in time")
        .expect("the visitor task failed")
}

/// A visitor on its own connection asking for `/hang`: dropping the socket
/// is the visitor going away.
async fn hanging_visitor(server: &TestServer, host: &str) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!("GET /hang HTTP/1.1\r\nHost: {host}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

async fn listed(visitor: &Visitor, subdomain: &str) -> bool {
    visitor
        .tunnels()
        .await
        .iter()
        .any(|t| t["subdomain"] == subdomain)
}

async fn wait_requests(origin: &Origin, n: usize) {
    eventually(WAIT, &format!("{n} requests reach the origin"), || async {
        origin.requests() >= n
    })
    .await;
}

#[tokio::test]
async fn client_killed_mid_request_gives_502_quickly() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let (host, subdomain) = (client.host.clone(), client.tunnel.subdomain.clone());
    let visitor = Visitor::new(server.addr);
    assert!(listed(&visitor, &subdomain).await);

    let pending = spawn_get(&visitor, &host, "/hang");
    wait_requests(&origin, 1).await;
    let killed = Instant::now();
    client.kill().await;
    let reply = reply_within(pending, WAIT).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert!(
        killed.elapsed() < QUICK,
        "502 took {:?} (request timeout is {:?})",
        killed.elapsed(),
        server.config.request_timeout
    );
    assert_eq!(reply.headers["x-cryptun-error"], "client_gone");
    // As when the process dies, the client's local request goes with it.
    assert!(
        origin.wait_dropped(1, WAIT).await,
        "the killed client's request to the origin was left open"
    );

    eventually(WAIT, "the dead tunnel leaves /api/tunnels", || async {
        !listed(&visitor, &subdomain).await
    })
    .await;
    // Its name is held for the client to reconnect: "come back shortly".
    let held = visitor.get(&host, "/echo").await;
    assert_eq!(held.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(held.headers["x-cryptun-error"], "tunnel_reconnecting");
    assert!(held.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn local_service_down_gives_502_page() {
    let server = TestServer::start().await;
    let closed_port = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let client = TestClient::start(&server, &format!("127.0.0.1:{closed_port}")).await;
    let visitor = Visitor::new(server.addr);
    let reply = timeout(WAIT, visitor.get(&client.host, "/anything"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert!(
        reply.text().contains("could not reach the local service"),
        "{}",
        reply.text()
    );
    // The tunnel itself is fine and answers again.
    let again = visitor.get(&client.host, "/again").await;
    assert_eq!(again.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn no_answer_in_time_gives_504_and_abandons_the_origin_request() {
    let mut config = TestServer::test_config();
    config.request_timeout = Duration::from_millis(500);
    let server = TestServer::start_with(config).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let visitor = Visitor::new(server.addr);

    let started = Instant::now();
    let reply = timeout(WAIT, visitor.get(&client.host, "/hang"))
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        reply.text()
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < QUICK,
        "504 after {took:?}"
    );
    assert!(
        origin.wait_dropped(1, WAIT).await,
        "the origin's request was not abandoned after the 504"
    );
    assert_eq!(
        visitor.get(&client.host, "/echo").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn visitor_who_leaves_cancels_the_request_at_the_client() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let visitor = Visitor::new(server.addr);

    let socket = hanging_visitor(&server, &client.host).await;
    wait_requests(&origin, 1).await;
    assert_eq!(origin.dropped(), 0);
    drop(socket);
    assert!(
        origin.wait_dropped(1, WAIT).await,
        "the origin's /hang request was not dropped after the visitor left"
    );
    eventually(WAIT, "no request left in flight", || async {
        visitor.tunnels().await[0]["in_flight"] == 0
    })
    .await;
    assert_eq!(
        visitor.get(&client.host, "/echo").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn half_open_client_is_detected_by_heartbeat() {
    let server = TestServer::start().await;
    let heartbeat = server.config.heartbeat;
    // A client that creates its tunnel and then never reads again: no pongs,
    // nothing at all, but the socket stays open.
    let (silent, created) = RawWs::tunnel(&server, serde_json::json!({})).await;
    let subdomain = created["subdomain"].as_str().unwrap().to_owned();
    let visitor = Visitor::new(server.addr);
    let started = Instant::now();
    let pending = spawn_get(&visitor, &server.host_of(&subdomain), "/waiting");

    let limit = heartbeat.timeout + heartbeat.interval;
    eventually(
        limit + Duration::from_millis(500),
        "half-open tunnel removed",
        || async { !listed(&visitor, &subdomain).await },
    )
    .await;
    assert!(
        started.elapsed() >= heartbeat.timeout - Duration::from_millis(500),
        "removed after {:?}, before the heartbeat timeout could expire",
        started.elapsed()
    );
    let reply = reply_within(pending, QUICK).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert!(started.elapsed() < server.config.request_timeout);
    drop(silent);
}

#[tokio::test]
async fn one_tunnels_failure_touches_no_other() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let doomed = TestClient::start(&server, &origin.target()).await;
    let healthy = TestClient::start(&server, &origin.target()).await;
    let visitor = Visitor::new(server.addr);

    let doomed_pending = spawn_get(&visitor, &doomed.host, "/hang");
    // A response from the healthy tunnel, mid-stream while the other dies.
    let req = visitor
        .builder("GET", &healthy.host, "/stream?chunks=4&interval_ms=150")
        .body(Default::default())
        .unwrap();
    let streaming = timeout(WAIT, visitor.send(req)).await.unwrap();
    assert_eq!(streaming.status(), StatusCode::OK);
    let mut body = streaming.into_body();
    let first = timeout(WAIT, body.frame()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), Bytes::from("chunk 0\n"));
    wait_requests(&origin, 2).await;

    doomed.kill().await;
    let reply = reply_within(doomed_pending, QUICK).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);

    let rest = timeout(WAIT, body.collect()).await.unwrap().unwrap();
    assert_eq!(rest.to_bytes(), "chunk 1\nchunk 2\nchunk 3\n");
    for i in 0..5 {
        let reply = visitor
            .get(&healthy.host, &format!("/token?t=after{i}"))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), format!("after{i}"));
    }
    let listed: Vec<_> = visitor.tunnels().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["subdomain"], healthy.tunnel.subdomain.as_str());
}

#[tokio::test]
async fn too_many_requests_in_flight_gives_429_then_recovers() {
    let mut config = TestServer::test_config();
    config.limits.max_streams = 4;
    let server = TestServer::start_with(config).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let visitor = Visitor::new(server.addr);

    let mut hanging = Vec::new();
    for _ in 0..4 {
        hanging.push(hanging_visitor(&server, &client.host).await);
    }
    wait_requests(&origin, 4).await;
    let refused = visitor.get(&client.host, "/echo").await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.text()
    );
    assert!(
        refused.headers.contains_key("retry-after"),
        "{:?}",
        refused.headers
    );
    assert_eq!(
        origin.requests(),
        4,
        "the refused request reached the origin"
    );

    drop(hanging);
    assert!(origin.wait_dropped(4, WAIT).await);
    eventually(WAIT, "the streams are released", || async {
        visitor.tunnels().await[0]["in_flight"] == 0
    })
    .await;
    // All four slots are free again, at once.
    let replies = futures_util::future::join_all((0..4).map(|i| {
        visitor.get(
            &client.host,
            if i % 2 == 0 { "/echo" } else { "/delay?ms=50" },
        )
    }))
    .await;
    for reply in replies {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
}
