//! Standard output and standard error that never hold up the tunnel.
//!
//! The client prints a line per request and the server logs one (the access
//! log). Written from the task that served the request, a stream nobody
//! reads (`cryptun http 3000 | less`, paused; `cryptun server 2>&1 | less`;
//! a full pipe to a stuck log shipper) would block that task, then every
//! worker thread, then every tunnel. So lines go into a bounded buffer per
//! stream, and one thread per stream writes them out, in order, as fast as
//! the stream takes them: lines that arrive while it writes, or in the
//! moment after, go out together in one write (no wake-up or system call
//! per line under load). When a buffer is full, new lines are dropped and
//! counted, and a note says how many once the stream moves again.
//!
//! [`print()`] and [`eprint()`] queue a line; [`Logs`] hands the buffer of
//! standard error to `tracing` as its writer; [`flush`] empties both before
//! the process exits.

use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Most bytes waiting for one stream (about 5,000 lines); beyond it lines
/// are dropped rather than held.
const MAX_PENDING: usize = 1 << 20;

/// How long the writer gathers lines after a write before it writes again.
const GATHER: Duration = Duration::from_millis(2);

/// Queues `line` (a newline is added) for stdout, in order with every line
/// before it. Never blocks on stdout.
pub fn print(line: &str) {
    Stream::Stdout.pending().push(&[line.as_bytes(), b"\n"]);
}

/// Queues `line` (a newline is added) for stderr, in order with every line
/// (and log event) before it. Never blocks on stderr.
pub fn eprint(line: &str) {
    Stream::Stderr.pending().push(&[line.as_bytes(), b"\n"]);
}

/// The writer `tracing` formats log events into: each event (one
/// `write_all` of a whole formatted line) is queued for stderr.
#[derive(Debug, Clone, Copy, Default)]
pub struct Logs;

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Stream::Stderr.pending().push(&[buf]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        Logs
    }
}

/// Holds stderr's lines back (`true`) while the live view owns the
/// terminal they would be written over, where they would stay until the
/// view changed and then be lost with it; `false` lets them out, after the
/// view has given the terminal back.
pub fn hold_stderr(held: bool) {
    let pending = Stream::Stderr.pending();
    pending.lock().held = held;
    if !held {
        pending.arrived.notify_one();
    }
}

/// Waits until every queued line of both streams is written, for at most
/// `limit` in all (a stream may be stuck for good). Call before the process
/// exits.
pub fn flush(limit: Duration) {
    let deadline = Instant::now() + limit;
    for stream in [Stream::Stdout, Stream::Stderr] {
        if let Some(pending) = stream.cell().get() {
            pending.wait_written(deadline);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

static STDOUT: OnceLock<&'static Pending> = OnceLock::new();
static STDERR: OnceLock<&'static Pending> = OnceLock::new();

impl Stream {
    fn cell(self) -> &'static OnceLock<&'static Pending> {
        match self {
            Stream::Stdout => &STDOUT,
            Stream::Stderr => &STDERR,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    /// Writes a batch, after the note on lines dropped before it, if any.
    fn write_batch(self, dropped: u64, batch: &[u8]) {
        // A closed stream (piped into `head`) must not kill the tunnel:
        // errors are ignored, and the lines are gone either way.
        let name = self.name();
        let _ = match self {
            Stream::Stdout => write_batch(&mut std::io::stdout().lock(), name, dropped, batch),
            Stream::Stderr => write_batch(&mut std::io::stderr().lock(), name, dropped, batch),
        };
    }

    /// The stream's buffer, its writing thread started on first use.
    fn pending(self) -> &'static Pending {
        self.cell().get_or_init(|| {
            let pending: &'static Pending = Box::leak(Box::new(Pending::default()));
            let started = std::thread::Builder::new()
                .name(self.name().into())
                .spawn(move || write_out(self, pending));
            if let Err(err) = started {
                // Said once, straight out: there is no other way to say it.
                eprintln!(
                    "warning: no {} writer thread ({err}); lines are lost",
                    self.name()
                );
            }
            pending
        })
    }
}

/// The lines of one stream not written yet, shared with its writing thread.
#[derive(Default)]
struct Pending {
    state: Mutex<State>,
    /// Wakes the writer: lines arrived while it was waiting for some.
    arrived: Condvar,
    /// Wakes [`flush`]: the writer finished a batch.
    written: Condvar,
}

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    dropped: u64,
    /// The writer waits on `arrived` (only then does a line wake it).
    waiting: bool,
    /// The writer holds a batch it has not finished writing.
    writing: bool,
    /// Lines wait, whatever is queued ([`hold_stderr`]).
    held: bool,
}

impl Pending {
    /// Queues the concatenation of `parts`, or counts it as dropped when
    /// the buffer has no room for it.
    fn push(&self, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut state = self.lock();
        if state.buf.len() + len > MAX_PENDING {
            state.dropped += 1;
            return;
        }
        for part in parts {
            state.buf.extend_from_slice(part);
        }
        let wake = std::mem::take(&mut state.waiting);
        drop(state);
        if wake {
            self.arrived.notify_one();
        }
    }

    fn wait_written(&self, deadline: Instant) {
        let mut state = self.lock();
        while !state.buf.is_empty() || state.writing {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return;
            };
            state = match self.written.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writing thread: takes whatever is queued and writes it in one go,
/// then gathers for a moment before the next.
fn write_out(stream: Stream, pending: &'static Pending) {
    loop {
        let mut state = pending.lock();
        state.writing = false;
        pending.written.notify_all();
        while state.buf.is_empty() || state.held {
            state.waiting = true;
            state = match pending.arrived.wait(state) {
                Ok(state) => state,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
        state.waiting = false;
        let batch = std::mem::take(&mut state.buf);
        let dropped = std::mem::take(&mut state.dropped);
        state.writing = true;
        drop(state);
        stream.write_batch(dropped, &batch);
        std::thread::sleep(GATHER);
    }
}

/// `batch` to `out`, after a note saying how many lines were dropped
/// before it (when any were): more waited for stream `name` than the
/// buffer holds, because nobody read it or the live view held it.
fn write_batch(
    out: &mut impl Write,
    name: &str,
    dropped: u64,
    batch: &[u8],
) -> std::io::Result<()> {
    if dropped > 0 {
        writeln!(out, "({dropped} lines dropped: too many waited for {name})")?;
    }
    out.write_all(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_beyond_the_bound_are_dropped_and_counted() {
        // No writing thread drains this one.
        let pending = Pending::default();
        pending.lock().buf.resize(MAX_PENDING - 4, b'x');
        pending.push(&[b"abc", b"\n"]);
        pending.push(&[b"d\n"]);
        let state = pending.lock();
        assert_eq!((state.buf.len(), state.dropped), (MAX_PENDING, 1));
        assert!(state.buf.ends_with(b"abc\n"));
    }

    #[test]
    fn the_next_batch_says_how_many_lines_were_dropped_before_it() {
        let mut out = Vec::new();
        write_batch(&mut out, "stdout", 3, b"next\n").unwrap();
        write_batch(&mut out, "stdout", 0, b"then\n").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "(3 lines dropped: too many waited for stdout)\nnext\nthen\n"
        );
    }

    #[test]
    fn only_a_waiting_writer_is_woken() {
        let pending = Pending::default();
        pending.push(&[b"a\n"]);
        assert!(!pending.lock().waiting);
        pending.lock().waiting = true;
        pending.push(&[b"b\n"]);
        let state = pending.lock();
        assert!(!state.waiting, "the push woke the writer");
        assert_eq!(state.buf, b"a\nb\n");
    }
}
