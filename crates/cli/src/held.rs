//! A name held for its previous client: at the first connect, a client
//! refused with `subdomain_held` waits for the hold to end and asks again,
//! saying so on one line each time, instead of giving up. Ctrl-C stops the
//! wait; any other refusal ends it (the caller reports it).
//!
//! The previous client is usually this user's own, killed without closing
//! its tunnels: if it comes back within the hold, the name is live and the
//! next answer, `subdomain_taken`, ends the wait.

use std::time::Duration;

use cryptun_client::{ClientConfig, ClientError, Session};
use tokio_util::sync::CancellationToken;

use crate::lines;

/// Asked again this long after the hold was said to end, so that the
/// server's clock has passed it too.
const MARGIN: Duration = Duration::from_millis(200);

/// The longest single wait, whatever the server says: a server that
/// restores holds after a restart, or a cluster's, may state a long one,
/// and the name may be freed earlier (its owner closes it on purpose).
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Connects as [`cryptun_client::connect`] does, waiting out names held
/// for another client; `Ok(None)` if `shutdown` fired while waiting.
pub async fn connect(
    config: &ClientConfig,
    shutdown: &CancellationToken,
) -> Result<Option<Session>, ClientError> {
    loop {
        match cryptun_client::connect(config).await {
            Err(ClientError::Held {
                message,
                retry_after,
            }) => {
                let wait = wait_for(retry_after);
                lines::eprint(&notice(&message, wait));
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(None),
                    () = tokio::time::sleep(wait) => {}
                }
            }
            other => return other.map(Some),
        }
    }
}

/// How long to wait for a name the server says is held `retry_after` more.
fn wait_for(retry_after: Duration) -> Duration {
    (retry_after + MARGIN).min(MAX_WAIT)
}

/// The line said while waiting `wait` after the server's `message`.
fn notice(message: &str, wait: Duration) -> String {
    format!(
        "{message}; asking again in {}s (Ctrl-C to stop)",
        wait.as_secs_f64().ceil()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_is_the_servers_word_within_a_bound() {
        let short = Duration::from_secs(2);
        assert_eq!(wait_for(short), short + MARGIN);
        // A hold of ten minutes (a restored one, a cluster's) is asked again
        // after MAX_WAIT: the name may be freed sooner.
        assert_eq!(wait_for(Duration::from_secs(600)), MAX_WAIT);
    }

    #[test]
    fn the_notice_says_what_and_when_on_one_line() {
        let line = notice(
            "the subdomain \"myapp\" is held for its previous client to reconnect (another 12s)",
            Duration::from_millis(12_200),
        );
        assert_eq!(
            line,
            "the subdomain \"myapp\" is held for its previous client to reconnect (another 12s); asking again in 13s (Ctrl-C to stop)"
        );
        assert!(!line.contains('\n'));
    }
}
