//! Who a client is: checking the API key of a new connection at its first
//! `create_tunnel` against the auth mode and the key store, with the
//! backoff that turns away addresses that keep failing. (Cutting the live
//! sessions of a key revoked while they run is `revocation`'s.)
//!
//! Admission happens before the session holds any tunnel state: a refused
//! connection gets an `error` and a close (1008), nothing more.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptun_proto::Secret;
use cryptun_proto::message::{CreateTunnel, ErrorCode, ErrorMessage, ServerMessage, encode};
use tracing::{info, warn};

use crate::config::AuthMode;
use crate::policy::{Backoff, Who};
use crate::store::Keys;

/// Who a connection is, once its first `create_tunnel` is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Identity {
    /// No key (auth off, or optional and none given).
    Anonymous,
    /// The key it presented.
    Key {
        /// Its id (not secret).
        id: String,
        /// Its human name, as `cryptun keys create --name` gave it.
        name: String,
    },
}

/// When a client over a quota is told to try again: a guess, since a
/// place frees when one of its sessions or tunnels ends.
const QUOTA_RETRY: Duration = Duration::from_secs(10);

impl Identity {
    /// Whose share a connection from `peer` counts in: its key's, or its
    /// address's.
    pub(crate) fn who(&self, peer: SocketAddr) -> Who {
        match self {
            Identity::Key { id, .. } => Who::Key(id.clone()),
            Identity::Anonymous => Who::address(peer.ip()),
        }
    }

    /// The key's id, if it has one.
    pub(crate) fn key_id(&self) -> Option<&str> {
        match self {
            Identity::Key { id, .. } => Some(id),
            Identity::Anonymous => None,
        }
    }
}

/// Why a `create_tunnel` was refused: the `error` to send and, for a
/// connection's first one, the close code that follows.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    pub(crate) retry_after: Option<Duration>,
}

impl Refusal {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The refusal for an address in backoff.
    pub(crate) fn backoff(wait: Duration) -> Self {
        Refusal {
            code: ErrorCode::TooManyAttempts,
            message: format!(
                "too many failed attempts from this address; try again in {}s",
                wait.as_secs_f64().ceil()
            ),
            retry_after: Some(wait),
        }
    }

    /// The refusal for an identity over its quota of `what` (`max` each).
    pub(crate) fn quota(what: &str, max: usize) -> Self {
        Refusal {
            code: ErrorCode::QuotaExceeded,
            message: format!(
                "at most {max} {what} at once for one API key, or one address without a key; try again when one ends"
            ),
            retry_after: Some(QUOTA_RETRY),
        }
    }

    /// The `error` message's text.
    pub(crate) fn to_text(&self) -> String {
        encode(&ServerMessage::Error(ErrorMessage {
            code: self.code,
            message: self.message.clone(),
            request_id: None,
            retry_after_ms: self
                .retry_after
                .map(|d| d.as_millis().try_into().unwrap_or(u64::MAX)),
        }))
    }

    /// The close code when this ends the connection: 1011 when the server
    /// is at fault, 1008 otherwise.
    pub(crate) fn close_code(&self) -> u16 {
        self.code.handshake_close_code()
    }
}

/// Who may connect: the auth mode, the key store it checks, and the
/// backoff that turns away addresses that keep failing.
#[derive(Clone)]
pub(crate) struct Auth {
    mode: AuthMode,
    /// Keys and reserved names (neither is looked at when auth is off).
    store: Arc<dyn Keys>,
    backoff: Arc<Backoff>,
}

impl Auth {
    pub(crate) fn new(mode: AuthMode, store: Arc<dyn Keys>, backoff: Arc<Backoff>) -> Self {
        Auth {
            mode,
            store,
            backoff,
        }
    }

    /// The key store, where reservations are enforced: with auth on.
    pub(crate) fn keys(&self) -> Option<&dyn Keys> {
        (self.mode != AuthMode::Off).then_some(self.store.as_ref())
    }

