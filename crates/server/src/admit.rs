//! Admission of one `create_tunnel`: which name the tunnel gets and whether
//! this connection may have it, then its registration.
//!
//! In order: the connection's tunnel count; the name's shape; its
//! reservation (a reserved name goes only to its key); then the registry,
//! where a live tunnel keeps its name (first come, first served) and a name
//! held after a disconnect goes back only to the same identity. A wrong
//! reconnect secret counts as a failed attempt against the address.

use std::time::{Duration, SystemTime};

use cryptun_proto::message::{CreateTunnel, ErrorCode, ServerMessage, TunnelCreated, encode};
use cryptun_proto::mux::Mux;
use cryptun_proto::{PROTOCOL_VERSION, ResponseHead};
use tracing::warn;

use crate::access::Access;
use crate::auth::{self, Identity, Refusal};
use crate::limits::TunnelLimiter;
use crate::registry::{Claim, HeldBy, Owner, Registration, Taken, Tunnel};
use crate::store::names::valid_subdomain;
use crate::{Peer, State};

/// Registers a tunnel for `create` on a connection that is `identity` and
/// already holds `existing` tunnels; returns the registration and the
/// `tunnel_created` text.
pub(crate) async fn create_tunnel(
    state: &State,
    mux: &Mux<ResponseHead>,
    create: &CreateTunnel,
    identity: &Identity,
    peer: Peer,
    existing: usize,
) -> Result<(Registration, String), Refusal> {
    let max = state.config.limits.max_tunnels_per_session;
    if existing >= max {
        state.metrics.refused("max_tunnels");
        return Err(Refusal::new(
            ErrorCode::TooManyTunnels,
            format!("a connection may hold at most {max} tunnels"),
        ));
    }
    let asked = match &create.subdomain {
        Some(name) => Some(
            valid_subdomain(name).map_err(|why| Refusal::new(ErrorCode::InvalidSubdomain, why))?,
        ),
        None => None,
    };
    // Checked once here; rebuilt below for each try, because a name
    // collision drops the tunnel it was moved into.
    let access = || Access::from_request(create).map_err(|(code, why)| Refusal::new(code, why));
    access()?;
    // The smaller of the server's limit and the tunnel's; 0 asks for the
    // server's, as with the request timeout.
    let max_body_size = match (state.config.max_body_size, create.max_body_size) {
        (server, None | Some(0)) => server,
        (Some(server), Some(asked)) => Some(server.min(asked)),
        (None, asked) => asked,
    };
    let (key, key_name) = match identity {
        Identity::Key { id, name } => (Some(id.as_str()), Some(name)),
        Identity::Anonymous => (None, None),
    };
    if let Some(name) = &asked {
        check_reservation(state, name, key).await?;
    }
    if create.reconnect_secret.is_some() {
        if let Some(wait) = state.backoff.blocked(peer.ip(), std::time::Instant::now()) {
            return Err(Refusal::backoff(wait));
        }
    }
    let (owner, secret) = match key {
        Some(id) => (Owner::Key(id.to_owned()), None),
        None => {
            let secret = auth::new_reconnect_secret();
            (Owner::secret(&secret), Some(secret))
        }
    };
    let claim = Claim {
        key,
        secret: create.reconnect_secret.as_ref(),
    };
    loop {
        let id = cryptun_proto::random_id(10);
        let subdomain = asked.clone().unwrap_or_else(|| format!("tunnel-{id}"));
        let tunnel = Tunnel {
            public_url: state.config.public_url(&subdomain, state.listen_port),
            id,
            subdomain,
            client_addr: peer,
            created_at: SystemTime::now(),
            requests: Default::default(),
            stats: Default::default(),
            key_name: key_name.cloned(),
            request_timeout: request_timeout(state, create),
            mux: mux.clone(),
            owner: owner.clone(),
            access: access()?,
            rate_limiter: state.config.rate_limits.per_tunnel.map(TunnelLimiter::new),
            max_body_size,
        };
        match state.registry.register(tunnel, claim) {
            Ok(registration) => {
                let created = tunnel_created(state, mux, &registration, secret);
                return Ok((registration, created));
            }
            // A generated name collided (50 random bits): draw again.
            Err(_) if asked.is_none() => continue,
            Err(taken) => return Err(refuse_taken(state, peer, &asked.unwrap_or_default(), taken)),
        }
    }
}

/// Refuses a reserved name to anyone but its key.
async fn check_reservation(state: &State, name: &str, key: Option<&str>) -> Result<(), Refusal> {
    let Some(store) = &state.store else {
        return Ok(());
    };
    let lookup = {
        let name = name.to_owned();
        auth::blocking(store, move |store| store.reserved_for(&name)).await
    };
    match lookup {
        Ok(Some(owner)) if key != Some(owner.as_str()) => Err(Refusal::new(
            ErrorCode::SubdomainReserved,
            format!("the subdomain {name:?} is reserved for another API key"),
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

fn refuse_taken(state: &State, peer: Peer, name: &str, taken: Taken) -> Refusal {
    let secs = |left: Duration| left.as_secs_f64().ceil();
    match taken {
        Taken::Live => Refusal::new(
            ErrorCode::SubdomainTaken,
            format!("the subdomain {name:?} is in use by another tunnel"),
        ),
        Taken::Held(HeldBy::Other(left)) => Refusal::new(
            ErrorCode::SubdomainTaken,
            format!(
                "the subdomain {name:?} is held for its previous client to reconnect (another {}s)",
                secs(left)
            ),
        ),
        Taken::Held(HeldBy::WrongSecret(left)) => auth::failure(
            state,
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

fn request_timeout(state: &State, create: &CreateTunnel) -> Duration {
    create
        .request_timeout_ms
        .map(Duration::from_millis)
        .filter(|d| !d.is_zero())
        .map_or(state.config.request_timeout, |d| {
            d.min(state.config.max_request_timeout)
        })
}

fn tunnel_created(
    state: &State,
    mux: &Mux<ResponseHead>,
    registration: &Registration,
    reconnect_secret: Option<cryptun_proto::Secret>,
) -> String {
    let t = registration.tunnel();
    encode(&ServerMessage::TunnelCreated(TunnelCreated {
        version: PROTOCOL_VERSION,
        tunnel_id: t.id.clone(),
        subdomain: t.subdomain.clone(),
        public_url: t.public_url.clone(),
        binary_streams: mux.binary(),
        request_timeout_ms: t.request_timeout.as_millis().try_into().unwrap_or(u64::MAX),
        limits: state
            .config
            .limits
            .announce(state.config.heartbeat.interval),
        reconnect_secret,
        max_body_size: t.max_body_size,
    }))
}
