//! DNS-01's records, set by RFC 2136 dynamic updates signed with TSIG
//! (RFC 8945), at a DNS server the operator runs (`--acme-dns-server`,
//! `--acme-dns-zone`, `--acme-tsig-key`). No DNS server is built in: BIND,
//! Knot, PowerDNS and most managed DNS services take these updates.
//!
//! The messages are built and signed with `hickory-proto` (its update
//! helpers and `TSigner`), sent over TCP (two-byte length prefix, RFC 1035
//! §4.2.2), and the answer's code checked: anything but NOERROR is an
//! error naming the code (REFUSED, NOTAUTH: the key or the zone is wrong).

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hickory_proto::dnssec::rdata::tsig::TsigAlgorithm;
use hickory_proto::dnssec::tsig::TSigner;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode, update_message};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{Name, RData, Record, RecordSet, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one exchange with the DNS server may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TTL of the challenge records: short, as they live for minutes.
const TXT_TTL: u32 = 60;

/// A DNS update that failed.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The TSIG key's text could not be read.
    #[error("the TSIG key: {0}")]
    Key(String),
    /// A name is not a DNS name, or not in the zone.
    #[error("{0}")]
    Name(String),
    /// The server could not be reached, or did not answer in time.
    #[error("the DNS server {server}: {reason}")]
    Unreachable {
        /// Where.
        server: SocketAddr,
        /// What happened.
        reason: String,
    },
    /// The server answered with an error code.
    #[error("the DNS server {server} refused the update of {name}: {code}")]
    Refused {
        /// Where.
        server: SocketAddr,
        /// The record's name.
        name: String,
        /// Its answer (REFUSED, NOTAUTH, ...).
        code: String,
    },
}

/// A TSIG key: its name, algorithm and secret.
#[derive(Clone)]
pub struct TsigKey {
    name: Name,
    algorithm: TsigAlgorithm,
    secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name.to_string())
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl TsigKey {
    /// Reads a key as `tsig-keygen` (BIND) writes it:
    /// `key "NAME" { algorithm hmac-sha256; secret "BASE64"; };`, or as
    /// `ALGORITHM:NAME:BASE64` on one line (`nsupdate -y`'s form).
    pub fn parse(text: &str) -> Result<Self, DnsError> {
        let text = text.trim();
        let (name, algorithm, secret) = if text.starts_with("key") {
            let quoted = |after: &str| -> Option<String> {
                let start = text.find(after)? + after.len();
                let rest = text[start..].trim_start();
                let rest = rest.strip_prefix('"').unwrap_or(rest);
                let end = rest.find(['"', ';'])?;
                Some(rest[..end].trim().to_owned())
            };
            (quoted("key"), quoted("algorithm"), quoted("secret"))
        } else {
            let mut parts = text.splitn(3, ':');
            let (a, n, s) = (parts.next(), parts.next(), parts.next());
            (
                n.map(str::to_owned),
                a.map(str::to_owned),
                s.map(str::to_owned),
            )
        };
        let (Some(name), Some(algorithm), Some(secret)) = (name, algorithm, secret) else {
            return Err(DnsError::Key(
                "expected `key \"NAME\" { algorithm ALG; secret \"BASE64\"; };` or ALG:NAME:BASE64"
                    .into(),
            ));
        };
        let algorithm = match algorithm.to_ascii_lowercase().as_str() {
            "hmac-sha256" => TsigAlgorithm::HmacSha256,
            "hmac-sha384" => TsigAlgorithm::HmacSha384,
            "hmac-sha512" => TsigAlgorithm::HmacSha512,
            other => {
                return Err(DnsError::Key(format!(
                    "algorithm {other:?}: use hmac-sha256, hmac-sha384 or hmac-sha512"
                )));
            }
        };
        let secret = BASE64
            .decode(secret.trim())
            .map_err(|e| DnsError::Key(format!("the secret is not base64: {e}")))?;
        let name = Name::from_str(&name).map_err(|e| DnsError::Key(format!("its name: {e}")))?;
        Ok(TsigKey {
            name,
            algorithm,
            secret,
        })
    }
}

