//! Prometheus metrics: the process-wide recorder, the `GET /metrics` route, and one function per
//! thing that is counted, so names and labels live in one place.
//!
//! Counters and histograms are updated where things happen (a task finished, a failover, a breaker
//! transition, a routing decision). Gauges that mirror state are set from a status snapshot at
//! scrape time ([`programmer_gauges`], [`pool_gauges`]), so they can never drift from what
//! `GetStatus` / `GetPoolStatus` report.
//!
//! # Metrics
//!
//! Every programmer:
//! - `pas_programmer_tasks_total{programmer_id,llm,outcome}` and
//!   `pas_programmer_task_duration_seconds{programmer_id,llm,outcome}` (histogram): tasks by the
//!   LLM that produced the result; dry runs count with `outcome="dry_run"` and no duration.
//! - `pas_llm_attempts_total{programmer_id,llm,outcome}` (outcome = error class, `none` on success),
//!   `pas_llm_attempt_duration_seconds{llm}`, `pas_llm_tokens_total{llm,direction}`,
//!   `pas_llm_spend_usd{llm}` (a float that only grows: `metrics` counters are integers): the
//!   per-LLM performance profile.
//! - `pas_failovers_total{programmer_id,from_llm,to_llm,reason}`.
//! - `pas_breaker_transitions_total{programmer_id,llm,from,to}`.
//! - gauges: `pas_programmer_queue_depth`, `pas_programmer_running`, `pas_programmer_queue_capacity`,
//!   `pas_programmer_using_backup`, `pas_programmer_draining`, `pas_breaker_state{programmer_id,llm}`
//!   (0 closed, 1 open, 2 half-open), `pas_breaker_failures_in_window`.
//!
//! Every manager and programmer (see `reload`; `what` is the configuration, or a credential set):
//! - `pas_reloads_total{what,outcome}`, `pas_reload_failing{what}`,
//!   `pas_tls_certificate_expiry_timestamp_seconds{role}` (server; the manager's client side too),
//!   `pas_config_restart_pending` (the file changes settings it reads only at start-up).
//!
//! The manager:
//! - `pas_pool_tasks_total{programmer_id,llm,outcome}`, `pas_pool_task_duration_seconds{llm,outcome}`
//!   (the caller's view: acceptance to result), `pas_pool_failovers_total{from_llm,to_llm}`.
//! - `pas_routing_decisions_total{strategy,programmer_id}`.
//! - gauges: `pas_pool_size`, `pas_pool_programmers{state}` (available/unavailable),
//!   `pas_pool_programmers_on_backup`, `pas_pool_programmer_available{programmer_id}`,
//!   `pas_pool_programmer_on_backup{programmer_id}`, `pas_queue_depth{programmer_id}`,
//!   `pas_queue_depth_total`, `pas_manager_queue_depth`, `pas_manager_queue_capacity`,
//!   `pas_budget_daily_spend_usd`, `pas_budget_reserved_usd`, `pas_budget_limit_usd`,
//!   `pas_budget_remaining_usd`, `pas_budget_alert_threshold_usd`, `pas_alert_active{alert}`.

use crate::contract::v1::{
    CircuitState, PoolStatus, ProgrammerState, ProgrammerStatus, TaskResult,
};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

use crate::contract::{error_class_name, state_name};

/// Histogram buckets (seconds) for task and attempt durations: an aider run takes 4–5 s at best,
/// a task with failovers a minute or more, the longest allowed ones several minutes.
pub const DURATION_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 300.0, 600.0,
];

/// Histogram buckets (seconds) for `pas_task_store_checkpoint_hold_seconds`: a hold takes well
/// under a millisecond on tmpfs, several on a disk under a dispatch flood, and 0.1 s or more is
/// a disk in trouble.
pub const CHECKPOINT_HOLD_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The three alerts of the original document; each always has a `pas_alert_active` series.
pub const ALERT_KINDS: [&str; 3] = ["low_availability", "high_backup_usage", "budget_threshold"];

