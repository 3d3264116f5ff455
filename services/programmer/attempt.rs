//! One attempt of a task: run aider once on one LLM inside the task's worktree, relay its output as
//! it arrives, and decide what happened from aider's output, its analytics log and git — never from
//! its exit code alone (aider exits 0 after LLM failures).

use crate::config::LlmSpec;
use crate::contract::v1::{ErrorClass, Output, task_event::Kind};
use crate::programmer::aider::{AiderInvocation, ModelEndpoint, run_aider};
use crate::programmer::classify::{Outcome, classify};
use crate::programmer::state::Programmer;
use crate::programmer::validate::ValidatedTask;
use crate::programmer::worktree::{Change, TaskWorktree};
use crate::task_events::TaskEventSink;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What one attempt came to.
#[derive(Debug)]
pub enum AttemptOutcome {
    /// The edit applied and is committed on the task branch.
    Succeeded(Change),
    /// The LLM endpoint failed (counts for failover and the breaker when in `failure_conditions`).
    LlmFailed { class: ErrorClass, message: String },
    /// The LLM answered but no edit applied.
    EditFailed(String),
    /// A git operation failed.
    GitFailed(String),
    /// The caller cancelled.
    Cancelled,
    /// The task deadline passed.
    DeadlineExceeded,
    /// Aider could not be run or ended unexpectedly.
    Internal(String),
}

impl AttemptOutcome {
    /// The contract's error class for this outcome.
    pub fn error_class(&self) -> ErrorClass {
        match self {
            Self::Succeeded(_) => ErrorClass::None,
            Self::LlmFailed { class, .. } => *class,
            Self::EditFailed(_) => ErrorClass::EditFailed,
            Self::GitFailed(_) => ErrorClass::GitError,
            Self::Cancelled => ErrorClass::Cancelled,
            Self::DeadlineExceeded => ErrorClass::Deadline,
            Self::Internal(_) => ErrorClass::Internal,
        }
    }

    /// Detail for people; empty on success.
    pub fn message(&self) -> &str {
        match self {
            Self::Succeeded(_) => "",
            Self::LlmFailed { message, .. } | Self::EditFailed(message) | Self::GitFailed(message) => message,
            Self::Internal(message) => message,
            Self::Cancelled => "cancelled",
            Self::DeadlineExceeded => "deadline exceeded",
        }
    }
}

/// An attempt's outcome and what it used.
#[derive(Debug)]
pub struct AttemptReport {
    pub outcome: AttemptOutcome,
    pub duration: Duration,
    pub tokens_sent: u64,
    pub tokens_received: u64,
    pub cost_usd: f64,
}

/// The endpoint aider is pointed at for `llm`: base and key come from the catalog's provider
/// settings (environment or config), never from the caller.
pub fn endpoint_for(llm: &LlmSpec) -> ModelEndpoint {
    ModelEndpoint {
        name: llm.name.clone(),
        provider: llm.provider.as_str().to_string(),
        api_base: llm.api_base(),
        api_key: llm.api_key(),
        input_cost_per_token: llm.input_cost_per_token,
        output_cost_per_token: llm.output_cost_per_token,
        edit_format: llm.edit_format.clone(),
        context_limit: llm.context_limit,
    }
}

/// Runs attempt `number` of `task` on `llm`.
#[allow(clippy::too_many_arguments)]
pub async fn run_attempt(
    prog: &Programmer,
    task: &ValidatedTask,
    worktree: &TaskWorktree,
    llm: &LlmSpec,
    number: u32,
    sink: &TaskEventSink,
    cancel: &CancellationToken,
    deadline: Instant,
) -> AttemptReport {
    let started = Instant::now();
    let report = |outcome, tokens_sent, tokens_received, cost_usd| AttemptReport {
        outcome,
        duration: started.elapsed(),
        tokens_sent,
        tokens_received,
        cost_usd,
    };
    let home = match tempfile::Builder::new().prefix("aider-home-").tempdir_in(&prog.scratch_dir) {
        Ok(h) => h,
        Err(e) => return report(AttemptOutcome::Internal(format!("cannot create a private HOME: {e}")), 0, 0, 0.0),
    };
    let invocation = AiderInvocation {
        python: prog.aider.python.clone(),
        workdir: worktree.path().to_path_buf(),
        home: home.path().to_path_buf(),
        model: endpoint_for(llm),
        message: task.description.clone(),
        files: task.files.clone(),
        auto_commit: prog.spec.limits.auto_commit,
        extra_flags: prog.aider.extra_flags.clone(),
        request_timeout_s: prog.aider.request_timeout_s,
    };

    let (tx, mut rx) = mpsc::channel(256);
    let relay = async {
        while let Some(chunk) = rx.recv().await {
            let output = Output { text: chunk.text, stream: chunk.stream.as_str().to_string(), attempt: number };
            // A gone caller is noticed by the task's cancellation watcher; keep draining.
            let _ = sink.send(Kind::Output(output)).await;
        }
    };
    let (run, ()) = tokio::join!(run_aider(invocation, tx, cancel.clone(), deadline), relay);
    let run = match run {
        Ok(run) => run,
        Err(e) => return report(AttemptOutcome::Internal(format!("aider could not be run: {e}")), 0, 0, 0.0),
    };
    let (sent, received) = (run.usage.prompt_tokens, run.usage.completion_tokens);
    let cost = sent as f64 * llm.input_cost_per_token + received as f64 * llm.output_cost_per_token;
    if run.cancelled {
        return report(AttemptOutcome::Cancelled, sent, received, cost);
    }
    if run.timed_out {
        return report(AttemptOutcome::DeadlineExceeded, sent, received, cost);
    }
    let change = match worktree.finish(&commit_message(&task.description)).await {
        Ok(change) => change,
        Err(e) => return report(AttemptOutcome::GitFailed(e.to_string()), sent, received, cost),
    };
    let outcome = match classify(&run, !change.files_changed.is_empty()) {
        Outcome::Success => AttemptOutcome::Succeeded(change),
        Outcome::LlmFailure { class, message } => AttemptOutcome::LlmFailed { class: class.into(), message },
        Outcome::EditFailure(message) => AttemptOutcome::EditFailed(message),
        Outcome::Other(message) => AttemptOutcome::Internal(message),
    };
    report(outcome, sent, received, cost)
}

/// The message of our own commit, used when aider left changes uncommitted.
fn commit_message(description: &str) -> String {
    let first = description.lines().next().unwrap_or("").trim();
    let mut msg: String = first.chars().take(68).collect();
    if msg.len() < first.len() {
        msg.push('…');
    }
    format!("pas: {msg}")
}
