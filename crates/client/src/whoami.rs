//! Asking a server which API key a token is (`GET /api/whoami`, bearer
//! token), so `cryptun login` saves only a key that works: over the same
//! transport as the control connection (TCP, or TLS trusting `--ca`), one
//! HTTP/1.1 request, a bounded answer.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use cryptun_proto::Secret;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use crate::servers::{self, Endpoint};
use crate::{ClientError, target, transport};

/// The largest answer read: the route's JSON is a few dozen bytes.
const MAX_ANSWER: usize = 16 << 10;

/// How long the whole check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server said of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// The key is the server's: its id and name.
    Known {
        /// The key's id (not secret).
        id: String,
        /// Its name, as `cryptun keys create --name` gave it.
        name: String,
    },
    /// The server checks no keys (auth off): any key, or none, works.
    NotChecked,
}

/// Why a key could not be checked, or was refused.
#[derive(Debug, thiserror::Error)]
pub enum WhoamiError {
    /// The address is not a server address.
    #[error(transparent)]
    Address(#[from] target::AddressError),
    /// The server could not be reached.
    #[error(transparent)]
    Connect(#[from] ClientError),
    /// The HTTP exchange failed.
    #[error("{server}: {source}")]
    Http {
        /// The server.
        server: String,
        /// What failed.
        source: hyper::Error,
    },
    /// The server does not know the key (or it was revoked).
    #[error("the server at {server} does not accept this key: {message}")]
    Refused {
        /// The server.
        server: String,
        /// The server's explanation.
        message: String,
    },
    /// Anything else: an older server without the route, a proxy's page.
    #[error("{server} answered {status} to /api/whoami{}", hint(.status))]
    Unexpected {
        /// The server.
        server: String,
        /// The status it answered.
        status: StatusCode,
    },
    /// No answer in time.
    #[error("{0} did not answer within {CHECK_TIMEOUT:?}")]
    Timeout(String),
}

fn hint(status: &StatusCode) -> &'static str {
    match *status {
        StatusCode::NOT_FOUND => " (is it a cryptun server, and a recent one?)",
        StatusCode::TOO_MANY_REQUESTS => " (too many failed attempts from here; wait a while)",
        _ => "",
    }
}

/// Asks `server` (as `--server` takes it) which key `token` is, trusting
/// the certificate authorities in `ca` too for an `https://` server.
pub async fn whoami(
    server: &str,
    ca: Option<&Path>,
    token: &Secret,
) -> Result<KeyCheck, WhoamiError> {
    let url = target::control_url(server)?;
    let shown = servers::server_url(&url);
    tokio::time::timeout(CHECK_TIMEOUT, ask(&url, &shown, ca, token))
        .await
        .map_err(|_| WhoamiError::Timeout(shown.clone()))?
}

async fn ask(
    url: &str,
    shown: &str,
    ca: Option<&Path>,
    token: &Secret,
) -> Result<KeyCheck, WhoamiError> {
    let endpoint = servers::resolve(url, CHECK_TIMEOUT)
        .await
        .into_iter()
        .next()
        .unwrap_or_else(|| Endpoint::named(url));
    let (stream, _) = transport::connect(&endpoint, ca).await?;
    let http = |source| WhoamiError::Http {
        server: shown.to_owned(),
        source,
    };
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(http)?;
    tokio::spawn(conn);
    let host = shown.split_once("://").map_or(shown, |(_, host)| host);
    let request = Request::get("/api/whoami")
        .header(header::HOST, host)
        .header(header::AUTHORIZATION, format!("Bearer {}", token.expose()))
        .body(Empty::<Bytes>::new());
    let Ok(request) = request else {
        // Only a token with characters a header cannot carry gets here.
        return Err(WhoamiError::Refused {
            server: shown.to_owned(),
            message: "the key has characters a header cannot carry".into(),
        });
    };
    let response = sender.send_request(request).await.map_err(http)?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let text = |key: &str| json[key].as_str().map(str::to_owned);
    match status {
        StatusCode::OK if text("auth").as_deref() == Some("off") => Ok(KeyCheck::NotChecked),
        StatusCode::OK => match (text("id"), text("name")) {
            (Some(id), Some(name)) => Ok(KeyCheck::Known { id, name }),
            _ => Err(WhoamiError::Unexpected {
                server: shown.to_owned(),
                status,
            }),
        },
        StatusCode::UNAUTHORIZED => Err(WhoamiError::Refused {
            server: shown.to_owned(),
            message: text("message").unwrap_or_else(|| "unauthorized".into()),
        }),
        status => Err(WhoamiError::Unexpected {
            server: shown.to_owned(),
            status,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server on loopback that reads a request and answers `answer`
    /// (or nothing, when `None`), once.
    async fn server(answer: Option<Vec<u8>>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 4096];
            let _ = conn.read(&mut head).await;
            match answer {
                Some(answer) => {
                    let _ = conn.write_all(&answer).await;
                }
                None => std::future::pending::<()>().await,
            }
            // Kept open until the client is done.
            let _ = conn.read(&mut head).await;
        });
        format!("http://{addr}")
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_never_answers_is_given_up_on() {
        let url = server(None).await;
        let checked = whoami(&url, None, &Secret::new("ck_x")).await;
        assert!(
            matches!(checked, Err(WhoamiError::Timeout(_))),
            "{checked:?}"
        );
    }

    #[tokio::test]
    async fn an_answer_too_large_is_not_read_as_a_key() {
        let pad = "x".repeat(MAX_ANSWER);
        let body = format!(r#"{{"id":"k1","name":"ci","pad":"{pad}"}}"#);
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let url = server(Some(answer.into_bytes())).await;
        let checked = whoami(&url, None, &Secret::new("ck_x")).await;
        assert!(
            matches!(checked, Err(WhoamiError::Unexpected { status, .. }) if status == StatusCode::OK),
            "{checked:?}"
        );
        // The same answer within the bound is the key.
        let small = r#"{"id":"k1","name":"ci"}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{small}",
            small.len()
        );
        let url = server(Some(answer.into_bytes())).await;
        let checked = whoami(&url, None, &Secret::new("ck_x")).await.unwrap();
        assert_eq!(
            checked,
            KeyCheck::Known {
                id: "k1".into(),
                name: "ci".into()
            }
        );
    }
}
