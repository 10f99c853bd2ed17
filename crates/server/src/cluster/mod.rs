//! The cluster: several servers behind one domain, sharing who serves
//! which name through Redis, so that any node serves any tunnel.
//!
//! A node is a whole server (edge, gateway, control, its own sessions) whose
//! registry is [`Clustered`] instead of the in-memory `Local` alone:
//!
//! - a name is *claimed* in Redis when a tunnel opens ([`shared`]): one
//!   atomic step per name that refuses it while another identity's member
//!   lease is live or while it is held for another identity, and otherwise
//!   writes this node as its member with a fresh epoch and a random token.
//!   The token fences: a node whose claim was taken over (its client moved
//!   to another node) finds another token on its next renewal and drops the
//!   tunnel; it never writes over the newer claim;
//! - the node renews its members' leases every third of `--cluster-lease`
//!   ([`routes`]); a member whose lease lapsed is not served from this node
//!   until Redis confirms it (so a node paused past its lease answers
//!   nothing for names it lost); when Redis cannot be reached the node keeps
//!   serving its own live sessions (a live session is its owner's proof);
//! - a visitor's request for a name whose member is on another node goes
//!   there over the internal hop ([`hop`]): HTTP/1.1 to the peer's
//!   `--cluster-listen` address, authenticated with the cluster secret,
//!   carrying what the first node saw of the visitor;
//! - a tunnel that ends leaves its name held in Redis for its owner's
//!   reconnection, on whichever node it comes back.
//!
//! Routes found in Redis are cached for 30 s and unknown names for one, and
//! a cached route never waits on Redis. A stale route is corrected on its
//! first failure: the peer answers that the name is not there, and the
//! first node asks Redis again. Lookups are shared by visitors asking at
//! once and bounded per node ([`lookups`]), so a flood of random names
//! costs Redis a fixed rate, not a round trip each.
//!
//! API keys and reserved names are kept in Redis too ([`keys`]), so a key
//! works, and its revocation holds, on every node. TCP tunnels' ports are
//! given cluster-wide there, and every node listens on them ([`ports`]);
//! TCP and TLS tunnels' connections cross the hop as raw bytes.
//!
//! Keys are versioned (`cryptun:1:`) and each name's keys share a hash tag,
//! so every atomic step touches one slot of a Redis Cluster.

pub mod acme;
pub mod health;
pub mod hop;
pub mod keys;
pub(crate) mod listing;
mod lookups;
pub mod peer_tls;
pub(crate) mod ports;
mod routes;
pub mod shared;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tracing::info;

pub use routes::{Clustered, Node};
pub use shared::Shared;

use crate::config::Config;
use hop::Forwarder;
use peer_tls::{PeerConnector, PeerTls};

/// How long a node waits for a peer's connection to open.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one step on Redis may take before it counts as unreachable.
const STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// What a node that joined its cluster serves with.
pub(crate) struct Joined {
    /// Its registry.
    pub(crate) registry: Arc<Clustered>,
    /// The hop's listener.
    pub(crate) listener: TcpListener,
    /// How its requests reach other nodes.
    pub(crate) forwarder: Arc<Forwarder>,
    /// The cluster's keys and reserved names.
    pub(crate) keys: Arc<keys::SharedKeys>,
    /// Its name.
    pub(crate) node: String,
    /// What it sees of the cluster, for `/metrics` and `/readyz`.
    pub(crate) metrics: health::ClusterMetrics,
    /// How it dials its peers (and, with TLS, accepts them).
    pub(crate) peers: PeerConnector,
    /// The hop's TLS, if it has it.
    pub(crate) tls: Option<peer_tls::PeerTls>,
}

/// Joins the cluster `config` names: reaches Redis, binds the hop, takes
/// the node's name (refused if a live node has it) and starts renewing.
pub(crate) async fn join(config: &Config, cluster: &ClusterConfig) -> io::Result<Joined> {
    let unreachable = |err: shared::SharedError| {
        io::Error::other(format!(
            "could not reach the cluster store at {}: {err}",
            cluster.redacted_url()
        ))
    };
    let tls = match &cluster.tls {
        Some(files) => Some(PeerTls::load(files).map_err(|err| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the cluster's TLS: {err}"),
            )
        })?),
        None => None,
    };
    let peers = PeerConnector::new(tls.clone(), PEER_CONNECT_TIMEOUT);
    let shared = Shared::connect(&cluster.url, STEP_TIMEOUT)
        .await
        .map_err(unreachable)?;
    let listener = TcpListener::bind(cluster.listen).await.map_err(|err| {
        io::Error::new(
            err.kind(),
            format!(
                "could not listen for the cluster on {}: {err}",
                cluster.listen
            ),
        )
    })?;
    let hop = match cluster.advertise {
        Some(addr) => addr,
        None => {
            let bound = listener.local_addr()?;
            if bound.ip().is_unspecified() {
                return Err(io::Error::other(
                    "--cluster-listen on an unspecified address needs --cluster-advertise: the address other nodes dial",
                ));
            }
            bound
        }
    };
    let node = Node {
        name: cluster.node_name.clone(),
        hop,
        token: cryptun_proto::random_id(16),
    };
    if !shared
        .hold_node(&node.name, &node.token, hop, cluster.lease)
        .await
        .map_err(unreachable)?
    {
        return Err(io::Error::other(format!(
            "the node name {:?} is held by a live node of the cluster: choose another --node-name, or wait {:?} after that node stopped",
            node.name, cluster.lease
        )));
    }
    shared.mark().await.map_err(unreachable)?;
    shared.list_node(&node.name).await.map_err(unreachable)?;
    info!(
        node = %node.name,
        %hop,
        hop_tls = tls.is_some(),
        store = %cluster.redacted_url(),
        redis_cluster = shared.is_cluster(),
        "joined the cluster"
    );
    let keys = Arc::new(keys::SharedKeys::new(shared.clone()));
    let name = node.name.clone();
    let metrics = health::ClusterMetrics::default();
    let registry = Clustered::start(
        shared,
        node,
        cluster,
        config.reconnect_grace,
        config.max_held_names,
        metrics.clone(),
    );
    let forwarder = Arc::new(Forwarder::new(
        cluster.secret.clone(),
        Arc::clone(&registry),
        config.max_request_timeout + Duration::from_secs(5),
        peers.clone(),
    ));
    Ok(Joined {
        registry,
        listener,
        forwarder,
        keys,
        node: name,
        metrics,
        peers,
        tls,
    })
}

