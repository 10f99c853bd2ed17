//! Parsers for flag values that are not plain numbers or durations.

use cryptun_client::{BasicAuth, HostHeader};
use cryptun_server::AdminToken;

/// An address or CIDR block, checked here (the server would refuse a bad
/// one only once connected) and passed on as written.
pub fn cidr(s: &str) -> Result<String, String> {
    s.parse::<cryptun_proto::net::Cidr>()
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

/// A `--server` address, checked here and passed on as written.
pub fn server(s: &str) -> Result<String, String> {
    cryptun_client::target::control_url(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

/// A `--host-header`: `rewrite`, `preserve` or a host with an optional port.
pub fn host_header(s: &str) -> Result<HostHeader, String> {
    s.parse()
        .map_err(|e: cryptun_client::AddressError| e.to_string())
}

/// A `--trusted-proxy` address or CIDR block; not one holding every
/// address, which would let any visitor name its own.
pub fn trusted_proxy(s: &str) -> Result<cryptun_proto::net::Cidr, String> {
    let cidr: cryptun_proto::net::Cidr = s
        .parse()
        .map_err(|e: cryptun_proto::net::CidrError| e.to_string())?;
    if cidr.prefix() == 0 {
        return Err(format!(
            "{s:?} trusts every address: any visitor could then choose its own; name the proxies"
        ));
    }
    Ok(cidr)
}

/// A byte count: digits, optionally followed by `K`, `M` or `G` (binary
/// multiples, case-insensitive): `1048576`, `512K`, `10M`.
pub fn size(s: &str) -> Result<u64, String> {
    let err = || format!("{s:?} is not a size (write e.g. 1048576, 512K, 10M or 1G)");
    let (digits, shift) = match s.as_bytes().last().map(u8::to_ascii_uppercase) {
        Some(b'K') => (&s[..s.len() - 1], 10),
        Some(b'M') => (&s[..s.len() - 1], 20),
        Some(b'G') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let n: u64 = digits.parse().map_err(|_| err())?;
    n.checked_mul(1 << shift).ok_or_else(err)
}

/// `user:password` (the password may contain colons).
pub fn basic_auth(s: &str) -> Result<BasicAuth, String> {
    match s.split_once(':') {
        Some((user, pass)) if !user.is_empty() && !pass.is_empty() => Ok(BasicAuth {
            username: user.to_owned(),
            password: pass.to_owned(),
        }),
        _ => Err("expected USER:PASSWORD, both non-empty".to_owned()),
    }
}

/// An admin token, kept only as its digest from here on.
pub fn admin_token(s: &str) -> Result<AdminToken, String> {
    AdminToken::new(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size("1048576"), Ok(1 << 20));
        assert_eq!(size("512k"), Ok(512 << 10));
        assert_eq!(size("10M"), Ok(10 << 20));
        assert_eq!(size("1G"), Ok(1 << 30));
        for bad in ["", "M", "1.5M", "-1", "10MB", "99999999999999999999G"] {
            assert!(size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn credentials() {
        let auth = basic_auth("ann:pa:ss").unwrap();
        assert_eq!(
            (auth.username.as_str(), auth.password.as_str()),
            ("ann", "pa:ss")
        );
        for bad in ["ann", ":x", "ann:"] {
            assert!(basic_auth(bad).is_err(), "{bad:?}");
        }
    }
}
