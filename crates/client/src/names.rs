//! What the client keeps of its tunnels between connections: their names
//! and reconnect secrets, by the server *domain* that issued them (the
//! domain the tunnel's public URL names), not by the server's address.
//!
//! Every node of a cluster serves one domain and honours a secret any of
//! them issued, so a client that loses one node presents its secrets to
//! the next. A secret means nothing to a server of another domain, and is
//! not sent to one the client has seen serve another domain: that server
//! gets the names and secrets it issued itself, if any. A server not seen
//! yet is taken for a node of the domain last served.

use std::collections::HashMap;

use crate::TunnelCreated;
use crate::servers::Endpoint;

/// The tunnels as each domain last created them, and which domain each
/// server served.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    /// Per domain, the session's tunnels as last created there, in the
    /// order of [`ClientConfig::tunnels`](crate::ClientConfig::tunnels).
    by_domain: HashMap<String, Vec<TunnelCreated>>,
    /// The domain of the last session.
    last: String,
    /// The domain each server (by control URL) served when last connected.
    /// Bounded by the servers configured, as `by_domain` is.
    served: HashMap<String, String>,
}

impl Names {
    /// What the session on `server` with `tunnels` leaves to keep.
    pub(crate) fn new(server: &Endpoint, tunnels: &[TunnelCreated]) -> Self {
        let mut names = Names {
            by_domain: HashMap::new(),
            last: String::new(),
            served: HashMap::new(),
        };
        names.learn(server, tunnels);
        names
    }

    /// Keeps what a new session on `server` was given.
    pub(crate) fn learn(&mut self, server: &Endpoint, tunnels: &[TunnelCreated]) {
        let domain = tunnels.first().map(domain_of).unwrap_or_default();
        self.served.insert(server.url.clone(), domain.clone());
        self.by_domain.insert(domain.clone(), tunnels.to_vec());
        self.last = domain;
    }

    /// The tunnels to ask `server` for again: as the domain it served
    /// created them, or, for a server not seen yet, as the last domain did.
    pub(crate) fn for_server(&self, server: &Endpoint) -> &[TunnelCreated] {
        let domain = self.served.get(&server.url).unwrap_or(&self.last);
        self.by_domain
            .get(domain)
            .or_else(|| self.by_domain.get(&self.last))
            .map_or(&[], Vec::as_slice)
    }
}

/// The domain `tunnel`'s public URL names: its host without the tunnel's
/// own label (`tunnel-ab12.example.com` → `example.com`), lowercase,
/// without the port; the whole host if it does not start with the label.
pub(crate) fn domain_of(tunnel: &TunnelCreated) -> String {
    let url = &tunnel.public_url;
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    let host = host.to_ascii_lowercase();
    let label = format!("{}.", tunnel.subdomain.to_ascii_lowercase());
    match host.strip_prefix(&label) {
        Some(domain) if !domain.is_empty() => domain.to_owned(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptun_proto::Secret;

    fn created(subdomain: &str, domain: &str, secret: &str) -> TunnelCreated {
        TunnelCreated {
            version: cryptun_proto::PROTOCOL_VERSION,
            tunnel_id: "ab12".into(),
            subdomain: subdomain.into(),
            public_url: format!("http://{subdomain}.{domain}:4000"),
            binary_streams: true,
            capabilities: Default::default(),
            request_timeout_ms: 60_000,
            limits: cryptun_proto::Limits::default().announce(std::time::Duration::from_secs(10)),
            reconnect_secret: Some(Secret::new(secret)),
            max_body_size: None,
            protocol: cryptun_proto::TunnelProtocol::Http,
            remote_port: None,
            pool: false,
        }
    }

    fn endpoint(port: u16) -> Endpoint {
        Endpoint::named(&format!("ws://127.0.0.1:{port}/ws"))
    }

    fn secret(tunnels: &[TunnelCreated]) -> Option<Secret> {
        tunnels[0].reconnect_secret.clone()
    }

    #[test]
    fn the_domain_is_the_public_url_without_the_tunnels_label() {
        assert_eq!(
            domain_of(&created("web", "Example.COM", "s")),
            "example.com"
        );
        assert_eq!(
            domain_of(&created("tunnel-ab12", "localhost", "s")),
            "localhost"
        );
        let mut other = created("web", "example.com", "s");
        other.public_url = "https://my.own.domain/".into();
        assert_eq!(domain_of(&other), "my.own.domain");
        other.public_url = "http://[::1]:4000".into();
        assert_eq!(domain_of(&other), "[::1]");
    }

    #[test]
    fn secrets_are_kept_by_domain_not_by_server() {
        let (a, b, c) = (endpoint(1), endpoint(2), endpoint(3));
        let mut names = Names::new(&a, &[created("web", "one.test", "s1")]);
        // A server not seen yet is taken for a node of the last domain.
        assert_eq!(secret(names.for_server(&b)), Some(Secret::new("s1")));
        // It turned out to serve another domain, with a secret of its own.
        names.learn(&b, &[created("web", "two.test", "s2")]);
        // Back to the first: it gets its own domain's secret, not the last one.
        assert_eq!(secret(names.for_server(&a)), Some(Secret::new("s1")));
        assert_eq!(secret(names.for_server(&b)), Some(Secret::new("s2")));
        // Another node of the last domain gets the last secret.
        assert_eq!(secret(names.for_server(&c)), Some(Secret::new("s2")));
        // A node of `one.test` issues a new secret: the whole domain uses it.
        names.learn(&c, &[created("web", "one.test", "s3")]);
        assert_eq!(secret(names.for_server(&a)), Some(Secret::new("s3")));
        assert_eq!(secret(names.for_server(&b)), Some(Secret::new("s2")));
    }
}
