//! The benchmark's origin: a small, fast hyper HTTP/1.1 server standing in
//! for the user's local service.
//!
//! - `GET /small` — a fixed body of about 100 bytes;
//! - `GET /1m` — 1 MiB from one shared buffer (cloning `Bytes` copies nothing),
//!   with `content-length` set.
//!
//! Anything else is 404. It prints its bound address as the first line on
//! stdout and runs until killed or until stdin closes.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The `/small` body: 100 bytes, newline included.
pub const SMALL_BODY: &[u8; 100] =
    b"Hello from the cryptun benchmark origin. This body is exactly one hundred bytes long, newline incl.\n";

/// The size of the `/1m` body.
pub const LARGE_LEN: usize = 1 << 20;

/// The `/1m` body, the same from every origin: a pattern that does not
/// compress to nothing, should anything on the way try.
pub fn large_body() -> Vec<u8> {
    (0..LARGE_LEN).map(|i| (i % 251) as u8).collect()
}

/// Arguments of `cryptun-bench origin`.
#[derive(Debug, Args)]
pub struct OriginArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// Serves until the process is killed (or stdin closes).
pub async fn serve(args: OriginArgs) -> Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{addr}")?;
        out.flush()?;
    }
    crate::exit_when_stdin_closes(0);

    let small = Bytes::from_static(SMALL_BODY);
    let large = Bytes::from(large_body());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors and the like: back off, keep going.
                eprintln!("origin: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (small, large) = (small.clone(), large.clone());
        let service = service_fn(move |req: Request<Incoming>| {
            let resp = respond(req.uri().path(), &small, &large);
            async move { Ok::<_, Infallible>(resp) }
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(path: &str, small: &Bytes, large: &Bytes) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/small" => (StatusCode::OK, small.clone()),
        "/1m" => (StatusCode::OK, large.clone()),
        _ => (StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n")),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    resp
}
