//! Idle keep-alive visitor connections: parked without hyper's buffers
//! between requests (`cryptun_idle_connections` counts them) and picked up
//! again by their next bytes — a next request, one split across writes,
//! two pipelined in one write, over TLS too; never while a request body
//! still arrives after its response; closed after `header_read_timeout`,
//! and at once when the server stops.

use std::time::Duration;

use cryptun_server::Config;
use cryptun_testkit::raw::{WAIT, eventually};
use cryptun_testkit::visitor::read_response;
use cryptun_testkit::{Origin, TestClient, TestServer, Visitor, within};
use tokio::io::{AsyncBufRead, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

fn get(host: &str, token: &str) -> String {
    format!("GET /token?t={token} HTTP/1.1\r\nHost: {host}\r\n\r\n")
}

/// One response off `stream` (buffered: a pipelined second response
/// waits in it): its status and body.
async fn response(stream: &mut (impl AsyncBufRead + Unpin)) -> (u16, String) {
    let resp = within("a response", read_response(stream)).await;
    (resp.status, String::from_utf8(resp.body).unwrap())
}

/// Waits until the server counts `n` parked connections (the scraping
/// connection is busy while it scrapes, so it never counts itself).
async fn parked(scraper: &Visitor, n: f64) {
    eventually(WAIT, &format!("{n} parked connections"), || async {
        scraper.metric("cryptun_idle_connections").await == n
    })
    .await;
}

/// A server with `config` and a tunnel, and a visitor connection that has
/// made one request (the origin and the client must live as long).
async fn one_request_made(
    config: Config,
) -> (TestServer, Origin, TestClient, BufReader<TcpStream>) {
    let server = TestServer::start_with(config).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let mut visitor = BufReader::new(TcpStream::connect(server.addr).await.unwrap());
    visitor
        .write_all(get(&client.host, "one").as_bytes())
        .await
        .unwrap();
    assert_eq!(response(&mut visitor).await, (200, "one".into()));
    (server, origin, client, visitor)
}

#[tokio::test]
async fn a_parked_connection_serves_the_next_requests_on_it() {
    let (server, _origin, client, mut visitor) = one_request_made(TestServer::test_config()).await;
    let scraper = Visitor::new(server.addr);
    parked(&scraper, 1.0).await;

    // A head split across writes, the first part waking the connection.
    let second = get(&client.host, "two");
    let (a, b) = second.split_at(10);
    visitor.write_all(a.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    visitor.write_all(b.as_bytes()).await.unwrap();
    assert_eq!(response(&mut visitor).await, (200, "two".into()));
    parked(&scraper, 1.0).await;

    // Two requests in one write: the second is already read when the
    // first is answered, and is served from what hyper had read.
    let both = get(&client.host, "three") + &get(&client.host, "four");
    visitor.write_all(both.as_bytes()).await.unwrap();
    assert_eq!(response(&mut visitor).await, (200, "three".into()));
    assert_eq!(response(&mut visitor).await, (200, "four".into()));
    parked(&scraper, 1.0).await;

    drop(visitor);
    parked(&scraper, 0.0).await;
}

#[tokio::test]
async fn a_parked_tls_connection_serves_the_next_requests_on_it() {
    let server = TestServer::start_tls(TestServer::test_config()).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let scraper = Visitor::new(server.addr);
    let sni = format!("{}.localhost", client.tunnel.subdomain);
    let tls = server.tls.as_ref().unwrap().visitor();
    let mut visitor = BufReader::new(tls.connect(Some(&sni)).await.unwrap());
    for token in ["one", "two", "three"] {
        let request = get(&client.host, token);
        visitor.write_all(request.as_bytes()).await.unwrap();
        assert_eq!(response(&mut visitor).await, (200, token.into()));
        parked(&scraper, 1.0).await;
    }
    drop(visitor);
    parked(&scraper, 0.0).await;
}

#[tokio::test]
async fn a_parked_connection_closes_after_the_header_read_timeout() {
    let mut config = TestServer::test_config();
    config.header_read_timeout = Duration::from_secs(2);
    let (server, _origin, _client, mut visitor) = one_request_made(config).await;
    let answered = std::time::Instant::now();
    // Parked first (after 0.5 s), so what closes it is the parked wait's
    // limit, not hyper's own wait for a head.
    let scraper = Visitor::new(server.addr);
    parked(&scraper, 1.0).await;
    let mut rest = Vec::new();
    within("the idle connection closes", visitor.read_to_end(&mut rest))
        .await
        .unwrap();
    // Idle as long as hyper would have let it be, the parked time included.
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_millis(1900) && idle < Duration::from_millis(2400),
        "closed after {idle:?} idle"
    );
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    parked(&scraper, 0.0).await;
}

#[tokio::test]
async fn stopping_the_server_closes_parked_connections_at_once() {
    let mut config = TestServer::test_config();
    // Far longer than the test waits: only closing at once passes.
    config.shutdown_grace = Duration::from_secs(60);
    config.shutdown_delay = Duration::ZERO;
    let (server, _origin, _client, mut visitor) = one_request_made(config).await;
    parked(&Visitor::new(server.addr), 1.0).await;

    server.begin_stop();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), visitor.read_to_end(&mut rest));
    assert!(closed.await.is_ok(), "the parked connection was kept open");
    tokio::time::timeout(Duration::from_secs(5), server.stopped())
        .await
        .expect("the server waited for its idle connection");
}