/// The Prometheus text format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Which side of the mesh finished a task (the metric names differ: the manager's duration is the
/// caller's view, including its queue wait).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A programmer: `pas_programmer_*`, plus per-attempt LLM figures.
    Programmer,
    /// The manager: `pas_pool_*`.
    Manager,
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The recorder builder used by every process (and by tests that render into a local recorder).
pub fn builder() -> PrometheusBuilder {
    // A full name's buckets win over the suffix's (the exporter tries matchers in that order).
    let hold = Matcher::Full("pas_task_store_checkpoint_hold_seconds".into());
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(hold, CHECKPOINT_HOLD_BUCKETS))
        // Only an empty bucket list fails, and ours are not empty.
        .unwrap_or_else(|_| PrometheusBuilder::new())
}

/// Installs the process-wide Prometheus recorder once (later calls return the same handle).
/// `None` when another recorder was installed first. Inside a tokio runtime it also starts the
/// periodic upkeep that keeps unscraped histograms from growing.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = builder().install_recorder().ok()?;
            describe();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let upkeep = handle.clone();
                rt.spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(5));
                    loop {
                        tick.tick().await;
                        upkeep.run_upkeep();
                    }
                });
            }
            Some(handle)
        })
        .as_ref()
}

/// The current metrics in the Prometheus text format (`None` without a recorder).
pub fn render() -> Option<String> {
    install().map(|h| {
        h.run_upkeep();
        h.render()
    })
}

/// A `GET /metrics` route: runs `collect` (which sets the state gauges from a fresh snapshot),
/// then answers the Prometheus text.
pub fn route<F>(collect: F) -> axum::routing::MethodRouter
where
    F: Fn() + Clone + Send + Sync + 'static,
{
    axum::routing::get(move || {
        let collect = collect.clone();
        async move {
            install();
            collect();
            scrape_response()
        }
    })
}

fn scrape_response() -> Response {
    match render() {
        Some(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no metrics recorder: another one was installed in this process\n",
        )
            .into_response(),
    }
}

/// A set re-read from its files (`what`: "TLS certificate", "TLS client certificate", "caller
/// tokens", "configuration") because they changed (see `reload`): `reloaded`, or `failed` (the
/// files do not load, the set read before stays in force). `pas_reload_failing{what}` is 1 from a
/// failure until the next success: the files on disk are not what the process uses.
pub fn reload(what: &'static str, reloaded: bool) {
    let outcome = if reloaded { "reloaded" } else { "failed" };
    counter!("pas_reloads_total", "what" => what, "outcome" => outcome).increment(1);
    gauge!("pas_reload_failing", "what" => what).set(if reloaded { 0.0 } else { 1.0 });
}

/// Whether the configuration file, as last read, changes settings this process reads only at
/// start-up (1: they wait for its restart; 0: it runs with the whole file). Where nothing restarts
/// a process by itself — a Deployment whose pods do not roll on a config change, a systemd unit —
/// this says a restart is due, and its log line names the keys.
pub fn config_restart_pending(pending: bool) {
    gauge!("pas_config_restart_pending").set(if pending { 1.0 } else { 0.0 });
}

/// When the certificate this process presents as `role` (`server`, `client`) stops being valid,
/// Unix seconds: set at start-up and at each reload, for an alert well before it (a renewal that
/// never reached the files, or files that stopped loading, show here first).
pub fn certificate_expiry(role: &'static str, not_after_unix_s: i64) {
    gauge!("pas_tls_certificate_expiry_timestamp_seconds", "role" => role)
        .set(not_after_unix_s as f64);
}

