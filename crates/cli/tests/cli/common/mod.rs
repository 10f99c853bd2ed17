//! The binary under test: `cryptun` as a child process, with info logs,
//! the inspector off (so no test takes port 4040), no config file (the
//! config directory is one that does not exist) and a data directory of
//! its own under the target folder (a server keeps its database there,
//! never in the home of whoever runs the tests). The process fixture
//! itself is testkit's [`Proc`].

#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use cryptun_testkit::Proc;

/// `cryptun ARGS`, started.
pub fn cryptun(args: &[&str]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cryptun"));
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env("CRYPTUN_INSPECT", "off")
        .env("XDG_CONFIG_HOME", "/nonexistent/cryptun-tests")
        .env("XDG_DATA_HOME", data_home())
        .env("XDG_STATE_HOME", data_home());
    Proc::start(cmd)
}

/// `cryptun ARGS` as [`cryptun`] starts it, with `state` as its
/// `XDG_STATE_HOME` (where a client keeps its reconnect secrets): two
/// runs of one client share it.
pub fn cryptun_with_state(args: &[&str], state: &str) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cryptun"));
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env("CRYPTUN_INSPECT", "off")
        .env("XDG_CONFIG_HOME", "/nonexistent/cryptun-tests")
        .env("XDG_DATA_HOME", data_home())
        .env("XDG_STATE_HOME", state);
    Proc::start(cmd)
}

/// Where a `cryptun server` process listens, as its `listening` log line
/// says (`addr=...`).
pub fn listening_addr(server: &Proc) -> std::net::SocketAddr {
    server
        .log_with("listening")
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .expect("the listening line names the address")
        .parse()
        .unwrap()
}

/// A fresh `XDG_DATA_HOME` for one process, under cargo's temporary folder
/// for integration tests: no two servers share a database.
pub fn data_home() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}/data-{}-{}",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub mod tty;
