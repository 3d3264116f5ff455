//! One task's life on a programmer: the attempt loop with failover and the circuit breaker.
//!
//! Decided semantics (DESIGN.md): attempt 1 uses the LLM the breaker admits (the primary, or the
//! backup while the breaker is open). On an LLM-class failure (one of `failure_conditions`) the
//! programmer waits `retry_delay_s`, resets the worktree to the task's base commit and retries on
//! the backup, at most `max_retries` times (`always_failover` guarantees one backup try). Edit
//! failures, git errors and caller errors end the task without a retry and never touch the breaker.
//! Only attempts on the primary are reported to the breaker. The task's token and cost caps cover
//! all its attempts: each attempt is given what the earlier ones used ([`UsageCap`]) and is stopped
//! the moment the total crosses a cap (ERROR_CLASS_JOB_LIMIT, never a failover).

use crate::config::{Durability, Failover as FailoverSettings, FailureCondition};
use crate::contract::v1::{
    Assigned, Attempt, ErrorClass, Failover, TaskResult, TaskState, task_event::Kind,
};
use crate::money::Usd;
use crate::programmer::aider::UsageCap;
use crate::programmer::attempt::{AttemptOutcome, AttemptReport, run_attempt};
use crate::programmer::breaker::Admission;
use crate::programmer::state::Programmer;
use crate::programmer::validate::{TaskRepo, ValidatedTask};
use crate::programmer::worktree::{TaskWorktree, WorktreeError};
use crate::task_events::TaskEventSink;
use crate::task_sources::TaskSources;
use crate::telemetry;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The class an LLM-class outcome maps to in the config's `failure_conditions`.
pub fn failure_condition(class: ErrorClass) -> Option<FailureCondition> {
    match class {
        ErrorClass::Timeout => Some(FailureCondition::Timeout),
        ErrorClass::ApiError => Some(FailureCondition::ApiError),
        ErrorClass::RateLimit => Some(FailureCondition::RateLimit),
        ErrorClass::ModelUnavailable => Some(FailureCondition::ModelUnavailable),
        _ => None,
    }
}

/// How many attempts a task may make in total under the failover settings.
pub fn max_attempts(failover: &crate::config::Failover) -> u32 {
    if !failover.enabled {
        return 1;
    }
    let retries = if failover.always_failover {
        failover.max_retries.max(1)
    } else {
        failover.max_retries
    };
    1 + retries
}

