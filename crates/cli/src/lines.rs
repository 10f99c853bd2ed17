//! Standard output that never holds up the tunnel.
//!
//! The client prints a line per request. Written from the task that served
//! the request, a stdout nobody reads (`cryptun http 3000 | less`, paused;
//! a full pipe to a stuck log shipper) would block that task, then every
//! worker thread, then the whole tunnel. So lines go into a bounded buffer
//! and one thread of their own writes them out, in order, as fast as
//! stdout takes them: when it is busy, the lines that arrive meanwhile go
//! out together in one write. When the buffer is full, new lines are
//! dropped and counted, and a note says how many once stdout moves again.

use std::io::Write as _;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Most bytes waiting for stdout (about 5,000 request lines); beyond it
/// lines are dropped rather than held.
const MAX_PENDING: usize = 1 << 20;

/// The lines not written yet, shared with the writing thread.
struct Pending {
    state: Mutex<State>,
    /// Wakes the writer: lines arrived in an empty buffer.
    arrived: Condvar,
    /// Wakes [`flush`]: the writer finished a batch.
    written: Condvar,
}

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    dropped: u64,
    writing: bool,
}

static PENDING: OnceLock<&'static Pending> = OnceLock::new();

/// Queues `line` (a newline is added) for stdout, in order with every line
/// before it. Never blocks on stdout.
pub fn print(line: &str) {
    pending().push(line);
}

/// Waits until every queued line is written, for at most `limit` (stdout
/// may be stuck for good). Call before the process exits.
pub fn flush(limit: Duration) {
    let Some(pending) = PENDING.get() else {
        return;
    };
    let deadline = Instant::now() + limit;
    let mut state = pending.lock();
    while !state.buf.is_empty() || state.writing {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return;
        };
        state = match pending.written.wait_timeout(state, left) {
            Ok((state, _)) => state,
            Err(poisoned) => poisoned.into_inner().0,
        };
    }
}

fn pending() -> &'static Pending {
    PENDING.get_or_init(|| {
        let pending: &'static Pending = Box::leak(Box::new(Pending::new()));
        std::thread::Builder::new()
            .name("stdout".into())
            .spawn(move || write_out(pending))
            .map_err(|err| eprintln!("warning: no stdout writer thread ({err}); lines are lost"))
            .ok();
        pending
    })
}

impl Pending {
    fn new() -> Self {
        Pending {
            state: Mutex::new(State::default()),
            arrived: Condvar::new(),
            written: Condvar::new(),
        }
    }

    /// Queues `line`, or counts it as dropped when the buffer is full.
    fn push(&self, line: &str) {
        let mut state = self.lock();
        if state.buf.len() + line.len() + 1 > MAX_PENDING {
            state.dropped += 1;
            return;
        }
        // Only an empty buffer has the writer waiting; otherwise it takes
        // this line with the batch it is about to write (no wake-up per line).
        let was_empty = state.buf.is_empty();
        state.buf.extend_from_slice(line.as_bytes());
        state.buf.push(b'\n');
        drop(state);
        if was_empty {
            self.arrived.notify_one();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writing thread: takes whatever is queued and writes it in one go.
fn write_out(pending: &'static Pending) {
    let mut out = std::io::stdout();
    loop {
        let mut state = pending.lock();
        state.writing = false;
        pending.written.notify_all();
        while state.buf.is_empty() {
            state = match pending.arrived.wait(state) {
                Ok(state) => state,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
        let batch = std::mem::take(&mut state.buf);
        let dropped = std::mem::take(&mut state.dropped);
        state.writing = true;
        drop(state);
        if dropped > 0 {
            let note = format!("({dropped} lines dropped: stdout was not being read)\n");
            let _ = out.write_all(note.as_bytes());
        }
        // A closed stdout (piped into `head`) must not kill the tunnel:
        // errors are ignored, and the lines are gone either way.
        let _ = out.write_all(&batch);
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_beyond_the_bound_are_dropped_and_counted() {
        // No writing thread drains this one.
        let pending = Pending::new();
        pending.lock().buf.resize(MAX_PENDING - 4, b'x');
        pending.push("abc");
        pending.push("d");
        let state = pending.lock();
        assert_eq!((state.buf.len(), state.dropped), (MAX_PENDING, 1));
        assert!(state.buf.ends_with(b"abc\n"));
    }
}
