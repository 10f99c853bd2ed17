//! HTTP/2 on the public side: curl and Chromium reach a tunnel over h2 on
//! the HTTPS listener (ALPN) and, with `--h2c`, over cleartext h2 with
//! prior knowledge; a browser's WebSocket still works beside it (over
//! HTTP/1.1: no extended CONNECT is offered). HTTP/2's limits are crossed
//! (streams at once, the header list, a rapid-reset flood), and requests
//! whose framing would be ambiguous once downgraded to HTTP/1.1 never
//! reach the local service.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cryptun_server::Config;
use cryptun_testkit::h2raw::{self, RawH2};
use cryptun_testkit::wsecho::WsEcho;
use cryptun_testkit::{Browser, Origin, TestClient, TestServer, Visitor};

/// curl, for one tunnel's host at one listener (resolved there, trusting
/// `ca`).
struct Curl<'a> {
    scheme: &'static str,
    host: &'a str,
    addr: std::net::SocketAddr,
    ca: Option<&'a Path>,
}

impl<'a> Curl<'a> {
    /// Over cleartext.
    fn plain(host: &'a str, addr: std::net::SocketAddr) -> Self {
        Curl {
            scheme: "http",
            host,
            addr,
            ca: None,
        }
    }

    /// Over TLS, trusting `ca`.
    fn https(host: &'a str, addr: std::net::SocketAddr, ca: &'a Path) -> Self {
        Curl {
            scheme: "https",
            host,
            addr,
            ca: Some(ca),
        }
    }

