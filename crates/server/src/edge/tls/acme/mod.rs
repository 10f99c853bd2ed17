//! Certificates without an operator: the wildcard for `*.{domain}` and
//! the apex, obtained from an ACME server (Let's Encrypt by default) by
//! DNS-01 and renewed in place.
//!
//! [`Acme::run`] is one task for the server's life: it installs the
//! certificate kept ([`AcmeKeep`]), and orders a new one when there is
//! none, when it is for other names, or when due: in the window the ACME
//! server's renewal information suggests (ARI, RFC 9773) where it offers
//! one, else at two thirds of the lifetime. A failure is logged, counted
//! and retried with backoff (a minute, doubling to an hour), and never
//! replaces the certificate being served. A new one is checked, kept, and
//! then installed: new handshakes present it, connections already open
//! keep theirs.
//!
//! The DNS-01 records go by RFC 2136 updates ([`dns`]); the order waits
//! until the DNS server itself answers them before asking the ACME server
//! to look, and removes them after, whatever the outcome.
//!
//! Kept in the server's database (`crate::store::acme`) or, in a cluster,
//! in Redis (`crate::cluster::acme`): the account of each ACME directory
//! (its key and URL), and the certificate with its key under its first
//! name, `*.{domain}`. In a cluster one node at a time orders (it takes
//! the keep's lock), and the others take what it kept.

pub mod dns;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Certs, TlsError};
use crate::metrics::Metrics;
use crate::store::acme::{AcmeKeep, KeptCertificate};
use dns::DnsUpdater;

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Let's Encrypt's staging directory (`--acme-staging`).
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// How ACME certificates are obtained.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The ACME server's directory URL.
    pub directory: String,
    /// The root that signs a private ACME server's own HTTPS certificate
    /// (PEM); the public roots otherwise.
    pub ca: Option<PathBuf>,
    /// Contact address for the account (expiry notices).
    pub email: Option<String>,
    /// Where the DNS-01 records are set.
    pub dns: DnsUpdater,
    /// The first wait after a failure, doubled after each to [`MAX_RETRY`].
    pub retry: Duration,
}

/// The longest wait between two attempts after failures.
const MAX_RETRY: Duration = Duration::from_secs(3600);

/// How long a node holds the right to order: longer than an order takes
/// (its waits add to about five minutes); if it dies, another takes over
/// after.
const LOCK_TTL: Duration = Duration::from_secs(600);

/// How long the DNS server may take to answer the records it was given.
const PROPAGATION: Duration = Duration::from_secs(60);

/// A failure to get a certificate.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The ACME server refused or failed a step.
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    /// Setting or checking the DNS records failed.
    #[error("DNS-01: {0}")]
    Dns(#[from] dns::DnsError),
    /// The DNS server did not answer the records set.
    #[error("DNS-01: {0} does not answer the challenge records after {PROPAGATION:?}")]
    NotPropagated(String),
    /// An authorization ended otherwise than valid.
    #[error("ACME: the authorization for {name} is {status:?}")]
    Authorization {
        /// The name.
        name: String,
        /// Its state.
        status: AuthorizationStatus,
    },
    /// The order ended otherwise than ready.
    #[error("ACME: the order is {0:?}")]
    Order(OrderStatus),
    /// The certificate does not load.
    #[error("{0}")]
    Certificate(#[from] TlsError),
    /// The database failed.
    #[error("keeping ACME's state: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The kept account does not read.
    #[error("the ACME account kept for {directory}: {reason}")]
    Account {
        /// Its directory.
        directory: String,
        /// Why.
        reason: String,
    },
}

/// What is known of the certificate being served.
#[derive(Debug, Clone)]
struct Validity {
    not_before: SystemTime,
    not_after: SystemTime,
    /// Its leaf, which names it to the ACME server's renewal information.
    leaf: CertificateDer<'static>,
}

impl Validity {
    /// Two thirds of the way through its lifetime.
    fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life * 2 / 3
    }
}

/// The certificate manager of one server.
pub struct Acme {
    config: AcmeConfig,
    /// The names ordered: `*.{domain}` and `{domain}`.
    names: [String; 2],
    keep: Arc<dyn AcmeKeep>,
    /// Who holds the right to order, in a cluster (the node's name).
    holder: String,
    certs: Certs,
    metrics: Metrics,
}

