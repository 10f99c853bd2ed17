//! HTTPS fixtures: development certificates in temporary folders, and a
//! visitor that opens TLS connections with any SNI (or none) and sends any
//! Host over them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::Reply;

/// An operator's certificate files, as an ACME client leaves them: a CA,
/// and signed by it a wildcard certificate for `*.domain` and `domain`, in
/// a folder deleted on drop.
pub struct TlsFiles {
    /// The CA certificate, for clients to trust.
    pub ca: PathBuf,
    /// The certificate chain (leaf, then CA).
    pub cert: PathBuf,
    /// The leaf's private key.
    pub key: PathBuf,
    dir: tempfile::TempDir,
}

impl TlsFiles {
    /// A fresh CA and wildcard certificate for `domain`.
    pub fn generate(domain: &str) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca.self_signed(&ca_key).unwrap();
        let leaf = CertificateParams::new(vec![format!("*.{domain}"), domain.to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("fullchain.pem"),
            key: dir.path().join("privkey.pem"),
            dir,
        };
        std::fs::write(&files.ca, ca.pem()).unwrap();
        std::fs::write(&files.cert, leaf.pem() + &ca.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    /// The folder holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The leaf certificate, as the server presents it.
    pub fn leaf(&self) -> CertificateDer<'static> {
        leaf_of(&self.cert)
    }
}

/// The first certificate in a PEM file.
pub fn leaf_of(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

/// Opens HTTPS connections to one server address, trusting one CA file.
#[derive(Clone)]
pub struct HttpsVisitor {
    pub addr: SocketAddr,
    connector: TlsConnector,
}

impl HttpsVisitor {
    /// A visitor of `addr` trusting the certificates in `ca` only.
    pub fn new(addr: SocketAddr, ca: &Path) -> Self {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(cryptun_server::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        HttpsVisitor {
            addr,
            connector: TlsConnector::from(Arc::new(config)),
        }
    }

    /// The connector its connections are made with (trusting its CA).
    pub fn connector(&self) -> TlsConnector {
        self.connector.clone()
    }

    /// A TLS connection whose handshake names `sni`; `None` connects by IP
    /// address, which sends no SNI.
    pub async fn connect(&self, sni: Option<&str>) -> std::io::Result<TlsStream<TcpStream>> {
        let name = match sni {
            Some(sni) => ServerName::try_from(sni.to_owned()).unwrap(),
            None => ServerName::IpAddress(self.addr.ip().into()),
        };
        let tcp = TcpStream::connect(self.addr).await?;
        self.connector.connect(name, tcp).await
    }

    /// The leaf certificate a new connection is served.
    pub async fn served_leaf(&self, sni: &str) -> std::io::Result<CertificateDer<'static>> {
        let stream = self.connect(Some(sni)).await?;
        let certs = stream.get_ref().1.peer_certificates().unwrap();
        Ok(certs[0].clone().into_owned())
    }

    /// `GET path` with `Host: host` on a new connection made for `sni`.
    pub async fn get(&self, sni: Option<&str>, host: &str, path: &str) -> Reply {
        let stream = self.connect(sni).await.expect("TLS handshake");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", host)
            .body(Full::<Bytes>::default())
            .unwrap();
        let resp = sender
            .send_request(req)
            .await
            .unwrap_or_else(|e| panic!("request failed: {e:?}"));
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

/// What a [`TestServer`](crate::TestServer) started with TLS has.
pub struct TestTls {
    /// The HTTPS listener.
    pub addr: SocketAddr,
    /// The certificates it serves; `reload` re-reads their files.
    pub certs: cryptun_server::Certs,
    /// The CA clients trust, for `--ca`.
    pub ca: PathBuf,
    /// The development authority's data folder, if that is the source.
    pub data_dir: Option<tempfile::TempDir>,
}

impl TestTls {
    /// An HTTPS visitor trusting this server's CA.
    pub fn visitor(&self) -> HttpsVisitor {
        HttpsVisitor::new(self.addr, &self.ca)
    }
}
