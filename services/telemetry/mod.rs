//! Telemetry shared by every process: logs, OpenTelemetry traces across the mesh, Prometheus metrics.
//!
//! # What each process gets
//!
//! - **Logs** ([`logging`]): human-readable lines on stderr by default, one JSON object per line
//!   with `--log-format json`; no ANSI colours unless stderr is a terminal. Every task transition
//!   (accepted, queued, started/assigned, failover, finished) is one line, carrying the task's span
//!   fields (`task_id`, `run_id`, …).
//! - **Traces** ([`otel`], [`spans`], [`propagation`]): `tracing` spans everywhere. When the
//!   standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set, spans are exported
//!   over OTLP/gRPC. A W3C `traceparent` arriving on a gRPC call becomes the parent of the spans
//!   the handler creates, and outgoing calls carry the current span's `traceparent`, so one trace
//!   covers caller → manager → programmer → aider.
//! - **Metrics** ([`metrics`]): a Prometheus text endpoint (`GET /metrics`). Counters and
//!   histograms are updated where things happen; gauges that mirror state (availability, queues,
//!   breaker, budget, alerts) are set from a status snapshot when scraped.
//! - **Per-LLM figures** ([`llm_stats`]): p50/p95 task duration and success rate by LLM, computed by
//!   the manager from the tasks it finished and shown by `pas status`.
//!
//! Nothing sensitive goes into span attributes or metric labels: ids, model names, counts, costs
//! and outcome classes only — never API keys, task descriptions or file contents.

pub mod llm_stats;
pub mod logging;
pub mod metrics;
pub mod otel;
pub mod propagation;
pub mod spans;
pub mod stages;

pub use self::metrics::Role;
pub use llm_stats::LlmStats;
pub use logging::LogFormat;

use crate::contract::v1::TaskResult;

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Which process is reporting: names the OpenTelemetry resource (`service.name`,
/// `service.instance.id`) so a trace viewer shows the manager and each programmer apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceIdentity {
    /// `service.name`, e.g. `pas-manager` (the `OTEL_SERVICE_NAME` environment variable wins).
    pub name: String,
    /// `service.instance.id`, e.g. the programmer id `001`.
    pub instance: Option<String>,
}

impl ServiceIdentity {
    /// The manager.
    pub fn manager() -> Self {
        Self {
            name: "pas-manager".into(),
            instance: None,
        }
    }

    /// Programmer `id`.
    pub fn programmer(id: &str) -> Self {
        Self {
            name: "pas-programmer".into(),
            instance: Some(id.to_string()),
        }
    }

    /// Any other `pas` command (`llm-sim`, `up`, …).
    pub fn other(name: &str) -> Self {
        Self {
            name: format!("pas-{name}"),
            instance: None,
        }
    }
}

/// How long a process waits at exit for its last spans to be exported.
pub const SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The installed telemetry of a process. Call [`Telemetry::shutdown`] before the process exits so
/// spans still in the batch are exported (dropping it skips the flush).
#[derive(Debug)]
#[must_use = "call shutdown() at exit so buffered spans are exported"]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// True when spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.tracer_provider.is_some()
    }

    /// Flushes and stops the span exporter (a no-op without one), waiting at most
    /// [`SHUTDOWN_TIMEOUT`] so an unreachable collector cannot hold up the exit. The exporter's
    /// shutdown blocks, so it runs on a blocking thread while the runtime drives the export call.
    pub async fn shutdown(self) {
        let Some(provider) = self.tracer_provider else {
            return;
        };
        let joined =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
                .await;
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: flushing the trace exporter failed: {e}"),
            Err(e) => eprintln!("warning: flushing the trace exporter failed: {e}"),
        }
    }
}

/// Installs logging, the OTLP span exporter (when configured by the environment) and the
/// Prometheus recorder for this process. Must run inside a tokio runtime (the OTLP exporter is a
/// tonic client). Problems with the exporter are reported on stderr and leave the process
/// running without export: telemetry never stops the service.
pub fn init(format: LogFormat, service: &ServiceIdentity, sample_ratio: f64) -> Telemetry {
    let mut warning = None;
    SAMPLE_RATIO.set(sample_ratio);
    let tracer_provider = if otel::export_configured() {
        match otel::tracer_provider(service, SAMPLE_RATIO.clone()) {
            Ok(p) => Some(p),
            Err(e) => {
                warning = Some(format!(
                    "OTLP trace export is configured but cannot start: {e}"
                ));
                None
            }
        }
    } else {
        None
    };
    let otel_layer = tracer_provider.as_ref().map(otel::layer);
    let installed = tracing_subscriber::registry()
        .with(logging::layer(format))
        .with(otel_layer)
        .try_init();
    if installed.is_err() {
        // Someone (a test harness) installed a subscriber first; keep theirs.
        warning.get_or_insert_with(|| "a tracing subscriber was already installed".into());
    }
    self::metrics::install();
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
    if let Some(provider) = &tracer_provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
        tracing::info!(service = %service.name, "exporting traces over OTLP/gRPC");
    }
    Telemetry { tracer_provider }
}

/// The process's share of new traces recorded: [`init`] sets it, [`set_sample_ratio`] changes it.
static SAMPLE_RATIO: std::sync::LazyLock<otel::SampleRatio> =
    std::sync::LazyLock::new(|| otel::SampleRatio::new(1.0));

/// Puts a re-read `telemetry.sample_ratio` in force for the traces that start from now; returns
/// whether it differs from the one before.
pub fn set_sample_ratio(ratio: f64) -> bool {
    let changed = SAMPLE_RATIO.get() != ratio;
    SAMPLE_RATIO.set(ratio);
    changed
}

/// Everything telemetry does when a task finishes: records the result on the current span (the
/// task's span, when the caller runs inside it) and counts it in the metrics of `role`.
pub fn task_finished(role: Role, result: &TaskResult) {
    spans::record_result(&tracing::Span::current(), result, role == Role::Manager);
    self::metrics::task_finished(role, result);
}

/// Logs that the current task waits in `queue` at `position` (1 = next). Called on every
/// position change; the `first` one (entering the queue) is an INFO line, the moves up are DEBUG,
/// so a long queue does not flood the log.
pub fn task_queued(queue: &'static str, position: usize, first: bool) {
    if first {
        tracing::info!(queue, position, "task queued");
    } else {
        tracing::debug!(queue, position, "task moved up in the queue");
    }
}

/// Installs only the logging subscriber (for commands that serve nothing, like `pas up`).
pub fn init_logging(format: LogFormat) {
    let _ = tracing_subscriber::registry()
        .with(logging::layer(format))
        .try_init();
}
