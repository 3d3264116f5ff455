//! `pas dispatch "task" --files … --workspace W`: send a task to the pool and follow it live.
//!
//! The task always has an id before the first call (the user's `--task-id`, else a new time-ordered UUID v7),
//! so that if the stream breaks the [`Follower`] can re-attach to it with `WatchTask`. Ctrl-C (or
//! SIGTERM) cancels the task (`CancelTask`) and waits briefly for the CANCELLED result; a second
//! Ctrl-C quits at once. `--detach` returns once the manager accepted the task and leaves it
//! running, printing the id to follow it with `pas watch`.
//!
//! Exit codes (see [`super::follow`]): 0 succeeded (or accepted, with `--detach`), 1 failed /
//! timed out / pool unreachable or full, 2 bad input (INVALID_ARGUMENT, FAILED_PRECONDITION,
//! ALREADY_EXISTS, OUT_OF_RANGE; the status message is printed), 130 cancelled.

use super::follow::{self, FollowArgs, Follower, OnInterrupt};
use crate::channel::ClientSecurity;
use crate::contract::v1::{DispatchRequest, Strategy};
use std::path::Path;
use std::process::ExitCode;

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
    /// Where the task is expected to finish first (work there × its LLM's measured duration).
    #[value(name = "least_expected_wait", alias = "least-expected-wait")]
    LeastExpectedWait,
}

impl From<StrategyArg> for Strategy {
    fn from(s: StrategyArg) -> Self {
        match s {
            StrategyArg::LeastLoaded => Strategy::LeastLoaded,
            StrategyArg::RoundRobin => Strategy::RoundRobin,
            StrategyArg::CapabilityMatch => Strategy::CapabilityMatch,
            StrategyArg::P2cPeakEwma => Strategy::P2cPeakEwma,
            StrategyArg::LeastExpectedWait => Strategy::LeastExpectedWait,
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
    #[arg(long, value_name = "DIR", required_unless_present = "repo_url")]
    pub workspace: Option<String>,
    /// A repository URL the programmer fetches itself instead of `--workspace` (ssh://, https://,
    /// git://, file://); it must match the programmers' `repositories.allow`. The result is
    /// pushed there as `pas/<task id>`.
    #[arg(long, value_name = "URL", conflicts_with = "workspace")]
    pub repo_url: Option<String>,
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
    /// Do not prefer free models (default: the configuration's prefer_free_models and
    /// prefer_free_over_paid).
    #[arg(long)]
    pub no_prefer_free: bool,
    /// If the task fails on a free programmer for a task-level reason (edit failed, no edit, every
    /// LLM attempt failed), dispatch it once more to a paid one within the daily budget.
    #[arg(long, conflicts_with = "no_escalate")]
    pub escalate: bool,
    /// Never escalate this task (default: the configuration's escalation.enabled).
    #[arg(long)]
    pub no_escalate: bool,
    /// Routing strategy for this task (default: the configured one).
    #[arg(long, value_enum)]
    pub strategy: Option<StrategyArg>,
    /// Validate and route only: aider is not run and nothing is charged.
    #[arg(long)]
    pub dry_run: bool,
    /// Task id (also an idempotency key: the same id and request attaches to the running task).
    /// Default: a new time-ordered UUID v7, chosen before the first call so a broken stream can re-attach.
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
    /// Preferred region (e.g. eu-west): a programmer there when one can take the task, another
    /// region's only when none can.
    #[arg(long, value_name = "REGION", env = "PAS_DISPATCH_REGION")]
    pub region: Option<String>,
    /// Return as soon as the manager accepted the task, leaving it running, and print its id
    /// (follow it with `pas watch ID`). Without it, Ctrl-C cancels the task.
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub follow: FollowArgs,
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
            escalate: match (self.escalate, self.no_escalate) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            workspace: self.workspace.clone().unwrap_or_default(),
            repo_url: self.repo_url.clone().unwrap_or_default(),
            strategy: self.strategy.map_or(Strategy::Unspecified, Strategy::from) as i32,
            timeout_s: self.timeout.unwrap_or(0),
            dry_run: self.dry_run,
            task_id: task_id.to_string(),
            base_ref: self.base_ref.clone().unwrap_or_default(),
            queue_timeout_s: self.queue_timeout.unwrap_or(0),
            region: self.region.clone().unwrap_or_default(),
        }
    }
}

/// Runs `pas dispatch`.
pub fn run(config_path: &Path, args: DispatchArgs) -> ExitCode {
    let manager = args.follow.manager.clone();
    follow::run_client(config_path, manager.as_deref(), move |addr, security| {
        dispatch(addr, security, args)
    })
}

/// Sends the task and follows it to the end (or, with `--detach`, until accepted); returns the
/// exit code.
async fn dispatch(addr: String, security: ClientSecurity, args: DispatchArgs) -> u8 {
    // Chosen here, not by the manager: re-attaching after a broken stream needs the id.
    let task_id = args
        .task_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let phase = format!("dispatching to {addr}");
    let mut follower = match Follower::start(
        addr,
        security,
        &args.follow,
        task_id,
        OnInterrupt::Cancel,
        &phase,
    )
    .await
    {
        Ok(follower) => follower,
        Err(code) => return code,
    };
    let mut client = follower.client();
    let call = client.dispatch(args.request(follower.task_id()));
    let response = tokio::select! {
        response = call => response,
        () = follower.interrupted() => return follower.abandon().await,
    };
    match response {
        Err(status) => follower.fail(&status),
        Ok(_) if args.detach => follower.leave(),
        Ok(response) => follower.run(response.into_inner()).await,
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
            "--escalate",
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
        assert_eq!(req.escalate, Some(true));
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
        assert_eq!(req.escalate, None);
        assert_eq!(req.strategy, Strategy::Unspecified as i32);
        assert!(req.files.is_empty() && req.capabilities.is_empty());
        let req = parse(&["x", "--workspace", "w", "--no-prefer-free"])
            .unwrap()
            .request("t");
        assert_eq!(req.prefer_free, Some(false));
        assert!(parse(&["x", "--workspace", "w", "--prefer-free", "--no-prefer-free"]).is_err());
        assert!(parse(&["x", "--workspace", "w", "--strategy", "fastest"]).is_err());
        assert!(
            parse(&["x"]).is_err(),
            "--workspace or --repo-url is required"
        );
        let req = parse(&["x", "--repo-url", "git://h/r.git"])
            .unwrap()
            .request("t");
        assert_eq!(
            (req.repo_url.as_str(), req.workspace.as_str()),
            ("git://h/r.git", "")
        );
        assert!(
            parse(&["x", "--repo-url", "git://h/r.git", "--workspace", "w"]).is_err(),
            "one or the other"
        );
    }

    #[test]
    fn detach_and_the_follow_flags_parse() {
        let args = parse(&["x", "--workspace", "w"]).unwrap();
        assert!(!args.detach && !args.follow.json);
        assert_eq!(args.follow.reattach_timeout_s, 300);
        let args = parse(&[
            "x",
            "--workspace",
            "w",
            "--detach",
            "--json",
            "--reattach-timeout-s",
            "0",
            "--no-diff",
            "--manager",
            "http://127.0.0.1:6141/",
        ])
        .unwrap();
        assert!(args.detach && args.follow.json && args.follow.no_diff);
        assert_eq!(args.follow.reattach_timeout_s, 0);
        assert_eq!(
            args.follow.manager.as_deref(),
            Some("http://127.0.0.1:6141/")
        );
    }
}