/// Sets and removes TXT records in one zone of one DNS server.
#[derive(Debug, Clone)]
pub struct DnsUpdater {
    server: SocketAddr,
    zone: Name,
    key: TsigKey,
}

impl DnsUpdater {
    /// An updater for `zone` at `server`, signing with `key`.
    pub fn new(server: SocketAddr, zone: &str, key: TsigKey) -> Result<Self, DnsError> {
        let mut zone = Name::from_str(zone).map_err(|e| DnsError::Name(format!("zone: {e}")))?;
        zone.set_fqdn(true);
        Ok(DnsUpdater { server, zone, key })
    }

    /// The zone it updates.
    pub fn zone(&self) -> String {
        self.zone.to_string()
    }

    /// Where the DNS-01 record for `domain` is written: its own
    /// `_acme-challenge.{domain}` when the zone holds it; else
    /// `_acme-challenge.{domain}.{zone}`, which the operator points
    /// `_acme-challenge.{domain}` at with a CNAME, once (the ACME server
    /// follows it).
    pub fn challenge_name(&self, domain: &str) -> String {
        let own = format!("_acme-challenge.{domain}");
        if self.in_zone(&own).is_ok() {
            return own;
        }
        let zone = self.zone.to_string();
        format!("{own}.{}", zone.trim_end_matches('.'))
    }

    /// `name` as a name in the zone, or why not.
    fn in_zone(&self, name: &str) -> Result<Name, DnsError> {
        let mut fqdn = Name::from_str(name).map_err(|e| DnsError::Name(format!("{name}: {e}")))?;
        fqdn.set_fqdn(true);
        if !self.zone.zone_of(&fqdn) {
            return Err(DnsError::Name(format!(
                "{name} is not in the zone {} (--acme-dns-zone); point its _acme-challenge there with a CNAME",
                self.zone
            )));
        }
        Ok(fqdn)
    }

    fn rrset(name: Name, value: &str) -> RecordSet {
        let mut rrset = RecordSet::with_ttl(name.clone(), RecordType::TXT, TXT_TTL);
        rrset.insert(
            Record::from_rdata(name, TXT_TTL, RData::TXT(TXT::new(vec![value.to_owned()]))),
            0,
        );
        rrset
    }

    /// Adds the TXT record `name` = `value` (beside any others there).
    pub async fn add_txt(&self, name: &str, value: &str) -> Result<(), DnsError> {
        let fqdn = self.in_zone(name)?;
        let message =
            update_message::append(Self::rrset(fqdn, value), self.zone.clone(), false, false);
        self.update(name, message).await
    }

    /// Removes the TXT record `name` = `value` (others stay).
    pub async fn remove_txt(&self, name: &str, value: &str) -> Result<(), DnsError> {
        let fqdn = self.in_zone(name)?;
        let message =
            update_message::delete_by_rdata(Self::rrset(fqdn, value), self.zone.clone(), false);
        self.update(name, message).await
    }

    /// The TXT values the server holds for `name` now (asked directly,
    /// not through a resolver, so no cache stands between).
    pub async fn txt_values(&self, name: &str) -> Result<Vec<String>, DnsError> {
        let fqdn = self.in_zone(name)?;
        let mut message = Message::new();
        message
            .set_id(rand::random())
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(false);
        message.add_query(Query::query(fqdn, RecordType::TXT));
        let answer = self.exchange(&message).await?;
        Ok(answer
            .answers()
            .iter()
            .filter_map(|record| match record.data() {
                RData::TXT(txt) => Some(
                    txt.iter()
                        .map(|part| String::from_utf8_lossy(part).into_owned())
                        .collect(),
                ),
                _ => None,
            })
            .collect())
    }