/// HELP lines (and units) for every metric.
fn describe() {
    describe_counter!(
        "pas_reloads_total",
        "Credential sets and the configuration read again after their files changed, by what and outcome (reloaded/failed)"
    );
    describe_gauge!(
        "pas_reload_failing",
        "1 while the files on disk do not load (the set read before is in use)"
    );
    describe_gauge!(
        "pas_config_restart_pending",
        "1 while the configuration file changes settings this process reads only at start-up (they apply when it restarts)"
    );
    describe_gauge!(
        "pas_tls_certificate_expiry_timestamp_seconds",
        Unit::Seconds,
        "When the certificate this process presents (role server/client) expires, Unix time"
    );
    describe_counter!(
        "pas_programmer_tasks_total",
        "Tasks finished by this programmer, by the LLM of the result and outcome"
    );
    describe_histogram!(
        "pas_programmer_task_duration_seconds",
        Unit::Seconds,
        "Task duration on this programmer (acceptance to result), by LLM and outcome"
    );
    describe_counter!(
        "pas_llm_attempts_total",
        "Aider attempts by LLM and outcome (error class; none = success)"
    );
    describe_histogram!(
        "pas_llm_attempt_duration_seconds",
        Unit::Seconds,
        "Duration of one aider attempt, by LLM"
    );
    describe_counter!(
        "pas_llm_tokens_total",
        "Tokens by LLM and direction (sent/received)"
    );
    describe_gauge!(
        "pas_llm_spend_usd",
        "Spend in US dollars by LLM since the process started (only grows)"
    );
    describe_counter!(
        "pas_failovers_total",
        "Failovers inside a task, from one LLM to another, by reason (error class)"
    );
    describe_counter!(
        "pas_escalations_total",
        "Tasks that failed on a free programmer for a task-level reason and asked to escalate, by outcome (escalated/refused) and trigger"
    );
    describe_counter!(
        "pas_breaker_transitions_total",
        "Circuit breaker state changes of a programmer's primary LLM"
    );
    describe_gauge!(
        "pas_programmer_queue_depth",
        "Tasks waiting for a slot on this programmer"
    );
    describe_gauge!("pas_programmer_running", "Tasks running on this programmer");
    describe_gauge!("pas_programmer_queue_capacity", "max_queue_per_programmer");
    describe_gauge!(
        "pas_programmer_using_backup",
        "1 when new tasks start on the backup LLM (breaker open or half-open)"
    );
    describe_gauge!(
        "pas_programmer_draining",
        "1 while the programmer shuts down"
    );
    describe_gauge!(
        "pas_breaker_state",
        "Circuit breaker on the primary LLM: 0 closed, 1 open, 2 half-open"
    );
    describe_gauge!(
        "pas_breaker_failures_in_window",
        "Primary LLM failures inside the breaker's sliding window"
    );
    describe_counter!(
        "pas_pool_tasks_total",
        "Tasks finished by the manager, by programmer, LLM of the result and outcome"
    );
    describe_histogram!(
        "pas_pool_task_duration_seconds",
        Unit::Seconds,
        "Task duration as the caller sees it (acceptance by the manager to result), by LLM and outcome"
    );
    describe_counter!(
        "pas_pool_failovers_total",
        "Failovers inside the tasks the manager finished, from one LLM to another"
    );
    describe_counter!(
        "pas_admission_refusals_total",
        "Calls the manager refused with RESOURCE_EXHAUSTED, by the limit they hit (limits.*, manager.max_queue)"
    );
    describe_counter!(
        "pas_workspace_verifications_total",
        "Workspace repositories verified with git (cache misses; a burst for one repository costs one)"
    );
    describe_counter!(
        "pas_task_store_commits_total",
        "Transactions the task store committed; writes share them under load (group commit), so against pas_pool_tasks_total it shows how many commits a task cost"
    );
    describe_histogram!(
        "pas_task_store_checkpoint_hold_seconds",
        Unit::Seconds,
        "How long each checkpoint that starts the task store's WAL over held its writes (every third second under steady writes, each second with commits otherwise): every dispatch's commit meanwhile waits"
    );
    describe_counter!(
        "pas_routing_decisions_total",
        "Tasks placed on a programmer, by strategy"
    );
    describe_gauge!("pas_pool_size", "Configured programmers");
    describe_gauge!(
        "pas_pool_programmers",
        "Programmers by availability (available/unavailable)"
    );
    describe_gauge!(
        "pas_pool_programmers_on_backup",
        "Available programmers on their backup LLM"
    );
    describe_gauge!(
        "pas_pool_programmer_available",
        "1 when the programmer is available"
    );
    describe_gauge!(
        "pas_pool_programmer_on_backup",
        "1 when the programmer uses its backup LLM"
    );
    describe_gauge!(
        "pas_queue_depth",
        "Tasks waiting on a programmer, as it last reported"
    );
    describe_gauge!(
        "pas_queue_depth_total",
        "Tasks waiting on all programmers plus the manager's own queue"
    );
    describe_gauge!(
        "pas_manager_queue_depth",
        "Tasks waiting in the manager's queue"
    );
    describe_gauge!("pas_manager_queue_capacity", "manager.max_queue");
    describe_gauge!(
        "pas_budget_daily_spend_usd",
        "Settled spend today (US dollars)"
    );
    describe_gauge!(
        "pas_budget_reserved_usd",
        "Held for running paid tasks (US dollars)"
    );
    describe_gauge!("pas_budget_limit_usd", "max_daily_spend_usd");
    describe_gauge!(
        "pas_budget_remaining_usd",
        "limit - spent - reserved (US dollars)"
    );
    describe_gauge!("pas_budget_alert_threshold_usd", "alert_threshold_usd");
    describe_gauge!(
        "pas_alert_active",
        "1 while an alert is active (low_availability, high_backup_usage, budget_threshold)"
    );
}

