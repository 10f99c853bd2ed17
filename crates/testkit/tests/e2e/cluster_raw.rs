//! TCP and TLS tunnels in a cluster: a visitor who reaches a node other
//! than the one serving the tunnel is carried there over the internal hop
//! (an upgraded connection), undecrypted, both directions intact; the hop
//! takes such connections only from nodes and only for tunnels it serves.

use std::time::Duration;

use cryptun_testkit::server::CLUSTER_SECRET;
use cryptun_testkit::tls::{HttpsVisitor, TlsFiles};
use cryptun_testkit::visitor::{raw_exchange, status_of};
use cryptun_testkit::{Origin, TestClient, TestRedis, TestServer, sha256_hex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::hop_of;
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
