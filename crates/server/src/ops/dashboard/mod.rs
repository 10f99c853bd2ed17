//! The server dashboard: a page on the server's own host showing live
//! tunnels, their clients, request rates and errors, and the server's
//! state, refreshed every second without a reload.
//!
//! | route | who | answer |
//! |---|---|---|
//! | `GET /dashboard` | anyone | the page: markup only, no data |
//! | `GET /dashboard/app.js`, `/dashboard/app.css` | anyone | its script and style |
//! | `GET /api/dashboard` | admins | a [`Snapshot`] as JSON |
//!
//! Why the page is open and its data is not: the page is the same for
//! everyone and says nothing about the server, so it needs no guard, and
//! every number it shows comes from `/api/dashboard`, behind the admin
//! check like the rest of `/api/` (see [`admin`](crate::ops::admin)). With an
//! admin token, the page asks for it once and keeps it in the tab's
//! `sessionStorage`, sending it as `Authorization: Bearer` on each fetch:
//! no cookie, so no other site can make a browser send it (no CSRF), and
//! it is gone when the tab closes. Without a token, loopback callers get
//! the data with no prompt.
//!
//! Why polling rather than a push feed: every counter changes all the
//! time, so a feed would send a full snapshot each second anyway; a fetch
//! per second holds no connection open across a shutdown's drain, and
//! sends the `Authorization` header, which `EventSource` cannot.
//!
//! The script and style are separate routes, so the page's Content
//! Security Policy allows no inline script or style at all, and the page
//! builds every element with `textContent`: a subdomain, key name or
//! address is shown as text, never parsed as markup.
//!
//! On a cluster node the snapshot is the cluster's ([`cluster`]): every
//! live node's own, gathered over the hop at once and merged, each tunnel
//! and client with its `node`, and a `nodes` list saying which answered.

mod cluster;

pub(crate) use cluster::gather;

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use http::{HeaderValue, Response, header};
use serde::{Deserialize, Serialize};

use super::Ops;
use crate::body::{Body, full};
use crate::metrics;
use crate::registry::{StatsView, TunnelInfo};

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// Most tunnels a snapshot lists: its size (and the page's) stays bounded
/// on a busy node; the totals still count every tunnel.
pub const MAX_LISTED: usize = 500;

/// The page's policy: only its own script, style and API; no frames, no
/// forms, no plugins.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// One of the dashboard's own files, if `path` names one.
pub(crate) fn asset(path: &str) -> Option<Response<Body>> {
    let (body, content_type) = match path {
        "/dashboard" => (PAGE, "text/html; charset=utf-8"),
        "/dashboard/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/dashboard/app.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut resp = Response::new(full(body));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure(headers);
    Some(resp)
}

/// The headers every page of the server's own carries: the strict policy
/// (scripts and styles from the server's own files only), no framing, no
/// sniffing, no referrer, revalidated on each load.
pub(crate) fn secure(headers: &mut http::HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Revalidated each load, so an upgraded server never runs an old script.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

/// What `/api/dashboard` answers: everything the page shows.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    /// The server itself.
    pub server: ServerInfo,
    /// Counts over the whole server.
    pub totals: Totals,
    /// Connected clients, oldest first, grouping the listed tunnels.
    pub clients: Vec<ClientInfo>,
    /// Live tunnels, oldest first, with their counters; at most
    /// [`MAX_LISTED`].
    pub tunnels: Vec<TunnelInfo>,
    /// Live tunnels left out of `tunnels` (and their clients of `clients`).
    pub omitted: usize,
    /// In a cluster: every live node, and what it said of itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<cluster::NodeInfo>,
}

/// The server's identity and state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The server's version.
    pub version: String,
    /// In a cluster: the node that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The domain tunnels live under.
    pub domain: String,
    /// RFC 3339 start time.
    pub started_at: String,
    /// RFC 3339 time of this snapshot, so ages are measured on the
    /// server's clock.
    pub now: String,
    /// Seconds since it started.
    pub uptime_secs: u64,
    /// Whether shutdown has begun: no new clients, in-flight requests
    /// finishing.
    pub draining: bool,
    /// Whether clients need an API key (`required`, `optional`, `off`).
    pub auth: String,
    /// With ACME: the certificate served, and the last order's error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateInfo>,
}

/// The ACME certificate of the HTTPS listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateInfo {
    /// Its first name (`*.{domain}`).
    pub name: String,
    /// RFC 3339 expiry of the one served; none before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// Whole days until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days_left: Option<i64>,
    /// The last order's error, until one succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Counts over the whole server.
