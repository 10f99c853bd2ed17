//! What a held-open idle visitor connection costs: N keep-alive connections
//! to the tunnel each make one request (so each is a real, used HTTP/1.1
//! connection), then stay open and idle while the server's and the client's
//! resident memory is read. The cost per connection is the growth of the two
//! RSS figures over N.
//!
//! The requests go one at a time, so the client's pool to the origin stays
//! at one connection: what is measured is the visitor connections, not the
//! concurrency of their requests. They are opened [`BATCH`] at a time, each
//! batch given [`SETTLE`] to go idle (the server parks a connection quiet
//! for 0.5 s): what is measured is what idle connections hold, not the
//! allocator's high-water mark of every connection busy at once.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::sample::{Roles, rss_of};

/// Idle visitor connections held open at once [default of `--idle-visitors`].
pub const DEFAULT_COUNT: usize = 1_000;

/// Connections opened before a pause.
pub const BATCH: usize = 100;

/// The pause after each batch, and before the memory is read.
pub const SETTLE: Duration = Duration::from_secs(1);

/// The result of one measurement.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdleVisitors {
    /// Connections asked for.
    pub count: usize,
    /// Connections still open when the memory was read.
    pub open: usize,
    /// RSS before the first connection, KiB.
    pub before_kib: Roles<u64>,
    /// RSS with every connection idle, KiB.
    pub with_kib: Roles<u64>,
}

impl IdleVisitors {
    /// Growth per connection, bytes: server, client, and the two together.
    pub fn per_connection(&self) -> (f64, f64, f64) {
        let n = self.count.max(1) as f64;
        let grew = |before: u64, with: u64| with.saturating_sub(before) as f64 * 1024.0 / n;
        let server = grew(self.before_kib.server, self.with_kib.server);
        let client = grew(self.before_kib.client, self.with_kib.client);
        (server, client, server + client)
    }
}

/// Opens `count` connections to the tunnel at `addr` (Host `host`), one
/// request each, holds them idle and reads the RSS of `pids`.
pub fn measure(
    addr: SocketAddr,
    host: &str,
    count: usize,
    pids: Roles<u32>,
) -> Result<IdleVisitors> {
    let before_kib = rss_of(pids)?;
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        let conn = one(addr, host).with_context(|| format!("idle visitor {i}"))?;
        conns.push(conn);
        if (i + 1) % BATCH == 0 {
            std::thread::sleep(SETTLE);
        }
    }
    // Let whatever the requests left behind settle (tasks finishing,
    // connections parked, the pool's connection going idle).
    std::thread::sleep(SETTLE);
    let with_kib = rss_of(pids)?;
    let open = conns.iter().filter(|c| still_open(c)).count();
    Ok(IdleVisitors {
        count,
        open,
        before_kib,
        with_kib,
    })
}

/// One keep-alive connection that has made one `GET /small`.
fn one(addr: SocketAddr, host: &str) -> Result<TcpStream> {
    let timeout = Duration::from_secs(10);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET /small HTTP/1.1\r\nHost: {host}\r\n\r\n")?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let (head_end, length) = loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            bail!("the connection closed before the response");
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                bail!("answered {:?}", head.lines().next().unwrap_or_default());
            }
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .context("no content-length in the response")?;
            break (end + 4, length);
        }
    };
    while raw.len() < head_end + length {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            bail!("the connection closed mid-body");
        }
        raw.extend_from_slice(&buf[..n]);
    }
    Ok(stream)
}

/// Whether the server still holds `conn` open (nothing to read, no EOF).
fn still_open(conn: &TcpStream) -> bool {
    if conn.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let open = matches!(conn.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    let _ = conn.set_nonblocking(false);
    open
}
