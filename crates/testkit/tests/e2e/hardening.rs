//! Hostile request bytes over raw sockets: ambiguous framing is refused
//! with 400 and the connection closed; header lines carrying CR or NUL are
//! refused; a long request target gets 414; an `h2c` upgrade is never
//! honoured; and none of it reaches the local app. Well-formed keep-alive
//! traffic around them still flows.

use cryptun_testkit::visitor::{read_response, status_of};
use cryptun_testkit::{Origin, TestClient, TestServer, within};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

async fn tunnel() -> (TestServer, Origin, TestClient) {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    (server, origin, client)
}

/// Sends `request` and reads until the server closes the connection, which
/// it must do within the test limit.
async fn until_close(server: &TestServer, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    // A reset after the answer still counts as closed.
    let _ = within("the server closes", stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn ambiguous_framing_is_refused_and_the_connection_closed() {
    let (server, origin, client) = tunnel().await;
    let h = &client.host;
    let post = |headers: &str, body: &str| {
        format!("POST /echo HTTP/1.1\r\nHost: {h}\r\n{headers}\r\n{body}")
    };
    let chunked_body = "5\r\nhello\r\n0\r\n\r\n";
    let cases = [
        post(
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            chunked_body,
        ),
        post(
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            chunked_body,
        ),
        post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
        post("Content-Length: 5, 5\r\n", "hello"),
        post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
        post("Content-Length: abc\r\n", "hello"),
        post("Content-Length: -5\r\n", "hello"),
        post("Content-Length: +5\r\n", "hello"),
        post("Transfer-Encoding: gzip, chunked\r\n", chunked_body),
        post("Transfer-Encoding: chunked, chunked\r\n", chunked_body),
        post(
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            chunked_body,
        ),
        post("Transfer-Encoding: chunked, gzip\r\n", chunked_body),
        post("Transfer-Encoding: identity\r\n", "hello"),
        post("Transfer-Encoding: xchunked\r\n", chunked_body),
        format!(
            "POST /echo HTTP/1.0\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_body}"
        ),
    ];
    for request in cases {
        // A second request hides behind each: it must never be served.
        let smuggled = format!("{request}GET /token?t=smuggled HTTP/1.1\r\nHost: {h}\r\n\r\n");
        let reply = until_close(&server, smuggled.as_bytes()).await;
        assert_eq!(status_of(&reply), 400, "{request:?}\n=> {reply}");
        assert!(!reply.contains("smuggled"), "{request:?}\n=> {reply}");
        assert_eq!(reply.matches("HTTP/1.1").count(), 1, "{reply}");
    }
    assert_eq!(origin.requests(), 0, "an ambiguous request reached the app");
}

#[tokio::test]
async fn keep_alive_bodies_are_framed_and_chunked_ones_close_after() {
    let (server, origin, client) = tunnel().await;
    let h = &client.host;
    // Two length-framed bodies that look like requests themselves, then a
    // chunked one, then a request that must not be read.
    let trap = format!("GET /token?t=trap HTTP/1.1\r\nHost: {h}\r\n\r\n");
    let stream = format!(
        "POST /echo HTTP/1.1\r\nHost: {h}\r\nContent-Length: {n}\r\n\r\n{trap}\
         POST /echo HTTP/1.1\r\nHost: {h}\r\ncontent-length: {n}\r\n\r\n{trap}\
         POST /echo HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
         GET /token?t=after HTTP/1.1\r\nHost: {h}\r\n\r\n",
        n = trap.len()
    );
    let mut conn = BufReader::new(TcpStream::connect(server.addr).await.unwrap());
    conn.get_mut().write_all(stream.as_bytes()).await.unwrap();
    for (i, len) in [trap.len(), trap.len(), 5].into_iter().enumerate() {
        let reply = within("keep-alive reply", read_response(&mut conn)).await;
        assert_eq!(reply.status, 200, "request {i}");
        let json: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(json["body_len"], len, "request {i}");
        let closes = reply.header("connection") == Some("close");
        assert_eq!(closes, i == 2, "request {i}: {:?}", reply.headers);
    }
    let mut rest = Vec::new();
    within("close", conn.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert_eq!(origin.requests(), 3);
}

#[tokio::test]
async fn header_lines_with_cr_nul_or_folding_are_refused() {
    let (server, origin, client) = tunnel().await;
    let h = &client.host;
    for bad in [
        &b"X-Evil: a\rX-Injected: yes"[..],
        b"X-Evil: a\0b",
        b"X-E\0vil: a",
        b"X-Evil: a\r\n folded",
        b"X-Evil : a",
        b"X-Evil",
    ] {
        let mut request = format!("GET /echo HTTP/1.1\r\nHost: {h}\r\n").into_bytes();
        request.extend_from_slice(bad);
        request.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
        let reply = until_close(&server, &request).await;
        assert_eq!(
            status_of(&reply),
            400,
            "{:?}: {reply}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(origin.requests(), 0);
}

#[tokio::test]
async fn long_request_targets_get_414() {
    let (server, origin, client) = tunnel().await;
    let max = server.config.max_uri_length;
    let path = |len: usize| format!("/echo?{}", "q".repeat(len - "/echo?".len()));
    let own = format!("localhost:{}", server.addr.port());
    for (host, len, want) in [
        (&client.host, max, 200),
        (&client.host, max + 1, 414),
        (&own, max + 1, 414),
    ] {
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
            path(len)
        );
        let reply = until_close(&server, request.as_bytes()).await;
        assert_eq!(status_of(&reply), want, "{len} bytes on {host}");
    }
    assert_eq!(origin.requests(), 1);
}

#[tokio::test]
async fn an_h2c_upgrade_is_never_honoured() {
    let (server, origin, client) = tunnel().await;
    let h = &client.host;
    let mut conn = BufReader::new(TcpStream::connect(server.addr).await.unwrap());
    for upgrade in ["h2c", "H2C", "websocket, h2c"] {
        let request = format!(
            "GET /echo HTTP/1.1\r\nHost: {h}\r\nConnection: Upgrade, HTTP2-Settings\r\n\
             Upgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
        );
        conn.get_mut().write_all(request.as_bytes()).await.unwrap();
        let reply = within("h2c reply", read_response(&mut conn)).await;
        assert_eq!(reply.status, 200, "{upgrade}: not switched");
        let json: Value = serde_json::from_slice(&reply.body).unwrap();
        let names: Vec<&str> = json["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h[0].as_str().unwrap())
            .collect();
        for gone in ["upgrade", "http2-settings", "connection"] {
            assert!(
                !names.contains(&gone),
                "{upgrade}: {gone} reached the app: {names:?}"
            );
        }
    }
    // Still plain HTTP/1.1 on the same connection.
    let again = format!("GET /token?t=still HTTP/1.1\r\nHost: {h}\r\n\r\n");
    conn.get_mut().write_all(again.as_bytes()).await.unwrap();
    let reply = within("after h2c", read_response(&mut conn)).await;
    assert_eq!(reply.body, b"still");
    assert_eq!(origin.requests(), 4);
}

#[tokio::test]
async fn an_absolute_target_is_routed_by_its_own_host_and_a_missing_host_is_refused() {
    let server = TestServer::start().await;
    let (one, two) = (Origin::start().await, Origin::start().await);
    let aaa = TestClient::start(&server, &one.target()).await;
    let bbb = TestClient::start(&server, &two.target()).await;
    let port = server.addr.port();
    let (a, b) = (&aaa.host, &bbb.host);
    // The target names bbb, the Host header aaa: bbb's app answers, and
    // it is told bbb's name.
    let request =
        format!("GET http://{b}/echo/x HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n");
    let reply = until_close(&server, request.as_bytes()).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    let body: Value = serde_json::from_str(&reply[reply.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    let host = body["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "host")
        .map(|h| h[1].as_str().unwrap().to_owned());
    assert_eq!(host.as_deref(), Some(b.as_str()), "{body}");
    assert_eq!((one.requests(), two.requests()), (0, 1));
    // An absolute target to the server's own host is the server's.
    let own = format!(
        "GET http://localhost:{port}/healthz HTTP/1.1\r\nHost: {a}\r\nConnection: close\r\n\r\n"
    );
    let reply = until_close(&server, own.as_bytes()).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    assert!(reply.contains("\"ok\""), "{reply}");
    // HTTP/1.1 without a Host: 400, whatever the target names.
    let hostless = format!("GET http://{b}/echo/y HTTP/1.1\r\nConnection: close\r\n\r\n");
    let reply = until_close(&server, hostless.as_bytes()).await;
    assert_eq!(status_of(&reply), 400, "{reply}");
    assert_eq!((one.requests(), two.requests()), (0, 1));
}