/// Runs `task` to its end and returns its result (the caller sends it as the terminal event).
/// `sources` are the ones it was validated under, kept for its whole life (a re-read file
/// changes them only for the tasks validated afterwards); `started` is when the programmer
/// accepted the task (for `duration_ms`).
pub async fn run_task(
    prog: &Programmer,
    task: &ValidatedTask,
    sources: &TaskSources,
    sink: &TaskEventSink,
    cancel: CancellationToken,
    started: Instant,
) -> TaskResult {
    // The settings a re-read file may change (its LLMs and limits, failover): this task runs
    // under the ones in force as it starts.
    let settings = prog.live();
    let spec = &settings.spec;
    let mut result = TaskResult {
        programmer_id: spec.id.clone(),
        ..Default::default()
    };
    let deadline = Instant::now() + task.deadline;

    // A local workspace, or this host's mirror of the task's remote, fetched now (into the
    // mirrors of the `repositories:` settings the task was validated under: `sources`).
    let (workspace, base_commit) = match &task.repo {
        TaskRepo::Local(ws) => match ws.resolve_base(task.base_ref.as_deref()).await {
            Ok(c) => (ws.clone(), c),
            Err(e) => {
                return fail(
                    result,
                    ErrorClass::GitError,
                    format!("base_ref: {e}"),
                    started,
                );
            }
        },
        TaskRepo::Remote(remote) => {
            let Some(mirrors) = sources.mirrors.as_ref() else {
                let msg = "repo_url: this programmer has no repositories: section".to_string();
                return fail(result, ErrorClass::BadRequest, msg, started);
            };
            match mirrors.fetch(remote, task.base_ref.as_deref()).await {
                Ok(fetched) => fetched,
                Err(e) => return fail(result, ErrorClass::GitError, e.to_string(), started),
            }
        }
    };
    result.base_commit = base_commit.clone();
    let identity = prog.git_identity();
    let created = workspace
        .create_task_worktree(
            &prog.worktrees_dir,
            &task.task_id,
            &task.origin_task_id,
            &base_commit,
            &identity,
        )
        .instrument(telemetry::spans::worktree())
        .await;
    let mut worktree = match (created, &task.repo) {
        (Ok(mut w), TaskRepo::Remote(remote)) => {
            if sources.mirrors.as_ref().is_some_and(|m| m.push()) {
                w.push_to(remote.clone());
            }
            w
        }
        (Ok(w), TaskRepo::Local(_)) => w,
        (Err(e @ WorktreeError::AlreadyKept { .. }), _) => return already_kept(result, e, started),
        (Err(e), _) => {
            return fail(
                result,
                ErrorClass::GitError,
                format!("cannot create the task worktree: {e}"),
                started,
            );
        }
    };
    if prog.durability == Durability::PowerLoss {
        worktree.sync_writes();
    }
    // Admission vetted the files against the main checkout; aider opens them in this worktree,
    // at the base commit, where a committed symlink may lead elsewhere. Before aider runs.
    if let Err(refused) = worktree.check_files(&task.files).await {
        let class = if refused.code() == tonic::Code::InvalidArgument {
            ErrorClass::BadRequest
        } else {
            ErrorClass::Internal
        };
        let message = format!(
            "{} (in the task's worktree at base commit {base_commit})",
            refused.message()
        );
        return finish_failed(worktree, result, class, message, started).await;
    }

    let mut admission = Some(prog.breaker.admit());
    if admission.as_ref().is_some_and(Admission::is_probe) {
        // Saved as "half-open, probe in flight": if the process dies during the probe, the
        // restarted programmer re-opens the breaker for a full cooldown instead of probing again
        // at once (the probe never gave a verdict).
        prog.persist_breaker();
    }
    let starts_on_primary = admission.as_ref().is_some_and(|a| !a.uses_backup());
    let mut llm = if starts_on_primary {
        spec.primary.clone()
    } else {
        spec.backup.clone()
    };
    let assigned = Assigned {
        programmer_id: spec.id.clone(),
        llm: llm.name.clone(),
        using_backup: !starts_on_primary,
        ..Default::default()
    };
    if !sink.send(Kind::Assigned(assigned)).await {
        // A probe dropped without a verdict re-opens the breaker: save that too.
        drop(admission.take());
        prog.persist_breaker();
        result.status = TaskState::Cancelled as i32;
        return finish_with(
            worktree,
            result,
            ErrorClass::Cancelled,
            "caller went away".into(),
            started,
        )
        .await;
    }
    let failover = &settings.failover;
    let attempts_allowed = max_attempts(failover);
    let retry_delay = Duration::from_secs_f64(failover.retry_delay_s.max(0.0));

    // The task's cost: the attempts' integer costs, summed exactly.
    let mut cost = Usd::ZERO;
    for number in 1..=attempts_allowed {
        if number > 1 {
            if let Err(e) = worktree.reset().await {
                return finish_failed(
                    worktree,
                    result,
                    ErrorClass::GitError,
                    format!("worktree reset: {e}"),
                    started,
                )
                .await;
            }
        }
        let on_primary = number == 1 && starts_on_primary;
        let span = telemetry::spans::attempt(number, &llm.name, !on_primary);
        // The caps cover the whole task: this attempt may use what the earlier ones left.
        let cap = UsageCap {
            max_tokens: task.max_tokens,
            max_cost: task.max_cost,
            prior_tokens: result.tokens_sent + result.tokens_received,
            prior_cost: cost,
        };
        // One aider run is bounded by max_duration_per_job_s as well as by the task's deadline.
        let run_limit = Duration::from_secs(spec.limits.max_duration_per_job_s);
        let attempt_deadline = deadline.min(Instant::now() + run_limit);
        let report: AttemptReport = run_attempt(
            prog,
            task,
            &worktree,
            &llm,
            number,
            cap.clone(),
            sink,
            &cancel,
            attempt_deadline,
            &settings,
        )
        .instrument(span.clone())
        .await;
        result.tokens_sent += report.tokens_sent;
        result.tokens_received += report.tokens_received;
        cost = cost.saturating_add(report.cost);
        result.set_cost(cost);
        result.llm_used = llm.name.clone();
        result.used_backup = !on_primary;
        let mut attempt = Attempt {
            number,
            llm: llm.name.clone(),
            backup: !on_primary,
            error_class: report.outcome.error_class() as i32,
            error_message: report.outcome.message().to_string(),
            duration_ms: report.duration.as_millis() as u64,
            tokens_sent: report.tokens_sent,
            tokens_received: report.tokens_received,
            ..Default::default()
        };
        attempt.set_cost(report.cost);
        result.attempts.push(attempt);
        telemetry::spans::record_attempt(&span, result.attempts.last());

        // Tell the breaker about the primary; a dropped probe admission re-opens it.
        if on_primary {
            if let Some(adm) = admission.take() {
                report_to_breaker(prog, failover, adm, &report.outcome);
            }
        }

        let over_limit = cap.exceeded(report.tokens_sent + report.tokens_received, report.cost);
        match report.outcome {
            AttemptOutcome::Cancelled => {
                result.status = TaskState::Cancelled as i32;
                return finish_with(
                    worktree,
                    result,
                    ErrorClass::Cancelled,
                    "cancelled by the caller".into(),
                    started,
                )
                .await;
            }
            AttemptOutcome::DeadlineExceeded => {
                result.status = TaskState::TimedOut as i32;
                let msg = if attempt_deadline < deadline {
                    format!(
                        "attempt {number} ran past max_duration_per_job_s ({}s): aider was stopped",
                        run_limit.as_secs()
                    )
                } else {
                    format!("task deadline of {}s exceeded", task.deadline.as_secs())
                };
                return finish_with(worktree, result, ErrorClass::Deadline, msg, started).await;
            }
            // Crossed while aider ran, and aider was stopped there: never a failover (the next
            // attempt could only spend more). The figures are the attempt's final ones.
            AttemptOutcome::CapReached(seen) => {
                let msg = format!(
                    "{}; aider was stopped during attempt {number}",
                    over_limit.unwrap_or(seen)
                );
                return finish_failed(worktree, result, ErrorClass::JobLimit, msg, started).await;
            }
            // A cap is a cap even when the edit applied: the caller asked not to pay more than
            // this, so the result is not delivered (and no further attempt spends more).
            _ if over_limit.is_some() => {
                let msg = over_limit.unwrap_or_default();
                return finish_failed(worktree, result, ErrorClass::JobLimit, msg, started).await;
            }
            AttemptOutcome::Succeeded(change) => {
                let kept_branch = worktree.kept_branch().to_string();
                // The result keeping the edit makes, recorded before the branch is created when
                // it is created here (not pushed): a process killed between the two then ends the
                // task with it on restart instead of handing back a task whose edit is kept.
                let mut succeeded = TaskResult {
                    files_changed: change.files_changed.clone(),
                    diff: change.diff.clone(),
                    change_truncated: change.truncated,
                    commit: change.commit.clone(),
                    branch: kept_branch.clone(),
                    status: TaskState::Succeeded as i32,
                    error_class: ErrorClass::None as i32,
                    duration_ms: started.elapsed().as_millis() as u64,
                    ..result.clone()
                };
                if let Some(repo) = worktree.keeps_in() {
                    let (runs, task_id) = (prog.runs.clone(), task.task_id.clone());
                    let (repo, record) = (repo.to_path_buf(), succeeded.clone());
                    // A write and an fsync: on the blocking pool, like the keep itself.
                    let recorded =
                        crate::git::unstoppable(move || runs.keeping(&task_id, &repo, record))
                            .await;
                    if let Err(e) = recorded.and_then(|r| r) {
                        tracing::warn!(task_id = %task.task_id, "cannot record the result before keeping it: {e}");
                    }
                }
                return match worktree.keep(&change).await {
                    Ok(pushed) => {
                        if let Some(pushed_ref) = pushed {
                            succeeded.pushed_ref = pushed_ref;
                            succeeded.pushed_commit = change.commit;
                        }
                        succeeded.duration_ms = started.elapsed().as_millis() as u64;
                        succeeded
                    }
                    Err(e @ WorktreeError::AlreadyKept { .. }) => {
                        tracing::warn!(task_id = %task.task_id, origin = %task.origin_task_id, "{e}");
                        already_kept(result, e, started)
                    }
                    // `keep` removed the worktree and scratch branch: nothing is left to discard.
                    Err(e @ WorktreeError::PushFailed { .. }) => {
                        fail(result, ErrorClass::PushFailed, e.to_string(), started)
                    }
                    Err(e) => fail(
                        result,
                        ErrorClass::GitError,
                        format!("could not keep the result on {kept_branch}: {e}"),
                        started,
                    ),
                };
            }
            AttemptOutcome::LlmFailed { class, ref message }
                if number < attempts_allowed && is_failover_condition(failover, class) =>
            {
                let next = spec.backup.clone();
                prog.counters
                    .failovers
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let name = failure_condition(class).map_or(class.as_str_name(), |c| c.as_str());
                let reason = format!("{name}: {message}");
                telemetry::metrics::failover(
                    &spec.id,
                    &llm.name,
                    &next.name,
                    &crate::contract::error_class_name(class as i32),
                );
                tracing::info!(task_id = %task.task_id, from = %llm.name, to = %next.name, attempt = number + 1, %reason, "failover");
                let event = Failover {
                    from_llm: llm.name.clone(),
                    to_llm: next.name.clone(),
                    reason,
                    attempt: number + 1,
                    error_class: class as i32,
                };
                if !sink.send(Kind::Failover(event)).await {
                    result.status = TaskState::Cancelled as i32;
                    return finish_with(
                        worktree,
                        result,
                        ErrorClass::Cancelled,
                        "caller went away".into(),
                        started,
                    )
                    .await;
                }
                llm = next;
                tokio::select! {
                    _ = tokio::time::sleep(retry_delay) => {}
                    _ = cancel.cancelled() => {
                        result.status = TaskState::Cancelled as i32;
                        return finish_with(worktree, result, ErrorClass::Cancelled, "cancelled by the caller".into(), started).await;
                    }
                    _ = tokio::time::sleep_until(deadline) => {
                        result.status = TaskState::TimedOut as i32;
                        let msg = format!("task deadline of {}s exceeded", task.deadline.as_secs());
                        return finish_with(worktree, result, ErrorClass::Deadline, msg, started).await;
                    }
                }
            }
            other => {
                let class = other.error_class();
                let message = summarize_failure(&result, other.message());
                return finish_failed(worktree, result, class, message, started).await;
            }
        }
    }
    // Unreachable in practice: the last attempt always returns above.
    finish_failed(
        worktree,
        result,
        ErrorClass::Internal,
        "no attempt was made".into(),
        started,
    )
    .await
}

