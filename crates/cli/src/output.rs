//! What the client prints: on a terminal, the live status view (see
//! `status`); otherwise a line per request as ngrok does, or JSON lines,
//! on stdout, and what the connection is doing (lost, reconnecting, back)
//! on stderr, and also on stdout as JSON lines with `--json`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cryptun_client::{ConnectionDone, Endpoint, Event, Events, RequestDone, TunnelCreated};

use crate::lines;
use crate::status::{self, Header, Live, Tunnel};

/// A tunnel as shown: its name in the config file (`cryptun start`), the
/// server's answer, and the target shown for it.
pub type Shown<'a> = (Option<&'a str>, &'a TunnelCreated, &'a str);

/// Shows `tunnels`, the `server` they are served on and the inspector: in
/// the live status view when stdout is a terminal and the output is for
/// people, else as lines (each request line starting with its tunnel's
/// name when the tunnels have names). Returns the view, to [`finish`] at
/// the end, and where the client's events go.
pub fn show(
    server: &Endpoint,
    tunnels: &[Shown<'_>],
    inspector: Option<&str>,
    json: bool,
    json_logs: bool,
) -> (Option<Live>, Events) {
    let header = Header::new(&server.to_string(), inspector);
    let shown = tunnels
        .iter()
        .map(|(name, created, target)| Tunnel::new(name.map(str::to_owned), created, target))
        .collect();
    if let Some((view, events)) = live(header, shown, json || json_logs) {
        return (Some(view), events);
    }
    for (name, created, target) in tunnels {
        let mut line = tunnel_json("tunnel_created", created, server);
        match name {
            Some(name) if json => {
                line["name"] = (*name).into();
                line["target"] = (*target).into();
                lines::print(&line.to_string());
            }
            None if json => lines::print(&line.to_string()),
            Some(name) => {
                let url = &created.public_url;
                lines::print(&format!("Forwarding  {name:<12} {url} -> {target}"));
            }
            None => lines::print(&format!("Forwarding  {} -> {target}", created.public_url)),
        }
    }
    if let Some(url) = inspector {
        self::inspector(url, json);
    }
    if !json {
        lines::print(&format!("Server      {server}"));
    }
    let named = tunnels.iter().any(|(name, ..)| name.is_some());
    (None, events(json, json_logs, named, server))
}

/// What `cryptun demo` shows: the status view with lines to try, or the
/// same as a banner above the request lines.
pub fn demo(
    addr: std::net::SocketAddr,
    tunnel: &TunnelCreated,
    inspector: Option<&str>,
    json_logs: bool,
) -> (Option<Live>, Events) {
    let url = &tunnel.public_url;
    let port = addr.port();
    let tries = [
        ("Try", format!("curl {url}/hello")),
        (
            "or",
            format!(
                "curl -H 'Host: {}.localhost:{port}' http://{addr}/hello",
                tunnel.subdomain
            ),
        ),
        ("Tunnels", format!("curl http://{addr}/api/tunnels")),
        ("Dashboard", format!("http://{addr}/dashboard")),
    ];
    let mut header = Header::new(&format!("http://{addr} (in this process)"), inspector);
    header.hints = tries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let shown = vec![Tunnel::new(None, tunnel, "built-in hello page")];
    if let Some((view, events)) = live(header, shown, json_logs) {
        return (Some(view), events);
    }
    lines::print("Cryptun demo: server, hello service and client are running.\n");
    lines::print(&format!("  Public URL  {url}"));
    for (label, line) in &tries {
        lines::print(&format!("  {label:<10}  {line}"));
    }
    if let Some(url) = inspector {
        lines::print(&format!("  Inspector   {url}"));
    }
    lines::print("\nRequests appear below. Press Ctrl-C to stop.");
    let server = Endpoint {
        url: format!("ws://{addr}/ws"),
        addr: Some(addr),
    };
    (None, events(false, json_logs, false, &server))
}

/// The live status view and the events that feed it, if stdout is a
/// terminal and the output is not `for_machines`; `None` means plain lines.
/// A terminal that cannot be set up gets plain lines too, with a warning.
fn live(header: Header, tunnels: Vec<Tunnel>, for_machines: bool) -> Option<(Live, Events)> {
    if !status::wanted(for_machines) {
        return None;
    }
    let view = Live::start(header, tunnels)
        .inspect_err(|err| {
            lines::eprint(&format!(
                "warning: no live status view ({err}); printing lines"
            ))
        })
        .ok()?;
    let events = view.events();
    Some((view, events))
}

/// Ends the live view, if there is one, showing why the session ended.
pub fn finish(view: Option<Live>, error: Option<&impl std::fmt::Display>) {
    if let Some(view) = view {
        view.finish(&error.map_or_else(|| "stopped".to_owned(), ToString::to_string));
    }
}

/// Prints where the request inspector is.
fn inspector(url: &str, json: bool) {
    if json {
        let line = serde_json::json!({ "type": "inspector", "url": url });
        lines::print(&line.to_string());
    } else {
        lines::print(&format!("Inspector   {url}"));
    }
}

/// An event sink printing one line per request to stdout (each plain line
/// starting with its tunnel's name when `named`: a session of several
/// tunnels), and the connection's ups and downs to stderr: plain lines, or
/// log records when the logs are JSON (`json_logs`). `server` is the one
/// connected to, until a reconnect says another.
fn events(json: bool, json_logs: bool, named: bool, server: &Endpoint) -> Events {
    let server = Arc::new(Mutex::new(server.clone()));
    Events::to(move |event| match event {
        // One line per request, when it ends.
        Event::RequestStarted => {}
        Event::Request(done) => lines::print(&request_line(&done, None, json, named)),
        Event::Connection(done) => lines::print(&connection_line(&done, json, named)),
        // A replay from the inspector: the request's line, marked.
        Event::Replayed { of, done } => lines::print(&request_line(&done, Some(of), json, named)),
        Event::Disconnected {
            error,
            retry_in,
            attempt,
        } => disconnected(&error, retry_in, attempt, json, json_logs),
        Event::Connected { server: now } => {
            connected(&now, json_logs);
            *server.lock().unwrap_or_else(|e| e.into_inner()) = now;
        }
        Event::Reconnected { tunnel } => {
            let server = server.lock().unwrap_or_else(|e| e.into_inner()).clone();
            reconnected(&tunnel, &server, json, json_logs);
        }
    })
}

/// The line for `done` (JSON, or text with the tunnel's name first when
/// several are named), marked as a replay of request `of` if it is one.
fn request_line(done: &RequestDone, replay_of: Option<u64>, json: bool, named: bool) -> String {
    if json {
        return request_json(std::time::SystemTime::now(), done, replay_of);
    }
    let ms = done.duration.as_secs_f64() * 1000.0;
    let error = done.error.as_deref();
    let mut line = request_text(&done.method, &done.path, done.status, ms, error);
    if let Some(of) = replay_of {
        line = format!("{line}  (replay of #{of})");
    }
    if named {
        format!("{:<12} {line}", done.tunnel)
    } else {
        line
    }
}

/// A finished request as a JSON line (`duration_ms` to the microsecond),
/// stamped with the time it ended, `at`: RFC 3339 UTC to the millisecond,
/// as a log shipper parses the server's JSON logs. A replay's says
/// `"type": "replay"` and the inspector's id of the exchange replayed in
/// `replay_of`.
fn request_json(at: std::time::SystemTime, done: &RequestDone, replay_of: Option<u64>) -> String {
    /// The line's fields, in the order the README gives them. Written
    /// straight from the request (a JSON value built first cost the client
    /// 14,000 instructions per request, docs/BENCHMARKS.md).
    #[derive(serde::Serialize)]
    struct Line<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(serialize_with = "as_text")]
        timestamp: humantime::Rfc3339Timestamp,
        tunnel: &'a str,
        method: &'a str,
        path: &'a str,
        status: u16,
        duration_ms: f64,
        error: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        replay_of: Option<u64>,
    }
    fn as_text<S: serde::Serializer>(
        value: &humantime::Rfc3339Timestamp,
        to: S,
    ) -> Result<S::Ok, S::Error> {
        to.collect_str(value)
    }
    let ms = done.duration.as_secs_f64() * 1000.0;
    let line = Line {
        kind: if replay_of.is_some() {
            "replay"
        } else {
            "request"
        },
        timestamp: humantime::format_rfc3339_millis(at),
        tunnel: &done.tunnel,
        method: &done.method,
        path: &done.path,
        status: done.status,
        duration_ms: (ms * 1000.0).round() / 1000.0,
        error: done.error.as_deref(),
        replay_of,
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// A TCP tunnel's finished connection: a JSON line (the README's keys, in
/// its order), or text with the tunnel's name first when several are named.
fn connection_line(done: &ConnectionDone, json: bool, named: bool) -> String {
    let ms = done.duration.as_secs_f64() * 1000.0;
    if json {
        #[derive(serde::Serialize)]
        struct Line<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            timestamp: String,
            tunnel: &'a str,
            remote_addr: String,
            bytes_in: u64,
            bytes_out: u64,
            duration_ms: f64,
            error: Option<&'a str>,
        }
        let line = Line {
            kind: "connection",
            timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            tunnel: &done.tunnel,
            remote_addr: done.remote_addr.to_string(),
            bytes_in: done.bytes_in,
            bytes_out: done.bytes_out,
            duration_ms: (ms * 1000.0).round() / 1000.0,
            error: done.error.as_deref(),
        };
        return serde_json::to_string(&line).unwrap_or_default();
    }
    let mut line = format!(
        "TCP     {:<40} in {} B, out {} B {ms:>8.1}ms",
        done.remote_addr, done.bytes_in, done.bytes_out
    );
    if let Some(error) = &done.error {
        line = format!("{line}  {error}");
    }
    if named {
        format!("{:<12} {line}", done.tunnel)
    } else {
        line
    }
}