/// A fresh connection to a new server and tunnel sends `POST path` to
/// `host` (the tunnel's, or another name) with a body of 5 bytes and then,
/// 1.5 s after the response (longer than a connection takes to be parked),
/// a request for the token `smuggled` as the body's rest, and a real
/// request after it. Returns the response's status and everything the
/// server sent after it.
/// A body longer than the gateway reads whole before forwarding (16 KiB),
/// so that it streams and the app can answer before its end.
const STREAMED: usize = 20_000;

async fn body_arriving_late(path: &str, host: Option<&str>) -> (u16, String) {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let mut visitor = BufReader::new(TcpStream::connect(server.addr).await.unwrap());
    let smuggled = get(&client.host, "smuggled");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
        host.map_or(client.host.clone(), |name| server.host_of(name)),
        STREAMED + smuggled.len()
    );
    visitor.write_all(head.as_bytes()).await.unwrap();
    visitor.write_all(&[b'.'; STREAMED]).await.unwrap();
    let (status, _) = response(&mut visitor).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rest = smuggled + &get(&client.host, "real");
    let _ = visitor.write_all(rest.as_bytes()).await;
    let mut after = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), visitor.read_to_end(&mut after)).await;
    (status, String::from_utf8_lossy(&after).into_owned())
}

/// The origin's `/token` answers at once, without reading the body: the
/// response ends while the upload goes on. A connection quiet then must not
/// be parked, or the rest of the body would be parsed as requests.
#[tokio::test]
async fn a_body_still_arriving_after_its_response_is_not_parsed_as_a_request() {
    let (status, after) = body_arriving_late("/token?t=first", None).await;
    assert_eq!(status, 200);
    assert!(
        !after.contains("smuggled") && !after.contains("400 Bad Request"),
        "the rest of the body was served as a request:\n{after}"
    );
}

/// The same when the gateway answers without reading the body at all (no
/// such tunnel) and hyper skips the body's bytes as they come.
#[tokio::test]
async fn a_body_refused_unread_is_not_parsed_as_a_request() {
    let (status, after) = body_arriving_late("/x", Some("nosuchtunnel")).await;
    assert_eq!(status, 404);
    assert!(
        !after.contains("smuggled"),
        "the rest of the body was served as a request:\n{after}"
    );
}

/// The request body ends on the task uploading it, after its response: the
/// connection, quiet then, is parked all the same.
#[tokio::test]
async fn a_connection_whose_upload_ends_after_its_response_is_parked() {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let scraper = Visitor::new(server.addr);
    let mut visitor = BufReader::new(TcpStream::connect(server.addr).await.unwrap());
    let head = format!(
        "POST /token?t=first HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
        client.host,
        STREAMED + 5
    );
    visitor.write_all(head.as_bytes()).await.unwrap();
    visitor.write_all(&[b'.'; STREAMED]).await.unwrap();
    assert_eq!(response(&mut visitor).await, (200, "first".into()));
    visitor.write_all(b"67890").await.unwrap();
    parked(&scraper, 1.0).await;
    // And it still serves.
    visitor
        .write_all(get(&client.host, "next").as_bytes())
        .await
        .unwrap();
    assert_eq!(response(&mut visitor).await, (200, "next".into()));
}
