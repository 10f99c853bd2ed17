//! TCP tunnels in a cluster: every node listens on every port of the
//! cluster's ranges (`--tcp-ports`, the same on each node), ports are
//! given to tunnels in Redis, cluster-wide (`shared::ports`), and a
//! visitor at any node's port is carried to the node serving that port's
//! tunnel, over the hop when it is another (`hop::raw`).
//!
//! A node gives only ports it could bind itself; one it could not (in use
//! by something else on its machine) is logged at start and never given by
//! it, though a visitor reaching it there while another node gave it is
//! refused by the system. The port's claim is renewed with the tunnel's
//! life (every third of the lease) and, once the tunnel ends, held for its
//! name for the reconnect grace, as the name is: a client that comes back,
//! on any node, asks for its port again and gets it. A port's name is
//! cached per node as routes are (`--cluster-route-ttl`, unknown ports
//! `--cluster-negative-ttl`); a stale one is corrected when the name's
//! tunnel, looked up, turns out to have another port.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, info, warn};

use super::ClusterConfig;
use super::shared::{PortClaimed, PortEntry, Shared};
use crate::ports::carrier::Carrier;
use crate::ports::{PortError, bind, describe};
use crate::registry::{Claim, Owner};

/// The cluster's ports as this node gives and serves them.
pub(crate) struct SharedPorts {
    shared: Shared,
    /// The ports this node listens on, the only ones it gives.
    bound: Vec<u16>,
    /// The ranges, as the operator wrote them (for messages).
    ranges: Vec<RangeInclusive<u16>>,
    lease: Duration,
    grace: Duration,
    route_ttl: Duration,
    negative_ttl: Duration,
    /// This node's live claims, by port.
    claims: Mutex<HashMap<u16, PortEntry>>,
    /// Ports' names as Redis last gave them (`None`: given to none).
    names: Mutex<HashMap<u16, (Option<String>, Instant)>>,
}

/// A node's listeners on the cluster's ports, by port.
pub(crate) type Listeners = Vec<(u16, TcpListener)>;

/// Most ports' names remembered; past it the table starts again empty.
const MAX_CACHED: usize = 65_536;

/// A port given to a tunnel of this node; when dropped (the tunnel ended,
/// or was not registered after all) it is held for the tunnel's name for
/// the grace.
#[derive(Debug)]
pub(crate) struct PortClaim {
    port: u16,
    token: String,
    ports: Weak<SharedPorts>,
    /// Whether its tunnel was registered: only then is the port held for
    /// the name once the claim ends; else what the claim replaced is put
    /// back (so refusals hold no ports, and take none from their owners).
    hold: AtomicBool,
    /// The port's record before this claim (`""`: none).
    replaced: String,
}

impl std::fmt::Debug for SharedPorts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPorts")
            .field("bound", &self.bound.len())
            .finish_non_exhaustive()
    }
}

impl PortClaim {
    /// The port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Once the claim ends, the port is held for its name.
    pub(crate) fn hold_after(&self) {
        self.hold.store(true, Ordering::Relaxed);
    }

    /// Once the claim ends, the port is free (its tunnel closed on
    /// purpose).
    pub(crate) fn free_after(&self) {
        self.hold.store(false, Ordering::Relaxed);
    }
}

impl Drop for PortClaim {
    fn drop(&mut self) {
        let Some(ports) = self.ports.upgrade() else {
            return;
        };
        lock(&ports.claims).remove(&self.port);
        let (port, token) = (self.port, std::mem::take(&mut self.token));
        let hold = match self.hold.load(Ordering::Relaxed) {
            true => ports.grace,
            false => Duration::ZERO,
        };
        let replaced = std::mem::take(&mut self.replaced);
        // Without a runtime (the process is ending) the claim lapses by
        // itself into the same hold.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let released = ports.shared.release_port((port, &token), hold, &replaced);
                if let Err(err) = released.await {
                    debug!(%err, port, "could not release a port: it lapses by itself");
                }
            });
        }
    }
}