#[derive(Debug, Serialize, Deserialize)]
pub struct Totals {
    /// Live tunnels.
    pub tunnels: usize,
    /// Connected clients (control sessions).
    pub clients: i64,
    /// Names held for a disconnected client to take back.
    pub held_names: usize,
    /// Every visitor request to a tunnel host since the start, unknown
    /// names and finished tunnels included.
    #[serde(flatten)]
    pub requests: StatsView,
}

/// One connected client: a control connection and the tunnels it holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Its address as the server saw it (one per connection).
    pub client_addr: String,
    /// RFC 3339 creation time of its oldest live tunnel.
    pub connected_since: String,
    /// The id of the API key it presented, if any.
    pub key_id: Option<String>,
    /// That key's name.
    pub key_name: Option<String>,
    /// The subdomains of its tunnels.
    pub tunnels: Vec<String>,
    /// In a cluster: the node it is connected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// The dashboard's data, now.
pub(crate) fn snapshot(state: &Ops) -> Snapshot {
    let now = Instant::now();
    let live = state.registry.list();
    let tunnels: Vec<TunnelInfo> = live.iter().take(MAX_LISTED).map(|t| t.info()).collect();
    // A client is one control connection, and its address (with its port)
    // names one connection at a time.
    let mut clients: Vec<ClientInfo> = Vec::new();
    let mut by_addr: HashMap<&str, usize> = HashMap::new();
    for tunnel in &tunnels {
        let index = *by_addr.entry(&tunnel.client_addr).or_insert_with(|| {
            clients.push(ClientInfo {
                client_addr: tunnel.client_addr.clone(),
                connected_since: tunnel.created_at.clone(),
                key_id: tunnel.key_id.clone(),
                key_name: tunnel.key_name.clone(),
                tunnels: Vec::new(),
                node: None,
            });
            clients.len() - 1
        });
        clients[index].tunnels.push(tunnel.subdomain.clone());
    }
    let (started, started_at) = state.started;
    Snapshot {
        server: ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            node: None,
            domain: state.config.domain.clone(),
            started_at: rfc3339(started_at),
            now: rfc3339(SystemTime::now()),
            uptime_secs: now.saturating_duration_since(started).as_secs(),
            draining: state.is_draining(),
            auth: state.config.auth.to_string(),
            certificate: certificate(state),
        },
        totals: Totals {
            tunnels: live.len(),
            clients: state.metrics.sessions.get(),
            held_names: state.registry.held(),
            requests: state.totals.view(now),
        },
        clients,
        tunnels,
        omitted: live.len().saturating_sub(MAX_LISTED),
        nodes: Vec::new(),
    }
}

/// The ACME certificate's state, if the server has ACME.
fn certificate(state: &Ops) -> Option<CertificateInfo> {
    state.config.acme.as_ref()?;
    let name = format!("*.{}", state.config.domain);
    let label = metrics::AcmeCertificate { name: name.clone() };
    let not_after = state.metrics.acme_not_after.get(&label).map(|g| g.get());
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let at = |secs: i64| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
    Some(CertificateInfo {
        name,
        not_after: not_after.map(|secs| rfc3339(at(secs))),
        days_left: not_after.map(|secs| (secs - now).div_euclid(86_400)),
        last_error: state.metrics.acme_last_error(),
    })
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_carry_their_type_and_a_strict_policy() {
        for (path, kind) in [
            ("/dashboard", "text/html"),
            ("/dashboard/app.js", "text/javascript"),
            ("/dashboard/app.css", "text/css"),
        ] {
            let resp = asset(path).unwrap();
            let h = resp.headers();
            assert!(h[header::CONTENT_TYPE].to_str().unwrap().starts_with(kind));
            let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(!csp.contains("unsafe"), "{csp}");
            assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
            assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
        assert!(asset("/dashboard/").is_none());
        assert!(asset("/dashboard/other.js").is_none());
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        assert!(PAGE.contains(r#"<script src="/dashboard/app.js""#));
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert!(!PAGE.contains("<style"));
        assert!(!PAGE.contains(" style="));
        // No inline event handler (` onclick=` and the like).
        let handler = PAGE.split(" on").skip(1).any(|rest| {
            let name = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            name > 0 && rest.as_bytes().get(name) == Some(&b'=')
        });
        assert!(!handler, "an inline event handler");
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
        ] {
            assert!(!SCRIPT.contains(sink), "{sink}");
        }
    }
}
