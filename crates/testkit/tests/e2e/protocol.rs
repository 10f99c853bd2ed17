//! The wire protocol against hand-written clients: a JSON-only client (raw
//! WebSocket and literal JSON, as a stranger would write from
//! `docs/PROTOCOL.md`) serves requests; and hostile or broken input —
//! malformed JSON, unknown types, bad UTF-8, oversized messages and frames,
//! bad frames, credit overruns, stray responses, a bad handshake, invalid
//! response heads, oversized inline bodies — gets the documented error or
//! close code, and never stops the server serving other tunnels.

use std::time::Duration;

use cryptun_testkit::raw::{
    WAIT, base64_decode, base64_encode, eventually, frame, invalid_utf8_text,
};
use cryptun_testkit::visitor::raw_exchange;
use cryptun_testkit::{Origin, RawWs, Reply, TestClient, TestServer, Visitor};
use http::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

const DATA: u8 = 0;

/// `METHOD path` on `host` with `headers` and `body`, in the background.
fn spawn_call(
    server: &TestServer,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> JoinHandle<Reply> {
    let visitor = Visitor::new(server.addr);
    let mut req = visitor.builder(method, host, path);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(body.into()).unwrap();
    tokio::spawn(async move { visitor.fetch(req).await })
}

async fn reply(pending: JoinHandle<Reply>) -> Reply {
    tokio::time::timeout(WAIT, pending).await.unwrap().unwrap()
}

fn host(server: &TestServer, created: &Value) -> String {
    server.host_of(created["subdomain"].as_str().unwrap())
}

/// The server answers `/healthz` and carries a new tunnel of the real client.
async fn assert_still_serves(server: &TestServer) {
    let visitor = Visitor::new(server.addr);
    let own = format!("localhost:{}", server.addr.port());
    assert_eq!(visitor.get(&own, "/healthz").await.status, StatusCode::OK);
    let origin = Origin::start().await;
    let client = TestClient::start(server, &origin.target()).await;
    let reply = visitor.get(&client.host, "/token?t=alive").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), "alive");
}

/// One GET answered by `ws` with a plain text body: the session serves.
async fn assert_session_serves(server: &TestServer, ws: &mut RawWs, created: &Value) {
    let pending = spawn_call(server, &host(server, created), "GET", "/ok", &[], vec![]);
    let req = ws.recv_type("request").await;
    assert_eq!(req["request"]["path"], "/ok");
    ws.respond(
        &req["request_id"],
        json!({"status": 200, "body": "still here"}),
    )
    .await;
    let reply = reply(pending).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "still here");
}

/// Creates a tunnel (`binary` or JSON-only), sends `msg`, and returns the
/// close code; the tunnel must then leave the registry.
async fn close_code_for(server: &TestServer, binary: bool, msg: Message) -> u16 {
    let (mut ws, created) = RawWs::tunnel(server, json!({ "binary_streams": binary })).await;
    assert_eq!(created["binary_streams"], binary);
    let code = ws.send_expecting_close(msg).await;
    let visitor = Visitor::new(server.addr);
    eventually(WAIT, "the closed session's tunnel is removed", || async {
        visitor.tunnels().await.is_empty()
    })
    .await;
    code
}

#[tokio::test]
async fn json_only_client_serves_requests() {
    let server = TestServer::start().await;
    let (mut ws, created) = RawWs::tunnel(&server, json!({ "version": 1 })).await;
    assert_eq!(created["binary_streams"], false);
    assert!(created["limits"]["max_inline_body"].as_u64().unwrap() > 0);
    let host = host(&server, &created);

    // GET: path, query and headers arrive as sent; a seed-style answer with
    // map headers and a text body reaches the visitor as written.
    let pending = spawn_call(
        &server,
        &host,
        "GET",
        "/a/b?x=1&y=%20z",
        &[("x-custom", "v1")],
        vec![],
    );
    let req = ws.recv_json().await;
    assert_eq!(req["type"], "request");
    assert_eq!(req["tunnel_id"], created["tunnel_id"]);
    let head = &req["request"];
    assert_eq!(head["method"], "GET");
    assert_eq!(head["path"], "/a/b?x=1&y=%20z");
    let headers = head["headers"].as_array().unwrap();
    assert!(headers.contains(&json!(["x-custom", "v1"])), "{headers:?}");
    assert!(headers.contains(&json!(["host", host])), "{headers:?}");
    assert!(head["body"].is_null(), "a GET has no body: {head}");
    let response = json!({
        "status": 201,
        "headers": { "content-type": "text/plain", "x-seed": "yes" },
        "body": "hello from a JSON client",
    });
    ws.respond(&req["request_id"], response).await;
    let got = reply(pending).await;
    assert_eq!(got.status, StatusCode::CREATED);
    assert_eq!(got.headers["x-seed"], "yes");
    assert_eq!(got.headers["content-type"], "text/plain");
    assert_eq!(got.text(), "hello from a JSON client");

    // POST: the body, not UTF-8, arrives inline as base64; a base64 answer
    // reaches the visitor byte for byte.
    let sent: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let pending = spawn_call(&server, &host, "POST", "/upload", &[], sent.clone());
    let req = ws.recv_json().await;
    let head = &req["request"];
    assert_eq!(head["method"], "POST");
    assert_eq!(head["body_encoding"], "base64");
    assert_eq!(base64_decode(head["body"].as_str().unwrap()), sent);
    let answer: Vec<u8> = sent.iter().rev().copied().collect();
    let response = json!({
        "status": 200,
        "headers": [["content-type", "application/octet-stream"], ["x-multi", "1"], ["x-multi", "2"]],
        "body": base64_encode(&answer),
        "body_encoding": "base64",
    });
    ws.respond(&req["request_id"], response).await;
    let got = reply(pending).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(&got.body[..], &answer[..]);
    let multi: Vec<_> = got.headers.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["1", "2"]);
}