    /// `curl ARGS` for `path`: `(http_version, status, body)`.
    fn run(&self, args: &[&str], path: &str) -> (String, u16, String) {
        let (name, port) = (self.host.split(':').next().unwrap(), self.addr.port());
        let url = format!("{}://{name}:{port}{path}", self.scheme);
        let resolve = format!("{name}:{port}:{}", self.addr.ip());
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "20",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .args(["--resolve", &resolve])
        .args(args);
        if let Some(ca) = self.ca {
            cmd.arg("--cacert").arg(ca);
        }
        let out = cmd
            .arg(&url)
            .output()
            .expect("curl runs (apt-get install curl)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
        let (version, status) = tail.split_once(' ').unwrap_or(("", "0"));
        let status = status.trim().parse().unwrap_or(0);
        (version.to_owned(), status, body.to_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn curl_reaches_a_tunnel_over_http2_on_the_https_listener() {
    let server = TestServer::start_tls(TestServer::test_config()).await;
    let https = server.tls.as_ref().unwrap();
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let host = server.host_of(&client.tunnel.subdomain);
    let (version, status, body) =
        Curl::https(&host, https.addr, &https.ca).run(&["--http2"], "/echo");
    assert_eq!((version.as_str(), status), ("2", 200), "{body}");
    // The local service heard a Host made from :authority.
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let headers = echoed["headers"].as_array().unwrap();
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h[0] == name)
            .map(|h| h[1].as_str().unwrap().to_owned())
    };
    assert_eq!(header("host").as_deref(), Some(host.as_str()), "{body}");
    assert_eq!(
        header("x-forwarded-proto").as_deref(),
        Some("https"),
        "{body}"
    );
    // A body up, hashed by the local service.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("up");
    let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &sent).unwrap();
    let at = format!("@{}", file.display());
    let (version, status, body) = Curl::https(&host, https.addr, &https.ca)
        .run(&["--http2", "--data-binary", &at], "/sha256");
    assert_eq!((version.as_str(), status), ("2", 200), "{body}");
    let hashed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(hashed["len"], 300_000);
    assert_eq!(hashed["sha256"], cryptun_testkit::sha256_hex(&sent));
    // HTTP/1.1 still, for those who ask.
    let (version, status, _) =
        Curl::https(&host, https.addr, &https.ca).run(&["--http1.1"], "/echo");
    assert_eq!((version.as_str(), status), ("1.1", 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_h2c_the_plain_listener_takes_http2_with_prior_knowledge() {
    let (server, origin, _client, host) = h2c_tunnel().await;
    let (version, status, _) =
        Curl::plain(&host, server.addr).run(&["--http2-prior-knowledge"], "/echo");
    assert_eq!((version.as_str(), status), ("2", 200));
    // HTTP/1.1 on the same listener, a request as short as a preface's start.
    let (version, status, _) = Curl::plain(&host, server.addr).run(&[], "/echo");
    assert_eq!((version.as_str(), status), ("1.1", 200));

    // Without --h2c, prior knowledge is not spoken.
    let plain = TestServer::start().await;
    let client = TestClient::start(&plain, &origin.target()).await;
    let host = plain.host_of(&client.tunnel.subdomain);
    let (version, status, _) =
        Curl::plain(&host, plain.addr).run(&["--http2-prior-knowledge"], "/echo");
    assert_ne!((version.as_str(), status), ("2", 200));
}

/// The status `addr` answers `req` with, over a new h2c connection (the
/// `h2` crate's client: it sends what it is given).
async fn h2_status(addr: std::net::SocketAddr, req: http::Request<()>) -> http::StatusCode {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp);
    resp.await.unwrap().unwrap().status()
}

/// A test server that takes h2c on its plain listener.
pub(crate) async fn h2c_server() -> TestServer {
    TestServer::start_with(Config {
        h2c: true,
        ..TestServer::test_config()
    })
    .await
}

/// A server speaking h2c, a tunnel to an origin, and the tunnel's host.
async fn h2c_tunnel() -> (TestServer, Origin, TestClient, String) {
    let server = h2c_server().await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let host = server.host_of(&client.tunnel.subdomain);
    (server, origin, client, host)
}

fn get(host: &str, path: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "GET".into()),
        (":scheme", "http".into()),
        (":path", path.into()),
        (":authority", host.into()),
    ]
}

fn fields<'a>(list: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    list.iter().map(|(n, v)| (*n, v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_past_the_limit_are_refused_and_the_others_served() {
    let (server, origin, _client, host) = h2c_tunnel().await;
    let mut raw = RawH2::connect(server.addr).await;
    // 110 requests that hang, at once: the server allows 100.
    let mut burst = Vec::new();
    for i in 0..110u32 {
        burst.extend(h2raw::headers(
            1 + 2 * i,
            &fields(&get(&host, "/hang")),
            true,
        ));
    }
    raw.send(&burst).await.unwrap();
    let mut refused = 0;
    let frames = raw.all(Duration::from_secs(3)).await;
    for frame in &frames {
        if frame.kind == h2raw::RST_STREAM && frame.error_code() == Some(h2raw::REFUSED_STREAM) {
            refused += 1;
        }
    }
    assert_eq!(refused, 10, "{frames:?}");
    assert!(origin.requests() <= 100, "{}", origin.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_header_list_past_the_limit_is_answered_431() {
    let (server, origin, _client, host) = h2c_tunnel().await;
    let big = "a".repeat(80 * 1024);
    let req = http::Request::get(format!("http://{host}/echo"))
        .header("x-big", big)
        .body(())
        .unwrap();
    assert_eq!(h2_status(server.addr, req).await, 431);
    assert_eq!(origin.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rapid_reset_flood_is_answered_with_goaway() {
    let (server, origin, _client, host) = h2c_tunnel().await;
    let mut raw = RawH2::connect(server.addr).await;
    // Streams opened and reset at once (CVE-2023-44487), in one burst.
    let mut burst = Vec::new();
    for i in 0..2000u32 {
        let id = 1 + 2 * i;
        burst.extend(h2raw::headers(id, &fields(&get(&host, "/hang")), true));
        burst.extend(h2raw::rst(id, h2raw::CANCEL));
    }
    let _ = raw.send(&burst).await;
    let away = raw
        .until(Duration::from_secs(10), |f| f.kind == h2raw::GOAWAY)
        .await
        .expect("GOAWAY");
    assert_eq!(
        away.error_code(),
        Some(h2raw::ENHANCE_YOUR_CALM),
        "{away:?}"
    );
    assert!(origin.requests() < 2000, "{}", origin.requests());
    // The server serves everyone else as before.
    let reply = Visitor::new(server.addr).get(&host, "/echo").await;
    assert_eq!(reply.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_ambiguous_on_http1_never_reach_the_local_service() {
    let (server, origin, _client, host) = h2c_tunnel().await;
    let smuggled = "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let post = |extra: &[(&'static str, String)]| {
        let mut list = vec![
            (":method", "POST".into()),
            (":scheme", "http".into()),
            (":path", "/echo".into()),
            (":authority", host.clone()),
        ];
        list.extend_from_slice(extra);
        list
    };
    let cases: Vec<(&str, Vec<(&'static str, String)>)> = vec![
        (
            "transfer-encoding",
            post(&[("transfer-encoding", "chunked".into())]),
        ),
        ("connection", post(&[("connection", "keep-alive".into())])),
        ("keep-alive", post(&[("keep-alive", "timeout=5".into())])),
        ("upgrade", post(&[("upgrade", "websocket".into())])),
        ("te", post(&[("te", "gzip".into())])),
        (
            "a CR LF in a value",
            post(&[("x-a", "b\r\nTransfer-Encoding: chunked".into())]),
        ),
        (
            "an upper-case name",
            post(&[("Content-Length", "5".into())]),
        ),
    ];
    for (what, list) in &cases {
        let mut raw = RawH2::connect(server.addr).await;
        let mut bytes = h2raw::headers(1, &fields(list), false);
        bytes.extend(h2raw::data(1, smuggled.as_bytes(), true));
        let _ = raw.send(&bytes).await;
        let reset = raw
            .until(Duration::from_secs(5), |f| {
                f.stream == 1 && f.kind == h2raw::RST_STREAM || f.kind == h2raw::GOAWAY
            })
            .await;
        assert!(reset.is_some(), "{what}: neither reset nor GOAWAY");
    }
    // A body longer than its content-length: reset, and what reached the
    // local service (if its head did) is never more than the length.
    let mut raw = RawH2::connect(server.addr).await;
    let list = post(&[("content-length", "5".into())]);
    let mut bytes = h2raw::headers(1, &fields(&list), false);
    bytes.extend(h2raw::data(1, format!("hello{smuggled}").as_bytes(), true));
    let _ = raw.send(&bytes).await;
    let reset = raw
        .until(Duration::from_secs(5), |f| {
            f.stream == 1 && f.kind == h2raw::RST_STREAM
        })
        .await;
    assert!(reset.is_some(), "content-length mismatch not reset");
    // Host and :authority naming two hosts: 400 from the gateway.
    let req = http::Request::get(format!("http://{host}/echo"))
        .header("host", "another.localhost")
        .body(())
        .unwrap();
    assert_eq!(h2_status(server.addr, req).await, 400);
    // None of it was served, and no smuggled request appeared.
    assert_eq!(origin.requests(), 0, "the local service was reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chromium_loads_a_tunnel_over_http2_and_its_websocket_still_works() {
    let server = TestServer::start_tls(TestServer::test_config()).await;
    let https = server.tls.as_ref().unwrap();
    let origin = Origin::start().await;
    let web = TestClient::start(&server, &origin.target()).await;
    let echo = WsEcho::start().await;
    let ws = TestClient::start(&server, &echo.target()).await;
    let mut browser = Browser::launch().await;
    browser
        .command(
            "Security.setIgnoreCertificateErrors",
            serde_json::json!({ "ignore": true }),
        )
        .await;
    let url = format!("https://{}/echo", server.host_of(&web.tunnel.subdomain));
    browser.navigate(&url).await;
    let protocol = browser
        .eval("performance.getEntriesByType('navigation')[0].nextHopProtocol")
        .await;
    assert_eq!(protocol, "h2");
    let wss = format!("wss://{}/", server.host_of(&ws.tunnel.subdomain));
    let script = format!(
        "new Promise((ok, fail) => {{ const ws = new WebSocket({wss:?}); \
         ws.onopen = () => ws.send('over the tunnel'); \
         ws.onmessage = (m) => ok(m.data); ws.onerror = () => fail('error'); }})"
    );
    let echoed = browser.eval(&script).await;
    assert_eq!(echoed, "over the tunnel");
    let _ = https;
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_with_goaway() {
    let server = TestServer::start_with(Config {
        h2c: true,
        header_read_timeout: Duration::from_secs(1),
        ..TestServer::test_config()
    })
    .await;
    let mut raw = RawH2::connect(server.addr).await;
    let started = std::time::Instant::now();
    let away = raw
        .until(Duration::from_secs(10), |f| f.kind == h2raw::GOAWAY)
        .await
        .expect("GOAWAY for an idle connection");
    assert_eq!(away.error_code(), Some(0), "{away:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_http2_visitor_reaches_a_tunnel_on_another_node() {
    let redis = cryptun_testkit::TestRedis::start();
    let node = |name: &str| Config {
        h2c: true,
        ..TestServer::cluster_config(&redis.url(), name)
    };
    let a = TestServer::start_with(node("a")).await;
    let b = TestServer::start_with(node("b")).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&a, &origin.target()).await;
    let host = b.host_of(&client.tunnel.subdomain);
    let (version, status, body) =
        Curl::plain(&host, b.addr).run(&["--http2-prior-knowledge"], "/echo");
    assert_eq!((version.as_str(), status), ("2", 200), "{body}");
    assert_eq!(origin.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_http2_connection_on_a_slot_kept_for_clients_is_served_nothing() {
    // 90 open slots and 10 kept for clients, as in `floods`; the open ones
    // filled by idle connections from three addresses.
    let server = TestServer::start_with(Config {
        h2c: true,
        max_connections: 100,
        max_connections_per_ip: 30,
        ..TestServer::test_config()
    })
    .await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let mut flood = Vec::new();
    for a in 1..=3 {
        let source: std::net::IpAddr = format!("127.0.3.{a}").parse().unwrap();
        flood.extend(crate::floods::idle_from(&server, source, 30).await);
    }
    // An HTTP/2 visitor on a kept slot: its request is refused (503), as an
    // HTTP/1.1 one's is; the tunnel is not reached.
    let req = http::Request::get(format!("http://{}/echo", client.host))
        .body(())
        .unwrap();
    assert_eq!(h2_status(server.addr, req).await, 503);
    assert_eq!(origin.requests(), 0);
}

/// An HTTP/2 body without a declared length goes on as it arrives and,
/// once answered, may pause for as long as the exchange lasts (a gRPC
/// stream's way): a visitor opening many such bodies and never ending them
/// holds at most the tunnel's upload share (three quarters of its
/// streams); past it, 429, and a request without a body is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_ended_http2_bodies_hold_no_more_than_the_upload_share() {
    let mut config = TestServer::test_config();
    config.h2c = true;
    config.limits.max_streams = 8;
    config.body_read_timeout = Duration::from_secs(1);
    let server = TestServer::start_with(config).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let host = server.host_of(&client.tunnel.subdomain);
    // Three quarters of 8 streams.
    let share = 6;

    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut held = Vec::new();
    for _ in 0..share {
        let mut send = send.clone().ready().await.unwrap();
        let req = http::Request::post(format!("http://{host}/stream?chunks=100&interval_ms=100"))
            .body(())
            .unwrap();
        let (resp, mut body) = send.send_request(req, false).unwrap();
        body.send_data(bytes::Bytes::from_static(b"first message"), false)
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), resp)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200, "answered while its body goes on");
        held.push((resp, body));
    }
    // Past the body timeout, the answered ones live on, and hold the share.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut send = send.clone().ready().await.unwrap();
    let req = http::Request::post(format!("http://{host}/stream?chunks=1&interval_ms=1"))
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(b"one too many"), false)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 429, "past the upload share");
    let reply = Visitor::new(server.addr).get(&host, "/echo").await;
    assert_eq!(reply.status, 200, "a request without a body still served");
    // The held ones still stream their answers.
    let (resp, _body) = held.pop().unwrap();
    let mut answer = resp.into_body();
    let chunk = tokio::time::timeout(Duration::from_secs(5), answer.data())
        .await
        .unwrap();
    assert!(chunk.is_some_and(|c| c.is_ok()));
}
