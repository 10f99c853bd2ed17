//! Admission of one `create_tunnel`: which name the tunnel gets and whether
//! this connection may have it, then its registration.
//!
//! In order: the connection's tunnel count; the name's shape; its
//! reservation (a reserved name goes only to its key); then the registry,
//! where a live tunnel keeps its name (first come, first served) and a name
//! held after a disconnect goes back only to the same identity (others get
//! `subdomain_held`, with when the hold ends). A wrong reconnect secret
//! counts as a failed attempt against the address.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cryptun_proto::message::{CreateTunnel, ErrorCode, ServerMessage, TunnelCreated, encode};
use cryptun_proto::mux::Mux;
use cryptun_proto::{
    Capabilities, Capability, PROTOCOL_VERSION, ResponseHead, Secret, Subdomain, TunnelProtocol,
};
use tokio::sync::Semaphore;
use tracing::warn;

use super::auth::{self, Auth, Identity, Refusal};
use crate::cluster::ports::SharedPorts;
use crate::config::Config;
use crate::edge::Peer;
use crate::metrics::Metrics;
use crate::policy::{Access, Place, Quota, TunnelLimiter, Who};
use crate::ports::carrier::Carrier;
use crate::ports::relay::{Port, Relay};
use crate::ports::{PortError, Ports};
use crate::registry::{Claim, HeldBy, Lookup, Owner, Registration, Registry, Taken, Tunnel};

/// What admitting a tunnel needs: the settings, the registry it is entered
/// in, and who may have which name.
pub(crate) struct Admit {
    pub(crate) config: Arc<Config>,
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) auth: Auth,
    pub(crate) metrics: Metrics,
    /// The port public URLs name when the configuration does not.
    pub(crate) listen_port: u16,
    /// The public ports TCP tunnels are given.
    pub(crate) ports: Arc<Ports>,
    /// In a cluster with TCP port ranges: the ports, claimed cluster-wide.
    pub(crate) shared_ports: Option<Arc<SharedPorts>>,
    /// Live tunnels per identity (key, or address without one).
    pub(crate) tunnels: Arc<Quota<Who>>,
}

/// When a client refused for an unreachable cluster store may try again.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(2);

/// What a tunnel is opened with, checked, before its name is settled.
struct Terms {
    asked: Option<Subdomain>,
    max_body_size: Option<u64>,
    owner: Owner,
    /// The reconnect secret issued with the tunnel (anonymous ones only).
    secret: Option<Secret>,
    /// Its place among its identity's live tunnels: shared with each try
    /// (a generated name may collide), kept by the one registered.
    place: Arc<Place<Who>>,
}

