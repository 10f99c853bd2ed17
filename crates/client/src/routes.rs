//! Which local service a request goes to: each `request` names the tunnel
//! it arrived on (`tunnel_id`), and each tunnel of the session has its own
//! target and name.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::observe::TunnelInfo;
use crate::{ClientConfig, LocalProxyProtocol, Target, TunnelCreated};

/// Where one tunnel's requests go.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// The tunnel's name for [`Event::Request`](crate::Event::Request).
    pub name: Arc<str>,
    /// Its local service.
    pub target: Target,
    /// A TCP tunnel's PROXY protocol header towards its local service, if
    /// asked for, and the public address visitors connect to (the
    /// server's, with the tunnel's port) as the header's destination.
    pub proxy_header: Option<(LocalProxyProtocol, Option<SocketAddr>)>,
}

/// The routes of a session, by tunnel id.
#[derive(Debug)]
pub(crate) struct Routes {
    by_id: HashMap<String, Route>,
    /// The first tunnel's route, also taken for a request naming no tunnel
    /// we know on a session of one tunnel (a server may leave the id out).
    first: Route,
    /// Every tunnel, first one first, as observers see them.
    tunnels: Vec<TunnelInfo>,
}

impl Routes {
    /// The routes of `created`, the tunnels of [`ClientConfig::tunnels`]
    /// in the same order, on the server at `server` (the address dialled).
    pub(crate) fn new(
        config: &ClientConfig,
        created: &[TunnelCreated],
        server: Option<SocketAddr>,
    ) -> Self {
        let mut tunnels = Vec::with_capacity(created.len());
        let mut by_id = HashMap::with_capacity(created.len());
        for (spec, tunnel) in config.tunnels().zip(created) {
            let name = spec.name.as_ref().unwrap_or(&tunnel.subdomain);
            let name: Arc<str> = name.as_str().into();
            tunnels.push(TunnelInfo {
                name: Arc::clone(&name),
                subdomain: tunnel.subdomain.clone(),
                public_url: tunnel.public_url.clone(),
                target: spec.target.clone(),
            });
            let public = server
                .zip(tunnel.remote_port)
                .map(|(s, port)| SocketAddr::new(s.ip(), port));
            let route = Route {
                name,
                target: spec.target.clone(),
                proxy_header: spec.local_proxy_protocol.map(|version| (version, public)),
            };
            by_id.insert(tunnel.tunnel_id.clone(), route);
        }
        let first = created
            .first()
            .and_then(|t| by_id.get(&t.tunnel_id).cloned())
            .unwrap_or_else(|| Route {
                name: "".into(),
                target: config.tunnel.target.clone(),
                proxy_header: None,
            });
        Routes {
            by_id,
            first,
            tunnels,
        }
    }

    /// Every tunnel of the session, first one first, for observers.
    pub(crate) fn tunnels(&self) -> Vec<TunnelInfo> {
        self.tunnels.clone()
    }

    /// The route of `tunnel_id`, if the session has that tunnel (or only
    /// one tunnel).
    pub(crate) fn get(&self, tunnel_id: &str) -> Option<&Route> {
        match self.by_id.get(tunnel_id) {
            Some(route) => Some(route),
            None if self.by_id.len() <= 1 => Some(&self.first),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TunnelConfig;

    fn created(id: &str) -> TunnelCreated {
        let json = serde_json::json!({
            "version": 1, "tunnel_id": id, "subdomain": format!("tunnel-{id}"),
            "public_url": format!("http://tunnel-{id}.localhost"),
            "binary_streams": true, "request_timeout_ms": 60000,
            "limits": {
                "max_message_bytes": 1, "max_frame_payload": 1, "stream_window": 1,
                "max_inline_body": 1, "max_streams": 1, "heartbeat_interval_ms": 1,
            },
        });
        serde_json::from_value(json).expect("a tunnel_created")
    }

    #[test]
    fn each_tunnel_id_has_its_target_and_an_unknown_one_none() {
        let target = |t: &str| Target::parse(t).expect("a target");
        let mut config =
            ClientConfig::new("http://127.0.0.1:4000", target("3000")).expect("a server address");
        let mut api = TunnelConfig::new(target("4000"));
        api.name = Some("api".into());
        config.more_tunnels.push(api);
        let routes = Routes::new(&config, &[created("aaa"), created("bbb")], None);
        let first = routes.get("aaa").expect("aaa");
        assert_eq!(&*first.name, "tunnel-aaa");
        let api = routes.get("bbb").expect("bbb");
        assert_eq!(
            (&*api.name, api.target.to_string()),
            ("api", target("4000").to_string())
        );
        assert!(routes.get("ccc").is_none());
        let shown: Vec<(&str, &str)> = routes
            .tunnels
            .iter()
            .map(|t| (&*t.name, t.public_url.as_str()))
            .collect();
        assert_eq!(
            shown,
            [
                ("tunnel-aaa", "http://tunnel-aaa.localhost"),
                ("api", "http://tunnel-bbb.localhost")
            ]
        );
        // One tunnel: whatever the id.
        let one = ClientConfig::new("http://127.0.0.1:4000", target("3000")).expect("a server");
        let routes = Routes::new(&one, &[created("aaa")], None);
        assert_eq!(&*routes.get("").expect("the one tunnel").name, "tunnel-aaa");
    }
}
