//! The cluster's live tunnels for `/api/tunnels`, a page at a time: every
//! live node (from Redis) in order of name, each asked over the hop for a
//! slice of its own tunnels (`GET /_cryptun/tunnels?offset=N&limit=M`),
//! each entry with its `node`. The cursor names a node and an offset in
//! its list, so a page costs one or a few hop requests however many
//! tunnels the cluster has.
//!
//! The dashboard's snapshot is gathered the same way
//! ([`Listing::ask_other_nodes`], hop route `/_cryptun/dashboard`): every
//! other live node asked at once, each answering with its own, and this
//! node's taken as it is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::ClusterSecret;
use super::peer_tls::PeerConnector;
use super::shared::Shared;
use crate::error::GatewayError;
use crate::registry::Registry;

/// The hop route a node answers with a slice of its tunnels.
pub(crate) const PATH: &str = "/_cryptun/tunnels";

/// The hop route a node answers with its own dashboard snapshot.
pub(crate) const DASHBOARD: &str = "/_cryptun/dashboard";

/// How long a peer may take to answer a listing or a snapshot, head and
/// body together.
const PEER_TIMEOUT: Duration = Duration::from_secs(3);

/// Most tunnels in one page.
pub const MAX_PAGE: usize = 1000;

/// Lists the cluster's tunnels.
pub(crate) struct Listing {
    pub(crate) shared: Shared,
    /// This node's name.
    pub(crate) node: String,
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) secret: ClusterSecret,
    client: Client<PeerConnector, Empty<Bytes>>,
}

/// One page, and where the next begins (none: this was the last).
pub(crate) struct Page {
    pub(crate) tunnels: Vec<Value>,
    pub(crate) next: Option<String>,
}

impl Listing {
    pub(crate) fn new(
        shared: Shared,
        node: String,
        registry: Arc<dyn Registry>,
        secret: ClusterSecret,
        peers: PeerConnector,
    ) -> Self {
        Listing {
            shared,
            node,
            registry,
            secret,
            client: Client::builder(TokioExecutor::new()).build(peers),
        }
    }

    /// This node's tunnels from `offset`, at most `limit`, each with its
    /// node; and whether more follow.
    pub(crate) fn local(&self, offset: usize, limit: usize) -> (Vec<Value>, bool) {
        let all = self.registry.list();
        let slice = all.iter().skip(offset).take(limit);
        let tunnels = slice
            .map(|t| {
                let mut info = t.info();
                info.node = Some(self.node.clone());
                serde_json::to_value(info).unwrap_or_default()
            })
            .collect();
        (tunnels, all.len() > offset.saturating_add(limit))
    }

    /// The page that starts at `cursor` (the first: none), at most
    /// `limit` tunnels.
    pub(crate) async fn page(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, GatewayError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut nodes = self.live_nodes().await?;
        let (from, mut offset) = match cursor.and_then(parse_cursor) {
            Some((node, offset)) => (node, offset),
            None => (String::new(), 0),
        };
        nodes.retain(|(name, _)| *name >= from);
        let mut tunnels = Vec::new();
        for (i, (name, hop)) in nodes.iter().enumerate() {
            if *name != from {
                offset = 0;
            }
            let want = limit - tunnels.len();
            let (got, more) = if *name == self.node {
                self.local(offset, want)
            } else {
                // A node that does not answer is left out of the page.
                self.remote(*hop, offset, want).await.unwrap_or_default()
            };
            let taken = got.len();
            tunnels.extend(got);
            if tunnels.len() >= limit {
                let next = if more {
                    Some(format!("{name}:{}", offset + taken))
                } else {
                    nodes.get(i + 1).map(|(next, _)| format!("{next}:0"))
                };
                return Ok(Page { tunnels, next });
            }
        }
        Ok(Page {
            tunnels,
            next: None,
        })
    }

    /// The live nodes and their hops, in order of name.
    async fn live_nodes(&self) -> Result<Vec<(String, SocketAddr)>, GatewayError> {
        let mut nodes = self
            .shared
            .nodes()
            .await
            .map_err(|_| GatewayError::ClusterUnavailable)?;
        nodes.sort();
        Ok(nodes)
    }

    /// A slice of node `hop`'s tunnels.
    async fn remote(
        &self,
        hop: SocketAddr,
        offset: usize,
        limit: usize,
    ) -> Option<(Vec<Value>, bool)> {
        let body = self
            .ask(hop, &format!("{PATH}?offset={offset}&limit={limit}"))
            .await?;
        let value: Value = serde_json::from_slice(&body).ok()?;
        let tunnels = value["tunnels"].as_array()?.clone();
        Some((tunnels, value["more"].as_bool().unwrap_or(false)))
    }

    /// Every other live node with its answer to hop route `path`, asked
    /// at once; none from a node that did not answer in time.
    pub(crate) async fn ask_other_nodes(
        &self,
        path: &str,
    ) -> Result<Vec<(String, Option<Bytes>)>, GatewayError> {
        let nodes = self.live_nodes().await?;
        let asked = nodes
            .into_iter()
            .filter(|(name, _)| *name != self.node)
            .map(|(name, hop)| async move { (name, self.ask(hop, path).await) });
        Ok(futures_util::future::join_all(asked).await)
    }

    /// Node `hop`'s answer to `path_and_query`, if it sends one in time.
    async fn ask(&self, hop: SocketAddr, path_and_query: &str) -> Option<Bytes> {
        let uri: Uri = format!("http://{hop}{path_and_query}").parse().ok()?;
        let req = Request::get(uri)
            .header(super::hop::PROOF, self.secret.proof())
            .body(Empty::new())
            .ok()?;
        // One deadline for the head and the body together.
        let answer = async {
            let resp = self.client.request(req).await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            Some(resp.into_body().collect().await.ok()?.to_bytes())
        };
        tokio::time::timeout(PEER_TIMEOUT, answer).await.ok()?
    }
}

/// `NODE:OFFSET`.
fn parse_cursor(cursor: &str) -> Option<(String, usize)> {
    let (node, offset) = cursor.rsplit_once(':')?;
    Some((node.to_owned(), offset.parse().ok()?))
}

/// `offset` and `limit` of a query string, with defaults.
pub(crate) fn slice_of(query: Option<&str>) -> (usize, usize) {
    let mut offset = 0;
    let mut limit = MAX_PAGE;
    for pair in query.unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("offset", v)) => offset = v.parse().unwrap_or(0),
            Some(("limit", v)) => limit = v.parse().unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE),
            _ => {}
        }
    }
    (offset, limit)
}

/// `cursor` and `limit` of `/api/tunnels`'s query string.
pub(crate) fn page_of(query: Option<&str>) -> (Option<String>, usize) {
    let mut cursor = None;
    let mut limit = MAX_PAGE;
    for pair in query.unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("cursor", v)) => cursor = Some(v.to_owned()),
            Some(("limit", v)) => limit = v.parse().unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE),
            _ => {}
        }
    }
    (cursor, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_and_queries_are_read() {
        assert_eq!(parse_cursor("node-a:40"), Some(("node-a".into(), 40)));
        assert_eq!(parse_cursor("nope"), None);
        assert_eq!(slice_of(Some("offset=5&limit=2")), (5, 2));
        assert_eq!(slice_of(Some("limit=999999")), (0, MAX_PAGE));
        assert_eq!(page_of(Some("cursor=a:1&limit=3")), (Some("a:1".into()), 3));
        assert_eq!(page_of(None), (None, MAX_PAGE));
    }
}
