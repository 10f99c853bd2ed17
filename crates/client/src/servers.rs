//! Which servers the client may connect to, and in what order.
//!
//! Every `--server` is a candidate, and so is every address of a server's
//! host name: `tunnels.example.com` resolving to three nodes is three
//! candidates, each dialled at its address while the name stays the Host
//! header and the TLS server name (SNI), so the certificate still checks
//! out. A [`round`] resolves the names again (nodes come and go) and
//! shuffles the candidates, so that the clients of a cluster spread over
//! its nodes instead of all taking the first one.
//!
//! [`Endpoint`] is also what a connected session reports: the server it
//! reached and the address it dialled.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::Uri;

use crate::ClientConfig;

/// Most addresses taken from one name. A cluster has a handful of nodes;
/// a name resolving to more (a CDN's pool, a misconfigured zone) would only
/// make each round longer, so the rest wait for a later resolution.
pub const MAX_ADDRESSES: usize = 16;

/// Most servers a client takes (`--server` repeated, `servers = [...]`):
/// with [`MAX_ADDRESSES`], a round is at most 256 attempts.
pub const MAX_SERVERS: usize = 16;

/// One place to connect to: a server's control URL and, when its name
/// was resolved, the address to dial.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The control URL (`ws://HOST:PORT/ws` or `wss://...`): its host is
    /// the Host header and the TLS server name.
    pub url: String,
    /// The address dialled. `None` before a connection when the name could
    /// not be resolved: it is then dialled by name, and fails with the
    /// resolver's error.
    pub addr: Option<SocketAddr>,
}

impl Endpoint {
    /// The server, by name, with no address to dial.
    pub fn named(url: &str) -> Self {
        Endpoint {
            url: url.to_owned(),
            addr: None,
        }
    }

    /// The server as a person writes it: `http://HOST:PORT` for `ws://`,
    /// `https://HOST:PORT` for `wss://`.
    pub fn server(&self) -> String {
        server_url(&self.url)
    }

    /// The address, unless the URL's host already says it.
    fn shown_addr(&self) -> Option<SocketAddr> {
        let addr = self.addr?;
        let literal = host_port(&self.url).and_then(|(host, _)| host.parse::<IpAddr>().ok());
        (literal != Some(addr.ip())).then_some(addr)
    }

    /// The host and port to dial: the address if known, else the name
    /// (a name under `localhost` as `localhost`).
    pub(crate) fn dial(&self) -> Option<(String, u16)> {
        if let Some(addr) = self.addr {
            return Some((addr.ip().to_string(), addr.port()));
        }
        let (host, port) = host_port(&self.url)?;
        Some((dial_name(&host).to_owned(), port))
    }
}

impl fmt::Display for Endpoint {
    /// `http://HOST:PORT`, with the address dialled when the host is a
    /// name: `http://cluster.test:4000 (127.0.0.2:4000)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.shown_addr() {
            Some(addr) => write!(f, "{} ({addr})", self.server()),
            None => f.write_str(&self.server()),
        }
    }
}

/// `http://HOST:PORT` (or `https://`) for a control URL.
pub fn server_url(control_url: &str) -> String {
    let (scheme, rest) = match control_url.split_once("://") {
        Some(("wss", rest)) => ("https", rest),
        Some((_, rest)) => ("http", rest),
        None => ("http", control_url),
    };
    let host = rest.split('/').next().unwrap_or_default();
    format!("{scheme}://{host}")
}

/// The bare host (an IPv6 literal without brackets) and port of a control
/// URL, the port defaulting to the scheme's.
pub(crate) fn host_port(control_url: &str) -> Option<(String, u16)> {
    let uri: Uri = control_url.parse().ok()?;
    let tls = uri.scheme_str() == Some("wss");
    let host = uri.host()?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Some((bare.to_owned(), port))
}

/// The name to resolve for `host`: names under `localhost` are loopback
/// (RFC 6761), as browsers and curl resolve them, though the system
/// resolver may not.
fn dial_name(host: &str) -> &str {
    if host.ends_with(".localhost") {
        "localhost"
    } else {
        host
    }
}

/// Every candidate of `url`: one per address of its host (at most
/// [`MAX_ADDRESSES`], in the resolver's order, without repeats), or the
/// name alone when it does not resolve within `limit`.
pub async fn resolve(url: &str, limit: Duration) -> Vec<Endpoint> {
    let Some((host, port)) = host_port(url) else {
        return vec![Endpoint::named(url)];
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return vec![Endpoint {
            url: url.to_owned(),
            addr: Some(SocketAddr::new(ip, port)),
        }];
    }
    let found =
        tokio::time::timeout(limit, tokio::net::lookup_host((dial_name(&host), port))).await;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    if let Ok(Ok(found)) = found {
        for addr in found {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
            if addrs.len() == MAX_ADDRESSES {
                break;
            }
        }
    }
    if addrs.is_empty() {
        return vec![Endpoint::named(url)];
    }
    addrs
        .into_iter()
        .map(|addr| Endpoint {
            url: url.to_owned(),
            addr: Some(addr),
        })
        .collect()
}