#[tokio::test]
async fn capabilities_are_negotiated_and_a_client_stating_none_gets_the_seed_protocol() {
    let server = TestServer::start().await;
    // Offered by the list alone (no boolean), with a name this server does
    // not know: it answers what it will use, and streams.
    let (_ws, created) = RawWs::tunnel(
        &server,
        json!({ "capabilities": ["binary_streams", "from_the_future"] }),
    )
    .await;
    assert_eq!(created["binary_streams"], true, "{created}");
    assert_eq!(
        created["capabilities"],
        json!(["binary_streams"]),
        "{created}"
    );
    // Reserved for later versions: not used by this one. And trailers,
    // binary frames, only with binary streams.
    for alone in ["cancel_reason", "trailers"] {
        let (_ws, created) = RawWs::tunnel(&server, json!({ "capabilities": [alone] })).await;
        assert_eq!(created["binary_streams"], false, "{created}");
        assert!(created.get("capabilities").is_none(), "{created}");
    }
    // A seed client: exactly the seed's answer, no list.
    let (mut ws, created) = RawWs::tunnel(&server, json!({})).await;
    assert_eq!(created["binary_streams"], false);
    assert!(created.get("capabilities").is_none(), "{created}");
    assert_session_serves(&server, &mut ws, &created).await;
}

#[tokio::test]
async fn malformed_and_unknown_messages_get_errors_and_the_session_goes_on() {
    let server = TestServer::start().await;
    let (mut ws, created) = RawWs::tunnel(&server, json!({})).await;

    ws.send_text("{not json").await;
    let error = ws.recv_json().await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "bad_message", "{error}");
    assert_session_serves(&server, &mut ws, &created).await;

    ws.send_text(r#"{"type":"response","request_id":"seven"}"#)
        .await;
    assert_eq!(ws.recv_type("error").await["code"], "bad_message");

    ws.send_text(r#"{"type":"teleport","to":"mars"}"#).await;
    let error = ws.recv_json().await;
    assert_eq!(error["code"], "unknown_type", "{error}");
    assert_session_serves(&server, &mut ws, &created).await;

    // A JSON ping is answered with a pong.
    ws.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(ws.recv_json().await, json!({"type": "pong"}));
    assert_still_serves(&server).await;
}

#[tokio::test]
async fn invalid_utf8_text_gets_1007() {
    let server = TestServer::start().await;
    assert_eq!(
        close_code_for(&server, false, invalid_utf8_text()).await,
        1007
    );
    assert_still_serves(&server).await;
}

#[tokio::test]
async fn oversized_text_message_gets_1009() {
    let server = TestServer::start().await;
    let max = server.config.limits.max_message_bytes;
    let text = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(max));
    assert_eq!(
        close_code_for(&server, false, Message::text(text)).await,
        1009
    );
    assert_still_serves(&server).await;
}

#[tokio::test]
async fn oversized_binary_frame_gets_1009() {
    let server = TestServer::start().await;
    let payload = vec![0u8; server.config.limits.max_frame_payload + 1];
    let msg = frame(DATA, 1, &payload);
    assert_eq!(close_code_for(&server, true, msg).await, 1009);
    assert_still_serves(&server).await;
}

