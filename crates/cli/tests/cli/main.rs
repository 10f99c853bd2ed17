//! The `cryptun` binary as a person runs it: real processes on ephemeral
//! loopback ports, one module per area, one test binary (each binary links
//! the product; one link instead of eleven). Run an area with its module's
//! name as the filter, e.g. `cargo test -p cryptun --test cli restart::`.
//! The server kill storm is an opt-in chaos run: `chaos::` (ignored; see
//! its module and docs/SECURITY.md, "Chaos runs").

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod chaos;
mod cli;
mod cluster_nodes;
mod config;
mod devservers;
mod guidance;
mod keys;
mod operations;
mod pools;
mod restart;
mod servers;
mod status;
mod tcp;
