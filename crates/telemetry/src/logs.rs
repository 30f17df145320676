//! Logging and tracing set-up.
//!
//! Log lines carry strings from callers (domain names, ids, endpoints). Call
//! sites log them escaped, and as a last line of defence every event passes
//! through [`EscapingWriter`], which escapes control characters (a newline
//! in a domain name would otherwise start a forged log line), so one event
//! is always exactly one line.

use std::io::{self, IsTerminal, Write};

use tracing_subscriber::filter::LevelFilter;

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use volmig_config::{LogFormat, TelemetryConfig};

/// Installs a stderr logger filtered by `RUST_LOG` (default `info`), and
/// OTLP trace export when an endpoint is configured in the environment or
/// `telemetry` (see [`crate::export`]; `service` names the process
/// there). Text: colours only on a terminal. JSON: one object per line
/// carrying the fields of the event's spans (`span` the innermost, `spans`
/// all), so every line a migration logs names its `migration.id`, and, while
/// traces are exported, the event's `trace_id`. Keep the returned exporter
/// until the process ends: dropping it flushes the spans.
pub fn init(
    format: LogFormat,
    service: &str,
    telemetry: &TelemetryConfig,
) -> Result<Option<crate::export::Exporter>, crate::export::ExportError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (exporter, tracer) = match crate::export::exporter(service, telemetry)? {
        Some((exporter, tracer)) => (Some(exporter), Some(tracer)),
        None => (None, None),
    };
    // Spans are exported at info whatever RUST_LOG says of the logs (the
    // CLI logs only warnings, yet its span is the root of the trace).
    let registry = tracing_subscriber::registry().with(tracer.map(|t| {
        tracing_opentelemetry::layer()
            .with_tracer(t)
            .with_filter(LevelFilter::INFO)
    }));
    // A second init (tests, or a library user with its own subscriber) is harmless.
    let _ = match format {
        LogFormat::Text => {
            let ansi = io::stderr().is_terminal();
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(ansi)
                        .with_writer(Escaping { keep_esc: ansi })
                        .with_filter(filter),
                )
                .try_init()
        }
        LogFormat::Json => registry
            .with(json_layer(Escaping { keep_esc: false }).with_filter(filter))
            .try_init(),
    };
    Ok(exporter)
}

/// The JSON formatter writing to `writer`. JSON strings escape control
/// characters themselves; the [`EscapingWriter`] stays as the guarantee.
fn json_layer<S, W>(writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + 'static,
{
    let json = tracing_subscriber::fmt::format()
        .json()
        .with_current_span(true)
        .with_span_list(true);
    tracing_subscriber::fmt::layer()
        .json()
        .event_format(WithTraceId(json))
        .with_writer(writer)
}

/// A JSON event format that adds the event's `trace_id` (its innermost
/// exported span's) as the first key, so a log line leads to its trace.
struct WithTraceId<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceId<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let trace_id = ctx.event_scope().and_then(|scope| {
            scope
                .filter_map(|span| {
                    let ext = span.extensions();
                    ext.get::<tracing_opentelemetry::OtelData>()
                        .and_then(|d| d.trace_id())
                })
                .find(|t| *t != opentelemetry::TraceId::INVALID)
        });
        let Some(trace_id) = trace_id else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{\"trace_id\":\"{trace_id}\",{rest}"),
            None => writer.write_str(&line),
        }
    }
}

/// Makes [`EscapingWriter`]s over stderr.
#[derive(Clone, Copy)]
struct Escaping {
    /// Let ESC through: the formatter's own colours (it escapes ESC in the
    /// values it prints itself).
    keep_esc: bool,
}

impl<'a> MakeWriter<'a> for Escaping {
    type Writer = EscapingWriter<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        EscapingWriter {
            inner: io::stderr(),
            keep_esc: self.keep_esc,
        }
    }
}

/// Writes one formatted event, with every control character but the final
/// newline (and ESC when colours are on) written as `\xNN`, every
/// bidirectional-text or line-separator character as `\uNNNN` (valid in a
/// JSON string too), and the event cut to [`MAX_LINE`] bytes.
pub struct EscapingWriter<W> {
    inner: W,
    keep_esc: bool,
}

