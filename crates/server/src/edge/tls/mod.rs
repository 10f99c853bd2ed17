//! TLS termination: the certificates the server presents, and the rustls
//! configuration every HTTPS connection uses.
//!
//! [`Certs`] has two sources:
//!
//! - **Files** ([`Certs::load`]): the operator's PEM certificate chain and
//!   key, normally a wildcard for `*.{domain}` plus the apex, as a DNS-01
//!   ACME challenge gives. The pair sits behind a lock as an
//!   `Arc<CertifiedKey>`; every handshake clones the `Arc`, and
//!   [`Certs::reload`] swaps in a freshly read pair, so new connections get
//!   the new certificate and established ones keep theirs. A reload that
//!   fails (missing file, bad PEM, a key that does not fit) keeps the old
//!   pair and says why.
//! - **A development authority** ([`Certs::dev`], `--tls-self-signed`):
//!   signs a certificate for each name on demand (see `dev_ca`).
//! - **ACME** ([`Certs::managed`], `--acme-*`): what [`acme::Acme`]
//!   obtains, swapped in by [`Certs::install`] as the files' pair is by a
//!   reload; before the first certificate, handshakes fail.
//!
//! Every handshake is served, whatever its SNI: a name the certificate does
//! not cover fails the client's own check, and the gateway compares each
//! request's Host with the SNI (421 when they differ, see `https.rs`).

pub mod acme;
mod dev_ca;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tracing::warn;

pub use dev_ca::DevCa;

/// A certificate that cannot be loaded, generated or written.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A file is not the PEM it should be.
    #[error("{}: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key cannot be used with the certificate.
    #[error("the key in {} does not fit the certificate in {}: {reason}", key.display(), cert.display())]
    Key {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        reason: String,
    },
    /// A development certificate could not be generated.
    #[error("could not generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused a generated certificate.
    #[error("could not use a generated certificate: {0}")]
    Issued(rustls::Error),
}

/// The certificates the server presents. Cloning gives another handle to
/// the same ones.
#[derive(Clone)]
pub struct Certs {
    source: Arc<Source>,
}

enum Source {
    Files {
        cert: PathBuf,
        key: PathBuf,
        current: RwLock<Arc<CertifiedKey>>,
    },
    Dev(Box<dev_ca::Issuer>),
    Managed {
        current: RwLock<Option<Arc<CertifiedKey>>>,
    },
}

impl fmt::Debug for Certs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.source {
            Source::Files { cert, key, .. } => f
                .debug_struct("Certs")
                .field("cert", cert)
                .field("key", key)
                .finish(),
            Source::Dev(_) => f.write_str("Certs(development authority)"),
            Source::Managed { .. } => f.write_str("Certs(ACME)"),
        }
    }
}

