//! Support for the telemetry tests (`tests/telemetry_*.rs`) and the overhead benchmark: an OTLP
//! trace collector running inside the test (a real tonic server for
//! `opentelemetry.proto.collector.trace.v1.TraceService`), `pas` processes started with extra
//! environment (the OTel variables), `/metrics` scraping and a strict check of the Prometheus text.
//!
//! Declared once by `tests/main.rs` as `telemetry_support` (a test file takes it with
//! `use crate::telemetry_support as support;`) and by the overhead benchmark with `#[path]`.

#![allow(dead_code)]

use crate::common::pool::{ChildGuard, TestPool};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// ===== OTLP collector =====

/// A span as the collector received it, with the resource it came from.
#[derive(Debug, Clone)]
pub struct Collected {
    /// `service.name` of the exporting process.
    pub service: String,
    /// `service.instance.id` of the exporting process (programmer id), if any.
    pub instance: Option<String>,
    pub span: Span,
    /// Which export call brought it (1 = the first the collector received).
    pub export: u64,
}

impl Collected {
    pub fn name(&self) -> &str {
        &self.span.name
    }
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    pub fn parent_span_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
    /// A span attribute rendered as text (`None` when absent).
    pub fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }
    /// Every string found in the span's attributes and events (for "nothing sensitive" checks).
    pub fn all_text(&self) -> Vec<String> {
        let mut out: Vec<String> = self.span.attributes.iter().map(kv_text).collect();
        for e in &self.span.events {
            out.push(e.name.clone());
            out.extend(e.attributes.iter().map(kv_text));
        }
        out
    }
}

fn kv_text(kv: &KeyValue) -> String {
    format!(
        "{}={}",
        kv.key,
        kv.value.as_ref().map(value_text).unwrap_or_default()
    )
}

/// The attribute `key` in `attrs`, rendered as text.
pub fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .map(value_text)
}

