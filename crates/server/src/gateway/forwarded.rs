//! The visitor's address behind a reverse proxy or load balancer.
//!
//! By default the address of a request is its TCP peer's, and whatever the
//! visitor wrote in `X-Forwarded-For` is ignored (and replaced before the
//! request is forwarded). Behind a proxy that would make every visitor the
//! proxy: IP allow lists meaningless, one per-address rate and one
//! failed-key backoff for everybody, the proxy's address in every log line.
//! So an operator may name the proxies it trusts (`--trusted-proxy CIDR`).
//! A request whose peer is one of them is taken to come from the address
//! the proxy appended to `X-Forwarded-For`, and if that is a trusted proxy
//! too, from the one before it, and so on: the rightmost address that is
//! not a trusted proxy (as nginx's `real_ip_recursive`). Entries left of it
//! were written by whoever sent the request and prove nothing, so a visitor
//! cannot pick its own address by sending the header. An entry that is not
//! an address ends the walk at the hop that wrote it.
//!
//! That address is then the visitor's everywhere: tunnels' IP lists, the
//! per-address rate limit, the backoff of failed client handshakes, the
//! access log and the `X-Forwarded-For` the local service receives. It can
//! take the admin API's loopback rule away (a remote visitor coming through
//! a proxy on this host is not local) but never grant it: a request counts
//! as loopback only when its TCP peer is and it carries no
//! `X-Forwarded-For` from a trusted proxy (usable or not: `unix:`), since
//! every host inside a trusted range can claim any address.
//! `X-Forwarded-For` carries no port: the address has port 0 unless the
//! entry gave one (`203.0.113.9:41000`).
//!
//! Behind a TCP balancer with `--proxy-protocol`, the peer is already the
//! address its PROXY protocol header carried (`edge/proxy_protocol.rs`):
//! the walk starts there, and the gateway marks such a request forwarded,
//! so that it is never loopback either.
//!
//! A trusted proxy's `X-Forwarded-Proto` (`http` or `https`, its last
//! entry) is also taken as the scheme the visitor used, so that a service
//! behind a proxy terminating TLS hears `https`; the proxy must set it,
//! or a visitor's own claim passes through.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

use crate::edge::Peer;
use cryptun_proto::net::Cidr;

/// Most `X-Forwarded-For` entries looked at, from the right: a chain of
/// trusted proxies is a few hops, and a longer header is the sender's.
const MAX_HOPS: usize = 16;

/// Who sent a request, as far as the server can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Visitor {
    /// The address rules, limits and logs go by.
    pub(crate) addr: Peer,
    /// Whether a trusted proxy forwarded the request for someone (it sent
    /// `X-Forwarded-For`, whether or not an address in it could be used, or
    /// a PROXY protocol header).
    pub(crate) forwarded: bool,
    /// The scheme a trusted proxy said the visitor used.
    pub(crate) scheme: Option<&'static str>,
}

impl Visitor {
    /// Whether the request comes from this machine: its TCP peer is a
    /// loopback address and no proxy named another one.
    pub(crate) fn is_loopback(&self) -> bool {
        !self.forwarded && cryptun_proto::net::canonical(self.addr.ip()).is_loopback()
    }
}

/// Who sent a request arriving from `peer` with `headers`, trusting the
/// proxies in `trusted`; see the module's documentation.
pub(crate) fn visitor(trusted: &[Cidr], peer: Peer, headers: &HeaderMap) -> Visitor {
    let mut visitor = Visitor {
        addr: peer,
        forwarded: false,
        scheme: None,
    };
    if trusted.is_empty() || !is_trusted(trusted, peer.ip()) {
        return visitor;
    }
    visitor.scheme = forwarded_proto(headers);
    // Even if no entry is an address (`unknown`, `unix:`), the request is
    // someone else's: never this machine's own.
    visitor.forwarded = headers.contains_key("x-forwarded-for");
    // Repeated header lines form one list, in order (RFC 9110, 5.3).
    let entries = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .flat_map(|line| line.as_bytes().rsplit(|b| *b == b','));
    for entry in entries.take(MAX_HOPS) {
        let Some(addr) = parse_entry(entry) else {
            break;
        };
        visitor.addr = addr;
        if !is_trusted(trusted, addr.ip()) {
            break;
        }
    }
    visitor
}

fn is_trusted(trusted: &[Cidr], ip: IpAddr) -> bool {
    trusted.iter().any(|cidr| cidr.contains(ip))
}

/// The last entry of `X-Forwarded-Proto` (the nearest proxy's), if it is
/// `http` or `https`.
fn forwarded_proto(headers: &HeaderMap) -> Option<&'static str> {
    let last = headers.get_all("x-forwarded-proto").iter().next_back()?;
    let entry = last.as_bytes().rsplit(|b| *b == b',').next()?.trim_ascii();
    if entry.eq_ignore_ascii_case(b"https") {
        Some("https")
    } else if entry.eq_ignore_ascii_case(b"http") {
        Some("http")
    } else {
        None
    }
}