#[tokio::test]
async fn binary_frames_that_break_the_rules_get_1002() {
    let server = TestServer::start().await;
    let on_json_session = close_code_for(&server, false, frame(DATA, 1, b"hi")).await;
    assert_eq!(on_json_session, 1002, "binary frame on a JSON-only session");
    let unknown_kind = close_code_for(&server, true, frame(9, 1, b"")).await;
    assert_eq!(unknown_kind, 1002, "unknown frame kind");
    let short = close_code_for(&server, true, Message::binary(vec![0u8, 0])).await;
    assert_eq!(short, 1002, "frame shorter than its header");
    let bad_window = close_code_for(&server, true, frame(2, 1, &[0, 1])).await;
    assert_eq!(bad_window, 1002, "WINDOW frame without a 4-byte credit");
    assert_still_serves(&server).await;
}

#[tokio::test]
async fn data_beyond_the_credit_window_gets_1002() {
    let server = TestServer::start().await;
    let limits = server.config.limits;
    let (mut ws, created) = RawWs::tunnel(&server, json!({ "binary_streams": true })).await;
    let pending = spawn_call(&server, &host(&server, &created), "GET", "/", &[], vec![]);
    let req = ws.recv_json().await;
    let id = u32::try_from(req["request_id"].as_u64().unwrap()).unwrap();
    // Body frames before the head: nobody reads them yet, so no credit
    // comes back. One frame more than the window holds breaks the rule.
    let chunk = vec![7u8; limits.max_frame_payload];
    let fit = limits.stream_window as usize / chunk.len();
    for _ in 0..fit {
        ws.send(frame(DATA, id, &chunk)).await;
    }
    assert_eq!(ws.send_expecting_close(frame(DATA, id, &chunk)).await, 1002);
    assert_eq!(reply(pending).await.status, StatusCode::BAD_GATEWAY);
    assert_still_serves(&server).await;
}

#[tokio::test]
async fn response_for_an_unknown_request_is_dropped_and_counted() {
    let server = TestServer::start().await;
    let (mut ws, created) = RawWs::tunnel(&server, json!({})).await;
    ws.respond(&json!(4242), json!({"status": 200, "body": "stray"}))
        .await;
    let visitor = Visitor::new(server.addr);
    eventually(WAIT, "the stray response is counted", || async {
        visitor.tunnels().await[0]["unmatched_messages"] == 1
    })
    .await;
    assert_session_serves(&server, &mut ws, &created).await;
    // A second answer to a request already answered is stray too.
    let pending = spawn_call(
        &server,
        &host(&server, &created),
        "GET",
        "/twice",
        &[],
        vec![],
    );
    let req = ws.recv_json().await;
    for body in ["first", "second"] {
        ws.respond(&req["request_id"], json!({"status": 200, "body": body}))
            .await;
    }
    assert_eq!(reply(pending).await.text(), "first");
    eventually(WAIT, "the duplicate response is counted", || async {
        visitor.tunnels().await[0]["unmatched_messages"] == 2
    })
    .await;
    assert_still_serves(&server).await;
}

#[tokio::test]
async fn no_create_tunnel_in_time_gets_1008() {
    let mut config = TestServer::test_config();
    config.handshake_timeout = Duration::from_millis(300);
    let server = TestServer::start_with(config).await;
    let mut ws = RawWs::connect(&server).await;
    assert_eq!(ws.expect_close().await, 1008);
    assert_still_serves(&server).await;
}