impl Admit {
    /// Registers a tunnel for `create` on a connection that is `identity`,
    /// speaks the capabilities `accepted` and already holds `existing`
    /// tunnels; returns the registration and the `tunnel_created` text.
    pub(crate) async fn create_tunnel(
        &self,
        (mux, uploads, accepted): (&Mux<ResponseHead>, &Arc<Semaphore>, Capabilities),
        create: &CreateTunnel,
        identity: &Identity,
        peer: Peer,
        existing: usize,
    ) -> Result<(Registration, String), Refusal> {
        self.check_pool(create, accepted, identity)?;
        let terms = self.terms(create, identity, peer, existing).await?;
        match create.protocol {
            TunnelProtocol::Http => {}
            TunnelProtocol::Tcp => self.check_tcp(accepted)?,
            TunnelProtocol::Tls => self.check_passthrough(accepted)?,
        }
        let cap = self.config.tcp_max_connections;
        let key_name = match identity {
            Identity::Key { name, .. } => Some(name),
            Identity::Anonymous => None,
        };
        // A pool's members prove their owner with the pool's secret.
        let secret = match create.pool {
            true => create.pool_secret.as_ref(),
            false => create.reconnect_secret.as_ref(),
        };
        let claim = Claim {
            key: identity.key_id(),
            secret,
        };
        loop {
            let id = cryptun_proto::random_id(10);
            let subdomain = terms
                .asked
                .clone()
                .unwrap_or_else(|| Subdomain::generated(&id));
            // A TCP tunnel's port, for its name: the URL names both.
            let (relay, accepting, public_url) = match create.protocol {
                TunnelProtocol::Tcp => {
                    let whose = (subdomain.as_str(), &terms.owner);
                    let port = self.port_for(create, whose, claim).await?;
                    let url = format!("tcp://{}:{}", self.config.domain, port.number());
                    let (relay, accepting) = port.into_relay(cap);
                    (Some(relay), accepting, url)
                }
                TunnelProtocol::Tls => {
                    let url = self.config.public_url(subdomain.as_str(), self.listen_port);
                    let url = format!(
                        "tls://{}",
                        url.split_once("://").map_or(&*url, |(_, rest)| rest)
                    );
                    (Some(Relay::passthrough(cap)), None, url)
                }
                TunnelProtocol::Http => {
                    let url = self.config.public_url(subdomain.as_str(), self.listen_port);
                    (None, None, url)
                }
            };
            let tunnel = Tunnel {
                public_url,
                id,
                subdomain: subdomain.into(),
                client_addr: peer,
                created_at: SystemTime::now(),
                requests: Default::default(),
                stats: Default::default(),
                key_name: key_name.cloned(),
                request_timeout: self.request_timeout(create),
                mux: mux.clone(),
                uploads: Arc::clone(uploads),
                place: Some(Arc::clone(&terms.place)),
                owner: terms.owner.clone(),
                access: access(create)?,
                rate_limiter: self.config.rate_limits.per_tunnel.map(TunnelLimiter::new),
                max_body_size: terms.max_body_size,
                protocol: create.protocol,
                relay,
                pool: create.pool,
            };
            match Arc::clone(&self.registry).register(tunnel, claim).await {
                Ok(registration) => {
                    let tunnel = registration.tunnel();
                    if let Some(relay) = &tunnel.relay {
                        relay.registered();
                    }
                    if let Some(accepting) = accepting {
                        let carrier = Carrier {
                            registry: Arc::clone(&self.registry),
                            hop: None,
                            metrics: self.metrics.clone(),
                            idle: self.config.tcp_idle_timeout,
                        };
                        let grace = self.config.reconnect_grace;
                        accepting.spawn(&tunnel.subdomain, carrier, grace);
                    }
                    let created = self.tunnel_created(accepted, &registration, terms.secret);
                    return Ok((registration, created));
                }
                // A generated name collided (50 random bits): draw again.
                Err(Taken::Live | Taken::Held(_)) if terms.asked.is_none() => continue,
                Err(taken) => {
                    let name = terms.asked.as_ref().map_or("", Subdomain::as_str);
                    return Err(self.refuse_taken(peer, name, taken));
                }
            }
        }
    }

    /// Whether a TLS passthrough tunnel may be opened, on a session that
    /// speaks `accepted`: only by a server with an HTTPS listener.
    fn check_passthrough(&self, accepted: Capabilities) -> Result<(), Refusal> {
        let why = if !accepted.contains(Capability::RawStreams) {
            "a TLS tunnel needs the raw_streams capability (with binary_streams)"
        } else if self.config.public_scheme != "https" {
            "this server has no HTTPS listener to pass TLS connections through (--tls-listen)"
        } else {
            return Ok(());
        };
        self.metrics.refused("tls_disabled");
        Err(Refusal::new(ErrorCode::TlsDisabled, why))
    }

    /// Whether `create`, if it asks to join a pool, may: on a session that
    /// speaks `pools`, for a name, and without an API key with a pool
    /// secret.
    fn check_pool(
        &self,
        create: &CreateTunnel,
        accepted: Capabilities,
        identity: &Identity,
    ) -> Result<(), Refusal> {
        let bad = |why: &str| Err(Refusal::new(ErrorCode::BadMessage, why));
        if !create.pool {
            if create.pool_secret.is_some() {
                return bad("pool_secret is for a pool's members: send it with \"pool\": true");
            }
            return Ok(());
        }
        if !accepted.contains(Capability::Pools) {
            return bad("a pool needs the pools capability");
        }
        if create.subdomain.is_none() {
            return bad("a pool needs a name: its members ask for the same subdomain");
        }
        if identity.key_id().is_some() {
            return Ok(());
        }
        match &create.pool_secret {
            Some(secret) if is_pool_secret(secret) => Ok(()),
            Some(_) => bad("a pool secret is 16 to 256 visible ASCII characters"),
            None => bad(
                "a pool on a connection without an API key needs a pool_secret its members share (--pool-secret)",
            ),
        }
    }

