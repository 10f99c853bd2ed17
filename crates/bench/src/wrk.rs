//! Running wrk and reading its results.
//!
//! wrk is started with a small Lua script whose `done` hook prints one line,
//! `CRYPTUN_BENCH {json}`, with the exact counts and latency percentiles (in
//! microseconds), so nothing depends on wrk's human-readable output.
//!
//! For HTTPS the URL names the tunnel (wrk sends its host as the TLS server
//! name, and Cryptun refuses a request whose Host is not the SNI), but
//! `*.localhost` does not resolve everywhere: the script's `wrk.resolve`
//! then connects to the address in `CRYPTUN_BENCH_RESOLVE` instead.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

const MARKER: &str = "CRYPTUN_BENCH ";

/// The environment variable the script reads for [`Load::resolve`].
const RESOLVE_VAR: &str = "CRYPTUN_BENCH_RESOLVE";

const SCRIPT: &str = r#"
local resolve_to = os.getenv("CRYPTUN_BENCH_RESOLVE")
if resolve_to then
  wrk.resolve = function(host, service)
    wrk.addrs = wrk.lookup(resolve_to, service)
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'CRYPTUN_BENCH {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"mean_us":%f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
"#;

/// One wrk run's summary.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct WrkResult {
    /// Completed requests.
    pub requests: u64,
    /// Wall time of the run.
    pub duration_us: u64,
    /// Bytes read (heads and bodies).
    pub bytes: u64,
    /// Socket connect errors.
    pub connect: u64,
    /// Socket read errors.
    pub read: u64,
    /// Socket write errors.
    pub write: u64,
    /// Responses that were not 2xx or 3xx.
    pub status: u64,
    /// Requests that timed out.
    pub timeout: u64,
    /// Mean latency.
    pub mean_us: f64,
    /// Median latency.
    pub p50_us: u64,
    /// 90th percentile latency.
    pub p90_us: u64,
    /// 99th percentile latency.
    pub p99_us: u64,
    /// Largest latency.
    pub max_us: u64,
}

impl WrkResult {
    /// Requests per second.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.secs()
    }

    /// MiB read per second.
    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / self.secs() / (1024.0 * 1024.0)
    }

    /// Every error wrk counted, bad statuses included.
    pub fn errors(&self) -> u64 {
        self.connect + self.read + self.write + self.status + self.timeout
    }

    fn secs(&self) -> f64 {
        (self.duration_us as f64 / 1e6).max(1e-9)
    }
}

/// What one wrk run does.
#[derive(Debug, Clone)]
pub struct Load {
    /// Full URL (http://127.0.0.1:PORT/..., or https://HOST:PORT/...).
    pub url: String,
    /// The IP address to connect to instead of resolving the URL's host.
    pub resolve: Option<std::net::IpAddr>,
    /// Host header to send, if not the URL's.
    pub host: Option<String>,
    /// Keep-alive connections.
    pub connections: u32,
    /// wrk threads.
    pub threads: u32,
    /// How long to run.
    pub duration: Duration,
}

/// Writes the Lua script into `dir` and returns its path.
pub fn install_script(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("report.lua");
    std::fs::write(&path, SCRIPT).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Runs wrk once and returns its summary.
pub fn run(load: &Load, script: &Path) -> Result<WrkResult> {
    let mut cmd = Command::new("wrk");
    cmd.arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.duration.as_secs().max(1)))
        .arg("--timeout")
        .arg("10s")
        .arg("-s")
        .arg(script);
    if let Some(host) = &load.host {
        cmd.arg("-H").arg(format!("Host: {host}"));
    }
    if let Some(ip) = load.resolve {
        cmd.env(RESOLVE_VAR, ip.to_string());
    }
    cmd.arg(&load.url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .context("running wrk (is it installed? scripts/bench.sh installs it)")?;
    // wrk stops itself after -d; the watchdog covers a wrk that does not.
    let deadline = Instant::now() + load.duration + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("wrk ran past its duration and was killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout)?;
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut stderr)?;
    }
    if !status.success() {
        bail!("wrk failed ({status}): {stdout}{stderr}");
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(MARKER))
        .with_context(|| format!("no summary line in wrk's output:\n{stdout}"))?;
    serde_json::from_str(line).with_context(|| format!("parsing wrk's summary: {line}"))
}

/// Whether wrk is on the PATH.
pub fn available() -> bool {
    Command::new("wrk")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}