    async fn update(&self, name: &str, mut message: Message) -> Result<(), DnsError> {
        let signer = TSigner::new(
            self.key.secret.clone(),
            self.key.algorithm.clone(),
            self.key.name.clone(),
            300,
        )
        .map_err(|e| DnsError::Key(e.to_string()))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32);
        message
            .finalize(&signer, now)
            .map_err(|e| DnsError::Key(format!("signing: {e}")))?;
        let answer = self.exchange(&message).await?;
        match answer.response_code() {
            ResponseCode::NoError => Ok(()),
            code => Err(DnsError::Refused {
                server: self.server,
                name: name.to_owned(),
                code: code.to_string(),
            }),
        }
    }

    /// Sends `message` over TCP and reads the answer.
    async fn exchange(&self, message: &Message) -> Result<Message, DnsError> {
        let server = self.server;
        let unreachable = |reason: String| DnsError::Unreachable { server, reason };
        let bytes = message.to_vec().map_err(|e| unreachable(e.to_string()))?;
        let exchange = async {
            let mut tcp = TcpStream::connect(server).await?;
            let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            tcp.write_all(&framed).await?;
            let len = tcp.read_u16().await?;
            let mut answer = vec![0u8; len.into()];
            tcp.read_exact(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        let answer = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {EXCHANGE_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        Message::from_vec(&answer).map_err(|e| unreachable(format!("a malformed answer: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_in_both_forms_and_bad_ones_say_why() {
        let bind = "key \"acme-key\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0\";\n};\n";
        let key = TsigKey::parse(bind).unwrap();
        assert_eq!(key.name.to_string(), "acme-key");
        assert_eq!(key.secret, b"secret");
        let line = TsigKey::parse("hmac-sha512:acme-key:c2VjcmV0").unwrap();
        assert_eq!(line.algorithm, TsigAlgorithm::HmacSha512);
        for bad in ["", "hmac-md5:k:c2VjcmV0", "hmac-sha256:k:not base64!"] {
            assert!(TsigKey::parse(bad).is_err(), "{bad}");
        }
        assert!(
            !format!("{key:?}").contains("c2VjcmV0"),
            "no secret in logs"
        );
    }

    #[test]
    fn names_outside_the_zone_are_refused_before_anything_is_sent() {
        let key = TsigKey::parse("hmac-sha256:k:c2VjcmV0").unwrap();
        let dns = DnsUpdater::new("127.0.0.1:53".parse().unwrap(), "tunnels.test", key).unwrap();
        assert!(dns.in_zone("_acme-challenge.tunnels.test").is_ok());
        assert!(dns.in_zone("_acme-challenge.example.com").is_err());
        assert_eq!(
            dns.challenge_name("app.tunnels.test"),
            "_acme-challenge.app.tunnels.test"
        );
        assert_eq!(
            dns.challenge_name("example.com"),
            "_acme-challenge.example.com.tunnels.test",
            "outside the zone: a name in it, for a CNAME to point at"
        );
    }

    #[tokio::test]
    async fn a_server_that_is_not_there_or_answers_nonsense_is_an_error_naming_it() {
        let key = TsigKey::parse("hmac-sha256:k:c2VjcmV0").unwrap();
        // Nothing listening.
        let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = gone.local_addr().unwrap();
        drop(gone);
        let dns = DnsUpdater::new(addr, "tunnels.test", key.clone()).unwrap();
        let err = dns
            .add_txt("_acme-challenge.tunnels.test", "v")
            .await
            .unwrap_err();
        assert!(matches!(err, DnsError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        // A server that answers two bytes of length and then nonsense.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut len = [0u8; 2];
            tcp.read_exact(&mut len).await.unwrap();
            let mut request = vec![0u8; u16::from_be_bytes(len).into()];
            tcp.read_exact(&mut request).await.unwrap();
            tcp.write_all(&[0, 3, 1, 2, 3]).await.unwrap();
        });
        let dns = DnsUpdater::new(addr, "tunnels.test", key).unwrap();
        let err = dns
            .txt_values("_acme-challenge.tunnels.test")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("malformed answer"), "{err}");
    }
}
