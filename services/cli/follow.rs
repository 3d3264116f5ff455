//! Following one task to its result: the loop `pas dispatch` and `pas watch` share.
//!
//! A task outlives the stream that shows it, so a broken stream (the manager restarted, the
//! connection dropped) is not the end: the [`Follower`] re-attaches with `WatchTask` after the last
//! seq it showed, retrying with backoff (0.2 s doubling to 2 s) while the manager is unreachable
//! or answers UNAVAILABLE, for `--reattach-timeout-s`. Heartbeats and events it already showed are
//! skipped, so the user sees every event once, in order; losing and regaining the stream is said
//! (a notice, or a `stream_lost` / `reattached` JSON line).
//!
//! Ctrl-C (or SIGTERM) either cancels the task (`pas dispatch`: `CancelTask`, then wait briefly for
//! the CANCELLED result; a second Ctrl-C quits at once) or leaves it running and says how to follow
//! it again (`pas watch`, `pas dispatch --detach`).
//!
//! Exit codes: 0 succeeded, 1 failed / timed out / pool unreachable or full, 2 bad input
//! (INVALID_ARGUMENT, FAILED_PRECONDITION, ALREADY_EXISTS, OUT_OF_RANGE; the status message is
//! printed), 130 cancelled or interrupted.

use super::dispatch_view::{Mode, View};
use super::probe;
use crate::channel::{AuthChannel, ClientSecurity};
use crate::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use crate::contract::v1::{
    CancelTaskRequest, TaskEvent, TaskResult, TaskState, WatchTaskRequest, task_event::Kind,
};
use serde_json::json;
use std::future::Future;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::Instant;
use tonic::{Code, Status, Streaming};

/// Exit code: the task succeeded.
pub const EXIT_SUCCEEDED: u8 = 0;
/// Exit code: the task failed or timed out, or the pool could not take it.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the request was rejected as invalid (or cannot ever be served as asked).
pub const EXIT_BAD_INPUT: u8 = 2;
/// Exit code: the task was cancelled, or following it was interrupted (128 + SIGINT, as shells
/// report Ctrl-C).
pub const EXIT_CANCELLED: u8 = 130;

/// How long to wait for the CANCELLED result after asking the manager to cancel.
const CANCEL_WAIT: Duration = Duration::from_secs(10);
/// The first pause between re-attach attempts; it doubles up to [`REATTACH_MAX_DELAY`].
const REATTACH_FIRST_DELAY: Duration = Duration::from_millis(200);
/// The longest pause between re-attach attempts.
const REATTACH_MAX_DELAY: Duration = Duration::from_secs(2);
/// How long connecting, or a call's first answer, may take before the attempt counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of the manager, carrying the caller's token.
pub type PoolClient = ProgrammerPoolClient<AuthChannel>;

/// Output and re-attach options shared by `pas dispatch` and `pas watch`.
#[derive(Debug, Clone, clap::Args)]
pub struct FollowArgs {
    /// Print every event as a JSON line, then the result as a JSON line (notices go to stderr).
    #[arg(long, conflicts_with = "plain")]
    pub json: bool,
    /// Plain lines even on a terminal: no spinner, no colours.
    #[arg(long)]
    pub plain: bool,
    /// Do not print the diff after the summary.
    #[arg(long)]
    pub no_diff: bool,
    /// When the stream breaks (manager restarted, connection lost), keep trying to re-attach to
    /// the task for this many seconds before giving up with exit 1 (0: one attempt).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub reattach_timeout_s: u64,
    /// The manager's address (`host:port`); default: the configured manager.
    #[arg(long, value_name = "ADDR")]
    pub manager: Option<String>,
}

impl FollowArgs {
    /// JSON when asked, else live on a terminal and plain lines elsewhere (or when asked).
    pub fn mode(&self) -> Mode {
        if self.json {
            Mode::Json
        } else if !self.plain && std::io::stdout().is_terminal() {
            Mode::Live
        } else {
            Mode::Plain
        }
    }
}

