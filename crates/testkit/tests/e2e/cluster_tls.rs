//! TLS in a cluster, on a real `redis-server`, nodes in one process:
//!
//! - nodes serving visitors over HTTPS: a visitor's HTTPS request for a
//!   tunnel on another node is forwarded and answered, not redirected again
//!   or refused as misdirected by the node that serves it;
//! - the internal hop over TLS with both ends' certificates checked
//!   (`--cluster-tls-*`): requests, bodies and WebSocket pass; a plain HTTP
//!   request, a TLS client without a certificate and one whose certificate
//!   another CA signed are refused at the door; a node of another CA can
//!   neither forward to the others nor be forwarded to.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use cryptun_server::Certs;
use cryptun_server::cluster::peer_tls::PeerTlsFiles;
use cryptun_testkit::tls::{HttpsVisitor, TlsFiles};
use cryptun_testkit::visitor::raw_exchange;
use cryptun_testkit::wsecho::{self, WsEcho};
use cryptun_testkit::{
    Origin, TestClient, TestRedis, TestServer, Visitor, pattern, sha256_hex, within,
};

/// The nodes' domain: a wildcard certificate for it is one the verifier
/// takes (`*.localhost` is not), and it resolves to loopback.
const DOMAIN: &str = "tunnels.localhost";

