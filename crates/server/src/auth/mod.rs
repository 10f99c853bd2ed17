//! Who a client is: the auth mode, checking the API key of a new
//! connection at its first `create_tunnel`, the backoff that turns away
//! addresses that keep failing, and (`revocation`) cutting the live
//! sessions of a key revoked while they run.
//!
//! Admission happens before the session holds any tunnel state: a refused
//! connection gets an `error` and a close (1008), nothing more.

mod backoff;
mod revocation;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use cryptun_proto::message::{CreateTunnel, ErrorCode, ErrorMessage, ServerMessage, encode};
use cryptun_proto::{Secret, close_code};
use tracing::{info, warn};

pub use backoff::{Backoff, BackoffConfig};
pub(crate) use revocation::{KeySessions, spawn_watcher};

use crate::State;
use crate::store::{Store, StoreError};

/// Whether clients must present an API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// No keys: every client is anonymous, reserved names are not enforced
    /// and no database is opened. The default on loopback with domain
    /// `localhost`, where only this machine can connect.
    #[default]
    Off,
    /// A key is checked when one is given (a bad one is refused); clients
    /// without one are anonymous and may claim any free name that is not
    /// reserved.
    Optional,
    /// Every connection needs a valid key. The default otherwise.
    Required,
}

impl AuthMode {
    /// The mode when none is chosen: `Off` only when the server can be
    /// reached from this machine alone *and* serves the `localhost` domain
    /// (the quick start and `cryptun demo`); `Required` otherwise, so a
    /// server on a public address, or behind a reverse proxy with a real
    /// domain, is closed unless its operator opens it.
    pub fn default_for(listen: SocketAddr, domain: &str) -> AuthMode {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let local_domain = domain == "localhost" || domain.ends_with(".localhost");
        if listen.ip().is_loopback() && local_domain {
            AuthMode::Off
        } else {
            AuthMode::Required
        }
    }
}

impl std::str::FromStr for AuthMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(AuthMode::Off),
            "optional" => Ok(AuthMode::Optional),
            "required" => Ok(AuthMode::Required),
            other => Err(format!(
                "unknown auth mode {other:?} (expected required, optional or off)"
            )),
        }
    }
}

impl std::fmt::Display for AuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthMode::Off => "off",
            AuthMode::Optional => "optional",
            AuthMode::Required => "required",
        })
    }
}

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
        match self.code {
            ErrorCode::Internal => close_code::INTERNAL,
            _ => close_code::POLICY,
        }
    }
}

/// Records a failed attempt from `ip` and returns the refusal to send.
pub(crate) fn failure(state: &State, ip: IpAddr, refusal: Refusal) -> Refusal {
    info!(%ip, code = ?refusal.code, reason = %refusal.message, "handshake refused");
    if let Some(block) = state.backoff.failed(ip, Instant::now()) {
        warn!(%ip, code = ?refusal.code, block = ?block, "repeated failed handshakes; refusing the address for a while");
    }
    refusal
}

/// Checks the key of a connection's first `create_tunnel`.
pub(crate) async fn authenticate(
    state: &State,
    peer: SocketAddr,
    create: &CreateTunnel,
) -> Result<Identity, Refusal> {
    if let Some(wait) = state.backoff.blocked(peer.ip(), Instant::now()) {
        return Err(Refusal::backoff(wait));
    }
    let mode = state.config.auth;
    let (Some(store), Some(token)) = (state.store.as_ref(), create.token.as_ref()) else {
        return match mode {
            AuthMode::Required => Err(failure(
                state,
                peer.ip(),
                Refusal::new(
                    ErrorCode::Unauthorized,
                    "this server requires an API key (the `token` field of create_tunnel)",
                ),
            )),
            AuthMode::Off | AuthMode::Optional => Ok(Identity::Anonymous),
        };
    };
    match blocking(store, {
        let token = token.clone();
        move |store| store.identify(&token)
    })
    .await
    {
        Ok(Some((id, name))) => {
            info!(key = %id, "authenticated");
            Ok(Identity::Key { id, name })
        }
        Ok(None) => Err(failure(
            state,
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

/// Runs a store call on the blocking pool: SQLite calls block, and a slow
/// disk must not hold up the runtime's workers.
pub(crate) async fn blocking<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .unwrap_or_else(|join| Err(StoreError::Task(join.to_string())))
}

/// A fresh reconnect secret: 32 characters, 160 bits.
pub(crate) fn new_reconnect_secret() -> Secret {
    Secret::generate("", 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mode_is_off_only_on_loopback_with_a_local_domain() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            AuthMode::default_for(at("127.0.0.1:4000"), "localhost"),
            AuthMode::Off
        );
        assert_eq!(
            AuthMode::default_for(at("[::1]:4000"), "Dev.Localhost."),
            AuthMode::Off
        );
        assert_eq!(
            AuthMode::default_for(at("0.0.0.0:80"), "localhost"),
            AuthMode::Required
        );
        assert_eq!(
            AuthMode::default_for(at("192.0.2.1:80"), "localhost"),
            AuthMode::Required
        );
        // Loopback behind a reverse proxy serving a real domain.
        assert_eq!(
            AuthMode::default_for(at("127.0.0.1:4000"), "tunnels.example.com"),
            AuthMode::Required
        );
    }

    #[test]
    fn modes_parse_and_print() {
        for mode in [AuthMode::Off, AuthMode::Optional, AuthMode::Required] {
            assert_eq!(mode.to_string().parse::<AuthMode>(), Ok(mode));
        }
        assert!("maybe".parse::<AuthMode>().is_err());
    }
}
