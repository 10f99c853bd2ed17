//! `binary_heads` against a hand-written client that reads and writes HEAD
//! frames as `docs/PROTOCOL.md` §5.4 describes them (its own codec, not the
//! product's): requests and responses cross with their bodies as bytes,
//! whole in the head or streamed after it; and a broken HEAD (cut short, an
//! unknown flag, bytes after the head, a header count no payload holds, one
//! on a session that did not negotiate them) closes only its own session
//! with 1002, while a well-formed head that says something invalid gets 502
//! `bad_response` and the session goes on.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use cryptun_testkit::raw::{WAIT, eventually, frame, header_list};
use cryptun_testkit::{Origin, RawWs, Reply, TestClient, TestServer, Visitor};
use http::StatusCode;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

const DATA: u8 = 0;
const END: u8 = 1;
const HEAD: u8 = 4;
const END_STREAM: u8 = 0x01;

/// A request head as the doc lays it out.
#[derive(Debug)]
struct Request {
    stream: u32,
    end_stream: bool,
    tunnel_id: String,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Bytes,
}

fn string(buf: &mut Bytes, len: usize) -> String {
    String::from_utf8(buf.split_to(len).to_vec()).unwrap()
}

/// Reads a HEAD frame of a request.
fn read_request(msg: Message) -> Request {
    let Message::Binary(mut buf) = msg else {
        panic!("expected a HEAD frame, got {msg:?}");
    };
    assert_eq!(buf.get_u8(), HEAD);
    let stream = buf.get_u32();
    let flags = buf.get_u8();
    let len = buf.get_u16().into();
    let tunnel_id = string(&mut buf, len);
    let len = buf.get_u16().into();
    let method = string(&mut buf, len);
    let len = buf.get_u32() as usize;
    let path = string(&mut buf, len);
    let count = buf.get_u16();
    let headers = (0..count)
        .map(|_| {
            let len = buf.get_u16().into();
            let name = string(&mut buf, len);
            let len = buf.get_u32() as usize;
            (name, string(&mut buf, len))
        })
        .collect();
    Request {
        stream,
        end_stream: flags & END_STREAM != 0,
        tunnel_id,
        method,
        path,
        headers,
        body: buf,
    }
}

/// A response HEAD frame: with `body`, END_STREAM and the body after the
/// head; without, the body follows in frames.
fn response(stream: u32, status: u16, headers: &[(&str, &str)], body: Option<&[u8]>) -> Message {
    let mut buf = BytesMut::new();
    buf.put_u8(HEAD);
    buf.put_u32(stream);
    buf.put_u8(if body.is_some() { END_STREAM } else { 0 });
    buf.put_u16(status);
    buf.put_slice(&header_list(headers));
    if let Some(body) = body {
        buf.put_slice(body);
    }
    Message::Binary(buf.freeze())
}

const BOTH: &[&str] = &["binary_streams", "binary_heads"];

async fn tunnel(server: &TestServer, capabilities: &[&str]) -> (RawWs, Value, String) {
    let (ws, created) = RawWs::tunnel(server, json!({ "capabilities": capabilities })).await;
    let host = server.host_of(created["subdomain"].as_str().unwrap());
    (ws, created, host)
}

fn call(
    server: &TestServer,
    host: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> JoinHandle<Reply> {
    let visitor = Visitor::new(server.addr);
    let req = visitor
        .builder(method, host, path)
        .header("x-tag", "one")
        .body(body.to_vec().into())
        .unwrap();
    tokio::spawn(async move { visitor.fetch(req).await })
}

async fn reply(pending: JoinHandle<Reply>) -> Reply {
    tokio::time::timeout(WAIT, pending).await.unwrap().unwrap()
}

/// One GET answered with a whole-body HEAD: the session serves.
async fn assert_serves(server: &TestServer, ws: &mut RawWs, host: &str) {
    let pending = call(server, host, "GET", "/alive", b"");
    let req = read_request(ws.recv().await);
    assert_eq!(req.path, "/alive");
    ws.send(response(req.stream, 200, &[], Some(b"alive")))
        .await;
    let got = reply(pending).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.text(), "alive");
}

