//! TLS between nodes, with both ends authenticated: with
//! `--cluster-tls-cert/-key/-ca`, the internal hop is served and dialled
//! over TLS 1.3 only, each node presenting its certificate both as a
//! server and as a client, and accepting a peer only if the cluster's CA
//! signed it (a connection without such a certificate fails its
//! handshake). A peer is checked against `--cluster-tls-name` when given
//! (one DNS name in every node's certificate), else against the IP
//! address it is dialled at (an IP address in each node's certificate).
//! The cluster secret is still proven on every request over it.
//!
//! Without those options the hop is plain HTTP, for a private network.
//!
//! [`PeerConnector`] dials peers for the hyper client of the hop and of the
//! listings: plain, or TLS over the same TCP connection.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::SingleCertAndKey;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::edge::tls::{TlsError, provider, read_pair, read_roots};

/// Where a node's certificate for the hop, and the cluster's CA, are.
#[derive(Debug, Clone)]
pub struct PeerTlsFiles {
    /// This node's certificate chain (PEM, leaf first), for serving and
    /// dialling; it needs both the serverAuth and clientAuth usages if it
    /// names any.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA that signs every node's certificate (PEM).
    pub ca: PathBuf,
    /// The DNS name every node's certificate carries, checked instead of
    /// the peer's IP address ([`check_name`] first).
    pub name: Option<String>,
}

/// `name` if a certificate can name it (a DNS name or an IP address), for
/// the command line to refuse `--cluster-tls-name` itself.
pub fn check_name(name: &str) -> Result<String, String> {
    ServerName::try_from(name)
        .map(|_| name.to_owned())
        .map_err(|e| format!("not a DNS name or IP address: {e}"))
}

/// The hop's TLS, both ways.
#[derive(Clone)]
pub(crate) struct PeerTls {
    pub(crate) acceptor: TlsAcceptor,
    connector: TlsConnector,
    name: Option<ServerName<'static>>,
}

impl PeerTls {
    /// Reads `files` and builds both ends.
    pub(crate) fn load(files: &PeerTlsFiles) -> Result<Self, TlsError> {
        let pair = Arc::new(read_pair(&files.cert, &files.key)?);
        let roots = Arc::new(read_roots(&files.ca)?);
        let ca_error = |reason: String| TlsError::Pem {
            path: files.ca.clone(),
            reason,
        };
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
            .build()
            .map_err(|e| ca_error(e.to_string()))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ca_error(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(Arc::clone(&pair))));
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ca_error(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(pair)));
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = match &files.name {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    // check_name refused it on the command line already.
                    .map_err(|e| ca_error(format!("--cluster-tls-name {name:?}: {e}")))?,
            ),
            None => None,
        };
        Ok(PeerTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            name,
        })
    }
}

/// Dials peers: plain TCP, or TLS with this node's certificate.
#[derive(Clone)]
pub(crate) struct PeerConnector {
    tcp: HttpConnector,
    tls: Option<PeerTls>,
}

impl PeerConnector {
    /// A connector giving up on a connection after `connect_timeout`.
    pub(crate) fn new(tls: Option<PeerTls>, connect_timeout: Duration) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(connect_timeout));
        tcp.set_nodelay(true);
        PeerConnector { tcp, tls }
    }
}

impl tower_service::Service<Uri> for PeerConnector {
    type Response = PeerStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PeerStream>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp.poll_ready(cx).map_err(io::Error::other)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        let ip: Option<IpAddr> = uri.host().and_then(|h| h.parse().ok());
        let connecting = self.tcp.call(uri);
        Box::pin(async move {
            let tcp = connecting.await.map_err(io::Error::other)?;
            let Some(tls) = tls else {
                return Ok(PeerStream::Plain(tcp));
            };
            let name = match (tls.name, ip) {
                (Some(name), _) => name,
                (None, Some(ip)) => ServerName::IpAddress(ip.into()),
                (None, None) => return Err(io::Error::other("a peer's address is not an IP")),
            };
            let stream = tls.connector.connect(name, tcp.into_inner()).await?;
            Ok(PeerStream::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

/// A connection to a peer.
pub(crate) enum PeerStream {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for PeerStream {
    fn connected(&self) -> Connected {
        match self {
            PeerStream::Plain(tcp) => tcp.connected(),
            PeerStream::Tls(tls) => tls.inner().get_ref().0.connected(),
        }
    }
}

impl Read for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