fn llm_label(llm: &str) -> String {
    if llm.is_empty() {
        "none".to_string()
    } else {
        llm.to_string()
    }
}

// ===== events =====

/// Counts a finished task (and, on a programmer, its attempts; on the manager, its failovers).
pub fn task_finished(role: Role, result: &TaskResult) {
    let outcome = if result.dry_run {
        "dry_run"
    } else {
        state_name(result.status)
    };
    let llm = llm_label(&result.llm_used);
    let programmer = result.programmer_id.clone();
    let seconds = Duration::from_millis(result.duration_ms).as_secs_f64();
    match role {
        Role::Programmer => {
            counter!("pas_programmer_tasks_total", "programmer_id" => programmer.clone(),
                "llm" => llm.clone(), "outcome" => outcome)
            .increment(1);
            if !result.dry_run {
                histogram!("pas_programmer_task_duration_seconds", "programmer_id" => programmer.clone(),
                    "llm" => llm, "outcome" => outcome)
                .record(seconds);
            }
            for a in &result.attempts {
                let llm = llm_label(&a.llm);
                counter!("pas_llm_attempts_total", "programmer_id" => programmer.clone(),
                    "llm" => llm.clone(), "outcome" => error_class_name(a.error_class))
                .increment(1);
                histogram!("pas_llm_attempt_duration_seconds", "llm" => llm.clone())
                    .record(Duration::from_millis(a.duration_ms).as_secs_f64());
                counter!("pas_llm_tokens_total", "llm" => llm.clone(), "direction" => "sent")
                    .increment(a.tokens_sent);
                counter!("pas_llm_tokens_total", "llm" => llm.clone(), "direction" => "received")
                    .increment(a.tokens_received);
                // `metrics` counters are integers; dollars need a float that only grows.
                gauge!("pas_llm_spend_usd", "llm" => llm).increment(a.cost_usd);
            }
        }
        Role::Manager => {
            counter!("pas_pool_tasks_total", "programmer_id" => programmer,
                "llm" => llm.clone(), "outcome" => outcome)
            .increment(1);
            if !result.dry_run {
                histogram!("pas_pool_task_duration_seconds", "llm" => llm, "outcome" => outcome)
                    .record(seconds);
            }
            for pair in result.attempts.windows(2) {
                counter!("pas_pool_failovers_total", "from_llm" => llm_label(&pair[0].llm),
                    "to_llm" => llm_label(&pair[1].llm))
                .increment(1);
            }
        }
    }
}

/// Counts a failover inside a task (programmer side, as it happens).
pub fn failover(programmer_id: &str, from_llm: &str, to_llm: &str, reason: &str) {
    counter!("pas_failovers_total", "programmer_id" => programmer_id.to_string(),
        "from_llm" => from_llm.to_string(), "to_llm" => to_llm.to_string(),
        "reason" => reason.to_string())
    .increment(1);
}

/// Counts a breaker transition of `programmer_id`'s primary `llm`.
pub fn breaker_transition(programmer_id: &str, llm: &str, from: &'static str, to: &'static str) {
    counter!("pas_breaker_transitions_total", "programmer_id" => programmer_id.to_string(),
        "llm" => llm.to_string(), "from" => from, "to" => to)
    .increment(1);
}

/// Counts a task that failed on a free programmer for a task-level reason and asked to escalate:
/// `outcome` is `escalated` or `refused` (the budget or the pool could not take it), `trigger`
/// the failure (edit_failed, no_edit, attempts_exhausted).
pub fn escalation(outcome: &'static str, trigger: &'static str) {
    counter!("pas_escalations_total", "outcome" => outcome, "trigger" => trigger).increment(1);
}

/// Counts a routing decision of the manager.
pub fn routing_decision(strategy: &str, programmer_id: &str) {
    counter!("pas_routing_decisions_total", "strategy" => strategy.to_string(),
        "programmer_id" => programmer_id.to_string())
    .increment(1);
}

