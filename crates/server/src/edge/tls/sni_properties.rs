//! Property tests of the SNI path: the ClientHello through the server's
//! real TLS acceptor (over an in-memory duplex), the certificate the
//! development authority picks for the name asked for, and the gateway's
//! check of each request's Host against the SNI (`check_sni`).
//!
//! The ClientHellos are real ones, written by a rustls client, for names
//! of every shape a client may send: under the domain or not, in any case,
//! with a trailing dot, with labels of 63 bytes, punycode, IP literals,
//! none at all. Rewritten in the bytes, their SNI may also be what no
//! rustls client sends: empty, two trailing dots, UTF-8, a label too long,
//! two names. And mutated at random, they must still be answered or
//! closed at once, never panic. What is checked against a reference
//! written here (the rule the code means: names compared without case and
//! without one trailing dot; IP literals and invalid names are no SNI to
//! rustls, which refuses the latter):
//!
//! - rustls's verdict on the name and the SNI it reports to the gateway;
//! - the certificate presented: signed for that name if it is the domain
//!   or under it, else for the domain;
//! - `check_sni`: a request passes on a TLS connection exactly when its
//!   Host is the SNI, or there is no SNI and the Host is the server's own.
//!
//! `cargo test` runs proptest's default number of cases (fewer for the
//! full handshakes); a long run sets `PROPTEST_CASES`
//! (docs/SECURITY.md, "Property tests and fuzzing").

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, DnsName, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{Certs, dev_ca, provider, read_roots};
use crate::gateway::host::{self, Route};
use crate::gateway::https::check_sni;

/// How long the server may take to answer or close a connection whose
/// ClientHello it has whole (in debug, on a loaded machine).
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The two kinds of domain: `localhost` (whose certificate also covers the
/// loopback addresses) and any other.
const DOMAINS: [&str; 2] = ["localhost", "tunnels.example.com"];

/// A development authority for one domain, and what a client trusts.
struct Fixture {
    domain: &'static str,
    acceptor: TlsAcceptor,
    roots: Arc<RootCertStore>,
}

fn fixture(which: usize) -> &'static Fixture {
    static FIXTURES: [OnceLock<Fixture>; 2] = [OnceLock::new(), OnceLock::new()];
    FIXTURES[which].get_or_init(|| {
        let domain = DOMAINS[which];
        // The authority keeps its key in memory: its files can go at once.
        let dir = tempfile::tempdir().expect("temporary directory");
        let (certs, files) = Certs::dev(domain, dir.path()).expect("development authority");
        Fixture {
            domain,
            acceptor: certs.acceptor().expect("acceptor"),
            roots: Arc::new(read_roots(&files.ca).expect("ca.pem")),
        }
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

// ---- the reference ------------------------------------------------------------

/// A name without one trailing dot, lowercased: how names compare.
fn normal(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// What rustls makes of the bytes of a `host_name`: a DNS name, an IP
/// literal (taken as no SNI), or a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Asked {
    Name(String),
    Ip,
    Refused,
}

fn asked(raw: &[u8]) -> Asked {
    let Ok(text) = std::str::from_utf8(raw) else {
        return Asked::Refused;
    };
    if text.parse::<IpAddr>().is_ok() {
        Asked::Ip
    } else if DnsName::try_from(text).is_ok() {
        Asked::Name(text.to_ascii_lowercase())
    } else {
        Asked::Refused
    }
}

/// The name the presented certificate must be for.
fn certificate_for(domain: &str, sni: Option<&str>) -> String {
    match sni.map(normal) {
        Some(name) if name == domain || name.ends_with(&format!(".{domain}")) => name,
        _ => domain.to_owned(),
    }
}

/// Whether a request for `host` (as `host::name` gives it) passes on a TLS
/// connection that asked for `sni`.
fn passes(sni: Option<&str>, host: &str, domain: &str) -> bool {
    match sni {
        Some(sni) => normal(sni) == host,
        None => host::route_name(host, domain) == Route::Server,
    }
}

/// Whether `cert` is valid for `name`, as a client trusting `roots` sees it.
fn valid_for(roots: &Arc<RootCertStore>, cert: &CertificateDer<'_>, name: &str) -> bool {
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::clone(roots), provider())
            .build()
            .expect("verifier");
    let Ok(name) = ServerName::try_from(name.to_owned()) else {
        return false;
    };
    verifier
        .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
        .is_ok()
}

// ---- names ----------------------------------------------------------------------

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9]([a-z0-9-]{0,12}[a-z0-9])?",
        1 => "tunnel-[a-z0-9]{6}",
        1 => "xn--[a-z0-9]{2,12}",
        1 => "[a-z]{63}",
        1 => "[a-z]_[a-z]{1,4}",
    ]
}

