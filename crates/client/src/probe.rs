//! Which scheme a server's port speaks, asked when a handshake failed in a
//! way that suggests the other one: `--server http://` against an HTTPS
//! port (the WebSocket library reads a TLS alert as "invalid HTTP
//! version") or `https://` against a plain one (rustls reads an HTTP answer
//! as "InvalidContentType"). Both messages name a parser, not the fix; a
//! second connection settles which scheme is right, so the error can say
//! `--server https://...` (or `http://`) instead of guessing from bytes
//! that any other program could have sent.

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::servers::{Endpoint, server_url};
use crate::{ClientError, transport};

/// How long the second look may take: a server that answered the first
/// connection at once answers this one as fast.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// `err`, the failure of a `ws://` WebSocket handshake, or
/// [`ClientError::WrongScheme`] when it failed as a TLS port would make it
/// fail (an answer that is not HTTP, or none) and the port speaks TLS.
pub(crate) async fn after_plain_failure(
    endpoint: &Endpoint,
    ca: Option<&Path>,
    err: ClientError,
) -> ClientError {
    use cryptun_proto::tungstenite::Error;
    let suspicious = match &err {
        ClientError::Connect { source, .. } => match source.as_ref() {
            Error::Protocol(_) => true,
            Error::Io(io) => matches!(
                io.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
            ),
            _ => false,
        },
        _ => false,
    };
    if !suspicious || !endpoint.url.starts_with("ws://") {
        return err;
    }
    tls_instead(endpoint, ca).await.unwrap_or(err)
}

/// `err`, the failure of a `wss://` connection, or
/// [`ClientError::WrongScheme`] when the TLS handshake got something that
/// is not TLS back and the port answers plain HTTP.
pub(crate) async fn after_tls_failure(endpoint: &Endpoint, err: ClientError) -> ClientError {
    use cryptun_proto::tungstenite::Error;
    let not_tls = match &err {
        ClientError::Connect { source, .. } => match source.as_ref() {
            Error::Io(io) => io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|e| matches!(e, rustls::Error::InvalidMessage(_))),
            _ => false,
        },
        _ => false,
    };
    if !not_tls || !endpoint.url.starts_with("wss://") {
        return err;
    }
    plain_instead(endpoint).await.unwrap_or(err)
}

/// [`ClientError::WrongScheme`] if `endpoint` (a `ws://` URL) answers TLS,
/// else `None`.
async fn tls_instead(endpoint: &Endpoint, ca: Option<&Path>) -> Option<ClientError> {
    let other = Endpoint {
        url: swap_scheme(&endpoint.url)?,
        addr: endpoint.addr,
    };
    let speaks_tls = tokio::time::timeout(PROBE_TIMEOUT, async {
        match transport::connect(&other, ca).await {
            // A certificate we do not trust is still a TLS server.
            Ok(_) | Err(ClientError::Untrusted { .. }) => true,
            Err(_) => false,
        }
    })
    .await
    .unwrap_or(false);
    speaks_tls.then(|| wrong_scheme(endpoint, &other, "HTTPS (TLS)", "plain HTTP"))
}

/// [`ClientError::WrongScheme`] if `endpoint` (a `wss://` URL) answers
/// plain HTTP, else `None`.
async fn plain_instead(endpoint: &Endpoint) -> Option<ClientError> {
    let other = Endpoint {
        url: swap_scheme(&endpoint.url)?,
        addr: endpoint.addr,
    };
    let (host, port) = other.dial()?;
    let speaks_http = tokio::time::timeout(PROBE_TIMEOUT, async {
        let mut tcp = TcpStream::connect((host.as_str(), port)).await.ok()?;
        let head = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        tcp.write_all(head.as_bytes()).await.ok()?;
        let mut start = [0u8; 5];
        tcp.read_exact(&mut start).await.ok()?;
        Some(&start == b"HTTP/")
    })
    .await
    .ok()
    .flatten()
    .unwrap_or(false);
    speaks_http.then(|| wrong_scheme(endpoint, &other, "plain HTTP", "HTTPS (TLS)"))
}

fn wrong_scheme(
    endpoint: &Endpoint,
    other: &Endpoint,
    speaks: &'static str,
    tried: &'static str,
) -> ClientError {
    ClientError::WrongScheme {
        server: endpoint.to_string(),
        speaks,
        tried,
        suggest: server_url(&other.url),
    }
}

/// `ws://` for `wss://` and the other way round; the port stays, written
/// out when the URL left it to its scheme's default.
fn swap_scheme(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let (scheme, port) = match uri.scheme_str()? {
        "wss" => ("ws", 443),
        "ws" => ("wss", 80),
        _ => return None,
    };
    let host = uri.host()?;
    let port = uri.port_u16().unwrap_or(port);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Some(format!("{scheme}://{host}:{port}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_port_that_never_answers_is_given_up_on() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = tokio::spawn(async move {
            let _held = listener.accept().await;
            std::future::pending::<()>().await
        });
        let endpoint = Endpoint::named(&format!("wss://127.0.0.1:{port}/ws"));
        // Nothing comes back: not plain HTTP, and the look ends at its
        // timeout rather than waiting with the user.
        let started = tokio::time::Instant::now();
        assert!(plain_instead(&endpoint).await.is_none());
        assert!(started.elapsed() >= PROBE_TIMEOUT);
        silent.abort();
    }

    #[test]
    fn the_scheme_swaps_and_the_port_stays() {
        assert_eq!(
            swap_scheme("ws://a.test:4443/ws").as_deref(),
            Some("wss://a.test:4443/ws")
        );
        assert_eq!(
            swap_scheme("wss://[::1]:4000/ws").as_deref(),
            Some("ws://[::1]:4000/ws")
        );
        assert_eq!(
            swap_scheme("wss://a.test/ws").as_deref(),
            Some("ws://a.test:443/ws")
        );
        assert_eq!(swap_scheme("http://a.test/ws"), None);
    }
}
