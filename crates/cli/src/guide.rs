//! Errors and warnings that say what to do: the hint added to a client that
//! could not connect (no server there, a refused key), the word for
//! subcommands that do not exist yet, and the warnings printed at start
//! when a setting will not do what its user expects (a server on a public
//! address with domain `localhost`, a tunnel to a port nothing listens on).
//!
//! Each check is a pure function of what it looks at, so the tests can ask
//! it directly; the callers print.

use std::net::SocketAddr;
use std::time::Duration;

use cryptun_client::{ClientError, Target};
use cryptun_proto::ErrorCode;

/// How long the start-up check waits for the local service to accept a
/// connection: a service on this machine answers in well under this.
const LOCAL_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// What to do about a client that could not connect, if there is more to
/// say than the error: a refused key, or no server at the address.
pub fn connect_hint(err: &ClientError, has_token: bool) -> Option<&'static str> {
    match err {
        ClientError::Refused {
            code: ErrorCode::Unauthorized,
            ..
        } if has_token => Some("check the key, or ask the server's operator for a new one"),
        ClientError::Refused {
            code: ErrorCode::Unauthorized,
            ..
        } => Some("give it an API key: --token, CRYPTUN_TOKEN, or `cryptun login`"),
        _ if nobody_listening(err) => Some(
            "no cryptun server is listening there: start one with `cryptun server`, \
             name yours with --server URL, or try it all on this machine with `cryptun demo`",
        ),
        _ => None,
    }
}

/// Whether `err` says that nothing accepted the connection at all.
fn nobody_listening(err: &ClientError) -> bool {
    use cryptun_proto::tungstenite::Error;
    let ClientError::Connect { source, .. } = err else {
        return false;
    };
    match source.as_ref() {
        Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
        ),
        _ => false,
    }
}

/// The warning for a server listening on `listen` with tunnels under
/// `domain`, when the public URLs it hands out reach nobody but this
/// machine: names under `localhost` resolve to each visitor's own
/// loopback, whatever address the server listens on.
pub fn public_localhost_warning(listen: SocketAddr, domain: &str) -> Option<String> {
    let local_names = domain == "localhost" || domain.ends_with(".localhost");
    if listen.ip().is_loopback() || !local_names {
        return None;
    }
    Some(format!(
        "listening on {listen} with domain {domain}: public URLs like \
         http://tunnel-ID.{domain} will not resolve for anyone else (each machine \
         reads *.localhost as itself); give a domain that points here, e.g. \
         --domain tunnels.example.com"
    ))
}

/// The warning for a tunnel to `target` when nothing accepts a connection
/// there now, one line under 80 columns; `None` when something does.
pub async fn local_service_warning(target: &Target) -> Option<String> {
    let (host, port) = (target.host(), target.port());
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let connect = tokio::net::TcpStream::connect((bare, port));
    match tokio::time::timeout(LOCAL_CHECK_TIMEOUT, connect).await {
        Ok(Ok(_)) => None,
        // Slow to accept is not down; only a refusal (or an unreachable
        // host) is worth a warning.
        Err(_) => None,
        Ok(Err(_)) => Some(format!(
            "warning: nothing listens on {host}:{port} yet; visitors get 502 until it does"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_public_address_with_a_local_domain_is_warned_about() {
        let public: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert!(public_localhost_warning(public, "localhost").is_some());
        assert!(public_localhost_warning(public, "dev.localhost").is_some());
        assert!(public_localhost_warning(loopback, "localhost").is_none());
        assert!(public_localhost_warning(public, "tunnels.example.com").is_none());
    }

    #[test]
    fn a_refused_connection_suggests_starting_a_server() {
        let refused = ClientError::Connect {
            url: "ws://127.0.0.1:1/ws".into(),
            source: Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into()),
        };
        let hint = connect_hint(&refused, false).unwrap_or_default();
        for what in ["cryptun server", "--server URL", "cryptun demo"] {
            assert!(hint.contains(what), "{hint}");
        }
        assert!(connect_hint(&ClientError::Timeout(Duration::from_secs(1)), false).is_none());
    }

    #[tokio::test]
    async fn a_closed_port_is_warned_about_in_under_80_columns() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        let target = Target::parse(&port.to_string()).unwrap();
        assert_eq!(local_service_warning(&target).await, None);
        drop(listener);
        let warning = local_service_warning(&target).await.unwrap_or_default();
        assert!(warning.contains(&format!("127.0.0.1:{port}")), "{warning}");
        assert!(warning.len() <= 80, "{} columns: {warning}", warning.len());
    }
}
