//! A real process under test (the `cryptun` binary): its output lines on
//! channels, signals sent with `kill(1)`, and bounded waits for its lines
//! and its exit.

use std::cell::RefCell;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::LIMIT;

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    /// Every stderr line read so far.
    seen: RefCell<Vec<String>>,
}

impl Proc {
    /// Starts `program` with `args`, logging at info level.
    pub fn spawn(program: &str, args: &[&str]) -> Proc {
        let mut cmd = Command::new(program);
        cmd.args(args).env("RUST_LOG", "info");
        Proc::start(cmd)
    }

    /// Starts `cmd` with its output piped.
    pub fn start(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the program starts");
        let stdout = lines(child.stdout.take().expect("piped stdout"));
        let stderr = lines(child.stderr.take().expect("piped stderr"));
        Proc {
            child,
            stdout,
            stderr,
            seen: RefCell::default(),
        }
    }

    /// The next stdout line, within [`LIMIT`].
    pub fn line(&self) -> String {
        self.stdout.recv_timeout(LIMIT).expect("a line on stdout")
    }

    /// The first stderr line from now on containing `needle`, within
    /// [`LIMIT`].
    pub fn log_with(&self, needle: &str) -> String {
        self.log_until(needle)
            .pop()
            .expect("at least the line found")
    }

    /// Stderr lines from now on, up to and including the first containing
    /// `needle`, within [`LIMIT`].
    pub fn log_until(&self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + LIMIT;
        let mut read = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.stderr.recv_timeout(left).unwrap_or_else(|_| {
                panic!("no log line with {needle:?} in {:#?}", self.seen.borrow())
            });
            self.seen.borrow_mut().push(line.clone());
            let found = line.contains(needle);
            read.push(line);
            if found {
                return read;
            }
        }
    }

    /// Every stderr line read so far.
    pub fn seen(&self) -> Vec<String> {
        self.seen.borrow().clone()
    }

    /// Kills the process and returns the rest of its stderr, to its end.
    pub fn finish(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut rest = Vec::new();
        // Ends when the reader thread reaches the closed pipe's end.
        while let Ok(line) = self.stderr.recv_timeout(LIMIT) {
            rest.push(line);
        }
        rest
    }

    /// Sends `signal` (`TERM`, `INT`, ...) with `kill(1)`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the process") {
                return status;
            }
            assert!(Instant::now() < deadline, "still running after {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
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
