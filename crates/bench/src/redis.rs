//! The Redis of the cluster scenario, and a small blocking client that
//! reads what it did.
//!
//! [`Redis::start`] runs `redis-server` on a free loopback port, without
//! persistence (as the cluster's tests do), its log in the run's log
//! folder. [`Redis::command`] sends one command over a fresh connection and
//! reads one RESP reply, every size bounded; [`Monitor`] counts the
//! commands Redis runs, by name, telling those a client sent from those a
//! Lua script ran inside Redis (`MONITOR` marks them `[0 lua]`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::procs::Proc;

/// Longest reply line (a status, a length) read.
const MAX_LINE: u64 = 64 << 10;
/// Largest bulk reply read (`INFO`'s are a few KiB).
const MAX_BULK: usize = 16 << 20;
/// Most elements of an array reply read.
const MAX_ARRAY: usize = 100_000;
/// Deepest nesting of arrays read (`SCAN` answers two levels).
const MAX_DEPTH: u8 = 4;
/// Longest a command may take to answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Most `MONITOR` lines counted before the count gives up.
const MAX_MONITOR_LINES: u64 = 20_000_000;

/// A running `redis-server`, killed on drop.
pub struct Redis {
    /// Where it listens.
    pub addr: SocketAddr,
    proc: Proc,
}

impl Redis {
    /// Starts `program` on a free loopback port and waits (10 s at most)
    /// for it to answer `PING`.
    pub fn start(program: &Path, logs: &Path) -> Result<Redis> {
        let addr = crate::http::free_port()?;
        let args: Vec<String> = [
            "--port",
            &addr.port().to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--logfile",
            &logs.join("redis.log").to_string_lossy(),
            "--dir",
            &logs.to_string_lossy(),
        ]
        .map(String::from)
        .to_vec();
        let mut proc = Proc::spawn("redis", program, &args, &logs.join("redis.stderr"))?;
        proc.release_stdout();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Reply::Status(pong)) = command(addr, &["PING"]) {
                ensure!(pong == "PONG", "redis-server answered PING with {pong}");
                return Ok(Redis { addr, proc });
            }
            proc.check_alive()?;
            if Instant::now() > deadline {
                bail!("redis-server did not answer on {addr} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Its process, for the CPU samples and the liveness checks.
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// Runs one command and returns its reply.
    pub fn command(&self, words: &[&str]) -> Result<Reply> {
        command(self.addr, words)
    }

    /// One section of `INFO`, as `field → value`.
    pub fn info(&self, section: &str) -> Result<BTreeMap<String, String>> {
        let text = self.command(&["INFO", section])?.text()?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect())
    }

    /// One numeric field of `INFO section`.
    pub fn info_number(&self, section: &str, field: &str) -> Result<u64> {
        self.info(section)?
            .get(field)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no number {field} in INFO {section}"))
    }

    /// Every command's count so far (`INFO commandstats`), scripts'
    /// commands included.
    pub fn commandstats(&self) -> Result<CommandStats> {
        let mut stats = BTreeMap::new();
        for (name, fields) in self.info("commandstats")? {
            let Some(name) = name.strip_prefix("cmdstat_") else {
                continue;
            };
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
                    .with_context(|| format!("no {key} in cmdstat_{name}: {fields}"))
            };
            stats.insert(
                name.to_owned(),
                Stat {
                    calls: field("calls")?,
                    usec: field("usec")?,
                },
            );
        }
        Ok(CommandStats(stats))
    }
}

/// A command's count and the time Redis spent in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stat {
    /// How many times it ran.
    pub calls: u64,
    /// Microseconds Redis spent running it (a script's includes the
    /// commands it called).
    pub usec: u64,
}

/// `INFO commandstats`: each command's [`Stat`], by lowercase name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandStats(pub BTreeMap<String, Stat>);

impl CommandStats {
    /// What ran between `before` and `self`.
    pub fn since(&self, before: &CommandStats) -> CommandStats {
        let delta = self
            .0
            .iter()
            .map(|(name, after)| {
                let was = before.0.get(name).copied().unwrap_or_default();
                let stat = Stat {
                    calls: after.calls.saturating_sub(was.calls),
                    usec: after.usec.saturating_sub(was.usec),
                };
                (name.clone(), stat)
            })
            .filter(|(_, stat)| stat.calls > 0)
            .collect();
        CommandStats(delta)
    }