/// Flips the case of letters where `flips` says.
fn recase(name: &str, flips: &[bool]) -> String {
    name.chars()
        .zip(flips.iter().cycle())
        .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
        .collect()
}

/// Names a rustls client accepts: under the domain, near it, elsewhere,
/// loopback and other IP literals; in any case, with or without a
/// trailing dot.
fn client_name(domain: &'static str) -> impl Strategy<Value = String> {
    let dns = prop_oneof![
        3 => prop::collection::vec(label(), 1..4).prop_map(move |l| format!("{}.{domain}", l.join("."))),
        1 => Just(domain.to_owned()),
        1 => label().prop_map(move |l| format!("{l}{domain}")),
        1 => prop::collection::vec(label(), 1..3).prop_map(|l| format!("{}.example.org", l.join("."))),
        1 => prop::collection::vec("[a-z]{63}", 3..4).prop_map(move |l| format!("{}.{domain}", l.join("."))),
    ];
    let dns = (
        dns,
        prop::collection::vec(any::<bool>(), 1..8),
        any::<bool>(),
    )
        .prop_map(|(name, flips, dot)| {
            let name = recase(&name, &flips);
            if dot { format!("{name}.") } else { name }
        });
    prop_oneof![
        6 => dns,
        1 => prop::sample::select(vec!["127.0.0.1", "::1", "127.0.0.2", "10.0.0.1", "2001:db8::1"])
            .prop_map(str::to_owned),
    ]
    .prop_filter("a name a client can ask for", |n| {
        ServerName::try_from(n.as_str()).is_ok()
    })
}

/// The bytes of a `host_name` no rustls client writes, beside those it does.
fn raw_name(domain: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let odd = prop::sample::select(vec![
        "",
        ".",
        "a..localhost",
        "a.localhost..",
        " a.localhost",
        "a.localhost\0",
        "-a.localhost",
        "a-.localhost",
        "bücher.localhost",
        "xn--bcher-kva.localhost",
        "1.2.3.4",
        "0x7f.1",
        "[::1]",
        "::ffff:127.0.0.1",
        "a.b.c.d.e.f.g.h.1",
        "A.LOCALHOST.",
        "LOCALHOST",
        "evil-localhost",
        "a.tunnels.example.com.",
        "TUNNELS.EXAMPLE.COM",
    ])
    .prop_map(|s| s.as_bytes().to_vec());
    prop_oneof![
        3 => client_name(domain).prop_map(String::into_bytes),
        2 => odd,
        1 => "[a-z]{64}\\.localhost".prop_map(String::into_bytes),
        1 => "([a-z]{60}\\.){4}localhost".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..24),
    ]
}

// ---- handshakes over a duplex -------------------------------------------------------

/// A full handshake with a rustls client trusting the authority, asking for
/// `name`: whether the client accepted the certificate, and the SNI the
/// server reports (if its side completed).
fn handshake(fx: &'static Fixture, name: &str) -> (bool, Result<Option<String>, String>) {
    let name = ServerName::try_from(name.to_owned()).expect("a client's name");
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(Arc::clone(&fx.roots))
        .with_no_client_auth();
    runtime().block_on(async move {
        let (client_io, server_io) = tokio::io::duplex(64 << 10);
        let acceptor = fx.acceptor.clone();
        let server = tokio::spawn(async move {
            let stream = acceptor
                .accept(server_io)
                .await
                .map_err(|e| e.to_string())?;
            Ok(stream.get_ref().1.server_name().map(str::to_owned))
        });
        let both = async {
            let client = TlsConnector::from(Arc::new(config))
                .connect(name, client_io)
                .await;
            // The client's stream stays open until the server is done.
            let server = server.await.expect("the server's task panicked");
            (client.is_ok(), server)
        };
        tokio::time::timeout(ANSWER_WITHIN, both)
            .await
            .expect("the handshake took too long")
    })
}

