//! TLS to an `https://` local service (`cryptun http https://localhost:8443`).
//!
//! Its certificate is checked for the target's host name (also sent as SNI)
//! against the machine's own trust store, where development tools such as
//! mkcert install their authority, plus the authorities of `--local-ca
//! FILE`. `--local-insecure` checks nothing but the handshake's signatures:
//! for self-signed development certificates, and the CLI warns about it.
//! Unlike the server connection (`transport.rs`, Mozilla's roots the same
//! everywhere), a local service is the machine's own business, so the
//! machine's store decides.
//!
//! A refused certificate fails the request with a reason that says what to
//! do ([`LocalError::Certificate`]): the visitor's 502 page and the
//! client's request line both show it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::local::LocalError;

/// How an `https://` target's certificate is trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LocalTls {
    /// A PEM file of authorities to trust besides the system's
    /// (`--local-ca`).
    pub ca: Option<PathBuf>,
    /// Trust any certificate (`--local-insecure`).
    pub insecure: bool,
    /// Offer HTTP/2 by ALPN (`--upstream http2`), not HTTP/1.1.
    pub h2: bool,
}

/// Trust settings that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LocalTlsError {
    /// The `--local-ca` file is unreadable or holds no usable authority.
    #[error("cannot use --local-ca {}: {reason}", path.display())]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

impl LocalTls {
    /// Builds the settings to see that they can be used (a bad
    /// `--local-ca` is an error at start rather than at the first request),
    /// and drops them: [`Target::check_tls`](crate::Target::check_tls)
    /// checks and keeps them for the target's connections.
    pub fn check(&self) -> Result<(), LocalTlsError> {
        self.connector().map(drop)
    }

    fn connector(&self) -> Result<TlsConnector, LocalTlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?;
        let mut config = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
                .with_no_client_auth()
        } else {
            builder
                .with_root_certificates(self.roots()?)
                .with_no_client_auth()
        };
        // The local connection speaks HTTP/1.1 (upgrades included), or
        // with `--upstream http2` HTTP/2.
        config.alpn_protocols = match self.h2 {
            true => vec![b"h2".to_vec()],
            false => vec![b"http/1.1".to_vec()],
        };
        Ok(TlsConnector::from(Arc::new(config)))
    }

    /// The machine's trust store, and the `--local-ca` file's authorities.
    fn roots(&self) -> Result<RootCertStore, LocalTlsError> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for err in &native.errors {
            tracing::debug!(%err, "reading the system's certificate authorities");
        }
        roots.add_parsable_certificates(native.certs);
        if let Some(path) = &self.ca {
            add_pem_roots(&mut roots, path).map_err(|reason| LocalTlsError::Ca {
                path: path.clone(),
                reason,
            })?;
        }
        Ok(roots)
    }
}

/// Adds every certificate of the PEM file at `path` to `roots`; the reason
/// if it cannot (unreadable, no certificate, not a CA certificate).
pub(crate) fn add_pem_roots(roots: &mut RootCertStore, path: &Path) -> Result<(), String> {
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block in the file".into());
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    Ok(())
}

/// The connector of one target's trust settings, built once and shared by
/// every clone of the target (each session's pool, the inspector's
/// replays): reading the system's trust store is slow and blocking. Built
/// when the target is checked ([`Target::check_tls`](crate::Target::check_tls)),
/// else at its first connection, on a blocking thread.
///
/// A cache of what the settings say, so it takes no part in a target's
/// equality or hash: two targets are the same whether or not theirs is
/// built yet.
#[derive(Clone, Default)]
pub(crate) struct Connector(Arc<OnceCell<TlsConnector>>);

impl Connector {
    /// Builds the connector for `tls` now, unless it already is.
    pub(crate) fn build(&self, tls: &LocalTls) -> Result<(), LocalTlsError> {
        if self.0.get().is_none() {
            // Lost to a concurrent build: theirs is as good.
            let _ = self.0.set(tls.connector()?);
        }
        Ok(())
    }

