//! The spans of a task's life, one constructor per step, so every service names and shapes them
//! the same way and the call sites stay one line.
//!
//! A dispatched task's trace:
//!
//! ```text
//! (caller's span, from its traceparent)
//! └── manager.task            task_id run_id strategy → outcome programmer_id llm used_backup
//!     ├── manager.queue_wait   waiting for a programmer with room
//!     └── manager.route        routing decision: strategy candidates programmer_id dispatch_attempt
//!         └── programmer.task  (other process) task_id run_id programmer_id → outcome llm …
//!             ├── programmer.queue_wait
//!             ├── programmer.worktree
//!             ├── programmer.attempt   attempt llm backup → outcome tokens cost
//!             │   └── aider            llm → exit_code tokens_sent tokens_received cost_usd
//!             │   (failover event)     from to reason
//!             └── programmer.attempt   attempt 2 on the backup …
//! ```
//!
//! Attributes are ids, model names, counts, costs and outcome classes only (no API keys, task
//! descriptions or file contents). What a span is about (ids, model) is a `tracing` field, so log
//! lines inside the span show it too; what it came to (outcome, tokens, cost, status) is set on
//! the OpenTelemetry span only ([`record_result`], [`record_attempt`], [`record_aider`]), so the
//! log line that reports the outcome is not preceded by a copy of it.

use crate::contract::v1::{Attempt, ErrorClass, TaskResult, TaskState};
use crate::money::Usd;
use opentelemetry::trace::Status;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::contract::{error_class_name, state_name};

/// A task's life in the manager, from acceptance to its result (a server span: its parent is
/// the caller's `traceparent`, when sent).
pub fn manager_task(task_id: &str, run_id: &str, strategy: &str, dry_run: bool) -> Span {
    tracing::info_span!(
        "manager.task",
        otel.kind = "server",
        task_id = %task_id,
        run_id = %run_id,
        strategy = %strategy,
        dry_run,
    )
}

/// Waiting in a queue (`manager` or `programmer`) for room.
pub fn queue_wait(queue: &'static str) -> Span {
    match queue {
        "manager" => tracing::info_span!("manager.queue_wait", queue),
        _ => tracing::info_span!("programmer.queue_wait", queue),
    }
}

/// The manager's routing decision for one dispatch attempt and the `Execute` call it led to (a
/// client span: the programmer's task span is its child). Also counts the decision in
/// `pas_routing_decisions_total`.
pub fn route(
    strategy: &str,
    candidates: &[String],
    programmer_id: &str,
    dispatch_attempt: u32,
) -> Span {
    super::metrics::routing_decision(strategy, programmer_id);
    tracing::info_span!(
        "manager.route",
        otel.kind = "client",
        strategy = %strategy,
        candidates = %candidates.join(","),
        candidate_count = candidates.len(),
        programmer_id = %programmer_id,
        dispatch_attempt,
    )
}

/// A task's life on a programmer, from acceptance to its result (a server span: its parent is
/// the manager's `manager.route` span).
pub fn programmer_task(
    task_id: &str,
    run_id: &str,
    programmer_id: &str,
    workspace: &str,
    dry_run: bool,
) -> Span {
    tracing::info_span!(
        "programmer.task",
        otel.kind = "server",
        task_id = %task_id,
        run_id = %run_id,
        programmer_id = %programmer_id,
        workspace = %workspace,
        dry_run,
    )
}

/// Creating the task's git worktree.
pub fn worktree() -> Span {
    tracing::info_span!("programmer.worktree")
}

/// One attempt of a task on one LLM; [`record_attempt`] adds its outcome.
pub fn attempt(number: u32, llm: &str, backup: bool) -> Span {
    tracing::info_span!(
        "programmer.attempt",
        attempt = number,
        llm = %llm,
        backup,
    )
}

/// Records an attempt's outcome (from the `Attempt` the task result lists) on its span.
pub fn record_attempt(span: &Span, attempt: Option<&Attempt>) {
    let Some(a) = attempt else {
        return;
    };
    let ok = a.error_class == ErrorClass::None as i32;
    span.set_attribute("outcome", if ok { "succeeded" } else { "failed" });
    span.set_attribute("error_class", error_class_name(a.error_class));
    span.set_attribute("tokens_sent", a.tokens_sent as i64);
    span.set_attribute("tokens_received", a.tokens_received as i64);
    span.set_attribute("cost_usd", a.cost_usd);
    span.set_status(if ok {
        Status::Ok
    } else {
        Status::error(error_class_name(a.error_class))
    });
}

/// The aider process of one attempt; [`record_aider`] adds what it used.
pub fn aider(llm: &str) -> Span {
    tracing::info_span!(
        "aider",
        llm = %llm,
    )
}

/// Records aider's exit code, tokens and cost on its span.
pub fn record_aider(
    span: &Span,
    exit_code: Option<i32>,
    tokens_sent: u64,
    tokens_received: u64,
    cost: Usd,
) {
    if let Some(code) = exit_code {
        span.set_attribute("exit_code", i64::from(code));
    }
    span.set_attribute("tokens_sent", tokens_sent as i64);
    span.set_attribute("tokens_received", tokens_received as i64);
    span.set_attribute("cost_usd", cost.as_usd_f64());
}

/// Records a task's result on `span` (a `manager.task` or `programmer.task` span):
/// outcome, the programmer (when `with_programmer`: the manager's span does not know it up front),
/// the LLM of the result, attempts, error class, cost, tokens, duration and the span status.
pub fn record_result(span: &Span, result: &TaskResult, with_programmer: bool) {
    span.set_attribute("outcome", state_name(result.status));
    if with_programmer && !result.programmer_id.is_empty() {
        span.set_attribute("programmer_id", result.programmer_id.clone());
    }
    if !result.llm_used.is_empty() {
        span.set_attribute("llm", result.llm_used.clone());
        span.set_attribute("used_backup", result.used_backup);
    }
    span.set_attribute("attempts", result.attempts.len() as i64);
    span.set_attribute("error_class", error_class_name(result.error_class));
    span.set_attribute("cost_usd", result.cost_usd);
    span.set_attribute("tokens_sent", result.tokens_sent as i64);
    span.set_attribute("tokens_received", result.tokens_received as i64);
    span.set_attribute("duration_ms", result.duration_ms as i64);
    match TaskState::try_from(result.status) {
        Ok(TaskState::Succeeded) => span.set_status(Status::Ok),
        Ok(TaskState::Failed | TaskState::TimedOut) => {
            span.set_status(Status::error(error_class_name(result.error_class)))
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lower_case_without_prefixes() {
        assert_eq!(state_name(TaskState::TimedOut as i32), "timed_out");
        assert_eq!(state_name(99), "unknown");
        assert_eq!(error_class_name(ErrorClass::RateLimit as i32), "rate_limit");
        assert_eq!(error_class_name(ErrorClass::None as i32), "none");
    }
}