/// A real ClientHello for `placeholder.invalid`, TLS 1.2 only (so that the
/// certificate the server answers with is in the clear) or any version.
fn client_hello(tls12_only: bool, roots: &Arc<RootCertStore>) -> Vec<u8> {
    let builder = ClientConfig::builder_with_provider(provider());
    let builder = if tls12_only {
        builder.with_protocol_versions(&[&rustls::version::TLS12])
    } else {
        builder.with_safe_default_protocol_versions()
    };
    let config = builder
        .expect("versions")
        .with_root_certificates(Arc::clone(roots))
        .with_no_client_auth();
    let name = ServerName::try_from("placeholder.invalid").expect("a name");
    let mut conn = ClientConnection::new(Arc::new(config), name).expect("client");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("ClientHello");
    hello
}

/// Reads a length-prefixed field of `n` bytes at `at`.
fn field(bytes: &[u8], at: usize, n: usize) -> usize {
    bytes[at..at + n]
        .iter()
        .fold(0, |len, b| len << 8 | usize::from(*b))
}

/// `hello` (one record holding one ClientHello, as rustls writes it) with
/// its SNI extension holding `names` instead (none: no extension).
fn with_sni(hello: &[u8], names: &[&[u8]]) -> Vec<u8> {
    // Record header (5), handshake header (4), version (2), random (32).
    let mut at = 5 + 4 + 2 + 32;
    at += 1 + field(hello, at, 1); // session id
    at += 2 + field(hello, at, 2); // cipher suites
    at += 1 + field(hello, at, 1); // compression methods
    let start = at;
    let end = start + 2 + field(hello, start, 2);
    let mut extensions = Vec::new();
    let mut i = start + 2;
    while i < end {
        let (kind, len) = (field(hello, i, 2), field(hello, i + 2, 2));
        if kind != 0 {
            extensions.extend_from_slice(&hello[i..i + 4 + len]);
        }
        i += 4 + len;
    }
    if !names.is_empty() {
        let mut list = Vec::new();
        for name in names {
            list.push(0); // host_name
            list.extend(u16::try_from(name.len()).expect("short").to_be_bytes());
            list.extend_from_slice(name);
        }
        let mut sni = 0u16.to_be_bytes().to_vec();
        sni.extend(u16::try_from(list.len() + 2).expect("short").to_be_bytes());
        sni.extend(u16::try_from(list.len()).expect("short").to_be_bytes());
        sni.extend(list);
        extensions.splice(0..0, sni);
    }
    let mut body = hello[9..start].to_vec();
    body.extend(
        u16::try_from(extensions.len())
            .expect("short")
            .to_be_bytes(),
    );
    body.extend(extensions);
    let mut out = vec![hello[0], hello[1], hello[2]];
    out.extend(u16::try_from(body.len() + 4).expect("short").to_be_bytes());
    out.push(1); // client_hello
    out.extend(&u32::try_from(body.len()).expect("short").to_be_bytes()[1..]);
    out.extend(body);
    out
}

/// What the server sent in answer to a ClientHello.
#[derive(Debug, Default)]
struct Answer {
    /// A certificate message's leaf, in the clear (TLS 1.2).
    leaf: Option<CertificateDer<'static>>,
    /// An alert record.
    alert: bool,
    /// A ServerHello.
    hello: bool,
}

/// Reads the server's records (TLS 1.2's first flight is in the clear).
fn answer(bytes: &[u8]) -> Answer {
    let mut answer = Answer::default();
    let mut handshake = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let len = field(bytes, at + 3, 2);
        let Some(payload) = bytes.get(at + 5..at + 5 + len) else {
            break;
        };
        match bytes[at] {
            21 => answer.alert = true,
            22 => handshake.extend_from_slice(payload),
            _ => {}
        }
        at += 5 + len;
    }
    let mut at = 0;
    while at + 4 <= handshake.len() {
        let len = field(&handshake, at + 1, 3);
        let Some(body) = handshake.get(at + 4..at + 4 + len) else {
            break;
        };
        match handshake[at] {
            2 => answer.hello = true,
            // certificate_list's length (3), then the leaf's (3).
            11 if body.len() > 6 => {
                let leaf = field(body, 3, 3);
                answer.leaf = body
                    .get(6..6 + leaf)
                    .map(|der| CertificateDer::from(der.to_vec()));
            }
            _ => {}
        }
        at += 4 + len;
    }
    answer
}

