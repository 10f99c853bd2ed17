//! TLS passthrough tunnels (`cryptun tls`): a connection to the HTTPS
//! listener whose SNI is a TLS tunnel's name is carried to the local TLS
//! service undecrypted: the visitor meets the local service's certificate,
//! not the server's. Other names on the same listener are terminated as
//! before. A ClientHello that arrives in many small pieces is still read
//! whole, and a server without an HTTPS listener refuses such tunnels.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use cryptun_client::{ClientConfig, ClientError, TunnelProtocol};
use cryptun_proto::ErrorCode;
use cryptun_testkit::tls::{HttpsVisitor, TlsFiles};
use cryptun_testkit::{Origin, TestClient, TestServer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A local TLS echo service with `files`' certificate (for one name), signed
/// by an authority of its own (`files.ca`), not the server's.
pub(crate) async fn local_tls_echo(files: &TlsFiles) -> std::net::SocketAddr {
    local_tls(files, None).await
}

/// A local TLS service with `files`' certificate: echoes, or with `tag`
/// answers each connection with it and closes.
pub(crate) async fn local_tls(
    files: &TlsFiles,
    tag: Option<&'static [u8]>,
) -> std::net::SocketAddr {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(cryptun_server::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Some(tag) = tag {
                    let _ = tls.write_all(tag).await;
                    let _ = tls.shutdown().await;
                    return;
                }
                let mut buf = [0; 4096];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

fn tls(config: &mut ClientConfig) {
    config.tunnel.protocol = TunnelProtocol::Tls;
}

/// A TLS tunnel named `name` on `server` to `target`.
pub(crate) async fn tunnel(
    server: &TestServer,
    target: std::net::SocketAddr,
    name: &str,
) -> TestClient {
    TestClient::start_with(server, &target.to_string(), |config| {
        tls(config);
        config.tunnel.subdomain = Some(name.to_owned());
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_tls_tunnel_meets_the_visitor_with_its_own_certificate() {
    let server = TestServer::start_tls(TestServer::test_config()).await;
    let https = server.tls.as_ref().unwrap();
    let files = TlsFiles::generate("secure.localhost");
    let client = tunnel(&server, local_tls_echo(&files).await, "secure").await;
    assert_eq!(client.tunnel.protocol, TunnelProtocol::Tls);
    assert_eq!(
        client.tunnel.public_url,
        format!("tls://secure.localhost:{}", https.addr.port())
    );
    assert_eq!(client.tunnel.remote_port, None);

    // Trusting only the local service's authority: the handshake succeeds
    // only if the server passed the connection through.
    let visitor = HttpsVisitor::new(https.addr, &files.ca);
    let mut stream = visitor.connect(Some("secure.localhost")).await.unwrap();
    stream.write_all(b"through, undecrypted").await.unwrap();
    let mut back = [0; 20];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"through, undecrypted");

    // Another name on the same listener is the server's to terminate.
    let origin = Origin::start().await;
    let web = TestClient::start(&server, &origin.target()).await;
    let host = web.host.clone();
    let name = host.split(':').next().unwrap();
    let ours = HttpsVisitor::new(https.addr, &https.ca);
    let reply = ours.get(Some(name), &host, "/echo").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // And the TLS tunnel's name is not served the server's certificate.
    assert!(ours.connect(Some("secure.localhost")).await.is_err());
}

/// A stream whose first flight (until it first reads: the ClientHello)
/// goes out at most 64 bytes at a time, a few milliseconds apart: a
/// ClientHello in many reads.
struct Trickle {
    inner: TcpStream,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    answered: bool,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.answered = true;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Trickle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.answered {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        if let Some(pause) = &mut self.pause {
            std::task::ready!(pause.as_mut().poll(cx));
            self.pause = None;
        }
        let n = buf.len().min(64);
        let written = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, &buf[..n]))?;
        self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(2))));
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_client_hello_in_many_small_pieces_is_still_routed_by_its_name() {
    let server = TestServer::start_tls(TestServer::test_config()).await;
    let https = server.tls.as_ref().unwrap();
    let files = TlsFiles::generate("slow.localhost");
    let _client = tunnel(&server, local_tls_echo(&files).await, "slow").await;
    let connector = HttpsVisitor::new(https.addr, &files.ca).connector();
    let tcp = TcpStream::connect(https.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let trickle = Trickle {
        inner: tcp,
        pause: None,
        answered: false,
    };
    let name = ServerName::try_from("slow.localhost").unwrap();
    let mut stream = connector.connect(name, trickle).await.unwrap();
    stream.write_all(b"piecemeal").await.unwrap();
    let mut back = [0; 9];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"piecemeal");
}

#[tokio::test]
async fn a_server_without_an_https_listener_refuses_tls_tunnels() {
    let server = TestServer::start().await;
    let refused = TestClient::start_with(&server, "127.0.0.1:1", tls).await;
    match refused {
        Err(ClientError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::TlsDisabled);
            assert!(message.contains("--tls-listen"), "{message}");
        }
        Err(err) => panic!("refused otherwise: {err}"),
        Ok(_) => panic!("a TLS tunnel without an HTTPS listener"),
    }
}

#[tokio::test]
async fn plain_http_for_a_tls_tunnels_name_is_told_where_to_connect() {
    let server = TestServer::start_tls(TestServer::test_config()).await;
    let files = TlsFiles::generate("secure.localhost");
    let client = tunnel(&server, local_tls_echo(&files).await, "secure").await;
    let host = server.host_of(&client.tunnel.subdomain);
    let reply = cryptun_testkit::Visitor::new(server.addr)
        .get(&host, "/")
        .await;
    assert_eq!(reply.status, 404);
    assert!(
        reply.text().contains("tls://secure.localhost:"),
        "{}",
        reply.text()
    );
}

/// A ClientHello that never ends: records of a handshake message declared
/// far larger than any hello, sent past the 64 KiB the server reads for
/// one. The server closes the connection (counted as a failed handshake)
/// rather than keep reading or buffering it.
#[tokio::test]
async fn a_client_hello_that_never_ends_is_cut_off() {
    let server = TestServer::start_tls(TestServer::test_config()).await;
    let https = server.tls.as_ref().unwrap();
    let mut tcp = TcpStream::connect(https.addr).await.unwrap();
    // ClientHello (1) of 16 MiB - 1, in 16 KiB handshake records.
    let mut sent = 0;
    let mut closed = false;
    for i in 0..8 {
        let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00];
        let mut body = vec![0u8; 0x4000];
        if i == 0 {
            body[..6].copy_from_slice(&[0x01, 0xff, 0xff, 0xff, 0x03, 0x03]);
        }
        record.extend_from_slice(&body);
        if tcp.write_all(&record).await.is_err() {
            closed = true;
            break;
        }
        sent += record.len();
    }
    if !closed {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest));
        assert!(
            read.await.is_ok(),
            "the connection is closed, not kept open"
        );
    }
    assert!(sent <= 8 * (0x4000 + 5));
    let scraper = cryptun_testkit::Visitor::new(server.addr);
    let failed = r#"cryptun_tls_handshake_failures_total{reason="error"}"#;
    cryptun_testkit::raw::eventually(cryptun_testkit::raw::WAIT, "counted", || async {
        scraper.metric(failed).await >= 1.0
    })
    .await;
}
