//! `pas dispatch "task" --files … --workspace W`: send a task to the pool and follow it live.
//!
//! Streams the manager's `Dispatch` events through a [`View`], then prints the summary and the
//! diff. Ctrl-C (or SIGTERM) asks the manager to cancel the task (`CancelTask`) and waits briefly
//! for the CANCELLED result; a second Ctrl-C quits at once.
//!
//! Exit codes: 0 succeeded, 1 failed / timed out / pool unreachable or full, 2 bad input
//! (INVALID_ARGUMENT, FAILED_PRECONDITION, ALREADY_EXISTS, OUT_OF_RANGE; the status message is
//! printed), 130 cancelled.

use super::dispatch_view::{Mode, View};
use super::probe;
use crate::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use crate::contract::v1::{
    CancelTaskRequest, DispatchRequest, Strategy, TaskResult, TaskState, task_event::Kind,
};
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tonic::Code;

/// Exit code: the task succeeded.
pub const EXIT_SUCCEEDED: u8 = 0;
/// Exit code: the task failed or timed out, or the pool could not take it.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the request was rejected as invalid (or cannot ever be served as asked).
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit code: the task was cancelled (128 + SIGINT, as shells report Ctrl-C).
pub const EXIT_CANCELLED: u8 = 130;

/// How long to wait for the CANCELLED result after asking the manager to cancel.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// Routing strategy override, spelled as in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StrategyArg {
    /// The eligible programmer with the fewest queued + running tasks.
    #[value(name = "least_loaded", alias = "least-loaded")]
    LeastLoaded,
    /// Cycle through the eligible programmers.
    #[value(name = "round_robin", alias = "round-robin")]
    RoundRobin,
    /// The first eligible programmer in configuration order that has room.
    #[value(name = "capability_match", alias = "capability-match")]
    CapabilityMatch,
    /// Power of two random choices by peak-EWMA latency.
    #[value(name = "p2c_peak_ewma", alias = "p2c-peak-ewma")]
    P2cPeakEwma,
}

impl From<StrategyArg> for Strategy {
    fn from(s: StrategyArg) -> Self {
        match s {
            StrategyArg::LeastLoaded => Strategy::LeastLoaded,
            StrategyArg::RoundRobin => Strategy::RoundRobin,
            StrategyArg::CapabilityMatch => Strategy::CapabilityMatch,
            StrategyArg::P2cPeakEwma => Strategy::P2cPeakEwma,
        }
    }
}

/// Command-line arguments of `pas dispatch`.
#[derive(Debug, Clone, clap::Args)]
pub struct DispatchArgs {
    /// What to change, in plain language.
    #[arg(value_name = "TASK")]
    pub task: String,
    /// Files aider may edit, relative to the workspace.
    #[arg(long, num_args = 1.., value_name = "FILE")]
    pub files: Vec<String>,
    /// The repository, relative to the configured workspace root.
    #[arg(long, value_name = "DIR")]
    pub workspace: String,
    /// A capability the programmer must have (repeat or comma-separate for several).
    #[arg(
        long = "capability",
        alias = "capabilities",
        value_delimiter = ',',
        value_name = "CAP"
    )]
    pub capabilities: Vec<String>,
    /// Prefer free (local) models over paid ones.
    #[arg(long, conflicts_with = "no_prefer_free")]
    pub prefer_free: bool,
    /// Do not prefer free models (default: the configuration's prefer_free_models).
    #[arg(long)]
    pub no_prefer_free: bool,
    /// Routing strategy for this task (default: the configured one).
    #[arg(long, value_enum)]
    pub strategy: Option<StrategyArg>,
    /// Validate and route only: aider is not run and nothing is charged.
    #[arg(long)]
    pub dry_run: bool,
    /// Print every event as a JSON line, then the result as a JSON line.
    #[arg(long)]
    pub json: bool,
    /// Task id (also an idempotency key: the same id and request attaches to the running task).
    /// Default: a new UUID.
    #[arg(long, value_name = "ID")]
    pub task_id: Option<String>,
    /// Your run identifier, echoed in records and logs.
    #[arg(long, value_name = "ID", default_value = "")]
    pub run_id: String,
    /// Deadline for the task once running, in seconds (default: the programmer's).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u32>,
    /// How long the task may wait in the manager's queue, in seconds (default: configured).
    #[arg(long, value_name = "SECS")]
    pub queue_timeout: Option<u32>,
    /// Git ref to branch from (default: the workspace's HEAD).
    #[arg(long, value_name = "REF")]
    pub base_ref: Option<String>,
    /// The manager's address (`host:port`); default: the configured manager.
    #[arg(long, value_name = "ADDR")]
    pub manager: Option<String>,
    /// Do not print the diff after the summary.
    #[arg(long)]
    pub no_diff: bool,
}

