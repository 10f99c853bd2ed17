//! The status view as text: a [`State`] and the terminal's size in, the
//! lines to show out, each at most `width` characters and at most `height`
//! of them. Pure, so that every layout can be tested without a terminal.
//!
//! The layout follows ngrok's, which people already know how to read:
//!
//! ```text
//! cryptun                                              (Ctrl+C to quit)
//!
//! Session Status    online
//! Version           0.1.0
//! Server            http://127.0.0.1:4000
//! Web Interface     http://127.0.0.1:4040
//! Forwarding        http://tunnel-ab12.localhost:4000 -> http://127.0.0.1:3000
//!
//! Connections       ttl     opn     rt1     rt5     p50     p90
//!                   2       0       0.03    0.01    1.2ms   3.4ms
//!
//! HTTP Requests (times in UTC)
//! ----------------------------
//! 12:03:21  GET     /hello          200    1.2ms
//! 12:03:20  POST    /api/items      201    3.4ms
//! ```
//!
//! Widths count characters, not display columns: everything shown is ASCII
//! (URLs, methods, paths as sent on the wire) except error messages, which
//! are English.

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::state::{Connection, Request, State};

/// Width of the label column ("Session Status    ").
const LABEL: usize = 18;
/// Width of each statistics column.
const STAT: usize = 8;

/// The lines of the view for a `width` x `height` terminal at `now`.
pub fn render(state: &State, now: Instant, width: usize, height: usize) -> Vec<String> {
    if width == 0 || height == 0 {
        return Vec::new();
    }
    let mut lines = header(state, now, width);
    let room = height.saturating_sub(lines.len());
    // With several tunnels, each request line says which one served it.
    let tunnel_width = (state.tunnels.len() > 1).then(|| {
        let names = state.tunnels.iter();
        let names = names.map(|t| t.name.as_deref().unwrap_or(&t.subdomain).chars().count());
        names.max().unwrap_or(0)
    });
    lines.extend(requests(
        state.recent.iter().take(room),
        width,
        tunnel_width,
    ));
    lines.truncate(height);
    lines.iter().map(|line| fit(line, width)).collect()
}

/// Everything above the request list.
fn header(state: &State, now: Instant, width: usize) -> Vec<String> {
    let quit = "(Ctrl+C to quit)";
    let title = "cryptun";
    let gap = width.saturating_sub(title.len() + quit.len()).max(1);
    let mut lines = vec![format!("{title}{}{quit}", " ".repeat(gap)), String::new()];
    let h = &state.header;
    let (status, why) = session(&state.connection, now);
    lines.push(labelled("Session Status", &status));
    if let Some(why) = why {
        // On a line of its own: errors are long, and cut is fine only
        // at their end.
        lines.push(labelled("", why));
    }
    lines.push(labelled("Version", &h.version));
    lines.push(labelled("Server", &h.server));
    if let Some(url) = &h.inspector {
        lines.push(labelled("Web Interface", url));
    }
    let names = state.tunnels.iter().filter_map(|t| t.name.as_deref());
    let name_width = names.map(|n| n.chars().count()).max();
    for tunnel in &state.tunnels {
        let name = match name_width {
            Some(w) => format!("{:<w$}  ", tunnel.name.as_deref().unwrap_or("")),
            None => String::new(),
        };
        let line = format!("{name}{} -> {}", tunnel.public_url, tunnel.target);
        lines.push(labelled("Forwarding", &line));
    }
    for (label, value) in &h.hints {
        lines.push(labelled(label, value));
    }
    lines.push(String::new());
    let s = &state.stats;
    let [p50, p90] = s.percentiles([0.5, 0.9]);
    let columns = ["ttl", "opn", "rt1", "rt5", "p50", "p90"].map(str::to_owned);
    let values = [
        s.total().to_string(),
        s.open().to_string(),
        format!("{:.2}", s.rate1(now)),
        format!("{:.2}", s.rate5(now)),
        p50.map_or("-".into(), duration),
        p90.map_or("-".into(), duration),
    ];
    lines.push(labelled("Connections", &row(&columns)));
    lines.push(labelled("", &row(&values)));
    lines.push(String::new());
    let title = "HTTP Requests (times in UTC)";
    lines.push(title.into());
    lines.push("-".repeat(title.len().min(width)));
    lines
}

