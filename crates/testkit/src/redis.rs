//! A real Redis (Debian's `redis-server`) on a free loopback port, for the
//! cluster's tests: started, paused, killed and restarted as a test needs,
//! its data in a temporary directory, killed when dropped. A test that
//! needs it fails, not skips, when `redis-server` is not installed (CI
//! installs it).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::server::TempDir;

/// A running `redis-server`.
pub struct TestRedis {
    pub addr: SocketAddr,
    child: Option<Child>,
    dir: TempDir,
    /// Whether it keeps an append-only file (survives a restart).
    aof: bool,
}

impl TestRedis {
    /// A Redis without persistence.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// A Redis with an append-only file, fsynced on every write.
    pub fn start_aof() -> Self {
        Self::start_with(true)
    }

    fn start_with(aof: bool) -> Self {
        let port = free_port();
        let dir = TempDir::new();
        std::fs::create_dir_all(&dir.path).unwrap();
        let mut redis = TestRedis {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: None,
            dir,
            aof,
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let aof = if self.aof { "yes" } else { "no" };
        let child = Command::new("redis-server")
            .args(["--port", &self.addr.port().to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", aof])
            .args(["--appendfsync", "always", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir.path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        self.child = Some(child);
        wait_ready(self.addr);
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Stops it answering (SIGSTOP): connections stay open, nothing comes
    /// back.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused Redis go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Kills it (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with what its append-only file
    /// kept, if it has one.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts it again on the same port, empty (its files removed): a
    /// flushed or fresh instance.
    pub fn restart_empty(&mut self) {
        self.kill();
        for entry in std::fs::read_dir(&self.dir.path).unwrap().flatten() {
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
        self.spawn();
    }

    /// Runs one command (its words) and returns the raw reply.
    pub fn command(&self, words: &[&str]) -> String {
        command(self.addr, words)
    }

    /// Where it keeps its files.
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let ok = Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill -{signal} redis-server");
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused Redis must be woken to die cleanly.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// A port nothing listens on now ([`crate::unused_port`]).
pub fn free_port() -> u16 {
    crate::unused_port()
}

/// Waits, within ten seconds, for Redis at `addr` to answer PING.
fn wait_ready(addr: SocketAddr) {
    if !ready_within(addr, Duration::from_secs(10)) {
        panic!("redis-server did not answer on {addr} within 10 s");
    }
}

/// Whether Redis at `addr` answers PING within `limit`.
fn ready_within(addr: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if try_command(addr, &["PING"]).is_some_and(|r| r.contains("PONG")) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// One `redis-server --cluster-enabled yes`, on a port whose cluster bus
/// port (10000 above) is free too. Another process may take either port
/// between the choice and the start (Redis then exits): tried again on
/// other ports, a few times.
fn cluster_shard() -> TestRedis {
    for _ in 0..5 {
        let port = loop {
            let port = free_port();
            let bus = port.checked_add(10_000).filter(|_| port < 55_000);
            if bus.is_some_and(|bus| TcpListener::bind(("127.0.0.1", bus)).is_ok()) {
                break port;
            }
        };
        let dir = TempDir::new();
        std::fs::create_dir_all(&dir.path).unwrap();
        let mut shard = TestRedis {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: None,
            dir,
            aof: false,
        };
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .arg("--dir")
            .arg(&shard.dir.path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server)");
        shard.child = Some(child);
        if ready_within(shard.addr, Duration::from_secs(10)) {
            return shard;
        }
    }
    panic!("no redis-server of the cluster answered, on five ports");
}

/// One command over a fresh connection (RESP), its raw reply.
pub fn command(addr: SocketAddr, words: &[&str]) -> String {
    try_command(addr, words).unwrap_or_else(|| panic!("redis at {addr} answers {words:?}"))
}

fn try_command(addr: SocketAddr, words: &[&str]) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut req = format!("*{}\r\n", words.len());
    for word in words {
        req.push_str(&format!("${}\r\n{word}\r\n", word.len()));
    }
    stream.write_all(req.as_bytes()).ok()?;
    let mut buf = [0u8; 64 << 10];
    let n = stream.read(&mut buf).ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A Redis Cluster of three primaries (no replicas) on free loopback
/// ports, its slots spread over them.
pub struct TestRedisCluster {
    pub shards: Vec<TestRedis>,
}

impl TestRedisCluster {
    /// Starts three `redis-server --cluster-enabled yes` and joins them
    /// with `redis-cli --cluster create`; waits until the cluster is ok.
    pub fn start() -> Self {
        let shards: Vec<TestRedis> = (0..3).map(|_| cluster_shard()).collect();
        let addrs: Vec<String> = shards.iter().map(|s| s.addr.to_string()).collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli runs");
        assert!(created.success(), "redis-cli --cluster create");
        let deadline = Instant::now() + Duration::from_secs(20);
        for shard in &shards {
            while !command(shard.addr, &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "the Redis Cluster is not ok");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        TestRedisCluster { shards }
    }

    /// `redis://` of its first shard (the client finds the others).
    pub fn url(&self) -> String {
        self.shards[0].url()
    }
}
