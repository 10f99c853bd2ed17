//! Log events as plain text lines, when stderr is not a terminal.
//!
//! The same line as `tracing-subscriber`'s default format without colours
//! (`TIMESTAMP  LEVEL span{fields}: target: message key=value ...`), written
//! without its per-field styling: with colours off, that format still runs
//! every field name, `=` and separator through an (empty) ANSI style, which
//! made the server's access log line, one per visitor request, about 19,000
//! instructions, a fifth of all the server spends on a small request
//! (docs/BENCHMARKS.md, "Issue 16: the data path"). Here a line costs a
//! timestamp and one formatting call per field.
//!
//! Values are written as that format writes them, so lines read and parse
//! the same: strings quoted and escaped (`tunnel="demo"`), `%` values bare
//! (`method=GET`), numbers and booleans as they are, and control characters
//! in the message escaped so that a message cannot move a terminal's cursor.
//! A terminal keeps `tracing-subscriber`'s format, in colour.
//!
//! The server's access log line, one per request, skips `tracing`'s field
//! machinery altogether ([`access_sink`]): the same text line (without the
//! connection's span, whose `peer` is the line's `visitor`) or JSON line,
//! formatted here from the line's fields and queued for stderr.

use std::fmt::{self, Write as _};
use std::sync::{Arc, OnceLock};

use cryptun_server::gateway::access_log::{AccessLine, AccessSink};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The plain text line format (see the module's documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainText;

impl<S, N> FormatEvent<S, N> for PlainText
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
        write!(writer, "{now} {} ", level(meta.level()))?;
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                writer.write_str(span.metadata().name())?;
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(writer, "{{{fields}}}")?;
                    }
                }
                writer.write_char(':')?;
                seen = true;
            }
            if seen {
                writer.write_char(' ')?;
            }
        }
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        let mut fields = Fields {
            out: &mut writer,
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// A level as the default format writes it: five wide, right-aligned.
fn level(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => " INFO",
        Level::WARN => " WARN",
        Level::ERROR => "ERROR",
    }
}

/// Writes an event's fields: the message bare, the rest `name=value`, one
/// space between each.
struct Fields<'w, 'a> {
    out: &'w mut Writer<'a>,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    /// The separator before a field, then its name and `=` unless it is
    /// the message.
    fn start(&mut self, field: &Field) -> fmt::Result {
        if !std::mem::replace(&mut self.first, false) {
            self.out.write_char(' ')?;
        }
        if field.name() != "message" {
            let name = field.name();
            self.out
                .write_str(name.strip_prefix("r#").unwrap_or(name))?;
            self.out.write_char('=')?;
        }
        Ok(())
    }

