//! TCP tunnels (`cryptun tcp`): visitors' connections to a public port,
//! carried to a local TCP service as raw streams. Many connections at once
//! with their bytes intact, half-closes both ways, the ports a server may
//! give and its refusals, a port held for its name while the client is
//! away, the connection cap and idle timeout crossed, and what a visitor
//! sees when the far side goes.
//!
//! Opt-in: 64 MiB each way over four connections, in release:
//! `cargo test --release -p cryptun-testkit --test e2e tcp::sixty_four -- --ignored`.

use std::net::SocketAddr;
use std::time::Duration;

use cryptun_client::{ClientConfig, ClientError, ConnectionDone, Event, TunnelProtocol};
use cryptun_proto::ErrorCode;
use cryptun_server::TcpPorts;
use cryptun_testkit::{TestClient, TestServer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A local TCP service answering each connection with `serve`.
pub(crate) async fn service<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// Echoes every byte back, then closes its side when the visitor has.
pub(crate) async fn echo(mut stream: TcpStream) {
    let (mut r, mut w) = stream.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

pub(crate) fn tcp(config: &mut ClientConfig) {
    config.tunnel.protocol = TunnelProtocol::Tcp;
}

/// A TCP tunnel to `target`, and the address visitors connect to.
async fn tunnel(server: &TestServer, target: SocketAddr) -> (TestClient, SocketAddr) {
    let client = TestClient::start_with(server, &target.to_string(), tcp)
        .await
        .unwrap();
    let port = client.tunnel.remote_port.expect("a TCP tunnel has a port");
    assert_eq!(client.tunnel.protocol, TunnelProtocol::Tcp);
    assert_eq!(client.tunnel.public_url, format!("tcp://localhost:{port}"));
    (client, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// The client's report of the first connection that ended.
async fn connection_done(client: &TestClient) -> ConnectionDone {
    let done = client
        .wait_event("the connection's line", |e| {
            matches!(e, Event::Connection(_))
        })
        .await;
    let Event::Connection(done) = done else {
        unreachable!()
    };
    done
}

/// A port no one listens on now, outside the system's range for outgoing
/// connections ([`cryptun_testkit::unused_port`]).
pub(crate) fn free_port() -> u16 {
    cryptun_testkit::unused_port()
}

#[tokio::test]
async fn a_hundred_connections_each_carry_a_mebibyte_both_ways_intact() {
    let server = TestServer::start().await;
    let (_client, public) = tunnel(&server, service(echo).await).await;
    let mut all = Vec::new();
    for i in 0..100u32 {
        all.push(tokio::spawn(async move {
            let sent: Vec<u8> = (0..1 << 20)
                .map(|b: u32| (b.wrapping_mul(31) ^ i) as u8)
                .collect();
            let mut stream = TcpStream::connect(public).await.unwrap();
            let (mut r, mut w) = stream.split();
            let write = async {
                w.write_all(&sent).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let read = r.read_to_end(&mut got);
            let ((), read) = tokio::join!(write, read);
            read.unwrap();
            assert_eq!(got.len(), sent.len(), "connection {i}");
            assert_eq!(
                Sha256::digest(&got),
                Sha256::digest(&sent),
                "connection {i}"
            );
        }));
    }
    for task in all {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn a_visitors_half_close_reaches_the_service_and_its_answer_comes_back() {
    // Reads to the visitor's FIN, then answers with what it counted.
    let counting = |mut stream: TcpStream| async move {
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        let answer = format!("got {} bytes", got.len());
        stream.write_all(answer.as_bytes()).await.unwrap();
        stream.shutdown().await.unwrap();
    };
    let server = TestServer::start().await;
    let (client, public) = tunnel(&server, service(counting).await).await;
    let mut visitor = TcpStream::connect(public).await.unwrap();
    visitor.write_all(&[7; 300_000]).await.unwrap();
    visitor.shutdown().await.unwrap();
    let mut answer = String::new();
    visitor.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "got 300000 bytes");
    let done = connection_done(&client).await;
    assert_eq!((done.bytes_in, done.bytes_out), (300_000, 16));
    // The server counts it too, once its side has ended.
    let scraper = cryptun_testkit::Visitor::new(server.addr);
    cryptun_testkit::raw::eventually(cryptun_testkit::raw::WAIT, "counted", || async {
        let metrics = scraper.metrics().await;
        let sample = |series| cryptun_testkit::visitor::sample(&metrics, series);
        sample(r#"cryptun_tcp_connections_total{outcome="closed"}"#) == 1.0
            && sample(r#"cryptun_tcp_bytes_total{direction="in"}"#) == 300_000.0
            && sample(r#"cryptun_tcp_bytes_total{direction="out"}"#) == 16.0
            && sample("cryptun_tcp_connections_open") == 0.0
    })
    .await;
    assert_eq!(done.error, None);
    assert_eq!(done.remote_addr, visitor.local_addr().unwrap());
}

#[tokio::test]
async fn a_service_that_closes_first_still_hears_the_visitor_out() {
    // Says hello and shuts its writing side at once, then reads on.
    let greeter = |mut stream: TcpStream| async move {
        stream.write_all(b"hello").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"late words");
    };
    let server = TestServer::start().await;
    let (client, public) = tunnel(&server, service(greeter).await).await;
    let mut visitor = TcpStream::connect(public).await.unwrap();
    let mut hello = Vec::new();
    visitor.read_to_end(&mut hello).await.unwrap();
    assert_eq!(hello, b"hello");
    visitor.write_all(b"late words").await.unwrap();
    visitor.shutdown().await.unwrap();
    let done = connection_done(&client).await;
    assert_eq!((done.bytes_in, done.bytes_out, done.error), (10, 5, None));
}

#[tokio::test]
async fn a_service_that_refuses_closes_the_visitor_and_says_why() {
    let server = TestServer::start().await;
    let nobody = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (client, public) = tunnel(&server, nobody).await;
    let mut visitor = TcpStream::connect(public).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), visitor.read_to_end(&mut got));
    // Closed (cleanly or reset), not left hanging.
    let _ = read.await.expect("the visitor is closed at once");
    assert!(got.is_empty());
    let done = connection_done(&client).await;
    let error = done.error.expect("an error");
    assert!(error.contains("cannot reach the local service"), "{error}");
}

#[tokio::test]
async fn the_port_closes_with_its_client_and_open_connections_end() {
    let server = TestServer::start().await;
    let (client, public) = tunnel(&server, service(echo).await).await;
    let mut visitor = TcpStream::connect(public).await.unwrap();
    visitor.write_all(b"ping").await.unwrap();
    let mut four = [0; 4];
    visitor.read_exact(&mut four).await.unwrap();
    drop(client);
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), visitor.read_to_end(&mut rest));
    let _ = read
        .await
        .expect("the open connection ends with the session");
    cryptun_testkit::raw::eventually(cryptun_testkit::raw::WAIT, "the port closed", || async {
        TcpStream::connect(public).await.is_err()
    })
    .await;
}

#[tokio::test]
async fn visitors_outside_the_tunnels_address_rules_are_closed_at_once() {
    let server = TestServer::start().await;
    let target = service(echo).await.to_string();
    let client = TestClient::start_with(&server, &target, |config| {
        tcp(config);
        config.tunnel.deny_ips = vec!["127.0.0.0/8".into()];
    })
    .await
    .unwrap();
    let public = SocketAddr::from(([127, 0, 0, 1], client.tunnel.remote_port.unwrap()));
    let mut visitor = TcpStream::connect(public).await.unwrap();
    let _ = visitor.write_all(b"anyone?").await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), visitor.read_to_end(&mut got));
    let _ = read.await.expect("closed at once");
    assert!(got.is_empty(), "nothing reached the service and came back");
    let refused = r#"cryptun_tcp_connections_total{outcome="refused_ip"}"#;
    let scraper = cryptun_testkit::Visitor::new(server.addr);
    assert_eq!(scraper.metric(refused).await, 1.0);
}

#[tokio::test]
async fn an_http_request_for_a_tcp_tunnels_name_is_told_where_to_connect() {
    let server = TestServer::start().await;
    let (client, public) = tunnel(&server, service(echo).await).await;
    let host = server.host_of(&client.tunnel.subdomain);
    let response = cryptun_testkit::Visitor::new(server.addr)
        .get(&host, "/")
        .await;
    assert_eq!(response.status, 404);
    let code = response.headers.get("x-cryptun-error").unwrap();
    assert_eq!(code, "not_http");
    let body = response.text();
    assert!(
        body.contains(&format!("tcp://localhost:{}", public.port())),
        "{body}"
    );
}

/// The refusal a TCP tunnel asking for `remote_port` gets from `server`.
pub(crate) async fn refused(server: &TestServer, remote_port: Option<u16>) -> (ErrorCode, String) {
    let target = SocketAddr::from(([127, 0, 0, 1], free_port())).to_string();
    let refused = TestClient::start_with(server, &target, |config| {
        tcp(config);
        config.tunnel.remote_port = remote_port;
    })
    .await;
    match refused {
        Err(ClientError::Refused { code, message }) => (code, message),
        Err(err) => panic!("refused otherwise: {err}"),
        Ok(client) => panic!("given port {:?}", client.tunnel.remote_port),
    }
}

#[tokio::test]
async fn a_range_is_given_out_and_then_refused_as_exhausted_or_unavailable() {
    let (first, second) = (free_port(), free_port());
    let server = TestServer::start_with(cryptun_server::Config {
        tcp_ports: TcpPorts::Ranges(vec![first..=first, second..=second]),
        ..TestServer::test_config()
    })
    .await;
    let target = service(echo).await;
    let (_a, a) = tunnel(&server, target).await;
    let (_b, b) = tunnel(&server, target).await;
    let mut given = [a.port(), b.port()];
    given.sort_unstable();
    let mut range = [first, second];
    range.sort_unstable();
    assert_eq!(given, range);
    let (code, message) = refused(&server, None).await;
    assert_eq!(code, ErrorCode::PortsExhausted, "{message}");
    assert!(message.contains("in use"), "{message}");
    let (code, message) = refused(&server, Some(first)).await;
    assert_eq!(code, ErrorCode::PortUnavailable, "{message}");
    let outside = free_port();
    let (code, message) = refused(&server, Some(outside)).await;
    assert_eq!(code, ErrorCode::PortUnavailable, "{message}");
    assert!(
        message.contains("not in this server's TCP port ranges"),
        "{message}"
    );
}

#[tokio::test]
async fn a_port_asked_for_is_given_when_free_and_refused_when_something_holds_it() {
    let server = TestServer::start().await;
    let wanted = free_port();
    let client = TestClient::start_with(&server, &service(echo).await.to_string(), |config| {
        tcp(config);
        config.tunnel.remote_port = Some(wanted);
    })
    .await
    .unwrap();
    assert_eq!(client.tunnel.remote_port, Some(wanted));
    // Another program's port.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let (code, message) = refused(&server, Some(port)).await;
    assert_eq!(code, ErrorCode::PortUnavailable, "{message}");
}

#[tokio::test]
async fn a_server_that_opens_no_tcp_ports_refuses_with_tcp_disabled() {
    let server = TestServer::start_with(cryptun_server::Config {
        tcp_ports: TcpPorts::Off,
        ..TestServer::test_config()
    })
    .await;
    let (code, message) = refused(&server, None).await;
    assert_eq!(code, ErrorCode::TcpDisabled);
    assert!(message.contains("--tcp-ports"), "{message}");
}

#[tokio::test]
async fn a_port_is_held_for_its_tunnels_name_while_its_client_is_away() {
    let server = TestServer::start().await;
    let target = service(echo).await;
    let (client, public) = tunnel(&server, target).await;
    let name = client.tunnel.subdomain.clone();
    let secret = client.tunnel.reconnect_secret.clone();
    // Gone without a word, as a process that dies: name and port held.
    client.kill().await;
    cryptun_testkit::raw::eventually(cryptun_testkit::raw::WAIT, "the port held", || async {
        let (code, message) = refused(&server, Some(public.port())).await;
        code == ErrorCode::PortUnavailable && message.contains("held")
    })
    .await;
    // Back with its name: its port too.
    let back = TestClient::start_with(&server, &target.to_string(), |config| {
        tcp(config);
        config.tunnel.subdomain = Some(name.clone());
        config.tunnel.reconnect_secret = secret;
        config.tunnel.remote_port = Some(public.port());
    })
    .await
    .unwrap();
    assert_eq!(back.tunnel.subdomain, name);
    assert_eq!(back.tunnel.remote_port, Some(public.port()));
    let mut visitor = TcpStream::connect(public).await.unwrap();
    visitor.write_all(b"again").await.unwrap();
    let mut five = [0; 5];
    visitor.read_exact(&mut five).await.unwrap();
    assert_eq!(&five, b"again");
}

#[tokio::test]
async fn a_client_that_reconnects_to_a_restarted_server_asks_for_its_port_again() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let target = service(echo).await;
    let client = TestClient::start_reconnecting(&server, &target.to_string(), tcp)
        .await
        .unwrap();
    let port = client.tunnel.remote_port.unwrap();
    server.stop().await;
    let _restarted = TestServer::start_on(addr, TestServer::test_config()).await;
    let Event::Reconnected { tunnel } = client
        .wait_event("reconnected", |e| matches!(e, Event::Reconnected { .. }))
        .await
    else {
        unreachable!()
    };
    assert_eq!(tunnel.remote_port, Some(port));
    let mut visitor = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    visitor.write_all(b"hi").await.unwrap();
    let mut two = [0; 2];
    visitor.read_exact(&mut two).await.unwrap();
    assert_eq!(&two, b"hi");
}

/// A server with `adjust`ed settings, and a TCP tunnel to an echo.
async fn bounded(
    adjust: impl FnOnce(&mut cryptun_server::Config),
) -> (TestServer, TestClient, SocketAddr) {
    let mut config = TestServer::test_config();
    adjust(&mut config);
    let server = TestServer::start_with(config).await;
    let (client, public) = tunnel(&server, service(echo).await).await;
    (server, client, public)
}

/// Whether `stream` is closed within a few seconds (end of file or reset).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got));
    read.await.is_ok() && got.is_empty()
}

