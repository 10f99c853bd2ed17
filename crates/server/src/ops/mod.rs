//! Operations: the server's own routes, and what operators watch.
//!
//! - `GET /`: a landing page for people (the server, its version, the
//!   command that connects a client, a link to the dashboard; see
//!   [`landing`]).
//! - `GET /healthz`: `{"status":"ok"}` for anyone, so load balancers can
//!   probe it; the tunnel count only for admins.
//! - `GET /readyz`: 200 while the server accepts tunnels, 503 once it
//!   drains (or, in a cluster, while its shared store is unreachable); a
//!   cluster node adds `cluster` (its name, the store's state, and when
//!   the store was found emptied).
//! - `GET /dashboard` (and its script and style): the live dashboard page
//!   for anyone, since it holds no data; what it shows comes from
//!   `GET /api/dashboard` (see [`dashboard`]).
//! - `GET /metrics`, `GET /api/tunnels` (in a cluster, every node's, a page
//!   at a time: `?limit=N`, the next page in a `Link` header), `GET /api/limits`,
//!   `GET /api/dashboard` and anything else under `/api/`: admins only
//!   ([`admin`]), `/metrics` encoding the families of [`crate::metrics`]
//!   (and, on a cluster node, of [`crate::cluster::health`]);
//!   `/api/dashboard` is the cluster's on a cluster node.
//!
//! (`GET /ws` is on the same host but is the control stage's; the gateway
//! sends it there, checks every own route's path first and counts each
//! request by route, [`route_label`], and status class.)
//!
//! # Layout
//!
//! - this file: the [`Ops`] handle and its routes.
//! - [`admin`]: the admin token and who is an admin.
//! - [`dashboard`]: the page and the snapshot behind it.
//! - [`landing`]: the page at `/`.

pub mod admin;
pub mod dashboard;
pub mod landing;

use crate::cluster::Clustered;
use crate::cluster::listing::{self, Listing};

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use admin::AdminToken;
pub(crate) use admin::Caller;

use crate::body::{Body, full};
use crate::config::Config;
use crate::error::GatewayError;
use crate::metrics::{self, Metrics};
use crate::policy::IpLimiter;
use crate::registry::{Registry, Stats};
use admin::authorize;

/// How long a scrape waits for Redis's list of live nodes.
const NODES_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// What the server's own routes read.
pub(crate) struct Ops {
    config: Arc<Config>,
    registry: Arc<dyn Registry>,
    metrics: Metrics,
    /// The registry `/metrics` encodes.
    metrics_registry: prometheus_client::registry::Registry,
    /// The per-address request rate, if one is set, for `/api/limits`.
    ip_limiter: Option<Arc<IpLimiter>>,
    /// Every visitor request to a tunnel host, for the dashboard.
    totals: Arc<Stats>,
    /// When the server started, for its uptime.
    started: (Instant, SystemTime),
    /// Fires when shutdown begins.
    draining: CancellationToken,
    listing: Option<Arc<Listing>>,
    cluster: Option<Arc<Clustered>>,
}

/// What [`Ops`] is built from.
pub(crate) struct Parts {
    pub(crate) config: Arc<Config>,
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) metrics: Metrics,
    pub(crate) metrics_registry: prometheus_client::registry::Registry,
    pub(crate) ip_limiter: Option<Arc<IpLimiter>>,
    pub(crate) totals: Arc<Stats>,
    pub(crate) draining: CancellationToken,
    /// In a cluster: every node's tunnels, a page at a time.
    pub(crate) listing: Option<Arc<Listing>>,
    /// In a cluster: the registry, for what this node sees of it.
    pub(crate) cluster: Option<Arc<Clustered>>,
}

/// The metrics label of an own route: one of a fixed set, whatever the
/// path (a mistyped or hostile one is `other`, or the family it starts
/// like: `/api/nope` is `api`).
pub(crate) fn route_label(path: &str) -> &'static str {
    let under = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    match path {
        "/" => "landing",
        "/ws" => "ws",
        "/api/whoami" => "whoami",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        _ if under("/api") => "api",
        _ if under("/dashboard") => "dashboard",
        _ => "other",
    }
}

impl Ops {
    pub(crate) fn new(parts: Parts) -> Self {
        let Parts {
            config,
            registry,
            metrics,
            metrics_registry,
            ip_limiter,
            totals,
            draining,
            listing,
            cluster,
        } = parts;
        Ops {
            config,
            registry,
            metrics,
            metrics_registry,
            ip_limiter,
            totals,
            started: (Instant::now(), SystemTime::now()),
            draining,
            listing,
            cluster,
        }
    }

    /// Whether shutdown has begun.
    fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Answers `caller`'s request for the server's own host (other than
    /// `/ws`).
    pub(crate) async fn serve<B>(
        &self,
        caller: &Caller<'_>,
        req: &Request<B>,
    ) -> Result<Response<Body>, GatewayError> {
        let config = &self.config;
        let admin = || {
            authorize(
                config.admin_token.as_ref(),
                &config.domain,
                caller,
                req.headers(),
            )
        };
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/") => Ok(landing::page(config, req)),
            (&Method::GET, "/readyz") => Ok(self.readiness()),
            (&Method::GET, "/metrics") => {
                admin()?;
                Ok(self.metrics().await)
            }
            (&Method::GET, "/healthz") => {
                let mut health = serde_json::json!({ "status": "ok" });
                if admin().is_ok() {
                    health["tunnels"] = self.registry.len().into();
                }
                Ok(json(&health))
            }
            (&Method::GET, path @ ("/dashboard" | "/dashboard/app.js" | "/dashboard/app.css")) => {
                dashboard::asset(path).ok_or(GatewayError::NotFound)
            }
            (&Method::GET, "/api/tunnels") if self.listing.is_some() => {
                admin()?;
                self.cluster_tunnels(req.uri().query()).await
            }
            (&Method::GET, "/api/dashboard") => {
                admin()?;
                let own = dashboard::snapshot(self);
                let snapshot = match &self.listing {
                    Some(listing) => dashboard::gather(listing, own).await,
                    None => own,
                };
                Ok(json_bytes(
                    serde_json::to_vec(&snapshot).unwrap_or_default(),
                ))
            }
            (_, path) if path == "/api" || path.starts_with("/api/") => {
                admin()?;
                self.api(req.method(), path)
            }
            _ => Err(GatewayError::NotFound),
        }
    }

