//! The list as an HTTP Archive (HAR 1.2), the format browsers' devtools,
//! proxies and HAR viewers import. Bodies hold what was captured; a
//! truncated one says so in its `comment`. Each entry names the tunnel that
//! served it and its local service in the custom fields `_tunnel` and
//! `_target` (HAR allows fields starting with `_`).

use base64::Engine as _;
use serde_json::{Value, json};

use super::view::{as_text, header, millis, rfc3339};
use super::{Captured, Entry, TunnelInfo};

/// A HAR document of `entries`, oldest first, from a session of `tunnels`.
pub(crate) fn export(entries: &[std::sync::Arc<Entry>], tunnels: &[TunnelInfo]) -> Value {
    let entries: Vec<Value> = entries
        .iter()
        .map(|e| {
            let tunnel = tunnels.iter().find(|t| t.name == e.via.tunnel);
            entry(e, tunnel)
        })
        .collect();
    json!({
        "log": {
            "version": "1.2",
            "creator": { "name": "cryptun", "version": env!("CARGO_PKG_VERSION") },
            "pages": [],
            "entries": entries,
        }
    })
}

fn entry(entry: &Entry, tunnel: Option<&TunnelInfo>) -> Value {
    let record = entry.lock();
    let headers = &record.request_headers;
    let wait = record.response.as_ref().map_or(0.0, |r| millis(r.after));
    let total = record
        .finished
        .as_ref()
        .map_or(wait, |f| millis(f.total).max(wait));
    let mut request = json!({
        "method": record.method,
        "url": url(headers, &record.path, tunnel),
        "httpVersion": "HTTP/1.1",
        "cookies": [],
        "headers": name_values(headers),
        "queryString": query_string(&record.path),
        "headersSize": -1,
        "bodySize": record.request_body.size,
    });
    if record.request_body.size > 0 {
        let mime = header(headers, "content-type").unwrap_or_default();
        let mut post = content(&record.request_body, &mime);
        post.as_object_mut().map(|o| o.remove("size"));
        request["postData"] = post;
    }
    let response = match &record.response {
        Some(head) => {
            let mime = header(&head.headers, "content-type").unwrap_or_default();
            json!({
                "status": head.status,
                "statusText": status_text(head.status),
                "httpVersion": "HTTP/1.1",
                "cookies": [],
                "headers": name_values(&head.headers),
                "content": content(&record.response_body, &mime),
                "redirectURL": header(&head.headers, "location").unwrap_or_default(),
                "headersSize": -1,
                "bodySize": record.response_body.size,
            })
        }
        // HAR has no place for "no response": status 0, as browsers
        // export failed requests.
        None => json!({
            "status": 0,
            "statusText": "",
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": [],
            "content": { "size": 0, "mimeType": "" },
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": -1,
        }),
    };
    let mut value = json!({
        "startedDateTime": rfc3339(entry.started),
        "time": total,
        "request": request,
        "response": response,
        "cache": {},
        "timings": { "send": 0, "wait": wait, "receive": total - wait },
        "_tunnel": &*entry.via.tunnel,
        "_target": entry.via.target.to_string(),
    });
    let mut notes = Vec::new();
    if let Some(of) = entry.replay_of {
        notes.push(format!("replay of #{of}"));
    }
    if let Some(error) = record.finished.as_ref().and_then(|f| f.error.as_ref()) {
        notes.push(error.clone());
    }
    if !notes.is_empty() {
        value["comment"] = json!(notes.join("; "));
    }
    value
}

/// `content` (or `postData`) for a body: text as text, anything else base64.
fn content(captured: &Captured, mime: &str) -> Value {
    let truncated = captured.truncated();
    let mut value = json!({ "size": captured.size, "mimeType": mime });
    match as_text(&captured.bytes, truncated) {
        Some(text) => value["text"] = json!(text),
        None => {
            value["text"] =
                json!(base64::engine::general_purpose::STANDARD.encode(&captured.bytes));
            value["encoding"] = json!("base64");
        }
    }
    if truncated {
        value["comment"] = json!(format!(
            "truncated: the first {} of {} bytes",
            captured.bytes.len(),
            captured.size
        ));
    }
    value
}

/// The URL the visitor asked for: the scheme the server saw, the Host they
/// sent (the tunnel's public host), and the path; without a Host, the
/// tunnel's public URL now.
fn url(headers: &[(String, String)], path: &str, tunnel: Option<&TunnelInfo>) -> String {
    match header(headers, "host") {
        Some(host) => {
            let scheme = header(headers, "x-forwarded-proto").unwrap_or_else(|| "http".into());
            format!("{scheme}://{host}{path}")
        }
        None => match tunnel {
            Some(tunnel) => format!("{}{path}", tunnel.public_url.trim_end_matches('/')),
            None => format!("http://localhost{path}"),
        },
    }
}

fn name_values(headers: &[(String, String)]) -> Vec<Value> {
    headers
        .iter()
        .map(|(name, value)| json!({ "name": name, "value": value }))
        .collect()
}

/// The query's pairs, left percent-encoded (HAR viewers show them as given).
fn query_string(path: &str) -> Vec<Value> {
    let Some((_, query)) = path.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            json!({ "name": name, "value": value })
        })
        .collect()
}

fn status_text(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs() {
        let pairs = query_string("/p?a=1&b&c=x%20y");
        assert_eq!(
            Value::Array(pairs),
            json!([
                { "name": "a", "value": "1" },
                { "name": "b", "value": "" },
                { "name": "c", "value": "x%20y" },
            ])
        );
        assert!(query_string("/p").is_empty());
    }

    #[test]
    fn urls_use_the_visitors_host() {
        let headers = vec![
            ("host".to_owned(), "t.example.com".to_owned()),
            ("x-forwarded-proto".to_owned(), "https".to_owned()),
        ];
        assert_eq!(url(&headers, "/a?b", None), "https://t.example.com/a?b");
        let tunnel = TunnelInfo {
            name: "web".into(),
            subdomain: "t".into(),
            public_url: "http://t.localhost:4000".into(),
            target: crate::Target::parse("3000").unwrap(),
        };
        assert_eq!(url(&[], "/a", Some(&tunnel)), "http://t.localhost:4000/a");
        assert_eq!(url(&[], "/a", None), "http://localhost/a");
    }
}
