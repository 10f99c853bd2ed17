//! Tests of [`super`]: tungstenite as the client, on the other end of an
//! in-memory pipe, so every frame ours reads is one a real client wrote and
//! every frame ours writes is read by a real client; hand-made bytes for
//! what no well-behaved client sends.

use super::*;
use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

const MAX_MESSAGE: usize = 2 << 20;
const MAX_FRAME: usize = 128 << 10;

/// Ours, and a tungstenite client talking to it.
async fn pair() -> (Socket<DuplexStream>, WebSocketStream<DuplexStream>) {
    let (server, client) = tokio::io::duplex(1 << 16);
    let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    (
        Socket::new(server, End::Server, MAX_MESSAGE, MAX_FRAME),
        client,
    )
}

/// Ours, and the raw pipe to write hand-made frames into.
fn raw() -> (Socket<DuplexStream>, DuplexStream) {
    let (server, client) = tokio::io::duplex(1 << 16);
    (
        Socket::new(server, End::Server, MAX_MESSAGE, MAX_FRAME),
        client,
    )
}

/// A masked client frame.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![first];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

async fn next(ws: &mut Socket<DuplexStream>) -> Result<Message, Error> {
    tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
        .await
        .expect("a message in time")
        .expect("the stream goes on")
}

/// Sends `sent` from `from` (in a task of its own: the pipe holds less
/// than the messages do) while `to` reads them, checks that each arrives
/// as sent, and gives `from` back.
async fn cross<A, B>(from: A, to: &mut B, sent: &[Message]) -> A
where
    A: Sink<Message, Error = Error> + Unpin + Send + 'static,
    B: Stream<Item = Result<Message, Error>> + Unpin,
{
    let to_send = sent.to_vec();
    let writing = tokio::spawn(async move {
        let mut from = from;
        for msg in to_send {
            from.send(msg).await.unwrap();
        }
        from
    });
    for msg in sent {
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), to.next())
            .await
            .expect("a message in time")
            .expect("the stream goes on")
            .unwrap();
        assert_eq!(&got, msg);
    }
    writing.await.unwrap()
}

#[tokio::test]
async fn messages_cross_both_ways_as_they_were_sent() {
    let (mut ours, client) = pair().await;
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let sent = [
        Message::text("{\"type\":\"response\"}"),
        Message::binary(big.clone()),
        Message::binary(Vec::new()),
        Message::text("ünïcode"),
        Message::binary(vec![7u8; 300]),
    ];
    let mut client = cross(client, &mut ours, &sent).await;
    cross(ours, &mut client, &sent).await;
}

#[tokio::test]
async fn a_ping_is_answered_and_a_close_echoed() {
    let (mut ours, mut client) = pair().await;
    client
        .send(Message::Ping(Bytes::from_static(b"hi")))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ours).await.unwrap(),
        Message::Ping(Bytes::from_static(b"hi"))
    );
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::Pong(Bytes::from_static(b"hi"))
    );
    let close = CloseFrame {
        code: CloseCode::Away,
        reason: Utf8Bytes::from_static("bye"),
    };
    client
        .send(Message::Close(Some(close.clone())))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ours).await.unwrap(),
        Message::Close(Some(close.clone()))
    );
    assert!(ours.next().await.is_none(), "nothing after a close");
    // The client sees our echo, and the close completes.
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::Close(Some(close))
    );
    assert!(ours.send(Message::text("late")).await.is_err());
}

#[tokio::test]
async fn our_close_reaches_the_client_with_its_code() {
    let (mut ours, mut client) = pair().await;
    let close = CloseFrame {
        code: CloseCode::Protocol,
        reason: Utf8Bytes::from_static("broken"),
    };
    ours.send(Message::Close(Some(close.clone())))
        .await
        .unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::Close(Some(close))
    );
}

