//! Property tests of the PROXY protocol decoder (`sniff`, `parse`,
//! `read_header`): headers written by a reference encoder (below, from the
//! HAProxy spec) read back as what they carry, to their exact length; any
//! prefix of a header is "need more", never a wrong address; arbitrary and
//! mutated bytes never panic, and the verdict on a connection's first bytes
//! does not depend on how they arrived (every prefix agrees with the whole).
//!
//! Inside the crate because the decoder is the edge's own. `cargo test`
//! runs proptest's default number of cases; a long run sets
//! `PROPTEST_CASES` (docs/SECURITY.md, "Property tests and fuzzing").

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

// ---- a reference encoder ---------------------------------------------------

/// A header as a proxy would write it.
#[derive(Debug, Clone)]
enum Header {
    /// v1 `TCP4`/`TCP6` (both addresses of one family).
    V1 { src: SocketAddr, dst: SocketAddr },
    /// v1 `UNKNOWN`, with whatever the proxy puts after it on the line.
    V1Unknown(String),
    /// v2: `local` or not, the family byte's address family (0 unspec,
    /// 1 INET, 2 INET6, 3 UNIX) and transport (0..=2), the address block
    /// (of the family's size) and TLVs (opaque bytes here, as to us).
    V2 {
        local: bool,
        family: u8,
        transport: u8,
        addresses: Vec<u8>,
        tlvs: Vec<u8>,
    },
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        match self {
            Header::V1 { src, dst } => {
                let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
                let (s, d) = (src.ip(), dst.ip());
                let (sp, dp) = (src.port(), dst.port());
                format!("PROXY {proto} {s} {d} {sp} {dp}\r\n").into_bytes()
            }
            Header::V1Unknown(rest) => format!("PROXY UNKNOWN{rest}\r\n").into_bytes(),
            Header::V2 {
                local,
                family,
                transport,
                addresses,
                tlvs,
            } => {
                let mut h = V2_SIGNATURE.to_vec();
                h.push(0x20 | u8::from(!local));
                h.push(family << 4 | transport);
                let len = u16::try_from(addresses.len() + tlvs.len()).expect("a short header");
                h.extend(len.to_be_bytes());
                h.extend(addresses);
                h.extend(tlvs);
                h
            }
        }
    }

    /// What the server must take from it.
    fn carried(&self) -> Carried {
        match self {
            Header::V1 { src, .. } => Carried::Visitor(*src),
            Header::V1Unknown(_) => Carried::Proxy,
            Header::V2 { local: true, .. } => Carried::Proxy,
            Header::V2 {
                family, addresses, ..
            } => match family {
                1 => {
                    let ip: [u8; 4] = addresses[..4].try_into().expect("4 bytes");
                    let port = u16::from_be_bytes([addresses[8], addresses[9]]);
                    Carried::Visitor((Ipv4Addr::from(ip), port).into())
                }
                2 => {
                    let ip: [u8; 16] = addresses[..16].try_into().expect("16 bytes");
                    let port = u16::from_be_bytes([addresses[32], addresses[33]]);
                    Carried::Visitor((Ipv6Addr::from(ip), port).into())
                }
                _ => Carried::Proxy,
            },
        }
    }
}

fn v4_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    (
        any::<[u8; 4]>(),
        any::<u16>(),
        any::<[u8; 4]>(),
        any::<u16>(),
    )
        .prop_map(|(s, sp, d, dp)| {
            let s = SocketAddr::new(IpAddr::from(s), sp);
            (s, SocketAddr::new(IpAddr::from(d), dp))
        })
}

fn v6_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    let ip = prop_oneof![
        any::<[u8; 16]>().prop_map(Ipv6Addr::from),
        // Mapped and compressible ones print in their short forms.
        any::<[u8; 4]>().prop_map(|v4| Ipv4Addr::from(v4).to_ipv6_mapped()),
        (any::<u16>(), any::<u16>()).prop_map(|(a, b)| Ipv6Addr::new(a, 0, 0, 0, 0, 0, 0, b)),
    ];
    (ip.clone(), any::<u16>(), ip, any::<u16>())
        .prop_map(|(s, sp, d, dp)| ((s, sp).into(), (d, dp).into()))
}