#[tokio::test]
async fn past_the_connection_cap_a_visitor_is_closed_and_the_others_go_on() {
    let (server, _client, public) = bounded(|c| c.tcp_max_connections = 2).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(public).await.unwrap();
        stream.write_all(b"in").await.unwrap();
        let mut two = [0; 2];
        stream.read_exact(&mut two).await.unwrap();
        open.push(stream);
    }
    let mut third = TcpStream::connect(public).await.unwrap();
    assert!(closed(&mut third).await, "the third connection is closed");
    let scraper = cryptun_testkit::Visitor::new(server.addr);
    let refused = r#"cryptun_tcp_connections_total{outcome="refused_cap"}"#;
    assert_eq!(scraper.metric(refused).await, 1.0);
    assert_eq!(scraper.metric("cryptun_tcp_connections_open").await, 2.0);
    // The two go on; once one leaves, a new one is carried.
    open[0].write_all(b"still").await.unwrap();
    let mut five = [0; 5];
    open[0].read_exact(&mut five).await.unwrap();
    drop(open.pop());
    cryptun_testkit::raw::eventually(cryptun_testkit::raw::WAIT, "room again", || async {
        let Ok(mut next) = TcpStream::connect(public).await else {
            return false;
        };
        let _ = next.write_all(b"ok").await;
        let mut two = [0; 2];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), next.read_exact(&mut two)).await,
            Ok(Ok(_))
        )
    })
    .await;
}