/// How a node joins its cluster.
#[derive(Clone)]
pub struct ClusterConfig {
    /// `redis://HOST:PORT[/DB]` or `rediss://...`, a password possibly in
    /// it: never logged whole ([`ClusterConfig::redacted_url`]).
    pub url: String,
    /// This node's name, unique among live nodes.
    pub node_name: String,
    /// Where the internal hop listens (other nodes forward to it).
    pub listen: SocketAddr,
    /// What peers dial to reach the hop, when not `listen` (a port of 0 in
    /// `listen` is replaced by the bound one).
    pub advertise: Option<SocketAddr>,
    /// How long a node's claims live without renewal.
    pub lease: Duration,
    /// What nodes authenticate each other's forwarded requests with.
    pub secret: ClusterSecret,
    /// How long a route found in Redis is used without asking again.
    pub route_ttl: Duration,
    /// How long a name found nowhere is taken to be unknown.
    pub negative_ttl: Duration,
    /// Most names looked up in Redis a second for visitors (as many again
    /// in a burst); past it, uncached names are answered 503.
    pub lookup_rate: u32,
    /// TLS between nodes, both ends authenticated; none: plain HTTP.
    pub tls: Option<peer_tls::PeerTlsFiles>,
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("url", &self.redacted_url())
            .field("node_name", &self.node_name)
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl ClusterConfig {
    /// The defaults for a node of `url` named `node_name` listening on
    /// `listen`, with `secret`.
    pub fn new(url: String, node_name: String, listen: SocketAddr, secret: ClusterSecret) -> Self {
        ClusterConfig {
            url,
            node_name,
            listen,
            advertise: None,
            lease: Duration::from_secs(10),
            secret,
            route_ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(1),
            lookup_rate: 2000,
            tls: None,
        }
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    /// Checks what does not need Redis to check.
    pub fn check(&self) -> Result<(), String> {
        if !(self.url.starts_with("redis://") || self.url.starts_with("rediss://")) {
            return Err(format!(
                "the cluster URL must start with redis:// or rediss://, not {:?}",
                self.redacted_url()
            ));
        }
        if self.node_name.is_empty()
            || self.node_name.len() > 64
            || !self
                .node_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!(
                "the node name must be 1 to 64 letters, digits, '-', '_' or '.', not {:?}",
                self.node_name
            ));
        }
        if self.lease < Duration::from_secs(1) {
            return Err("the cluster lease must be at least one second".into());
        }
        Ok(())
    }
}

/// The cluster's shared secret, kept as the digest the hop sends; never
/// printed.
#[derive(Clone)]
pub struct ClusterSecret {
    proof: String,
}

/// Fewer characters than this is no secret.
pub const MIN_SECRET_LEN: usize = 16;

impl ClusterSecret {
    /// Keeps what proves `secret` on the hop.
    pub fn new(secret: &str) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_LEN || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "the cluster secret must be at least {MIN_SECRET_LEN} visible ASCII characters (e.g. `openssl rand -hex 24`)"
            ));
        }
        let mut hash = Sha256::new();
        hash.update(b"cryptun-hop-1\0");
        hash.update(secret.as_bytes());
        let proof = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(ClusterSecret { proof })
    }

    /// What a forwarded request carries to prove it comes from a node.
    pub(crate) fn proof(&self) -> &str {
        &self.proof
    }

    /// Whether `offered` is this secret's proof (in constant time).
    pub(crate) fn accepts(&self, offered: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.proof.as_bytes().ct_eq(offered).into()
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(***)")
    }
}

/// `url` with the password of its user part replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("redis://:hunter2@10.0.0.1:6379/2"),
            "redis://:***@10.0.0.1:6379/2"
        );
        assert_eq!(redact("rediss://app:pw@r:6380"), "rediss://app:***@r:6380");
        assert_eq!(redact("redis://r:6379"), "redis://r:6379");
        let secret = ClusterSecret::new("0123456789abcdef0123").unwrap();
        assert_eq!(format!("{secret:?}"), "ClusterSecret(***)");
        assert!(secret.accepts(secret.proof().as_bytes()));
        assert!(!secret.accepts(b"0123456789abcdef0123"));
        assert!(ClusterSecret::new("short").is_err());
    }

    #[test]
    fn names_and_urls_are_checked() {
        let secret = ClusterSecret::new("0123456789abcdef0123").unwrap();
        let listen = "127.0.0.1:0".parse().unwrap();
        let ok = ClusterConfig::new("redis://r:1".into(), "node-a".into(), listen, secret);
        assert!(ok.check().is_ok());
        let mut bad = ok.clone();
        bad.url = "http://r".into();
        assert!(bad.check().is_err());
        let mut bad = ok.clone();
        bad.node_name = "a b".into();
        assert!(bad.check().is_err());
        let mut bad = ok;
        bad.lease = Duration::from_millis(10);
        assert!(bad.check().is_err());
    }
}