fn value_text(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// Lower-case hex of bytes (trace and span ids).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Default)]
struct Store {
    spans: Arc<Mutex<Vec<Collected>>>,
    exports: Arc<Mutex<u64>>,
}

#[tonic::async_trait]
impl TraceService for Store {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let req = request.into_inner();
        let mut spans = self.spans.lock().unwrap();
        let mut exports = self.exports.lock().unwrap();
        *exports += 1;
        for rs in req.resource_spans {
            let attrs = rs.resource.map(|r| r.attributes).unwrap_or_default();
            let service = attr(&attrs, "service.name").unwrap_or_default();
            let instance = attr(&attrs, "service.instance.id");
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(Collected {
                        service: service.clone(),
                        instance: instance.clone(),
                        span,
                        export: *exports,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// An OTLP/gRPC trace collector on 127.0.0.1:0, stopped when dropped.
pub struct Collector {
    pub addr: SocketAddr,
    store: Store,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// Starts the collector on the current tokio runtime.
    pub async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let addr = listener.local_addr().expect("collector address");
        let store = Store::default();
        let service = TraceServiceServer::new(store.clone());
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
                .expect("collector failed");
        });
        Collector { addr, store, task }
    }

    /// `http://127.0.0.1:PORT`, the value for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The environment that points a `pas` process at this collector, with a short batch delay so
    /// spans arrive while the test waits.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), self.endpoint()),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
        ]
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Collected> {
        self.store.spans.lock().unwrap().clone()
    }

    /// How many export calls arrived.
    pub fn exports(&self) -> u64 {
        *self.store.exports.lock().unwrap()
    }

    /// Spans of trace `trace_id`.
    pub fn trace(&self, trace_id: &str) -> Vec<Collected> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id() == trace_id)
            .collect()
    }

    /// Waits until `done(spans)` holds, up to `timeout`; panics listing what arrived otherwise.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Collected]) -> bool,
    ) -> Vec<Collected> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if tokio::time::Instant::now() >= deadline {
                let names: Vec<String> = spans
                    .iter()
                    .map(|s| format!("{}:{} trace {}", s.service, s.name(), s.trace_id()))
                    .collect();
                panic!("timed out after {timeout:?} waiting for {what}; received: {names:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ===== processes with extra environment =====

/// Starts `pas --config <pool> ARGS…` with `env` added, like the shared harness does (log to a
/// file in the pool dir, address read from the first stdout line).
pub fn spawn_with_env(
    pool: &TestPool,
    name: &str,
    args: &[&str],
    env: &[(String, String)],
) -> ChildGuard {
    let log = pool.dir.path().join(format!("{name}.log"));
    let stderr = std::fs::File::create(&log).expect("log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pas"));
    cmd.arg("--config")
        .arg(&pool.config_path)
        .args(args)
        .env("PAS_TEST_OPENAI_KEY", "sk-test-openai-secret")
        .env("PAS_TEST_ANTHROPIC_KEY", "sk-ant-test-secret")
        .env("RUST_LOG", "info")
        .env_remove("PAS_WORKSPACE_ROOT")
        .env_remove("PAS_DATA_DIR")
        .env_remove("PAS_CONFIG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn pas");
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    let mut guard = ChildGuard {
        child,
        name: name.into(),
        log,
    };
    if !line.contains(" listening on ") {
        guard.kill();
        panic!(
            "{name} did not start: first line {line:?}\n{}",
            guard.log_text()
        );
    }
    std::thread::spawn(move || {
        let mut sink = String::new();
        while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    guard
}

/// Starts programmer `id` with `env`.
pub fn start_programmer(pool: &TestPool, id: &str, env: &[(String, String)]) -> ChildGuard {
    spawn_with_env(
        pool,
        &format!("prog-{id}"),
        &["programmer", "--id", id],
        env,
    )
}

/// Starts the manager with `env`.
pub fn start_manager(pool: &TestPool, env: &[(String, String)]) -> ChildGuard {
    spawn_with_env(pool, "manager", &["manager"], env)
}

// ===== Prometheus scraping =====

/// One scrape: every sample as `name{sorted labels}` → value, plus the raw text.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub text: String,
    pub samples: BTreeMap<String, f64>,
}

impl Scrape {
    /// The value of `name` with exactly `labels` (0 when the series does not exist yet: a counter
    /// that never moved has no series).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The value of `name` with exactly `labels`, if present.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples.get(&series_key(name, labels)).copied()
    }

    /// Sum over every series of `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        self.samples
            .iter()
            .filter(|(key, _)| {
                let (n, rest) = key.split_once('{').unwrap_or((key.as_str(), ""));
                n == name && want.iter().all(|w| rest.contains(w.as_str()))
            })
            .map(|(_, v)| *v)
            .sum()
    }
}

/// The canonical key of a series: `name{k1="v1",k2="v2"}` with labels sorted.
pub fn series_key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<(&str, &str)> = labels.to_vec();
    labels.sort();
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// GETs `{base}/metrics`, checks the content type and that the body is valid Prometheus text
/// (see [`parse_exposition`]), and returns the samples.
pub async fn scrape(base: &str) -> Scrape {
    let response = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("GET /metrics");
    assert!(
        response.status().is_success(),
        "/metrics answered {}",
        response.status()
    );
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain") && content_type.contains("version=0.0.4"),
        "content type {content_type:?}"
    );
    let text = response.text().await.expect("metrics body");
    let samples = parse_exposition(&text);
    Scrape { text, samples }
}

