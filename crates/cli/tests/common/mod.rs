//! The binary under test as a child process: killed when dropped, its
//! output lines read on threads and handed over on channels, every wait
//! bounded. Shared by the CLI test files (each uses part of it).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The longest wait for a line.
pub const WAIT: Duration = Duration::from_secs(20);

/// A running `cryptun` process.
pub struct Proc {
    pub child: Child,
    pub stdout: mpsc::Receiver<String>,
    pub stderr: mpsc::Receiver<String>,
}

impl Proc {
    /// `cryptun ARGS` with info logs and the inspector off (so no test takes
    /// port 4040).
    pub fn spawn(args: &[&str]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cryptun"));
        cmd.args(args)
            .env("RUST_LOG", "info")
            .env("CRYPTUN_INSPECT", "off");
        Proc::start(cmd)
    }

    /// Starts `cmd` with its output piped.
    pub fn start(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cryptun starts");
        let stdout = lines(child.stdout.take().expect("piped stdout"));
        let stderr = lines(child.stderr.take().expect("piped stderr"));
        Proc {
            child,
            stdout,
            stderr,
        }
    }

    /// The next stdout line.
    pub fn line(&self) -> String {
        self.stdout.recv_timeout(WAIT).expect("a line on stdout")
    }

    /// The first stderr line containing `needle`.
    pub fn log_with(&self, needle: &str) -> String {
        self.log_until(needle)
            .pop()
            .expect("at least the line found")
    }

    /// Stderr lines up to and including the first containing `needle`.
    pub fn log_until(&self, needle: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = self
                .stderr
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("no log line with {needle:?} in {seen:#?}"));
            let found = line.contains(needle);
            seen.push(line);
            if found {
                return seen;
            }
        }
    }

    /// Kills the process and returns the rest of its stderr, to its end.
    pub fn finish(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut rest = Vec::new();
        // Ends when the reader thread reaches the closed pipe's end.
        while let Ok(line) = self.stderr.recv_timeout(WAIT) {
            rest.push(line);
        }
        rest
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