    /// This node's own dashboard snapshot, as JSON (what it answers a peer
    /// gathering the cluster's).
    pub(crate) fn own_snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(&dashboard::snapshot(self)).unwrap_or_default()
    }

    /// `/api/tunnels` of a cluster: a page of every node's tunnels (each
    /// with its `node`), the next page in a `Link` header.
    async fn cluster_tunnels(&self, query: Option<&str>) -> Result<Response<Body>, GatewayError> {
        let Some(listing) = &self.listing else {
            return Err(GatewayError::NotFound);
        };
        let (cursor, limit) = listing::page_of(query);
        let page = listing.page(cursor.as_deref(), limit).await?;
        let mut resp = json(&page.tunnels);
        if let Some(next) = page.next {
            let link = format!("</api/tunnels?cursor={next}&limit={limit}>; rel=\"next\"");
            if let Ok(value) = HeaderValue::from_str(&link) {
                resp.headers_mut().insert(header::LINK, value);
            }
        }
        Ok(resp)
    }

    /// `/readyz`: 200 while the server accepts tunnels, 503 once it drains
    /// (or, in a cluster, while Redis is unreachable); a cluster node adds
    /// what it sees of the cluster.
    fn readiness(&self) -> Response<Body> {
        let store_up = self.registry.can_admit();
        let (status, text) = if self.is_draining() {
            (StatusCode::SERVICE_UNAVAILABLE, "draining")
        } else if !store_up {
            (StatusCode::SERVICE_UNAVAILABLE, "cluster store unreachable")
        } else {
            (StatusCode::OK, "ready")
        };
        let mut body = serde_json::json!({ "status": text });
        if let (Some(cluster), Some(listing)) = (&self.cluster, &self.listing) {
            // The store's state as admission sees it: not a whole view of
            // the cluster (which counts every name) per probe.
            let readiness = cluster.metrics().readiness(&listing.node, store_up);
            body["cluster"] = serde_json::to_value(readiness).unwrap_or_default();
        }
        let mut resp = json(&body);
        *resp.status_mut() = status;
        resp
    }

    /// `/metrics`, in the OpenMetrics text format (behind the admin check, like
    /// the rest of the admin API).
    async fn metrics(&self) -> Response<Body> {
        self.metrics
            .tunnels
            .set(i64::try_from(self.registry.len()).unwrap_or(i64::MAX));
        if let Some(cluster) = &self.cluster {
            let metrics = cluster.metrics();
            metrics.observe(cluster.view());
            // Left as last seen when Redis does not answer in time.
            let nodes = tokio::time::timeout(NODES_TIMEOUT, cluster.shared().nodes()).await;
            if let Ok(Ok(nodes)) = nodes {
                metrics
                    .nodes
                    .set(i64::try_from(nodes.len()).unwrap_or(i64::MAX));
            }
        }
        let mut resp = Response::new(full(metrics::encode(&self.metrics_registry)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        resp
    }

    /// The admin API proper, for an authorised caller.
    fn api(&self, method: &Method, path: &str) -> Result<Response<Body>, GatewayError> {
        match (method, path) {
            (&Method::GET, "/api/tunnels") => {
                let list: Vec<_> = self.registry.list().iter().map(|t| t.info()).collect();
                Ok(json(&list))
            }
            (&Method::GET, "/api/limits") => {
                let limits = &self.config.rate_limits;
                let ip = self.ip_limiter.as_ref();
                Ok(json(&serde_json::json!({
                    "rate_limit_ip": limits.per_ip.map(|r| r.to_string()),
                    "rate_limit_tunnel": limits.per_tunnel.map(|r| r.to_string()),
                    "tracked_addresses": ip.map_or(0, |l| l.tracked()),
                    "max_tracked_addresses": limits.max_tracked_ips,
                    "max_body_size": self.config.max_body_size,
                })))
            }
            _ => Err(GatewayError::NotFound),
        }
    }
}

fn json<T: Serialize>(value: &T) -> Response<Body> {
    json_bytes(serde_json::to_vec_pretty(value).unwrap_or_default())
}

/// A JSON answer, never cached (it is live, and may be an admin's).
fn json_bytes(body: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_are_a_fixed_set() {
        for (path, label) in [
            ("/ws", "ws"),
            ("/ws/x", "other"),
            ("/healthz", "healthz"),
            ("/api", "api"),
            ("/api/tunnels", "api"),
            ("/api/whoami", "whoami"),
            ("/api/whoami/x", "api"),
            ("/apiary", "other"),
            ("/dashboard/app.js", "dashboard"),
            ("/", "landing"),
            ("/index.html", "other"),
        ] {
            assert_eq!(route_label(path), label, "{path}");
        }
    }
}
