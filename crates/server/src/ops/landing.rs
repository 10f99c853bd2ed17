//! `GET /` on the server's own host: a small page saying what this is (the
//! server, its domain and version), the exact command that connects a
//! client to it, and a link to the dashboard. A person who opens the
//! server's address in a browser finds what to do instead of a 404.
//!
//! The page holds no data and no script, and takes the dashboard's style
//! sheet and its strict policy (no inline script or style): what it shows
//! comes from the server's settings and the Host the browser asked under,
//! which the gateway has already checked, and is escaped all the same.

use cryptun_proto::html::escape;
use http::{HeaderValue, Request, Response, header};

use crate::body::{Body, full};
use crate::config::{AuthMode, Config};

/// The version shown: the server's build.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The landing page for a request asking under `req`'s Host.
pub(crate) fn page<B>(config: &Config, req: &Request<B>) -> Response<Body> {
    let server = server_url(config, req);
    let domain = escape(&config.domain);
    let server = escape(&server);
    let login = match config.auth {
        AuthMode::Required => format!(
            "<p>This server needs an API key (its operator makes one with \
             <code>cryptun keys create --name NAME</code>). Save it once:</p>\n\
             <pre>cryptun login --server {server} ck_...</pre>\n"
        ),
        AuthMode::Optional | AuthMode::Off => String::new(),
    };
    let body = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <title>Cryptun server &middot; {domain}</title>\n\
         <link rel=\"stylesheet\" href=\"/dashboard/app.css\">\n</head>\n<body>\n\
         <header><h1>Cryptun server</h1>\
         <span class=\"muted\">{domain} &middot; version {VERSION}</span></header>\n\
         <main>\n<section>\n\
         <p>This is a Cryptun tunnel server: it gives a service on your machine a public URL \
         under <code>{domain}</code>.</p>\n\
         {login}\
         <p>Expose the service on port 3000 of your machine:</p>\n\
         <pre>cryptun http --server {server} 3000</pre>\n\
         <p>The <a href=\"/dashboard\">dashboard</a> shows the live tunnels \
         (for the server's operator).</p>\n\
         </section>\n</main>\n</body>\n</html>\n"
    );
    let mut resp = Response::new(full(body));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    super::dashboard::secure(headers);
    resp
}

/// The address clients give as `--server`: the public scheme and the Host
/// the page was asked under (port included), else the domain.
fn server_url<B>(config: &Config, req: &Request<B>) -> String {
    let asked = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            let host = req.headers().get(header::HOST)?.to_str().ok()?;
            Some(host.trim().to_owned())
        })
        .filter(|host| {
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        });
    let host = asked.unwrap_or_else(|| config.domain.clone());
    format!("{}://{}", config.public_scheme, host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(host: &str) -> Request<()> {
        Request::get("/")
            .header(header::HOST, host)
            .body(())
            .unwrap()
    }

    #[test]
    fn the_command_names_this_server_as_it_was_asked_for() {
        let config = Config::default();
        let resp = page(&config, &get("Localhost:4000"));
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let csp = resp.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert_eq!(
            server_url(&config, &get("Localhost:4000")),
            "http://localhost:4000"
        );
        // Nothing a header could smuggle into the page.
        assert_eq!(server_url(&config, &get("a<b>")), "http://localhost");
    }
}
