//! Property tests of what the server reads from visitors and operators
//! before anything else looks at it: Host headers and request targets
//! (routing), rates from the command line, and the request-framing scan
//! below hyper. Arbitrary input never panics; each property says what
//! holds of what is accepted.
//!
//! `cargo test` runs proptest's default number of cases; a long run sets
//! `PROPTEST_CASES` (see docs/SECURITY.md, "Property tests and fuzzing").

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use cryptun_server::edge::framing::{Guarded, Verdict, Verdicts};
use cryptun_server::gateway::host::{self, Route};
use cryptun_server::policy::Rate;
use http::{HeaderValue, Request, Uri, Version};
use proptest::prelude::*;
use tokio::io::{AsyncRead, ReadBuf};

// ---- Host routing ---------------------------------------------------------

/// Host values: mostly of a host's shape, sometimes anything a header
/// value may hold.
fn host_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => "[a-zA-Z0-9._-]{0,20}(\\.localhost)?\\.?(:[0-9]{0,6})?".prop_map(String::into_bytes),
        1 => "\\[[0-9a-fA-F:.]{0,20}\\](:[0-9]{0,6})?[ ]?".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..24),
    ]
}

/// Request targets: origin form, absolute form with a host, or junk.
fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        "/[a-z/?=&]{0,10}",
        "(http|https)://[a-zA-Z0-9._\\[\\]:-]{0,20}(\\.localhost)?(:[0-9]{1,5})?/[a-z]{0,5}",
        "[ -~]{0,24}",
        Just("*".to_owned()),
    ]
}

fn version() -> impl Strategy<Value = Version> {
    prop::sample::select(vec![Version::HTTP_10, Version::HTTP_11, Version::HTTP_2])
}

/// Whether `name` is what [`host::name`] may give: lowercase, no port, no
/// trailing dot; a bracketed IPv6 address or dot-separated labels of
/// letters, digits, `-` and `_`.
fn is_host_name(name: &str) -> bool {
    if let Some(addr) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return addr.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}

proptest! {
    /// Any Host values (none, one, two) and any target: never a panic;
    /// a name is a lowercase host name; a tunnel label is what precedes
    /// `.localhost` in that name, and itself a lowercase DNS-ish name.
    #[test]
    fn hosts_route_to_lowercase_labels(
        hosts in prop::collection::vec(host_value(), 0..3),
        target in target(),
        version in version(),
    ) {
        let Ok(uri) = target.parse::<Uri>() else { return Ok(()) };
        let mut req = Request::builder().uri(uri).version(version);
        for value in &hosts {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                req = req.header(http::header::HOST, value);
            }
        }
        let Ok(req) = req.body(()) else { return Ok(()) };
        let name = host::name(&req);
        let route = host::route(&req, "localhost");
        match (&name, &route) {
            (Ok(name), Ok(route)) => {
                prop_assert!(is_host_name(name), "{:?}", name);
                prop_assert_eq!(route, &host::route_name(name, "localhost"));
                if let Route::Tunnel(label) = route {
                    prop_assert!(is_host_name(label), "{:?}", label);
                    prop_assert_eq!(format!("{label}.localhost"), name.clone());
                }
            }
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            _ => prop_assert!(false, "name {:?} but route {:?}", name, route),
        }
        if req.headers().get_all(http::header::HOST).iter().count() > 1 {
            prop_assert!(name.is_err(), "two Host headers accepted");
        }
    }

    /// A tunnel's host, in any case, with or without a trailing dot and a
    /// port, routes to its label lowercased; an absolute target's host
    /// wins over the Host header.
    #[test]
    fn tunnel_hosts_route_in_every_spelling(
        label in "[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?",
        domain in prop::sample::select(vec!["localhost", "LocalHost", "LOCALHOST"]),
        dot in any::<bool>(),
        port in prop::option::of(any::<u16>()),
        other in "[a-z]{1,8}",
        absolute in any::<bool>(),
    ) {
        let mut host = format!("{label}.{domain}");
        if dot {
            host.push('.');
        }
        if let Some(port) = port {
            host.push_str(&format!(":{port}"));
        }
        let req = if absolute {
            Request::builder()
                .uri(format!("http://{host}/x"))
                .header("host", format!("{other}.localhost"))
                .body(())
        } else {
            Request::builder().uri("/x").header("host", &host).body(())
        };
        let Ok(req) = req else { return Ok(()) };
        prop_assert_eq!(
            host::route(&req, "localhost"),
            Ok(Route::Tunnel(label.to_ascii_lowercase()))
        );
    }
}

// ---- rates ---------------------------------------------------------------

