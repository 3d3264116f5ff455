//! One attempt of a task: run aider once on one LLM inside the task's worktree, relay its output as
//! it arrives, and decide what happened from aider's output, its analytics log and git — never from
//! its exit code alone (aider exits 0 after LLM failures).

use crate::config::LlmSpec;
use crate::contract::v1::{ErrorClass, Output, task_event::Kind};
use crate::money::Usd;
use crate::programmer::aider::{
    AiderInvocation, ModelEndpoint, OutputChunk, OutputStream, UsageCap, run_aider,
};
use crate::programmer::classify::{Outcome, classify};
use crate::programmer::state::{LiveSettings, Programmer};
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
    /// The LLM answered but proposed no edit (the repository did not change).
    NoEdit(String),
    /// A git operation failed.
    GitFailed(String),
    /// The caller cancelled.
    Cancelled,
    /// The task deadline passed.
    DeadlineExceeded,
    /// The task's token or cost cap was crossed while aider ran, and aider was stopped: which cap,
    /// with the figures.
    CapReached(String),
    /// aider ran out of memory under its ceiling (`aider.memory_limit_mb`).
    MemoryCeiling(String),
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
            Self::NoEdit(_) => ErrorClass::NoEdit,
            Self::GitFailed(_) => ErrorClass::GitError,
            Self::Cancelled => ErrorClass::Cancelled,
            Self::DeadlineExceeded => ErrorClass::Deadline,
            Self::CapReached(_) => ErrorClass::JobLimit,
            Self::MemoryCeiling(_) => ErrorClass::ResourceLimit,
            Self::Internal(_) => ErrorClass::Internal,
        }
    }

    /// Detail for people; empty on success.
    pub fn message(&self) -> &str {
        match self {
            Self::Succeeded(_) => "",
            Self::LlmFailed { message, .. }
            | Self::EditFailed(message)
            | Self::NoEdit(message)
            | Self::GitFailed(message)
            | Self::CapReached(message)
            | Self::MemoryCeiling(message)
            | Self::Internal(message) => message,
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
    /// What the attempt's tokens cost, an integer from the moment it is computed.
    pub cost: Usd,
}

/// The endpoint aider is pointed at for `llm`: base and key come from the catalog's provider
/// settings (environment or config), never from the caller.
pub fn endpoint_for(llm: &LlmSpec) -> ModelEndpoint {
    ModelEndpoint {
        name: llm.name.clone(),
        provider: llm.provider,
        api_base: Some(llm.api_base()),
        api_key: llm.api_key(),
        input_cost_per_token: llm.input_cost_per_token,
        output_cost_per_token: llm.output_cost_per_token,
        edit_format: Some(llm.edit_format.clone()),
        context_limit: llm.context_limit,
    }
}

/// Runs attempt `number` of `task` on `llm`; aider is stopped as soon as the task's usage crosses
/// `cap` (which carries what earlier attempts used).
#[allow(clippy::too_many_arguments)]
pub async fn run_attempt(
    prog: &Programmer,
    task: &ValidatedTask,
    worktree: &TaskWorktree,
    llm: &LlmSpec,
    number: u32,
    cap: UsageCap,
    sink: &TaskEventSink,
    cancel: &CancellationToken,
    deadline: Instant,
    settings: &LiveSettings,
) -> AttemptReport {
    let started = Instant::now();
    let report = |outcome, tokens_sent, tokens_received, cost| AttemptReport {
        outcome,
        duration: started.elapsed(),
        tokens_sent,
        tokens_received,
        cost,
    };
    let model = endpoint_for(llm);
    let invocation = AiderInvocation {
        python: prog.aider.python.clone(),
        workdir: worktree.path().to_path_buf(),
        model: model.clone(),
        message: task.description.clone(),
        files: task.files.clone(),
        auto_commit: settings.spec.limits.auto_commit,
        extra_flags: settings.extra_flags.clone(),
        request_timeout_s: settings.request_timeout_s,
        launch_prefix: Vec::new(),
        // aider's auto-commits: the same git settings as ours.
        extra_env: worktree.git_env(),
        usage_cap: Some(cap),
        nice: prog.aider.nice,
        max_memory_mib: settings.spec.limits.memory_limit_mb,
        max_reflections: settings.spec.limits.max_fix_iterations,
        warm: prog.aider.warm.clone(),
    };

    let (tx, mut rx) = mpsc::channel::<OutputChunk>(256);
    let relay = async {
        while let Some(chunk) = rx.recv().await {
            let output = Output {
                text: chunk.text,
                stream: stream_name(chunk.stream).to_string(),
                attempt: number,
            };
            // A gone caller is noticed by the task's cancellation watcher; keep draining.
            let _ = sink.send(Kind::Output(output)).await;
        }
    };
    let aider_span = crate::telemetry::spans::aider(&llm.name);
    let aider = run_aider(invocation, tx, cancel.clone(), deadline);
    let (run, ()) = tokio::join!(
        tracing::Instrument::instrument(aider, aider_span.clone()),
        relay
    );
    let run = match run {
        Ok(run) => run,
        Err(e) => {
            return report(
                AttemptOutcome::Internal(format!("aider could not be run: {e}")),
                0,
                0,
                Usd::ZERO,
            );
        }
    };
    let (sent, received) = (run.usage.prompt_tokens, run.usage.completion_tokens);
    let cost = model.cost_of(sent, received);
    crate::telemetry::spans::record_aider(&aider_span, run.exit_code, sent, received, cost);
    if let Some(why) = run.cap_reached {
        return report(AttemptOutcome::CapReached(why), sent, received, cost);
    }
    if run.cancelled {
        return report(AttemptOutcome::Cancelled, sent, received, cost);
    }
    if run.timed_out {
        return report(AttemptOutcome::DeadlineExceeded, sent, received, cost);
    }
    let change = match worktree.finish(&commit_message(&task.description)).await {
        Ok(change) => change,
        Err(e) => {
            return report(
                AttemptOutcome::GitFailed(e.to_string()),
                sent,
                received,
                cost,
            );
        }
    };
    let verdict = classify(&run, !change.files_changed.is_empty());
    let class = verdict.error_class();
    let outcome = match verdict {
        Outcome::Success => AttemptOutcome::Succeeded(change),
        Outcome::LlmFailure(_, message) => AttemptOutcome::LlmFailed { class, message },
        Outcome::EditFailure(message) => AttemptOutcome::EditFailed(message),
        Outcome::NoEdit(message) => AttemptOutcome::NoEdit(message),
        Outcome::MemoryCeiling(message) => AttemptOutcome::MemoryCeiling(message),
        Outcome::Cancelled => AttemptOutcome::Cancelled,
        Outcome::DeadlineExceeded => AttemptOutcome::DeadlineExceeded,
        Outcome::Other(message) => AttemptOutcome::Internal(message),
    };
    report(outcome, sent, received, cost)
}

fn stream_name(stream: OutputStream) -> &'static str {
    match stream {
        OutputStream::Stdout => "stdout",
        OutputStream::Stderr => "stderr",
    }
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
