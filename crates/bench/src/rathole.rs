//! rathole, a second established TCP tunnel, measured in the same run as
//! Cryptun (`cryptun-bench run --rathole PATH`), beside bore.
//!
//! Issue 16 sets Cryptun's targets against the better of bore and rathole in
//! the same run: two relays of different designs, so that one relay's
//! quirk is not the yardstick. rathole (`cargo install rathole`, 0.5) is
//! configured by a TOML file per side, written under the run's log folder:
//! the server listens for its client on a free control port and exposes one
//! service on a free port; the client forwards that service to the origin.
//! Both use the plain TCP transport (no Noise, no TLS) with `TCP_NODELAY`
//! on, as Cryptun's and bore's sockets have it. Like bore, rathole opens
//! one data connection between client and server per visitor connection
//! and then copies bytes both ways; wrk's Host header passes untouched.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::http::free_port;
use crate::procs::Proc;
use crate::scenarios::{Runner, TunnelLoad};

/// How long each rathole process may take to start listening.
const START_WAIT: Duration = Duration::from_secs(10);

/// The service's token; the benchmark's own, on loopback only.
const TOKEN: &str = "cryptun-bench";

/// Starts rathole's server and client for the origin at `origin_addr`,
/// runs `runner`'s scenarios through them, and stops them.
pub fn measure(
    program: &Path,
    runner: &Runner,
    logs: &Path,
    origin: &mut Proc,
    origin_addr: SocketAddr,
) -> Result<TunnelLoad> {
    let control = free_port()?;
    let service = free_port()?;
    let dir = logs.join("rathole");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let server_toml = dir.join("server.toml");
    let client_toml = dir.join("client.toml");
    std::fs::write(&server_toml, server_config(control, service))?;
    std::fs::write(&client_toml, client_config(control, origin_addr))?;

    let spawn = |name, side: &str, config: &Path, log: &str| -> Result<Proc> {
        let args = [side.to_owned(), config.display().to_string()];
        let mut proc = Proc::spawn(name, program, &args, &logs.join(log))?;
        // rathole logs to stdout; nothing in it is needed.
        proc.release_stdout();
        Ok(proc)
    };
    let mut server = spawn(
        "rathole server",
        "--server",
        &server_toml,
        "rathole-server.log",
    )?;
    server.wait_listening(control, START_WAIT)?;
    let mut client = spawn(
        "rathole client",
        "--client",
        &client_toml,
        "rathole-client.log",
    )?;
    // The server opens the service's port once the client has registered.
    client.wait_listening(service, START_WAIT)?;
    eprintln!("rathole: server {control}, tunnel {service}");
    runner.relay("rathole", service, &mut server, Some(&mut client), origin)
}

fn server_config(control: SocketAddr, service: SocketAddr) -> String {
    format!(
        r#"[server]
bind_addr = "{control}"
default_token = "{TOKEN}"

[server.transport]
type = "tcp"

[server.transport.tcp]
nodelay = true

[server.services.origin]
bind_addr = "{service}"
nodelay = true
"#
    )
}

fn client_config(control: SocketAddr, origin: SocketAddr) -> String {
    format!(
        r#"[client]
remote_addr = "{control}"
default_token = "{TOKEN}"

[client.transport]
type = "tcp"

[client.transport.tcp]
nodelay = true

[client.services.origin]
local_addr = "{origin}"
nodelay = true
"#
    )
}
