//! W3C trace context (`traceparent`, `tracestate`) across gRPC calls.
//!
//! - Incoming: [`middleware`] runs in front of every route of a process (see `serve::serve`). When
//!   a request carries a valid `traceparent`, the handler runs with that remote span as the current
//!   OpenTelemetry context, so the spans it creates (a task's span) join the caller's trace.
//!   Requests without one (health checks, status polls) are left alone and create no trace.
//! - Outgoing: [`outgoing`] wraps a message in a `tonic::Request` whose metadata carries the
//!   current `tracing` span's context; the manager uses it for `Execute` on a programmer.
//!
//! The W3C propagator is used directly (not the global one), so propagation does not depend on
//! whether export is configured: a process that exports nothing still passes the caller's trace on.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::Context;
use opentelemetry::context::FutureExt as _;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Reads W3C headers from an HTTP header map.
struct HeaderReader<'a>(&'a http::HeaderMap);

impl Extractor for HeaderReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes W3C headers into gRPC metadata.
struct MetadataWriter<'a>(&'a mut MetadataMap);

impl Injector for MetadataWriter<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// The remote context in `headers` (an empty context when there is no valid `traceparent`).
pub fn extract(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderReader(headers))
}

/// Writes `cx`'s span context into `metadata` (nothing when `cx` has no valid span).
pub fn inject(cx: &Context, metadata: &mut MetadataMap) {
    TraceContextPropagator::new().inject_context(cx, &mut MetadataWriter(metadata));
}

/// A request carrying the current `tracing` span's trace context, for an outgoing gRPC call.
pub fn outgoing<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        inject(&cx, request.metadata_mut());
    }
    request
}

/// axum middleware: runs the rest of the request with the caller's trace as the current
/// OpenTelemetry context when it sent a valid `traceparent`.
pub async fn middleware(mut request: Request, next: Next) -> Response {
    super::stages::entered(request.extensions_mut());
    let cx = extract(request.headers());
    if cx.span().span_context().is_valid() {
        next.run(request).with_context(cx).await
    } else {
        next.run(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn extracts_a_w3c_traceparent() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", TRACEPARENT.parse().unwrap());
        let cx = extract(&headers);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid());
        assert!(sc.is_remote());
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled());
    }

    #[test]
    fn no_or_malformed_traceparent_gives_no_span() {
        assert!(
            !extract(&http::HeaderMap::new())
                .span()
                .span_context()
                .is_valid()
        );
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", "00-zz-00f067aa0ba902b7-01".parse().unwrap());
        assert!(!extract(&headers).span().span_context().is_valid());
    }

    #[test]
    fn injects_into_grpc_metadata() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(sc);
        let mut md = MetadataMap::new();
        inject(&cx, &mut md);
        assert_eq!(
            md.get("traceparent").unwrap().to_str().unwrap(),
            TRACEPARENT
        );
    }

    #[test]
    fn outgoing_without_a_trace_adds_nothing() {
        let request = outgoing(());
        assert!(request.metadata().get("traceparent").is_none());
    }
}