/// Headers of every kind a proxy may send.
fn header() -> impl Strategy<Value = Header> {
    let v2 = (
        any::<bool>(),
        0u8..=3,
        0u8..=2,
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_flat_map(|(local, family, transport, tlvs)| {
            let size = [0usize, 12, 36, 216][usize::from(family)];
            prop::collection::vec(any::<u8>(), size).prop_map(move |addresses| Header::V2 {
                local,
                family,
                transport,
                addresses,
                tlvs: tlvs.clone(),
            })
        });
    prop_oneof![
        v4_pair().prop_map(|(src, dst)| Header::V1 { src, dst }),
        v6_pair().prop_map(|(src, dst)| Header::V1 { src, dst }),
        prop_oneof![Just(String::new()), "( [!-~]{1,8}){1,9}", " [ -~]{0,80}"]
            .prop_map(Header::V1Unknown),
        v2,
    ]
}

// ---- verdicts ---------------------------------------------------------------

/// `Parsed`, comparable: the refusal's kind is not part of the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Header(usize, Carried),
    Incomplete,
    Invalid,
}

fn verdict(bytes: &[u8]) -> Verdict {
    match parse(bytes) {
        Parsed::Header(len, carried) => Verdict::Header(len, carried),
        Parsed::Incomplete => Verdict::Incomplete,
        Parsed::Invalid(_) => Verdict::Invalid,
    }
}

/// What `sniff` must say of `bytes`, from the two signatures alone.
fn sniffed(bytes: &[u8]) -> Sniffed {
    if bytes.starts_with(V1_SIGNATURE) {
        Sniffed::V1
    } else if bytes.starts_with(V2_SIGNATURE) {
        Sniffed::V2
    } else if V1_SIGNATURE.starts_with(bytes) || V2_SIGNATURE.starts_with(bytes) {
        Sniffed::Undecided
    } else {
        Sniffed::Other
    }
}

/// A connection's first bytes: noise, noise after a signature, and valid
/// headers cut, with bytes flipped, inserted or removed.
fn first_bytes() -> impl Strategy<Value = Vec<u8>> {
    let mutated = (
        header(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 0..4),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(h, edits, tail)| {
            let mut bytes = h.encode();
            for (at, byte, how) in edits {
                let i = at.index(bytes.len());
                match how {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ => {
                        bytes.remove(i);
                    }
                }
            }
            bytes.extend(tail);
            bytes
        });
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        (
            prop::sample::select(vec![
                V1_SIGNATURE,
                V2_SIGNATURE,
                b"PROXY TCP4 ",
                b"PROXY TCP6 "
            ]),
            prop::collection::vec(any::<u8>(), 0..160),
        )
            .prop_map(|(sig, rest)| [sig, &rest].concat()),
        (
            "PROXY (TCP4|TCP6|UNKNOWN|TCP) [0-9a-f:. ]{0,60}(\r\n|\n|\r| \n)?",
            prop::collection::vec(any::<u8>(), 0..8),
        )
            .prop_map(|(line, rest)| [line.as_bytes(), &rest].concat()),
        mutated,
    ]
}

