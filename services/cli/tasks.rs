//! `pas tasks`: the tasks the manager knows (the caller's own, or all for an admin token), newest
//! first — id, state, programmer, when created, how long, run id and description — so a task
//! dispatched earlier (or by someone else) can be found and followed with `pas watch`.
//!
//! Pages through `ListTasks` until `--limit`; `--json` prints one JSON array of the records,
//! pretty-printed like `pas status --json` prints its document.

use super::dispatch_view::{Mode, result_json};
use super::follow::{self, exit_for_status, report_error};
use super::status::duration_text;
use crate::contract::state_name;
use crate::contract::v1::{ListTasksRequest, TaskRecord, TaskState};
use serde_json::{Value, json};
use std::path::Path;
use std::process::ExitCode;

/// Longest description shown in the table (the rest is cut, with `…`).
const DESCRIPTION_WIDTH: usize = 48;

/// A task state, spelled as `pas` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateArg {
    /// Waiting for a programmer or a slot.
    Queued,
    /// A programmer is working on it.
    Running,
    /// Finished with a kept edit (or a routed dry run).
    Succeeded,
    /// Finished without a usable edit.
    Failed,
    /// Cancelled.
    Cancelled,
    /// Its deadline passed.
    #[value(name = "timed_out", alias = "timed-out")]
    TimedOut,
}

impl From<StateArg> for TaskState {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Queued => TaskState::Queued,
            StateArg::Running => TaskState::Running,
            StateArg::Succeeded => TaskState::Succeeded,
            StateArg::Failed => TaskState::Failed,
            StateArg::Cancelled => TaskState::Cancelled,
            StateArg::TimedOut => TaskState::TimedOut,
        }
    }
}

/// Command-line arguments of `pas tasks`.
#[derive(Debug, Clone, clap::Args)]
pub struct TasksArgs {
    /// Only the tasks of this run id (as given to `pas dispatch --run-id`).
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// Only tasks in this state (repeat or comma-separate for several).
    #[arg(
        long = "state",
        value_enum,
        value_delimiter = ',',
        value_name = "STATE"
    )]
    pub states: Vec<StateArg>,
    /// Show at most this many tasks, newest first.
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// How many tasks to fetch per ListTasks call (1–1000).
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: u32,
    /// Print a JSON array of the task records instead of the table.
    #[arg(long)]
    pub json: bool,
    /// The manager's address (`host:port`); default: the configured manager.
    #[arg(long, value_name = "ADDR")]
    pub manager: Option<String>,
}

impl TasksArgs {
    /// The first page's request (the caller fills in `page_token` for the next ones).
    fn request(&self, page_size: u32, page_token: String) -> ListTasksRequest {
        ListTasksRequest {
            run_id: self.run_id.clone().unwrap_or_default(),
            states: self
                .states
                .iter()
                .map(|s| TaskState::from(*s) as i32)
                .collect(),
            page_size,
            page_token,
        }
    }
}

/// Runs `pas tasks`: exit 0 with the list, 1 when the manager cannot be reached or refuses, 2 for
/// a request it calls invalid.
pub fn run(config_path: &Path, args: TasksArgs) -> ExitCode {
    let manager = args.manager.clone();
    follow::run_client(
        config_path,
        manager.as_deref(),
        move |addr, security| async move {
            let mut client = match follow::connect(&addr, &security, Mode::Plain).await {
                Ok(client) => client,
                Err(code) => return code,
            };
            let limit = args.limit as usize;
            let mut tasks: Vec<TaskRecord> = Vec::new();
            let mut token = String::new();
            let more = loop {
                let want = (limit - tasks.len()).min(args.page_size as usize) as u32;
                let sent = token.clone();
                let page = match client.list_tasks(args.request(want, token)).await {
                    Ok(page) => page.into_inner(),
                    Err(status) => {
                        report_error(Mode::Plain, status.code(), status.message());
                        return exit_for_status(status.code());
                    }
                };
                tasks.extend(page.tasks);
                token = page.next_page_token;
                // A page may be short, even empty, with more below it (the manager examines a
                // window of tasks per page); only a page without a new token is the last.
                if token.is_empty() || token == sent {
                    break false;
                }
                if tasks.len() >= limit {
                    break true;
                }
            };
            tasks.truncate(limit);
            let now_ms = chrono::Utc::now().timestamp_millis();
            if args.json {
                let all: Vec<Value> = tasks.iter().map(record_json).collect();
                println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
            } else {
                print!("{}", render(&tasks, more, now_ms));
            }
            follow::EXIT_SUCCEEDED
        },
    )
}