#[tokio::test]
async fn fragments_are_put_together_and_interleaved_pings_answered() {
    let (mut ours, mut pipe) = raw();
    let mut bytes = frame(0x01, "frag".as_bytes());
    bytes.extend(frame(0x89, b"p"));
    bytes.extend(frame(0x00, "ment".as_bytes()));
    bytes.extend(frame(0x80, "ed ü".as_bytes()));
    pipe.write_all(&bytes).await.unwrap();
    assert_eq!(
        next(&mut ours).await.unwrap(),
        Message::Ping(Bytes::from_static(b"p"))
    );
    assert_eq!(
        next(&mut ours).await.unwrap(),
        Message::text("fragmented ü")
    );
    let mut pong = [0u8; 3];
    pipe.read_exact(&mut pong).await.unwrap();
    assert_eq!(pong, [0x8a, 1, b'p']);
}

#[tokio::test]
async fn frames_that_break_the_rules_are_refused_as_tungstenite_refused_them() {
    let unmasked = {
        let mut f = frame(0x82, b"x");
        f[1] &= 0x7f;
        f.drain(2..6);
        f
    };
    type Case = (&'static str, Vec<u8>, fn(&Error) -> bool);
    let cases: Vec<Case> = vec![
        ("unmasked", unmasked, |e| {
            matches!(e, Error::Protocol(ProtocolError::UnmaskedFrameFromClient))
        }),
        ("reserved bit", frame(0xc2, b"x"), |e| {
            matches!(e, Error::Protocol(ProtocolError::NonZeroReservedBits))
        }),
        ("reserved opcode", frame(0x83, b"x"), |e| {
            matches!(e, Error::Protocol(ProtocolError::UnknownDataFrameType(3)))
        }),
        ("fragmented ping", frame(0x09, b"x"), |e| {
            matches!(e, Error::Protocol(ProtocolError::FragmentedControlFrame))
        }),
        ("long ping", frame(0x89, &[0; 126]), |e| {
            matches!(e, Error::Protocol(ProtocolError::ControlFrameTooBig))
        }),
        ("stray continuation", frame(0x80, b"x"), |e| {
            matches!(e, Error::Protocol(ProtocolError::UnexpectedContinueFrame))
        }),
        ("bad UTF-8", frame(0x81, &[0xff, 0xfe]), |e| {
            matches!(e, Error::Utf8(_))
        }),
        (
            "a frame over the limit",
            frame(0x82, &vec![0; MAX_FRAME + 1]),
            |e| matches!(e, Error::Capacity(CapacityError::MessageTooLong { .. })),
        ),
        ("a one-byte close", frame(0x88, &[3]), |e| {
            matches!(e, Error::Protocol(ProtocolError::InvalidCloseSequence))
        }),
        (
            "a new message inside a fragmented one",
            {
                let mut f = frame(0x02, b"a");
                f.extend(frame(0x82, b"b"));
                f
            },
            |e| matches!(e, Error::Protocol(ProtocolError::ExpectedFragment(_))),
        ),
    ];
    for (what, bytes, expected) in cases {
        let (mut ours, mut pipe) = raw();
        tokio::spawn(async move {
            let _ = pipe.write_all(&bytes).await;
            // Held open: the refusal, not the end, must stop the read.
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            drop(pipe);
        });
        let err = next(&mut ours).await.unwrap_err();
        assert!(expected(&err), "{what}: {err:?}");
        assert!(ours.next().await.is_none(), "{what}: nothing after");
    }
}

#[tokio::test]
async fn a_message_over_the_limit_in_fragments_is_refused() {
    let (server, mut pipe) = tokio::io::duplex(1 << 16);
    let mut ours = Socket::new(server, End::Server, 1000, 1000);
    tokio::spawn(async move {
        let _ = pipe.write_all(&frame(0x02, &[0; 600])).await;
        let _ = pipe.write_all(&frame(0x80, &[0; 600])).await;
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    });
    let err = next(&mut ours).await.unwrap_err();
    assert!(matches!(err, Error::Capacity(_)), "{err:?}");
}

#[tokio::test]
async fn the_end_without_a_close_is_a_reset_and_an_idle_socket_holds_no_buffer() {
    let (mut ours, mut pipe) = raw();
    pipe.write_all(&frame(0x82, &[1; 3000])).await.unwrap();
    assert_eq!(
        next(&mut ours).await.unwrap(),
        Message::binary(vec![1; 3000])
    );
    // Nothing more yet: the read finds the pipe empty and lets go.
    let polled = futures_util::poll!(ours.next());
    assert!(polled.is_pending());
    assert_eq!(ours.read_capacity(), 0);
    drop(pipe);
    let err = next(&mut ours).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)
        ),
        "{err:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any sequence of messages a tungstenite client sends arrives as sent,
    /// and any we send arrives at the client as sent, whatever the sizes
    /// (header forms of 7, 16 and 64 bits) and however the pipe cuts them.
    #[test]
    fn any_messages_cross_unchanged(
        sizes in prop::collection::vec(prop_oneof![0usize..130, 60_000usize..70_000, Just(MAX_FRAME)], 1..5),
        pipe in prop_oneof![Just(1021usize), Just(1 << 16)],
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (server, client) = tokio::io::duplex(pipe);
            let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
            let mut ours = Socket::new(server, End::Server, MAX_MESSAGE, MAX_FRAME);
            let sent: Vec<Message> = sizes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    if i % 2 == 0 {
                        Message::binary((0..*n).map(|b| (b * 7 + i) as u8).collect::<Vec<u8>>())
                    } else {
                        Message::text("é".repeat(n / 2))
                    }
                })
                .collect();
            let mut client = cross(client, &mut ours, &sent).await;
            cross(ours, &mut client, &sent).await;
        });
    }
}

