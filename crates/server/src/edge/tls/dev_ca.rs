//! The development certificate authority of `cryptun server
//! --tls-self-signed`: it signs, during the handshake, a certificate for
//! exactly the name a client asks for.
//!
//! Why not one wildcard certificate for `*.{domain}`: rustls, curl and
//! browsers all refuse a wildcard directly under a single label, so
//! `*.localhost`, for the default domain, would be valid for nothing. A
//! certificate per name works for every client and every domain.
//!
//! The authority lives in `{data_dir}/tls-dev/{domain}/`: `ca.pem`, what
//! clients trust (`--ca`, or a browser's certificate settings), and
//! `ca-key.pem`, readable by its owner only. Both are reused on later runs,
//! so a client's `--ca` stays valid across restarts. The authority carries
//! name constraints: it can vouch only for `{domain}` and names under it
//! (and loopback addresses for a `localhost` domain), so trusting it, or
//! losing its key, puts no other site at risk.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose, NameConstraints,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use super::{TlsError, provider};

/// Certificates kept for reuse; beyond this many names the cache starts
/// afresh (signing one costs well under a millisecond).
const CACHE_NAMES: usize = 1024;

/// Where a development authority's files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCa {
    /// The folder holding them.
    pub dir: PathBuf,
    /// The authority's certificate: what clients trust (`--ca`).
    pub ca: PathBuf,
    /// Its private key (readable by its owner only).
    pub ca_key: PathBuf,
    /// Whether this run made them (rather than finding them).
    pub created: bool,
}

/// Signs certificates for names of one domain.
pub(crate) struct Issuer {
    domain: String,
    loopback: bool,
    ca: Certificate,
    ca_key: KeyPair,
    cache: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl Issuer {
    /// Finds or makes the authority for `domain` under `data_dir`.
    pub(crate) fn open(domain: &str, data_dir: &Path) -> Result<(Issuer, DevCa), TlsError> {
        let dir = data_dir.join("tls-dev").join(domain);
        let mut files = DevCa {
            ca: dir.join("ca.pem"),
            ca_key: dir.join("ca-key.pem"),
            dir,
            created: false,
        };
        let loopback = domain == "localhost" || domain.ends_with(".localhost");
        let params = authority(domain, loopback);
        let ca_key = if files.ca.is_file() && files.ca_key.is_file() {
            let pem = std::fs::read_to_string(&files.ca_key).map_err(io_error(&files.ca_key))?;
            KeyPair::from_pem(&pem).map_err(|e| TlsError::Pem {
                path: files.ca_key.clone(),
                reason: e.to_string(),
            })?
        } else {
            let key = KeyPair::generate()?;
            let ca = params.clone().self_signed(&key)?;
            create_dir(&files.dir)?;
            write(&files.ca_key, &key.serialize_pem(), true)?;
            // The certificate goes last: its presence marks a complete pair.
            write(&files.ca, &ca.pem(), false)?;
            files.created = true;
            key
        };
        // Signing needs the authority's name and key identifier, both fixed
        // by its parameters and key, so a certificate rebuilt from them
        // issues what `ca.pem` verifies.
        let ca = params.self_signed(&ca_key)?;
        let issuer = Issuer {
            domain: domain.to_owned(),
            loopback,
            ca,
            ca_key,
            cache: Mutex::new(HashMap::new()),
        };
        Ok((issuer, files))
    }

    /// The certificate for `sni`: that name if it is the domain or under
    /// it; otherwise (no SNI, an address, another domain) the domain's own,
    /// which also covers loopback addresses for a `localhost` domain.
    pub(crate) fn certificate(&self, sni: Option<&str>) -> Result<Arc<CertifiedKey>, TlsError> {
        let name = subject(&self.domain, sni);
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = cache.get(&name) {
            return Ok(Arc::clone(found));
        }
        let fresh = Arc::new(self.sign(&name)?);
        if cache.len() >= CACHE_NAMES {
            cache.clear();
        }
        cache.insert(name, Arc::clone(&fresh));
        Ok(fresh)
    }

    /// Forgets every certificate signed so far.
    pub(crate) fn forget(&self) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn sign(&self, name: &str) -> Result<CertifiedKey, TlsError> {
        let mut names = vec![name.to_owned()];
        if name == self.domain && self.loopback {
            names.extend(["127.0.0.1".to_owned(), "::1".to_owned()]);
        }
        let mut leaf = CertificateParams::new(names)?;
        leaf.distinguished_name = distinguished(name);
        leaf.is_ca = IsCa::ExplicitNoCa;
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let leaf = leaf.signed_by(&key, &self.ca, &self.ca_key)?;
        let chain = vec![leaf.der().clone(), self.ca.der().clone()];
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        CertifiedKey::from_der(chain, der, &provider()).map_err(TlsError::Issued)
    }
}

/// The name the certificate for `sni` is signed for, by an authority for
/// `domain` (lowercase, no trailing dot): `sni` lowercased and without its
/// trailing dot if that is `domain` or a name under it, else `domain`.
pub(super) fn subject(domain: &str, sni: Option<&str>) -> String {
    sni.map(|n| n.strip_suffix('.').unwrap_or(n).to_ascii_lowercase())
        .filter(|n| n == domain || n.strip_suffix(domain).is_some_and(|n| n.ends_with('.')))
        .unwrap_or_else(|| domain.to_owned())
}

/// The authority's parameters: fixed for a domain, so that a key read back
/// from disk rebuilds the same issuer.
fn authority(domain: &str, loopback: bool) -> CertificateParams {
    let mut ca = CertificateParams::default();
    ca.distinguished_name = distinguished(&format!("Cryptun development CA for {domain}"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let v4 = CidrSubnet::from_v4_prefix([127, 0, 0, 0], 8);
    let v6 = CidrSubnet::from_v6_prefix(std::net::Ipv6Addr::LOCALHOST.octets(), 128);
    let (any4, any6) = (
        CidrSubnet::from_v4_prefix([0; 4], 0),
        CidrSubnet::from_v6_prefix([0; 16], 0),
    );
    let mut permitted = vec![GeneralSubtree::DnsName(domain.to_owned())];
    let mut excluded = Vec::new();
    if loopback {
        permitted.extend([GeneralSubtree::IpAddress(v4), GeneralSubtree::IpAddress(v6)]);
    } else {
        excluded.extend([
            GeneralSubtree::IpAddress(any4),
            GeneralSubtree::IpAddress(any6),
        ]);
    }
    ca.name_constraints = Some(NameConstraints {
        permitted_subtrees: permitted,
        excluded_subtrees: excluded,
    });
    ca
}

fn distinguished(common: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common);
    dn.push(DnType::OrganizationName, "Cryptun development");
    dn
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io_error(dir))
}

/// Writes `contents` to `path`, readable by its owner only when `private`.
fn write(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, if private { 0o600 } else { 0o644 });
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(io_error(path))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(path))
}