proptest! {
    /// Every header the reference writes reads back as what it carries, to
    /// its exact last byte, whatever follows it (a request, a ClientHello,
    /// another header).
    #[test]
    fn headers_read_back_to_their_last_byte(
        h in header(),
        after in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let header = h.encode();
        let bytes = [header.as_slice(), &after].concat();
        prop_assert_eq!(verdict(&bytes), Verdict::Header(header.len(), h.carried()), "{:?}", h);
    }

    /// Every prefix of a header is "need more", never a refusal and never
    /// an address.
    #[test]
    fn a_header_cut_short_needs_more(h in header(), cut in any::<prop::sample::Index>()) {
        let header = h.encode();
        let cut = cut.index(header.len());
        prop_assert_eq!(verdict(&header[..cut]), Verdict::Incomplete, "{:?} cut at {}", h, cut);
    }

    /// Any first bytes: `sniff` is the reference's reading of the two
    /// signatures; and the verdict on each prefix agrees with the verdict
    /// on the whole, so how the bytes are split into reads changes nothing:
    /// a header found is found at the same length with the same address, a
    /// refusal is never "unrefused" by more bytes, and "need more" stays
    /// so until the verdict. (`read_header` subtracts the bytes it took
    /// from the header's length, so this also keeps it from underflowing.)
    #[test]
    fn the_verdict_does_not_depend_on_reads(bytes in first_bytes()) {
        prop_assert_eq!(sniff(&bytes), sniffed(&bytes));
        let whole = verdict(&bytes);
        if let Verdict::Header(len, _) = whole {
            prop_assert!(len <= bytes.len());
        }
        for k in 0..bytes.len() {
            let part = verdict(&bytes[..k]);
            let agrees = match (whole, part) {
                (Verdict::Header(len, _), part) if k < len => part == Verdict::Incomplete,
                (Verdict::Header(..), part) => part == whole,
                (Verdict::Invalid, part) => !matches!(part, Verdict::Header(..)),
                (Verdict::Incomplete, part) => part == Verdict::Incomplete,
            };
            prop_assert!(agrees, "whole {:?}, first {} bytes {:?}", whole, k, part);
        }
    }
}

// ---- over a socket ------------------------------------------------------------

/// Writes `pieces` to a loopback connection (closing it after), and runs
/// `read_header` on the other end; what it says, and every byte left.
async fn over_loopback(pieces: Vec<Vec<u8>>) -> (Result<Carried, String>, Vec<u8>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mut sender = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    sender.set_nodelay(true).expect("nodelay");
    let (mut stream, _) = listener.accept().await.expect("accept");
    let writing = tokio::spawn(async move {
        for piece in pieces {
            // The reader may have refused and closed already.
            if sender.write_all(&piece).await.is_err() {
                break;
            }
            tokio::task::yield_now().await;
        }
    });
    let header = read_header(&mut stream).await.map_err(|e| e.to_string());
    writing.await.expect("writer");
    let mut rest = Vec::new();
    if header.is_ok() {
        stream.read_to_end(&mut rest).await.expect("read the rest");
    }
    (header, rest)
}

/// Cuts `bytes` at `cuts`.
fn pieces(bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    at.extend([0, bytes.len()]);
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}

proptest! {
    // A socket per case: an eighth of the cases of the pure properties.
    #![proptest_config(ProptestConfig {
        cases: ProptestConfig::default().cases.div_ceil(8),
        ..ProptestConfig::default()
    })]

    /// Over a real loopback connection, in arbitrary pieces: `read_header`
    /// gives what the header carries and leaves every byte after it on the
    /// socket; a header cut short by the close is `Closed`, not an address.
    #[test]
    fn read_header_takes_exactly_the_header(
        h in header(),
        after in prop::collection::vec(any::<u8>(), 0..64),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        cut_short in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let header = h.encode();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        if let Some(cut) = cut_short {
            let cut = cut.index(header.len());
            let (got, _) = rt.block_on(over_loopback(pieces(&header[..cut], &cuts)));
            prop_assert_eq!(got, Err(HeaderError::Closed.to_string()));
        } else {
            let bytes = [header.as_slice(), &after].concat();
            let (got, rest) = rt.block_on(over_loopback(pieces(&bytes, &cuts)));
            prop_assert_eq!(got, Ok(h.carried()));
            prop_assert_eq!(rest, after);
        }
    }
}
