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
use opentelemetry::trace::{Link, SpanKind, TraceId};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SamplingResult, SdkTracerProvider, ShouldSample};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
/// `ratio` (`telemetry.sample_ratio`, a re-read file's too) is the share of new traces
/// recorded; a sampled parent (the caller's `traceparent`) is always followed.
pub fn tracer_provider(
    service: &ServiceIdentity,
    ratio: SampleRatio,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(sampler(ratio))
        .with_resource(resource(service))
        .build())
}

/// Parent-based: a trace is kept or dropped whole; new traces by trace id at the ratio in force.
fn sampler(ratio: SampleRatio) -> Sampler {
    Sampler::ParentBased(Box::new(ratio))
}

/// The share of new traces recorded (`telemetry.sample_ratio`), changed while the process runs
/// ([`SampleRatio::set`]) when a re-read file gives another: turning tracing up to look into a
/// problem takes no restart. Clones share the value.
#[derive(Debug, Clone)]
pub struct SampleRatio(Arc<AtomicU64>);

impl SampleRatio {
    /// A ratio of `ratio` (at most 0: none; at least 1: every new trace).
    pub fn new(ratio: f64) -> Self {
        Self(Arc::new(AtomicU64::new(ratio.to_bits())))
    }

    /// The ratio in force.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    /// Puts `ratio` in force for the traces that start from now.
    pub fn set(&self, ratio: f64) {
        self.0.store(ratio.to_bits(), Ordering::Relaxed);
    }
}

impl ShouldSample for SampleRatio {
    fn should_sample(
        &self,
        parent_context: Option<&opentelemetry::Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let ratio = self.get();
        let root = if ratio >= 1.0 {
            Sampler::AlwaysOn
        } else if ratio > 0.0 {
            Sampler::TraceIdRatioBased(ratio)
        } else {
            Sampler::AlwaysOff
        };
        root.should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceState};
    use opentelemetry_sdk::trace::SamplingDecision;

    fn decide(sampler: &Sampler, parent: Option<&opentelemetry::Context>, id: u128) -> bool {
        let result = sampler.should_sample(
            parent,
            TraceId::from(id),
            "task",
            &SpanKind::Internal,
            &[],
            &[],
        );
        result.decision == SamplingDecision::RecordAndSample
    }

    /// New traces follow the ratio as it is set, whenever it is set; a sampled caller's trace is
    /// followed at any ratio.
    #[test]
    fn new_traces_follow_the_ratio_in_force_and_a_sampled_parent_always() {
        let ratio = SampleRatio::new(0.0);
        let sampler = sampler(ratio.clone());
        let ids =
            || (1..=200u128).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
        assert!(ids().all(|id| !decide(&sampler, None, id)));
        let parent = opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(7),
            SpanId::from(9),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ));
        assert!(decide(&sampler, Some(&parent), 7));

        ratio.set(1.0);
        assert!(ids().all(|id| decide(&sampler, None, id)));
        ratio.set(0.5);
        let kept = ids().filter(|id| decide(&sampler, None, *id)).count();
        assert!((40..=160).contains(&kept), "about half of 200: {kept}");
    }
}
