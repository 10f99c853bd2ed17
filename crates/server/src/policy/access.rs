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

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use cryptun_proto::ErrorCode;
use cryptun_proto::message::{BasicAuth, CreateTunnel};
use http::{HeaderMap, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use cryptun_proto::net::{Cidr, CidrError};

use crate::error::GatewayError;

/// Most entries in `allow_ips` and `deny_ips` together: every request walks
/// both lists, so they stay short.
pub const MAX_RULES: usize = 64;
/// Longest user name or password accepted, in bytes.
const MAX_CREDENTIAL: usize = 256;

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
                    "at most {MAX_RULES} allowed and denied address rules together, not {rules}"
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
        let bad = |why: &str| {
            Err((
                ErrorCode::InvalidBasicAuth,
                format!("visitor credentials (Basic): {why}"),
            ))
        };
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