impl Certs {
    /// Reads the certificate chain (leaf first) from `cert` and its private
    /// key (PKCS#8, PKCS#1 or SEC1) from `key`, both PEM.
    pub fn load(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Self, TlsError> {
        let (cert, key) = (cert.into(), key.into());
        let current = RwLock::new(Arc::new(read_pair(&cert, &key)?));
        let source = Arc::new(Source::Files { cert, key, current });
        Ok(Certs { source })
    }

    /// A development authority for `domain`, found or made under
    /// `data_dir` (see [`DevCa`] for its files).
    pub fn dev(domain: &str, data_dir: &Path) -> Result<(Self, DevCa), TlsError> {
        let (issuer, files) = dev_ca::Issuer::open(domain, data_dir)?;
        let source = Arc::new(Source::Dev(Box::new(issuer)));
        Ok((Certs { source }, files))
    }

    /// Certificates another part installs ([`Certs::install`]): none
    /// until the first.
    pub fn managed() -> Self {
        let source = Arc::new(Source::Managed {
            current: RwLock::new(None),
        });
        Certs { source }
    }

    /// Checks `chain` and `key` (PEM) as [`Certs::install`] would, without
    /// installing them.
    pub fn check(&self, chain: &[u8], key: &[u8], path: &Path) -> Result<(), TlsError> {
        pair_of((chain, path), (key, path)).map(drop)
    }

    /// Checks `chain` and `key` (PEM; `path` names them in errors) and, on
    /// a managed source, serves them from the next handshake on. Nothing
    /// changes on an error.
    pub fn install(&self, chain: &[u8], key: &[u8], path: &Path) -> Result<(), TlsError> {
        let pair = Arc::new(pair_of((chain, path), (key, path))?);
        if let Source::Managed { current } = &*self.source {
            *current.write().unwrap_or_else(PoisonError::into_inner) = Some(pair);
        }
        Ok(())
    }

    /// Re-reads the certificate files. On success new handshakes present
    /// the new certificate; on failure the old one stays and the error says
    /// why. A development authority forgets the certificates it signed.
    pub fn reload(&self) -> Result<(), TlsError> {
        match &*self.source {
            Source::Files { cert, key, current } => {
                let fresh = Arc::new(read_pair(cert, key)?);
                *current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
            }
            Source::Dev(issuer) => issuer.forget(),
            // Renewed by its manager, not by a signal.
            Source::Managed { .. } => {}
        }
        Ok(())
    }

    /// The certificate and key files, unless this is a development authority.
    pub fn files(&self) -> Option<(&Path, &Path)> {
        match &*self.source {
            Source::Files { cert, key, .. } => Some((cert, key)),
            Source::Dev(_) | Source::Managed { .. } => None,
        }
    }

    /// The certificate for a handshake that asked for `sni`.
    fn resolve(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        match &*self.source {
            Source::Files { current, .. } => Some(Arc::clone(
                &current.read().unwrap_or_else(PoisonError::into_inner),
            )),
            Source::Dev(issuer) => match issuer.certificate(sni) {
                Ok(key) => Some(key),
                Err(err) => {
                    warn!(%err, "could not sign a development certificate");
                    None
                }
            },
            Source::Managed { current } => {
                let current = current.read().unwrap_or_else(PoisonError::into_inner);
                if current.is_none() {
                    // Counted as a failed handshake; the ACME task logs
                    // why there is none.
                    tracing::debug!("no ACME certificate yet; the handshake fails");
                }
                current.clone()
            }
        }
    }

    /// The acceptor for HTTPS connections: TLS 1.2 and 1.3 with rustls's
    /// safe defaults, HTTP/2 or HTTP/1.1 by ALPN (the visitor's choice, in
    /// that order of ours).
    pub(crate) fn acceptor(&self) -> Result<TlsAcceptor, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// A task that reloads on every SIGHUP until `shutdown` fires, logging
    /// each outcome. The signal is caught from this call on (not from the
    /// task's first poll), so a SIGHUP right after it cannot kill the
    /// process.
    #[cfg(unix)]
    pub fn reload_on_hangup(
        self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> io::Result<impl Future<Output = ()> + Send + 'static> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = signal(SignalKind::hangup())?;
        Ok(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    got = hangups.recv() => if got.is_none() { return },
                }
                match self.reload() {
                    Ok(()) => tracing::info!(certs = ?self, "certificate reloaded"),
                    Err(err) => tracing::error!(
                        %err,
                        "certificate reload failed; still serving the previous one"
                    ),
                }
            }
        })
    }
}

/// The crypto provider for both ends: ring, which builds with nothing but a
/// C compiler.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Hands every handshake its certificate.
#[derive(Debug)]
struct Resolver(Certs);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.resolve(hello.server_name())
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The certificates of the PEM file at `path`, as trust anchors (at
/// least one).
pub(crate) fn read_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let pem_error = |reason: String| TlsError::Pem {
        path: path.to_owned(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read(path)?) {
        let cert = cert.map_err(|e| pem_error(e.to_string()))?;
        roots.add(cert).map_err(|e| pem_error(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(pem_error("no CERTIFICATE block".into()));
    }
    Ok(roots)
}

/// Reads and checks a certificate chain and its key.
pub(crate) fn read_pair(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    pair_of((&read(cert_path)?, cert_path), (&read(key_path)?, key_path))
}

/// Checks a certificate chain and its key (PEM), each named by the file
/// it comes from for the errors.
fn pair_of(
    (cert, cert_path): (&[u8], &Path),
    (key, key_path): (&[u8], &Path),
) -> Result<CertifiedKey, TlsError> {
    let pem_error = |path: &Path, reason: String| TlsError::Pem {
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(cert_path, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem_error(cert_path, "no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
        pem_error(
            key_path,
            match e {
                rustls::pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY block".into(),
                e => e.to_string(),
            },
        )
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsError::Key {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod sni_properties;