/// One `X-Forwarded-For` entry: an address, optionally with a port
/// (`192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:80`).
fn parse_entry(entry: &[u8]) -> Option<SocketAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, 0));
    }
    text.parse::<SocketAddr>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn trusted(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    fn from(peer: &str, xff: &[&str], proxies: &[&str]) -> String {
        let mut headers = HeaderMap::new();
        for line in xff {
            headers.append("x-forwarded-for", HeaderValue::from_str(line).unwrap());
        }
        visitor(&trusted(proxies), peer.parse().unwrap(), &headers)
            .addr
            .to_string()
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        assert_eq!(
            from("192.0.2.7:5000", &["203.0.113.9"], &[]),
            "192.0.2.7:5000"
        );
        // A peer that is not a trusted proxy: its header proves nothing.
        let proxies = ["10.0.0.0/8"];
        assert_eq!(
            from("192.0.2.7:5000", &["203.0.113.9"], &proxies),
            "192.0.2.7:5000"
        );
    }

    #[test]
    fn a_trusted_proxy_gives_the_address_it_appended() {
        let proxies = ["127.0.0.1"];
        assert_eq!(
            from("127.0.0.1:5000", &["203.0.113.9"], &proxies),
            "203.0.113.9:0"
        );
        // Whatever the visitor claimed before that stays unheeded.
        assert_eq!(
            from("127.0.0.1:5000", &["1.2.3.4, 203.0.113.9"], &proxies),
            "203.0.113.9:0"
        );
        // No header: the proxy itself.
        assert_eq!(from("127.0.0.1:5000", &[], &proxies), "127.0.0.1:5000");
    }

    #[test]
    fn a_chain_of_trusted_proxies_is_walked_to_the_first_untrusted_hop() {
        let proxies = ["127.0.0.1", "10.0.0.0/8"];
        let chain = ["6.6.6.6, 203.0.113.9", "10.1.2.3"];
        assert_eq!(from("127.0.0.1:5000", &chain, &proxies), "203.0.113.9:0");
        // All trusted: the leftmost (the first hop's view).
        assert_eq!(
            from("127.0.0.1:1", &["10.0.0.1,10.0.0.2"], &proxies),
            "10.0.0.1:0"
        );
        // Garbage ends the walk at the proxy that wrote it.
        assert_eq!(
            from("127.0.0.1:1", &["203.0.113.9, unknown, 10.0.0.2"], &proxies),
            "10.0.0.2:0"
        );
    }

    #[test]
    fn entries_may_carry_ports_and_ipv6() {
        let proxies = ["::1", "127.0.0.1"];
        assert_eq!(
            from("[::1]:80", &["[2001:db8::1]:41000"], &proxies),
            "[2001:db8::1]:41000"
        );
        assert_eq!(
            from("[::1]:80", &[" 2001:db8::2 "], &proxies),
            "[2001:db8::2]:0"
        );
        assert_eq!(
            from("127.0.0.1:80", &["203.0.113.9:8080"], &proxies),
            "203.0.113.9:8080"
        );
        // An IPv4-mapped peer counts as its IPv4 address.
        assert_eq!(
            from("[::ffff:127.0.0.1]:80", &["203.0.113.9"], &["127.0.0.1"]),
            "203.0.113.9:0"
        );
    }

    #[test]
    fn a_forwarded_address_is_never_loopback_and_the_proxy_names_the_scheme() {
        let proxies = trusted(&["127.0.0.1", "10.0.0.0/8"]);
        let mut headers = HeaderMap::new();
        let seen = visitor(&proxies, "127.0.0.1:1".parse().unwrap(), &headers);
        assert!(seen.is_loopback() && !seen.forwarded && seen.scheme.is_none());
        // A host inside a trusted range claims to be this machine.
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("127.0.0.1, 10.1.2.3"),
        );
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http, HTTPS"));
        let claimed = visitor(&proxies, "127.0.0.1:1".parse().unwrap(), &headers);
        assert_eq!(claimed.addr.ip().to_string(), "127.0.0.1");
        assert!(claimed.forwarded && !claimed.is_loopback());
        assert_eq!(claimed.scheme, Some("https"));
        // From anyone else the headers count for nothing.
        let stranger = visitor(&proxies, "192.0.2.1:1".parse().unwrap(), &headers);
        assert_eq!(stranger.scheme, None);
        assert!(!stranger.forwarded);
        headers.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        assert_eq!(
            visitor(&proxies, "127.0.0.1:1".parse().unwrap(), &headers).scheme,
            None
        );
        // A header with no usable address still makes the request someone
        // else's (a proxy behind a unix socket writes `unix:`).
        for unusable in ["unknown", "unix:", "", "203.0.113.9,", "fe80::1%eth0"] {
            headers.insert("x-forwarded-for", HeaderValue::from_static(unusable));
            let seen = visitor(&proxies, "127.0.0.1:1".parse().unwrap(), &headers);
            assert!(!seen.is_loopback(), "{unusable:?}");
        }
    }

    #[test]
    fn only_the_last_hops_are_looked_at() {
        let proxies = ["10.0.0.0/8"];
        let long: Vec<String> = (0..100).map(|i| format!("10.0.0.{}", i % 250)).collect();
        let header = format!("203.0.113.9, {}", long.join(", "));
        // Past MAX_HOPS trusted entries the walk stops on a trusted one.
        let got = from("10.9.9.9:1", &[&header], &proxies);
        assert!(got.starts_with("10.0.0."), "{got}");
    }
}