/// One task record as JSON: the record's fields (states as lower-case names, times in ms since
/// the epoch and as RFC 3339 for `created`), and its result as `pas dispatch --json` prints it.
pub fn record_json(r: &TaskRecord) -> Value {
    json!({
        "task_id": r.task_id,
        "state": state_name(r.state),
        "programmer_id": r.programmer_id,
        "run_id": r.run_id,
        "task_description": r.task_description,
        "files": r.files,
        "workspace": r.workspace,
        "capabilities": r.capabilities,
        "dry_run": r.dry_run,
        "owner": r.owner,
        "created_ms": r.created_ms,
        "created": chrono::DateTime::from_timestamp_millis(r.created_ms).map(|t| t.to_rfc3339()),
        "started_ms": r.started_ms,
        "finished_ms": r.finished_ms,
        "last_seq": r.last_seq,
        "result": r.result.as_ref().map(result_json),
    })
}

/// The table: one row per task, then a count (and a hint when `--limit` cut the list).
pub fn render(tasks: &[TaskRecord], more: bool, now_ms: i64) -> String {
    if tasks.is_empty() {
        return "No tasks.\n".to_string();
    }
    let mut table = super::table(&[
        "TASK",
        "STATE",
        "PROGRAMMER",
        "CREATED",
        "DURATION",
        "RUN",
        "DESCRIPTION",
    ]);
    for r in tasks {
        table.add_row([
            r.task_id.clone(),
            state_name(r.state).to_string(),
            dash(&r.programmer_id),
            created_text(r.created_ms, now_ms),
            task_duration(r, now_ms),
            dash(&r.run_id),
            truncate(&r.task_description, DESCRIPTION_WIDTH),
        ]);
    }
    let mut out = format!(
        "{table}\n{} task{}",
        tasks.len(),
        if tasks.len() == 1 { "" } else { "s" }
    );
    if more {
        out.push_str(" (there are more: raise --limit)");
    }
    out.push('\n');
    out
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s.to_string()
    }
}

/// `12s ago`, `5m ago`, `3h07m ago` within a day; older: the UTC time.
fn created_text(created_ms: i64, now_ms: i64) -> String {
    let secs = (now_ms - created_ms).max(0) / 1000;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h{:02}m ago", secs / 3600, (secs % 3600) / 60),
        _ => chrono::DateTime::from_timestamp_millis(created_ms)
            .map(|t| t.format("%Y-%m-%d %H:%MZ").to_string())
            .unwrap_or_else(|| "-".into()),
    }
}

/// A finished task's duration (acceptance to result); for one still queued or running, the time
/// since acceptance, marked `…`.
fn task_duration(r: &TaskRecord, now_ms: i64) -> String {
    if r.finished_ms > 0 {
        let ms = match &r.result {
            Some(result) if result.duration_ms > 0 => result.duration_ms,
            _ => u64::try_from(r.finished_ms - r.created_ms).unwrap_or(0),
        };
        duration_text(ms)
    } else {
        format!(
            "{}…",
            duration_text(u64::try_from(now_ms - r.created_ms).unwrap_or(0))
        )
    }
}