    fn write(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        // Fields that carry `log` crate records' metadata are not fields.
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        self.result = self.start(field).and_then(|()| value(self.out));
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, |out| escaped(out, value));
        } else {
            self.write(field, |out| write!(out, "{value:?}"));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.write(field, |out| write!(out, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.write(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.write(field, |out| {
            out.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            // A message is `format_args!`, whose Debug is its text.
            self.write(field, |out| {
                let mut text = String::new();
                write!(text, "{value:?}")?;
                escaped(out, &text)
            });
        } else {
            self.write(field, |out| write!(out, "{value:?}"));
        }
    }
}

/// `text` with the control characters a terminal acts on written as
/// escapes (`\x1b`, `\u{9b}`), as the default format writes a message.
fn escaped(out: &mut Writer<'_>, text: &str) -> fmt::Result {
    let mut rest = text;
    while let Some(at) = rest.find(|c: char| is_control(c)) {
        out.write_str(&rest[..at])?;
        let c = rest[at..].chars().next().unwrap_or_default();
        if c < '\u{80}' {
            write!(out, "\\x{:02x}", c as u32)?;
        } else {
            write!(out, "\\u{{{:x}}}", c as u32)?;
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.write_str(rest)
}

/// ESC, BEL, BS, FF, DEL and the C1 controls.
fn is_control(c: char) -> bool {
    matches!(
        c,
        '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}'
    )
}

/// How the access log is written, once logging is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessFormat {
    /// As [`PlainText`] writes the event.
    Text,
    /// As `tracing-subscriber`'s JSON format writes the event.
    Json,
}

static ACCESS_FORMAT: OnceLock<AccessFormat> = OnceLock::new();

/// Says how stderr's log lines are written (`None`: by `tracing` itself,
/// on a terminal in colour).
pub fn set_access_format(format: Option<AccessFormat>) {
    if let Some(format) = format {
        let _ = ACCESS_FORMAT.set(format);
    }
}

/// The sink for the server's access log lines, in the format logging was
/// set up with; `None` leaves them to `tracing`.
pub fn access_sink() -> Option<AccessSink> {
    let format = *ACCESS_FORMAT.get()?;
    Some(AccessSink(Arc::new(move |line: &AccessLine<'_>| {
        let now = std::time::SystemTime::now();
        let text = match format {
            AccessFormat::Text => access_text(now, line),
            AccessFormat::Json => access_json(now, line),
        };
        crate::lines::eprint(&text);
    })))
}

/// The text line of `line`, as [`PlainText`] writes the `cryptun::access`
/// event (no newline). Written piece by piece: one `write!` of the whole
/// line spent most of its 6,000 instructions escaping strings that need no
/// escape and formatting a float that is a whole number of microseconds.
fn access_text(at: std::time::SystemTime, line: &AccessLine<'_>) -> String {
    let mut out = String::with_capacity(160 + line.path.len());
    let _ = write!(out, "{} ", humantime::format_rfc3339_micros(at));
    out.push_str(level(&Level::INFO));
    out.push_str(" cryptun::access: request tunnel=");
    quoted(&mut out, line.tunnel);
    out.push_str(" method=");
    out.push_str(line.method);
    out.push_str(" path=");
    out.push_str(line.path);
    let _ = write!(out, " status={} outcome=", line.status);
    quoted(&mut out, line.outcome);
    out.push_str(" duration_ms=");
    milliseconds(&mut out, line.duration_ms);
    let _ = write!(
        out,
        " bytes_in={} bytes_out={} complete={} visitor={}",
        line.bytes_in, line.bytes_out, line.complete, line.visitor
    );
    out
}

/// `text` as `{:?}` writes it: quoted, escaped (by `{:?}` itself only when
/// something needs it).
fn quoted(out: &mut String, text: &str) {
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ');
    if plain {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        let _ = write!(out, "{text:?}");
    }
}

/// A duration in milliseconds as `{:?}` writes it: a whole number of
/// microseconds (as the server rounds them) is the decimal itself, its
/// trailing zeros dropped but one (`2.0`, `0.925`); anything else goes to
/// `{:?}`.
fn milliseconds(out: &mut String, ms: f64) {
    let micros = (ms * 1000.0).round();
    if !(0.0..1e12).contains(&micros) || micros / 1000.0 != ms {
        let _ = write!(out, "{ms:?}");
        return;
    }
    let micros = micros as u64;
    let _ = write!(out, "{}.", micros / 1000);
    let frac = micros % 1000;
    let digits = [frac / 100, frac / 10 % 10, frac % 10].map(|d| char::from(b'0' + d as u8));
    let keep = digits
        .iter()
        .rposition(|d| *d != '0')
        .map_or(1, |last| last + 1);
    out.extend(&digits[..keep]);
}

/// The JSON line of `line`, with the keys and values of
/// `tracing-subscriber`'s JSON format for the event.
fn access_json(at: std::time::SystemTime, line: &AccessLine<'_>) -> String {
    #[derive(serde::Serialize)]
    struct Json<'a> {
        #[serde(serialize_with = "as_text")]
        timestamp: humantime::Rfc3339Timestamp,
        level: &'static str,
        message: &'static str,
        tunnel: &'a str,
        method: &'a str,
        path: &'a str,
        status: u16,
        outcome: &'a str,
        duration_ms: f64,
        bytes_in: u64,
        bytes_out: u64,
        complete: bool,
        #[serde(serialize_with = "as_text")]
        visitor: std::net::SocketAddr,
        target: &'static str,
    }
    fn as_text<S: serde::Serializer, T: fmt::Display>(value: &T, to: S) -> Result<S::Ok, S::Error> {
        to.collect_str(value)
    }
    serde_json::to_string(&Json {
        timestamp: humantime::format_rfc3339_micros(at),
        level: "INFO",
        message: "request",
        tunnel: line.tunnel,
        method: line.method,
        path: line.path,
        status: line.status,
        outcome: line.outcome,
        duration_ms: line.duration_ms,
        bytes_in: line.bytes_in,
        bytes_out: line.bytes_out,
        complete: line.complete,
        visitor: line.visitor,
        target: "cryptun::access",
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing::{info, info_span, warn};
    use tracing_subscriber::fmt::MakeWriter;

    /// What the lines were written into.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// The lines `events` logs, in the default format without colours and
    /// in ours, timestamps cut off.
    fn both(events: impl Fn()) -> (String, String) {
        let default = Captured::default();
        let ours = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(default.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, &events);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(ours.clone())
            .with_ansi(false)
            .event_format(PlainText)
            .finish();
        tracing::subscriber::with_default(subscriber, &events);
        let cut = |text: String| {
            text.lines()
                .map(|line| {
                    line.split_once(' ')
                        .map_or(line, |(_, rest)| rest)
                        .to_owned()
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        (cut(default.text()), cut(ours.text()))
    }

    #[test]
    fn lines_read_as_the_default_format_writes_them() {
        let (default, ours) = both(|| {
            let span = info_span!("conn", peer = %"127.0.0.1:5", n = 3);
            let _entered = span.enter();
            let inner = info_span!("plain");
            let _inner = inner.enter();
            info!(
                target: "cryptun::access",
                tunnel = "demo",
                method = %"GET",
                path = %"/a b",
                status = 200u16,
                duration_ms = 1.5f64,
                whole = 2.0f64,
                bytes_in = 0u64,
                delta = -4i64,
                complete = true,
                quoted = "say \"hi\"\n",
                r#type = "raw",
                "request"
            );
            warn!(error = ?std::io::ErrorKind::NotFound, "lost {} of {}", 1, 2);
            info!("a message with \x1b[31m colour \u{9b} and \x07");
            info!(only = 1u64);
        });
        assert_eq!(ours, default);
        assert!(
            ours.contains("status=200 duration_ms=1.5 whole=2.0"),
            "{ours}"
        );
        assert!(ours.contains("\\x1b[31m"), "{ours}");
    }

    #[test]
    fn the_timestamp_is_rfc3339_to_the_microsecond() {
        let ours = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(ours.clone())
            .event_format(PlainText)
            .finish();
        tracing::subscriber::with_default(subscriber, || info!("x"));
        let line = ours.text();
        let (stamp, rest) = line.split_once(' ').unwrap();
        assert_eq!(rest, " INFO cryptun::logtext::tests: x\n");
        assert!(humantime::parse_rfc3339(stamp).is_ok(), "{stamp}");
        assert_eq!(stamp.len(), "2026-12-07T16:09:00.123456Z".len(), "{stamp}");
    }

    /// An access line with awkward values.
    fn sample() -> AccessLine<'static> {
        AccessLine {
            tunnel: "demo\"x",
            method: "PROPFIND",
            path: "/a/b%20c",
            status: 502,
            outcome: "client_gone",
            duration_ms: 2.0,
            bytes_in: 7,
            bytes_out: 1234,
            complete: false,
            visitor: "[2001:db8::1]:41000".parse().unwrap(),
        }
    }

    #[test]
    fn the_access_text_line_is_the_events_line() {
        let lines = [
            sample(),
            AccessLine {
                duration_ms: 0.925,
                ..sample()
            },
        ];
        let traced = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(traced.clone())
            .event_format(PlainText)
            .finish();
        tracing::subscriber::with_default(subscriber, || lines.iter().for_each(AccessLine::trace));
        let traced = traced.text();
        assert_eq!(traced.lines().count(), lines.len());
        let at = std::time::SystemTime::now();
        let cut = |l: &str| l.split_once(' ').unwrap().1.to_owned();
        for (traced, line) in traced.lines().zip(&lines) {
            assert_eq!(cut(&access_text(at, line)), cut(traced));
        }
    }

    #[test]
    fn the_access_json_line_is_the_events_json() {
        let traced = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(traced.clone())
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || sample().trace());
        let mut traced: serde_json::Value = serde_json::from_str(&traced.text()).unwrap();
        let mut ours: serde_json::Value =
            serde_json::from_str(&access_json(std::time::SystemTime::now(), &sample())).unwrap();
        for value in [&mut traced, &mut ours] {
            let stamp = value["timestamp"].take();
            assert!(humantime::parse_rfc3339(stamp.as_str().unwrap()).is_ok());
        }
        assert_eq!(ours, traced);
    }

    #[test]
    fn milliseconds_read_as_debug_writes_them() {
        let cases = (0..20_000u64)
            .chain([999_999, 1_000_000, 123_456_789, 86_400_000_000])
            .map(|micros| (micros as f64 * 1e3).round() / 1e6 * 1e3)
            .chain([0.1 + 0.2, 1e-9, 1e15, 2.5e12, f64::NAN]);
        for ms in cases {
            let mut ours = String::new();
            milliseconds(&mut ours, ms);
            assert_eq!(ours, format!("{ms:?}"), "{ms}");
        }
        // As the server computes them, from a duration.
        for nanos in [0, 1, 499, 500, 925_000, 1_234_567, 2_000_000_000] {
            let d = std::time::Duration::from_nanos(nanos);
            let ms = (d.as_secs_f64() * 1e6).round() / 1e3;
            let mut ours = String::new();
            milliseconds(&mut ours, ms);
            assert_eq!(ours, format!("{ms:?}"), "{nanos} ns");
        }
    }

    #[test]
    fn quoted_strings_read_as_debug_writes_them() {
        for text in [
            "demo",
            "a b",
            "-",
            "tab\there",
            "quote\"",
            "back\\slash",
            "ünï",
            "\u{1b}[",
        ] {
            let mut ours = String::new();
            quoted(&mut ours, text);
            assert_eq!(ours, format!("{text:?}"));
        }
    }
}