impl Acme {
    /// A manager for `domain`'s wildcard, keeping its state in `keep`
    /// (ordering as `holder` when it takes the right to), and installing
    /// what it gets into `certs`.
    pub fn new(
        config: AcmeConfig,
        domain: &str,
        (keep, holder): (Arc<dyn AcmeKeep>, String),
        certs: Certs,
        metrics: Metrics,
    ) -> Self {
        Acme {
            config,
            names: [format!("*.{domain}"), domain.to_owned()],
            keep,
            holder,
            certs,
            metrics,
        }
    }

    /// What names the kept certificate in errors.
    fn label(&self) -> PathBuf {
        PathBuf::from(format!("the kept certificate {}", self.names[0]))
    }

    /// Keeps a certificate installed until `shutdown`: the kept one at
    /// once if it is for these names, a new one when due.
    pub async fn run(self, shutdown: CancellationToken) {
        let domain = &self.names[1];
        let record = self.config.dns.challenge_name(domain);
        if record != format!("_acme-challenge.{domain}") {
            info!("DNS-01 records go to {record}: _acme-challenge.{domain} must be a CNAME to it");
        }
        let mut validity = match self.install_kept().await {
            Ok(validity) => validity,
            Err(err) => {
                warn!(%err, "no usable ACME certificate kept; ordering one");
                None
            }
        };
        let mut retry = self.config.retry;
        let mut drawn = None;
        loop {
            let (due, recheck) = match &validity {
                None => (SystemTime::UNIX_EPOCH, None),
                Some(validity) => self.due(validity, &mut drawn).await,
            };
            let until = due.duration_since(SystemTime::now()).unwrap_or_default();
            let wait = recheck.map_or(until, |recheck| recheck.min(until));
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            if SystemTime::now() < due {
                // Time to ask for the renewal information again.
                continue;
            }
            // Another node of the cluster may have renewed it already.
            if let Some(kept) = self.kept_if_renewed(validity.as_ref()).await {
                validity = Some(kept);
                drawn = None;
                continue;
            }
            let obtained = tokio::select! {
                () = shutdown.cancelled() => return,
                obtained = self.order_once() => obtained,
            };
            let obtained = match obtained {
                Some(obtained) => obtained,
                // Another node is ordering: what it gets is looked for soon.
                None => {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(self.config.retry) => {}
                    }
                    continue;
                }
            };
            match obtained {
                Ok(fresh) => {
                    let not_after = humantime::format_rfc3339_seconds(fresh.not_after);
                    info!(names = ?self.names, %not_after, "ACME certificate installed");
                    self.metrics.acme_issued(&self.names[0]);
                    self.metrics
                        .acme_outcome(&self.names[0], None, Some(fresh.not_after));
                    validity = Some(fresh);
                    drawn = None;
                    retry = self.config.retry;
                }
                Err(err) => {
                    warn!(%err, retry_in = ?retry, "ACME order failed; the certificate served stays");
                    self.metrics
                        .acme_outcome(&self.names[0], Some(&err.to_string()), None);
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
    }

    /// When to renew `served`, and when to ask again: in the window the
    /// ACME server's renewal information suggests (RFC 9773), at a moment
    /// drawn once per window (`drawn` keeps it), asking again after its
    /// `Retry-After` (a minute to six hours); without it, at two thirds of
    /// the lifetime.
    async fn due(
        &self,
        served: &Validity,
        drawn: &mut Option<(Window, SystemTime)>,
    ) -> (SystemTime, Option<Duration>) {
        let Some((window, recheck)) = self.suggested(&served.leaf).await else {
            return (served.renew_at(), None);
        };
        let moment = match drawn {
            Some((known, moment)) if *known == window => *moment,
            _ => {
                let moment = ari_moment(window, SystemTime::now(), rand::random::<f64>());
                *drawn = Some((window, moment));
                moment
            }
        };
        let recheck = recheck.clamp(Duration::from_secs(60), Duration::from_secs(6 * 3600));
        (moment, Some(recheck))
    }

    /// The renewal window the ACME server suggests for `leaf`, and when to
    /// ask again; `None` if it offers none (Pebble 2.4, for one) or the
    /// question fails (logged at debug: the lifetime rule then applies).
    async fn suggested(&self, leaf: &CertificateDer<'_>) -> Option<(Window, Duration)> {
        let account = self.account().await.ok()?;
        let id = CertificateIdentifier::try_from(leaf).ok()?;
        match account.renewal_info(&id).await {
            Ok((info, recheck)) => {
                let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
                let window = Window {
                    start: at(info.suggested_window.start.unix_timestamp()),
                    end: at(info.suggested_window.end.unix_timestamp()),
                };
                Some((window, recheck))
            }
            Err(instant_acme::Error::Unsupported(_)) => None,
            Err(err) => {
                tracing::debug!(%err, "no renewal information; renewing at two thirds");
                None
            }
        }
    }

    /// The kept certificate, installed, if it is another than `served`
    /// and not due yet (another node renewed it, in a cluster). The one
    /// served, found again, is no answer: it is due.
    async fn kept_if_renewed(&self, served: Option<&Validity>) -> Option<Validity> {
        let kept = self.install_kept().await.ok()??;
        let other = served.is_none_or(|served| served.leaf != kept.leaf);
        (other && kept.renew_at() > SystemTime::now()).then_some(kept)
    }

    /// One order, if this node takes the right to order (`None`: another
    /// holds it); the right is given back after, whatever the outcome.
    async fn order_once(&self) -> Option<Result<Validity, AcmeError>> {
        let (name, holder) = (self.names[0].clone(), self.holder.clone());
        match self.keep.lock(name.clone(), holder.clone(), LOCK_TTL).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(err) => return Some(Err(err.into())),
        }
        let obtained = self.obtain().await;
        if let Err(err) = self.keep.unlock(name, holder).await {
            warn!(%err, "could not give back the right to order; it expires by itself");
        }
        Some(obtained)
    }

    /// Installs the kept certificate if there is one for these names;
    /// its validity, or `None` when there is none.
    async fn install_kept(&self) -> Result<Option<Validity>, AcmeError> {
        let kept = self.keep.certificate(self.names[0].clone());
        let Some(kept) = kept.await? else {
            return Ok(None);
        };
        let label = self.label();
        let (validity, names) = leaf_facts(kept.chain.as_bytes(), &label)?;
        if !self.names.iter().all(|n| names.contains(n)) {
            info!(kept = ?names, wanted = ?self.names, "the kept ACME certificate is for other names");
            return Ok(None);
        }
        self.certs
            .install(kept.chain.as_bytes(), kept.key.as_bytes(), &label)?;
        self.metrics
            .acme_outcome(&self.names[0], None, Some(validity.not_after));
        let not_after = humantime::format_rfc3339_seconds(validity.not_after);
        info!(names = ?self.names, %not_after, "ACME certificate loaded");
        Ok(Some(validity))
    }

    /// One order, start to end: the new certificate written and
    /// installed.
    async fn obtain(&self) -> Result<Validity, AcmeError> {
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = self
            .names
            .iter()
            .map(|n| Identifier::Dns(n.clone()))
            .collect();
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        let mut records = Vec::new();
        let set = self.answer_challenges(&mut order, &mut records).await;
        let finished = match set {
            Ok(()) => self.finish(&mut order).await,
            Err(err) => Err(err),
        };
        for (name, value) in records {
            if let Err(err) = self.config.dns.remove_txt(&name, &value).await {
                warn!(%err, %name, "could not remove a DNS-01 record");
            }
        }
        let (chain, key) = finished?;
        let label = self.label();
        let (validity, _) = leaf_facts(chain.as_bytes(), &label)?;
        // Checked (the key fits) before it is kept, kept before it is
        // served: what is kept always loads.
        self.certs.check(chain.as_bytes(), key.as_bytes(), &label)?;
        let kept = KeptCertificate { chain, key };
        let (name, not_after) = (self.names[0].clone(), unix(validity.not_after));
        self.keep
            .save_certificate(name, kept.clone(), not_after)
            .await?;
        self.certs
            .install(kept.chain.as_bytes(), kept.key.as_bytes(), &label)?;
        Ok(validity)
    }

    /// Sets each pending authorization's DNS-01 record, waits until the
    /// DNS server answers them all, and tells the ACME server to look.
    /// `records` gets every record set, for removal after.
    async fn answer_challenges(
        &self,
        order: &mut instant_acme::Order,
        records: &mut Vec<(String, String)>,
    ) -> Result<(), AcmeError> {
        let mut ready = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                status => {
                    let name = authz.identifier().to_string();
                    return Err(AcmeError::Authorization { name, status });
                }
            }
            let name = authz.identifier().to_string();
            let Some(challenge) = authz.challenge(ChallengeType::Dns01) else {
                return Err(AcmeError::Authorization {
                    name,
                    status: AuthorizationStatus::Invalid,
                });
            };
            let record = self
                .config
                .dns
                .challenge_name(name.trim_start_matches("*."));
            let value = challenge.key_authorization().dns_value();
            self.config.dns.add_txt(&record, &value).await?;
            records.push((record.clone(), value.clone()));
            ready.push(challenge.url.clone());
        }
        self.await_records(records).await?;
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            if let Some(mut challenge) = authz.challenge(ChallengeType::Dns01) {
                if ready.contains(&challenge.url) {
                    challenge.set_ready().await?;
                }
            }
        }
        Ok(())
    }

    /// Waits until the DNS server answers every record set.
    async fn await_records(&self, records: &[(String, String)]) -> Result<(), AcmeError> {
        let deadline = tokio::time::Instant::now() + PROPAGATION;
        for (name, value) in records {
            loop {
                if self.config.dns.txt_values(name).await?.contains(value) {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(AcmeError::NotPropagated(name.clone()));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Ok(())
    }

    /// Waits for the order to be ready, finalizes it, and returns the
    /// chain and its new key (PEM).
    async fn finish(&self, order: &mut instant_acme::Order) -> Result<(String, String), AcmeError> {
        let retries = RetryPolicy::new().timeout(Duration::from_secs(120));
        match order.poll_ready(&retries).await? {
            OrderStatus::Ready => {}
            status => return Err(AcmeError::Order(status)),
        }
        let key = order.finalize().await?;
        let chain = order.poll_certificate(&retries).await?;
        Ok((chain, key))
    }

    /// The ACME account: the kept one, else a new one (kept).
    async fn account(&self) -> Result<Account, AcmeError> {
        let directory = self.config.directory.clone();
        let builder = match &self.config.ca {
            Some(ca) => Account::builder_with_root(ca)?,
            None => Account::builder()?,
        };
        if let Some(text) = self.keep.account(directory.clone()).await? {
            let credentials: AccountCredentials =
                serde_json::from_str(&text).map_err(|e| AcmeError::Account {
                    directory: directory.clone(),
                    reason: e.to_string(),
                })?;
            return Ok(builder.from_credentials(credentials).await?);
        }
        let contact = self.config.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.config.directory.clone(),
                None,
            )
            .await?;
        let text = serde_json::to_string(&credentials).map_err(|e| AcmeError::Account {
            directory: directory.clone(),
            reason: e.to_string(),
        })?;
        self.keep.save_account(directory, text).await?;
        info!(directory = %self.config.directory, "ACME account created");
        Ok(account)
    }
}

/// A renewal window the ACME server suggests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    start: SystemTime,
    end: SystemTime,
}

