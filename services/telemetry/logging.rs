//! Log lines on stderr: human-readable by default, one JSON object per line for machines.
//!
//! Colours only when stderr is a terminal (and `NO_COLOR` is unset): logs redirected to a file or
//! collected by `pas up` must not carry ANSI escape codes. The level comes from `RUST_LOG`
//! (default `info`). Span fields (`task_id`, `run_id`, `programmer_id`, `llm`) prefix every line
//! logged inside a task's span, so one `grep` on a task id finds its whole story.

use std::io::IsTerminal;
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::{self, FormatFields, format::Writer};
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Log output format, chosen with `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// True when log lines may carry ANSI colour codes: stderr is a terminal and `NO_COLOR` is unset.
pub fn use_ansi() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The stderr log layer in `format`, filtered by `RUST_LOG` (default `info`).
pub fn layer(format: LogFormat) -> Box<dyn Layer<Registry> + Send + Sync + 'static> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let base = fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => base
            .with_ansi(use_ansi())
            .fmt_fields(TextFields)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => base
            .json()
            .with_ansi(false)
            .with_current_span(true)
            .with_span_list(true)
            .with_filter(filter)
            .boxed(),
    }
}

/// `name=value` fields separated by spaces (the message bare), like tracing's default, minus the
/// `otel.*` fields that only steer the OpenTelemetry export (span kind).
#[derive(Debug, Clone, Copy, Default)]
pub struct TextFields;

impl<'writer> FormatFields<'writer> for TextFields {
    fn format_fields<R: RecordFields>(
        &self,
        writer: Writer<'writer>,
        fields: R,
    ) -> std::fmt::Result {
        let mut visitor = TextVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct TextVisitor<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: std::fmt::Result,
}

impl Visit for TextVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let name = field.name();
        if self.result.is_err() || name.starts_with("otel.") {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        self.result = if name == "message" {
            write!(self.writer, "{separator}{value:?}")
        } else {
            write!(
                self.writer,
                "{separator}{}={value:?}",
                name.trim_start_matches("r#")
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn text_lines_have_span_fields_without_otel_steering_fields_or_colour() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(
            fmt::layer()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .fmt_fields(TextFields),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("manager.task", otel.kind = "server", task_id = %"t-1");
            let _enter = span.enter();
            tracing::info!(status = "SUCCEEDED", cost = 0.5, "task finished");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("manager.task{task_id=t-1}: "),
            "span fields without otel.kind: {text}"
        );
        assert!(
            text.contains("task finished status=\"SUCCEEDED\" cost=0.5"),
            "{text}"
        );
        assert!(!text.contains('\x1b'), "no ANSI codes: {text:?}");
    }
}
