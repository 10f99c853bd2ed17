//! The page a browser gets when the local service cannot be reached: a
//! small HTML document naming the tunnel and the address that refused,
//! and saying what its owner can do: start the service, or, when it
//! answered but its certificate or TLS handshake was refused, change what
//! the client trusts. Other visitors (curl, webhooks, API
//! clients: anything that does not ask for `text/html`) keep the plain-text
//! answer of [`ExchangeError::answer`](crate::error::ExchangeError::answer).
//!
//! Everything put into the page is escaped: the tunnel's name and the
//! target come from the user, the reason from the operating system.

use cryptun_proto::html::escape;
use cryptun_proto::{InlineBody, ResponseHead};

use crate::local::LocalError;
use crate::local_tls::CERTIFICATE_ADVICE;
use crate::{Target, error};

/// Whether a request with these headers comes from a browser: its `Accept`
/// names `text/html` (browsers send it for every page they navigate to).
/// Asked of every request, so it allocates nothing.
pub(crate) fn wants_html(headers: &[(String, String)]) -> bool {
    const HTML: &[u8] = b"text/html";
    headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("accept"))
        .any(|(_, value)| {
            value
                .as_bytes()
                .windows(HTML.len())
                .any(|w| w.eq_ignore_ascii_case(HTML))
        })
}

/// The 502 page for a browser: tunnel `tunnel` could not reach `target`,
/// because of `err`. A certificate or TLS handshake refused is said to be
/// one, with the options that change what the client trusts: starting the
/// service, the advice for anything else, would not help.
pub(crate) fn unreachable(tunnel: &str, target: &Target, err: &LocalError) -> ResponseHead {
    let address = target.authority().as_str();
    let port = target.port();
    let (title, heading, said, advice) = match err {
        LocalError::Certificate(_) | LocalError::TlsSetup(_) => (
            "local service's certificate refused",
            "The local service's certificate is not trusted",
            format!("which answered, but {}", escape(&error::error_chain(err))),
            "restart <code>cryptun http</code> as the reason says: <code>--local-ca \
             FILE</code> trusts the authority that signed it, <code>--local-insecure</code> \
             skips the check for a development certificate"
                .to_owned(),
        ),
        LocalError::Tls(io) => (
            "local service's TLS handshake failed",
            "The TLS handshake with the local service failed",
            format!(
                "which answered, but the TLS handshake failed: {}",
                escape(&error::error_chain(io))
            ),
            format!(
                "check that port <code>{port}</code> serves HTTPS (a plain HTTP service \
                 is <code>http://</code> or the port alone); for a certificate this \
                 machine does not trust, {}",
                escape(CERTIFICATE_ADVICE)
            ),
        ),
        _ => (
            "local service unreachable",
            "The local service is not answering",
            format!(
                "and nothing answered there: {}",
                escape(&error::error_chain(err))
            ),
            format!(
                "start the service on port <code>{port}</code>, or restart \
                 <code>cryptun http</code> with the port it listens on"
            ),
        ),
    };
    let body = format!(
        concat!(
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
            "<title>502 &middot; {tunnel} &middot; {title}</title>\n",
            "<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;",
            "padding:0 1em;color:#222}}code{{background:#f2f2f2;padding:0 .2em}}",
            "small{{color:#777}}</style>\n</head>\n<body>\n",
            "<h1>{heading}</h1>\n",
            "<p>The tunnel <strong>{tunnel}</strong> forwards to <code>{address}</code>, ",
            "{said}.</p>\n",
            "<p>If this is your tunnel: {advice}.</p>\n",
            "<p><small>502 Bad Gateway &middot; cryptun</small></p>\n</body>\n</html>\n"
        ),
        tunnel = escape(tunnel),
        address = escape(address),
        title = title,
        heading = heading,
        said = said,
        advice = advice,
    );
    ResponseHead {
        status: 502,
        headers: vec![
            ("content-type".into(), "text/html; charset=utf-8".into()),
            ("x-cryptun-error".into(), "local_service".into()),
            ("cache-control".into(), "no-store".into()),
        ],
        body: InlineBody::inline(body.as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(value: &str) -> Vec<(String, String)> {
        vec![("Accept".into(), value.into())]
    }

    #[test]
    fn browsers_ask_for_html_and_curl_does_not() {
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(wants_html(&header(firefox)));
        assert!(!wants_html(&header("*/*")));
        assert!(!wants_html(&header("application/json")));
        assert!(!wants_html(&[]));
        assert!(wants_html(&header("Text/HTML")));
        assert!(!wants_html(&header("text/htm")));
    }

    #[test]
    fn the_page_names_the_tunnel_and_port_and_escapes_them() {
        let target = Target::parse("127.0.0.1:3999").unwrap();
        let refused = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection \"refused\"",
        );
        let head = unreachable("my<app>", &target, &LocalError::Connect(refused));
        assert_eq!(head.status, 502);
        let body = String::from_utf8(head.body.decode().unwrap().to_vec()).unwrap();
        assert!(body.contains("<strong>my&lt;app&gt;</strong>"), "{body}");
        assert!(body.contains("<code>127.0.0.1:3999</code>"), "{body}");
        assert!(body.contains("port <code>3999</code>"), "{body}");
        assert!(body.contains("connection &quot;refused&quot;"), "{body}");
        assert!(!body.contains("my<app>"));
    }

    fn body(head: &ResponseHead) -> String {
        String::from_utf8(head.body.decode().unwrap().to_vec()).unwrap()
    }

    #[test]
    fn a_refused_certificate_or_handshake_is_said_with_what_to_trust() {
        let target = Target::parse("https://localhost:8443").unwrap();
        let why =
            format!("it is not signed by an authority this machine trusts; {CERTIFICATE_ADVICE}");
        let page = body(&unreachable("web", &target, &LocalError::Certificate(why)));
        assert!(page.contains("certificate is not trusted"), "{page}");
        assert!(page.contains("not signed by an authority"), "{page}");
        assert!(page.contains("--local-ca FILE"), "{page}");
        assert!(!page.contains("nothing answered"), "{page}");
        assert!(!page.contains("start the service"), "{page}");

        let corrupt = std::io::Error::other("received corrupt message");
        let page = body(&unreachable("web", &target, &LocalError::Tls(corrupt)));
        assert!(
            page.contains("TLS handshake failed: received corrupt message"),
            "{page}"
        );
        assert!(
            page.contains("port <code>8443</code> serves HTTPS"),
            "{page}"
        );
        assert!(page.contains("--local-insecure"), "{page}");
        assert!(!page.contains("nothing answered"), "{page}");
    }
}
