//! The built-in hello service: a page that says "Hello from Cryptun!" and
//! shows the request as it arrived (method, path, headers). It is a real
//! HTTP server on a real socket, so `--hello` and the demo exercise exactly
//! the path a user's own service would.

use std::convert::Infallible;
use std::fmt::Write as _;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

// Visitors control every header shown: all of it is escaped.
use cryptun_proto::html::escape;

/// Serves the hello page on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    debug!(%err, "hello service accept failed");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|req| async move { Ok::<_, Infallible>(page(&req)) });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The hello page for `req`.
pub fn page(req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let mut html = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Hello from Cryptun!</title>\
         <style>body{font-family:system-ui,sans-serif;max-width:48rem;margin:3rem auto;padding:0 1rem}\
         table{border-collapse:collapse}td{border-top:1px solid #ddd;padding:.25rem .75rem;vertical-align:top}\
         code{word-break:break-all}</style></head><body>\n<h1>Hello from Cryptun!</h1>\n",
    );
    let _ = write!(
        html,
        "<p>This page was served through your tunnel.</p>\n<p><b>{}</b> <code>{}</code></p>\n<table>\n",
        escape(req.method().as_str()),
        escape(&req.uri().to_string()),
    );
    for (name, value) in req.headers() {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td><code>{}</code></td></tr>",
            escape(name.as_str()),
            escape(&String::from_utf8_lossy(value.as_bytes())),
        );
    }
    html.push_str("</table>\n</body></html>\n");
    let mut resp = Response::new(Full::new(Bytes::from(html)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}
