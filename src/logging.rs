//! Log output: `tracing` everywhere, human-readable lines on a terminal or one JSON object
//! per line.
//!
//! Context comes from spans rather than from each call site: [`crate::app::run`] enters a
//! `dataflow` span for start-up, and every timely worker runs inside a `worker` span with
//! `dataflow` and `worker` fields, so every line a worker writes names both. Lines about
//! one partition or topic carry `partition` / `topic` fields of their own. librdkafka's log
//! lines and errors arrive through rdkafka's `tracing` feature (target `librdkafka`); the
//! sink's producer thread logs inside the span its worker created it in.
//!
//! JSON lines are flat: `timestamp`, `level`, `target`, `message`, then the fields of every
//! span the event is in (outermost first) and the event's own fields, all at the top level:
//!
//! ```text
//! {"timestamp":"2026-01-13T14:30:45.123456Z","level":"INFO","target":"waterline::app","message":"worker assigned (partition, offset)","dataflow":"trades","worker":1,"topic":"trades","partitions":"[(1, 0), (3, 0)]"}
//! ```
//!
//! In JSON mode a panic is one `ERROR` line too (message, location, backtrace when
//! `RUST_BACKTRACE` asks for one), and so is the error `main` exits with ([`fatal`]), so
//! that every line the process writes parses as JSON. Per-record lines (a dead letter, a
//! late record) are `debug`, never `info` or above.

use std::fmt;
use std::io::{IsTerminal, Write as _};
use std::sync::OnceLock;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

static FORMAT: OnceLock<LogFormat> = OnceLock::new();
static PREFERRED: OnceLock<LogFormat> = OnceLock::new();

/// Installs the global subscriber: `format` lines on stderr, filtered by `RUST_LOG` when
/// set, else by `level` (a tracing filter such as `"info"` or `"waterline=debug,info"`).
/// In JSON mode it also makes panics JSON lines. Only the first call has an effect.
pub fn init(format: LogFormat, level: &str) {
    if FORMAT.set(format).is_err() {
        return;
    }
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // stderr, clearing and redrawing a progress bar around each line.
        .with_writer(crate::progress_bar::log_writer)
        // A line that cannot be written (stderr closed: a log shipper gone, `| head`) is
        // lost, and the run goes on. tracing-subscriber would otherwise report it with
        // `eprintln!`, which panics when stderr is closed, on whichever thread logged.
        .log_internal_errors(false);
    let installed = match format {
        LogFormat::Json => {
            let result = builder
                .fmt_fields(JsonFields::new())
                .event_format(JsonLines)
                .try_init();
            std::panic::set_hook(Box::new(log_panic));
            result
        }
        // Colours only for a person watching; a file or a pipe gets plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
    // Another subscriber (a test's) is already installed: it keeps the lines.
    drop(installed);
}

/// Whether log lines are JSON.
pub fn is_json() -> bool {
    current_format() == LogFormat::Json
}

/// Says which format the configuration is going to ask for (from `--log-format`), so
/// that an error found before it is read (a bad config file) is written in that format.
pub fn prefer(format: LogFormat) {
    let _ = PREFERRED.set(format);
}

/// The format [`init`] installed; before that, the one [`prefer`] or the environment
/// (`WATERLINE__LOG__FORMAT`, `WATERLINE_LOG_FORMAT`) asks for.
fn current_format() -> LogFormat {
    if let Some(f) = FORMAT.get().or(PREFERRED.get()) {
        return *f;
    }
    let json = std::env::vars().any(|(name, value)| {
        let name = name.to_ascii_uppercase();
        (name == "WATERLINE__LOG__FORMAT" || name == "WATERLINE_LOG_FORMAT") && value == "json"
    });
    if json {
        LogFormat::Json
    } else {
        LogFormat::Text
    }
}

/// Writes the error the process exits with: `error: <message>` on stderr, or in JSON mode
/// one `ERROR` line whose message is `message`.
pub fn fatal(message: &str) {
    match current_format() {
        LogFormat::Json => {
            init(LogFormat::Json, "info");
            tracing::error!(exit_code = 1, "{message}");
        }
        LogFormat::Text => {
            // Nothing is left to tell if stderr is closed; the exit code still says it.
            let _ = writeln!(std::io::stderr(), "error: {message}");
        }
    }
}

fn log_panic(info: &std::panic::PanicHookInfo<'_>) {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic without a message)");
    let location = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_default();
    let thread = std::thread::current();
    let thread = thread.name().unwrap_or("(unnamed)");
    let backtrace = std::backtrace::Backtrace::capture();
    if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
        let backtrace = backtrace.to_string();
        tracing::error!(location, thread, backtrace, "panicked: {message}");
    } else {
        tracing::error!(location, thread, "panicked: {message}");
    }
}

