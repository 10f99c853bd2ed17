//! Keeping tunnels up: when the connection drops or the server restarts,
//! reconnect — to another server at once if there are several (a
//! cluster's nodes), else and then with exponential backoff and jitter —
//! and ask for the same tunnels again (each with its subdomain and the
//! reconnect secret the server's domain issued, see `names`).
//!
//! Connection losses are retried for as long as it takes; refusals are
//! final (an invalid name, a refused key: any server would give the same
//! answer). Two refusals are retried for a while: `subdomain_taken` on a
//! reconnect, because the name is most likely held by our own previous
//! connection, which the server has not yet seen die (it notices within
//! its heartbeat timeout); and `subdomain_held`, a name held for a
//! reconnection that is not ours to prove (it ends with its hold). A
//! failure that only one server can be blamed for (a certificate, a
//! redirect, a protocol it does not speak) moves on
//! to the next server, and is final only when every server of a round
//! failed so.
//!
//! What a reconnect sends differs from the first connect in one place,
//! [`reconnect_config`]: the subdomains, and the reconnect secrets as the
//! server's domain issued them.

use std::time::{Duration, Instant};

use cryptun_proto::ErrorCode;
use tokio_util::sync::CancellationToken;

use crate::handshake::{connect_to, is_answer};
use crate::names::Names;
use crate::servers::{self, Endpoint};
use crate::session::Session;
use crate::{ClientConfig, ClientError, Event, Events, TunnelCreated};

/// How the client reconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    /// The first wait after a connection is lost.
    pub initial: Duration,
    /// The longest wait between two attempts.
    pub max: Duration,
    /// A connection that lasted this long was stable: the next loss starts
    /// again from `initial`.
    pub stable: Duration,
    /// How long a reconnect keeps asking for a subdomain the server says is
    /// taken (`subdomain_taken`: by our own previous connection, until the
    /// server notices it is gone) or held (`subdomain_held`: for a
    /// reconnection that is not ours, until its hold ends) before giving up.
    pub reclaim: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            // A few seconds up is a successful reconnect: a server
            // restarted (or crashed) again later costs the first wait, not
            // a wait doubled by every earlier restart. A server that
            // accepts and drops at once still meets a growing, jittered
            // wait.
            stable: Duration::from_secs(5),
            // The server's default heartbeat takes up to 40 s to notice a
            // vanished client; twice that, plus margin.
            reclaim: Duration::from_secs(120),
        }
    }
}

/// Exponential backoff with jitter: each wait is the current step times a
/// random factor in [0.5, 1.5), never over the maximum; the step doubles
/// after each attempt.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: Reconnect,
    step: Duration,
}

impl Backoff {
    /// A backoff starting at `policy.initial`.
    pub fn new(policy: Reconnect) -> Self {
        Backoff {
            policy,
            step: policy.initial,
        }
    }

    /// The next wait; `spread` in [0, 1) picks the jitter.
    pub fn next(&mut self, spread: f64) -> Duration {
        let wait = self.jittered(self.step, spread);
        self.step = self.step.saturating_mul(2).min(self.policy.max);
        wait
    }

    /// `base` with jitter, within the maximum.
    pub fn jittered(&self, base: Duration, spread: f64) -> Duration {
        base.mul_f64(0.5 + spread.clamp(0.0, 1.0))
            .min(self.policy.max)
    }

    /// Starts again from the initial wait.
    pub fn reset(&mut self) {
        self.step = self.policy.initial;
    }

    /// After a session that was up for `up`: a stable one starts the
    /// waits again from the first step.
    pub fn after_session(&mut self, up: Duration) {
        if up >= self.policy.stable {
            self.reset();
        }
    }
}

/// A random number in [0, 1) from the operating system.
fn spread() -> f64 {
    getrandom::u32().map_or(0.5, |n| f64::from(n) / (f64::from(u32::MAX) + 1.0))
}

/// What to send when reconnecting after `previous` (the tunnels of
/// [`ClientConfig::tunnels`], in order): the same settings, asking for the
/// same subdomains with each tunnel's reconnect secret.
pub fn reconnect_config(config: &ClientConfig, previous: &[TunnelCreated]) -> ClientConfig {
    let mut again = config.clone();
    for (tunnel, created) in again.tunnels_mut().zip(previous) {
        tunnel.subdomain = Some(created.subdomain.clone());
        // An anonymous tunnel's name is held for it during the server's
        // grace period; the secret from its tunnel_created takes it back.
        tunnel.reconnect_secret = created.reconnect_secret.clone();
        // A TCP tunnel's port is held with its name: asked for again.
        if created.remote_port.is_some() {
            tunnel.remote_port = created.remote_port;
        }
    }
    again
}

