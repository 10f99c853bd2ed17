//! Connection slots: who may hold one of the server's `max_connections`.
//!
//! Three rules, so that one address cannot lock everyone else out:
//!
//! - **Per address.** One address (IPv6: its /64) holds at most
//!   `max_connections_per_ip` connections at once. Trusted proxies are
//!   exempt: behind one, every visitor arrives from its address, and who the
//!   visitor is shows only in the request.
//! - **Kept for clients.** A tenth of the slots are kept for clients
//!   reconnecting: once the rest are taken, a new connection gets one of
//!   these only to ask for `GET /ws`; anything else it asks is answered 503
//!   and the connection closed. An address holds at most
//!   [`KEPT_PER_ADDRESS`] of them, and each for at most [`KEPT_FOR`]: a
//!   client asks for `/ws` at once, a flood of idle connections from a few
//!   addresses cannot sit on them. So a flood of visitors' connections
//!   cannot stop tunnels' clients from coming back. (An upgraded `/ws`
//!   connection gives its slot back as it becomes a session.)
//! - **Answered, not reset.** A connection refused on the plain listener
//!   gets `503 Service Unavailable` with `Retry-After` and the limit's name
//!   in `x-cryptun-error`, from a small task that reads its request head
//!   first (at most [`MAX_ANSWERING`] at once; beyond, or on the HTTPS
//!   listener, where answering would take a TLS handshake, it is closed).
//!
//! Refusals are counted (`cryptun_refusals_total`) and logged at most once
//! per [`LOG_EVERY`], with the count since the last line: a flood must not
//! become a flood of log lines.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cryptun_proto::net::{Cidr, group};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::warn;

use crate::metrics::Metrics;

/// Most of the slots kept for clients one address holds at once: a client
/// needs one to reconnect; a few leave room for several behind one NAT.
pub(super) const KEPT_PER_ADDRESS: usize = 8;
/// How long a connection may hold a slot kept for clients: enough for a
/// TLS handshake and `GET /ws`, not for sitting on it.
pub(super) const KEPT_FOR: Duration = Duration::from_secs(5);
/// Most refused connections answered at once; the rest are closed.
pub(super) const MAX_ANSWERING: usize = 64;
/// How long a refused connection may take to send its request head.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// Most bytes read from a refused connection before answering.
const MAX_READ: usize = 8 << 10;
/// At most one log line per this long about refused connections.
pub(super) const LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a connection gets no slot, or (with `--proxy-protocol`) loses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Its address holds as many connections as one may.
    PerAddress,
    /// Every slot is taken, those kept for clients too.
    Full,
    /// A trusted proxy's connection without a valid PROXY protocol header
    /// in time (`proxy_protocol`).
    ProxyHeader,
    /// A PROXY protocol header from an address that is not a trusted proxy.
    ProxyUntrusted,
}

impl Refusal {
    /// The limit's name, in metrics, logs and `x-cryptun-error`.
    pub(crate) fn limit(self) -> &'static str {
        match self {
            Refusal::PerAddress => "max_connections_per_ip",
            Refusal::Full => "max_connections",
            Refusal::ProxyHeader => "proxy_protocol_header",
            Refusal::ProxyUntrusted => "proxy_protocol_untrusted",
        }
    }
}

/// What a new connection gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// A slot for anything.
    Open,
    /// One of the slots kept for clients: `GET /ws` only.
    ClientsOnly,
    /// None.
    Refused(Refusal),
}

/// What an address holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Held {
    /// Connections in all.
    pub(crate) all: usize,
    /// Of those, on slots kept for clients.
    pub(crate) kept: usize,
}

/// The rule, apart from the counting: a connection from an address that
/// already holds `held` (`exempt` if it is a trusted proxy), when general
/// slots are (`open`) or are not free, and slots kept for clients are
/// (`kept`) or are not.
pub(crate) fn decide(
    held: Held,
    max_per_address: usize,
    exempt: bool,
    open: bool,
    kept: bool,
) -> Decision {
    if !exempt && held.all >= max_per_address {
        Decision::Refused(Refusal::PerAddress)
    } else if open {
        Decision::Open
    } else if kept && (exempt || held.kept < KEPT_PER_ADDRESS) {
        Decision::ClientsOnly
    } else {
        Decision::Refused(Refusal::Full)
    }
}

/// The server's connection slots.
pub(crate) struct Slots {
    open: Arc<Semaphore>,
    kept: Arc<Semaphore>,
    per_address: Mutex<HashMap<IpAddr, Held>>,
    max_per_address: usize,
    exempt: Vec<Cidr>,
}

/// A connection's slot, given back when dropped.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    address: Option<(Arc<Slots>, IpAddr)>,
    /// Whether it is one kept for clients (`GET /ws` only).
    pub(crate) clients_only: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((slots, ip)) = self.address.take() {
            release(&mut slots.counts(), ip, self.clients_only);
        }
    }
}

/// Gives back what a slot counted against `ip`.
fn release(counts: &mut HashMap<IpAddr, Held>, ip: IpAddr, clients_only: bool) {
    if let Some(held) = counts.get_mut(&ip) {
        held.all -= 1;
        held.kept -= usize::from(clients_only);
        if held.all == 0 {
            counts.remove(&ip);
        }
    }
}

impl Slots {
    /// `max` slots in all, a tenth of them (at least one, when there are
    /// two) kept for clients; at most `max_per_address` for one address,
    /// except for those in `exempt`.
    pub(crate) fn new(max: usize, max_per_address: usize, exempt: Vec<Cidr>) -> Arc<Self> {
        let kept = if max >= 2 { (max / 10).max(1) } else { 0 };
        Arc::new(Slots {
            open: Arc::new(Semaphore::new(max - kept)),
            kept: Arc::new(Semaphore::new(kept)),
            per_address: Mutex::new(HashMap::new()),
            max_per_address,
            exempt,
        })
    }