/// What Ctrl-C (or SIGTERM) does to the followed task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInterrupt {
    /// Cancel it (`CancelTask`) and wait briefly for the CANCELLED result: the user started it
    /// with `pas dispatch` and wants it stopped.
    Cancel,
    /// Leave it running and say how to follow it again: `pas watch` only looks.
    Leave,
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

/// Errors worth another attempt: the manager is not there (yet), or is still setting the task up
/// (UNAVAILABLE "being set up; retry"), or the connection failed mid-call.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Cancelled
    )
}

/// Runs a CLI command that talks to the manager: resolves the manager's address (`--manager`,
/// else the configuration), the client security (the config's TLS files, `PAS_TOKEN`) and an async
/// runtime, then `body`; its result is the exit code. Shared so every client command connects the
/// same way.
pub fn run_client<F, Fut>(config_path: &Path, manager: Option<&str>, body: F) -> ExitCode
where
    F: FnOnce(String, ClientSecurity) -> Fut,
    Fut: Future<Output = u8>,
{
    let addr = match probe::manager_addr(config_path, manager) {
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
    let security = ClientSecurity::for_cli(config_path);
    ExitCode::from(runtime.block_on(body(addr, security)))
}

/// Connects to the manager; a failure is reported (with the hint to start the pool) as exit 1.
pub async fn connect(addr: &str, security: &ClientSecurity, mode: Mode) -> Result<PoolClient, u8> {
    probe::pool_client(addr, CALL_TIMEOUT, security)
        .await
        .map_err(|e| {
            report_error(
                mode,
                Code::Unavailable,
                &format!("{e} (is the pool running? `pas up`)"),
            );
            EXIT_FAILED
        })
}

/// Ctrl-C and SIGTERM, received as one kind of "stop".
#[derive(Debug)]
struct Interrupts {
    interrupt: Signal,
    terminate: Signal,
}

impl Interrupts {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

/// Why showing a stream stopped.
enum Step {
    /// Done: exit with this code.
    Exit(u8),
    /// The stream broke (or ended without a result): re-attach.
    Broken(Status),
}

/// One task followed to its result through a [`View`], re-attaching when its stream breaks.
#[derive(Debug)]
pub struct Follower {
    addr: String,
    security: ClientSecurity,
    client: PoolClient,
    task_id: String,
    mode: Mode,
    view: View,
    show_diff: bool,
    reattach_timeout: Duration,
    on_interrupt: OnInterrupt,
    interrupts: Interrupts,
    /// The seq of the last event shown: a re-attach continues after it.
    last_seq: u64,
    /// Once cancelling: when to stop waiting for the CANCELLED result.
    cancel_deadline: Option<Instant>,
    /// A cancel was asked for but `CancelTask` did not get through: send it again on re-attach.
    cancel_pending: bool,
}

impl Follower {
    /// Installs the signal handlers, connects to the manager at `addr` and starts the view with
    /// `first_phase`; `Err` is the exit code of a failure already reported.
    pub async fn start(
        addr: String,
        security: ClientSecurity,
        args: &FollowArgs,
        task_id: String,
        on_interrupt: OnInterrupt,
        first_phase: &str,
    ) -> Result<Self, u8> {
        let mode = args.mode();
        let interrupts = Interrupts::new().map_err(|e| {
            eprintln!("error: cannot handle signals: {e}");
            EXIT_FAILED
        })?;
        let client = connect(&addr, &security, mode).await?;
        Ok(Self {
            addr,
            security,
            client,
            task_id,
            mode,
            view: View::new(mode, first_phase),
            show_diff: !args.no_diff,
            reattach_timeout: Duration::from_secs(args.reattach_timeout_s),
            on_interrupt,
            interrupts,
            last_seq: 0,
            cancel_deadline: None,
            cancel_pending: false,
        })
    }

    /// The followed task's id.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// A client of the manager (for the call that starts the stream).
    pub fn client(&self) -> PoolClient {
        self.client.clone()
    }

    /// Resolves at the next Ctrl-C or SIGTERM (to race the call that starts the stream).
    pub async fn interrupted(&mut self) {
        self.interrupts.recv().await
    }

    /// Ctrl-C before the stream started: cancel by id (the call itself is dropped too).
    pub async fn abandon(mut self) -> u8 {
        self.view
            .notice(&format!("cancelling task {}…", self.task_id), true);
        self.request_cancel().await;
        self.view.stop_spinner();
        EXIT_CANCELLED
    }

    /// The call that should have started the stream failed: report it; returns the exit code.
    pub fn fail(mut self, status: &Status) -> u8 {
        self.view.stop_spinner();
        report_error(self.mode, status.code(), status.message());
        exit_for_status(status.code())
    }

    /// Stops following while the task runs on (`pas dispatch --detach`); returns exit 0.
    pub fn leave(mut self) -> u8 {
        self.say_left();
        EXIT_SUCCEEDED
    }

    /// Says that this command stops following while the task runs on, and how to follow it again
    /// (a `detached` JSON line in JSON mode).
    fn say_left(&mut self) {
        self.view.stop_spinner();
        let again = if self.last_seq == 0 {
            format!("pas watch {}", self.task_id)
        } else {
            format!("pas watch {} --after-seq {}", self.task_id, self.last_seq)
        };
        self.view.announce(
            json!({ "type": "detached", "task_id": self.task_id, "last_seq": self.last_seq }),
            &format!(
                "task {} runs on without this command; follow it with `{again}`",
                self.task_id
            ),
            false,
        );
    }

    /// Follows the task from its first event after `after_seq` with `WatchTask` (retrying while
    /// the manager is not ready, like a re-attach); returns the exit code.
    pub async fn watch(mut self, after_seq: u64) -> u8 {
        self.last_seq = after_seq;
        match self.attach(None).await {
            Ok(stream) => self.run(stream).await,
            Err(code) => code,
        }
    }

    /// Shows `stream` to the task's result, re-attaching whenever it breaks; returns the exit
    /// code.
    pub async fn run(mut self, mut stream: Streaming<TaskEvent>) -> u8 {
        loop {
            let broken = match self.drain(&mut stream).await {
                Step::Exit(code) => return code,
                Step::Broken(status) => status,
            };
            stream = match self.attach(Some(broken)).await {
                Ok(stream) => stream,
                Err(code) => return code,
            };
        }
    }

    /// Shows the events of one stream until the result, a break, or the user stops.
    async fn drain(&mut self, stream: &mut Streaming<TaskEvent>) -> Step {
        loop {
            let cancel_deadline = self.cancel_deadline;
            let cancel_unconfirmed = async move {
                match cancel_deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = stream.message() => match message {
                    Ok(Some(event)) => {
                        if let Some(code) = self.show(&event) {
                            return Step::Exit(code);
                        }
                    }
                    Ok(None) => {
                        return Step::Broken(Status::internal(
                            "the manager closed the stream without a result",
                        ));
                    }
                    Err(status) => return Step::Broken(status),
                },
                () = self.interrupts.recv() => {
                    if let Some(code) = self.on_user_stop().await {
                        return Step::Exit(code);
                    }
                }
                () = cancel_unconfirmed => {
                    self.view.stop_spinner();
                    eprintln!(
                        "the manager did not confirm the cancellation within {}s",
                        CANCEL_WAIT.as_secs()
                    );
                    return Step::Exit(EXIT_CANCELLED);
                }
            }
        }
    }

    /// Shows one event unless it is a heartbeat or was shown already; the exit code once it is
    /// the result.
    fn show(&mut self, event: &TaskEvent) -> Option<u8> {
        if !is_new(event, self.last_seq) {
            return None;
        }
        self.last_seq = self.last_seq.max(event.seq);
        if let Some(Kind::Result(result)) = &event.kind {
            if self.mode == Mode::Json {
                self.view.event(event);
                self.view.stop_spinner();
            } else {
                self.view.finish(&event.task_id, result, self.show_diff);
            }
            return Some(exit_for_result(result));
        }
        self.view.event(event);
        None
    }

    /// Ctrl-C or SIGTERM: cancel (once; a second one quits) or leave the task running. `Some` is
    /// the exit code when following ends here.
    async fn on_user_stop(&mut self) -> Option<u8> {
        if self.on_interrupt == OnInterrupt::Leave {
            self.say_left();
            return Some(EXIT_CANCELLED);
        }
        if self.cancel_deadline.is_some() {
            self.view.stop_spinner();
            eprintln!("interrupted again: not waiting for the manager to confirm");
            return Some(EXIT_CANCELLED);
        }
        self.cancel_deadline = Some(Instant::now() + CANCEL_WAIT);
        self.view.notice(
            &format!(
                "cancelling task {}… (Ctrl-C again to quit without waiting)",
                self.task_id
            ),
            true,
        );
        self.view.set_phase("cancelling");
        self.cancel_pending = !self.request_cancel().await;
        None
    }

    /// Sends `CancelTask`; reports (but does not fail on) errors. True when the manager got it.
    async fn request_cancel(&mut self) -> bool {
        let call = self.client.cancel_task(CancelTaskRequest {
            task_id: self.task_id.clone(),
        });
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(response)) => {
                let r = response.into_inner();
                if !r.cancelled && !r.message.is_empty() {
                    self.view.notice(&r.message, true);
                }
                true
            }
            Ok(Err(status)) if status.code() == Code::NotFound => true,
            Ok(Err(status)) => {
                self.view
                    .notice(&format!("CancelTask failed: {}", status.message()), true);
                false
            }
            Err(_) => {
                self.view.notice(
                    &format!(
                        "CancelTask got no answer within {}s",
                        CALL_TIMEOUT.as_secs()
                    ),
                    true,
                );
                false
            }
        }
    }

    /// Opens a `WatchTask` stream after the last seq shown, retrying with backoff while the
    /// manager is unreachable or not ready, until `--reattach-timeout-s` (or the cancellation's
    /// wait) runs out. `lost` is why the previous stream broke (None: the first attach of
    /// `pas watch`). `Err` is the exit code of a failure already reported.
    async fn attach(&mut self, lost: Option<Status>) -> Result<Streaming<TaskEvent>, u8> {
        if let Some(status) = &lost {
            self.view.announce(
                json!({
                    "type": "stream_lost", "task_id": self.task_id, "last_seq": self.last_seq,
                    "code": code_name(status.code()), "message": status.message(),
                }),
                &format!(
                    "lost the stream of task {} ({}: {}); re-attaching after seq {}…",
                    self.task_id,
                    code_name(status.code()),
                    status.message(),
                    self.last_seq
                ),
                true,
            );
            self.view.set_phase("re-attaching");
        }
        let started = Instant::now();
        let mut delay = REATTACH_FIRST_DELAY;
        loop {
            let attempt = watch_once(&self.addr, &self.security, &self.task_id, self.last_seq);
            let outcome = tokio::select! {
                outcome = attempt => outcome,
                () = self.interrupts.recv() => {
                    match self.on_user_stop().await {
                        Some(code) => return Err(code),
                        None => continue,
                    }
                }
            };
            let status = match outcome {
                Ok((client, stream)) => {
                    self.client = client;
                    if lost.is_some() {
                        self.view.announce(
                            json!({ "type": "reattached", "task_id": self.task_id, "after_seq": self.last_seq }),
                            &format!("re-attached to task {} after seq {}", self.task_id, self.last_seq),
                            false,
                        );
                    }
                    self.view
                        .set_phase(&format!("following task {}", self.task_id));
                    if self.cancel_pending {
                        self.cancel_pending = !self.request_cancel().await;
                    }
                    return Ok(stream);
                }
                Err(status) => status,
            };
            let mut give_up_at = started + self.reattach_timeout;
            if let Some(deadline) = self.cancel_deadline {
                give_up_at = give_up_at.min(deadline);
            }
            if !retryable(status.code()) || Instant::now() + delay > give_up_at {
                return Err(self.give_up(&status, lost.is_some() && retryable(status.code())));
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.interrupts.recv() => {
                    if let Some(code) = self.on_user_stop().await {
                        return Err(code);
                    }
                }
            }
            delay = (delay * 2).min(REATTACH_MAX_DELAY);
        }
    }

    /// Reports the error that ended re-attaching; returns the exit code. `timed_out`: the manager
    /// stayed away for the whole re-attach time (the task may well still run).
    fn give_up(&mut self, status: &Status, timed_out: bool) -> u8 {
        self.view.stop_spinner();
        if timed_out {
            report_error(
                self.mode,
                status.code(),
                &format!(
                    "gave up re-attaching to task {id} after {secs}s ({msg}); it may still run: \
                     follow it with `pas watch {id} --after-seq {seq}`",
                    id = self.task_id,
                    secs = self.reattach_timeout.as_secs(),
                    msg = status.message(),
                    seq = self.last_seq,
                ),
            );
        } else {
            report_error(self.mode, status.code(), status.message());
        }
        if self.cancel_deadline.is_some() {
            EXIT_CANCELLED
        } else if timed_out {
            EXIT_FAILED
        } else {
            exit_for_status(status.code())
        }
    }
}

