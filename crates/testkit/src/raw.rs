//! A raw WebSocket client for protocol tests: it speaks hand-written JSON
//! (not the Rust client's code) and does exactly what a test tells it, so it
//! can play a client written in another language, or a hostile one.
//!
//! Every wait is bounded by [`WAIT`]; a missing message fails the test.
//! A `RawWs` that is held but never polled reads nothing and answers no
//! pings: a half-open client.

use std::future::Future;
use std::time::Duration;

use base64::Engine as _;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::TestServer;

/// The longest any single step of a raw exchange may take.
pub const WAIT: Duration = Duration::from_secs(5);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A hand-driven connection to the server's `/ws`.
pub struct RawWs {
    sink: SplitSink<Ws, Message>,
    stream: SplitStream<Ws>,
}

impl RawWs {
    /// Opens `/ws` on `server` without sending anything.
    pub async fn connect(server: &TestServer) -> Self {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(server.ws_url()))
            .await
            .expect("WebSocket connect timed out")
            .expect("WebSocket connect failed");
        let (sink, stream) = ws.split();
        RawWs { sink, stream }
    }

    /// Opens `/ws` on `server` from `source` (a loopback address, see
    /// [`crate::visitor::connect_from`]), with an `X-Forwarded-For` line
    /// when given: a client behind a proxy, or one posing as a proxy.
    pub async fn connect_from(
        server: &TestServer,
        source: std::net::IpAddr,
        forwarded_for: Option<&str>,
    ) -> Self {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let tcp = crate::visitor::connect_from(source, server.addr).await;
        let mut request = server.ws_url().into_client_request().expect("request");
        if let Some(value) = forwarded_for {
            request
                .headers_mut()
                .insert("x-forwarded-for", value.parse().expect("header value"));
        }
        let stream = MaybeTlsStream::Plain(tcp);
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, stream))
            .await
            .expect("WebSocket connect timed out")
            .expect("WebSocket connect failed");
        let (sink, stream) = ws.split();
        RawWs { sink, stream }
    }

    /// Connects and sends `{"type":"create_tunnel", ..extra}`; returns the
    /// session and the server's first answer (`tunnel_created` or `error`).
    pub async fn create(server: &TestServer, extra: Value) -> (Self, Value) {
        Self::connect(server).await.ask(extra).await
    }

    /// Sends `{"type":"create_tunnel", ..extra}` on this connection; returns
    /// it with the server's answer.
    pub async fn ask(self, extra: Value) -> (Self, Value) {
        let mut ws = self;
        let mut create = serde_json::json!({ "type": "create_tunnel" });
        if let (Some(create), Value::Object(extra)) = (create.as_object_mut(), extra) {
            create.extend(extra);
        }
        ws.send_json(&create).await;
        let answer = ws.recv_json().await;
        (ws, answer)
    }

    /// Like [`create`](Self::create), insisting on `tunnel_created`.
    pub async fn tunnel(server: &TestServer, extra: Value) -> (Self, Value) {
        let (ws, created) = Self::create(server, extra).await;
        assert_eq!(created["type"], "tunnel_created", "{created}");
        (ws, created)
    }

    /// Sends any message (text, binary, or a hand-built frame).
    pub async fn send(&mut self, msg: Message) {
        tokio::time::timeout(WAIT, self.sink.send(msg))
            .await
            .expect("send timed out")
            .expect("send failed");
    }

    /// Sends a text message as is (it need not be JSON).
    pub async fn send_text(&mut self, text: &str) {
        self.send(Message::text(text)).await;
    }

    /// Sends a JSON value as a text message.
    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Answers request `id` with `response` (a JSON response head).
    pub async fn respond(&mut self, id: &Value, response: Value) {
        let msg = serde_json::json!({ "type": "response", "request_id": id, "response": response });
        self.send_json(&msg).await;
    }

    /// The next data message, skipping WebSocket pings and pongs.
    pub async fn recv(&mut self) -> Message {
        loop {
            let msg = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("no message from the server in time")
                .expect("the server closed the connection")
                .expect("reading from the server failed");
            if !matches!(msg, Message::Ping(_) | Message::Pong(_)) {
                return msg;
            }
        }
    }

    /// The next message, which must be JSON text.
    pub async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Message::Text(text) => serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("server sent invalid JSON ({e}): {text}")),
            other => panic!("expected a JSON text message, got {other:?}"),
        }
    }

    /// The next JSON message whose `type` is `ty`, skipping others
    /// (such as the `cancel` that may precede an `error`).
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let msg = self.recv_json().await;
            if msg["type"] == ty {
                return msg;
            }
        }
    }

    /// Reads until the server's close frame and returns its code; fails if
    /// the connection ends without one or nothing comes within [`WAIT`].
    pub async fn expect_close(&mut self) -> u16 {
        close_code(&mut self.stream).await
    }

    /// Waits for the connection to end however it does (a close frame, a
    /// reset, the socket closed): for a server that drops it.
    pub async fn expect_disconnect(&mut self) {
        let ended = tokio::time::timeout(WAIT, async {
            while let Some(Ok(msg)) = self.stream.next().await {
                if msg.is_close() {
                    return;
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the connection stayed open");
    }

    /// Sends `msg` while reading, and returns the server's close code. For
    /// messages the server refuses part-way through: it may stop reading
    /// before the whole message is written.
    pub async fn send_expecting_close(&mut self, msg: Message) -> u16 {
        let RawWs { sink, stream } = self;
        let sending = async {
            // Failing to finish the write is expected: the server closed.
            let _ = sink.send(msg).await;
        };
        let (_, code) = tokio::join!(sending, close_code(stream));
        code
    }
}

async fn close_code(stream: &mut SplitStream<Ws>) -> u16 {
    let read = async {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(Message::Close(frame)) => return Some(frame),
                Ok(_) => continue,
                Err(err) => panic!("connection failed before a close frame: {err}"),
            }
        }
        None
    };
    let frame: Option<Option<CloseFrame>> = tokio::time::timeout(WAIT, read)
        .await
        .expect("no close frame from the server in time");
    let frame = frame
        .expect("connection ended without a close frame")
        .expect("close frame without a code");
    u16::from(frame.code)
}

/// A text frame whose payload is not UTF-8 (tungstenite would refuse to
/// build one as a `Message::Text`).
pub fn invalid_utf8_text() -> Message {
    Message::Frame(Frame::message(
        &b"{\"type\":\"ping\xff\xfe\"}"[..],
        OpCode::Data(Data::Text),
        true,
    ))
}

/// A binary frame: `[kind][stream id BE][payload]`, built by hand.
pub fn frame(kind: u8, stream: u32, payload: &[u8]) -> Message {
    let mut bytes = vec![kind];
    bytes.extend_from_slice(&stream.to_be_bytes());
    bytes.extend_from_slice(payload);
    Message::binary(bytes)
}

/// A header list as `docs/PROTOCOL.md` §5.4 lays it out (HEAD and
/// TRAILERS frames): a u16 count, then each name (u16 length) and value
/// (u32 length), big-endian, written by hand.
pub fn header_list(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut buf = Vec::new();
    buf.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    for (name, value) in fields {
        buf.extend_from_slice(&(name.len() as u16).to_be_bytes());
        buf.extend_from_slice(name.as_bytes());
        buf.extend_from_slice(&(value.len() as u32).to_be_bytes());
        buf.extend_from_slice(value.as_bytes());
    }
    buf
}

/// Polls `check` every 20 ms until it holds; fails the test with `what` if
/// it does not within `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let waited = tokio::time::timeout(limit, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "not within {limit:?}: {what}");
}

/// Standard base64 with padding, the alphabet the protocol names: spelled
/// here, not taken from the product's code, so a test pins the wire format.
pub fn base64_encode(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Decodes standard padded base64; panics on anything else.
pub fn base64_decode(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|err| panic!("not base64 ({err}): {text:?}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_round_trip() {
        assert_eq!(super::base64_encode(b"Man"), "TWFu");
        assert_eq!(super::base64_encode(b"Ma"), "TWE=");
        assert_eq!(super::base64_encode(b"M"), "TQ==");
        let all: Vec<u8> = (0..=255).collect();
        for n in 0..all.len() {
            assert_eq!(
                super::base64_decode(&super::base64_encode(&all[..n])),
                &all[..n]
            );
        }
    }
}