fn is_failover_condition(failover: &FailoverSettings, class: ErrorClass) -> bool {
    failure_condition(class).is_some_and(|c| failover.failure_conditions.contains(&c))
}

fn report_to_breaker(
    prog: &Programmer,
    failover: &FailoverSettings,
    admission: Admission,
    outcome: &AttemptOutcome,
) {
    let Admission::Primary(ticket) = admission else {
        return;
    };
    match outcome {
        AttemptOutcome::LlmFailed { class, .. } if is_failover_condition(failover, *class) => {
            ticket.primary_failed()
        }
        // The primary answered (even if its edit did not apply, or the answer crossed a cap): it
        // is available.
        AttemptOutcome::Succeeded(_)
        | AttemptOutcome::EditFailed(_)
        | AttemptOutcome::NoEdit(_)
        | AttemptOutcome::CapReached(_)
        | AttemptOutcome::LlmFailed { .. } => ticket.primary_succeeded(),
        // No verdict (cancelled, deadline, git or internal error): dropping the ticket re-opens
        // the breaker if it was the half-open probe, and changes nothing otherwise.
        _ => drop(ticket),
    }
    prog.persist_breaker();
}

/// The final message of a failed task lists every attempt, so one line tells the whole story.
fn summarize_failure(result: &TaskResult, last: &str) -> String {
    if result.attempts.len() <= 1 {
        return last.to_string();
    }
    let parts: Vec<String> = result
        .attempts
        .iter()
        .map(|a| {
            let class = crate::contract::error_class_name(a.error_class);
            format!("#{} {}: {} {}", a.number, a.llm, class, a.error_message)
        })
        .collect();
    format!(
        "all {} attempts failed: {}",
        result.attempts.len(),
        parts.join("; ")
    )
}