#[tokio::test]
async fn a_connection_idle_past_the_timeout_is_closed_and_a_busy_one_is_not() {
    let (_server, _client, public) =
        bounded(|c| c.tcp_idle_timeout = Duration::from_millis(800)).await;
    let mut idle = TcpStream::connect(public).await.unwrap();
    let mut busy = TcpStream::connect(public).await.unwrap();
    // Busy: a byte every 300 ms for 2 s, each echoed.
    for _ in 0..7 {
        busy.write_all(b".").await.unwrap();
        let mut one = [0; 1];
        busy.read_exact(&mut one).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(closed(&mut idle).await, "the idle connection is closed");
    busy.write_all(b"!").await.unwrap();
    let mut one = [0; 1];
    busy.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"!");
}

/// Opt-in: 64 MiB each way over each of 4 connections, hashed as they
/// stream (nothing held whole). Run it in release:
/// `cargo test --release -p cryptun-testkit --test e2e tcp::sixty_four -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "moves 512 MiB; run with --release -- --ignored"]
async fn sixty_four_mebibytes_each_way_arrive_intact() {
    const SIZE: usize = 64 << 20;
    let server = TestServer::start().await;
    let (_client, public) = tunnel(&server, service(echo).await).await;
    let started = std::time::Instant::now();
    let all = (0..4u8).map(|seed| {
        tokio::spawn(async move {
            let mut stream = TcpStream::connect(public).await.unwrap();
            let (mut r, mut w) = stream.split();
            let write = async {
                let mut sent = Sha256::new();
                let chunk: Vec<u8> = (0..1 << 16).map(|i: u32| (i as u8) ^ seed).collect();
                for _ in 0..SIZE / chunk.len() {
                    w.write_all(&chunk).await.unwrap();
                    sent.update(&chunk);
                }
                w.shutdown().await.unwrap();
                sent.finalize()
            };
            let read = async {
                let mut got = Sha256::new();
                let mut buf = vec![0; 1 << 16];
                let mut total = 0;
                loop {
                    let n = r.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    got.update(&buf[..n]);
                    total += n;
                }
                (total, got.finalize())
            };
            let (sent, (total, got)) = tokio::join!(write, read);
            assert_eq!(total, SIZE);
            assert_eq!(sent, got);
        })
    });
    for task in all.collect::<Vec<_>>() {
        task.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "4 x 64 MiB each way in {secs:.1} s: {:.0} MiB/s each way",
        256.0 / secs
    );
}

