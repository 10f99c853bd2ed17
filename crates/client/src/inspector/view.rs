//! Exchanges as JSON for the page and for scripts: a summary per list row,
//! and the whole exchange with its bodies shown as text, or as a hex dump
//! when they are binary.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Value, json};

use super::{BodyState, Captured, Entry, Record};

/// The row for the list: enough to show and sort, no bodies.
pub(crate) fn summary(entry: &Entry) -> Value {
    summary_of(entry, &entry.lock())
}

fn summary_of(entry: &Entry, record: &Record) -> Value {
    let status = match (&record.finished, &record.response) {
        (Some(finished), _) if finished.status != 0 => Some(finished.status),
        (_, Some(head)) => Some(head.status),
        _ => None,
    };
    json!({
        "id": entry.id,
        "replay_of": entry.replay_of,
        "tunnel": &*entry.via.tunnel,
        "target": entry.via.target.to_string(),
        "started": rfc3339(entry.started),
        "method": record.method,
        "path": record.path,
        "status": status,
        "state": state(record),
        "error": record.finished.as_ref().and_then(|f| f.error.clone()),
        "duration_ms": record.response.as_ref().map(|r| millis(r.after)),
        "total_ms": record.finished.as_ref().map(|f| millis(f.total)),
        "request_size": record.request_body.size,
        "response_size": record.response_body.size,
        "content_type": record.response.as_ref().and_then(|r| header(&r.headers, "content-type")),
    })
}

/// The whole exchange: the summary, both heads and both bodies.
pub(crate) fn detail(entry: &Entry, max_body: usize) -> Value {
    let record = entry.lock();
    let mut value = summary_of(entry, &record);
    let response = record.response.as_ref();
    value["replay"] = match replay_refusal(&record) {
        None => json!({ "allowed": true }),
        Some(why) => json!({ "allowed": false, "reason": why }),
    };
    value["upgraded"] = json!(record.upgraded);
    value["request"] = json!({
        "headers": record.request_headers,
        "body": body(&record.request_body, &record.request_headers, max_body),
    });
    value["response"] = match response {
        None => Value::Null,
        Some(head) => json!({
            "status": head.status,
            "headers": head.headers,
            "body": body(&record.response_body, &head.headers, max_body),
        }),
    };
    value
}

/// Why this exchange's request cannot be sent again, if it cannot.
pub(crate) fn replay_refusal(record: &Record) -> Option<String> {
    let body = &record.request_body;
    if record.upgraded {
        return Some("a protocol switch (WebSocket) cannot be replayed".into());
    }
    if body.truncated() {
        return Some(format!(
            "the request body ({} bytes) was larger than the {} bytes the inspector keeps, so it cannot be sent again",
            body.size,
            body.bytes.len()
        ));
    }
    match &body.state {
        BodyState::Complete => None,
        BodyState::Streaming => {
            Some("the request body has not been received completely yet".into())
        }
        BodyState::Failed(err) => Some(format!("the request body failed: {err}")),
        BodyState::Abandoned => Some(format!(
            "the local service answered without reading the whole request body \
             (the inspector saw {} bytes of it), so it is not known whole",
            body.size
        )),
    }
}

/// `waiting` (no response yet), `receiving` (response body passing),
/// `done` or `failed`.
fn state(record: &Record) -> &'static str {
    match (&record.finished, &record.response) {
        (Some(finished), _) if finished.error.is_some() => "failed",
        (Some(_), _) => "done",
        (None, Some(_)) => "receiving",
        (None, None) => "waiting",
    }
}

fn body(captured: &Captured, headers: &[(String, String)], max_body: usize) -> Value {
    let bytes = &captured.bytes[..];
    let truncated = captured.truncated();
    let mut value = json!({
        "size": captured.size,
        "captured": bytes.len(),
        "truncated": truncated,
        "state": match captured.state {
            BodyState::Streaming => "streaming",
            BodyState::Complete => "complete",
            BodyState::Failed(_) => "failed",
            BodyState::Abandoned => "abandoned",
        },
        "content_type": header(headers, "content-type"),
        // The reader stopped early; the rest was read on from the visitor.
        "drained": captured.drained,
    });
    if let BodyState::Failed(err) = &captured.state {
        value["error"] = json!(err);
    }
    if truncated {
        value["note"] = json!(format!(
            "truncated: showing the first {} of {} bytes (the inspector keeps {max_body} bytes of each body)",
            bytes.len(),
            captured.size
        ));
    }
    match as_text(bytes, truncated) {
        _ if bytes.is_empty() => value["kind"] = json!("empty"),
        Some(text) => {
            value["kind"] = json!("text");
            value["text"] = json!(text);
        }
        None => {
            value["kind"] = json!("binary");
            value["hexdump"] = json!(hexdump(bytes));
            value["base64"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
        }
    }
    value
}

/// The bytes as text, if they are UTF-8 without control characters other
/// than whitespace and escape. A truncated body may end mid-character.
pub(crate) fn as_text(bytes: &[u8], truncated: bool) -> Option<&str> {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) if truncated && err.error_len().is_none() => {
            std::str::from_utf8(&bytes[..err.valid_up_to()]).ok()?
        }
        Err(_) => return None,
    };
    let printable = text
        .chars()
        .all(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r' | '\x0c' | '\x1b'));
    printable.then_some(text)
}

/// The classic hex dump: offset, 16 bytes in hex, and their ASCII.
pub(crate) fn hexdump(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(16) * 78);
    for (line, chunk) in bytes.chunks(16).enumerate() {
        let _ = write!(out, "{:08x}  ", line * 16);
        for i in 0..16 {
            match chunk.get(i) {
                Some(b) => {
                    let _ = write!(out, "{b:02x} ");
                }
                None => out.push_str("   "),
            }
            if i == 7 {
                out.push(' ');
            }
        }
        out.push_str(" |");
        out.extend(chunk.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        }));
        out.push_str("|\n");
    }
    out
}

/// The first value of header `name` (lowercase), as text.
pub(crate) fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

pub(crate) fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `2024-05-01T12:34:56.789Z`, as HAR and JavaScript's `Date` expect.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`), to avoid a date library for one timestamp format.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn text_or_binary() {
        assert_eq!(as_text(b"hello\n\tworld", false), Some("hello\n\tworld"));
        assert_eq!(as_text(b"a\0b", false), None);
        assert_eq!(as_text(&[0xff, 0xfe], false), None);
        // "é" cut after its first byte: text when truncated, not otherwise.
        assert_eq!(as_text(b"caf\xc3", true), Some("caf"));
        assert_eq!(as_text(b"caf\xc3", false), None);
    }

    #[test]
    fn hex_dump_lines() {
        let dump = hexdump(b"\x00\x01ABCDEFGHIJKLMNOPQ");
        let lines: Vec<&str> = dump.lines().collect();
        assert_eq!(
            lines[0],
            "00000000  00 01 41 42 43 44 45 46  47 48 49 4a 4b 4c 4d 4e  |..ABCDEFGHIJKLMN|"
        );
        assert_eq!(
            lines[1],
            "00000010  4f 50 51                                          |OPQ|"
        );
    }
}