/// Ends a task whose result another attempt of it already kept: a failure, final (the manager
/// does not reroute a plain failed result), naming the branch and commit that exist.
fn already_kept(mut result: TaskResult, e: WorktreeError, started: Instant) -> TaskResult {
    if let WorktreeError::AlreadyKept { branch, commit } = &e {
        result.branch = branch.clone();
        result.commit = commit.clone().unwrap_or_default();
    }
    fail(result, ErrorClass::AlreadyKept, e.to_string(), started)
}

fn fail(
    mut result: TaskResult,
    class: ErrorClass,
    message: String,
    started: Instant,
) -> TaskResult {
    result.status = TaskState::Failed as i32;
    result.error_class = class as i32;
    result.error_message = message;
    result.duration_ms = started.elapsed().as_millis() as u64;
    result
}

async fn finish_failed(
    worktree: TaskWorktree,
    mut result: TaskResult,
    class: ErrorClass,
    message: String,
    started: Instant,
) -> TaskResult {
    result.status = TaskState::Failed as i32;
    finish_with(worktree, result, class, message, started).await
}

/// Ends a task that produced nothing to keep: the worktree and its branch are removed.
async fn finish_with(
    worktree: TaskWorktree,
    mut result: TaskResult,
    class: ErrorClass,
    message: String,
    started: Instant,
) -> TaskResult {
    if let Err(e) = worktree.discard().await {
        tracing::warn!("could not remove a failed task's worktree: {e}");
    }
    result.error_class = class as i32;
    result.error_message = message;
    result.duration_ms = started.elapsed().as_millis() as u64;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Failover as FailoverConfig;

    #[test]
    fn shipped_settings_try_primary_backup_backup() {
        let f = FailoverConfig::default();
        assert_eq!(max_attempts(&f), 3);
    }

    #[test]
    fn always_failover_guarantees_a_backup_try() {
        let f = FailoverConfig {
            max_retries: 0,
            always_failover: true,
            ..Default::default()
        };
        assert_eq!(max_attempts(&f), 2);
        let f = FailoverConfig {
            max_retries: 0,
            always_failover: false,
            ..Default::default()
        };
        assert_eq!(max_attempts(&f), 1);
        let f = FailoverConfig {
            enabled: false,
            ..Default::default()
        };
        assert_eq!(max_attempts(&f), 1);
    }

    #[test]
    fn llm_classes_map_to_failure_conditions() {
        assert_eq!(
            failure_condition(ErrorClass::RateLimit),
            Some(FailureCondition::RateLimit)
        );
        assert_eq!(failure_condition(ErrorClass::EditFailed), None);
        assert_eq!(failure_condition(ErrorClass::GitError), None);
    }
}