impl DispatchArgs {
    /// The request this command sends, with `task_id` filled in.
    pub fn request(&self, task_id: &str) -> DispatchRequest {
        DispatchRequest {
            task_description: self.task.clone(),
            files: self.files.clone(),
            run_id: self.run_id.clone(),
            capabilities: self
                .capabilities
                .iter()
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect(),
            prefer_free: match (self.prefer_free, self.no_prefer_free) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            workspace: self.workspace.clone(),
            strategy: self.strategy.map_or(Strategy::Unspecified, Strategy::from) as i32,
            timeout_s: self.timeout.unwrap_or(0),
            dry_run: self.dry_run,
            task_id: task_id.to_string(),
            base_ref: self.base_ref.clone().unwrap_or_default(),
            queue_timeout_s: self.queue_timeout.unwrap_or(0),
        }
    }
}

/// The exit code for a finished task.
pub fn exit_for_result(result: &TaskResult) -> u8 {
    match TaskState::try_from(result.status).unwrap_or(TaskState::Unspecified) {
        TaskState::Succeeded => EXIT_SUCCEEDED,
        TaskState::Cancelled => EXIT_CANCELLED,
        _ => EXIT_FAILED,
    }
}

/// The exit code for a call that ended with a gRPC error instead of a result.
pub fn exit_for_status(code: Code) -> u8 {
    match code {
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::AlreadyExists
        | Code::OutOfRange => EXIT_BAD_INPUT,
        Code::Cancelled => EXIT_CANCELLED,
        _ => EXIT_FAILED,
    }
}

/// Runs `pas dispatch`.
pub fn run(config_path: &Path, args: DispatchArgs) -> ExitCode {
    let addr = match probe::manager_addr(config_path, args.manager.as_deref()) {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("error: no --manager given and the configuration is unusable:\n{e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let security = crate::channel::ClientSecurity::for_cli(config_path);
    ExitCode::from(runtime.block_on(follow(&addr, &security, &args)))
}

/// Sends the task and follows its stream to the end; returns the exit code.
async fn follow(addr: &str, security: &crate::channel::ClientSecurity, args: &DispatchArgs) -> u8 {
    let mode = if args.json {
        Mode::Json
    } else if std::io::stdout().is_terminal() {
        Mode::Live
    } else {
        Mode::Plain
    };
    let (mut interrupt, mut terminate) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: cannot handle signals: {e}");
            return EXIT_FAILED;
        }
    };
    let task_id = args
        .task_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut client = match probe::pool_client(addr, Duration::from_secs(5), security).await {
        Ok(client) => client,
        Err(e) => {
            report_error(
                mode,
                Code::Unavailable,
                &format!("{e} (is the pool running? `pas up`)"),
            );
            return EXIT_FAILED;
        }
    };
    let mut canceller = client.clone();
    let mut view = View::new(mode, &format!("dispatching to {addr}"));

    let request = args.request(&task_id);
    let call = client.dispatch(request);
    let mut stream = tokio::select! {
        response = call => match response {
            Ok(response) => response.into_inner(),
            Err(status) => {
                view.stop_spinner();
                report_error(mode, status.code(), status.message());
                return exit_for_status(status.code());
            }
        },
        _ = interrupt.recv() => return abandon(&mut view, &mut canceller, &task_id).await,
        _ = terminate.recv() => return abandon(&mut view, &mut canceller, &task_id).await,
    };

    let mut cancel_deadline: Option<tokio::time::Instant> = None;
    loop {
        let wait_cancel = async {
            match cancel_deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(event)) => {
                    if let Some(Kind::Result(result)) = &event.kind {
                        if mode == Mode::Json {
                            view.event(&event);
                            view.stop_spinner();
                        } else {
                            view.finish(&event.task_id, result, !args.no_diff);
                        }
                        return exit_for_result(result);
                    }
                    view.event(&event);
                }
                Ok(None) => {
                    view.stop_spinner();
                    report_error(mode, Code::Internal, "the manager closed the stream without a result");
                    return if cancel_deadline.is_some() { EXIT_CANCELLED } else { EXIT_FAILED };
                }
                Err(status) => {
                    view.stop_spinner();
                    report_error(mode, status.code(), status.message());
                    return if cancel_deadline.is_some() { EXIT_CANCELLED } else { exit_for_status(status.code()) };
                }
            },
            _ = async { tokio::select! { _ = interrupt.recv() => {}, _ = terminate.recv() => {} } } => {
                if cancel_deadline.is_some() {
                    view.stop_spinner();
                    eprintln!("interrupted again: not waiting for the manager to confirm");
                    return EXIT_CANCELLED;
                }
                cancel_deadline = Some(tokio::time::Instant::now() + CANCEL_WAIT);
                view.notice(&format!("cancelling task {task_id}… (Ctrl-C again to quit without waiting)"), true);
                view.set_phase("cancelling");
                request_cancel(&mut view, &mut canceller, &task_id).await;
            }
            _ = wait_cancel => {
                view.stop_spinner();
                eprintln!("the manager did not confirm the cancellation within {}s", CANCEL_WAIT.as_secs());
                return EXIT_CANCELLED;
            }
        }
    }
}

