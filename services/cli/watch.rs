//! `pas watch TASK_ID`: follow a task someone already dispatched — the events after
//! `--after-seq` (all of them by default), then live until its result — in the same view and with
//! the same exit codes as `pas dispatch`, re-attaching the same way when the stream breaks.
//!
//! Watching only looks: Ctrl-C stops following (exit 130) and leaves the task running, saying
//! how to continue (`pas watch ID --after-seq N`). An unknown id is NOT_FOUND (exit 1); an
//! `--after-seq` beyond the task's events is OUT_OF_RANGE (exit 2).

use super::follow::{self, FollowArgs, Follower, OnInterrupt};
use std::path::Path;
use std::process::ExitCode;

/// Command-line arguments of `pas watch`.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// The task to follow: its id, as `pas dispatch`, `pas tasks` and the events show it.
    #[arg(value_name = "TASK_ID")]
    pub task_id: String,
    /// Show only the events after this seq (e.g. the last one you saw); 0 replays them all.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub after_seq: u64,
    #[command(flatten)]
    pub follow: FollowArgs,
}

/// Runs `pas watch`.
pub fn run(config_path: &Path, args: WatchArgs) -> ExitCode {
    let manager = args.follow.manager.clone();
    follow::run_client(
        config_path,
        manager.as_deref(),
        move |addr, security| async move {
            let phase = format!("following task {} on {addr}", args.task_id);
            match Follower::start(
                addr,
                security,
                &args.follow,
                args.task_id.clone(),
                OnInterrupt::Leave,
                &phase,
            )
            .await
            {
                Ok(follower) => follower.watch(args.after_seq).await,
                Err(code) => code,
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        args: WatchArgs,
    }

    #[test]
    fn flags_parse_with_defaults() {
        let args = Cmd::try_parse_from(["watch", "t-1"]).unwrap().args;
        assert_eq!(args.task_id, "t-1");
        assert_eq!(args.after_seq, 0);
        assert_eq!(args.follow.reattach_timeout_s, 300);
        assert!(!args.follow.json && !args.follow.plain && !args.follow.no_diff);
        let args = Cmd::try_parse_from([
            "watch",
            "t-2",
            "--after-seq",
            "7",
            "--json",
            "--reattach-timeout-s",
            "5",
            "--manager",
            "127.0.0.1:1",
        ])
        .unwrap()
        .args;
        assert_eq!(args.after_seq, 7);
        assert!(args.follow.json);
        assert_eq!(args.follow.reattach_timeout_s, 5);
        assert_eq!(args.follow.manager.as_deref(), Some("127.0.0.1:1"));
        assert!(
            Cmd::try_parse_from(["watch"]).is_err(),
            "TASK_ID is required"
        );
        assert!(Cmd::try_parse_from(["watch", "t", "--json", "--plain"]).is_err());
    }
}
