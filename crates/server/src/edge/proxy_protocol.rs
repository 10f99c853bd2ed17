//! The PROXY protocol (HAProxy's spec, v1 text and v2 binary): the header
//! an L4 balancer (HAProxy, nginx `stream`, a cloud NLB) writes at the
//! start of each connection it opens to the server, naming the visitor it
//! relays. With `--proxy-protocol`:
//!
//! - **From a trusted proxy** (`--trusted-proxy`) every connection must
//!   begin with a header, on the plain listener and on the HTTPS one (where
//!   it comes before the ClientHello). The address it carries is the
//!   connection's peer from then on: tunnels' IP lists, rate limits, the
//!   per-address connection cap (the proxy itself stays exempt), access
//!   logs, `X-Forwarded-For`. A v2 `LOCAL` header (the proxy's own health
//!   checks), v1 `UNKNOWN` and v2 addresses that are not IP keep the
//!   proxy's address. A missing or malformed header is refused: as the
//!   spec asks, a receiver never guesses whether one is there.
//! - **From anyone else** a connection that begins with a header is
//!   refused; any other is served as without the option.
//!
//! Refusals are closed, counted (`cryptun_refusals_total`, reasons
//! `proxy_protocol_header` and `proxy_protocol_untrusted`) and logged at
//! most once per interval with the other refused connections (`slots`).
//! A connection that closes before its header ends (a balancer's TCP health
//! check) is closed without counting.
//!
//! The header is read with `peek` and taken off the socket to its exact
//! last byte, so what follows (the request, or the ClientHello) is left for
//! TLS and hyper as if nothing had come before. It is bounded: at most
//! [`MAX_HEADER`] bytes, and it must have arrived (from anyone else, the
//! bytes that tell whether one is there) within the deadline the caller
//! passes (the TLS handshake timeout). Parsing is the `ppp` crate's.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cryptun_proto::net::Cidr;
use ppp::{PartialResult, v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use super::Peer;
use super::slots::{Refusal, Refusals, Slot, Slots};

/// The v1 header's first bytes.
const V1_SIGNATURE: &[u8] = b"PROXY ";
/// The v2 header's first bytes.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, its CRLF included (the spec's).
const V1_MAX: usize = 107;
/// Largest header read. A v1 header is at most 107 bytes, and a v2 header's
/// addresses at most 232 (16 + two unix paths); the rest is TLVs, which
/// balancers use for a connection id, a VPC endpoint or TLS details: a few
/// hundred bytes. A v2 header may declare up to 64 KiB; beyond this it is
/// refused rather than held.
pub(crate) const MAX_HEADER: usize = 4 << 10;
/// Most bytes peeked at once.
const CHUNK: usize = 512;
/// How long to wait before looking again at a connection from an untrusted
/// address whose first bytes so far could begin a header (`P`, `\r\n`):
/// a sender that splits its first bytes like that is rare, and it is
/// bounded by the deadline.
const SNIFF_AGAIN: Duration = Duration::from_millis(20);

/// What a header says of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Carried {
    /// It relays this visitor.
    Visitor(SocketAddr),
    /// It is the proxy's own (v2 `LOCAL`), or its visitor has no IP address
    /// (v1 `UNKNOWN`, v2 `UNSPEC` or unix): the proxy's address stays.
    Proxy,
}

/// Why a trusted proxy's connection has no usable header.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderError {
    /// Its first bytes are not a header's.
    #[error("the connection does not begin with a PROXY protocol header")]
    Missing,
    /// A v1 header that cannot be read.
    #[error("malformed PROXY protocol v1 header")]
    MalformedV1(#[source] v1::BinaryParseError),
    /// A v2 header that cannot be read.
    #[error("malformed PROXY protocol v2 header")]
    MalformedV2(#[source] v2::ParseError),
    /// More than [`MAX_HEADER`] bytes without its end.
    #[error("PROXY protocol header longer than {MAX_HEADER} bytes")]
    TooLarge,
    /// The connection closed before the header ended.
    #[error("connection closed before its PROXY protocol header ended")]
    Closed,
    /// Reading the socket failed.
    #[error("reading the PROXY protocol header failed")]
    Io(#[from] io::Error),
}

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// The beginning of a v1 header.
    V1,
    /// The beginning of a v2 header.
    V2,
    /// Too few bytes to tell: they could begin one.
    Undecided,
    /// Anything else (a request, a ClientHello).
    Other,
}

/// What `bytes`, the first a connection sent, begin with.
pub(crate) fn sniff(bytes: &[u8]) -> Sniffed {
    let begins = |signature: &[u8], version| {
        if bytes.len() >= signature.len() {
            bytes.starts_with(signature).then_some(version)
        } else {
            signature.starts_with(bytes).then_some(Sniffed::Undecided)
        }
    };
    match (
        begins(V1_SIGNATURE, Sniffed::V1),
        begins(V2_SIGNATURE, Sniffed::V2),
    ) {
        (Some(Sniffed::V1), _) => Sniffed::V1,
        (_, Some(Sniffed::V2)) => Sniffed::V2,
        (None, None) => Sniffed::Other,
        _ => Sniffed::Undecided,
    }
}

/// A header read off the first bytes of a connection.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// Complete: its length in bytes, and what it says.
    Header(usize, Carried),
    /// The bytes are the beginning of one: more are needed.
    Incomplete,
    /// They are not one.
    Invalid(HeaderError),
}

