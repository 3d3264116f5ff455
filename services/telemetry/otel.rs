//! OpenTelemetry span export over OTLP/gRPC, configured by the standard `OTEL_*` variables.
//!
//! Export is on when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set
//! (and neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none` turns it off). The
//! exporter reads the rest itself (`OTEL_EXPORTER_OTLP_HEADERS`, `…_TIMEOUT`, `…_COMPRESSION`), the
//! batch processor reads `OTEL_BSP_*` (e.g. `OTEL_BSP_SCHEDULE_DELAY` in ms) and the resource reads
//! `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`.
//!
//! Only spans of this crate (target `pas`) at INFO and above are exported, whatever `RUST_LOG`
//! says: the log filter must not decide what a trace contains, and the HTTP/2 stack's own debug
//! spans (including those of the exporter's calls) must never be exported.

use super::ServiceIdentity;
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

/// The instrumentation scope name of every span this crate exports.
pub const SCOPE: &str = "pas";

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

fn env_is(name: &str, value: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
}

/// True when the environment asks for OTLP span export.
pub fn export_configured() -> bool {
    let endpoint =
        env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    endpoint && !env_is("OTEL_SDK_DISABLED", "true") && !env_is("OTEL_TRACES_EXPORTER", "none")
}

/// The resource describing this process; `OTEL_SERVICE_NAME` wins over `service.name`.
pub fn resource(service: &ServiceIdentity) -> Resource {
    let mut builder = Resource::builder();
    if !env_set("OTEL_SERVICE_NAME") {
        builder = builder.with_service_name(service.name.clone());
    }
    let mut attributes = vec![KeyValue::new("service.version", env!("CARGO_PKG_VERSION"))];
    if let Some(instance) = &service.instance {
        attributes.push(KeyValue::new("service.instance.id", instance.clone()));
    }
    builder.with_attributes(attributes).build()
}

/// A tracer provider exporting in batches over OTLP/gRPC (tonic). Needs a tokio runtime.
/// `sample_ratio` (`telemetry.sample_ratio`) is the share of new traces recorded; a sampled
/// parent (the caller's `traceparent`) is always followed.
pub fn tracer_provider(
    service: &ServiceIdentity,
    sample_ratio: f64,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler(sample_ratio))
        .with_resource(resource(service))
        .build())
}

/// Parent-based: a trace is kept or dropped whole; new traces by trace id at `ratio`.
fn sampler(ratio: f64) -> Sampler {
    let root = if ratio >= 1.0 {
        Sampler::AlwaysOn
    } else if ratio <= 0.0 {
        Sampler::AlwaysOff
    } else {
        Sampler::TraceIdRatioBased(ratio)
    };
    Sampler::ParentBased(Box::new(root))
}

/// The `tracing` → OpenTelemetry bridge for `provider`, limited to this crate's INFO spans.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SCOPE))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_filter(Targets::new().with_target("pas", tracing::Level::INFO))
}
