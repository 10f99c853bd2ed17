//! Who may reach a tunnel: the rules its client chose in `create_tunnel`
//! (IP allow and deny lists, HTTP Basic credentials), enforced here before
//! a request goes anywhere near the client.
//!
//! The address checked is the TCP peer's, as the server saw it, or from a
//! `--trusted-proxy` the one it forwarded (see `forwarded`); from anyone
//! else `X-Forwarded-For` and the like are never trusted. IPv4-mapped IPv6
//! addresses (`::ffff:203.0.113.9`, from a dual-stack listener), in rules
//! as in requests, count as their IPv4 address.
//!
//! Credentials are kept only as the SHA-256 digest of `user:password`, and a
//! visitor's are compared with it in constant time. Neither is ever logged:
//! [`BasicAuth`]'s `Debug` hides the password, and the `Authorization`
//! header is taken off the request before it is forwarded (it is meant for
//! the tunnel, not the app).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use cryptun_proto::ErrorCode;
use cryptun_proto::message::{BasicAuth, CreateTunnel};
use http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::GatewayError;

/// Most entries in `allow_ips` and `deny_ips` together: every request walks
/// both lists, so they stay short.
pub const MAX_RULES: usize = 64;
/// Longest user name or password accepted, in bytes.
const MAX_CREDENTIAL: usize = 256;

/// An IPv4 or IPv6 network: an address with its host bits cleared, and a
/// prefix length. A bare address is a network of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// A string that is neither an IP address nor a CIDR block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP address or CIDR block (such as 203.0.113.0/24 or 2001:db8::/32)")]
pub struct CidrError(String);

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let err = || CidrError(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            // Digits only: no sign, no spaces, no leading "+".
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(err)?
            }
            Some(_) => return Err(err()),
        };
        // An IPv4-mapped network (`::ffff:10.0.0.0/104`) is the IPv4 one:
        // addresses are compared as IPv4 (see `canonical`).
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        Ok(Cidr {
            network: masked(addr, prefix),
            prefix,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Cidr {
    /// The prefix length: 0 is every address.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is inside this network. An IPv4 network never holds an
    /// IPv6 address (except IPv4-mapped ones), nor the reverse.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.network.is_ipv4() && masked(ip, self.prefix) == self.network
    }
}

/// `ip` with every bit after the first `prefix` cleared.
pub(crate) fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is; others unchanged.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A tunnel's access rules, validated.
#[derive(Debug, Default)]
pub struct Access {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    basic: Option<Credentials>,
}

/// The digest of `user:password`; `Debug` shows nothing of it.
struct Credentials {
    digest: Vec<u8>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(***)")
    }
}

/// Why `create_tunnel`'s access rules were refused: the error code and the
/// message for the client.
pub type Refusal = (ErrorCode, String);

impl Access {
    /// Validates the rules asked for in `create`.
    pub fn from_request(create: &CreateTunnel) -> Result<Self, Refusal> {
        let rules = create.allow_ips.len() + create.deny_ips.len();
        if rules > MAX_RULES {
            return Err((
                ErrorCode::InvalidCidr,
                format!(
                    "at most {MAX_RULES} entries in allow_ips and deny_ips together, not {rules}"
                ),
            ));
        }
        let parse = |list: &[String]| -> Result<Vec<Cidr>, Refusal> {
            list.iter()
                .map(|s| {
                    s.parse()
                        .map_err(|e: CidrError| (ErrorCode::InvalidCidr, e.to_string()))
                })
                .collect()
        };
        let basic = match &create.basic_auth {
            Some(auth) => Some(Credentials::new(auth)?),
            None => None,
        };
        Ok(Access {
            allow: parse(&create.allow_ips)?,
            deny: parse(&create.deny_ips)?,
            basic,
        })
    }

    /// Refuses a visitor at `ip` that the lists keep out: a deny entry
    /// wins; with an allow list, only its networks are served.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), GatewayError> {
        let denied = self.deny.iter().any(|c| c.contains(ip));
        let allowed = self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip));
        if denied || !allowed {
            return Err(GatewayError::Forbidden);
        }
        Ok(())
    }

    /// Refuses a request without the tunnel's credentials (when it has
    /// some); `realm` names the tunnel in the challenge.
    pub fn check_credentials(&self, headers: &HeaderMap, realm: &str) -> Result<(), GatewayError> {
        let Some(expected) = &self.basic else {
            return Ok(());
        };
        let presented = presented_basic(headers).unwrap_or_default();
        let digest = Sha256::digest(&presented);
        if bool::from(digest.as_slice().ct_eq(&expected.digest)) {
            Ok(())
        } else {
            Err(GatewayError::Unauthorized(realm.to_owned()))
        }
    }

    /// Whether visitors must authenticate.
    pub fn has_credentials(&self) -> bool {
        self.basic.is_some()
    }

    /// The allow list, for the admin API.
    pub fn allowed(&self) -> Vec<String> {
        self.allow.iter().map(Cidr::to_string).collect()
    }

    /// The deny list, for the admin API.
    pub fn denied(&self) -> Vec<String> {
        self.deny.iter().map(Cidr::to_string).collect()
    }
}

