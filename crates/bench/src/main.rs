//! `cryptun-bench`: the performance benchmark.
//!
//! Three subcommands, each a separate process when the benchmark runs:
//!
//! - `origin` — a fast HTTP/1.1 origin (`/small`, `/1m`), the "local service";
//! - `swarm` — many raw WebSocket clients, each holding one tunnel;
//! - `run` — the orchestrator: starts the origin, `cryptun server` and
//!   `cryptun http` from the same build directory, drives `wrk` against the
//!   origin directly and through the tunnel, samples `/proc`, runs the swarm
//!   against a fresh server, and prints the results; with `--bore PATH` it
//!   also drives the same load through bore, an established TCP tunnel,
//!   with `--rathole PATH` through rathole ([`rathole`]), with
//!   `--nginx-proxy PATH` through nginx as a one-hop reverse proxy
//!   ([`nginx::proxy`]), and with `--https` visitors come over TLS too
//!   ([`https`]); with `--nginx PATH` nginx is the origin; with
//!   `--cluster` it also measures two cluster nodes on a Redis ([`cluster`]).
//!
//! `scripts/bench.sh` builds everything in release mode and runs `run`.

#![forbid(unsafe_code)]

mod args;
mod bore;
mod cluster;
mod http;
mod https;
mod nginx;
mod origin;
mod procs;
mod rathole;
mod redis;
mod report;
mod run;
mod sample;
mod scenarios;
mod swarm;
mod tunnels;
mod visitors;
mod wrk;

use clap::{Parser, Subcommand};

/// Cryptun's performance benchmark.
#[derive(Debug, Parser)]
#[command(name = "cryptun-bench", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve /small (~100 bytes) and /1m (1 MiB); print the bound address.
    Origin(origin::OriginArgs),
    /// Open N tunnels over N raw WebSocket connections and hold them.
    Swarm(swarm::SwarmArgs),
    /// Run the whole benchmark and print the tables.
    Run(Box<run::RunArgs>),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Origin(args) => runtime().and_then(|rt| rt.block_on(origin::serve(args))),
        Command::Swarm(args) => runtime().and_then(|rt| rt.block_on(swarm::run(args))),
        Command::Run(args) => run::run(*args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Exits the process once stdin reaches end of file: a helper started by the
/// orchestrator goes away with it, even if the orchestrator is killed.
fn exit_when_stdin_closes(code: i32) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        std::process::exit(code);
    });
}
