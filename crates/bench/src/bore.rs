//! bore, an established TCP tunnel, measured in the same run as Cryptun
//! (`cryptun-bench run --bore PATH`).
//!
//! Issue 3 gives bore's and rathole's ratios to direct for scale, but they
//! were measured with an nginx origin; ours costs far less per request, so
//! the ratios only compare when bore runs here, through the same origin, with
//! the same wrk scenarios, in the same run.
//!
//! `bore server` takes clients on 127.0.0.1:7835, its fixed control port, and
//! is allowed one tunnel port, the one `bore local --port` asks for. bore
//! relays raw TCP: a visitor connection to the tunnel port makes the server
//! ask the client, over the control connection, to open a new connection to
//! the server and one to the origin, then both sides copy bytes. wrk's Host
//! header passes through untouched.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::http::free_port;
use crate::procs::Proc;
use crate::scenarios::{Runner, TunnelLoad};

/// bore's control address; bore 0.6 has no option to change its port.
const CONTROL: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7835);

/// How long each bore process may take to start listening.
const START_WAIT: Duration = Duration::from_secs(10);

/// Fails if bore's control port is taken on loopback: a bore server already
/// there would take our client and be measured instead of ours. Checked
/// before the run starts and again just before bore does.
pub fn ensure_control_port_free() -> Result<()> {
    drop(
        std::net::TcpListener::bind(CONTROL)
            .with_context(|| format!("bore's control port {CONTROL} is taken"))?,
    );
    Ok(())
}

/// Starts `bore server` and `bore local` for the origin at `origin_addr`,
/// runs `runner`'s scenarios through them, and stops them.
pub fn measure(
    program: &Path,
    runner: &Runner,
    logs: &Path,
    origin: &mut Proc,
    origin_addr: SocketAddr,
) -> Result<TunnelLoad> {
    ensure_control_port_free()?;
    let addr = free_port()?;
    let port = addr.port().to_string();
    let spawn = |name, args: &[&str], log: &str| -> Result<Proc> {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let mut proc = Proc::spawn(name, program, &args, &logs.join(log))?;
        // bore logs each connection on stdout; nothing in it is needed.
        proc.release_stdout();
        Ok(proc)
    };

    let server_args = [
        "server",
        "--bind-addr",
        "127.0.0.1",
        "--min-port",
        &port,
        "--max-port",
        &port,
    ];
    let mut server = spawn("bore server", &server_args, "bore-server.log")?;
    server.wait_listening(CONTROL, START_WAIT)?;
    let origin_port = origin_addr.port().to_string();
    let client_args = [
        "local",
        &origin_port,
        "--local-host",
        "127.0.0.1",
        "--to",
        "127.0.0.1",
        "--port",
        &port,
    ];
    let mut client = spawn("bore client", &client_args, "bore-client.log")?;
    client.wait_listening(addr, START_WAIT)?;
    eprintln!("bore: server {CONTROL}, tunnel {addr}");
    runner.relay("bore", addr, &mut server, Some(&mut client), origin)
}