    /// Whether a TCP tunnel may be opened on a session that speaks
    /// `accepted`.
    fn check_tcp(&self, accepted: Capabilities) -> Result<(), Refusal> {
        if accepted.contains(Capability::RawStreams) {
            return Ok(());
        }
        self.metrics.refused("tcp_disabled");
        Err(Refusal::new(
            ErrorCode::TcpDisabled,
            "a TCP tunnel needs the raw_streams capability (with binary_streams)",
        ))
    }

    /// A port for the TCP tunnel `create` asks for, named `name`, of
    /// `owner`, who offers `claim` to take back one held for it: in a
    /// cluster claimed cluster-wide, else one of this server's.
    async fn port_for(
        &self,
        create: &CreateTunnel,
        (name, owner): (&str, &Owner),
        claim: Claim<'_>,
    ) -> Result<Port, Refusal> {
        let asked = create.remote_port;
        // Ports reserved for keys: one asked for only by its key; none
        // given unasked.
        let reserved = self.reserved_ports().await?;
        if let Some(port) = asked {
            let owner = reserved.iter().find(|(p, _)| *p == port);
            if owner.is_some_and(|(_, key)| claim.key != Some(key.as_str())) {
                self.metrics.refused("port_unavailable");
                return Err(Refusal::new(
                    ErrorCode::PortUnavailable,
                    PortError::Reserved(port).to_string(),
                ));
            }
        }
        let reserved: Vec<u16> = reserved.into_iter().map(|(port, _)| port).collect();
        if create.pool {
            // A TCP pool is one port: each member asks for it, and one
            // joining members here serves it as they do.
            let Some(port) = asked else {
                return Err(Refusal::new(
                    ErrorCode::BadMessage,
                    "a TCP pool's members ask for its port: send remote_port (--remote-port)",
                ));
            };
            if let Lookup::Live(member) = self.registry.lookup(name) {
                let shared = member.relay.as_ref().and_then(|r| r.share());
                if member.pool && member.owner == *owner {
                    if let Some(joined) = shared.filter(|p| p.number() == port) {
                        return Ok(joined);
                    }
                }
            }
        }
        let given = match (&self.shared_ports, self.config.cluster.is_some()) {
            (Some(shared), _) => shared
                .claim((asked, &reserved), (name, owner), claim)
                .await
                .map(Port::Claimed),
            (None, true) => Err(PortError::NotInCluster),
            (None, false) => self
                .ports
                .open((asked, Some(name)), &reserved)
                .map(|(listener, lease)| Port::Own(listener, lease)),
        };
        given.map_err(|err| {
            let (code, reason) = match err {
                PortError::Disabled | PortError::NotInCluster => {
                    (ErrorCode::TcpDisabled, "tcp_disabled")
                }
                PortError::Exhausted(_) => (ErrorCode::PortsExhausted, "ports_exhausted"),
                PortError::Unavailable => (ErrorCode::Unavailable, "unavailable"),
                PortError::OutOfRange(..)
                | PortError::InUse(_)
                | PortError::Held(_)
                | PortError::Reserved(_)
                | PortError::Bind(..) => (ErrorCode::PortUnavailable, "port_unavailable"),
            };
            self.metrics.refused(reason);
            let refusal = Refusal::new(code, err.to_string());
            match code {
                ErrorCode::Unavailable => Refusal {
                    retry_after: Some(UNAVAILABLE_RETRY),
                    ..refusal
                },
                _ => refusal,
            }
        })
    }

    /// The TCP ports reserved for keys, and for which, where reservations
    /// are enforced (clients have keys).
    async fn reserved_ports(&self) -> Result<Vec<(u16, String)>, Refusal> {
        let Some(store) = self.auth.keys() else {
            return Ok(Vec::new());
        };
        store.reserved_ports().await.map_err(|err| {
            warn!(%err, "could not look up the reserved ports");
            Refusal::new(
                ErrorCode::Internal,
                "the server could not check its reserved ports; try again",
            )
        })
    }