#[test]
fn unmasking_matches_the_definition_at_every_length_and_offset() {
    let key = [1, 2, 3, 250];
    for len in 0..40 {
        let data: Vec<u8> = (0..len as u8).collect();
        let mut ours = data.clone();
        unmask(&mut ours, key);
        let expected: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(ours, expected, "{len}");
    }
}

/// Our client's end, and a tungstenite server talking to it.
async fn client_pair() -> (Socket<DuplexStream>, WebSocketStream<DuplexStream>) {
    let (client, server) = tokio::io::duplex(1 << 16);
    let server = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
    (
        Socket::new(client, End::Client, MAX_MESSAGE, MAX_FRAME),
        server,
    )
}

#[tokio::test]
async fn as_a_client_it_masks_what_it_sends_and_reads_what_a_server_sends() {
    let (ours, mut server) = client_pair().await;
    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
    let sent = [
        Message::text("{\"type\":\"create_tunnel\"}"),
        Message::binary(big),
        Message::binary(vec![9u8; 200]),
    ];
    // tungstenite, as a server, refuses any frame that is not masked.
    let mut ours = cross(ours, &mut server, &sent).await;
    cross(server, &mut ours, &sent).await;
}

#[tokio::test]
async fn as_a_client_it_refuses_a_masked_frame_and_reads_what_came_before_it() {
    let (client, mut pipe) = tokio::io::duplex(1 << 16);
    // Bytes the handshake read past the 101 come first.
    let mut early = BytesMut::new();
    early.put_slice(&[0x81, 2, b'h', b'i']);
    let mut ours = Socket::new(client, End::Client, MAX_MESSAGE, MAX_FRAME).with_read(early);
    tokio::spawn(async move {
        let _ = pipe.write_all(&frame(0x82, b"x")).await;
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    });
    assert_eq!(next(&mut ours).await.unwrap(), Message::text("hi"));
    let err = next(&mut ours).await.unwrap_err();
    assert!(
        matches!(err, Error::Protocol(ProtocolError::MaskedFrameFromServer)),
        "{err:?}"
    );
}