    /// Calls of every command.
    pub fn calls(&self) -> u64 {
        self.0.values().map(|s| s.calls).sum()
    }
}

/// One RESP reply (an error reply is an `Err`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Status(String),
    /// `:42`.
    Int(i64),
    /// `$5 hello`, or `$-1` (none).
    Bulk(Option<String>),
    /// `*2 ...`, or `*-1` (none, as empty).
    Array(Vec<Reply>),
}

impl Reply {
    /// The text of a status or bulk reply.
    pub fn text(self) -> Result<String> {
        match self {
            Reply::Status(s) | Reply::Bulk(Some(s)) => Ok(s),
            other => bail!("expected text from Redis, got {other:?}"),
        }
    }

    /// An integer reply.
    pub fn int(self) -> Result<i64> {
        match self {
            Reply::Int(n) => Ok(n),
            other => bail!("expected an integer from Redis, got {other:?}"),
        }
    }

    /// The texts of an array reply.
    pub fn texts(self) -> Result<Vec<String>> {
        match self {
            Reply::Array(items) => items.into_iter().map(Reply::text).collect(),
            other => bail!("expected an array from Redis, got {other:?}"),
        }
    }
}

/// Runs one command at `addr` over a fresh connection.
pub fn command(addr: SocketAddr, words: &[&str]) -> Result<Reply> {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    (&stream).write_all(&encode(words))?;
    read_reply(&mut BufReader::new(stream), 0)
}