proptest! {
    /// Any text: never a panic; what parses prints as text that parses back
    /// to the same rate.
    #[test]
    fn rates_parse_and_print_back(
        text in prop_oneof![
            "[0-9]{0,8}/[smhd]?(:[0-9]{0,8})?",
            "[0-9/:smh +-]{0,12}",
            ".{0,16}",
        ],
    ) {
        if let Ok(rate) = text.parse::<Rate>() {
            let shown = rate.to_string();
            prop_assert_eq!(shown.parse::<Rate>(), Ok(rate), "{} -> {}", text, shown);
        }
    }

    /// Every rate in range parses, with its burst defaulting to its count.
    #[test]
    fn rates_in_range_parse(
        count in 1u32..=1_000_000,
        unit in prop::sample::select(vec!["s", "m", "h"]),
        burst in prop::option::of(1u32..=1_000_000),
    ) {
        let text = match burst {
            Some(b) => format!("{count}/{unit}:{b}"),
            None => format!("{count}/{unit}"),
        };
        let rate = text.parse::<Rate>();
        prop_assert!(rate.is_ok(), "{} refused", text);
        let shown = rate.map(|r| r.to_string()).unwrap_or_default();
        prop_assert_eq!(shown, format!("{count}/{unit}:{}", burst.unwrap_or(count)));
    }
}

// ---- the framing scan ---------------------------------------------------

/// A connection that hands over its bytes in the given pieces, one per
/// read.
struct Pieces(std::collections::VecDeque<Vec<u8>>);

impl AsyncRead for Pieces {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(mut piece) = this.0.pop_front() {
            let n = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..n]);
            if n < piece.len() {
                this.0.push_front(piece.split_off(n));
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Reads `bytes` through [`Guarded`], cut at `cuts`; returns what came
/// out and the first verdicts (past the last one, `next` keeps answering
/// the same refusal, so a fixed number compares whole sequences).
fn scan(bytes: &[u8], cuts: &[prop::sample::Index], max_head: usize) -> (Vec<u8>, Vec<Verdict>) {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.dedup();
    let pieces = at.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect();
    let verdicts = Arc::new(Verdicts::default());
    let mut guarded = Guarded::new(Pieces(pieces), verdicts.clone(), max_head);
    let mut out = Vec::new();
    let mut cx = Context::from_waker(Waker::noop());
    let mut chunk = [0u8; 512];
    loop {
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut guarded).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => break,
            Poll::Ready(Ok(())) => out.extend_from_slice(buf.filled()),
            Poll::Ready(Err(_)) | Poll::Pending => break,
        }
    }
    let verdicts = (0..70).map(|_| verdicts.next()).collect();
    (out, verdicts)
}

/// Request heads near the cases the scan decides: Content-Length and
/// Transfer-Encoding lines, alone, repeated or together.
fn head() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        "Content-Length: ?[0-9]{1,3}",
        "Content-Length: [0-9 ,+-]{0,4}",
        "Transfer-Encoding: (chunked|gzip|gzip, chunked|chunked, chunked| chunked )",
        "[Hh]ost: [a-z.]{1,10}",
        "X-[A-Za-z]{1,6}: [ -~]{0,10}",
        "[ -~]{0,16}",
    ];
    (
        prop::sample::select(vec!["GET", "POST", "CONNECT", "PUT"]),
        prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0"]),
        prop::collection::vec(line, 0..4),
        prop::sample::select(vec!["\r\n", "\n"]),
        prop::collection::vec(any::<u8>(), 0..12),
    )
        .prop_map(|(method, version, lines, eol, body)| {
            let mut head = format!("{method} / {version}{eol}");
            for line in lines {
                head.push_str(&line);
                head.push_str(eol);
            }
            head.push_str(eol);
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(&body);
            bytes
        })
}

proptest! {
    /// Arbitrary bytes and request-like heads, cut into arbitrary reads:
    /// never a panic, every byte passes through unchanged, and the verdicts
    /// do not depend on where the reads were cut (the scan judges the
    /// byte stream, not how it arrived).
    #[test]
    fn framing_verdicts_do_not_depend_on_reads(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            prop::collection::vec(head(), 1..4).prop_map(|h| h.concat()),
        ],
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        max_head in prop::sample::select(vec![16usize, 64, 1024]),
    ) {
        let (whole_out, whole) = scan(&bytes, &[], max_head);
        let (cut_out, cut) = scan(&bytes, &cuts, max_head);
        prop_assert_eq!(&whole_out, &bytes);
        prop_assert_eq!(&cut_out, &bytes);
        prop_assert_eq!(whole, cut);
    }

    /// Pipelined requests with exact Content-Length bodies (any bytes in
    /// them, heads included) are each judged Ok, in order.
    #[test]
    fn exact_bodies_are_skipped(
        bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut bytes = Vec::new();
        for body in &bodies {
            bytes.extend_from_slice(
                format!("POST /u HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: {}\r\n\r\n", body.len())
                    .as_bytes(),
            );
            bytes.extend_from_slice(body);
        }
        let (_, verdicts) = scan(&bytes, &cuts, 1024);
        prop_assert!(verdicts[..bodies.len()].iter().all(|v| *v == Verdict::Ok), "{:?}", &verdicts[..bodies.len()]);
    }
}