/// What "Session Status" says, and why when it is not online.
fn session(connection: &Connection, now: Instant) -> (String, Option<&str>) {
    match connection {
        Connection::Online => ("online".into(), None),
        Connection::Reconnecting {
            attempt,
            retry_at,
            error,
        } => {
            let left = retry_at.saturating_duration_since(now);
            let when = if left.is_zero() {
                "trying now".to_owned()
            } else {
                // Whole seconds, rounded up: "in 0s" would read as "now".
                let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                format!("next try in {secs}s")
            };
            let status = format!("reconnecting (attempt {attempt}, {when})");
            (status, Some(error))
        }
        Connection::Offline { why } => ("offline".into(), Some(why)),
    }
}

/// `label` padded to the label column, then `value`.
fn labelled(label: &str, value: &str) -> String {
    format!("{label:<LABEL$}{value}")
}

/// Statistics columns, each [`STAT`] wide (the last unpadded).
fn row(cells: &[String]) -> String {
    let mut out = String::new();
    for (i, cell) in cells.iter().enumerate() {
        if i + 1 == cells.len() {
            out.push_str(cell);
        } else {
            let _ = write!(out, "{cell:<STAT$}");
        }
    }
    out
}

/// One line per request, the path column as wide as the longest path shown
/// allows within `width`; with a `tunnel_width`, the tunnel's name first.
fn requests<'a>(
    shown: impl Iterator<Item = &'a Request>,
    width: usize,
    tunnel_width: Option<usize>,
) -> Vec<String> {
    let shown: Vec<&Request> = shown.collect();
    let tunnel = tunnel_width.map_or(0, |w| w + 2);
    // time(8) + 2 + [tunnel + 2] + method(7) + 1 + path + 2 + status(3) + 2 + duration(8)
    let fixed = 8 + 2 + tunnel + 7 + 1 + 2 + 3 + 2 + 8;
    let longest = shown.iter().map(|r| r.done.path.chars().count()).max();
    let path_width = longest.unwrap_or(0).min(width.saturating_sub(fixed)).max(4);
    shown
        .iter()
        .map(|r| {
            let (at, r) = (r.at, &r.done);
            let status = match r.status {
                0 => "---".to_owned(),
                status => status.to_string(),
            };
            let name = tunnel_width.map_or(String::new(), |w| pad(&r.tunnel, w) + "  ");
            let mut line = format!(
                "{}  {name}{:<7} {}  {status:>3}  {:>8}",
                clock(at),
                fit(&r.method, 7),
                pad(&r.path, path_width),
                duration(r.duration),
            );
            // The error where room is left: cutting the line itself would
            // cut the duration.
            let room = width.saturating_sub(line.chars().count() + 2);
            if let Some(error) = r.error.as_deref().filter(|_| room > 0) {
                let _ = write!(line, "  {}", fit(error, room));
            }
            line
        })
        .collect()
}

/// `HH:MM:SS` in UTC. (The local offset is not safely readable from a
/// multi-threaded process without a time zone database; UTC is at least
/// unambiguous, and the list's title says so.)
fn clock(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// A duration in a few characters: `0.42ms`, `12.3ms`, `1.25s`, `130s`.
pub fn duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1.0 {
        format!("{ms:.2}ms")
    } else if ms < 1000.0 {
        format!("{ms:.1}ms")
    } else if ms < 100_000.0 {
        format!("{:.2}s", ms / 1000.0)
    } else {
        format!("{:.0}s", ms / 1000.0)
    }
}

/// `text` made safe for a terminal and cut to `width` characters, ending in
/// `…` when cut. Control characters (escape sequences from a server's error
/// message, a newline) become `?`: nothing shown can move the cursor.
pub fn fit(text: &str, width: usize) -> String {
    let clean = text.chars().map(|c| if c.is_control() { '?' } else { c });
    if text.chars().count() <= width {
        return clean.collect();
    }
    let mut cut: String = clean.take(width.saturating_sub(1)).collect();
    if width > 0 {
        cut.push('…');
    }
    cut
}

/// [`fit`], then padded with spaces to exactly `width` characters.
fn pad(text: &str, width: usize) -> String {
    let fitted = fit(text, width);
    let len = fitted.chars().count();
    fitted + &" ".repeat(width - len.min(width))
}
