//! Streaming through a tunnel, end to end over real loopback sockets: a
//! chunked response reaches the visitor chunk by chunk as the local service
//! produces it; a visitor that stops reading a large response stalls only
//! its own stream (flow control), not the other requests on the tunnel; and
//! an upload reaches the local service as it is sent, before it ends.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cryptun_client::Event;
use cryptun_testkit::{
    LIMIT, Origin, TestClient, TestServer, Visitor, pattern, sha256_hex, within,
};
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// A server, an origin and a client tunnelling to it, and a visitor.
async fn tunnel() -> (TestServer, Origin, TestClient, Visitor) {
    let server = TestServer::start().await;
    let origin = Origin::start().await;
    let client = TestClient::start(&server, &origin.target()).await;
    let visitor = Visitor::new(server.addr);
    (server, origin, client, visitor)
}

/// The next data frame of `body` (skipping trailers), or `None` at its end.
async fn next_data(body: &mut Incoming) -> Option<Bytes> {
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("response body failed").into_data() {
            return Some(data);
        }
    }
    None
}

/// Reads `body` until exactly `want` has arrived.
async fn read_exactly(body: &mut Incoming, want: &[u8]) {
    let mut got = Vec::new();
    while got.len() < want.len() {
        let data = next_data(body).await.expect("body ended early");
        got.extend_from_slice(&data);
    }
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
}

#[tokio::test]
async fn a_chunked_response_reaches_the_visitor_as_it_is_produced() {
    let (_server, _origin, client, visitor) = tunnel().await;
    let request = visitor
        .builder("GET", &client.host, "/stream?chunks=2&interval_ms=1500")
        .body(Default::default())
        .unwrap();
    let resp = within("head", visitor.send(request)).await;
    let head_at = Instant::now();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert!(resp.headers().get("content-length").is_none());
    let mut body = resp.into_body();

    // The first chunk is written at once; the second 1.5 s later. The first
    // must not wait for the second (nor for the end of the body).
    let first = tokio::time::timeout(
        Duration::from_secs(1),
        read_exactly(&mut body, b"chunk 0\n"),
    );
    first
        .await
        .expect("the first chunk was held back until more of the body was produced");
    let first_at = Instant::now();
    assert!(first_at - head_at < Duration::from_secs(1));
    within("second chunk", read_exactly(&mut body, b"chunk 1\n")).await;
    // Produced 1.5 s apart, so at least 0.5 s apart here: otherwise the
    // timing above measured nothing.
    let gap = first_at.elapsed();
    assert!(
        gap >= Duration::from_millis(500),
        "the chunks arrived {gap:?} apart: the test did not measure streaming"
    );
    assert!(within("end", next_data(&mut body)).await.is_none());
}

// On several threads, as the real server and client run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_visitor_stalls_only_its_own_stream() {
    let n = 64 << 20;
    // Worked out before anything runs, so that no heartbeat waits for it.
    let expected = pattern(n);
    let (_server, _origin, client, visitor) = tunnel().await;
    let path = format!("/bytes?n={n}");
    let request = visitor.builder("GET", &client.host, &path);
    let resp = within(
        "big head",
        visitor.send(request.body(Default::default()).unwrap()),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut big = resp.into_body();
    // Checks the next piece of the body; returns the bytes read so far.
    let mut read = 0;
    let mut check = |data: Bytes| {
        let range = read..read + data.len();
        assert!(data[..] == expected[range], "corrupted at {read}");
        read += data.len();
        read
    };
    let mut got = 0;
    while got < 100_000 {
        got = check(within("big body", next_data(&mut big)).await.unwrap());
    }

    // `big` is kept but no longer read: its response fills the buffers on
    // the way and then waits for credit. Meanwhile small requests on the same
    // tunnel, from another connection, must go through promptly, throughout
    // a window long enough for that stall to have set in.
    let other = Visitor::new(visitor.server);
    let window = Instant::now();
    let mut small = 0;
    while window.elapsed() < Duration::from_secs(3) || small < 10 {
        let token = format!("small-{small}");
        let reply = tokio::time::timeout(
            Duration::from_secs(2),
            other.get(&client.host, &format!("/token?t={token}")),
        )
        .await
        .unwrap_or_else(|_| panic!("request {small} was held up by the stalled download"));
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), token);
        small += 1;
    }
    // Flow control, not buffering: the client cannot have sent the whole
    // response while the visitor has read so little of it.
    let finished = |events: &[Event]| {
        events
            .iter()
            .any(|e| matches!(e, Event::Request(done) if done.path == path))
    };
    assert!(
        !finished(&client.events.lock().unwrap()),
        "the whole 64 MiB response was buffered on the way to a visitor who is not reading"
    );

    // The stalled stream resumes and arrives intact.
    while let Some(data) = within("rest of the big body", next_data(&mut big)).await {
        got = check(data);
    }
    assert_eq!(got, n);
}

#[tokio::test]
async fn a_streaming_upload_is_consumed_as_it_arrives() {
    let (server, origin, client, _visitor) = tunnel().await;
    // A visitor whose request body is fed piece by piece through a channel.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) = within(
        "handshake",
        hyper::client::conn::http1::handshake(TokioIo::new(tcp)),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        let data = rx.recv().await?;
        Some((Ok::<_, Infallible>(Frame::data(data)), rx))
    }));
    let request = Request::post("/sha256")
        .header("host", &client.host)
        .body(body)
        .unwrap();
    let response = tokio::spawn(sender.send_request(request));

    // Each piece reaches the local service while the request is still open;
    // the middle one is larger than a stream's flow-control window.
    let data = Bytes::from(pattern(100_000 + (1 << 20) + 3));
    let mut sent = 0;
    for len in [100_000, 1 << 20, 3] {
        within("send", tx.send(data.slice(sent..sent + len)))
            .await
            .unwrap();
        sent += len;
        assert!(
            origin.wait_uploaded(sent, LIMIT).await,
            "only {} of the first {sent} bytes reached the origin before the upload ended",
            origin.uploaded()
        );
    }
    drop(tx);
    let resp = within("response", response).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let body = within("body", resp.into_body().collect()).await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&body.to_bytes()).unwrap();
    assert_eq!(json["len"], data.len());
    assert_eq!(json["sha256"], sha256_hex(&data));
}

#[tokio::test]
async fn an_upload_keeps_flowing_while_the_answer_waits_for_its_reader() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server, origin, client, _visitor) = tunnel().await;
    // A visitor that sends its whole upload before it reads a byte (as
    // simple HTTP clients do), to a service that answers at once and reads
    // the upload on the side. The answer is larger than every buffer on its
    // way back, so it waits for its reader; the upload must get through
    // meanwhile, or neither side ever finishes.
    const N: usize = 64 << 20;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /answer-first?n={N} HTTP/1.1\r\nHost: {}\r\nContent-Length: {N}\r\n\r\n",
        client.host
    );
    let upload = async {
        tcp.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..N / chunk.len() {
            tcp.write_all(&chunk).await.unwrap();
        }
    };
    within("the whole upload is sent", upload).await;
    assert!(
        origin.wait_uploaded(N, LIMIT).await,
        "only {} of {N} bytes reached the service",
        origin.uploaded()
    );
    let mut read = 0;
    let mut buf = vec![0u8; 1 << 20];
    let answer = async {
        // Head and body: the body alone is N bytes.
        while read < N {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "the answer ended after {read} bytes");
            read += n;
        }
    };
    within("the answer is read", answer).await;
}
