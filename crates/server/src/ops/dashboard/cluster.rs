//! The dashboard of a cluster: every live node's own snapshot, asked over
//! the hop at once, merged into one. Totals are sums over the nodes that
//! answered; tunnels and clients carry their `node`, the list bounded at
//! [`MAX_LISTED`] as on one node; `nodes` lists every live node, and one
//! that did not answer in time is shown unreachable rather than holding
//! the page up. With Redis unreachable the node's own snapshot is
//! answered, its `nodes` naming only itself.

use serde::{Deserialize, Serialize};

use super::{MAX_LISTED, Snapshot, Totals};
use crate::cluster::listing::{DASHBOARD, Listing};
use crate::registry::StatsView;

/// One node of the cluster, as the dashboard shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its name.
    pub name: String,
    /// Whether it answered in time (if not, the rest is empty).
    pub reachable: bool,
    /// Its version.
    #[serde(default)]
    pub version: Option<String>,
    /// Seconds since it started.
    #[serde(default)]
    pub uptime_secs: Option<u64>,
    /// Whether it is shutting down.
    #[serde(default)]
    pub draining: bool,
    /// Its live tunnels.
    #[serde(default)]
    pub tunnels: usize,
    /// Its connected clients.
    #[serde(default)]
    pub clients: i64,
    /// Visitor requests per second there.
    #[serde(default)]
    pub rate: f64,
}

impl NodeInfo {
    fn unreachable(name: String) -> Self {
        NodeInfo {
            name,
            reachable: false,
            version: None,
            uptime_secs: None,
            draining: false,
            tunnels: 0,
            clients: 0,
            rate: 0.0,
        }
    }

    fn of(name: String, snapshot: &Snapshot) -> Self {
        NodeInfo {
            name,
            reachable: true,
            version: Some(snapshot.server.version.clone()),
            uptime_secs: Some(snapshot.server.uptime_secs),
            draining: snapshot.server.draining,
            tunnels: snapshot.totals.tunnels,
            clients: snapshot.totals.clients,
            rate: snapshot.totals.requests.rate,
        }
    }
}

/// The cluster's snapshot, from this node's `own`: the other nodes' asked
/// over the hop, this node's taken as it is (listed in Redis or not).
pub(crate) async fn gather(listing: &Listing, mut own: Snapshot) -> Snapshot {
    let node = listing.node.clone();
    own.server.node = Some(node.clone());
    let Ok(answers) = listing.ask_other_nodes(DASHBOARD).await else {
        return alone(own, node);
    };
    let server = own.server.clone();
    let mut snapshots: Vec<(String, Option<Snapshot>)> = answers
        .into_iter()
        .map(|(name, answer)| {
            let snapshot = answer.and_then(|body| serde_json::from_slice(&body).ok());
            (name, snapshot)
        })
        .collect();
    snapshots.push((node, Some(own)));
    snapshots.sort_by(|a, b| a.0.cmp(&b.0));
    let mut merged = Snapshot {
        server,
        totals: Totals {
            tunnels: 0,
            clients: 0,
            held_names: 0,
            requests: StatsView::default(),
        },
        clients: Vec::new(),
        tunnels: Vec::new(),
        omitted: 0,
        nodes: Vec::new(),
    };
    for (name, snapshot) in snapshots {
        let Some(snapshot) = snapshot else {
            merged.nodes.push(NodeInfo::unreachable(name));
            continue;
        };
        merged.nodes.push(NodeInfo::of(name.clone(), &snapshot));
        add(&mut merged, snapshot, &name);
    }
    merged
}

/// Adds node `name`'s `snapshot` to `merged`.
fn add(merged: &mut Snapshot, snapshot: Snapshot, name: &str) {
    let totals = &mut merged.totals;
    totals.tunnels += snapshot.totals.tunnels;
    totals.clients += snapshot.totals.clients;
    totals.held_names += snapshot.totals.held_names;
    totals.requests.add(&snapshot.totals.requests);
    let room = MAX_LISTED.saturating_sub(merged.tunnels.len());
    let listed = snapshot.tunnels.len().min(room);
    merged.omitted += snapshot.omitted + (snapshot.tunnels.len() - listed);
    let mut kept = std::collections::HashSet::new();
    for mut tunnel in snapshot.tunnels.into_iter().take(listed) {
        tunnel.node = Some(name.to_owned());
        kept.insert(tunnel.subdomain.clone());
        merged.tunnels.push(tunnel);
    }
    for mut client in snapshot.clients {
        client.tunnels.retain(|t| kept.contains(t));
        if !client.tunnels.is_empty() {
            client.node = Some(name.to_owned());
            merged.clients.push(client);
        }
    }
}

/// This node's snapshot alone (Redis unreachable), marked as its.
fn alone(mut own: Snapshot, node: String) -> Snapshot {
    for tunnel in &mut own.tunnels {
        tunnel.node = Some(node.clone());
    }
    for client in &mut own.clients {
        client.node = Some(node.clone());
    }
    own.nodes = vec![NodeInfo::of(node, &own)];
    own
}
