//! What the client prints: a line per request as ngrok does, or JSON lines.

use std::io::Write as _;

use cryptun_client::{Event, Events, TunnelCreated};

/// Prints the tunnel's announcement.
pub fn tunnel_created(tunnel: &TunnelCreated, target: &str, json: bool) {
    if json {
        let line = serde_json::json!({
            "type": "tunnel_created",
            "tunnel_id": tunnel.tunnel_id,
            "subdomain": tunnel.subdomain,
            "public_url": tunnel.public_url,
        });
        println_flush(&line.to_string());
    } else {
        println_flush(&format!("Forwarding  {} -> {target}", tunnel.public_url));
    }
}

/// Prints where the request inspector is.
pub fn inspector(url: &str, json: bool) {
    if json {
        let line = serde_json::json!({ "type": "inspector", "url": url });
        println_flush(&line.to_string());
    } else {
        println_flush(&format!("Inspector   {url}"));
    }
}

/// An event sink printing one line per request to stdout.
pub fn request_lines(json: bool) -> Events {
    Events::to(move |event| match event {
        Event::Request {
            method,
            path,
            status,
            duration,
            error,
        } => {
            let ms = duration.as_secs_f64() * 1000.0;
            let line = if json {
                serde_json::json!({
                    "type": "request",
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": (ms * 1000.0).round() / 1000.0,
                    "error": error,
                })
                .to_string()
            } else {
                let status = if status == 0 {
                    "---".to_owned()
                } else {
                    status.to_string()
                };
                match error {
                    Some(error) => format!("{method:<7} {path:<40} {status} {ms:>8.1}ms  {error}"),
                    None => format!("{method:<7} {path:<40} {status} {ms:>8.1}ms"),
                }
            };
            println_flush(&line);
        }
    })
}

fn println_flush(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (piped into `head`) must not kill the tunnel.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
