//! Live tunnels by subdomain: the map the gateway routes through.
//!
//! An entry is owned by its session: [`Registration`] removes it when dropped,
//! so a tunnel leaves the map however its session ends (close, error, panic).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use cryptun_proto::ResponseHead;
use cryptun_proto::mux::Mux;
use serde::Serialize;

use crate::access::Access;
use crate::limits::TunnelLimiter;

/// One live tunnel.
pub struct Tunnel {
    /// Random id, unique among live tunnels.
    pub id: String,
    /// The label routed to this tunnel.
    pub subdomain: String,
    /// Where visitors reach it.
    pub public_url: String,
    /// The control connection's peer address.
    pub client_addr: SocketAddr,
    /// When the tunnel was created.
    pub created_at: SystemTime,
    /// Requests routed to this tunnel so far.
    pub requests: AtomicU64,
    /// How long its visitors wait for a response head.
    pub request_timeout: std::time::Duration,
    /// The session's streams, shared with its other tunnels.
    pub mux: Mux<ResponseHead>,
    /// Who may reach it (IP lists, credentials).
    pub access: Access,
    /// Its request rate, across all its visitors, if limited.
    pub rate_limiter: Option<TunnelLimiter>,
    /// Largest request body its visitors may send, if limited.
    pub max_body_size: Option<u64>,
}

/// What `/api/tunnels` shows of a tunnel.
#[derive(Debug, Serialize)]
pub struct TunnelInfo {
    /// Random id.
    pub tunnel_id: String,
    /// Routed label.
    pub subdomain: String,
    /// Public URL.
    pub public_url: String,
    /// The client's address as the server saw it.
    pub client_addr: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Requests routed so far.
    pub request_count: u64,
    /// Requests in flight on the tunnel's session.
    pub in_flight: usize,
    /// Messages from the client naming unknown or finished requests (dropped).
    pub unmatched_messages: u64,
    /// Whether visitors must present Basic credentials.
    pub basic_auth: bool,
    /// Networks allowed (empty: all).
    pub allow_ips: Vec<String>,
    /// Networks refused.
    pub deny_ips: Vec<String>,
    /// Largest request body accepted, if limited.
    pub max_body_size: Option<u64>,
}

impl Tunnel {
    /// A snapshot for the admin API.
    pub fn info(&self) -> TunnelInfo {
        TunnelInfo {
            tunnel_id: self.id.clone(),
            subdomain: self.subdomain.clone(),
            public_url: self.public_url.clone(),
            client_addr: self.client_addr.to_string(),
            created_at: humantime::format_rfc3339_seconds(self.created_at).to_string(),
            request_count: self.requests.load(Ordering::Relaxed),
            in_flight: self.mux.stream_count(),
            unmatched_messages: self.mux.unmatched(),
            basic_auth: self.access.has_credentials(),
            allow_ips: self.access.allowed(),
            deny_ips: self.access.denied(),
            max_body_size: self.max_body_size,
        }
    }
}

/// The map from subdomain to live tunnel.
#[derive(Default)]
pub struct Registry {
    tunnels: RwLock<HashMap<String, Arc<Tunnel>>>,
}

/// The subdomain is held by another live tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("subdomain is taken")]
pub struct Taken;

impl Registry {
    /// Finds the tunnel serving `subdomain`.
    pub fn get(&self, subdomain: &str) -> Option<Arc<Tunnel>> {
        self.read().get(subdomain).cloned()
    }

    /// Registers `tunnel` unless its subdomain is taken. The entry lives as
    /// long as the returned registration.
    pub fn register(self: &Arc<Self>, tunnel: Tunnel) -> Result<Registration, Taken> {
        let mut map = self.tunnels.write().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(&tunnel.subdomain) {
            return Err(Taken);
        }
        let tunnel = Arc::new(tunnel);
        map.insert(tunnel.subdomain.clone(), Arc::clone(&tunnel));
        Ok(Registration {
            registry: Arc::clone(self),
            tunnel,
        })
    }

    /// Whether a subdomain is in use.
    pub fn contains(&self, subdomain: &str) -> bool {
        self.read().contains_key(subdomain)
    }

    /// Live tunnels, oldest first.
    pub fn list(&self) -> Vec<Arc<Tunnel>> {
        let mut all: Vec<_> = self.read().values().cloned().collect();
        all.sort_by_key(|t| t.created_at);
        all
    }

    /// Number of live tunnels.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no tunnel is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Tunnel>>> {
        self.tunnels.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// A tunnel's place in the registry; dropping it removes the tunnel.
pub struct Registration {
    registry: Arc<Registry>,
    tunnel: Arc<Tunnel>,
}

impl Registration {
    /// The registered tunnel.
    pub fn tunnel(&self) -> &Arc<Tunnel> {
        &self.tunnel
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self
            .registry
            .tunnels
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if map
            .get(&self.tunnel.subdomain)
            .is_some_and(|t| Arc::ptr_eq(t, &self.tunnel))
        {
            map.remove(&self.tunnel.subdomain);
        }
    }
}