    /// Checks everything about `create` that does not depend on the
    /// registry: the connection's tunnel count, the name's shape and
    /// reservation, the visitor rules, the address's backoff.
    async fn terms(
        &self,
        create: &CreateTunnel,
        identity: &Identity,
        peer: Peer,
        existing: usize,
    ) -> Result<Terms, Refusal> {
        let max = self.config.limits.max_tunnels_per_session;
        if existing >= max {
            self.metrics.refused("max_tunnels");
            return Err(Refusal::new(
                ErrorCode::TooManyTunnels,
                format!("a connection may hold at most {max} tunnels"),
            ));
        }
        let asked = match &create.subdomain {
            Some(name) => Some(
                Subdomain::parse(name)
                    .map_err(|why| Refusal::new(ErrorCode::InvalidSubdomain, why.to_string()))?,
            ),
            None => None,
        };
        // Checked once here; rebuilt for each try, because a name collision
        // drops the tunnel it was moved into.
        access(create)?;
        let Some(place) = self.tunnels.take(identity.who(peer)) else {
            self.metrics.refused("max_tunnels_per_ip");
            return Err(Refusal::quota("live tunnels", self.tunnels.max()));
        };
        let key = identity.key_id();
        if let Some(name) = &asked {
            self.check_reservation(name, key).await?;
        }
        if create.reconnect_secret.is_some() {
            if let Some(wait) = self.auth.blocked(peer.ip()) {
                return Err(Refusal::backoff(wait));
            }
        }
        let (owner, secret) = match (key, &create.pool_secret) {
            (Some(id), _) => (Owner::Key(id.to_owned()), None),
            // A pool without a key is its secret's (checked before).
            (None, Some(pool)) if create.pool => (Owner::secret(pool), None),
            (None, _) => {
                // A name asked for with a secret keeps it: the client
                // already has it, and the server's database may still hold
                // the name for it alone. A new secret here was lost if the
                // server crashed before its keeper saved it (within a
                // second), and the client, holding only the new one, was
                // then refused its own name by the next start.
                // Only for a name held here now: registering then succeeds
                // only if the secret is the hold's. A free name gets a new
                // secret whatever the client sends. (A cluster node that
                // has not cached the hold issues a new one: its holds are
                // in Redis, written before the answer, so it is never lost.)
                let held_here = asked.as_ref().is_some_and(|name| {
                    matches!(self.registry.lookup(name.as_str()), Lookup::Reconnecting(_))
                });
                let secret = match &create.reconnect_secret {
                    Some(kept) if held_here && auth::is_reconnect_secret(kept) => kept.clone(),
                    _ => auth::new_reconnect_secret(),
                };
                (Owner::secret(&secret), Some(secret))
            }
        };
        Ok(Terms {
            asked,
            max_body_size: self.max_body_size(create),
            owner,
            secret,
            place: Arc::new(place),
        })
    }

    /// Refuses a reserved name to anyone but its key. Reservations are
    /// enforced only where clients have keys.
    async fn check_reservation(&self, name: &Subdomain, key: Option<&str>) -> Result<(), Refusal> {
        let Some(store) = self.auth.keys() else {
            return Ok(());
        };
        let lookup = store.reserved_for(name.as_str().to_owned()).await;
        match lookup {
            Ok(Some(owner)) if key != Some(owner.as_str()) => Err(Refusal::new(
                ErrorCode::SubdomainReserved,
                format!(
                    "the subdomain {name:?} is reserved for another API key",
                    name = name.as_str()
                ),
            )),
            Ok(_) => Ok(()),
            Err(err) => {
                warn!(%err, "could not look up a reserved name");
                Err(Refusal::new(
                    ErrorCode::Internal,
                    "the server could not check the name; try again later",
                ))
            }
        }
    }

    fn refuse_taken(&self, peer: Peer, name: &str, taken: Taken) -> Refusal {
        let secs = |left: Duration| left.as_secs_f64().ceil();
        match taken {
            Taken::Unavailable => Refusal {
                retry_after: Some(UNAVAILABLE_RETRY),
                ..Refusal::new(
                    ErrorCode::Unavailable,
                    "this server cannot admit tunnels now: its cluster's shared store is unreachable; try again shortly",
                )
            },
            Taken::Live => Refusal::new(
                ErrorCode::SubdomainTaken,
                format!("the subdomain {name:?} is in use by another tunnel"),
            ),
            Taken::PoolConflict => {
                self.metrics.refused("pool_conflict");
                Refusal::new(
                    ErrorCode::PoolConflict,
                    format!(
                        "the subdomain {name:?} is served the other way: a pool and a single tunnel never share a name, and a pool's members carry one protocol"
                    ),
                )
            }
            Taken::PoolFull(members) => Refusal::quota("members of one pool", members),
            Taken::Held(HeldBy::Other(left)) => Refusal {
                retry_after: Some(left),
                ..Refusal::new(
                    ErrorCode::SubdomainHeld,
                    format!(
                        "the subdomain {name:?} is held for its previous client to reconnect (another {}s)",
                        secs(left)
                    ),
                )
            },
            Taken::Held(HeldBy::WrongSecret(left)) => self.auth.failure(
                peer.ip(),
                Refusal::new(
                    ErrorCode::Unauthorized,
                    format!(
                        "the reconnect secret does not match the one {name:?} is held for (another {}s)",
                        secs(left)
                    ),
                ),
            ),
        }
    }

