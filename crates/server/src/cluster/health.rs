//! What a node sees of its cluster, for operators: the `cryptun_cluster_*`
//! families of `/metrics` (registered only on a cluster node) and the
//! `cluster` part of `/readyz`.
//!
//! Counters are counted where things happen (a claim lost to another node,
//! the store found emptied, a request sent over the hop); gauges are read
//! when scraped ([`ClusterMetrics::observe`]), from the registry's
//! [`View`] and the store's list of live nodes.

use std::sync::Mutex;
use std::time::SystemTime;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

/// The cluster's families, shared by the registry, the hop and `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct ClusterMetrics {
    /// 1 while the node reaches Redis, else 0.
    pub store_up: Gauge,
    /// Live nodes listed in Redis (as of the last scrape that reached it).
    pub nodes: Gauge,
    /// Names whose member is on this node.
    pub names_owned: Gauge,
    /// Routes to other nodes' names cached here.
    pub routes_cached: Gauge,
    /// Names cached as found nowhere.
    pub unknown_cached: Gauge,
    /// Times this node found the store emptied (restarted without its
    /// data) and wrote its live names back.
    pub store_emptied: Counter,
    /// Names this node's tunnels lost to a newer claim on another node.
    pub names_lost: Counter,
    /// Requests sent to other nodes over the hop, by outcome.
    pub hop_requests: Family<HopOutcome, Counter>,
    /// Visitors' questions to Redis of where a name is.
    pub store_lookups: Counter,
    /// Names not looked up because the lookup budget was spent.
    pub lookups_refused: Counter,
    /// When the store was last found emptied.
    emptied_at: std::sync::Arc<Mutex<Option<SystemTime>>>,
}

/// What became of a request sent over the hop.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HopOutcome {
    /// `answered` (the peer sent a head), `unreachable` (no connection, or
    /// no head in time), `stale` (the peer no longer had the name).
    pub outcome: &'static str,
}

/// A snapshot of the registry's cluster state.
#[derive(Debug, Clone, Copy, Default)]
pub struct View {
    /// Whether Redis answered last time it was asked.
    pub store_up: bool,
    /// This node's claims.
    pub owned: usize,
    /// Cached routes to other nodes.
    pub routes: usize,
    /// Cached unknown names.
    pub unknown: usize,
}

/// The `cluster` part of `/readyz`.
#[derive(Debug, Serialize)]
pub struct Readiness {
    /// This node's name.
    pub node: String,
    /// `up` or `unreachable`.
    pub store: &'static str,
    /// When the store was last found emptied (RFC 3339), and what that
    /// lost, until this node restarts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_emptied_at: Option<String>,
    /// What an operator should know, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'static str>,
}

impl ClusterMetrics {
    /// Registers the families under `cryptun_cluster_`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("cryptun_cluster");
        r.register(
            "store_up",
            "1 while this node reaches the cluster's Redis, else 0",
            self.store_up.clone(),
        );
        r.register(
            "nodes",
            "Live nodes listed in the cluster's Redis",
            self.nodes.clone(),
        );
        r.register(
            "names_owned",
            "Names whose tunnel is on this node",
            self.names_owned.clone(),
        );
        r.register(
            "routes_cached",
            "Routes to other nodes' names cached on this node",
            self.routes_cached.clone(),
        );
        r.register(
            "unknown_cached",
            "Names cached on this node as found nowhere",
            self.unknown_cached.clone(),
        );
        r.register(
            "store_emptied",
            "Times this node found the cluster's Redis emptied and wrote its live names back",
            self.store_emptied.clone(),
        );
        r.register(
            "names_lost",
            "Names this node's tunnels lost to a newer claim on another node",
            self.names_lost.clone(),
        );
        r.register(
            "store_lookups",
            "Names this node asked Redis about for visitors (routes not cached)",
            self.store_lookups.clone(),
        );
        r.register(
            "lookups_refused",
            "Names not looked up because the node's lookup budget (--cluster-lookup-rate) was spent",
            self.lookups_refused.clone(),
        );
        for outcome in ["answered", "unreachable", "stale"] {
            let _ = self.hop_requests.get_or_create(&HopOutcome { outcome });
        }
        r.register(
            "hop_requests",
            "Visitor requests sent to other nodes over the internal hop, by outcome",
            self.hop_requests.clone(),
        );
    }

    /// Sets the gauges from `view`.
    pub fn observe(&self, view: View) {
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.store_up.set(i64::from(view.store_up));
        self.names_owned.set(n(view.owned));
        self.routes_cached.set(n(view.routes));
        self.unknown_cached.set(n(view.unknown));
    }

    /// Counts a request over the hop.
    pub fn hop(&self, outcome: &'static str) {
        self.hop_requests
            .get_or_create(&HopOutcome { outcome })
            .inc();
    }

    /// Counts the store found emptied, now.
    pub fn emptied(&self) {
        self.store_emptied.inc();
        *self.emptied_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(SystemTime::now());
    }

    /// What `/readyz` says of node `node`'s cluster.
    pub fn readiness(&self, node: &str, store_up: bool) -> Readiness {
        let emptied = *self.emptied_at.lock().unwrap_or_else(|e| e.into_inner());
        Readiness {
            node: node.to_owned(),
            store: if store_up { "up" } else { "unreachable" },
            store_emptied_at: emptied.map(|at| humantime::format_rfc3339_seconds(at).to_string()),
            detail: match (store_up, emptied) {
                (false, _) => Some(
                    "the cluster's Redis is unreachable: live tunnels are served, new ones refused",
                ),
                (true, Some(_)) => Some(
                    "the cluster's Redis was emptied (restarted without its data): live tunnels were written back, but API keys, reservations and held names kept there are gone; restore them, and run Redis with AOF and a replica",
                ),
                (true, None) => None,
            },
        }
    }
}