    /// A slot for a connection from `peer`, or why not.
    pub(crate) fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<Slot, Refusal> {
        let ip = group(peer.ip());
        let exempt = self.exempt.iter().any(|cidr| cidr.contains(peer.ip()));
        let mut counts = self.counts();
        let held = counts.get(&ip).copied().unwrap_or_default();
        let open = Arc::clone(&self.open).try_acquire_owned().ok();
        let kept = match open {
            Some(_) => None,
            None => Arc::clone(&self.kept).try_acquire_owned().ok(),
        };
        let decision = decide(
            held,
            self.max_per_address,
            exempt,
            open.is_some(),
            kept.is_some(),
        );
        let (permit, clients_only) = match (decision, open, kept) {
            (Decision::Open, Some(permit), _) => (permit, false),
            (Decision::ClientsOnly, _, Some(permit)) => (permit, true),
            (Decision::Refused(refusal), ..) => return Err(refusal),
            // Not reached: `decide` grants only a slot it was told is free.
            _ => return Err(Refusal::Full),
        };
        let address = (!exempt).then(|| {
            let held = counts.entry(ip).or_default();
            held.all += 1;
            held.kept += usize::from(clients_only);
            (Arc::clone(self), ip)
        });
        Ok(Slot {
            _permit: permit,
            address,
            clients_only,
        })
    }

    /// Counts `slot` against `visitor` instead (the address a trusted
    /// proxy's PROXY protocol header carried; the proxy itself is exempt),
    /// or refuses it as [`admit`](Self::admit) would a connection from
    /// `visitor` that found the slot's kind free.
    pub(crate) fn assign(
        self: &Arc<Self>,
        slot: &mut Slot,
        visitor: SocketAddr,
    ) -> Result<(), Refusal> {
        let ip = group(visitor.ip());
        let exempt = self.exempt.iter().any(|cidr| cidr.contains(visitor.ip()));
        let mut counts = self.counts();
        if let Some((_, before)) = slot.address.take() {
            release(&mut counts, before, slot.clients_only);
        }
        let held = counts.get(&ip).copied().unwrap_or_default();
        let kept = slot.clients_only;
        if let Decision::Refused(refusal) = decide(held, self.max_per_address, exempt, !kept, kept)
        {
            return Err(refusal);
        }
        if !exempt {
            let held = counts.entry(ip).or_default();
            held.all += 1;
            held.kept += usize::from(kept);
            slot.address = Some((Arc::clone(self), ip));
        }
        Ok(())
    }

    fn counts(&self) -> MutexGuard<'_, HashMap<IpAddr, Held>> {
        self.per_address.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Refused connections: counted, logged at most once per [`LOG_EVERY`],
/// and on the plain listener answered by a few bounded tasks.
pub(crate) struct Refusals {
    metrics: Metrics,
    answering: Arc<Semaphore>,
    /// When the last line was written, and the refusals since.
    log: Mutex<(Option<Instant>, u64)>,
}

impl Refusals {
    pub(crate) fn new(metrics: Metrics) -> Self {
        Refusals {
            metrics,
            answering: Arc::new(Semaphore::new(MAX_ANSWERING)),
            log: Mutex::new((None, 0)),
        }
    }

    /// Refuses `stream` from `peer` for `refusal`; `answer` when it came in
    /// on the plain listener, where a 503 can be written.
    pub(crate) fn refuse(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        refusal: Refusal,
        answer: bool,
    ) {
        self.metrics.refused(refusal.limit());
        self.note(peer, refusal, Instant::now());
        if !answer {
            return;
        }
        if let Ok(permit) = Arc::clone(&self.answering).try_acquire_owned() {
            tokio::spawn(async move {
                answer_503(stream, refusal).await;
                drop(permit);
            });
        }
    }

    /// Logs the refusal if no line was written for [`LOG_EVERY`], with the
    /// number refused since the last.
    fn note(&self, peer: SocketAddr, refusal: Refusal, now: Instant) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.1 += 1;
        if log
            .0
            .is_some_and(|last| now.duration_since(last) < LOG_EVERY)
        {
            return;
        }
        warn!(%peer, limit = refusal.limit(), refused = log.1, "connections refused (this one, and the count since the last such line)");
        *log = (Some(now), 0);
    }
}

/// Reads a refused connection's request head (within [`ANSWER_WITHIN`],
/// at most [`MAX_READ`] bytes), so that the answer is not lost to a reset,
/// then writes the 503 and closes.
async fn answer_503(mut stream: TcpStream, refusal: Refusal) {
    let read_head = async {
        let mut buf = vec![0u8; MAX_READ];
        let mut seen = 0;
        while seen < buf.len() {
            match stream.read(&mut buf[seen..]).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => seen += n,
            }
            if buf[..seen].windows(4).any(|w| w == b"\r\n\r\n") {
                return true;
            }
        }
        true
    };
    if !matches!(
        tokio::time::timeout(ANSWER_WITHIN, read_head).await,
        Ok(true)
    ) {
        return;
    }
    let text = format!(
        "503 Service Unavailable\n\nthe server holds as many connections as it takes ({}); try again shortly\n\n-- cryptun\n",
        refusal.limit()
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         x-cryptun-error: {}\r\nretry-after: 1\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{text}",
        refusal.limit(),
        text.len()
    );
    let _ = tokio::time::timeout(ANSWER_WITHIN, async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
#[path = "slots_tests.rs"]
mod tests;
