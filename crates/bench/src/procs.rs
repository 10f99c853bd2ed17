//! Child processes and what `/proc` says about them.
//!
//! [`Proc`] owns a child and kills it when dropped, so no benchmark run leaves
//! a server behind. The helpers read resident memory (`VmRSS` in
//! `/proc/PID/status`) and CPU time (`utime + stime` in `/proc/PID/stat`, all
//! threads of the process, in clock ticks), each summed over the process
//! and its live descendants (nginx serves from its master's children).

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

/// A running child, killed on drop.
pub struct Proc {
    /// Short name for messages ("server", "client", ...).
    pub name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Option<mpsc::Receiver<String>>,
    terminate_first: bool,
}

impl Proc {
    /// Starts `program args…` with stderr appended to `log`. Stdout is read
    /// line by line in a thread (never left to fill its pipe); read it with
    /// [`Proc::next_line`].
    pub fn spawn(name: &'static str, program: &Path, args: &[String], log: &Path) -> Result<Self> {
        let stderr = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Once nobody listens, keep draining so the child never blocks.
                let _ = tx.send(line);
            }
        });
        Ok(Proc {
            name,
            child,
            stdin,
            lines: Some(rx),
            terminate_first: false,
        })
    }

    /// On drop, asks the child to stop (SIGTERM) and gives it a few seconds
    /// before killing it: for a child that must stop children of its own
    /// (nginx's master stops its workers; killed, it would leave them).
    pub fn terminate_on_drop(&mut self) {
        self.terminate_first = true;
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the child prints on stdout, waiting at most `wait`.
    pub fn next_line(&mut self, wait: Duration) -> Result<String> {
        let rx = self.lines.as_ref().context("stdout already released")?;
        match rx.recv_timeout(wait) {
            Ok(line) => Ok(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!("{} printed nothing within {wait:?}", self.name)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("{} exited: {:?}", self.name, self.child.try_wait())
            }
        }
    }

    /// Stops collecting stdout lines (the reader thread keeps draining).
    pub fn release_stdout(&mut self) {
        self.lines = None;
    }

    /// Fails if the child has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(anyhow!("{} exited unexpectedly: {status}", self.name)),
        }
    }

    /// Waits until `addr` accepts a TCP connection, for at most `wait`;
    /// fails at once if the child exits meanwhile.
    pub fn wait_listening(&mut self, addr: SocketAddr, wait: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                return Ok(());
            }
            self.check_alive()?;
            if std::time::Instant::now() > deadline {
                bail!("{} was not listening on {addr} within {wait:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Closes the child's stdin and waits up to `wait` for it to exit; kills
    /// it if it does not.
    pub fn close_stdin_and_wait(&mut self, wait: Duration) {
        self.stdin = None;
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.terminate_first {
            let terminated = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status();
            if terminated.is_ok_and(|s| s.success()) {
                self.close_stdin_and_wait(Duration::from_secs(5));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of `pid` and its descendants, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    sum_tree(pid, own_rss_kib)
}

/// User plus system CPU time of `pid` and its descendants (all threads), in
/// clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    sum_tree(pid, |pid| {
        own_cpu_ticks(pid).map(|(user, system)| user + system)
    })
}

/// The system part of [`cpu_ticks`]: CPU time spent in the kernel for
/// `pid` and its descendants (syscalls, and the loopback TCP stack they
/// run), in clock ticks.
pub fn kernel_ticks(pid: u32) -> Result<u64> {
    sum_tree(pid, |pid| own_cpu_ticks(pid).map(|(_, system)| system))
}

/// `value` summed over `pid` and its live descendants. A descendant that
/// cannot be read counts nothing: it exited between the listing and the
/// reading, or is exiting (a zombie has no `VmRSS`). `pid` itself must be
/// readable.
fn sum_tree(pid: u32, value: impl Fn(u32) -> Result<u64>) -> Result<u64> {
    let mut all = tree(pid)?.into_iter();
    let mut total = value(all.next().unwrap_or(pid))?;
    for descendant in all {
        total += value(descendant).unwrap_or(0);
    }
    Ok(total)
}

/// `pid` and its live descendants, `pid` first, from
/// `/proc/PID/task/TID/children` (a kernel built without
/// `CONFIG_PROC_CHILDREN` has no such file: an error, rather than numbers
/// that silently leave nginx's workers out).
fn tree(pid: u32) -> Result<Vec<u32>> {
    let mut all = vec![pid];
    let mut next = 0;
    while let Some(&parent) = all.get(next) {
        next += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else {
            // Gone since it was listed; `pid` itself fails when read.
            continue;
        };
        for task in tasks.flatten() {
            let path = task.path().join("children");
            match std::fs::read_to_string(&path) {
                Ok(children) => {
                    all.extend(
                        children
                            .split_whitespace()
                            .filter_map(|c| c.parse::<u32>().ok()),
                    );
                }
                // The thread ended meanwhile.
                Err(_) if !task.path().exists() => {}
                Err(err) => {
                    return Err(err).with_context(|| format!("reading {}", path.display()));
                }
            }
        }
    }
    Ok(all)
}

fn own_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .context("no VmRSS")
}

/// `pid`'s user and system CPU time, in clock ticks.
fn own_cpu_ticks(pid: u32) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields are counted
    // after the last ')'. Field 3 (state) comes first; utime and stime are
    // fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("bad stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("bad stat field {n}"))
    };
    Ok((field(14)?, field(15)?))
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 if that fails).
pub fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// The soft limit on open files of this process (children inherit it).
pub fn open_files_limit() -> Option<u64> {
    let mut limits = String::new();
    File::open("/proc/self/limits")
        .ok()?
        .read_to_string(&mut limits)
        .ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The kernel's count of connections dropped at a full listen queue
/// (`TcpExt: ListenDrops` in `/proc/net/netstat`), for this network namespace.
pub fn listen_drops() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut tcp_ext = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (tcp_ext.next()?, tcp_ext.next()?);
    let at = names.split_whitespace().position(|n| n == "ListenDrops")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        cpu_ticks(me).unwrap();
        assert!(clock_ticks_per_sec() > 0);
        assert!(open_files_limit().unwrap() > 0);
    }

    #[test]
    fn a_process_tree_counts_its_children() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let me = std::process::id();
        let all = tree(me).unwrap();
        assert_eq!(all[0], me);
        assert!(all.contains(&child.id()), "{all:?}");
        // The child counted once, beside this process (other tests may
        // have children of their own meanwhile; RSS moves too much to
        // compare).
        let id = child.id();
        let sum = sum_tree(me, |pid| Ok(if pid == id { 1000 } else { 1 })).unwrap();
        assert!((1001..2000).contains(&sum), "{sum}");
        // A descendant that cannot be read counts nothing.
        let sum = sum_tree(me, |pid| {
            if pid == id {
                Err(anyhow!("zombie"))
            } else {
                Ok(1)
            }
        });
        assert!(sum.unwrap() >= 1);
        assert!(rss_kib(me).unwrap() > 0);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
