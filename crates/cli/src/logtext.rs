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

use std::fmt::{self, Write as _};

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
}
