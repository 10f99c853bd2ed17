//! Chaos, opt-in: kill storms, protocol fuzzers, slowloris, slow bodies
//! and connection floods, each bounded in time, on loopback only, printing
//! its figures and asserting what must hold. A maintainer runs them before
//! a release (see "Chaos runs" in docs/SECURITY.md):
//!
//! ```text
//! cargo test -p cryptun-testkit --test e2e chaos:: -- --ignored --nocapture --test-threads=1
//! ```
//!
//! One at a time (`--test-threads=1`): several measure the whole
//! process's memory, where the server runs, and the figures of each are
//! its own. The kill storm of the server itself, which needs the real
//! `cryptun` process to kill, is the `cryptun` crate's `tests/chaos.rs`.
//!
//! Random choices come from a small generator seeded from the clock; each
//! test prints its seed (`CHAOS_SEED` replays one).

mod client_storm;
mod floods;
mod fuzzer;
mod slow_bodies;
mod slowloris;