/// Logs and counts every transition a breaker broadcasts, until the breaker is gone. `names`
/// turns a transition into its `(from, to)` state names (the breaker lives in the programmer
/// layer; this module only sees its names); `llm` names the primary LLM in force as each
/// transition is read (a re-read configuration may replace it: the transition that closes the
/// old one's breaker may then carry the new name).
pub fn watch_breaker<T>(
    mut transitions: tokio::sync::broadcast::Receiver<T>,
    programmer_id: &str,
    llm: impl Fn() -> String + Send + 'static,
    names: fn(&T) -> (&'static str, &'static str),
) -> tokio::task::JoinHandle<()>
where
    T: Clone + Send + 'static,
{
    let programmer_id = programmer_id.to_string();
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match transitions.recv().await {
                Ok(t) => {
                    let (from, to) = names(&t);
                    let llm = llm();
                    breaker_transition(&programmer_id, &llm, from, to);
                    if to == "open" {
                        tracing::warn!(programmer_id = %programmer_id, llm = %llm, from, to,
                            "circuit breaker opened: new tasks start on the backup LLM");
                    } else {
                        tracing::info!(programmer_id = %programmer_id, llm = %llm, from, to,
                            "circuit breaker {to}");
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(programmer_id = %programmer_id, missed,
                        "missed breaker transitions (metrics undercount)");
                }
                Err(RecvError::Closed) => return,
            }
        }
    })
}

// ===== state gauges, set at scrape time =====