/// A local service that reads a PROXY protocol header (either version,
/// parsed by `ppp`) and answers with the source and destination it names.
async fn proxy_reader(mut stream: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0; 256];
    let answer = loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a whole header");
        buf.extend_from_slice(&chunk[..n]);
        let parsed = ppp::HeaderResult::parse(&buf);
        if ppp::PartialResult::is_incomplete(&parsed) {
            continue;
        }
        match parsed {
            ppp::HeaderResult::V1(Ok(header)) => break format!("{:?}", header.addresses),
            ppp::HeaderResult::V2(Ok(header)) => break format!("{:?}", header.addresses),
            other => panic!("no header: {other:?}"),
        }
    };
    stream.write_all(answer.as_bytes()).await.unwrap();
    stream.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_local_service_can_be_told_the_visitor_in_a_proxy_protocol_header() {
    use cryptun_client::LocalProxyProtocol;
    let server = TestServer::start().await;
    let target = service(proxy_reader).await.to_string();
    for version in [LocalProxyProtocol::V1, LocalProxyProtocol::V2] {
        let client = TestClient::start_with(&server, &target, |config| {
            tcp(config);
            config.tunnel.local_proxy_protocol = Some(version);
        })
        .await
        .unwrap();
        let port = client.tunnel.remote_port.unwrap();
        let mut visitor = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let me = visitor.local_addr().unwrap();
        let mut answer = String::new();
        visitor.read_to_string(&mut answer).await.unwrap();
        // Source: the visitor; destination: the tunnel's public address.
        for part in [
            me.ip().to_string(),
            me.port().to_string(),
            server.addr.ip().to_string(),
            port.to_string(),
        ] {
            assert!(answer.contains(&part), "{version:?}: {answer} lacks {part}");
        }
    }
}

