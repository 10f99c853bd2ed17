//! The binary under test: `cryptun` as a child process, with info logs,
//! the inspector off (so no test takes port 4040) and no config file (the
//! config directory is one that does not exist). The process fixture
//! itself is testkit's [`Proc`].

#![allow(dead_code)]

use std::process::Command;

pub use cryptun_testkit::Proc;

/// `cryptun ARGS`, started.
pub fn cryptun(args: &[&str]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cryptun"));
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env("CRYPTUN_INSPECT", "off")
        .env("XDG_CONFIG_HOME", "/nonexistent/cryptun-tests");
    Proc::start(cmd)
}

pub mod tty;
