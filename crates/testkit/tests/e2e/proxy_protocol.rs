//! The PROXY protocol (`--proxy-protocol`) behind an L4 balancer, played by
//! raw sockets from 127.0.0.2 (the trusted proxy) writing v1 and v2 headers
//! by hand: the address a header carries is the visitor's for the tunnel's
//! IP lists, the `X-Forwarded-For` the local service sees and the
//! per-address connection cap, on the plain and the HTTPS listener; a header
//! from anyone else, a trusted proxy's connection without one, and a header
//! too slow are refused; without the option a header is nobody's word.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cryptun_client::ClientConfig;
use cryptun_server::Config;
use cryptun_testkit::visitor::{connect_from, read_response, status_of};
use cryptun_testkit::{LIMIT, Origin, TestClient, TestServer, Visitor, within};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The balancer's address.
const PROXY: &str = "127.0.0.2";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Test settings behind the balancer at [`PROXY`], with or without the
/// PROXY protocol.
fn config(proxy_protocol: bool) -> Config {
    Config {
        trusted_proxies: vec![PROXY.parse().unwrap()],
        proxy_protocol,
        ..TestServer::test_config()
    }
}

/// A v1 header for a TCP4 visitor at `source`.
fn v1(source: SocketAddr) -> Vec<u8> {
    format!(
        "PROXY TCP4 {} 127.0.0.1 {} 80\r\n",
        source.ip(),
        source.port()
    )
    .into_bytes()
}

/// A v2 header: `PROXY` for an IPv4 visitor at `source`, with a TLV after
/// the addresses, or `LOCAL` (a health check) if `source` is `None`.
fn v2(source: Option<SocketAddr>) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    let Some(SocketAddr::V4(source)) = source else {
        h.extend([0x20, 0x00, 0, 0]);
        return h;
    };
    h.extend([0x21, 0x11, 0, 12 + 7]);
    h.extend(source.ip().octets());
    h.extend(Ipv4Addr::LOCALHOST.octets());
    h.extend(source.port().to_be_bytes());
    h.extend(80u16.to_be_bytes());
    // PP2_TYPE_NOOP, four bytes of padding: read past, not used.
    h.extend([0x04, 0, 4, 1, 2, 3, 4]);
    h
}