/// Reads a header from `bytes`, a connection's first bytes (perhaps only
/// part of the header, perhaps more than it).
pub(crate) fn parse(bytes: &[u8]) -> Parsed {
    match sniff(bytes) {
        Sniffed::V1 => parse_v1(bytes),
        Sniffed::V2 => parse_v2(bytes),
        Sniffed::Undecided => Parsed::Incomplete,
        Sniffed::Other => Parsed::Invalid(HeaderError::Missing),
    }
}

/// A v1 header is a line: it is read once its end has come. (`ppp` reads
/// a part of one too, but takes one cut just after a space for a bad one.)
fn parse_v1(bytes: &[u8]) -> Parsed {
    let Some(end) = bytes.iter().take(V1_MAX).position(|b| *b == b'\n') else {
        return if bytes.len() < V1_MAX {
            Parsed::Incomplete
        } else {
            let long = v1::ParseError::HeaderTooLong;
            Parsed::Invalid(HeaderError::MalformedV1(long.into()))
        };
    };
    let line = &bytes[..=end];
    // `UNKNOWN`: "the receiver must ignore anything presented before the
    // CRLF". `ppp` splits the line into at most seven words and refuses one
    // with more than four after `UNKNOWN` (found by the property tests).
    if let Some(rest) = line.strip_prefix(b"PROXY UNKNOWN")
        && matches!(rest.first(), Some(b' ' | b'\r'))
        && rest.ends_with(b"\r\n")
    {
        return Parsed::Header(line.len(), Carried::Proxy);
    }
    match v1::Header::try_from(line) {
        Ok(h) => {
            let carried = match h.addresses {
                v1::Addresses::Tcp4(a) => {
                    Carried::Visitor((a.source_address, a.source_port).into())
                }
                v1::Addresses::Tcp6(a) => {
                    Carried::Visitor((a.source_address, a.source_port).into())
                }
                v1::Addresses::Unknown => Carried::Proxy,
            };
            Parsed::Header(h.header.len(), carried)
        }
        Err(err) => Parsed::Invalid(HeaderError::MalformedV1(err)),
    }
}

/// A v2 header, read as soon as its fixed part is there (a bad one is
/// refused at once) and complete once its declared length has come.
fn parse_v2(bytes: &[u8]) -> Parsed {
    let header = v2::Header::try_from(bytes);
    if header.is_incomplete() {
        return Parsed::Incomplete;
    }
    match header {
        Ok(h) => {
            let carried = match (h.command, h.addresses) {
                (v2::Command::Local, _) => Carried::Proxy,
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Carried::Visitor((a.source_address, a.source_port).into())
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Carried::Visitor((a.source_address, a.source_port).into())
                }
                (v2::Command::Proxy, _) => Carried::Proxy,
            };
            Parsed::Header(h.len(), carried)
        }
        Err(err) => Parsed::Invalid(HeaderError::MalformedV2(err)),
    }
}

/// Reads the header at the start of `stream` and takes it off the socket,
/// to its last byte and no further.
pub(crate) async fn read_header(stream: &mut TcpStream) -> Result<Carried, HeaderError> {
    let mut header = Vec::new();
    let mut chunk = [0u8; CHUNK];
    loop {
        let room = (MAX_HEADER - header.len()).min(CHUNK);
        let n = stream.peek(&mut chunk[..room]).await?;
        if n == 0 {
            return Err(HeaderError::Closed);
        }
        let before = header.len();
        header.extend_from_slice(&chunk[..n]);
        match parse(&header) {
            Parsed::Header(len, carried) => {
                take(stream, &mut chunk[..len - before]).await?;
                return Ok(carried);
            }
            Parsed::Invalid(err) => return Err(err),
            Parsed::Incomplete if header.len() >= MAX_HEADER => {
                return Err(HeaderError::TooLarge);
            }
            // All of it is header: take it, so that the next peek waits
            // for more.
            Parsed::Incomplete => take(stream, &mut chunk[..n]).await?,
        }
    }
}

