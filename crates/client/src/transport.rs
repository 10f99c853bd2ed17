//! The byte stream under the WebSocket: TCP for `ws://`, and TLS over TCP
//! for `wss://`, to one endpoint (a server's address, or its name).
//!
//! The server's certificate is checked against Mozilla's root programme (the
//! `webpki-roots` list, the same everywhere, independent of the machine's
//! store) plus, with `--ca FILE`, the authorities in that file: a
//! development server's own CA (`cryptun server --tls-self-signed`) or a
//! company one. A certificate that does not check out stops the connection
//! with [`ClientError::Untrusted`], which says how to fix it.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{CertificateError, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use crate::ClientError;
use crate::local_tls::add_pem_roots;
use crate::servers::{Endpoint, host_port};

/// A connection to the server, plain or TLS.
pub(crate) type Stream = Either<TcpStream, TlsStream<TcpStream>>;

/// Opens a TCP connection to `endpoint` (its address, or its host by
/// name) and, for `wss://`, completes a TLS handshake for the URL's host
/// name that trusts the public roots and whatever `ca` holds. Returns the
/// stream and the address it reached.
pub(crate) async fn connect(
    endpoint: &Endpoint,
    ca: Option<&Path>,
) -> Result<(Stream, SocketAddr), ClientError> {
    let failed = |err: io::Error| ClientError::Connect {
        url: endpoint.to_string(),
        source: Box::new(err.into()),
    };
    let invalid = || {
        failed(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a server URL",
        ))
    };
    let tls = endpoint.url.starts_with("wss://");
    let (host, _) = host_port(&endpoint.url).ok_or_else(invalid)?;
    let (dial, port) = endpoint.dial().ok_or_else(invalid)?;
    // The connector is ready before the TCP connection: a bad `--ca` is an
    // error of its own, whether or not the server is up.
    let connector = tls.then(|| connector(ca)).transpose()?;
    let tcp = TcpStream::connect((dial.as_str(), port))
        .await
        .map_err(failed)?;
    let _ = tcp.set_nodelay(true);
    let peer = tcp.peer_addr().map_err(failed)?;
    let Some(connector) = connector else {
        return Ok((Either::Left(tcp), peer));
    };
    // The name, not the address dialled: the certificate is for the name.
    let name = ServerName::try_from(host.clone())
        .map_err(|e| failed(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    match connector.connect(name, tcp).await {
        Ok(stream) => Ok((Either::Right(stream), peer)),
        Err(err) => Err(handshake_error(endpoint, &host, err)),
    }
}

/// A TLS connector trusting the public roots and the certificates in `ca`.
fn connector(ca: Option<&Path>) -> Result<TlsConnector, ClientError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca {
        add_pem_roots(&mut roots, path).map_err(|reason| ClientError::Ca {
            path: path.to_owned(),
            reason,
        })?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Ca {
        path: ca.map(Path::to_owned).unwrap_or_default(),
        reason: e.to_string(),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Turns a failed handshake into [`ClientError::Untrusted`] when the
/// server's certificate was the trouble.
fn handshake_error(endpoint: &Endpoint, host: &str, err: io::Error) -> ClientError {
    let url = endpoint.to_string();
    let certificate = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|e| match e {
            rustls::Error::InvalidCertificate(reason) => Some(reason),
            _ => None,
        });
    match certificate {
        Some(reason) => ClientError::Untrusted {
            url,
            reason: describe(reason, host),
        },
        None => ClientError::Connect {
            url,
            source: Box::new(err.into()),
        },
    }
}

fn describe(reason: &CertificateError, host: &str) -> String {
    match reason {
        CertificateError::UnknownIssuer => "it is not signed by an authority this client \
            trusts; use --ca FILE for a self-signed server"
            .into(),
        CertificateError::BadSignature => "its signature does not verify".into(),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "it has expired".into()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "it is not valid yet".into()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("it is not valid for {host}; connect by a name it covers")
        }
        other => format!("{other:?}; use --ca FILE for a self-signed server"),
    }
}