#[tokio::test]
async fn heads_cross_as_frames_with_their_bodies_as_bytes() {
    let server = TestServer::start().await;
    let (mut ws, created, host) = tunnel(&server, BOTH).await;
    assert_eq!(
        created["capabilities"],
        json!(["binary_streams", "binary_heads"]),
        "{created}"
    );

    // A GET: its head alone, with END_STREAM and no body; the answer's
    // body, not valid UTF-8, rides whole in the response head.
    let pending = call(&server, &host, "GET", "/path?q=1", b"");
    let req = read_request(ws.recv().await);
    assert_eq!(req.tunnel_id, created["tunnel_id"].as_str().unwrap());
    assert_eq!(
        (req.method.as_str(), req.path.as_str()),
        ("GET", "/path?q=1")
    );
    assert!(req.end_stream && req.body.is_empty(), "{req:?}");
    assert!(
        req.headers.contains(&("x-tag".into(), "one".into())),
        "{req:?}"
    );
    let bytes = [0u8, 0xff, 0xfe, b'\n', 0x80];
    ws.send(response(
        req.stream,
        201,
        &[
            ("content-type", "application/octet-stream"),
            ("x-answer", "yes"),
        ],
        Some(&bytes),
    ))
    .await;
    let got = reply(pending).await;
    assert_eq!(got.status, StatusCode::CREATED);
    assert_eq!(got.headers["x-answer"], "yes");
    assert_eq!(&got.body[..], &bytes[..]);

    // A small POST, its body arrived whole: it rides in the head.
    let pending = call(&server, &host, "POST", "/hook", b"{\"event\":\"push\"}");
    let req = read_request(ws.recv().await);
    assert!(req.end_stream, "{req:?}");
    assert_eq!(&req.body[..], b"{\"event\":\"push\"}");
    ws.send(response(req.stream, 202, &[], Some(b""))).await;
    assert_eq!(reply(pending).await.status, StatusCode::ACCEPTED);

    // A larger POST (over the 16 KiB read whole): the head without
    // END_STREAM, its body in frames; the answer streamed the same way.
    let upload: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    let pending = call(&server, &host, "POST", "/upload", &upload);
    let req = read_request(ws.recv().await);
    assert!(!req.end_stream && req.body.is_empty(), "{req:?}");
    let mut body = Vec::new();
    loop {
        let Message::Binary(mut buf) = ws.recv().await else {
            panic!("expected a body frame");
        };
        let kind = buf.get_u8();
        assert_eq!(buf.get_u32(), req.stream);
        body.extend_from_slice(&buf);
        if kind == END {
            break;
        }
        assert_eq!(kind, DATA);
    }
    assert_eq!(body, upload);
    ws.send(response(req.stream, 200, &[], None)).await;
    ws.send(frame(DATA, req.stream, b"streamed ")).await;
    ws.send(frame(END, req.stream, b"answer")).await;
    let got = reply(pending).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.text(), "streamed answer");

    // JSON heads are still read on such a session.
    let pending = call(&server, &host, "GET", "/json", b"");
    let req = read_request(ws.recv().await);
    ws.respond(
        &json!(req.stream),
        json!({"status": 200, "body": "as json"}),
    )
    .await;
    assert_eq!(reply(pending).await.text(), "as json");
}

#[tokio::test]
async fn binary_heads_come_only_with_binary_streams_and_only_when_offered() {
    let server = TestServer::start().await;
    let (_ws, created, _) = tunnel(&server, &["binary_heads"]).await;
    assert_eq!(created["binary_streams"], false, "{created}");
    assert!(created.get("capabilities").is_none(), "{created}");

    // Binary streams alone: heads stay JSON.
    let (mut ws, created, host) = tunnel(&server, &["binary_streams"]).await;
    assert_eq!(created["capabilities"], json!(["binary_streams"]));
    let pending = call(&server, &host, "GET", "/", b"");
    let req = ws.recv_type("request").await;
    ws.respond(&req["request_id"], json!({"status": 204})).await;
    assert_eq!(reply(pending).await.status, StatusCode::NO_CONTENT);

    // The real client negotiates them, and serves through them.
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let got = Visitor::new(server.addr)
        .get(&client.host, "/token?t=binary")
        .await;
    assert_eq!(got.text(), "binary");
}

/// The close code `msg` gets on a fresh session with `capabilities`, sent
/// while a request waits on it; the tunnel must then leave the registry,
/// and the request is answered rather than left hanging.
async fn close_code_for(server: &TestServer, capabilities: &[&str], msg: Message) -> u16 {
    let (mut ws, _, host) = tunnel(server, capabilities).await;
    let pending = call(server, &host, "GET", "/", b"");
    let _request = ws.recv().await;
    let code = ws.send_expecting_close(msg).await;
    let got = reply(pending).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{}", got.text());
    let visitor = Visitor::new(server.addr);
    eventually(WAIT, "the closed session's tunnel is removed", || async {
        visitor.tunnels().await.is_empty()
    })
    .await;
    code
}