/// Parses Prometheus text exposition strictly and returns every sample. Panics (with the line)
/// on anything invalid:
/// - it must parse with the `prometheus-parse` crate;
/// - every line is a `# HELP`/`# TYPE` comment or `name{label="value",…} value` with a valid
///   metric name, valid label names, properly quoted and escaped label values and a float value;
/// - every sample belongs to a family declared by `# TYPE` (histogram samples by their base
///   name), declared once, and a family's samples are contiguous;
/// - no series appears twice.
pub fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    let lines: Vec<std::io::Result<String>> = text.lines().map(|l| Ok(l.to_string())).collect();
    let parsed = prometheus_parse::Scrape::parse(lines.into_iter())
        .unwrap_or_else(|e| panic!("prometheus-parse rejected the exposition: {e}\n{text}"));
    assert!(
        !parsed.samples.is_empty() || text.trim().is_empty(),
        "no samples parsed"
    );

    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let mut finished_families: Vec<String> = Vec::new();
    let mut current_family: Option<String> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad TYPE line {line:?}"));
            assert!(valid_metric_name(name), "bad metric name in {line:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad type in {line:?}"
            );
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "TYPE declared twice: {line:?}"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            assert!(valid_metric_name(name), "bad metric name in {line:?}");
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let (name, labels, value) = parse_sample(line);
        let family = family_of(&name, &types)
            .unwrap_or_else(|| panic!("sample without a # TYPE family: {line:?}"));
        if current_family.as_deref() != Some(family.as_str()) {
            assert!(
                !finished_families.contains(&family),
                "samples of {family} are not contiguous"
            );
            if let Some(prev) = current_family.take() {
                finished_families.push(prev);
            }
            current_family = Some(family);
        }
        let labels_ref: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let key = series_key(&name, &labels_ref);
        assert!(
            samples.insert(key.clone(), value).is_none(),
            "series twice: {key}"
        );
    }
    // Cross-check with the crate's view: the same number of samples (histogram buckets
    // expanded; `_sum`/`_count` are separate samples there) and the same values.
    let crate_count: usize = parsed
        .samples
        .iter()
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(h) => h.len(),
            prometheus_parse::Value::Summary(q) => q.len(),
            _ => 1,
        })
        .sum();
    assert_eq!(
        crate_count,
        samples.len(),
        "prometheus-parse and the strict parser disagree on the number of samples"
    );
    for s in &parsed.samples {
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        let labels: Vec<(&str, &str)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let key = series_key(&s.metric, &labels);
        let mine = samples
            .get(&key)
            .unwrap_or_else(|| panic!("{key} missing in the strict parse"));
        assert!(
            *mine == value || (mine.is_nan() && value.is_nan()),
            "{key}: {mine} vs {value}"
        );
    }
    samples
}

fn family_of(name: &str, types: &BTreeMap<String, String>) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.to_string());
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if matches!(
                types.get(base).map(String::as_str),
                Some("histogram" | "summary")
            ) {
                return Some(base.to_string());
            }
        }
    }
    None
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `name{k="v",…} value` → parts; panics on anything malformed.
fn parse_sample(line: &str) -> (String, Vec<(String, String)>, f64) {
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() && chars[i] != '{' && chars[i] != ' ' {
        i += 1;
    }
    let name: String = chars[..i].iter().collect();
    assert!(valid_metric_name(&name), "bad metric name in {line:?}");
    let mut labels = Vec::new();
    if chars.get(i) == Some(&'{') {
        i += 1;
        loop {
            if chars.get(i) == Some(&'}') {
                i += 1;
                break;
            }
            let start = i;
            while i < chars.len() && chars[i] != '=' {
                i += 1;
            }
            let key: String = chars[start..i].iter().collect();
            assert!(valid_label_name(&key), "bad label name {key:?} in {line:?}");
            assert_eq!(
                chars.get(i + 1),
                Some(&'"'),
                "unquoted label value in {line:?}"
            );
            i += 2;
            let mut value = String::new();
            loop {
                match chars.get(i) {
                    Some('\\') => {
                        let e = *chars.get(i + 1).unwrap_or(&' ');
                        assert!(matches!(e, '\\' | '"' | 'n'), "bad escape in {line:?}");
                        value.push(if e == 'n' { '\n' } else { e });
                        i += 2;
                    }
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        value.push(*c);
                        i += 1;
                    }
                    None => panic!("unterminated label value in {line:?}"),
                }
            }
            labels.push((key, value));
            match chars.get(i) {
                Some(',') => i += 1,
                Some('}') => {}
                _ => panic!("bad label list in {line:?}"),
            }
        }
    }
    assert_eq!(chars.get(i), Some(&' '), "no value in {line:?}");
    let rest: String = chars[i + 1..].iter().collect();
    let value_text = rest.split(' ').next().unwrap_or_default();
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value {v:?} in {line:?}")),
    };
    (name, labels, value)
}