    /// The smaller of the server's limit and the tunnel's; 0 asks for the
    /// server's, as with the request timeout.
    fn max_body_size(&self, create: &CreateTunnel) -> Option<u64> {
        match (self.config.max_body_size, create.max_body_size) {
            (server, None | Some(0)) => server,
            (Some(server), Some(asked)) => Some(server.min(asked)),
            (None, asked) => asked,
        }
    }

    fn request_timeout(&self, create: &CreateTunnel) -> Duration {
        create
            .request_timeout_ms
            .map(Duration::from_millis)
            .filter(|d| !d.is_zero())
            .map_or(self.config.request_timeout, |d| {
                d.min(self.config.max_request_timeout)
            })
    }

    fn tunnel_created(
        &self,
        accepted: Capabilities,
        registration: &Registration,
        reconnect_secret: Option<Secret>,
    ) -> String {
        let t = registration.tunnel();
        encode(&ServerMessage::TunnelCreated(TunnelCreated {
            version: PROTOCOL_VERSION,
            tunnel_id: t.id.clone(),
            subdomain: t.subdomain.clone(),
            public_url: t.public_url.clone(),
            binary_streams: accepted.contains(Capability::BinaryStreams),
            capabilities: accepted.without(Capability::BinaryStreams),
            request_timeout_ms: t.request_timeout.as_millis().try_into().unwrap_or(u64::MAX),
            limits: self.config.limits.announce(self.config.heartbeat.interval),
            reconnect_secret,
            max_body_size: t.max_body_size,
            protocol: t.protocol,
            remote_port: t.relay.as_ref().and_then(|r| r.port),
            pool: t.pool,
        }))
    }
}

/// Whether `secret` may be a pool's: 16 to 256 visible ASCII characters.
fn is_pool_secret(secret: &Secret) -> bool {
    let text = secret.expose();
    (16..=256).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic())
}

