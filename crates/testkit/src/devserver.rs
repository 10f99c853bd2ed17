//! Local services as development servers are: [`HostCheck`], which
//! refuses any `Host` but its own as Vite, webpack, Django and Rails do
//! (403), and [`HttpsOrigin`], an HTTPS service with a certificate from a
//! test authority for `localhost`, which also echoes WebSocket messages.
//! Both answer `GET` with the `Host` and `X-Forwarded-Host` they received,
//! as JSON.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

use crate::tls::TlsFiles;
use crate::wsecho;

/// A plain HTTP service that answers 403 to any `Host` but
/// `127.0.0.1:PORT` and `localhost:PORT`.
pub struct HostCheck {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
}

impl HostCheck {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let own = [
            format!("127.0.0.1:{}", addr.port()),
            format!("localhost:{}", addr.port()),
        ];
        let own = Arc::new(own);
        let shutdown = CancellationToken::new();
        crate::accept_until(listener, shutdown.clone(), move |stream| {
            let own = Arc::clone(&own);
            let service = service_fn(move |req: Request<Incoming>| {
                let host = header_of(&req, header::HOST.as_str());
                let allowed = own.contains(&host);
                async move { Ok::<_, Infallible>(host_check(allowed, &host, &req)) }
            });
            async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        });
        HostCheck { addr, shutdown }
    }

    pub fn target(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for HostCheck {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Vite's answer to a Host it does not know, or the Hosts seen.
fn host_check(allowed: bool, host: &str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if !allowed {
        let text = format!("Blocked request. This host ({host:?}) is not allowed.");
        let mut resp = Response::new(Full::new(Bytes::from(text)));
        *resp.status_mut() = StatusCode::FORBIDDEN;
        return resp;
    }
    hosts(req)
}

/// `{"host": ..., "forwarded_host": ...}` of `req`.
fn hosts(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let json = serde_json::json!({
        "host": header_of(req, header::HOST.as_str()),
        "forwarded_host": header_of(req, "x-forwarded-host"),
    });
    let mut resp = Response::new(Full::new(Bytes::from(json.to_string())));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    resp
}

fn header_of(req: &Request<Incoming>, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// An HTTPS service on `127.0.0.1:PORT` whose certificate, for
/// `localhost`, a fresh test authority signed (`files.ca`): `GET`
/// answers the Hosts seen, a WebSocket upgrade echoes messages.
pub struct HttpsOrigin {
    pub addr: SocketAddr,
    pub files: TlsFiles,
    shutdown: CancellationToken,
}

impl HttpsOrigin {
    pub async fn start() -> Self {
        let files = TlsFiles::generate("localhost");
        let certs = CertificateDer::pem_file_iter(&files.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        crate::accept_until(listener, shutdown.clone(), move |stream| {
            let acceptor = acceptor.clone();
            async move {
                // A client that refuses the certificate ends here.
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service =
                    service_fn(|req| async move { Ok::<_, Infallible>(https_answer(req)) });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades()
                    .await;
            }
        });
        HttpsOrigin {
            addr,
            files,
            shutdown,
        }
    }

    /// `https://localhost:PORT`.
    pub fn target(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

impl Drop for HttpsOrigin {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The Hosts seen, or the 101 of a WebSocket whose messages are echoed.
fn https_answer(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return hosts(&req);
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let io = TokioIo::new(upgraded);
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(wsecho::config())).await;
        wsecho::echo(ws).await;
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(header::UPGRADE, "websocket".parse().unwrap());
    headers.insert(header::CONNECTION, "upgrade".parse().unwrap());
    let accept = derive_accept_key(key.as_bytes());
    headers.insert("sec-websocket-accept", accept.parse().unwrap());
    resp
}
