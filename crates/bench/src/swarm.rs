//! `cryptun-bench swarm`: N tunnels over N raw WebSocket connections.
//!
//! Each connection opens `/ws`, sends the seed's bare `{"type":"create_tunnel"}`
//! and waits for `tunnel_created`; at most `--concurrency` handshakes are in
//! flight at once, and each is bounded by `--timeout`. When every handshake
//! has finished (or failed) it prints one JSON line:
//!
//! `{"type":"swarm_ready","requested":N,"connected":N,"failed":0,"elapsed_ms":..}`
//!
//! and then holds the tunnels — reading each socket so the server's pings are
//! answered — until it is killed or its stdin closes.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Semaphore, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Arguments of `cryptun-bench swarm`.
#[derive(Debug, Args)]
pub struct SwarmArgs {
    /// The server (http://HOST:PORT or ws://HOST:PORT); `/ws` is appended.
    #[arg(long)]
    server: String,
    /// How many tunnels to open.
    #[arg(long)]
    count: usize,
    /// Most handshakes in flight at once (keep it under the server's listen
    /// backlog, 128 with tokio's default bind, or SYNs get dropped and retried
    /// a second later).
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Longest one connection and handshake may take, in seconds.
    #[arg(long, default_value_t = 20)]
    timeout: u64,
}

/// Opens the tunnels, reports, and holds them.
pub async fn run(args: SwarmArgs) -> Result<()> {
    if args.count == 0 || args.concurrency == 0 {
        bail!("--count and --concurrency must be at least 1");
    }
    let url = ws_url(&args.server)?;
    let timeout = Duration::from_secs(args.timeout);
    let slots = Arc::new(Semaphore::new(args.concurrency));
    let closed = Arc::new(AtomicUsize::new(0));
    // Room for every report: a finished handshake never waits to say so.
    let (done_tx, mut done_rx) = mpsc::channel::<Result<(), String>>(args.count);

    let start = Instant::now();
    for _ in 0..args.count {
        let permit = Arc::clone(&slots).acquire_owned().await?;
        let (url, done, closed) = (url.clone(), done_tx.clone(), Arc::clone(&closed));
        tokio::spawn(async move {
            let opened = tokio::time::timeout(timeout, open(&url)).await;
            drop(permit);
            let outcome = match opened {
                Ok(Ok(ws)) => Ok(ws),
                Ok(Err(err)) => Err(err),
                Err(_) => Err("handshake timed out".to_owned()),
            };
            let report = outcome.as_ref().map(|_| ()).map_err(Clone::clone);
            let _ = done.try_send(report);
            drop(done);
            let Ok(mut ws) = outcome else { return };
            // Hold the tunnel; reading answers the server's pings.
            while let Some(Ok(_)) = ws.next().await {}
            closed.fetch_add(1, Ordering::Relaxed);
        });
    }
    drop(done_tx);

    let (mut connected, mut failed, mut first_error) = (0usize, 0usize, None);
    // Each task reports exactly once (then keeps its sender while it holds
    // the tunnel), so count reports rather than wait for the channel to close.
    for _ in 0..args.count {
        match done_rx.recv().await.context("swarm tasks vanished")? {
            Ok(()) => connected += 1,
            Err(err) => {
                failed += 1;
                first_error.get_or_insert(err);
            }
        }
    }
    let elapsed = start.elapsed();
    let ready = serde_json::json!({
        "type": "swarm_ready",
        "requested": args.count,
        "connected": connected,
        "failed": failed,
        "elapsed_ms": elapsed.as_secs_f64() * 1000.0,
        "first_error": first_error,
    });
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{ready}")?;
        out.flush()?;
    }
    eprintln!(
        "swarm: {connected}/{} tunnels in {:.2} s; holding until stdin closes",
        args.count,
        elapsed.as_secs_f64()
    );
    crate::exit_when_stdin_closes(0);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut reported = 0;
    loop {
        tick.tick().await;
        let now = closed.load(Ordering::Relaxed);
        if now != reported {
            eprintln!("swarm: {now} tunnels closed by the server");
            reported = now;
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One connection: upgrade, `create_tunnel`, wait for `tunnel_created`.
async fn open(url: &str) -> Result<Ws, String> {
    // Small buffers: the swarm stands in for many idle clients and should
    // not itself need much memory.
    let config = WebSocketConfig::default()
        .read_buffer_size(4 << 10)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .map_err(|err| format!("connect: {err}"))?;
    ws.send(Message::text(r#"{"type":"create_tunnel"}"#))
        .await
        .map_err(|err| format!("send: {err}"))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let value: serde_json::Value =
                    serde_json::from_str(&text).map_err(|err| format!("bad JSON: {err}"))?;
                return match value["type"].as_str() {
                    Some("tunnel_created") => Ok(ws),
                    _ => Err(format!("unexpected answer: {text}")),
                };
            }
            Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}")),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(format!("read: {err}")),
            None => return Err("connection ended".into()),
        }
    }
}

/// `http://h:p` or `ws://h:p` (with or without a path) → `ws://h:p/ws`.
fn ws_url(server: &str) -> Result<String> {
    let rest = server
        .strip_prefix("http://")
        .or_else(|| server.strip_prefix("ws://"))
        .context("--server must start with http:// or ws://")?;
    let host = rest.split('/').next().unwrap_or(rest);
    Ok(format!("ws://{host}/ws"))
}

#[cfg(test)]
mod tests {
    use super::ws_url;

    #[test]
    fn server_urls_become_the_control_endpoint() {
        assert_eq!(
            ws_url("http://127.0.0.1:4000").unwrap(),
            "ws://127.0.0.1:4000/ws"
        );
        assert_eq!(
            ws_url("ws://127.0.0.1:4000/ws").unwrap(),
            "ws://127.0.0.1:4000/ws"
        );
        assert!(ws_url("127.0.0.1:4000").is_err());
    }
}