#[tokio::test]
async fn a_tcp_or_tls_tunnel_without_raw_streams_is_refused_and_an_open_frame_from_a_client_closes_its_session()
 {
    use cryptun_testkit::RawWs;
    use serde_json::json;
    let server = TestServer::start_tls(TestServer::test_config()).await;
    // Binary streams alone: no raw streams to carry the connections.
    for (protocol, code) in [("tcp", "tcp_disabled"), ("tls", "tls_disabled")] {
        let (_ws, answer) = RawWs::create(
            &server,
            json!({ "protocol": protocol, "capabilities": ["binary_streams"] }),
        )
        .await;
        assert_eq!(answer["code"], code, "{answer}");
        assert!(
            answer["message"].as_str().unwrap().contains("raw_streams"),
            "{answer}"
        );
    }
    // Only the server opens raw streams.
    let (mut ws, _) = RawWs::tunnel(
        &server,
        json!({ "capabilities": ["binary_streams", "raw_streams"] }),
    )
    .await;
    let open = cryptun_proto::raw::OpenStream {
        tunnel_id: "x".into(),
        visitor: "127.0.0.1:1".parse().unwrap(),
    };
    let close = ws
        .send_expecting_close(tokio_tungstenite::tungstenite::Message::Binary(
            open.encode(9),
        ))
        .await;
    assert_eq!(close, 1002);
}