impl SharedPorts {
    /// Binds every port of `ranges` on `ip`, as a node of `cluster` on
    /// `shared` holding ports `grace` for reconnection; fails if none can
    /// be bound.
    pub(crate) fn bind(
        (ip, ranges): (IpAddr, &[RangeInclusive<u16>]),
        shared: Shared,
        cluster: &ClusterConfig,
        grace: Duration,
    ) -> io::Result<(Arc<Self>, Listeners)> {
        let mut listeners = Vec::new();
        let mut failed = Vec::new();
        for port in ranges.iter().flat_map(|r| r.clone()) {
            match bind(SocketAddr::new(ip, port)) {
                Ok(listener) => listeners.push((port, listener)),
                Err(err) => failed.push((port, err)),
            }
        }
        if listeners.is_empty() {
            return Err(io::Error::other(format!(
                "could not listen on any port of --tcp-ports ({}) on {ip}: {}",
                describe(ranges),
                failed
                    .first()
                    .map_or_else(String::new, |(_, err)| err.to_string())
            )));
        }
        for (port, err) in &failed {
            warn!(port, %err, "a port of --tcp-ports could not be bound: this node will not give it, nor serve visitors there");
        }
        info!(
            ports = listeners.len(),
            ranges = %describe(ranges),
            "listening on the cluster's TCP ports"
        );
        let ports = Arc::new(SharedPorts {
            shared,
            bound: listeners.iter().map(|(port, _)| *port).collect(),
            ranges: ranges.to_vec(),
            lease: cluster.lease,
            grace,
            route_ttl: cluster.route_ttl,
            negative_ttl: cluster.negative_ttl,
            claims: Mutex::default(),
            names: Mutex::default(),
        });
        Ok((ports, listeners))
    }

    /// A port for the tunnel `name` of `owner`: `asked`, if free, or
    /// `name`'s already and `claim` proves its owner; else a free one of
    /// this node's, from a random place.
    ///
    /// A port of `reserved` (reserved for a key) is never given unasked.
    pub(crate) async fn claim(
        self: &Arc<Self>,
        (asked, reserved): (Option<u16>, &[u16]),
        (name, owner): (&str, &Owner),
        claim: Claim<'_>,
    ) -> Result<PortClaim, PortError> {
        if let Some(port) = asked {
            if !self.ranges.iter().any(|r| r.contains(&port)) {
                return Err(PortError::OutOfRange(port, describe(&self.ranges)));
            }
            if !self.bound.contains(&port) {
                let why = io::Error::other("this node of the cluster could not listen on it");
                return Err(PortError::Bind(port, why));
            }
        }
        let start = rand::random_range(0..self.bound.len());
        let mut offered = self.bound[start..].to_vec();
        offered.extend_from_slice(&self.bound[..start]);
        offered.retain(|port| !reserved.contains(port));
        let mut entry = PortEntry {
            port: 0,
            name: name.to_owned(),
            token: cryptun_proto::random_id(12),
            owner: owner.code(),
        };
        let [key, secret] = claim.codes();
        let claimed = self
            .shared
            .claim_port(
                &entry,
                [&key, &secret],
                (asked, &offered),
                self.lease + self.grace,
            )
            .await
            .map_err(|err| {
                debug!(%err, "could not claim a port");
                PortError::Unavailable
            })?;
        let (port, replaced) = match claimed {
            PortClaimed::Yes(port, replaced) => (port, replaced),
            PortClaimed::Live(port) => return Err(PortError::InUse(port)),
            PortClaimed::Held(port, _) => return Err(PortError::Held(port)),
            PortClaimed::Exhausted => return Err(PortError::Exhausted(describe(&self.ranges))),
        };
        entry.port = port;
        let token = entry.token.clone();
        lock(&self.claims).insert(port, entry);
        self.forget(port);
        Ok(PortClaim {
            port,
            token,
            ports: Arc::downgrade(self),
            hold: AtomicBool::new(false),
            replaced,
        })
    }

