//! The live status view: what `cryptun http`, `cryptun start` and
//! `cryptun demo` show when
//! stdout is a terminal, redrawn in place as ngrok's is — session status,
//! version, server, inspector, one "Forwarding" line per tunnel, connection
//! statistics and the last requests. Without a terminal (or with `--json`
//! or `--log-format json`) the plain lines of `output` are printed instead.
//!
//! # Layout
//!
//! - [`state`]: the data shown, updated from the client's [`Event`]s:
//!   counters, rates, percentiles over a bounded window, a ring of recent
//!   requests. Pure.
//! - [`render`]: state and terminal size to lines. Pure.
//! - [`term`]: the alternate screen, drawing a frame, restoring the
//!   terminal. The only part that does I/O.
//! - This file: the wiring. Events update the state under a lock and wake
//!   the redraw task, which renders at most [`FRAMES_PER_SECOND`] times a
//!   second (also on a resize and once a second, as rates slide) and draws
//!   only a frame that differs from the last.

pub mod render;
pub mod state;
pub mod term;

#[cfg(test)]
mod render_tests;
#[cfg(test)]
mod state_tests;

use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use cryptun_client::{Event, Events};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use state::State;
pub use state::{Header, Tunnel};
use term::Screen;

/// Frames drawn per second at most: smooth enough to watch, cheap under a
/// flood of requests (a burst between two frames costs one redraw).
const FRAMES_PER_SECOND: u32 = 5;

/// How often the view is rendered without events: rates slide and the
/// reconnect countdown ticks.
const TICK: Duration = Duration::from_secs(1);

/// Whether the view should be shown: stdout is a terminal that understands
/// cursor movement, and the output is not meant for a machine.
pub fn wanted(for_machines: bool) -> bool {
    !for_machines
        && std::io::stdout().is_terminal()
        && std::env::var_os("TERM").is_none_or(|term| term != "dumb")
}

/// The view while it is up. Dropping it stops the redrawing and restores
/// the terminal (cursor shown, alternate screen left).
pub struct Live {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    state: Mutex<State>,
    changed: Notify,
    screen: Mutex<Screen>,
}

impl Live {
    /// Takes over the terminal and shows `tunnels`.
    pub fn start(header: Header, tunnels: Vec<Tunnel>) -> std::io::Result<Live> {
        let screen = Screen::enter()?;
        if std::io::stderr().is_terminal() {
            // Log lines would be drawn over the view: they wait for its end.
            crate::lines::hold_stderr(true);
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(header, tunnels, Instant::now())),
            changed: Notify::new(),
            screen: Mutex::new(screen),
        });
        let task = tokio::spawn(redraw(Arc::clone(&shared)));
        Ok(Live { shared, task })
    }

    /// The sink for the client's events: each updates the view.
    pub fn events(&self) -> Events {
        let shared = Arc::clone(&self.shared);
        Events::to(move |event: Event| {
            lock(&shared.state).apply(event, Instant::now(), SystemTime::now());
            shared.changed.notify_one();
        })
    }

    /// Restores the terminal and leaves on it the last frame, showing the
    /// session offline for `why`.
    pub fn finish(self, why: &str) {
        self.task.abort();
        let mut state = lock(&self.shared.state);
        state.offline(why);
        let (width, height) = term::size();
        let lines = render::render(&state, Instant::now(), width, height);
        lock(&self.shared.screen).leave_showing(&lines);
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.task.abort();
        lock(&self.shared.screen).leave();
        crate::lines::hold_stderr(false);
    }
}

/// Renders on every change, resize and tick, at most
/// [`FRAMES_PER_SECOND`] times a second, and draws what differs from the
/// last frame. Ends if the terminal cannot be written.
async fn redraw(shared: Arc<Shared>) {
    let mut resized = Resized::new();
    // The title row spans the width: a resize changes the frame too.
    let mut last: Vec<String> = Vec::new();
    loop {
        let (width, height) = term::size();
        let lines = render::render(&lock(&shared.state), Instant::now(), width, height);
        if lines != last {
            if lock(&shared.screen).draw(&lines, height).is_err() {
                return;
            }
            last = lines;
        }
        tokio::select! {
            () = shared.changed.notified() => {}
            () = resized.recv() => {}
            () = tokio::time::sleep(TICK) => {}
        }
        tokio::time::sleep(Duration::from_secs(1) / FRAMES_PER_SECOND).await;
    }
}

/// Notices the terminal being resized (SIGWINCH). Elsewhere, or if the
/// signal cannot be caught, the once-a-second tick notices instead.
struct Resized(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

impl Resized {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Resized(signal(SignalKind::window_change()).ok())
        }
        #[cfg(not(unix))]
        Resized()
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = &mut self.0 {
            if signal.recv().await.is_some() {
                return;
            }
            self.0 = None;
        }
        std::future::pending::<()>().await;
    }
}

/// A lock that a panic elsewhere does not make unusable: the view's data
/// is always in a drawable state.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