/// The moment to renew in `window`, from `draw` in 0..1 (RFC 9773 §4.2:
/// a point chosen at random in it, so that clients spread out): within
/// what is left of the window after `now`; `now` once it has passed.
fn ari_moment(window: Window, now: SystemTime, draw: f64) -> SystemTime {
    if window.end <= now {
        return now;
    }
    let from = window.start.max(now);
    let span = window.end.duration_since(from).unwrap_or_default();
    from + span.mul_f64(draw.clamp(0.0, 1.0))
}

/// The validity and the DNS names of the first certificate of `chain`.
fn leaf_facts(chain: &[u8], path: &Path) -> Result<(Validity, Vec<String>), TlsError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let bad = |reason: String| TlsError::Pem {
        path: path.to_owned(),
        reason,
    };
    let leaf = CertificateDer::pem_slice_iter(chain)
        .next()
        .ok_or_else(|| bad("no certificate".into()))?
        .map_err(|e| bad(e.to_string()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).map_err(|e| bad(e.to_string()))?;
    let time = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp().max(0) as u64;
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    };
    let validity = Validity {
        not_before: time(cert.validity().not_before),
        not_after: time(cert.validity().not_after),
        leaf: leaf.clone().into_owned(),
    };
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((validity, names))
}

/// `at` as Unix seconds.
fn unix(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_information_picks_a_moment_in_what_is_left_of_its_window() {
        let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let window = Window {
            start: at(1_000),
            end: at(2_000),
        };
        // Ahead: anywhere in it, by the draw.
        assert_eq!(ari_moment(window, at(500), 0.0), at(1_000));
        assert_eq!(ari_moment(window, at(500), 0.5), at(1_500));
        assert!(ari_moment(window, at(500), 0.999) < at(2_000));
        // Begun: in the part still ahead.
        assert_eq!(ari_moment(window, at(1_600), 0.5), at(1_800));
        // Over (the server wants it renewed now): now.
        assert_eq!(ari_moment(window, at(2_500), 0.3), at(2_500));
        // A draw out of range stays in the window.
        assert_eq!(ari_moment(window, at(500), 7.0), at(2_000));
    }

    #[test]
    fn renewal_is_due_two_thirds_through_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let validity = Validity {
            not_before: start,
            not_after: start + Duration::from_secs(90 * 86_400),
            leaf: CertificateDer::from(vec![]),
        };
        assert_eq!(
            validity.renew_at(),
            start + Duration::from_secs(60 * 86_400)
        );
    }

    #[test]
    fn a_leaf_says_its_names_and_validity() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["*.t.test".into(), "t.test".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (validity, names) = leaf_facts(cert.pem().as_bytes(), Path::new("x")).unwrap();
        assert_eq!(names, ["*.t.test", "t.test"]);
        assert!(validity.not_after > validity.not_before);
        assert!(leaf_facts(b"no pem here", Path::new("x")).is_err());
    }

    /// A self-signed certificate for the wildcard of `t.test` and its key,
    /// valid from 2020 to the start of year `until`.
    fn certificate(until: i32) -> KeptCertificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["*.t.test".into(), "t.test".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        KeptCertificate {
            chain: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    #[tokio::test]
    async fn a_kept_certificate_counts_as_renewed_only_if_it_is_another_and_not_due() {
        let store = crate::store::Store::in_memory().unwrap();
        let key = dns::TsigKey::parse("hmac-sha256:k:c2VjcmV0").unwrap();
        let config = AcmeConfig {
            directory: "https://acme.invalid/dir".into(),
            ca: None,
            email: None,
            dns: DnsUpdater::new("127.0.0.1:53".parse().unwrap(), "t.test", key).unwrap(),
            retry: Duration::from_secs(1),
        };
        let keep: Arc<dyn AcmeKeep> = Arc::new(store.clone());
        let acme = Acme::new(
            config,
            "t.test",
            (keep, "server".into()),
            Certs::managed(),
            Metrics::register(&mut Default::default()),
        );
        let save = |kept: &KeptCertificate| {
            store.save_acme_certificate("*.t.test", kept, 0).unwrap();
        };
        // Nothing kept: nothing renewed.
        assert!(acme.kept_if_renewed(None).await.is_none());
        // The one served, found again, is due still: no answer (the loop
        // would otherwise spin without ordering).
        let served = certificate(2100);
        save(&served);
        let served = acme.install_kept().await.unwrap().unwrap();
        assert!(acme.kept_if_renewed(Some(&served)).await.is_none());
        // Another one, not due: taken.
        save(&certificate(2100));
        let renewed = acme.kept_if_renewed(Some(&served)).await.unwrap();
        assert_ne!(renewed.leaf, served.leaf);
        // Another one that is due already (past two thirds of 2020 to
        // 2027): not taken.
        save(&certificate(2027));
        assert!(acme.kept_if_renewed(Some(&served)).await.is_none());
    }
}
