//! TCP and TLS tunnels in a cluster: a visitor who reaches a node other
//! than the one serving the tunnel is carried there over the internal hop
//! (an upgraded connection), undecrypted, both directions intact; the hop
//! takes such connections only from nodes and only for tunnels it serves.
//! TCP ports are given once cluster-wide, every node listens on them, and
//! a port is held for its name while its client is away, to be given back
//! on any node.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cryptun_client::{ClientConfig, ClientError};
use cryptun_proto::ErrorCode;
use cryptun_server::{Config, TcpPorts};
use cryptun_testkit::server::CLUSTER_SECRET;
use cryptun_testkit::tls::{HttpsVisitor, TlsFiles};
use cryptun_testkit::visitor::{raw_exchange, status_of};
use cryptun_testkit::{Origin, TestClient, TestRedis, TestServer, sha256_hex};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cluster::hop_of;
use crate::tcp::{echo, free_port, refused, service, tcp};
use crate::tls_passthrough::{local_tls_echo, tunnel};

/// Nodes `names` of one cluster on `redis`, each with an HTTPS listener.
async fn tls_nodes(redis: &TestRedis, names: &[&str]) -> Vec<TestServer> {
    let mut nodes = Vec::new();
    for name in names {
        let config = TestServer::cluster_config(&redis.url(), name);
        nodes.push(TestServer::start_tls(config).await);
    }
    nodes
}