    /// Serves `listeners` until `stop` fires, carrying each visitor to its
    /// port's tunnel with `carrier`, and renews this node's claims.
    pub(crate) fn serve(
        self: &Arc<Self>,
        listeners: Listeners,
        carrier: Carrier,
        stop: CancellationToken,
    ) {
        for (port, listener) in listeners {
            let ports = Arc::clone(self);
            let (carrier, stop) = (carrier.clone(), stop.clone());
            tokio::spawn(
                ports
                    .accept(port, listener, carrier, stop)
                    .instrument(debug_span!("tcp", port)),
            );
        }
        tokio::spawn(keep(Arc::downgrade(self), stop));
    }

    async fn accept(
        self: Arc<Self>,
        port: u16,
        listener: TcpListener,
        carrier: Carrier,
        stop: CancellationToken,
    ) {
        crate::ports::accept_until(&listener, &stop, |stream, visitor| {
            let (ports, carrier) = (Arc::clone(&self), carrier.clone());
            tokio::spawn(
                async move { ports.arrive(port, (stream, visitor), &carrier).await }
                    .instrument(debug_span!("visitor", %visitor)),
            );
        })
        .await;
    }

    /// Carries `visitor`, who reached `port`, to the port's tunnel, here or
    /// on another node; closes it if the port is given to none now.
    async fn arrive(
        &self,
        port: u16,
        (stream, visitor): (TcpStream, SocketAddr),
        carrier: &Carrier,
    ) {
        let carried = match self.name_of(port).await {
            Some(name) => carrier.carry_tcp((name, port), (stream, visitor)).await,
            None => {
                carrier.metrics.tcp_connection("no_tunnel");
                debug!(port, "the port is given to no tunnel: visitor closed");
                false
            }
        };
        if !carried {
            // Given to none, or to a name whose tunnel has another port
            // now: asked again next time.
            self.forget(port);
        }
    }

    /// The name `port` is given to, from the cache or Redis.
    async fn name_of(&self, port: u16) -> Option<String> {
        if let Some((name, until)) = lock(&self.names).get(&port) {
            if Instant::now() < *until {
                return name.clone();
            }
        }
        let name = match self.shared.port_name(port).await {
            Ok(name) => name,
            Err(err) => {
                debug!(%err, port, "could not look a port up");
                // Redis away: a name known before still serves.
                return lock(&self.names).get(&port).and_then(|(n, _)| n.clone());
            }
        };
        let ttl = match name {
            Some(_) => self.route_ttl,
            None => self.negative_ttl,
        };
        let mut names = lock(&self.names);
        if names.len() >= MAX_CACHED {
            names.clear();
        }
        names.insert(port, (name.clone(), Instant::now() + ttl));
        name
    }

    fn forget(&self, port: u16) {
        lock(&self.names).remove(&port);
    }

    /// Renews this node's claims once.
    async fn renew(&self) {
        let claims: Vec<PortEntry> = lock(&self.claims).values().cloned().collect();
        match self
            .shared
            .renew_ports(&claims, self.lease + self.grace)
            .await
        {
            Ok(lost) => {
                for port in lost {
                    // Its name's tunnel came back on another node, which
                    // claimed the port again: the name's own fencing ends
                    // the tunnel here.
                    lock(&self.claims).remove(&port);
                    warn!(port, "another claim has this node's port");
                }
            }
            Err(err) => debug!(%err, "could not renew the ports' claims"),
        }
    }
}

/// Renews `ports`' claims every third of the lease until `stop`.
async fn keep(ports: Weak<SharedPorts>, stop: CancellationToken) {
    let every = ports
        .upgrade()
        .map_or(Duration::from_secs(1), |p| p.lease / 3);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(ports) = ports.upgrade() else { return };
        ports.renew().await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