/// The first line of `s`, at most `width` characters (cut ones end with `…`).
fn truncate(s: &str, width: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    let cut = line.chars().count() > width || s.lines().nth(1).is_some();
    if !cut {
        return line.to_string();
    }
    let mut out: String = line.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::v1::TaskResult;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        args: TasksArgs,
    }

    fn parse(argv: &[&str]) -> Result<TasksArgs, clap::Error> {
        Cmd::try_parse_from(std::iter::once("tasks").chain(argv.iter().copied())).map(|c| c.args)
    }

    const NOW: i64 = 1_800_000_000_000;

    fn record(id: &str, state: TaskState) -> TaskRecord {
        TaskRecord {
            task_id: id.into(),
            state: state as i32,
            task_description: "Add docstrings to all functions".into(),
            run_id: "run-1".into(),
            programmer_id: "003".into(),
            created_ms: NOW - 125_000,
            ..Default::default()
        }
    }

    #[test]
    fn filters_become_the_request() {
        let args = parse(&[
            "--run-id",
            "r",
            "--state",
            "running,queued",
            "--state",
            "timed_out",
        ])
        .unwrap();
        let req = args.request(10, "tok".into());
        assert_eq!(req.run_id, "r");
        assert_eq!(
            req.states,
            [
                TaskState::Running as i32,
                TaskState::Queued as i32,
                TaskState::TimedOut as i32
            ]
        );
        assert_eq!((req.page_size, req.page_token.as_str()), (10, "tok"));
        let args = parse(&[]).unwrap();
        assert_eq!((args.limit, args.page_size), (50, 100));
        assert!(args.request(1, String::new()).states.is_empty());
        assert!(parse(&["--state", "done"]).is_err());
        assert!(parse(&["--limit", "0"]).is_err());
        assert!(parse(&["--page-size", "1001"]).is_err());
    }

    #[test]
    fn the_table_shows_each_task() {
        let mut done = record("t-done", TaskState::Succeeded);
        done.finished_ms = NOW - 5_000;
        done.result = Some(TaskResult {
            duration_ms: 4_200,
            ..Default::default()
        });
        let mut queued = record("t-queued", TaskState::Queued);
        queued.programmer_id.clear();
        queued.run_id.clear();
        queued.task_description = "x".repeat(100);
        let text = render(&[done, queued], true, NOW);
        let row = text.lines().find(|l| l.contains("t-done")).unwrap();
        for cell in [
            "succeeded",
            "003",
            "2m ago",
            "4.2s",
            "run-1",
            "Add docstrings",
        ] {
            assert!(row.contains(cell), "{cell} missing in {row}");
        }
        let row = text.lines().find(|l| l.contains("t-queued")).unwrap();
        for cell in ["queued", " - ", "2m05s…", &format!("{}…", "x".repeat(47))] {
            assert!(row.contains(cell), "{cell} missing in {row}");
        }
        assert!(
            text.ends_with("2 tasks (there are more: raise --limit)\n"),
            "{text}"
        );
        assert_eq!(render(&[], false, NOW), "No tasks.\n");
    }

    #[test]
    fn times_are_relative_within_a_day() {
        assert_eq!(created_text(NOW - 9_999, NOW), "9s ago");
        assert_eq!(created_text(NOW - 3_600_000 - 420_000, NOW), "1h07m ago");
        assert_eq!(created_text(0, NOW), "1970-01-01 00:00Z");
        assert_eq!(truncate("short\nsecond line", 48), "short…");
    }

    #[test]
    fn json_records_name_states_and_carry_the_result() {
        let mut r = record("t", TaskState::Cancelled);
        r.result = Some(TaskResult {
            status: TaskState::Cancelled as i32,
            ..Default::default()
        });
        let v = record_json(&r);
        assert_eq!(v["state"], "cancelled");
        assert_eq!(v["task_id"], "t");
        assert_eq!(v["result"]["status"], "cancelled");
        assert_eq!(v["run_id"], "run-1");
        assert!(
            v["created"]
                .as_str()
                .is_some_and(|c| c.starts_with("2027-"))
        );
        assert!(record_json(&TaskRecord::default())["result"].is_null());
    }
}