fn circuit_value(state: i32) -> f64 {
    match CircuitState::try_from(state).unwrap_or(CircuitState::Unspecified) {
        CircuitState::Open => 1.0,
        CircuitState::HalfOpen => 2.0,
        _ => 0.0,
    }
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// Sets a programmer's state gauges from its status.
pub fn programmer_gauges(s: &ProgrammerStatus) {
    let id = s.programmer_id.clone();
    gauge!("pas_programmer_queue_depth", "programmer_id" => id.clone()).set(s.queue_depth);
    gauge!("pas_programmer_running", "programmer_id" => id.clone()).set(s.running);
    gauge!("pas_programmer_queue_capacity", "programmer_id" => id.clone()).set(s.max_queue);
    gauge!("pas_programmer_draining", "programmer_id" => id.clone())
        .set(flag(s.status == "draining"));
    let llm = s.llm.clone().unwrap_or_default();
    gauge!("pas_programmer_using_backup", "programmer_id" => id.clone())
        .set(flag(llm.using_backup));
    gauge!("pas_breaker_state", "programmer_id" => id.clone(), "llm" => llm.primary.clone())
        .set(circuit_value(llm.circuit_state));
    gauge!("pas_breaker_failures_in_window", "programmer_id" => id, "llm" => llm.primary)
        .set(llm.failures);
}

/// Sets the manager's pool, queue, budget and alert gauges from a pool status.
pub fn pool_gauges(s: &PoolStatus) {
    gauge!("pas_pool_size").set(s.pool_size);
    gauge!("pas_pool_programmers", "state" => "available").set(s.available);
    gauge!("pas_pool_programmers", "state" => "unavailable").set(s.unavailable);
    gauge!("pas_pool_programmers_on_backup").set(s.using_backup);
    for p in &s.programmers {
        let available = p.state == ProgrammerState::Available as i32;
        gauge!("pas_pool_programmer_available", "programmer_id" => p.id.clone())
            .set(flag(available));
        gauge!("pas_pool_programmer_on_backup", "programmer_id" => p.id.clone())
            .set(flag(p.using_backup));
        gauge!("pas_queue_depth", "programmer_id" => p.id.clone()).set(p.queue_depth);
    }
    gauge!("pas_queue_depth_total").set(s.total_queue_depth);
    gauge!("pas_manager_queue_depth").set(s.manager_queue_depth);
    gauge!("pas_manager_queue_capacity").set(s.manager_queue_capacity);
    if let Some(b) = &s.budget {
        gauge!("pas_budget_daily_spend_usd").set(b.spent_usd);
        gauge!("pas_budget_reserved_usd").set(b.reserved_usd);
        gauge!("pas_budget_limit_usd").set(b.limit_usd);
        gauge!("pas_budget_remaining_usd").set(b.remaining_usd);
        gauge!("pas_budget_alert_threshold_usd").set(b.alert_threshold_usd);
    }
    let mut kinds: Vec<String> = ALERT_KINDS.iter().map(|k| k.to_string()).collect();
    for a in &s.alerts {
        if !kinds.contains(&a.kind) {
            kinds.push(a.kind.clone());
        }
    }
    for kind in kinds {
        let active = s.alerts.iter().any(|a| a.kind == kind);
        gauge!("pas_alert_active", "alert" => kind).set(flag(active));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::v1::{
        Alert, Attempt, Budget, ErrorClass, LlmState, ProgrammerSummary, TaskState,
    };

    fn render_with(f: impl FnOnce()) -> String {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, f);
        handle.render()
    }

    fn line_value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn a_programmer_task_counts_outcome_duration_attempts_and_spend() {
        let result = TaskResult {
            status: TaskState::Succeeded as i32,
            programmer_id: "001".into(),
            llm_used: "b".into(),
            used_backup: true,
            duration_ms: 12_000,
            attempts: vec![
                Attempt {
                    number: 1,
                    llm: "a".into(),
                    error_class: ErrorClass::RateLimit as i32,
                    duration_ms: 3_000,
                    ..Default::default()
                },
                Attempt {
                    number: 2,
                    llm: "b".into(),
                    backup: true,
                    duration_ms: 8_000,
                    tokens_sent: 100,
                    tokens_received: 7,
                    cost_usd: 0.25,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let text = render_with(|| task_finished(Role::Programmer, &result));
        let v = |s: &str| line_value(&text, s).unwrap_or_else(|| panic!("{s} in\n{text}"));
        assert_eq!(
            v(r#"pas_programmer_tasks_total{programmer_id="001",llm="b",outcome="succeeded"}"#),
            1.0
        );
        assert_eq!(
            v(
                r#"pas_programmer_task_duration_seconds_sum{programmer_id="001",llm="b",outcome="succeeded"}"#
            ),
            12.0
        );
        assert_eq!(
            v(
                r#"pas_programmer_task_duration_seconds_bucket{programmer_id="001",llm="b",outcome="succeeded",le="10"}"#
            ),
            0.0
        );
        assert_eq!(
            v(
                r#"pas_programmer_task_duration_seconds_bucket{programmer_id="001",llm="b",outcome="succeeded",le="15"}"#
            ),
            1.0
        );
        assert_eq!(
            v(r#"pas_llm_attempts_total{programmer_id="001",llm="a",outcome="rate_limit"}"#),
            1.0
        );
        assert_eq!(
            v(r#"pas_llm_attempts_total{programmer_id="001",llm="b",outcome="none"}"#),
            1.0
        );
        assert_eq!(
            v(r#"pas_llm_tokens_total{llm="b",direction="sent"}"#),
            100.0
        );
        assert_eq!(v(r#"pas_llm_spend_usd{llm="b"}"#), 0.25);
    }

    #[test]
    fn the_manager_counts_failovers_from_the_attempts_and_skips_dry_run_durations() {
        let failed_over = TaskResult {
            status: TaskState::Failed as i32,
            programmer_id: "002".into(),
            llm_used: "b".into(),
            duration_ms: 1_000,
            attempts: vec![
                Attempt {
                    llm: "a".into(),
                    ..Default::default()
                },
                Attempt {
                    llm: "b".into(),
                    ..Default::default()
                },
                Attempt {
                    llm: "b".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let dry = TaskResult {
            status: TaskState::Succeeded as i32,
            programmer_id: "002".into(),
            llm_used: "a".into(),
            dry_run: true,
            ..Default::default()
        };
        let text = render_with(|| {
            task_finished(Role::Manager, &failed_over);
            task_finished(Role::Manager, &dry);
            routing_decision("round_robin", "002");
        });
        let v = |s: &str| line_value(&text, s).unwrap_or_else(|| panic!("{s} in\n{text}"));
        assert_eq!(
            v(r#"pas_pool_failovers_total{from_llm="a",to_llm="b"}"#),
            1.0
        );
        assert_eq!(
            v(r#"pas_pool_failovers_total{from_llm="b",to_llm="b"}"#),
            1.0
        );
        assert_eq!(
            v(r#"pas_pool_tasks_total{programmer_id="002",llm="a",outcome="dry_run"}"#),
            1.0
        );
        assert_eq!(
            v(r#"pas_pool_task_duration_seconds_count{llm="b",outcome="failed"}"#),
            1.0
        );
        assert!(!text.contains(r#"pas_pool_task_duration_seconds_count{llm="a""#));
        assert_eq!(
            v(r#"pas_routing_decisions_total{strategy="round_robin",programmer_id="002"}"#),
            1.0
        );
    }

    #[test]
    fn state_gauges_mirror_the_status_snapshots() {
        let prog = ProgrammerStatus {
            programmer_id: "003".into(),
            status: "ok".into(),
            queue_depth: 2,
            running: 1,
            max_queue: 5,
            llm: Some(LlmState {
                primary: "p".into(),
                using_backup: true,
                circuit_state: CircuitState::HalfOpen as i32,
                failures: 3,
                ..Default::default()
            }),
            ..Default::default()
        };
        let pool = PoolStatus {
            pool_size: 2,
            available: 1,
            unavailable: 1,
            using_backup: 1,
            total_queue_depth: 4,
            programmers: vec![ProgrammerSummary {
                id: "003".into(),
                state: ProgrammerState::Available as i32,
                using_backup: true,
                queue_depth: 3,
                ..Default::default()
            }],
            budget: Some(Budget {
                spent_usd: 12.5,
                limit_usd: 50.0,
                remaining_usd: 35.0,
                reserved_usd: 2.5,
                alert_threshold_usd: 40.0,
                ..Default::default()
            }),
            alerts: vec![Alert {
                kind: "high_backup_usage".into(),
                ..Default::default()
            }],
            manager_queue_depth: 1,
            manager_queue_capacity: 100,
            ..Default::default()
        };
        let text = render_with(|| {
            programmer_gauges(&prog);
            pool_gauges(&pool);
        });
        let v = |s: &str| line_value(&text, s).unwrap_or_else(|| panic!("{s} in\n{text}"));
        assert_eq!(v(r#"pas_programmer_queue_depth{programmer_id="003"}"#), 2.0);
        assert_eq!(
            v(r#"pas_programmer_using_backup{programmer_id="003"}"#),
            1.0
        );
        assert_eq!(v(r#"pas_breaker_state{programmer_id="003",llm="p"}"#), 2.0);
        assert_eq!(
            v(r#"pas_breaker_failures_in_window{programmer_id="003",llm="p"}"#),
            3.0
        );
        assert_eq!(v(r#"pas_pool_programmers{state="available"}"#), 1.0);
        assert_eq!(v(r#"pas_pool_programmers{state="unavailable"}"#), 1.0);
        assert_eq!(v("pas_pool_programmers_on_backup"), 1.0);
        assert_eq!(v(r#"pas_queue_depth{programmer_id="003"}"#), 3.0);
        assert_eq!(v("pas_queue_depth_total"), 4.0);
        assert_eq!(v("pas_budget_daily_spend_usd"), 12.5);
        assert_eq!(v("pas_budget_remaining_usd"), 35.0);
        assert_eq!(v(r#"pas_alert_active{alert="high_backup_usage"}"#), 1.0);
        assert_eq!(v(r#"pas_alert_active{alert="low_availability"}"#), 0.0);
        assert_eq!(v(r#"pas_alert_active{alert="budget_threshold"}"#), 0.0);
    }

    #[tokio::test]
    async fn the_breaker_watch_ends_when_the_breaker_is_gone() {
        let (tx, rx) = tokio::sync::broadcast::channel::<(&'static str, &'static str)>(8);
        let watch = watch_breaker(rx, "001", || "p".to_string(), |t| (t.0, t.1));
        tx.send(("closed", "open")).unwrap();
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), watch)
            .await
            .expect("the watch ends")
            .unwrap();
    }

    #[test]
    fn breaker_transitions_are_counted_by_from_and_to() {
        let text = render_with(|| {
            breaker_transition("001", "p", "closed", "open");
            breaker_transition("001", "p", "half_open", "open");
            breaker_transition("001", "p", "half_open", "open");
        });
        let prefix = r#"pas_breaker_transitions_total{programmer_id="001",llm="p","#;
        assert_eq!(
            line_value(&text, &format!(r#"{prefix}from="closed",to="open"}}"#)),
            Some(1.0)
        );
        assert_eq!(
            line_value(&text, &format!(r#"{prefix}from="half_open",to="open"}}"#)),
            Some(2.0)
        );
    }
}