/// Node `name` of the cluster on `redis`, serving HTTPS with `files`, its
/// plain listener redirecting to it.
async fn https_node(redis: &TestRedis, name: &str, files: &TlsFiles) -> TestServer {
    let config = cryptun_server::Config {
        domain: DOMAIN.into(),
        redirect_http: true,
        ..TestServer::cluster_config(&redis.url(), name)
    };
    let certs = Certs::load(&files.cert, &files.key).unwrap();
    TestServer::start_tls_with(config, certs, files.ca.clone(), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_https_visitor_is_served_through_another_node() {
    let redis = TestRedis::start();
    let files = TlsFiles::generate(DOMAIN);
    let a = https_node(&redis, "a", &files).await;
    let b = https_node(&redis, "b", &files).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&b, &origin.target()).await;
    let name = format!("{}.{DOMAIN}", client.tunnel.subdomain);

    for node in [&a, &b] {
        let tls = node.tls.as_ref().unwrap();
        let visitor = HttpsVisitor::new(tls.addr, &files.ca);
        let host = format!("{name}:{}", tls.addr.port());
        let reply = visitor.get(Some(&name), &host, "/echo").await;
        assert_eq!(reply.status, 200, "via {}: {}", tls.addr, reply.text());
        let echoed = reply.json();
        let proto = echoed["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|pair| pair[0] == "x-forwarded-proto")
            .map(|pair| pair[1].clone());
        assert_eq!(proto, Some("https".into()), "{echoed}");
    }
}

/// A cluster CA and, signed by it, a node certificate for 127.0.0.1 usable
/// as server and client, in a folder deleted on drop.
struct PeerCa {
    files: PeerTlsFiles,
    _dir: tempfile::TempDir,
}

impl PeerCa {
    fn generate() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca.self_signed(&ca_key).unwrap();
        let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| -> PathBuf { dir.path().join(name) };
        std::fs::write(path("ca.pem"), ca.pem()).unwrap();
        std::fs::write(path("node.pem"), leaf.pem()).unwrap();
        std::fs::write(path("node-key.pem"), key.serialize_pem()).unwrap();
        PeerCa {
            files: PeerTlsFiles {
                cert: path("node.pem"),
                key: path("node-key.pem"),
                ca: path("ca.pem"),
                name: None,
            },
            _dir: dir,
        }
    }
}

/// Node `name` on `redis`, its hop over TLS with `ca`'s certificates.
async fn tls_hop_node(redis: &TestRedis, name: &str, ca: &PeerCa) -> TestServer {
    let mut config = TestServer::cluster_config(&redis.url(), name);
    config.cluster.as_mut().unwrap().tls = Some(ca.files.clone());
    TestServer::start_with(config).await
}

/// Where node `name` serves the hop, as it told Redis.
fn hop_of(redis: &TestRedis, name: &str) -> SocketAddr {
    let reply = redis.command(&["GET", &format!("cryptun:1:node:{{{name}}}")]);
    let value = reply.lines().nth(1).expect("the node is registered");
    value.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// A TLS handshake with `hop`, trusting `ca`, presenting `ca`'s node
/// certificate if `with_cert`, then a request: what came back, or the
/// error that ended it.
async fn tls_request(hop: SocketAddr, ca: &PeerCa, with_cert: bool) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca.files.ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(cryptun_server::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = if with_cert {
        let chain = CertificateDer::pem_file_iter(&ca.files.cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(&ca.files.key).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(hop).await.unwrap();
    let name = ServerName::IpAddress(hop.ip().into());
    let exchange = async {
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    within("a TLS exchange with the hop", exchange).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hop_over_tls_carries_requests_and_refuses_strangers() {
    let redis = TestRedis::start();
    let ca = PeerCa::generate();
    let a = tls_hop_node(&redis, "a", &ca).await;
    let b = tls_hop_node(&redis, "b", &ca).await;
    let origin = Origin::start().await;
    let client = TestClient::start(&b, &origin.target()).await;
    let host = b.host_of(&client.tunnel.subdomain);

    // Through A over the TLS hop: a GET, 4 MiB up, a WebSocket.
    let visitor = Visitor::new(a.addr);
    let reply = visitor.get(&host, "/echo/over-tls").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["path"], "/echo/over-tls");
    let body = pattern(4 << 20);
    let req = visitor
        .builder("POST", &host, "/sha256")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let reply = within("4 MiB up", visitor.fetch(req)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["sha256"], sha256_hex(&body));
    let echo = WsEcho::start().await;
    let ws_client = TestClient::start(&b, &echo.target()).await;
    let ws_host = b.host_of(&ws_client.tunnel.subdomain);
    let mut ws = within("ws through a", wsecho::connect(a.addr, &ws_host, "/"))
        .await
        .expect("the upgrade goes through the TLS hop");
    ws.send(Message::text("over tls")).await.unwrap();
    let back = within("the echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(back.into_text().unwrap().as_str(), "over tls");
    // The dashboard's gathering goes over it too.
    let snapshot = visitor.admin_get("/api/dashboard").await.json();
    assert_eq!(snapshot["nodes"].as_array().unwrap().len(), 2, "{snapshot}");
    assert!(
        snapshot["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["reachable"] == true),
        "{snapshot}"
    );

    // At B's hop: plain HTTP gets no answer; TLS without a certificate, or
    // with one of another CA, fails; with the cluster's, the door opens
    // (and the secret is still asked for).
    let hop = hop_of(&redis, "b");
    let plain = raw_exchange(
        hop,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(!plain.starts_with("HTTP/"), "plain HTTP answered: {plain}");
    let without = tls_request(hop, &ca, false).await;
    assert!(
        without
            .as_ref()
            .map_or(true, |answer| !answer.starts_with("HTTP/")),
        "a client without a certificate was answered: {without:?}"
    );
    let stranger = PeerCa::generate();
    // Trusting the cluster's CA but presenting a stranger's certificate.
    let mixed = PeerCa {
        files: PeerTlsFiles {
            ca: ca.files.ca.clone(),
            ..stranger.files.clone()
        },
        _dir: tempfile::tempdir().unwrap(),
    };
    let foreign = tls_request(hop, &mixed, true).await;
    assert!(
        foreign
            .as_ref()
            .map_or(true, |answer| !answer.starts_with("HTTP/")),
        "a certificate of another CA was answered: {foreign:?}"
    );
    let member = tls_request(hop, &ca, true).await.unwrap();
    assert!(member.starts_with("HTTP/1.1 403"), "{member}");
    assert!(member.contains("hop_forbidden"), "{member}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_of_another_ca_is_no_peer() {
    let redis = TestRedis::start();
    let ca = PeerCa::generate();
    let a = tls_hop_node(&redis, "a", &ca).await;
    let b = tls_hop_node(&redis, "b", &ca).await;
    let stranger = PeerCa::generate();
    let c = tls_hop_node(&redis, "c", &stranger).await;
    let origin = Origin::start().await;
    let on_b = TestClient::start(&b, &origin.target()).await;
    let on_c = TestClient::start(&c, &origin.target()).await;

    // A and B, of one CA, serve each other's tunnels; C's requests to B
    // and A's to C fail their handshakes: 503 node_unreachable.
    let b_host = b.host_of(&on_b.tunnel.subdomain);
    let c_host = c.host_of(&on_c.tunnel.subdomain);
    assert_eq!(Visitor::new(a.addr).get(&b_host, "/echo").await.status, 200);
    for (via, host) in [(&c, &b_host), (&a, &c_host)] {
        let reply = Visitor::new(via.addr).get(host, "/echo").await;
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert_eq!(reply.headers["x-cryptun-error"], "node_unreachable");
    }
}