/// Sends `hello` to the server's acceptor and closes, then reads all it
/// answers; the server must answer and close within [`ANSWER_WITHIN`], and
/// its task must not panic.
fn send_hello(fx: &'static Fixture, hello: Vec<u8>) -> Vec<u8> {
    runtime().block_on(async move {
        let (mut client_io, server_io) = tokio::io::duplex(64 << 10);
        let acceptor = fx.acceptor.clone();
        let server = tokio::spawn(async move { acceptor.accept(server_io).await.is_ok() });
        let exchange = async {
            // The server may have closed already: the answer says so.
            let _ = client_io.write_all(&hello).await;
            let _ = client_io.shutdown().await;
            let mut answer = Vec::new();
            let _ = client_io.read_to_end(&mut answer).await;
            let accepted = server.await.expect("the server's task panicked");
            assert!(!accepted, "a handshake completed without a client");
            answer
        };
        tokio::time::timeout(ANSWER_WITHIN, exchange)
            .await
            .expect("the server neither answered nor closed in time")
    })
}

// ---- properties ---------------------------------------------------------------------

proptest! {
    /// `check_sni` on arbitrary names: a request passes exactly when its
    /// Host is the SNI (without case, without one trailing dot), or there
    /// is no SNI and the Host is the server's own; whatever is refused is
    /// refused naming both.
    #[test]
    fn check_sni_is_the_reference(
        host in "([a-z0-9-]{1,8}\\.){0,2}(localhost|example\\.org|[0-9]{1,3})",
        sni in prop::option::of(prop_oneof![
            "[a-zA-Z0-9.-]{0,12}(\\.localhost)?\\.{0,2}",
            ".{0,12}",
            Just(String::new()),
        ]),
        // The SNI is the Host's, in another spelling.
        same in prop::option::of((prop::collection::vec(any::<bool>(), 1..8), 0..3usize)),
    ) {
        let sni = match (same, sni) {
            (Some((flips, dots)), Some(_)) => Some(recase(&host, &flips) + &".".repeat(dots)),
            (_, sni) => sni,
        };
        let route = host::route_name(&host, "localhost");
        let got = check_sni(sni.as_deref(), &host, &route);
        prop_assert_eq!(got.is_ok(), passes(sni.as_deref(), &host, "localhost"), "{:?} {:?}", sni, host);
        if let Err(crate::error::GatewayError::Misdirected { sni: s, host: h }) = got {
            prop_assert_eq!((s, h), (sni, host));
        }
    }

    /// The development authority's choice of name on arbitrary SNIs is the
    /// reference's.
    #[test]
    fn the_certificate_name_is_the_reference(
        which in 0..DOMAINS.len(),
        sni in prop::option::of(prop_oneof![
            "[a-zA-Z0-9._-]{0,12}\\.?(localhost|tunnels\\.example\\.com)?\\.{0,2}",
            ".{0,16}",
        ]),
    ) {
        let domain = DOMAINS[which];
        prop_assert_eq!(dev_ca::subject(domain, sni.as_deref()), certificate_for(domain, sni.as_deref()));
    }
}