fn encode(words: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", words.len()).into_bytes();
    for word in words {
        out.extend_from_slice(format!("${}\r\n", word.len()).as_bytes());
        out.extend_from_slice(word.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One line without its CRLF, at most [`MAX_LINE`] bytes.
fn read_line(reader: &mut impl BufRead) -> Result<String> {
    let mut line = Vec::new();
    reader.take(MAX_LINE).read_until(b'\n', &mut line)?;
    ensure!(
        line.ends_with(b"\r\n"),
        "Redis's reply line was cut or too long"
    );
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

fn read_reply(reader: &mut impl BufRead, depth: u8) -> Result<Reply> {
    let line = read_line(reader)?;
    let (kind, rest) = line.split_at_checked(1).context("empty reply line")?;
    let number = || -> Result<i64> {
        rest.parse()
            .with_context(|| format!("bad number in reply: {line}"))
    };
    Ok(match kind {
        "+" => Reply::Status(rest.to_owned()),
        "-" => bail!("Redis answered an error: {rest}"),
        ":" => Reply::Int(number()?),
        "$" => match usize::try_from(number()?) {
            Err(_) => Reply::Bulk(None),
            Ok(len) => {
                ensure!(len <= MAX_BULK, "bulk reply of {len} bytes");
                let mut body = vec![0; len + 2];
                reader.read_exact(&mut body)?;
                body.truncate(len);
                Reply::Bulk(Some(String::from_utf8_lossy(&body).into_owned()))
            }
        },
        "*" => match usize::try_from(number()?) {
            Err(_) => Reply::Array(Vec::new()),
            Ok(len) => {
                ensure!(len <= MAX_ARRAY, "array reply of {len} elements");
                ensure!(depth < MAX_DEPTH, "array reply nested too deep");
                let items = (0..len)
                    .map(|_| read_reply(reader, depth + 1))
                    .collect::<Result<_>>()?;
                Reply::Array(items)
            }
        },
        _ => bail!("unknown reply: {line}"),
    })
}

/// What `MONITOR` saw: commands by lowercase name, those clients sent
/// apart from those scripts ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// Sent by a client: each is one command on the wire.
    pub client: BTreeMap<String, u64>,
    /// Run by a Lua script (`redis.call`) inside Redis.
    pub script: BTreeMap<String, u64>,
}

impl Seen {
    /// Counts one `MONITOR` line (`+1700000000.123456 [0 127.0.0.1:5] "get"
    /// "k"`; a script's source reads `[0 lua]`).
    fn count(&mut self, line: &str) {
        let Some((source, rest)) = line.split_once('[').and_then(|(_, r)| r.split_once("] \""))
        else {
            return;
        };
        let name = rest.split('"').next().unwrap_or_default().to_lowercase();
        let by = if source.ends_with(" lua") {
            &mut self.script
        } else {
            &mut self.client
        };
        *by.entry(name).or_default() += 1;
    }

    /// Commands clients sent.
    pub fn client_total(&self) -> u64 {
        self.client.values().sum()
    }

    /// Commands scripts ran.
    pub fn script_total(&self) -> u64 {
        self.script.values().sum()
    }
}

/// A `MONITOR` connection counting what Redis runs until stopped.
pub struct Monitor {
    stream: TcpStream,
    /// Taken by `stop`.
    reader: Option<JoinHandle<Result<Seen>>>,
}

impl Monitor {
    /// Sends `MONITOR` and counts every line that follows in a thread.
    pub fn start(addr: SocketAddr) -> Result<Monitor> {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        (&stream).write_all(&encode(&["MONITOR"]))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        stream.set_read_timeout(Some(TIMEOUT))?;
        let ok = read_reply(&mut reader, 0)?;
        ensure!(ok == Reply::Status("OK".into()), "MONITOR answered {ok:?}");
        // From here the reader blocks until lines come or `stop` shuts the
        // socket down.
        stream.set_read_timeout(None)?;
        let reader = std::thread::spawn(move || {
            let mut seen = Seen::default();
            for n in 0.. {
                ensure!(n < MAX_MONITOR_LINES, "more than {n} MONITOR lines");
                match read_line(&mut reader) {
                    Ok(line) => seen.count(&line),
                    Err(_) => break,
                }
            }
            Ok(seen)
        });
        Ok(Monitor {
            stream,
            reader: Some(reader),
        })
    }

    /// Waits `settle` for the last lines, stops, and returns the counts.
    pub fn stop(mut self, settle: Duration) -> Result<Seen> {
        std::thread::sleep(settle);
        let _ = self.stream.shutdown(Shutdown::Both);
        let reader = self.reader.take().context("stopped twice")?;
        reader
            .join()
            .map_err(|_| anyhow::anyhow!("the MONITOR reader panicked"))?
    }
}

/// A monitor dropped unstopped (its run failed) ends its reader too, which
/// would otherwise wait on the socket for as long as Redis lives.
impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// `redis-server` on the PATH, if there is one.
pub fn find_server() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("redis-server"))
        .find(|path| path.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Reply> {
        read_reply(&mut BufReader::new(raw.as_bytes()), 0)
    }

    #[test]
    fn replies_are_read() {
        assert_eq!(parse("+PONG\r\n").unwrap(), Reply::Status("PONG".into()));
        assert_eq!(parse(":120\r\n").unwrap(), Reply::Int(120));
        assert_eq!(parse("$-1\r\n").unwrap(), Reply::Bulk(None));
        assert_eq!(
            parse("*2\r\n$1\r\n0\r\n*1\r\n$3\r\nk:1\r\n").unwrap(),
            Reply::Array(vec![
                Reply::Bulk(Some("0".into())),
                Reply::Array(vec![Reply::Bulk(Some("k:1".into()))]),
            ])
        );
        assert!(parse("-ERR no\r\n").is_err());
        assert!(parse("$5\r\nab").is_err());
        assert!(parse(&"*1\r\n".repeat(10)).is_err());
        assert!(parse("*1000000000\r\n").is_err());
        assert_eq!(encode(&["GET", "k"]), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }

    #[test]
    fn monitor_lines_are_counted_by_source() {
        let mut seen = Seen::default();
        seen.count(r#"1765000000.000001 [0 127.0.0.1:40000] "EVALSHA" "ab12" "1" "k""#);
        seen.count(r#"1765000000.000002 [0 lua] "TIME""#);
        seen.count(r#"1765000000.000003 [0 lua] "hset" "k" "m:x" "1 a""#);
        seen.count(r#"1765000000.000004 [0 127.0.0.1:40000] "evalsha" "ab12""#);
        seen.count("garbage");
        assert_eq!(seen.client.get("evalsha"), Some(&2));
        assert_eq!(seen.script_total(), 2);
        assert_eq!(seen.client_total(), 2);
    }

    #[test]
    fn command_stats_subtract() {
        let stat = |calls, usec| Stat { calls, usec };
        let before = CommandStats([("get".into(), stat(2, 10))].into());
        let after = CommandStats([("get".into(), stat(5, 16)), ("set".into(), stat(1, 3))].into());
        let delta = after.since(&before);
        assert_eq!(delta.0["get"], stat(3, 6));
        assert_eq!(delta.calls(), 4);
        assert_eq!(after.since(&after).calls(), 0);
    }
}