/// Takes `buf.len()` bytes off `stream`, bytes a peek has already seen.
async fn take(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<()> {
    stream.read_exact(buf).await.map(drop)
}

/// Whether `stream`, from an untrusted address, begins with a header; it
/// is only looked at (peeked), never read.
async fn begins_with_header(stream: &TcpStream) -> io::Result<bool> {
    let mut first = [0u8; V2_SIGNATURE.len()];
    loop {
        let n = stream.peek(&mut first).await?;
        match sniff(&first[..n]) {
            Sniffed::V1 | Sniffed::V2 => return Ok(true),
            // Closed at once: whoever serves it next sees that.
            Sniffed::Other => return Ok(false),
            Sniffed::Undecided if n == 0 => return Ok(false),
            Sniffed::Undecided => tokio::time::sleep(SNIFF_AGAIN).await,
        }
    }
}

/// How a connection arrived, once its header (if any) is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Straight from its peer, or a proxy's own connection.
    Direct,
    /// Relayed by a trusted proxy for this visitor.
    Relayed(Peer),
}

/// The PROXY protocol on a server's listeners: whose headers are believed,
/// and what a connection whose header is refused, or whose visitor holds
/// too many connections, is refused by.
pub(crate) struct ProxyProtocol {
    trusted: Vec<Cidr>,
    slots: Arc<Slots>,
    refusals: Arc<Refusals>,
}

impl ProxyProtocol {
    /// Headers believed from `trusted` only; connections counted in `slots`.
    pub(crate) fn new(trusted: Vec<Cidr>, slots: Arc<Slots>, refusals: Arc<Refusals>) -> Self {
        ProxyProtocol {
            trusted,
            slots,
            refusals,
        }
    }

    /// Reads the header of a connection from `peer` holding `slot` before
    /// `deadline`, and counts the slot against the visitor it names; the
    /// connection, and how it arrived. `None` if it was refused (counted,
    /// logged and closed; on the `plain` listener a visitor over its
    /// connection cap is answered 503) or closed.
    pub(crate) async fn arrive(
        &self,
        mut stream: TcpStream,
        peer: Peer,
        slot: &mut Slot,
        plain: bool,
        deadline: Instant,
    ) -> Option<(TcpStream, Arrival)> {
        if !self.trusted.iter().any(|cidr| cidr.contains(peer.ip())) {
            return match tokio::time::timeout_at(deadline, begins_with_header(&stream)).await {
                Ok(Ok(false)) => Some((stream, Arrival::Direct)),
                Ok(Ok(true)) => {
                    self.refuse(stream, peer, Refusal::ProxyUntrusted);
                    None
                }
                Ok(Err(err)) => {
                    debug!(%err, "connection failed before its first bytes");
                    None
                }
                Err(_) => {
                    debug!("connection sent nothing before the TLS handshake timeout");
                    None
                }
            };
        }
        let carried = match tokio::time::timeout_at(deadline, read_header(&mut stream)).await {
            Ok(Ok(carried)) => carried,
            Ok(Err(err @ (HeaderError::Closed | HeaderError::Io(_)))) => {
                debug!(%err, "a trusted proxy's connection ended before its header");
                return None;
            }
            Ok(Err(err)) => {
                debug!(%err, "a trusted proxy's connection refused");
                self.refuse(stream, peer, Refusal::ProxyHeader);
                return None;
            }
            Err(_) => {
                debug!("a trusted proxy's PROXY protocol header took too long");
                self.refuse(stream, peer, Refusal::ProxyHeader);
                return None;
            }
        };
        let Carried::Visitor(visitor) = carried else {
            return Some((stream, Arrival::Direct));
        };
        match self.slots.assign(slot, visitor) {
            Ok(()) => Some((stream, Arrival::Relayed(visitor))),
            Err(refusal) => {
                self.refusals.refuse(stream, visitor, refusal, plain);
                None
            }
        }
    }

    /// Closes `stream` from `peer` for `refusal`, counted and logged.
    fn refuse(&self, stream: TcpStream, peer: Peer, refusal: Refusal) {
        self.refusals.refuse(stream, peer, refusal, false);
    }
}

#[cfg(test)]
#[path = "proxy_protocol_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "proxy_protocol_properties.rs"]
mod properties;