    /// How long `ip` is still refused for its failed attempts, if it is.
    pub(crate) fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        self.backoff.blocked(ip, Instant::now())
    }

    /// Records a failed attempt from `ip` and returns the refusal to send.
    pub(crate) fn failure(&self, ip: IpAddr, refusal: Refusal) -> Refusal {
        info!(%ip, code = ?refusal.code, reason = %refusal.message, "handshake refused");
        if let Some(block) = self.backoff.failed(ip, Instant::now()) {
            warn!(%ip, code = ?refusal.code, block = ?block, "repeated failed handshakes; refusing the address for a while");
        }
        refusal
    }

    /// Checks the key of a connection's first `create_tunnel`.
    pub(crate) async fn authenticate(
        &self,
        peer: SocketAddr,
        create: &CreateTunnel,
    ) -> Result<Identity, Refusal> {
        if let Some(wait) = self.blocked(peer.ip()) {
            return Err(Refusal::backoff(wait));
        }
        let (Some(store), Some(token)) = (self.keys(), create.token.as_ref()) else {
            return match self.mode {
                AuthMode::Required => Err(self.failure(
                    peer.ip(),
                    Refusal::new(ErrorCode::Unauthorized, "this server requires an API key"),
                )),
                AuthMode::Off | AuthMode::Optional => Ok(Identity::Anonymous),
            };
        };
        match store.identify(token.clone()).await {
            Ok(Some((id, name))) => {
                info!(key = %id, "authenticated");
                Ok(Identity::Key { id, name })
            }
            Ok(None) => Err(self.failure(
                peer.ip(),
                Refusal::new(ErrorCode::Unauthorized, "the API key is unknown or revoked"),
            )),
            Err(err) => {
                warn!(%err, "could not check an API key");
                Err(Refusal::new(
                    ErrorCode::Internal,
                    "the server could not check the API key; try again later",
                ))
            }
        }
    }
}

/// Characters in a reconnect secret: 32 of `[a-z2-7]`, 160 bits.
const RECONNECT_SECRET_LEN: usize = 32;

/// A fresh reconnect secret: 32 characters, 160 bits.
pub(crate) fn new_reconnect_secret() -> Secret {
    Secret::generate("", RECONNECT_SECRET_LEN)
}

/// Whether `secret` has the form of one [`new_reconnect_secret`] issues
/// (its form, not its strength: admission keeps a secret only when it
/// takes back a name held for it, so it is one this server issued).
pub(crate) fn is_reconnect_secret(secret: &Secret) -> bool {
    cryptun_proto::is_random_id(secret.expose(), RECONNECT_SECRET_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::BackoffConfig;
    use crate::store::Store;

    fn auth(mode: AuthMode) -> (Auth, Store) {
        let store = Store::in_memory().unwrap();
        let backoff = Arc::new(Backoff::new(BackoffConfig {
            free_failures: 1,
            ..BackoffConfig::default()
        }));
        (Auth::new(mode, Arc::new(store.clone()), backoff), store)
    }

    fn create(token: Option<&Secret>) -> CreateTunnel {
        CreateTunnel {
            token: token.cloned(),
            ..CreateTunnel::default()
        }
    }

    #[test]
    fn only_secrets_of_the_issued_form_are_kept() {
        assert!(is_reconnect_secret(&new_reconnect_secret()));
        let short = Secret::new("c2hjm5xq7ypd3wlz4u6bna2vkr7tfe5");
        let upper = Secret::new("C2HJM5XQ7YPD3WLZ4U6BNA2VKR7TFE5O");
        let ones = Secret::new("11111111111111111111111111111111");
        for weak in [short, upper, ones] {
            assert!(!is_reconnect_secret(&weak));
        }
    }

    #[tokio::test]
    async fn keys_are_checked_against_the_store_and_failures_back_off() {
        let (auth, store) = auth(AuthMode::Required);
        let key = store.create_key("ci").unwrap();
        let peer: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let known = auth.authenticate(peer, &create(Some(&key.token))).await;
        assert_eq!(known.unwrap().key_id(), Some(key.info.id.as_str()));
        // Without a key, then with a wrong one: refused, and the second
        // failure (one is free) puts the address in backoff.
        let none = auth.authenticate(peer, &create(None)).await.unwrap_err();
        assert_eq!(none.code, ErrorCode::Unauthorized);
        let wrong = Secret::new("ck_abcdefgh_wrong");
        let bad = auth
            .authenticate(peer, &create(Some(&wrong)))
            .await
            .unwrap_err();
        assert_eq!(bad.code, ErrorCode::Unauthorized);
        let blocked = auth.authenticate(peer, &create(Some(&key.token))).await;
        assert_eq!(blocked.unwrap_err().code, ErrorCode::TooManyAttempts);
        // Another address is not.
        let other: SocketAddr = "192.0.2.2:1".parse().unwrap();
        assert!(
            auth.authenticate(other, &create(Some(&key.token)))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn with_auth_off_no_key_is_looked_at() {
        let (auth, store) = auth(AuthMode::Off);
        let key = store.create_key("ci").unwrap();
        let peer: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let with_key = auth.authenticate(peer, &create(Some(&key.token))).await;
        assert_eq!(with_key.unwrap(), Identity::Anonymous);
        assert!(
            auth.keys().is_none(),
            "reservations are not enforced either"
        );
        let (optional, _) = self::auth(AuthMode::Optional);
        let anonymous = optional.authenticate(peer, &create(None)).await;
        assert_eq!(anonymous.unwrap(), Identity::Anonymous);
    }
}