    /// Completes a TLS handshake on `tcp` for `host` (the name checked and
    /// sent as SNI) as `tls` says.
    pub(crate) async fn handshake(
        &self,
        tls: &LocalTls,
        host: &str,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>, LocalError> {
        let connector = self
            .0
            .get_or_try_init(|| {
                let tls = tls.clone();
                async move {
                    tokio::task::spawn_blocking(move || tls.connector())
                        .await
                        .map_err(|e| LocalError::Tls(io::Error::other(e)))?
                        .map_err(LocalError::TlsSetup)
                }
            })
            .await?;
        // `[::1]` in a URL, `::1` as a name.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(bare.to_owned())
            .map_err(|e| LocalError::Tls(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        connector
            .connect(name, tcp)
            .await
            .map_err(|err| handshake_error(err, host))
    }
}

impl PartialEq for Connector {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Connector {}

impl std::hash::Hash for Connector {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.0.initialized() {
            "built"
        } else {
            "not built"
        };
        f.write_str(state)
    }
}

/// What to do about a local service's certificate this machine does not
/// trust: said in the request line and on the browser's page alike.
pub(crate) const CERTIFICATE_ADVICE: &str = "trust its authority with --local-ca FILE, or skip \
    the check for a development certificate with --local-insecure";

/// A failed handshake: [`LocalError::Certificate`] when the certificate was
/// the trouble, saying what to do about it.
fn handshake_error(err: io::Error, host: &str) -> LocalError {
    let certificate = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|e| match e {
            rustls::Error::InvalidCertificate(reason) => Some(reason),
            _ => None,
        });
    let Some(reason) = certificate else {
        return LocalError::Tls(err);
    };
    let why = match reason {
        CertificateError::UnknownIssuer => {
            format!("it is not signed by an authority this machine trusts; {CERTIFICATE_ADVICE}")
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("it is not valid for {host}; use a name it covers, or --local-insecure")
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "it has expired; renew it, or --local-insecure".to_owned()
        }
        other => format!("{other:?}; {CERTIFICATE_ADVICE}"),
    };
    LocalError::Certificate(why)
}

/// `--local-insecure`: any certificate, but a handshake still signed by
/// the key of the certificate presented.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_local_ca_is_refused_with_the_reason() {
        let missing = LocalTls {
            ca: Some("/nonexistent/ca.pem".into()),
            insecure: false,
            h2: false,
        };
        let err = missing.check().expect_err("a missing file");
        assert!(
            err.to_string()
                .starts_with("cannot use --local-ca /nonexistent/ca.pem: "),
            "{err}"
        );
        let dir = std::env::temp_dir().join(format!("cryptun-local-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a folder");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("written");
        let err = LocalTls {
            ca: Some(empty),
            insecure: false,
            h2: false,
        }
        .check()
        .expect_err("no PEM");
        assert!(err.to_string().contains("no CERTIFICATE block"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
        assert!(LocalTls::default().check().is_ok());
        let insecure = LocalTls {
            ca: None,
            insecure: true,
            h2: false,
        };
        assert!(insecure.check().is_ok());
    }

    #[test]
    fn a_checked_target_keeps_its_connector_for_every_clone() {
        let mut target = crate::Target::parse("https://localhost:8443").unwrap();
        let built = |t: &crate::Target| t.tls().unwrap().1.0.initialized();
        let before = target.clone();
        assert!(!built(&target));
        target.check_tls().unwrap();
        // Clones made before and after share it: no pool builds its own.
        assert!(built(&before) && built(&target.clone()));
        assert_eq!(before, target, "not part of the target's identity");
        // New settings, a new connector.
        let insecure = LocalTls {
            ca: None,
            insecure: true,
            h2: false,
        };
        target.set_local_tls(insecure).unwrap();
        assert!(!built(&target));
        assert!(crate::Target::parse("3000").unwrap().check_tls().is_ok());
    }
}