proptest! {
    /// SNI values rewritten in a real (TLS 1.2) ClientHello, the server's
    /// acceptor answering: a name rustls refuses (or two names) is an
    /// alert and no certificate; any other gets one, signed for the name
    /// the reference says, and for no other.
    #[test]
    fn the_certificate_presented_is_for_the_name_asked(
        (which, names) in (0..DOMAINS.len()).prop_flat_map(|w| {
            (Just(w), prop::collection::vec(raw_name(DOMAINS[w]), 0..3))
        }),
    ) {
        let fx = fixture(which);
        let names: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
        let names = &names[..names.len().min(2)];
        let hello = with_sni(&client_hello(true, &fx.roots), names);
        let answer = answer(&send_hello(fx, hello));
        let asked = match names {
            [] => Asked::Ip,
            [one] => asked(one),
            _ => Asked::Refused,
        };
        match asked {
            Asked::Refused => {
                prop_assert!(answer.alert && answer.leaf.is_none(), "{:?}: {:?}", names, answer);
            }
            Asked::Ip | Asked::Name(_) => {
                let sni = match &asked { Asked::Name(n) => Some(n.as_str()), _ => None };
                let want = certificate_for(fx.domain, sni);
                let leaf = answer.leaf.as_ref();
                prop_assert!(leaf.is_some(), "{:?}: no certificate: {:?}", names, answer);
                let leaf = leaf.expect("checked");
                prop_assert!(valid_for(&fx.roots, leaf, &want), "{:?}: not for {}", names, want);
                if want != fx.domain {
                    prop_assert!(!valid_for(&fx.roots, leaf, fx.domain), "{:?}: for the domain too", names);
                }
            }
        }
    }

    /// Real ClientHellos (either version) cut, with bytes flipped,
    /// inserted or removed: the server answers or closes within the bound,
    /// and never panics.
    #[test]
    fn mutated_client_hellos_are_answered_or_closed(
        tls12 in any::<bool>(),
        name in raw_name("localhost"),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..6),
    ) {
        let fx = fixture(0);
        let mut hello = with_sni(&client_hello(tls12, &fx.roots), &[&name]);
        for (at, byte, how) in edits {
            if hello.is_empty() {
                break;
            }
            let i = at.index(hello.len());
            match how {
                0 => hello[i] = byte,
                1 => hello.insert(i, byte),
                2 => { hello.remove(i); }
                _ => hello.truncate(i),
            }
        }
        send_hello(fx, hello);
    }
}

proptest! {
    // A full handshake per case: a quarter of the cases of the others.
    #![proptest_config(ProptestConfig {
        cases: ProptestConfig::default().cases.div_ceil(4),
        ..ProptestConfig::default()
    })]

    /// Full handshakes with a rustls client for names of every shape:
    /// the client accepts the certificate exactly when the reference says
    /// it was signed for its name (or, for loopback addresses, the
    /// `localhost` domain's); the server reports the SNI lowercased and
    /// without the trailing dot the client drops, none for an IP; and a
    /// request on the connection passes `check_sni` exactly when its Host
    /// (in any spelling: case, trailing dot, port) is that name, or
    /// there is no SNI and the Host is the server's own.
    #[test]
    fn handshakes_and_hosts_agree_with_the_reference(
        (which, name) in (0..DOMAINS.len()).prop_flat_map(|w| (Just(w), client_name(DOMAINS[w]))),
        host_flips in prop::collection::vec(any::<bool>(), 1..8),
        host_dot in any::<bool>(),
        host_port in prop::option::of(any::<u16>()),
        other_host in prop::option::of(prop::sample::select(vec![
            "localhost", "127.0.0.1", "[::1]", "a.localhost", "tunnels.example.com",
            "b.tunnels.example.com", "example.org",
        ])),
    ) {
        let fx = fixture(which);
        let (client_ok, server) = handshake(fx, &name);
        let ip = name.parse::<IpAddr>().ok();
        let want_ok = match ip {
            Some(ip) => fx.domain == "localhost" && (ip.to_string() == "127.0.0.1" || ip.to_string() == "::1"),
            None => certificate_for(fx.domain, Some(&name)) == normal(&name),
        };
        prop_assert_eq!(client_ok, want_ok, "{} on {}", name, fx.domain);
        if !client_ok {
            prop_assert!(server.is_err(), "{}: the server completed a refused handshake", name);
            return Ok(());
        }
        let sni = server.map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
        let want_sni = ip.is_none().then(|| normal(&name));
        prop_assert_eq!(&sni, &want_sni, "{}", name);
        // The Host of a request on this connection.
        let mut host_text = match other_host {
            Some(other) => other.to_owned(),
            None if ip.is_some_and(|ip| ip.is_ipv6()) => format!("[{name}]"),
            None => recase(&name, &host_flips),
        };
        if host_dot && ip.is_none() && !host_text.ends_with('.') {
            host_text.push('.');
        }
        if let Some(port) = host_port {
            host_text.push_str(&format!(":{port}"));
        }
        let req = http::Request::builder().uri("/").header("host", &host_text).body(());
        let Ok(req) = req else { return Ok(()) };
        let Ok(host) = host::name(&req) else { return Ok(()) };
        let route = host::route_name(&host, fx.domain);
        prop_assert_eq!(
            check_sni(sni.as_deref(), &host, &route).is_ok(),
            passes(sni.as_deref(), &host, fx.domain),
            "SNI {:?}, Host {:?}", sni, host_text
        );
    }
}
