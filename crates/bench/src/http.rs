//! A tiny blocking HTTP/1.0 GET for the orchestrator's checks (is the server
//! up, does the tunnel answer, how many tunnels are live). Not used for load:
//! that is wrk's job.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::origin::{LARGE_LEN, SMALL_BODY};

/// Status and body of `GET path` on `addr` with the given Host header.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, Vec<u8>)> {
    let timeout = Duration::from_secs(10);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of head in the response")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status in the response")?;
    Ok((status, raw[split + 4..].to_vec()))
}

/// Checks that `/small` and `/1m` answer in full at `addr` with Host `host`.
pub fn check_paths(addr: SocketAddr, host: &str) -> Result<()> {
    let (status, body) = get(addr, host, "/small")?;
    if status != 200 || body != SMALL_BODY {
        bail!(
            "GET /small via {addr} (Host {host}) gave {status}, {} bytes",
            body.len()
        );
    }
    let (status, body) = get(addr, host, "/1m")?;
    if status != 200 || body.len() != LARGE_LEN {
        bail!(
            "GET /1m via {addr} (Host {host}) gave {status}, {} bytes",
            body.len()
        );
    }
    Ok(())
}

/// Polls `GET /healthz` until it answers 200, for at most `wait`.
pub fn wait_healthy(addr: SocketAddr, wait: Duration) -> Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok((200, _)) = get(addr, &addr.to_string(), "/healthz") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the server at {addr} was not healthy within {wait:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The number of live tunnels according to `GET /healthz`.
pub fn tunnel_count(addr: SocketAddr) -> Result<usize> {
    // `/healthz` counts them for an admin (loopback, no token), the
    // node's own in a cluster, where `/api/tunnels` comes a page at a time.
    let (status, body) = get(addr, &addr.to_string(), "/healthz")?;
    if status != 200 {
        bail!("/healthz answered {status}");
    }
    let health: serde_json::Value = serde_json::from_slice(&body)?;
    health["tunnels"]
        .as_u64()
        .map(|n| n as usize)
        .context("/healthz did not count the tunnels (not an admin?)")
}

/// A free loopback port (bound, then released for a child to take).
pub fn free_port() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}