/// Serves `session` and every session after it: when the connection is
/// lost, reconnects (reporting each step to `events`) and goes on. Returns
/// `Ok` when `shutdown` fires, or the error that made it give up.
pub async fn serve(
    config: &ClientConfig,
    mut session: Session,
    shutdown: CancellationToken,
    events: Events,
) -> Result<(), ClientError> {
    let mut recovery = Recovery {
        config,
        backoff: Backoff::new(config.reconnect),
        names: Names::new(session.server(), session.tunnels()),
        shutdown: &shutdown,
        events: &events,
    };
    loop {
        let server = session.server().clone();
        let started = Instant::now();
        let lost = match session.run(shutdown.clone(), events.clone()).await {
            Ok(()) => return Ok(()),
            Err(err) if err.is_final() => return Err(err),
            Err(err) => err,
        };
        recovery.backoff.after_session(started.elapsed());
        session = match recovery.reconnect(lost, &server).await? {
            Some(session) => session,
            None => return Ok(()),
        };
        recovery.names.learn(session.server(), session.tunnels());
        events.emit(Event::Connected {
            server: session.server().clone(),
        });
        for tunnel in session.tunnels() {
            events.emit(Event::Reconnected {
                tunnel: tunnel.clone(),
            });
        }
    }
}

/// What reconnecting works with, and remembers from one loss to the next.
struct Recovery<'a> {
    config: &'a ClientConfig,
    backoff: Backoff,
    names: Names,
    shutdown: &'a CancellationToken,
    events: &'a Events,
}

/// How a round of attempts ended, when no session came of it.
enum Failed {
    /// Worth another round, after the last attempt's error (`None`: there
    /// was no candidate to try).
    Retry(Option<ClientError>),
    /// No candidate can help: give up with this error.
    GiveUp(ClientError),
    /// `shutdown` fired.
    Shutdown,
}

impl Recovery<'_> {
    /// A new session after losing the one on `from` for `lost`; `None` if
    /// `shutdown` fired first.
    ///
    /// First every other candidate, at once (spread over up to half the
    /// initial wait): a cluster's other nodes are up. Then rounds of every
    /// candidate, each after the wait of the backoff (or the one a server
    /// going away asked for): the server lost may come back.
    async fn reconnect(
        &mut self,
        mut lost: ClientError,
        from: &Endpoint,
    ) -> Result<Option<Session>, ClientError> {
        let policy = self.config.reconnect;
        let lost_at = Instant::now();
        let mut attempt = 0;
        let Some(mut round) = self.candidates().await else {
            return Ok(None);
        };
        round.retain(|e| e != from);
        let mut wait = policy.initial.mul_f64(spread() / 2.0);
        loop {
            match self.round(&round, wait, &lost, lost_at, &mut attempt).await {
                Ok(session) => return Ok(Some(session)),
                Err(Failed::Shutdown) => return Ok(None),
                Err(Failed::GiveUp(err)) => return Err(err),
                Err(Failed::Retry(Some(err))) => lost = err,
                Err(Failed::Retry(None)) => {}
            }
            wait = match &lost {
                // The server left on purpose and said when to come back.
                ClientError::GoingAway { reconnect_after } => {
                    self.backoff.reset();
                    self.backoff.jittered(*reconnect_after, spread())
                }
                _ => self.backoff.next(spread()),
            };
            round = match self.candidates().await {
                Some(round) => round,
                None => return Ok(None),
            };
        }
    }

    /// A new round of candidates ([`servers::round`]); `None` if
    /// `shutdown` fired first (resolving a name may take a while).
    async fn candidates(&self) -> Option<Vec<Endpoint>> {
        tokio::select! {
            () = self.shutdown.cancelled() => None,
            round = servers::round(self.config) => Some(round),
        }
    }

    /// Tries each of `candidates` in turn, the first after `wait`, the
    /// others at once, reporting each attempt; `lost` is why the last
    /// connection or attempt failed.
    async fn round(
        &self,
        candidates: &[Endpoint],
        wait: Duration,
        lost: &ClientError,
        lost_at: Instant,
        attempt: &mut u32,
    ) -> Result<Session, Failed> {
        let mut why = lost.to_string();
        let mut last = None;
        let mut first_final = None;
        let mut wait = wait;
        for endpoint in candidates {
            *attempt += 1;
            self.events.emit(Event::Disconnected {
                error: why.clone(),
                retry_in: wait,
                attempt: *attempt,
            });
            let again = reconnect_config(self.config, self.names.for_server(endpoint));
            let result = tokio::select! {
                () = self.shutdown.cancelled() => return Err(Failed::Shutdown),
                result = async {
                    tokio::time::sleep(wait).await;
                    connect_to(&again, endpoint).await
                } => result,
            };
            wait = Duration::ZERO;
            let err = match result {
                Ok(session) => return Ok(session),
                Err(err) => err,
            };
            why = err.to_string();
            if worth_retrying(&err, lost_at.elapsed(), self.config.reconnect) {
                last = Some(err);
            } else if is_answer(&err) {
                return Err(Failed::GiveUp(err));
            } else if first_final.is_none() {
                // This server cannot be used; another may.
                first_final = Some(err);
            }
        }
        match (last, first_final) {
            (None, Some(err)) => Err(Failed::GiveUp(err)),
            (last, _) => Err(Failed::Retry(last)),
        }
    }
}