impl Credentials {
    fn new(auth: &BasicAuth) -> Result<Self, Refusal> {
        let bad = |why: &str| Err((ErrorCode::InvalidBasicAuth, format!("basic_auth: {why}")));
        let controls = |s: &str| s.chars().any(char::is_control);
        if auth.username.is_empty() || auth.password.is_empty() {
            return bad("the user name and the password must not be empty");
        }
        if auth.username.len() > MAX_CREDENTIAL || auth.password.len() > MAX_CREDENTIAL {
            return bad(&format!("at most {MAX_CREDENTIAL} bytes each"));
        }
        if auth.username.contains(':') {
            return bad("the user name must not contain a colon (RFC 7617)");
        }
        if controls(&auth.username) || controls(&auth.password) {
            return bad("control characters are not allowed");
        }
        let joined = format!("{}:{}", auth.username, auth.password);
        Ok(Credentials {
            digest: Sha256::digest(joined.as_bytes()).to_vec(),
        })
    }
}

/// The decoded `user:password` of the request's one `Authorization: Basic`
/// header, if it has exactly one that decodes.
fn presented_basic(headers: &HeaderMap) -> Option<Vec<u8>> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let value = value.as_bytes().trim_ascii();
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, token) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    BASE64.decode(token.trim_ascii()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let net: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(net.to_string(), "10.0.0.0/8");
        assert!(net.contains(ip("10.255.0.1")));
        assert!(net.contains(ip("::ffff:10.0.0.1")), "IPv4-mapped");
        assert!(!net.contains(ip("11.0.0.1")));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.1")) && !all.contains(ip("::1")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        let any6: Cidr = "::/0".parse().unwrap();
        assert!(any6.contains(ip("::1")));
        // An IPv4-mapped rule is the IPv4 one, as IPv4-mapped peers are.
        let mapped: Cidr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(mapped.to_string(), "10.0.0.1/32");
        assert!(mapped.contains(ip("10.0.0.1")) && mapped.contains(ip("::ffff:10.0.0.1")));
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0/8",
            "::/129",
            "host.example",
            "10.0.0.0/8/8",
            " 10.0.0.0/8",
            "10.0.0.0/ 8",
            "1.2.3.4/0008",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} parsed");
        }
    }

    fn access(create: CreateTunnel) -> Result<Access, Refusal> {
        Access::from_request(&create)
    }

    #[test]
    fn deny_wins_and_allow_lists_restrict() {
        let rules = access(CreateTunnel {
            allow_ips: vec!["127.0.0.0/8".into()],
            deny_ips: vec!["127.0.0.2".into()],
            ..Default::default()
        })
        .unwrap();
        assert!(rules.check_ip(ip("127.0.0.1")).is_ok());
        assert!(matches!(
            rules.check_ip(ip("127.0.0.2")),
            Err(GatewayError::Forbidden)
        ));
        assert!(rules.check_ip(ip("192.0.2.1")).is_err());
        assert!(
            access(CreateTunnel::default())
                .unwrap()
                .check_ip(ip("192.0.2.1"))
                .is_ok()
        );
        let (code, message) = access(CreateTunnel {
            deny_ips: vec!["10.0.0.0/8".into(), "nope".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(code, ErrorCode::InvalidCidr);
        assert!(message.contains("\"nope\""), "{message}");
    }

    fn with_auth(headers: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for h in headers {
            map.append(header::AUTHORIZATION, h.parse().unwrap());
        }
        map
    }

    #[test]
    fn basic_credentials_are_checked_and_hidden() {
        let rules = access(CreateTunnel {
            basic_auth: Some(BasicAuth {
                username: "ann".into(),
                password: "pa:ss word".into(),
            }),
            ..Default::default()
        })
        .unwrap();
        assert!(!format!("{rules:?}").contains("pa:ss"));
        let good = format!("Basic {}", BASE64.encode("ann:pa:ss word"));
        assert!(rules.check_credentials(&with_auth(&[&good]), "t").is_ok());
        let lower = format!("basic   {}", BASE64.encode("ann:pa:ss word"));
        assert!(rules.check_credentials(&with_auth(&[&lower]), "t").is_ok());
        for bad in [
            vec![],
            vec![format!("Basic {}", BASE64.encode("ann:wrong"))],
            vec![format!("Bearer {}", BASE64.encode("ann:pa:ss word"))],
            vec!["Basic !!!".to_owned()],
            vec![good.clone(), good.clone()],
        ] {
            let refs: Vec<&str> = bad.iter().map(String::as_str).collect();
            let err = rules.check_credentials(&with_auth(&refs), "t").unwrap_err();
            assert!(matches!(err, GatewayError::Unauthorized(_)), "{bad:?}");
        }
        for (user, pass) in [("", "x"), ("x", ""), ("a:b", "x"), ("a", "x\ny")] {
            let refused = access(CreateTunnel {
                basic_auth: Some(BasicAuth {
                    username: user.into(),
                    password: pass.into(),
                }),
                ..Default::default()
            });
            assert_eq!(
                refused.unwrap_err().0,
                ErrorCode::InvalidBasicAuth,
                "{user:?}"
            );
        }
    }
}