/// A finished request as a plain line: `---` for the status of a request
/// whose visitor went away first.
fn request_text(method: &str, path: &str, status: u16, ms: f64, error: Option<&str>) -> String {
    let status = if status == 0 {
        "---".to_owned()
    } else {
        status.to_string()
    };
    match error {
        Some(error) => format!("{method:<7} {path:<40} {status} {ms:>8.1}ms  {error}"),
        None => format!("{method:<7} {path:<40} {status} {ms:>8.1}ms"),
    }
}

/// The connection was lost, or a reconnect failed: a line on stderr (a log
/// record with `json_logs`), and a JSON line on stdout with `json`.
fn disconnected(error: &str, retry_in: Duration, attempt: u32, json: bool, json_logs: bool) {
    let secs = retry_in.as_secs_f64();
    if json_logs {
        let retry_in_ms = retry_in.as_millis() as u64;
        tracing::warn!(%error, retry_in_ms, attempt, "connection lost; reconnecting");
    } else if attempt <= 1 {
        lines::eprint(&format!(
            "connection lost: {error}; reconnecting in {secs:.1}s"
        ));
    } else {
        lines::eprint(&format!(
            "reconnect failed: {error}; retrying in {secs:.1}s"
        ));
    }
    if json {
        let line = serde_json::json!({
            "type": "disconnected",
            "error": error,
            "retry_in_ms": retry_in.as_millis() as u64,
            "attempt": attempt,
        });
        lines::print(&line.to_string());
    }
}

