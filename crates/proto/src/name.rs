//! Tunnel names: the subdomain label a tunnel is reached under, and the
//! rules every party checks it by (`docs/PROTOCOL.md`, section 2).
//!
//! A name is one DNS label: 1 to 63 letters, digits or hyphens, not
//! starting or ending with a hyphen, compared without regard to case (kept
//! lowercase). Names the server draws itself are `tunnel-` and the tunnel
//! id; that shape cannot be reserved, so a generated name never needs a
//! look-up of who reserved it.

use std::fmt;

/// Prefix of the names the server generates.
pub const GENERATED_PREFIX: &str = "tunnel-";

/// A valid subdomain label, lowercase.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subdomain(String);

/// A name that is not one DNS label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the subdomain {0:?} is not a valid DNS label (1-63 letters, digits or hyphens, not starting or ending with a hyphen)"
)]
pub struct NameError(String);

impl Subdomain {
    /// Checks `name` and keeps it lowercased.
    pub fn parse(name: &str) -> Result<Subdomain, NameError> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && !name.starts_with('-')
            && !name.ends_with('-')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if ok {
            Ok(Subdomain(name.to_ascii_lowercase()))
        } else {
            Err(NameError(name.to_owned()))
        }
    }

    /// The name generated for tunnel `id` (`[a-z2-7]`, see
    /// [`crate::random_id`]).
    pub fn generated(id: &str) -> Subdomain {
        Subdomain(format!("{GENERATED_PREFIX}{id}"))
    }

    /// Whether it has the generated names' shape (so cannot be reserved).
    pub fn is_generated(&self) -> bool {
        self.0.starts_with(GENERATED_PREFIX)
    }

    /// The label.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Subdomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Subdomain {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Subdomain {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<Subdomain> for String {
    fn from(name: Subdomain) -> String {
        name.0
    }
}

impl serde::Serialize for Subdomain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_dns_label_kept_lowercase() {
        assert_eq!(Subdomain::parse("My-App2").unwrap().as_str(), "my-app2");
        assert_eq!(
            Subdomain::parse(&"a".repeat(63)).unwrap().as_str().len(),
            63
        );
        for bad in ["", "-a", "a-", "a.b", "a_b", "ü", &"a".repeat(64)] {
            let err = Subdomain::parse(bad).unwrap_err();
            assert!(err.to_string().contains("not a valid DNS label"), "{bad:?}");
        }
    }

    #[test]
    fn generated_names_have_their_own_shape() {
        let name = Subdomain::generated("k6fgeiplbr");
        assert_eq!(name.as_str(), "tunnel-k6fgeiplbr");
        assert!(name.is_generated());
        assert!(Subdomain::parse("Tunnel-x").unwrap().is_generated());
        assert!(!Subdomain::parse("myapp").unwrap().is_generated());
    }
}