/// Longest event written, in bytes: every field is bounded where it is
/// logged, and this bounds what a forgotten one can do to the log.
pub const MAX_LINE: usize = 16 * 1024;

/// `buf` with its control characters escaped (see [`EscapingWriter`]).
fn escape(buf: &[u8], keep_esc: bool) -> Vec<u8> {
    let text = String::from_utf8_lossy(buf);
    let body = text.strip_suffix('\n').unwrap_or(&text);
    let mut out = Vec::with_capacity(body.len().min(MAX_LINE) + 32);
    let mut chars = body.char_indices();
    for (at, c) in chars.by_ref() {
        if out.len() >= MAX_LINE {
            out.extend_from_slice(format!("…(+{} bytes)", body.len() - at).as_bytes());
            break;
        }
        let control = c.is_control() && !(c == '\x1b' && keep_esc);
        if control {
            out.extend_from_slice(format!("\\x{:02x}", u32::from(c)).as_bytes());
        } else if volmig_types::validate::is_deceptive(c) {
            out.extend_from_slice(format!("\\u{:04x}", u32::from(c)).as_bytes());
        } else {
            let mut utf8 = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        }
    }
    if body.len() != text.len() {
        out.push(b'\n');
    }
    out
}

impl<W: Write> Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write_all(&escape(buf, self.keep_esc))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stays_one_line() {
        let line = b"INFO domain=evil\nINFO forged\x1b[2J\x00\r\tend\n";
        let out = String::from_utf8(escape(line, false)).expect("utf8");
        assert_eq!(
            out,
            "INFO domain=evil\\x0aINFO forged\\x1b[2J\\x00\\x0d\\x09end\n"
        );
        assert_eq!(
            escape(b"\x1b[32mINFO\x1b[0m x\n", true),
            b"\x1b[32mINFO\x1b[0m x\n"
        );
    }

    #[test]
    fn bidi_and_line_separators_are_escaped_and_lines_are_bounded() {
        let line = "INFO domain=\"abc\u{202E}fed\u{2028}x\u{2066}\u{61C}\"\n";
        let out = String::from_utf8(escape(line.as_bytes(), false)).expect("utf8");
        assert_eq!(out, "INFO domain=\"abc\\u202efed\\u2028x\\u2066\\u061c\"\n");
        let huge = format!("INFO disks={}\n", "vda,".repeat(40_000));
        let out = String::from_utf8(escape(huge.as_bytes(), false)).expect("utf8");
        assert!(out.len() < MAX_LINE + 64, "{} bytes", out.len());
        assert!(out.ends_with(" bytes)\n"), "{}", &out[out.len() - 40..]);
        assert_eq!(out.lines().count(), 1);
    }

    /// Collects what the JSON layer writes, through an [`EscapingWriter`].
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = EscapingWriter<Captured>;
        fn make_writer(&'a self) -> Self::Writer {
            EscapingWriter {
                inner: self.clone(),
                keep_esc: false,
            }
        }
    }

    #[test]
    fn json_lines_carry_the_migration_and_trace_ids_and_stay_one_line_each() {
        use opentelemetry::trace::TracerProvider as _;
        let out = Captured::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(json_layer(out.clone()));
        let mut trace_id = None;
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside any span");
            let span = tracing::info_span!("migration", migration.id = "mig-1");
            let _entered = span.enter();
            trace_id = crate::export::current_trace_id();
            tracing::info!(domain = "evil\nINFO forged\u{7}", "copying");
            tracing::warn!("second");
        });
        let trace_id = trace_id.expect("a trace id");
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let outside: serde_json::Value = serde_json::from_str(lines[0]).expect("json");
        assert!(outside.get("trace_id").is_none(), "{outside}");
        for line in &lines[1..] {
            let v: serde_json::Value = serde_json::from_str(line).expect("json");
            assert_eq!(v["span"]["migration.id"], "mig-1", "{line}");
            assert_eq!(v["spans"][0]["name"], "migration", "{line}");
            assert_eq!(v["trace_id"], trace_id.as_str(), "{line}");
        }
    }
}