/// A reconnect reached `server`: a line on stderr (a log record with
/// `json_logs`); the JSON lines of its tunnels name it.
fn connected(server: &Endpoint, json_logs: bool) {
    if json_logs {
        tracing::warn!(%server, "connected");
    } else {
        lines::eprint(&format!("connected to {server}"));
    }
}

/// A tunnel is served again after a reconnect, on `server`: a line on
/// stderr (a log record with `json_logs`), and a JSON line on stdout with
/// `json`.
fn reconnected(tunnel: &TunnelCreated, server: &Endpoint, json: bool, json_logs: bool) {
    if json_logs {
        tracing::warn!(public_url = %tunnel.public_url, "reconnected");
    } else {
        lines::eprint(&format!("reconnected: {}", tunnel.public_url));
    }
    if json {
        lines::print(&tunnel_json("reconnected", tunnel, server).to_string());
    }
}

/// A tunnel as a JSON object of type `kind`: the seed's `tunnel_created`
/// shape, with the server it is served on (`server`, as a `--server` URL,
/// and `server_addr`, the address connected to).
fn tunnel_json(kind: &str, tunnel: &TunnelCreated, server: &Endpoint) -> serde_json::Value {
    let mut line = serde_json::json!({
        "type": kind,
        "tunnel_id": tunnel.tunnel_id,
        "subdomain": tunnel.subdomain,
        "public_url": tunnel.public_url,
        "server": server.server(),
        "server_addr": server.addr.map(|a| a.to_string()),
    });
    // A TCP or TLS tunnel says so, and a TCP one which port it has.
    if !tunnel.protocol.is_http() {
        line["protocol"] = tunnel.protocol.wire_name().into();
    }
    if let Some(port) = tunnel.remote_port {
        line["remote_port"] = port.into();
    }
    if tunnel.pool {
        line["pool"] = true.into();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::{RequestDone, request_json, request_text};

    #[test]
    fn a_request_line_shows_its_status_or_dashes_and_its_error() {
        assert_eq!(
            request_text("GET", "/", 200, 1.5, None),
            format!("GET     {:<40} 200      1.5ms", "/")
        );
        assert_eq!(
            request_text("POST", "/up", 0, 10.0, Some("visitor went away")),
            format!("POST    {:<40} ---     10.0ms  visitor went away", "/up")
        );
    }

    #[test]
    fn a_request_json_line_rounds_the_duration_to_the_microsecond() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        let done = RequestDone {
            tunnel: "web".into(),
            method: "GET".into(),
            path: "/".into(),
            status: 502,
            duration: std::time::Duration::from_nanos(1_234_567),
            error: Some("refused".into()),
        };
        let text = request_json(at, &done, None);
        assert!(
            text.starts_with(r#"{"type":"request","timestamp":"2023-11-14T22:13:20.123Z","#),
            "{text}"
        );
        let line: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            line,
            serde_json::json!({
                "type": "request",
                "timestamp": "2023-11-14T22:13:20.123Z",
                "tunnel": "web",
                "method": "GET",
                "path": "/",
                "status": 502,
                "duration_ms": 1.235,
                "error": "refused",
            })
        );
        // A replay's line: the same, marked.
        let replay: serde_json::Value =
            serde_json::from_str(&request_json(at, &done, Some(7))).unwrap();
        assert_eq!(replay["type"], "replay");
        assert_eq!(replay["replay_of"], 7);
        assert_eq!(replay["path"], "/");
    }
}