/// Whether `event` is still to be shown after the events up to `last_seq`: heartbeats never are
/// (they are not task events), and a replay after a re-attach repeats nothing already shown. An
/// event without a seq (a manager older than seq numbers) is always shown.
fn is_new(event: &TaskEvent, last_seq: u64) -> bool {
    !matches!(event.kind, Some(Kind::Heartbeat(_))) && (event.seq == 0 || event.seq > last_seq)
}

/// One `WatchTask` call on a fresh connection (a connection to a dead manager must not stand for
/// its replacement); a connection failure is UNAVAILABLE.
async fn watch_once(
    addr: &str,
    security: &ClientSecurity,
    task_id: &str,
    after_seq: u64,
) -> Result<(PoolClient, Streaming<TaskEvent>), Status> {
    let mut client = probe::pool_client(addr, CALL_TIMEOUT, security)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let call = client.watch_task(WatchTaskRequest {
        task_id: task_id.to_string(),
        after_seq,
    });
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(response)) => Ok((client, response.into_inner())),
        Ok(Err(status)) => Err(status),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "WatchTask got no answer within {}s",
            CALL_TIMEOUT.as_secs()
        ))),
    }
}

/// Prints a gRPC failure: a JSON line in JSON mode, and `error: CODE: message` on stderr.
pub fn report_error(mode: Mode, code: Code, message: &str) {
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
        assert_eq!(exit_for_status(Code::OutOfRange), 2);
        assert_eq!(exit_for_status(Code::ResourceExhausted), 1);
        assert_eq!(exit_for_status(Code::Unavailable), 1);
        assert_eq!(exit_for_status(Code::NotFound), 1);
        assert_eq!(exit_for_status(Code::Cancelled), 130);
    }

    #[test]
    fn heartbeats_and_events_already_shown_are_skipped() {
        use crate::contract::v1::{Heartbeat, Output};
        let event = |seq, kind| TaskEvent {
            task_id: "t".into(),
            seq,
            timestamp_ms: 0,
            kind: Some(kind),
        };
        let output = |seq| event(seq, Kind::Output(Output::default()));
        assert!(is_new(&output(1), 0));
        assert!(is_new(&output(5), 4));
        assert!(!is_new(&output(4), 4), "shown before the stream broke");
        assert!(!is_new(&output(2), 4));
        assert!(!is_new(
            &event(0, Kind::Heartbeat(Heartbeat { latest_seq: 4 })),
            0
        ));
        assert!(is_new(&output(0), 9), "no seq: an old manager");
    }

    #[test]
    fn only_an_absent_or_unready_manager_is_worth_retrying() {
        for code in [Code::Unavailable, Code::Unknown, Code::DeadlineExceeded] {
            assert!(retryable(code), "{code:?}");
        }
        for code in [
            Code::NotFound,
            Code::OutOfRange,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::InvalidArgument,
            Code::Internal,
        ] {
            assert!(!retryable(code), "{code:?}");
        }
    }
}