/// Whether a failed reconnect, `since` the connection was lost, should be
/// tried again.
fn worth_retrying(err: &ClientError, since: Duration, policy: Reconnect) -> bool {
    match err {
        ClientError::Refused {
            code: ErrorCode::SubdomainTaken,
            ..
        }
        | ClientError::Held { .. } => since < policy.reclaim,
        err => !err.is_final(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Reconnect {
        Reconnect {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(10),
            stable: Duration::from_secs(60),
            reclaim: Duration::from_secs(5),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_and_resets() {
        let mut b = Backoff::new(policy());
        let waits: Vec<u64> = (0..6).map(|_| b.next(0.5).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        b.reset();
        assert_eq!(b.next(0.5), Duration::from_secs(1));
    }

    #[test]
    fn a_session_up_a_few_seconds_starts_the_waits_again_and_a_dropped_one_does_not() {
        let mut b = Backoff::new(Reconnect::default());
        let at_once: Vec<u64> = (0..3)
            .map(|_| {
                b.after_session(Duration::from_millis(100));
                b.next(0.5).as_secs()
            })
            .collect();
        assert_eq!(at_once, [1, 2, 4], "accepted and dropped: growing waits");
        // Up for a few seconds: the first step again, jitter kept.
        b.after_session(Duration::from_secs(5));
        assert_eq!(b.next(0.5), Duration::from_secs(1));
        b.after_session(Duration::from_secs(5));
        assert_eq!(b.next(0.0), Duration::from_millis(500));
    }

    #[test]
    fn jitter_spreads_between_half_and_one_and_a_half() {
        let mut b = Backoff::new(policy());
        assert_eq!(b.next(0.0), Duration::from_millis(500));
        let second = b.next(0.999);
        assert!(second > Duration::from_millis(2990) && second < Duration::from_secs(3));
        // Never over the maximum, whatever the jitter.
        for _ in 0..5 {
            assert!(b.next(0.999) <= Duration::from_secs(10));
        }
        let s = spread();
        assert!((0.0..1.0).contains(&s), "{s}");
    }

    #[test]
    fn refusals_are_final_except_a_taken_name_for_a_while() {
        let refused = |code| ClientError::Refused {
            code,
            message: String::new(),
        };
        let p = policy();
        let early = Duration::from_secs(1);
        let late = Duration::from_secs(6);
        assert!(worth_retrying(
            &refused(ErrorCode::SubdomainTaken),
            early,
            p
        ));
        assert!(!worth_retrying(
            &refused(ErrorCode::SubdomainTaken),
            late,
            p
        ));
        assert!(!worth_retrying(
            &refused(ErrorCode::InvalidSubdomain),
            early,
            p
        ));
        assert!(!worth_retrying(
            &refused(ErrorCode::UnsupportedVersion),
            early,
            p
        ));
        assert!(!worth_retrying(
            &ClientError::Protocol("x".into()),
            early,
            p
        ));
        let revoked = ClientError::KeyRevoked {
            message: "revoked".into(),
        };
        assert!(revoked.is_final());
        assert!(!worth_retrying(&revoked, early, p));
        let lost = ClientError::Disconnected("reset".into());
        assert!(worth_retrying(&lost, late, p));
        assert!(worth_retrying(&ClientError::Timeout(early), late, p));
    }

    #[test]
    fn a_refusal_ends_the_search_and_a_servers_own_fault_moves_on() {
        // What any server would answer: no other is tried.
        let refused = ClientError::Refused {
            code: ErrorCode::Unauthorized,
            message: String::new(),
        };
        assert!(is_answer(&refused));
        assert!(is_answer(&ClientError::KeyRevoked {
            message: String::new()
        }));
        // Final for this server, but another may do.
        let untrusted = ClientError::Untrusted {
            url: "wss://a/ws".into(),
            reason: "expired".into(),
        };
        assert!(untrusted.is_final() && !is_answer(&untrusted));
        assert!(!is_answer(&ClientError::Protocol("x".into())));
        assert!(!is_answer(&ClientError::Disconnected("reset".into())));
    }
}