/// The visitor rules `create` asks for.
fn access(create: &CreateTunnel) -> Result<Access, Refusal> {
    Access::from_request(create).map_err(|(code, why)| Refusal::new(code, why))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthMode;
    use crate::policy::Backoff;
    use crate::registry::Local;
    use crate::store::Store;
    use cryptun_proto::Limits;
    use cryptun_proto::mux::Side;

    /// Admission with only what it uses: settings, a registry, a store and
    /// a backoff, and its own metrics.
    fn admit(auth: AuthMode) -> (Admit, Store) {
        let config = Arc::new(Config {
            auth,
            reconnect_grace: Duration::from_secs(30),
            ..Config::default()
        });
        let store = Store::in_memory().unwrap();
        let backoff = Arc::new(Backoff::new(config.auth_backoff));
        let admit = Admit {
            registry: Arc::new(Local::new(config.reconnect_grace, 100, 100)),
            auth: Auth::new(config.auth, Arc::new(store.clone()), backoff),
            metrics: Metrics::register(&mut prometheus_client::registry::Registry::default()),
            listen_port: 4000,
            ports: Ports::new(config.tcp_ports.clone(), [127, 0, 0, 1].into()),
            shared_ports: None,
            tunnels: Quota::new(config.max_tunnels_per_ip),
            config,
        };
        (admit, store)
    }

    fn named(name: &str) -> CreateTunnel {
        CreateTunnel {
            subdomain: Some(name.to_owned()),
            ..CreateTunnel::default()
        }
    }

    #[tokio::test]
    async fn names_go_to_whom_they_belong() {
        let (admit, store) = admit(AuthMode::Optional);
        let key = store.create_key("owner").unwrap();
        store.reserve(&key.info.id, "mine").unwrap();
        let mux = Mux::new(
            Side::Opener,
            cryptun_proto::Capabilities::SUPPORTED,
            Limits::default(),
        );
        let uploads = Arc::new(Semaphore::new(1));
        let mux = (&mux, &uploads, Capabilities::SUPPORTED);
        let peer: Peer = "192.0.2.1:1".parse().unwrap();
        let anonymous = Identity::Anonymous;
        let owner = Identity::Key {
            id: key.info.id.clone(),
            name: "owner".into(),
        };
        // A reserved name: its key only.
        let refused = admit
            .create_tunnel(mux, &named("mine"), &anonymous, peer, 0)
            .await;
        assert_eq!(
            refused.err().map(|r| r.code),
            Some(ErrorCode::SubdomainReserved)
        );
        let (mine, _) = admit
            .create_tunnel(mux, &named("mine"), &owner, peer, 0)
            .await
            .unwrap();
        // A live name: nobody else.
        let taken = admit
            .create_tunnel(mux, &named("mine"), &owner, peer, 1)
            .await;
        assert_eq!(taken.err().map(|r| r.code), Some(ErrorCode::SubdomainTaken));
        // Held after a disconnect: back to its key, not to a stranger.
        drop(mine);
        let stranger = admit
            .create_tunnel(mux, &named("mine"), &anonymous, peer, 0)
            .await;
        assert!(stranger.is_err());
        // A name held for another: `subdomain_held`, saying when it ends.
        let (open, _) = admit
            .create_tunnel(mux, &named("open"), &owner, peer, 0)
            .await
            .unwrap();
        drop(open);
        let held = admit
            .create_tunnel(mux, &named("open"), &anonymous, peer, 0)
            .await
            .err()
            .expect("refused");
        assert_eq!(held.code, ErrorCode::SubdomainHeld);
        let left = held.retry_after.expect("retry_after");
        assert!(left > Duration::from_secs(25) && left <= Duration::from_secs(30));
        assert!(
            admit
                .create_tunnel(mux, &named("mine"), &owner, peer, 0)
                .await
                .is_ok()
        );
        // A bad name, and too many tunnels on one connection.
        let bad = admit
            .create_tunnel(mux, &named("-x"), &anonymous, peer, 0)
            .await;
        assert_eq!(bad.err().map(|r| r.code), Some(ErrorCode::InvalidSubdomain));
        let max = admit.config.limits.max_tunnels_per_session;
        let over = admit
            .create_tunnel(mux, &named("x"), &anonymous, peer, max)
            .await;
        assert_eq!(over.err().map(|r| r.code), Some(ErrorCode::TooManyTunnels));
    }

    /// `tunnel_created`'s reconnect secret.
    fn secret_of(created: &str) -> String {
        let created: serde_json::Value = serde_json::from_str(created).unwrap();
        created["reconnect_secret"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn a_secret_is_kept_only_when_it_takes_back_a_name_held_here() {
        let (admit, _store) = admit(AuthMode::Off);
        let mux = Mux::new(
            Side::Opener,
            cryptun_proto::Capabilities::SUPPORTED,
            Limits::default(),
        );
        let uploads = Arc::new(Semaphore::new(1));
        let mux = (&mux, &uploads, Capabilities::SUPPORTED);
        let peer: Peer = "192.0.2.1:1".parse().unwrap();
        // A free name asked for with a secret of the client's own making
        // (well formed, and weak): a new one is issued.
        let chosen = "a".repeat(32);
        let create = CreateTunnel {
            reconnect_secret: Some(Secret::new(chosen.clone())),
            ..named("free")
        };
        let (first, created) = admit
            .create_tunnel(mux, &create, &Identity::Anonymous, peer, 0)
            .await
            .unwrap();
        let issued = secret_of(&created);
        assert_ne!(issued, chosen, "a free name ignores the client's secret");
        // Held, and taken back with the issued secret: that one is kept.
        drop(first);
        let back = CreateTunnel {
            reconnect_secret: Some(Secret::new(issued.clone())),
            ..named("free")
        };
        let (_again, created) = admit
            .create_tunnel(mux, &back, &Identity::Anonymous, peer, 0)
            .await
            .unwrap();
        assert_eq!(secret_of(&created), issued);
    }
}