#[tokio::test]
async fn first_message_must_be_create_tunnel() {
    let server = TestServer::start().await;
    for (first, code) in [
        (
            r#"{"type":"response","request_id":1,"response":{"status":200}}"#,
            "no_tunnel",
        ),
        (r#"{"type":"pong"}"#, "no_tunnel"),
        ("[1,2,3]", "bad_message"),
        (r#"{"type":"warp"}"#, "unknown_type"),
    ] {
        let mut ws = RawWs::connect(&server).await;
        ws.send_text(first).await;
        let error = ws.recv_json().await;
        assert_eq!(error["type"], "error", "after {first}: {error}");
        assert_eq!(error["code"], code, "after {first}: {error}");
        assert_eq!(ws.expect_close().await, 1008, "after {first}");
    }
    assert_still_serves(&server).await;
}

#[tokio::test]
async fn unsupported_version_is_refused() {
    let server = TestServer::start().await;
    let mut ws = RawWs::connect(&server).await;
    ws.send_text(r#"{"type":"create_tunnel","version":99}"#)
        .await;
    let error = ws.recv_json().await;
    assert_eq!(error["code"], "unsupported_version", "{error}");
    assert_eq!(ws.expect_close().await, 1008);
    assert!(Visitor::new(server.addr).tunnels().await.is_empty());
    assert_still_serves(&server).await;
}

#[tokio::test]
async fn invalid_response_head_gives_502_and_bad_response() {
    let server = TestServer::start().await;
    let (mut ws, created) = RawWs::tunnel(&server, json!({})).await;
    for bad in [
        json!({"status": 200, "headers": {"x-evil": "a\r\nx-injected: yes"}, "body": "no"}),
        json!({"status": 200, "headers": [["x-evil", "line\nfeed"]]}),
        json!({"status": 200, "headers": [["bad name", "v"]]}),
        json!({"status": 200, "headers": [["x-evil", "nul\0byte"]]}),
        json!({"status": 200, "headers": [["x-evil", "bare\rcr"]]}),
        json!({"status": 200, "headers": [["x-evil\r\nx-injected", "yes"]]}),
        json!({"status": 200, "headers": [["x-e\0vil", "v"]]}),
        json!({"status": 42, "body": "no"}),
        json!({"status": 101}),
    ] {
        let pending = spawn_call(&server, &host(&server, &created), "GET", "/", &[], vec![]);
        let req = ws.recv_type("request").await;
        ws.respond(&req["request_id"], bad.clone()).await;
        let got = reply(pending).await;
        assert_eq!(
            got.status,
            StatusCode::BAD_GATEWAY,
            "for {bad}: {}",
            got.text()
        );
        assert!(!got.headers.contains_key("x-injected"), "for {bad}");
        assert_eq!(got.headers["x-cryptun-error"], "bad_response");
        let error = ws.recv_type("error").await;
        assert_eq!(error["code"], "bad_response", "for {bad}: {error}");
        assert_eq!(error["request_id"], req["request_id"], "for {bad}");
    }
    assert_session_serves(&server, &mut ws, &created).await;
    assert_still_serves(&server).await;
}

#[tokio::test]
async fn a_response_that_cannot_be_read_fails_its_request_at_once() {
    // The request timeout is long: a visitor left waiting for it would
    // fail the time check below.
    let server = TestServer::start().await;
    let (mut ws, created) = RawWs::tunnel(&server, json!({})).await;
    for head in [
        r#"{"status":200,"headers":{"x":[1,2]}}"#,
        r#"{"status":200,"headers":{"x":{"deep":{"er":1}}}}"#,
        r#"{"status":"ok"}"#,
    ] {
        let pending = spawn_call(&server, &host(&server, &created), "GET", "/", &[], vec![]);
        let req = ws.recv_type("request").await;
        let started = std::time::Instant::now();
        ws.send_text(&format!(
            r#"{{"type":"response","request_id":{},"response":{head}}}"#,
            req["request_id"]
        ))
        .await;
        let got = reply(pending).await;
        assert_eq!(
            got.status,
            StatusCode::BAD_GATEWAY,
            "for {head}: {}",
            got.text()
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "for {head}: 502 after {:?}",
            started.elapsed()
        );
        let error = ws.recv_type("error").await;
        assert_eq!(error["code"], "bad_response", "for {head}: {error}");
        assert_eq!(error["request_id"], req["request_id"], "for {head}");
    }
    assert_session_serves(&server, &mut ws, &created).await;
}

#[tokio::test]
async fn inline_body_over_the_limit_gets_413() {
    let mut config = TestServer::test_config();
    config.limits.max_inline_body = 1024;
    let server = TestServer::start_with(config).await;
    let (mut ws, created) = RawWs::tunnel(&server, json!({})).await;
    assert_eq!(created["limits"]["max_inline_body"], 1024);
    let host = host(&server, &created);

    let too_big = spawn_call(&server, &host, "POST", "/big", &[], vec![1; 1025]);
    assert_eq!(reply(too_big).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Without a Content-Length the limit holds while reading.
    let chunked = format!(
        "POST /chunked HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        2000,
        "y".repeat(2000)
    );
    let raw = raw_exchange(server.addr, chunked.as_bytes(), WAIT).await;
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");

    // Exactly the limit passes, and is the first request the client sees:
    // the refused ones were never forwarded.
    let fits = spawn_call(&server, &host, "POST", "/fits", &[], vec![2; 1024]);
    let req = ws.recv_json().await;
    assert_eq!(req["request"]["path"], "/fits");
    assert_eq!(
        base64_decode(req["request"]["body"].as_str().unwrap()).len(),
        1024
    );
    ws.respond(&req["request_id"], json!({"status": 204})).await;
    assert_eq!(reply(fits).await.status, StatusCode::NO_CONTENT);
    assert_still_serves(&server).await;
}