/// Ctrl-C before the stream started: cancel by id (the call itself is dropped too).
async fn abandon(
    view: &mut View,
    canceller: &mut ProgrammerPoolClient<crate::channel::AuthChannel>,
    task_id: &str,
) -> u8 {
    view.notice(&format!("cancelling task {task_id}…"), true);
    request_cancel(view, canceller, task_id).await;
    view.stop_spinner();
    EXIT_CANCELLED
}

/// Sends `CancelTask`; reports (but does not fail on) errors.
async fn request_cancel(
    view: &mut View,
    canceller: &mut ProgrammerPoolClient<crate::channel::AuthChannel>,
    task_id: &str,
) {
    let call = canceller.cancel_task(CancelTaskRequest {
        task_id: task_id.to_string(),
    });
    match tokio::time::timeout(Duration::from_secs(5), call).await {
        Ok(Ok(response)) => {
            let r = response.into_inner();
            if !r.cancelled && !r.message.is_empty() {
                view.notice(&r.message, true);
            }
        }
        Ok(Err(status)) if status.code() == Code::NotFound => {}
        Ok(Err(status)) => view.notice(&format!("CancelTask failed: {}", status.message()), true),
        Err(_) => view.notice("CancelTask got no answer within 5s", true),
    }
}

/// Prints a gRPC failure: a JSON line in JSON mode, else `error: CODE: message` on stderr.
fn report_error(mode: Mode, code: Code, message: &str) {
    let name = code_name(code);
    if mode == Mode::Json {
        println!(
            "{}",
            serde_json::json!({ "type": "error", "code": name, "message": message })
        );
    }
    eprintln!("error: {name}: {message}");
}

/// `Code::InvalidArgument` → `INVALID_ARGUMENT`, as gRPC documents them.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        args: DispatchArgs,
    }

    fn parse(argv: &[&str]) -> Result<DispatchArgs, clap::Error> {
        Cmd::try_parse_from(std::iter::once("dispatch").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn the_request_carries_every_flag() {
        let args = parse(&[
            "add a docstring",
            "--files",
            "a.py",
            "b.py",
            "--workspace",
            "demo",
            "--capability",
            "fast,free",
            "--capability",
            "local",
            "--prefer-free",
            "--strategy",
            "round_robin",
            "--dry-run",
            "--run-id",
            "run-1",
            "--timeout",
            "90",
            "--queue-timeout",
            "5",
            "--base-ref",
            "main",
        ])
        .unwrap();
        let req = args.request("t-1");
        assert_eq!(req.task_description, "add a docstring");
        assert_eq!(req.files, ["a.py", "b.py"]);
        assert_eq!(req.workspace, "demo");
        assert_eq!(req.capabilities, ["fast", "free", "local"]);
        assert_eq!(req.prefer_free, Some(true));
        assert_eq!(req.strategy, Strategy::RoundRobin as i32);
        assert!(req.dry_run);
        assert_eq!(req.run_id, "run-1");
        assert_eq!(req.timeout_s, 90);
        assert_eq!(req.queue_timeout_s, 5);
        assert_eq!(req.base_ref, "main");
        assert_eq!(req.task_id, "t-1");
    }

    #[test]
    fn prefer_free_is_tri_state_and_defaults_are_empty() {
        let req = parse(&["x", "--workspace", "w"]).unwrap().request("t");
        assert_eq!(req.prefer_free, None);
        assert_eq!(req.strategy, Strategy::Unspecified as i32);
        assert!(req.files.is_empty() && req.capabilities.is_empty());
        let req = parse(&["x", "--workspace", "w", "--no-prefer-free"])
            .unwrap()
            .request("t");
        assert_eq!(req.prefer_free, Some(false));
        assert!(parse(&["x", "--workspace", "w", "--prefer-free", "--no-prefer-free"]).is_err());
        assert!(parse(&["x", "--workspace", "w", "--strategy", "fastest"]).is_err());
        assert!(parse(&["x"]).is_err(), "--workspace is required");
    }

    #[test]
    fn exit_codes_follow_the_outcome() {
        let result = |s: TaskState| TaskResult {
            status: s as i32,
            ..Default::default()
        };
        assert_eq!(exit_for_result(&result(TaskState::Succeeded)), 0);
        assert_eq!(exit_for_result(&result(TaskState::Failed)), 1);
        assert_eq!(exit_for_result(&result(TaskState::TimedOut)), 1);
        assert_eq!(exit_for_result(&result(TaskState::Cancelled)), 130);
        assert_eq!(exit_for_status(Code::InvalidArgument), 2);
        assert_eq!(exit_for_status(Code::FailedPrecondition), 2);
        assert_eq!(exit_for_status(Code::ResourceExhausted), 1);
        assert_eq!(exit_for_status(Code::Unavailable), 1);
        assert_eq!(exit_for_status(Code::Cancelled), 130);
    }
}