/// The JSON line format: one flat object per event (see the module docs).
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
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
        let mut line = Line::default();
        line.put(
            "timestamp",
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.put("level", Value::String(meta.level().to_string()));
        line.put("target", Value::String(meta.target().to_string()));
        line.put("message", Value::String(String::new()));
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                // With `JsonFields`, a span's recorded fields are kept as a JSON object.
                let Some(fields) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(fields) {
                    for (k, v) in fields {
                        line.put(&k, v);
                    }
                }
            }
        }
        event.record(&mut line);
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// One line's members in order: the fixed ones first, then span and event fields, a later
/// value replacing an earlier one of the same name in place.
#[derive(Default)]
struct Line(Vec<(String, Value)>);

impl Line {
    fn put(&mut self, name: &str, value: Value) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some((_, slot)) => *slot = value,
            None => self.0.push((name.to_string(), value)),
        }
    }

    fn field(&mut self, field: &Field, value: Value) {
        self.put(field.name(), value);
    }
}

impl serde::Serialize for Line {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl Visit for Line {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let value = serde_json::Number::from_f64(value)
            .map_or_else(|| Value::String(value.to_string()), Value::Number);
        self.field(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, Value::String(value.to_string()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.field(field, Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    #[test]
    fn a_panic_is_one_json_line() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("worker", worker = 1usize);
            let _span = span.enter();
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(log_panic));
            let caught = std::panic::catch_unwind(|| panic!("boom\nsecond line"));
            std::panic::set_hook(previous);
            assert!(caught.is_err());
        });
        let text =
            String::from_utf8(buffer.0.lock().expect("not poisoned").clone()).expect("UTF-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: Value = serde_json::from_str(lines[0]).expect("a JSON line");
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["message"], "panicked: boom\nsecond line");
        assert_eq!(v["worker"], 1);
        assert!(
            v["location"]
                .as_str()
                .is_some_and(|l| l.contains("logging.rs")),
            "{v}"
        );
    }

    #[test]
    fn json_lines_are_flat_with_span_fields() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .fmt_fields(JsonFields::new())
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("dataflow", dataflow = "trades");
            let _outer = outer.enter();
            let span = tracing::info_span!("worker", worker = 3usize);
            let _span = span.enter();
            tracing::info!(
                partition = 7,
                topic = "in",
                ok = true,
                "line\nwith \"quotes\""
            );
        });
        let text =
            String::from_utf8(buffer.0.lock().expect("not poisoned").clone()).expect("UTF-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(
            lines[0].starts_with(r#"{"timestamp":"#)
                && lines[0].contains(r#","level":"INFO","target":"#),
            "the fixed members first: {text}"
        );
        let v: Value = serde_json::from_str(lines[0]).expect("a JSON line");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "line\nwith \"quotes\"");
        assert_eq!(v["dataflow"], "trades");
        assert_eq!(v["worker"], 3);
        assert_eq!(v["partition"], 7);
        assert_eq!(v["topic"], "in");
        assert_eq!(v["ok"], true);
        assert!(
            v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{v}"
        );
    }
}
