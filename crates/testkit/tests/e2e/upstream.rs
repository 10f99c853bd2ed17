//! What the client speaks to the local service (`--upstream`): HTTP/2 with
//! prior knowledge to a plain target (`h2c`), HTTP/2 by ALPN to an
//! `https://` one (`http2`). A visitor's requests arrive as HTTP/2, with
//! their authority and bodies intact, many at once on one connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use cryptun_client::{LocalTls, Upstream};
use cryptun_testkit::tls::TlsFiles;
use cryptun_testkit::{TestClient, TestServer, Visitor, sha256_hex};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

/// An HTTP/2-only local service (TLS with ALPN `h2` if `files`) that
/// answers `VERSION AUTHORITY SHA256(body)`; and how many connections it
/// accepted.
async fn h2_service(files: Option<&TlsFiles>) -> (SocketAddr, Arc<AtomicUsize>) {
    let acceptor = files.map(|files| {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
        let mut config =
            rustls::ServerConfig::builder_with_provider(cryptun_server::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let version = format!("{:?}", req.version());
                    let authority = req.uri().authority().map(ToString::to_string);
                    let body = req.into_body().collect().await?.to_bytes();
                    let answer = format!(
                        "{version} {} {}",
                        authority.unwrap_or_default(),
                        sha256_hex(&body)
                    );
                    Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from(answer))))
                });
                let h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                let _ = match acceptor {
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        h2.serve_connection(TokioIo::new(tls), service).await
                    }
                    None => h2.serve_connection(TokioIo::new(tcp), service).await,
                };
            });
        }
    });
    (addr, accepted)
}

/// What `server`'s tunnel `host` answers a POST of `body` with.
async fn answer(server: &TestServer, host: &str, body: &[u8]) -> String {
    let reply = Visitor::new(server.addr)
        .call("POST", host, "/x?y=1", body.to_vec())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn h2c_speaks_http2_with_prior_knowledge_on_one_connection() {
    let server = TestServer::start().await;
    let (service, accepted) = h2_service(None).await;
    let client = TestClient::start_with(&server, &service.to_string(), |c| {
        c.tunnel.target.set_upstream(Upstream::H2c).unwrap();
    })
    .await
    .unwrap();
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let said = answer(&server, &client.host, &body).await;
    assert_eq!(
        said,
        format!("HTTP/2.0 {} {}", client.host, sha256_hex(&body))
    );
    // Twenty at once, on the one connection.
    let all: Vec<_> = (0..20)
        .map(|_| {
            let (addr, host) = (server.addr, client.host.clone());
            tokio::spawn(async move { Visitor::new(addr).get(&host, "/").await.status.as_u16() })
        })
        .collect();
    for one in all {
        assert_eq!(one.await.unwrap(), 200);
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_speaks_http2_by_alpn_to_an_https_target() {
    let server = TestServer::start().await;
    let files = TlsFiles::generate("localhost");
    let (service, _) = h2_service(Some(&files)).await;
    let target = format!("https://localhost:{}", service.port());
    let client = TestClient::start_with(&server, &target, |c| {
        let tls = LocalTls {
            ca: Some(files.ca.clone()),
            ..LocalTls::default()
        };
        c.tunnel.target.set_local_tls(tls).unwrap();
        c.tunnel.target.set_upstream(Upstream::Http2).unwrap();
    })
    .await
    .unwrap();
    let said = answer(&server, &client.host, b"over TLS").await;
    assert_eq!(
        said,
        format!("HTTP/2.0 {} {}", client.host, sha256_hex(b"over TLS"))
    );
}

#[test]
fn each_upstream_is_for_its_kind_of_target() {
    let mut plain = cryptun_client::Target::parse("3000").unwrap();
    assert!(plain.set_upstream(Upstream::Http2).is_err());
    plain.set_upstream(Upstream::H2c).unwrap();
    let mut https = cryptun_client::Target::parse("https://localhost:8443").unwrap();
    assert!(https.set_upstream(Upstream::H2c).is_err());
    https.set_upstream(Upstream::Http2).unwrap();
    assert_eq!("h2c".parse(), Ok(Upstream::H2c));
    assert!("h3".parse::<Upstream>().is_err());
}