/// Writes `text` on a TLS connection through `node` for `sni`, trusting
/// only `ca`, and reads it back.
async fn echo_through(node: &TestServer, ca: &std::path::Path, sni: &str, text: &[u8]) {
    let https = node.tls.as_ref().unwrap();
    let mut stream = HttpsVisitor::new(https.addr, ca)
        .connect(Some(sni))
        .await
        .unwrap_or_else(|err| panic!("handshake through {}: {err}", https.addr));
    stream.write_all(text).await.unwrap();
    let mut back = vec![0; text.len()];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(back, text);
    // The visitor's end reaches the local service, whose end comes back.
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("the connection ends after the visitor's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_tunnel_on_one_node_is_reached_through_every_node() {
    let redis = TestRedis::start();
    let nodes = tls_nodes(&redis, &["a", "b", "c"]).await;
    let files = TlsFiles::generate("secure.localhost");
    let _client = tunnel(&nodes[0], local_tls_echo(&files).await, "secure").await;
    for node in &nodes {
        echo_through(
            node,
            &files.ca,
            "secure.localhost",
            b"carried, not decrypted",
        )
        .await;
    }
    // A megabyte through another node, intact.
    let https = nodes[2].tls.as_ref().unwrap();
    let stream = HttpsVisitor::new(https.addr, &files.ca)
        .connect(Some("secure.localhost"))
        .await
        .unwrap();
    let sent: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let expected = sent.clone();
    let writing = tokio::spawn(async move { writer.write_all(&sent).await.unwrap() });
    let mut back = vec![0; expected.len()];
    reader.read_exact(&mut back).await.unwrap();
    writing.await.unwrap();
    assert!(back == expected, "the megabyte came back changed");

    // HTTP tunnels' names on the same listeners are still terminated.
    let origin = Origin::start().await;
    let web = TestClient::start(&nodes[0], &origin.target()).await;
    let https = nodes[1].tls.as_ref().unwrap();
    let name = format!("{}.localhost", web.tunnel.subdomain);
    let reply = HttpsVisitor::new(https.addr, &https.ca)
        .get(
            Some(&name),
            &nodes[1].host_of(&web.tunnel.subdomain),
            "/echo",
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

/// The hop's proof of the test clusters' secret, as nodes send it.
fn proof() -> String {
    sha256_hex(format!("cryptun-hop-1\0{CLUSTER_SECRET}").as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hop_takes_raw_connections_only_from_nodes_and_for_its_own_tunnels() {
    let redis = TestRedis::start();
    let nodes = tls_nodes(&redis, &["a", "b"]).await;
    let files = TlsFiles::generate("secure.localhost");
    let _client = tunnel(&nodes[0], local_tls_echo(&files).await, "secure").await;
    let hop = hop_of(&redis, "a");
    // (Refused ones close: the exchange reads to the end.)
    let ask = |proof: &str, target: &str| {
        format!(
            "GET / HTTP/1.1\r\nHost: {hop}\r\n{proof}x-cryptun-hop-visitor: 10.0.0.1:1\r\nx-cryptun-hop-raw: {target}\r\nConnection: upgrade, close\r\nUpgrade: cryptun-raw\r\n\r\n"
        )
    };
    // A stranger, guessing or sending the secret itself: refused.
    for stranger in [
        String::new(),
        "x-cryptun-hop-proof: guess\r\n".to_owned(),
        format!("x-cryptun-hop-proof: {CLUSTER_SECRET}\r\n"),
    ] {
        let raw = raw_exchange(
            hop,
            ask(&stranger, "tls secure").as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(status_of(&raw), 403, "{raw}");
        assert!(raw.contains("hop_forbidden"), "{raw}");
    }
    // A node, for a tunnel not there (another name, another protocol or
    // port, or no target it can read): not here.
    let node = format!("x-cryptun-hop-proof: {}\r\n", proof());
    for target in ["tls elsewhere", "tcp secure 20000", "udp secure"] {
        let raw = raw_exchange(hop, ask(&node, target).as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(status_of(&raw), 421, "{target}: {raw}");
        assert!(raw.contains("not_here"), "{raw}");
    }
    // And for the tunnel it serves: switched.
    let mut stream = tokio::net::TcpStream::connect(hop).await.unwrap();
    stream
        .write_all(ask(&node, "tls secure").as_bytes())
        .await
        .unwrap();
    let mut head = vec![0; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
}

/// Nodes `names` of one cluster on `redis`, each on a loopback address of
/// its own (127.0.0.2, .3, ...) so that each can listen on the same TCP
/// ports, `ports` (single-port ranges).
pub(crate) async fn tcp_nodes(redis: &TestRedis, names: &[&str], ports: &[u16]) -> Vec<TestServer> {
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let config = Config {
            tcp_ports: TcpPorts::Ranges(ports.iter().map(|&p| p..=p).collect()),
            ..TestServer::cluster_config(&redis.url(), name)
        };
        let ip = IpAddr::from([127, 0, 0, 2 + i as u8]);
        nodes.push(TestServer::start_on(SocketAddr::new(ip, 0), config).await);
    }
    nodes
}

/// `node`'s address at `port`.
pub(crate) fn at(node: &TestServer, port: u16) -> SocketAddr {
    SocketAddr::new(node.addr.ip(), port)
}

/// A TCP tunnel on `node` to `target`, with `adjust`ed settings.
async fn tcp_tunnel(
    node: &TestServer,
    target: SocketAddr,
    adjust: impl FnOnce(&mut ClientConfig),
) -> TestClient {
    TestClient::start_with(node, &target.to_string(), |config| {
        tcp(config);
        adjust(config);
    })
    .await
    .unwrap()
}

/// Sends `sent` on a connection to `addr` and reads it all back, the
/// writing half shut after it; the SHA-256 of what came back.
async fn echoed(addr: SocketAddr, sent: Vec<u8>) -> [u8; 32] {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        writer.write_all(&sent).await.unwrap();
        writer.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), reader.read_to_end(&mut back))
        .await
        .expect("the echo ends after the visitor's half-close")
        .unwrap();
    writing.await.unwrap();
    Sha256::digest(&back).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tcp_tunnel_on_one_node_is_reached_at_its_port_on_every_node() {
    let redis = TestRedis::start();
    let ports = [free_port(), free_port(), free_port()];
    let nodes = tcp_nodes(&redis, &["a", "b", "c"], &ports).await;
    let client = tcp_tunnel(&nodes[0], service(echo).await, |_| {}).await;
    let port = client.tunnel.remote_port.expect("a port");
    assert!(ports.contains(&port), "{port} of {ports:?}");
    assert_eq!(client.tunnel.public_url, format!("tcp://localhost:{port}"));
    // A mebibyte each way through every node, intact, ended by the
    // visitor's half-close: the answer still comes back through the hop.
    let sent: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 253) as u8).collect();
    let expected: [u8; 32] = Sha256::digest(&sent).into();
    for node in &nodes {
        assert_eq!(echoed(at(node, port), sent.clone()).await, expected);
    }
    // Ten at once through another node.
    let each: Vec<_> = (0..10)
        .map(|_| tokio::spawn(echoed(at(&nodes[2], port), sent[..64 << 10].to_vec())))
        .collect();
    let expected: [u8; 32] = Sha256::digest(&sent[..64 << 10]).into();
    for one in each {
        assert_eq!(one.await.unwrap(), expected);
    }
    // The cluster's other ports are given to no tunnel: closed at once.
    let other = *ports.iter().find(|&&p| p != port).unwrap();
    let mut stream = TcpStream::connect(at(&nodes[1], other)).await.unwrap();
    let mut byte = [0; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_port_is_given_once_cluster_wide_and_goes_back_to_its_name_on_another_node() {
    let redis = TestRedis::start();
    let ports = [free_port(), free_port()];
    let nodes = tcp_nodes(&redis, &["a", "b"], &ports).await;
    let target = service(echo).await;
    let client = tcp_tunnel(&nodes[0], target, |c| c.tunnel.remote_port = Some(ports[0])).await;
    assert_eq!(client.tunnel.remote_port, Some(ports[0]));
    // Another tunnel on another node asking for it is refused, even under
    // the tunnel's own name (whose owner it cannot prove), and the port
    // still serves; one asking for none gets the other port, and then the
    // cluster has none left.
    let (code, message) = refused(&nodes[1], Some(ports[0])).await;
    assert_eq!(code, ErrorCode::PortUnavailable, "{message}");
    assert!(message.contains("in use"), "{message}");
    let name = client.tunnel.subdomain.clone();
    let thief = TestClient::start_with(&nodes[1], &target.to_string(), |c| {
        tcp(c);
        c.tunnel.subdomain = Some(name.clone());
        c.tunnel.remote_port = Some(ports[0]);
    })
    .await;
    assert!(
        matches!(
            thief,
            Err(ClientError::Refused {
                code: ErrorCode::PortUnavailable,
                ..
            })
        ),
        "{:?}",
        thief.map(|c| c.tunnel.remote_port)
    );
    let expected: [u8; 32] = Sha256::digest(b"still mine").into();
    for node in &nodes {
        assert_eq!(
            echoed(at(node, ports[0]), b"still mine".to_vec()).await,
            expected
        );
    }
    let second = tcp_tunnel(&nodes[1], target, |_| {}).await;
    assert_eq!(second.tunnel.remote_port, Some(ports[1]));
    let (code, message) = refused(&nodes[0], None).await;
    assert_eq!(code, ErrorCode::PortsExhausted, "{message}");
    drop(second);

    // Its client gone without a word: the port is held for its name.
    let secret = client.tunnel.reconnect_secret.clone();
    client.kill().await;
    cryptun_testkit::raw::eventually(cryptun_testkit::raw::WAIT, "the port held", || async {
        let (code, message) = refused(&nodes[1], Some(ports[0])).await;
        code == ErrorCode::PortUnavailable && message.contains("held")
    })
    .await;
    // Back with its name on the other node: its port too, reached at
    // either node.
    let back = tcp_tunnel(&nodes[1], target, |c| {
        c.tunnel.subdomain = Some(name.clone());
        c.tunnel.reconnect_secret = secret;
        c.tunnel.remote_port = Some(ports[0]);
    })
    .await;
    assert_eq!(back.tunnel.remote_port, Some(ports[0]));
    let expected: [u8; 32] = Sha256::digest(b"back again").into();
    for node in &nodes {
        let reached = cryptun_testkit::raw::eventually(
            cryptun_testkit::raw::WAIT,
            "the port reached through its new node",
            || async {
                let back = tokio::time::timeout(
                    Duration::from_secs(5),
                    echoed(at(node, ports[0]), b"back again".to_vec()),
                );
                matches!(back.await, Ok(sum) if sum == expected)
            },
        );
        reached.await;
    }
}

#[tokio::test]
async fn a_cluster_without_tcp_port_ranges_refuses_tcp_tunnels() {
    // On loopback a single server gives any port; a cluster only gives
    // ports of ranges every node listens on.
    let redis = TestRedis::start();
    let server = TestServer::start_with(TestServer::cluster_config(&redis.url(), "a")).await;
    let (code, message) = refused(&server, None).await;
    assert_eq!(code, ErrorCode::TcpDisabled);
    assert!(message.contains("--tcp-ports"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_port_reserved_in_the_cluster_goes_only_to_its_key_on_every_node() {
    let redis = TestRedis::start();
    let (reserved, free) = (free_port(), free_port());
    let mut nodes = Vec::new();
    for (i, name) in ["a", "b"].iter().enumerate() {
        let config = Config {
            auth: cryptun_server::AuthMode::Required,
            tcp_ports: TcpPorts::Ranges(vec![reserved..=reserved, free..=free]),
            ..TestServer::cluster_config(&redis.url(), name)
        };
        let ip = IpAddr::from([127, 0, 0, 2 + i as u8]);
        nodes.push(TestServer::start_on(SocketAddr::new(ip, 0), config).await);
    }
    let keys = cryptun_server::cluster::keys::SharedKeys::connect(&redis.url())
        .await
        .unwrap();
    let owner = keys.create_key("owner").await.unwrap();
    let other = keys.create_key("other").await.unwrap();
    keys.reserve_port(&owner.info.id, reserved).await.unwrap();
    let target = service(echo).await;
    let open = |node: usize, token: &cryptun_proto::Secret, port: Option<u16>| {
        let token = token.clone();
        tcp_tunnel(&nodes[node], target, move |c| {
            c.token = Some(token);
            c.tunnel.remote_port = port;
        })
    };
    // Another key, on either node: refused the reserved port, given the
    // other when asking for none, then none.
    for node in [0, 1] {
        let refused = TestClient::start_with(&nodes[node], &target.to_string(), |c| {
            tcp(c);
            c.token = Some(other.token.clone());
            c.tunnel.remote_port = Some(reserved);
        })
        .await;
        match refused {
            Err(ClientError::Refused { code, message }) => {
                assert_eq!(code, ErrorCode::PortUnavailable);
                assert!(message.contains("reserved"), "{message}");
            }
            Err(err) => panic!("refused otherwise: {err}"),
            Ok(c) => panic!("given {:?}", c.tunnel.remote_port),
        }
    }
    let given = open(1, &other.token, None).await;
    assert_eq!(given.tunnel.remote_port, Some(free));
    // Its key gets it, and it is reached at both nodes.
    let mine = open(0, &owner.token, Some(reserved)).await;
    assert_eq!(mine.tunnel.remote_port, Some(reserved));
    let expected: [u8; 32] = Sha256::digest(b"reserved").into();
    assert_eq!(
        echoed(at(&nodes[1], reserved), b"reserved".to_vec()).await,
        expected
    );
}