/// A response HEAD for stream 1 (the first request of a session) as
/// bytes, to break.
fn good_head() -> Vec<u8> {
    let Message::Binary(bytes) = response(1, 200, &[("x-a", "b")], None) else {
        unreachable!()
    };
    bytes.to_vec()
}

#[tokio::test]
async fn broken_heads_close_their_session_with_1002_and_nothing_else() {
    let server = TestServer::start().await;
    let whole = good_head();
    let mut unknown_flag = whole.clone();
    unknown_flag[5] |= 0x40;
    let mut trailing = whole.clone();
    trailing.push(b'!');
    let mut huge_count = whole[..8].to_vec();
    huge_count.extend_from_slice(&60_000u16.to_be_bytes());
    let mut not_utf8 = whole[..8].to_vec();
    not_utf8.extend_from_slice(&[0, 1, 0, 1, 0xff, 0, 0, 0, 0]);
    for (what, bytes) in [
        ("cut inside its headers", whole[..whole.len() - 2].to_vec()),
        ("no flags", whole[..5].to_vec()),
        ("an unknown flag", unknown_flag),
        ("bytes after a head without END_STREAM", trailing),
        ("a header count over the limit", huge_count),
        ("a header name that is not UTF-8", not_utf8),
    ] {
        let code = close_code_for(&server, BOTH, Message::binary(bytes)).await;
        assert_eq!(code, 1002, "{what}");
    }
    // A well-formed HEAD on a session that did not negotiate them.
    let code = close_code_for(&server, &["binary_streams"], Message::binary(whole.clone())).await;
    assert_eq!(code, 1002, "a HEAD without binary_heads");
    // A head is held to the session's message size: one a byte over it
    // (with END_STREAM, its body the rest) gets 1009.
    let limits = server.config.limits;
    let max = limits.max_message_bytes.max(limits.max_frame_payload + 5);
    let mut over = whole;
    over[5] |= 0x01;
    over.resize(max + 1, b'x');
    let code = close_code_for(&server, BOTH, Message::binary(over)).await;
    assert_eq!(code, 1009, "a HEAD over the message size");

    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let got = Visitor::new(server.addr)
        .get(&client.host, "/token?t=ok")
        .await;
    assert_eq!(got.text(), "ok");
}

#[tokio::test]
async fn a_head_that_says_something_invalid_gets_502_and_the_session_goes_on() {
    let server = TestServer::start().await;
    let (mut ws, _, host) = tunnel(&server, BOTH).await;
    for (status, headers) in [
        (200, vec![("x-evil", "a\r\nx-injected: yes")]),
        (200, vec![("bad name", "v")]),
        (200, vec![("x-evil", "nul\0byte")]),
        (42, vec![]),
    ] {
        let pending = call(&server, &host, "GET", "/", b"");
        let req = read_request(ws.recv().await);
        ws.send(response(req.stream, status, &headers, Some(b"no")))
            .await;
        let got = reply(pending).await;
        assert_eq!(got.status, StatusCode::BAD_GATEWAY, "{headers:?}");
        assert_eq!(got.headers["x-cryptun-error"], "bad_response");
        assert!(!got.headers.contains_key("x-injected"));
        let error = ws.recv_type("error").await;
        assert_eq!(error["code"], "bad_response", "{error}");
        assert_eq!(error["request_id"], req.stream, "{error}");
    }
    assert_serves(&server, &mut ws, &host).await;
}

#[tokio::test]
async fn a_head_larger_than_a_body_frame_is_carried() {
    // A whole 200 KiB body in the head: over the 128 KiB a body frame may
    // carry, under the message size a head is held to.
    let server = TestServer::start().await;
    let (mut ws, _, host) = tunnel(&server, BOTH).await;
    let pending = call(&server, &host, "GET", "/big", b"");
    let req = read_request(ws.recv().await);
    let body = vec![b'x'; 200 << 10];
    assert!(body.len() > server.config.limits.max_frame_payload);
    ws.send(response(req.stream, 200, &[], Some(&body))).await;
    let got = reply(pending).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text());
    assert_eq!(got.body.len(), body.len());
    assert_serves(&server, &mut ws, &host).await;
}
