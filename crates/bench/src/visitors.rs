//! What a held-open idle visitor connection costs: N keep-alive connections
//! to the tunnel each make one request (so each is a real, used HTTP/1.1
//! connection, or HTTP/2 with prior knowledge on a server with `--h2c`),
//! then stay open and idle while the server's and the client's resident
//! memory is read. The cost per connection is the growth of the two RSS
//! figures over N.
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

use anyhow::{Context, Result, bail, ensure};

use crate::sample::{Roles, rss_of};

/// Idle visitor connections held open at once [default of `--idle-visitors`].
pub const DEFAULT_COUNT: usize = 1_000;

/// Connections opened before a pause.
pub const BATCH: usize = 100;

/// The pause after each batch, and before the memory is read.
pub const SETTLE: Duration = Duration::from_secs(1);

/// What the visitors speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    /// HTTP/1.1 keep-alive.
    Http1,
    /// HTTP/2 with prior knowledge (the server runs with `--h2c`).
    H2c,
}

impl Speaks {
    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Speaks::Http1 => "HTTP/1.1",
            Speaks::H2c => "HTTP/2 (h2c)",
        }
    }
}

/// The result of one measurement.
#[derive(Debug, Clone, Copy)]
pub struct IdleVisitors {
    /// What the connections spoke.
    pub speaks: Speaks,
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

/// Opens `count` connections speaking `speaks` to the tunnel at `addr`
/// (Host `host`), one request each, holds them idle and reads the RSS of
/// `pids`.
pub fn measure(
    (addr, host): (SocketAddr, &str),
    speaks: Speaks,
    count: usize,
    pids: Roles<u32>,
) -> Result<IdleVisitors> {
    let before_kib = rss_of(pids)?;
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        let conn = match speaks {
            Speaks::Http1 => one(addr, host),
            Speaks::H2c => one_h2(addr, host),
        };
        let conn = conn.with_context(|| format!("idle visitor {i}"))?;
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
        speaks,
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

/// One HTTP/2 connection (prior knowledge) that has made one `GET
/// /small` on stream 1, written by hand: the preface, SETTINGS, one HEADERS
/// frame (HPACK literals, no Huffman), and frames read until the stream
/// ends, the server's SETTINGS acknowledged on the way.
fn one_h2(addr: SocketAddr, host: &str) -> Result<TcpStream> {
    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const GOAWAY: u8 = 7;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    const ACK: u8 = 0x1;
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let len = (payload.len() as u32).to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    };
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/small"),
        (":authority", host),
    ] {
        ensure!(value.len() < 127, "{name} too long for this encoder");
        block.push(0); // literal, not indexed, new name
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let timeout = Duration::from_secs(10);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    hello.extend(frame(HEADERS, END_STREAM | END_HEADERS, 1, &block));
    stream.write_all(&hello)?;
    loop {
        let mut head = [0u8; 9];
        stream.read_exact(&mut head)?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload)?;
        match kind {
            SETTINGS if flags & ACK == 0 => stream.write_all(&frame(SETTINGS, ACK, 0, &[]))?,
            GOAWAY => bail!("the server sent GOAWAY"),
            DATA | HEADERS if id == 1 && flags & END_STREAM != 0 => return Ok(stream),
            _ => {}
        }
    }
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
