//! Secrets that travel on the wire: API keys (`token`) and reconnect
//! secrets.
//!
//! A [`Secret`] cannot leak by accident: its `Debug` prints `***` and it has
//! no `Display`, so a message or config logged with `{:?}` shows no key;
//! reading the value takes a deliberate [`Secret::expose`]. Equality is
//! constant-time in the contents (only the length can show), so comparing a
//! presented secret with a known one reveals nothing through timing.

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// A secret string: an API key or a reconnect secret.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// `prefix` followed by `len` random characters of `[a-z2-7]` (5 bits
    /// of operating-system randomness each).
    pub fn generate(prefix: &str, len: usize) -> Self {
        Secret(format!("{prefix}{}", crate::random_id(len)))
    }

    /// The secret itself, for sending, hashing or showing it once.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for Secret {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value() {
        let secret = Secret::new("ck_abcdefgh_supersecret");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{:?}", Some(secret.clone())), "Some(***)");
        assert_eq!(secret.expose(), "ck_abcdefgh_supersecret");
    }

    #[test]
    fn serialises_as_a_plain_string_and_compares_by_value() {
        let secret = Secret::generate("ck_", 40);
        assert_eq!(secret.expose().len(), 43);
        let json = serde_json::to_string(&secret).unwrap();
        assert_eq!(json, format!("\"{}\"", secret.expose()));
        let back: Secret = serde_json::from_str(&json).unwrap();
        assert_eq!(back, secret);
        assert_ne!(Secret::new("a"), Secret::new("b"));
        assert_ne!(Secret::new("a"), Secret::new("ab"));
    }
}