fn at(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A tunnel to a fresh origin, with the client configured by `adjust`.
async fn tunnel(
    server: &TestServer,
    adjust: impl FnOnce(&mut ClientConfig),
) -> (Origin, TestClient) {
    let origin = Origin::start().await;
    let client = within(
        "tunnel",
        TestClient::start_with(server, &origin.target(), adjust),
    )
    .await
    .unwrap();
    (origin, client)
}

/// `GET /echo` on `host`, sent from `source` after `header`: the raw
/// response, read until the server closes.
async fn echo_from(server: &TestServer, source: &str, header: &[u8], host: &str) -> String {
    let request = format!("GET /echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let mut stream = connect_from(ip(source), server.addr).await;
    stream
        .write_all(&[header, request.as_bytes()].concat())
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(LIMIT, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of header `name` in an `/echo` response's JSON body.
fn echoed(body: &str, name: &str) -> String {
    let body = &body[body.find("\r\n\r\n").map_or(0, |i| i + 4)..];
    let echo: serde_json::Value = serde_json::from_str(body).unwrap();
    let headers = echo["headers"].as_array().unwrap();
    let pair = headers.iter().find(|h| h[0] == name).unwrap();
    pair[1].as_str().unwrap().to_owned()
}

/// `cryptun_refusals_total` for `reason`.
async fn refusals(server: &TestServer, reason: &str) -> f64 {
    let series = format!("cryptun_refusals_total{{reason=\"{reason}\"}}");
    within("metrics", Visitor::new(server.addr).metric(&series)).await
}

#[tokio::test]
async fn v1_and_v2_headers_from_a_trusted_proxy_name_the_visitor() {
    let server = TestServer::start_with(config(true)).await;
    let (origin, client) = tunnel(&server, |c| {
        c.tunnel.deny_ips = vec!["203.0.113.66".into()];
    })
    .await;
    let host = &client.host;

    for (version, header) in [
        ("v1", v1(at("203.0.113.9:41000"))),
        ("v2", v2(Some(at("203.0.113.10:41001")))),
    ] {
        let reply = echo_from(&server, PROXY, &header, host).await;
        assert_eq!(status_of(&reply), 200, "{version}: {reply}");
        let expected = if version == "v1" {
            "203.0.113.9"
        } else {
            "203.0.113.10"
        };
        assert_eq!(echoed(&reply, "x-forwarded-for"), expected, "{version}");
    }
    // The tunnel's deny list sees the carried address, not the proxy's.
    for header in [v1(at("203.0.113.66:1")), v2(Some(at("203.0.113.66:2")))] {
        let reply = echo_from(&server, PROXY, &header, host).await;
        assert_eq!(status_of(&reply), 403, "{reply}");
    }
    // A v2 LOCAL header (the balancer's own health check): the proxy's
    // address stays.
    let reply = echo_from(&server, PROXY, &v2(None), host).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    assert_eq!(echoed(&reply, "x-forwarded-for"), PROXY);
    assert_eq!(origin.requests(), 3);
    // A visitor named 127.0.0.1 by a header is not this machine: no admin
    // API without a token.
    let own = server.own_host();
    let header = v1(at("127.0.0.1:5"));
    let request = format!("GET /api/tunnels HTTP/1.1\r\nHost: {own}\r\nConnection: close\r\n\r\n");
    let mut stream = connect_from(ip(PROXY), server.addr).await;
    stream
        .write_all(&[&header, request.as_bytes()].concat())
        .await
        .unwrap();
    let reply = within("admin", read_response(&mut BufReader::new(stream))).await;
    assert_eq!(reply.status, 403);
}

#[tokio::test]
async fn headers_from_anyone_else_and_connections_without_one_are_refused() {
    let server = TestServer::start_with(config(true)).await;
    let (origin, client) = tunnel(&server, |_| {}).await;
    let host = &client.host;

    // From an untrusted address a header is refused: closed, no answer.
    for header in [v1(at("203.0.113.9:1")), v2(Some(at("203.0.113.9:2")))] {
        let reply = echo_from(&server, "127.0.0.3", &header, host).await;
        assert_eq!(reply, "", "answered a header from an untrusted address");
    }
    assert_eq!(refusals(&server, "proxy_protocol_untrusted").await, 2.0);
    // Its plain requests are served as ever.
    let reply = echo_from(&server, "127.0.0.3", b"", host).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    assert_eq!(echoed(&reply, "x-forwarded-for"), "127.0.0.3");

    // From the trusted proxy, a connection without a header, or with a
    // malformed one, is refused.
    let malformed: [&[u8]; 3] = [
        b"",
        b"PROXY TCP4 203.0.113.9 127.0.0.1 1\r\n",
        b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c",
    ];
    for header in malformed {
        let reply = echo_from(&server, PROXY, header, host).await;
        assert_eq!(reply, "", "{header:?} was answered");
    }
    assert_eq!(refusals(&server, "proxy_protocol_header").await, 3.0);
    assert_eq!(origin.requests(), 1);
}

#[tokio::test]
async fn without_the_option_a_header_is_not_honoured() {
    let server = TestServer::start_with(config(false)).await;
    let (origin, client) = tunnel(&server, |c| {
        c.tunnel.allow_ips = vec!["203.0.113.0/24".into()];
    })
    .await;
    for header in [v1(at("203.0.113.9:1")), v2(Some(at("203.0.113.9:2")))] {
        let reply = echo_from(&server, PROXY, &header, &client.host).await;
        assert_eq!(status_of(&reply), 400, "{reply}");
    }
    assert_eq!(origin.requests(), 0, "a header's address reached the app");
}

#[tokio::test]
async fn over_https_the_header_comes_before_the_client_hello() {
    let server = TestServer::start_tls(config(true)).await;
    let (origin, client) = tunnel(&server, |c| {
        c.tunnel.deny_ips = vec!["203.0.113.66".into()];
    })
    .await;
    let tls = server.tls.as_ref().unwrap();
    let name = format!("{}.localhost", client.tunnel.subdomain);
    let get = async |header: Vec<u8>| {
        let mut tcp = connect_from(ip(PROXY), tls.addr).await;
        tcp.write_all(&header).await.unwrap();
        https_get(tcp, &tls.ca, &name, &client.host).await
    };

    let (status, body) = within("v2 over TLS", get(v2(Some(at("203.0.113.9:1"))))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(echoed(&body, "x-forwarded-for"), "203.0.113.9");
    assert_eq!(echoed(&body, "x-forwarded-proto"), "https");
    let (status, body) = within("v1 over TLS", get(v1(at("203.0.113.66:1")))).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(origin.requests(), 1);
}

/// `GET /echo` with `Host: host` over TLS (SNI `sni`, trusting `ca`) on
/// `tcp`: the status and body.
async fn https_get(tcp: TcpStream, ca: &std::path::Path, sni: &str, host: &str) -> (u16, String) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(cryptun_server::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let stream = connector.connect(name, tcp).await.expect("TLS handshake");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/echo")
        .header("host", host)
        .body(Full::<Bytes>::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_partial_header_is_dropped_after_the_handshake_timeout() {
    let timeout = Duration::from_millis(500);
    let server = TestServer::start_with(Config {
        tls_handshake_timeout: timeout,
        ..config(true)
    })
    .await;
    for partial in [&b"PROXY TCP4 203.0.1"[..], b"\r\n\r\n\0\r\nQUIT\n\x21"] {
        let mut stream = connect_from(ip(PROXY), server.addr).await;
        let began = Instant::now();
        stream.write_all(partial).await.unwrap();
        let mut buf = [0u8; 64];
        // Closed without an answer, once the time is up (the header
        // timeout of a request, 30 s, would be far longer).
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        let waited = began.elapsed();
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "{partial:?} was kept: {read:?}"
        );
        assert!(waited >= timeout - Duration::from_millis(50), "{waited:?}");
    }
    assert_eq!(refusals(&server, "proxy_protocol_header").await, 2.0);
}

#[tokio::test]
async fn the_per_address_connection_cap_keys_on_the_carried_address() {
    let server = TestServer::start_with(Config {
        max_connections_per_ip: 2,
        ..config(true)
    })
    .await;
    let (_origin, client) = tunnel(&server, |_| {}).await;
    let request = format!("GET /echo HTTP/1.1\r\nHost: {}\r\n\r\n", client.host);

    // Two kept-alive connections for one visitor, both through the proxy
    // (which itself holds any number): each has been served once, so the
    // server has read its header.
    let mut held = Vec::new();
    for port in [1, 2] {
        let mut stream = connect_from(ip(PROXY), server.addr).await;
        let header = v1(SocketAddr::new(ip("203.0.113.9"), port));
        stream
            .write_all(&[&header, request.as_bytes()].concat())
            .await
            .unwrap();
        let mut stream = BufReader::new(stream);
        let reply = within("served", read_response(&mut stream)).await;
        assert_eq!(reply.status, 200);
        held.push(stream);
    }
    // A third for the same visitor is over its cap: 503, named.
    let reply = echo_from(&server, PROXY, &v1(at("203.0.113.9:3")), &client.host).await;
    assert_eq!(status_of(&reply), 503, "{reply}");
    assert!(
        reply.contains("x-cryptun-error: max_connections_per_ip"),
        "{reply}"
    );
    // Another visitor behind the same proxy is served.
    let reply = echo_from(
        &server,
        PROXY,
        &v2(Some(at("203.0.113.10:4"))),
        &client.host,
    )
    .await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    // The visitor's slots come back as its connections close.
    drop(held);
    let again = async {
        loop {
            let reply = echo_from(&server, PROXY, &v1(at("203.0.113.9:5")), &client.host).await;
            if status_of(&reply) == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    within("the visitor's slots given back", again).await;
}
