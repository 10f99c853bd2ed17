//! The page a browser gets when the local service cannot be reached: a
//! small HTML document naming the tunnel and the address that refused,
//! and saying what its owner can do. Other visitors (curl, webhooks, API
//! clients: anything that does not ask for `text/html`) keep the plain-text
//! answer of [`ExchangeError::answer`](crate::error::ExchangeError::answer).
//!
//! Everything put into the page is escaped: the tunnel's name and the
//! target come from the user, the reason from the operating system.

use cryptun_proto::html::escape;
use cryptun_proto::{InlineBody, ResponseHead};

use crate::Target;

/// Whether a request with these headers comes from a browser: its `Accept`
/// names `text/html` (browsers send it for every page they navigate to).
pub(crate) fn wants_html(headers: &[(String, String)]) -> bool {
    headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("accept"))
        .any(|(_, value)| value.to_ascii_lowercase().contains("text/html"))
}

/// The 502 page for a browser: tunnel `tunnel` could not reach `target`,
/// because of `why`.
pub(crate) fn unreachable(tunnel: &str, target: &Target, why: &str) -> ResponseHead {
    let shown = target.to_string();
    let address = shown.split_once("://").map_or(shown.as_str(), |(_, a)| a);
    let port = address.rsplit_once(':').map_or("", |(_, port)| port);
    let body = format!(
        concat!(
            "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
            "<title>502 &middot; {tunnel} &middot; local service unreachable</title>\n",
            "<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;",
            "padding:0 1em;color:#222}}code{{background:#f2f2f2;padding:0 .2em}}",
            "small{{color:#777}}</style>\n</head>\n<body>\n",
            "<h1>The local service is not answering</h1>\n",
            "<p>The tunnel <strong>{tunnel}</strong> forwards to <code>{address}</code>, ",
            "and nothing answered there: {why}.</p>\n",
            "<p>If this is your tunnel: start the service on port <code>{port}</code>, ",
            "or restart <code>cryptun http</code> with the port it listens on.</p>\n",
            "<p><small>502 Bad Gateway &middot; cryptun</small></p>\n</body>\n</html>\n"
        ),
        tunnel = escape(tunnel),
        address = escape(address),
        port = escape(port),
        why = escape(why),
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
    }

    #[test]
    fn the_page_names_the_tunnel_and_port_and_escapes_them() {
        let target = Target::parse("127.0.0.1:3999").unwrap();
        let head = unreachable("my<app>", &target, "connection \"refused\"");
        assert_eq!(head.status, 502);
        let body = String::from_utf8(head.body.decode().unwrap().to_vec()).unwrap();
        assert!(body.contains("<strong>my&lt;app&gt;</strong>"), "{body}");
        assert!(body.contains("<code>127.0.0.1:3999</code>"), "{body}");
        assert!(body.contains("port <code>3999</code>"), "{body}");
        assert!(body.contains("connection &quot;refused&quot;"), "{body}");
        assert!(!body.contains("my<app>"));
    }
}