#[tokio::test]
async fn a_reserved_port_goes_only_to_its_key_and_never_unasked() {
    let dir = cryptun_testkit::TempDir::new();
    let (reserved, free) = (free_port(), free_port());
    let config = cryptun_server::Config {
        tcp_ports: TcpPorts::Ranges(vec![reserved..=reserved, free..=free]),
        ..TestServer::auth_config(&dir.path, cryptun_server::AuthMode::Optional)
    };
    let store = cryptun_server::Store::open(&dir.path).unwrap();
    let owner = store.create_key("owner").unwrap();
    let other = store.create_key("other").unwrap();
    store.reserve_port(&owner.info.id, reserved).unwrap();
    assert_eq!(store.list_keys().unwrap()[0].reserved_ports, [reserved]);
    drop(store);
    let server = TestServer::start_with(config).await;
    let target = service(echo).await.to_string();
    let open = |token: Option<&cryptun_proto::Secret>, port: Option<u16>| {
        let token = token.cloned();
        TestClient::start_with(&server, &target, move |c| {
            tcp(c);
            c.token = token;
            c.tunnel.remote_port = port;
        })
    };
    // Another key, or none, asking for it: refused, saying why.
    for token in [Some(&other.token), None] {
        match open(token, Some(reserved)).await {
            Err(ClientError::Refused { code, message }) => {
                assert_eq!(code, ErrorCode::PortUnavailable);
                assert!(
                    message.contains("reserved for another API key"),
                    "{message}"
                );
            }
            Err(err) => panic!("refused otherwise: {err}"),
            Ok(c) => panic!("given {:?}", c.tunnel.remote_port),
        }
    }
    // Never given unasked: the range's other port, then none.
    let first = open(None, None).await.unwrap();
    assert_eq!(first.tunnel.remote_port, Some(free));
    match open(Some(&other.token), None).await {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::PortsExhausted),
        Err(err) => panic!("refused otherwise: {err}"),
        Ok(c) => panic!("given {:?}", c.tunnel.remote_port),
    }
    // Its key gets it.
    let mine = open(Some(&owner.token), Some(reserved)).await.unwrap();
    assert_eq!(mine.tunnel.remote_port, Some(reserved));
}

#[tokio::test]
async fn a_connection_cut_midway_still_says_what_it_carried() {
    let server = TestServer::start().await;
    // A service that reads five bytes, answers three, then resets.
    let target = service(|mut stream: TcpStream| async move {
        let mut five = [0; 5];
        stream.read_exact(&mut five).await.unwrap();
        stream.write_all(b"abc").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = stream.set_zero_linger();
    })
    .await;
    let (client, public) = tunnel(&server, target).await;
    let mut visitor = TcpStream::connect(public).await.unwrap();
    visitor.write_all(b"hello").await.unwrap();
    let mut three = [0; 3];
    visitor.read_exact(&mut three).await.unwrap();
    let done = connection_done(&client).await;
    assert!(done.error.is_some(), "{done:?}");
    assert_eq!((done.bytes_in, done.bytes_out), (5, 3), "{done:?}");
}

#[tokio::test]
async fn a_local_service_that_never_accepts_is_given_up_on_in_time() {
    // A listener with a backlog of one that never accepts: once its queue
    // is full, the kernel drops further connection attempts.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let target = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..2 {
        queued.push(TcpStream::connect(target).await.unwrap());
    }
    let server = TestServer::start().await;
    let client = TestClient::start_with(&server, &target.to_string(), |c| {
        tcp(c);
        c.local_connect_timeout = Duration::from_millis(300);
    })
    .await
    .unwrap();
    let public = SocketAddr::from(([127, 0, 0, 1], client.tunnel.remote_port.unwrap()));
    let started = std::time::Instant::now();
    let mut visitor = TcpStream::connect(public).await.unwrap();
    assert!(closed(&mut visitor).await, "the visitor is closed");
    let done = connection_done(&client).await;
    let error = done.error.unwrap_or_default();
    assert!(error.contains("300ms"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop((listener, queued));
}

#[tokio::test]
async fn a_tunnel_closed_on_purpose_leaves_its_port_free_at_once() {
    let server = TestServer::start().await;
    let target = service(echo).await;
    let (client, public) = tunnel(&server, target).await;
    // Stopped by its user (close_tunnel): name and port are released, not
    // held for a client that is not coming back.
    client.stop().await.unwrap();
    cryptun_testkit::raw::eventually(cryptun_testkit::raw::WAIT, "the port free", || async {
        let other = TestClient::start_with(&server, &target.to_string(), |c| {
            tcp(c);
            c.tunnel.remote_port = Some(public.port());
        })
        .await;
        other.is_ok_and(|c| c.tunnel.remote_port == Some(public.port()))
    })
    .await;
}