/// Every candidate of every server of `config`, resolved now and
/// shuffled.
pub async fn round(config: &ClientConfig) -> Vec<Endpoint> {
    let limit = config.connect_timeout;
    let resolved = futures_util::future::join_all(config.servers().map(|url| resolve(url, limit)));
    let mut all: Vec<Endpoint> = resolved.await.into_iter().flatten().collect();
    shuffle(&mut all, random_below);
    all
}

/// Shuffles `items` (Fisher–Yates); `below(n)` draws a number in `[0, n)`.
pub fn shuffle<T>(items: &mut [T], mut below: impl FnMut(usize) -> usize) {
    for i in (1..items.len()).rev() {
        let j = below(i + 1).min(i);
        items.swap(i, j);
    }
}

/// A random number in `[0, n)` from the operating system (0 if it has
/// none to give: the order is then the resolver's).
fn random_below(n: usize) -> usize {
    let draw = getrandom::u32().unwrap_or(0);
    // Scaled rather than reduced modulo n: no bias worth the name for the
    // few candidates there are.
    ((u64::from(draw) * n as u64) >> 32) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_show_the_server_and_the_address_of_a_name() {
        let named = Endpoint {
            url: "wss://cluster.test:4443/ws".into(),
            addr: Some("127.0.0.2:4443".parse().unwrap()),
        };
        assert_eq!(
            named.to_string(),
            "https://cluster.test:4443 (127.0.0.2:4443)"
        );
        assert_eq!(
            named.to_string(),
            "https://cluster.test:4443 (127.0.0.2:4443)"
        );
        assert_eq!(named.dial(), Some(("127.0.0.2".into(), 4443)));
        let literal = Endpoint {
            url: "ws://127.0.0.1:4000/ws".into(),
            addr: Some("127.0.0.1:4000".parse().unwrap()),
        };
        assert_eq!(literal.to_string(), "http://127.0.0.1:4000");
        assert_eq!(literal.to_string(), "http://127.0.0.1:4000");
        let v6 = Endpoint::named("ws://[::1]:4000/ws");
        assert_eq!(v6.to_string(), "http://[::1]:4000");
        assert_eq!(v6.dial(), Some(("::1".into(), 4000)));
        let sub = Endpoint::named("wss://a.localhost/ws");
        assert_eq!(sub.dial(), Some(("localhost".into(), 443)));
    }

    #[tokio::test]
    async fn a_literal_is_its_own_address_and_an_unknown_name_stays_a_name() {
        let limit = Duration::from_secs(5);
        let literal = resolve("ws://127.0.0.1:4000/ws", limit).await;
        assert_eq!(literal.len(), 1);
        assert_eq!(literal[0].addr, Some("127.0.0.1:4000".parse().unwrap()));
        // `.invalid` never resolves (RFC 6761).
        let unknown = resolve("ws://nowhere.invalid:4000/ws", limit).await;
        assert_eq!(unknown, [Endpoint::named("ws://nowhere.invalid:4000/ws")]);
        // Loopback names resolve to loopback addresses.
        for endpoint in resolve("ws://t.localhost:4000/ws", limit).await {
            let addr = endpoint.addr.expect("localhost resolves");
            assert!(addr.ip().is_loopback() && addr.port() == 4000, "{addr}");
        }
    }

    #[test]
    fn a_config_takes_each_server_once_and_a_bounded_number_of_them() {
        let target = crate::Target::parse("3000").unwrap();
        let mut config = ClientConfig::new("http://127.0.0.1:4000", target).unwrap();
        let given = ["https://a.test", "b.test:4000", "https://a.test/"];
        config.set_servers(&given).unwrap();
        let servers: Vec<&str> = config.servers().collect();
        assert_eq!(servers, ["wss://a.test/ws", "ws://b.test:4000/ws"]);
        let many: Vec<String> = (0..=MAX_SERVERS).map(|i| format!("n{i}.test")).collect();
        let err = config.set_servers(&many).unwrap_err();
        assert!(err.0.contains("at most 16"), "{err}");
        assert!(config.set_servers(&[] as &[&str]).is_err());
        assert!(config.set_servers(&["ftp://x"]).is_err());
        // Refused lists leave the servers as they were.
        assert_eq!(config.servers().count(), 2);
    }

    #[test]
    fn a_shuffle_keeps_every_item_and_follows_its_draws() {
        let mut items = [1, 2, 3, 4];
        // Each draw the largest: nothing moves.
        shuffle(&mut items, |n| n - 1);
        assert_eq!(items, [1, 2, 3, 4]);
        // Each draw 0: the first is swapped down at each step.
        shuffle(&mut items, |_| 0);
        assert_eq!(items, [2, 3, 4, 1]);
        // With the system's randomness every order comes up.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..500 {
            let mut items = [1, 2, 3];
            shuffle(&mut items, random_below);
            seen.insert(items);
        }
        assert_eq!(seen.len(), 6, "{seen:?}");
        assert!((0..1000).all(|_| random_below(3) < 3));
    }
}
