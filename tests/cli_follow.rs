//! Following tasks from the CLI against a real pool (real `pas manager`, real `pas programmer`s
//! running real aider on a real git repository, `pas llm-sim` for the models):
//!
//! - `pas dispatch` survives `kill -9` of the manager mid-task and its restart: it says it lost the
//!   stream, re-attaches by itself, shows every event exactly once in order, and exits 0 with the
//!   result.
//! - `pas watch` replays a finished task (the same events `pas dispatch` showed), honours
//!   `--after-seq`, exits with the result's code (0 succeeded, 130 cancelled), and says NOT_FOUND /
//!   OUT_OF_RANGE clearly; Ctrl-C in `pas watch` leaves the task running.
//! - `pas dispatch --detach` returns once the task is accepted and says how to follow it.
//! - `pas tasks` lists the tasks, newest first, filtered by run id and state, across pages.
//!
//! | programmer | capability | simulated models                       | task                       |
//! |------------|------------|----------------------------------------|----------------------------|
//! | 001        | `slow`     | replies streamed 8 characters / 100 ms | `r1`: the manager restart  |
//! | 002        | `hang`     | never answer                           | `d1`: detach, watch, cancel|

use crate::common;

use common::cli::{self, Run, assert_in_order, finish, read_until, spawn_lines};
use common::pool::{ChildGuard, PoolOptions, TestPool, TestProgrammer, manager_client};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pas::contract::v1::{CancelTaskRequest, GetTaskRequest, TaskState};
use serde_json::Value;
use std::time::Duration;

const SIM_SCRIPT: &str = r#"
rules:
  - model: "*-002"
    fault: hang
default:
  chunk_delay_ms: 100
  chunk_chars: 8
"#;

/// The pool, and the logs of every process when a case fails.
struct Fixture {
    pool: TestPool,
    _programmers: Vec<ChildGuard>,
}

impl Fixture {
    fn start() -> (Fixture, ChildGuard) {
        let with = |id: &str, capability: &str| TestProgrammer {
            capabilities: vec![capability.into()],
            ..TestProgrammer::free(id)
        };
        let pool = TestPool::with_sim(
            PoolOptions {
                programmers: vec![with("001", "slow"), with("002", "hang")],
                max_retries: 1,
                failure_threshold: 100,
                // Nothing times out on its own while a case waits on it.
                request_timeout_s: 300,
                task_timeout_s: 300,
                task_lease_s: 120,
                ..PoolOptions::default()
            },
            common::Sim::start_with_script(SIM_SCRIPT),
        );
        pool.sample_repo();
        let mut procs = pool.start_all();
        let manager = procs.pop().expect("the manager");
        (
            Fixture {
                pool,
                _programmers: procs,
            },
            manager,
        )
    }

    /// `pas ARGS…` with piped output.
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        cli::command(&self.pool, args)
    }

    /// Runs `pas ARGS…` to its end.
    async fn run(&self, args: &[&str]) -> Run {
        cli::run_to_end(self.command(args), &format!("pas {args:?}")).await
    }

    async fn state(&self, task_id: &str) -> TaskState {
        let record = manager_client(&self.pool)
            .await
            .get_task(GetTaskRequest {
                task_id: task_id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("GetTask {task_id}: {e:?}"))
            .into_inner();
        record.state()
    }
}

impl Drop for Fixture {
    /// A failed case prints every process's log (config, manager, programmers, llm-sim).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(dir) = std::fs::read_dir(self.pool.dir.path()) else {
            return;
        };
        for entry in dir.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                eprintln!("--- {} ---\n{text}", path.display());
            }
        }
        eprintln!("--- llm-sim ---\n{}", self.pool.sim.log_text());
    }
}

/// `pas dispatch` of the sample task on the programmer with `capability`, then `flag`.
fn dispatch_args<'a>(
    capability: &'a str,
    run_id: &'a str,
    task_id: &'a str,
    flag: &'a str,
) -> Vec<&'a str> {
    let tail = ["--run-id", run_id, "--task-id", task_id, flag];
    [&["dispatch"][..], &cli::sample_task(capability), &tail].concat()
}

/// Every line of a `--json` run, parsed.
fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{stdout}")))
        .collect()
}

/// The task events among them (the lines with a `seq`), in order.
fn task_events(lines: &[Value]) -> Vec<Value> {
    lines
        .iter()
        .filter(|v| v.get("seq").is_some())
        .cloned()
        .collect()
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|v| v["seq"].as_u64().unwrap_or(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_tasks_from_the_cli() {
    let (fx, manager) = Fixture::start();
    fx.pool
        .wait_manager_status(Duration::from_secs(60), "2 programmers available", |s| {
            s["available"] == 2
        })
        .await;
    let (r1_events, _manager) = dispatch_survives_a_killed_manager(&fx, manager).await;
    watch_replays_a_finished_task(&fx, &r1_events).await;
    detach_then_watch_and_cancel(&fx).await;
    tasks_lists_filters_and_pages(&fx).await;
}

/// `pas dispatch --json` on a slow model; once aider talks (the first output event), the manager
/// is killed with SIGKILL and started again on the same configuration. The CLI re-attaches by
/// itself and ends with the result: every seq once, in order, and the loss and re-attach said
/// in place. Returns the task's events and the new manager.
async fn dispatch_survives_a_killed_manager(
    fx: &Fixture,
    mut manager: ChildGuard,
) -> (Vec<Value>, ChildGuard) {
    let (child, mut lines) =
        spawn_lines(fx.command(&dispatch_args("slow", "run-a", "r1", "--json")));
    let mut seen = String::new();
    read_until(&mut lines, &mut seen, |l| l.contains(r#""type":"output""#)).await;
    kill(Pid::from_raw(manager.pid() as i32), Signal::SIGKILL).expect("kill -9 the manager");
    manager.kill();
    let manager = fx.pool.start_manager();
    let (code, stderr) = finish(child, lines, &mut seen).await;
    assert_eq!(code, 0, "{seen}\n{stderr}");

    let all = json_lines(&seen);
    let events = task_events(&all);
    assert_eq!(
        seqs(&events),
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "every seq exactly once, in order:\n{seen}"
    );
    let last = events.last().expect("events");
    assert_eq!(last["type"], "result", "{seen}");
    assert_eq!(last["status"], "succeeded", "{seen}");
    assert_eq!(last["branch"], "pas/r1");
    assert!(events.iter().all(|e| e["task_id"] == "r1"), "{seen}");

    // The loss and the re-attach are JSON lines where they happened, naming the last seq shown.
    let at = |kind: &str| {
        all.iter()
            .position(|v| v["type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} line in:\n{seen}\n{stderr}"))
    };
    let (lost, back) = (at("stream_lost"), at("reattached"));
    assert!(lost < back, "{seen}");
    let shown_before = task_events(&all[..lost]).last().map(|e| e["seq"].clone());
    assert_eq!(Some(all[lost]["last_seq"].clone()), shown_before, "{seen}");
    assert_eq!(all[back]["after_seq"], all[lost]["last_seq"], "{seen}");
    assert!(
        task_events(&all[lost..back]).is_empty(),
        "nothing shown while away: {seen}"
    );
    assert!(
        stderr.contains("lost the stream of task r1 (")
            && stderr.contains("re-attached to task r1 after seq "),
        "{stderr}"
    );
    (events, manager)
}

/// `pas watch` of the finished task shows what `pas dispatch` showed, from the start or after a
/// seq; an unknown id and a seq beyond the task's events are clear errors.
async fn watch_replays_a_finished_task(fx: &Fixture, r1_events: &[Value]) {
    let run = fx.run(&["watch", "r1", "--json"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        task_events(&json_lines(&run.stdout)),
        r1_events,
        "the replay is the stream dispatch showed: {run}"
    );

    let run = fx.run(&["watch", "r1", "--json", "--after-seq", "3"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        task_events(&json_lines(&run.stdout)),
        r1_events[3..],
        "{run}"
    );

    let run = fx.run(&["watch", "r1"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert_in_order(
        &run.stdout,
        &[
            "==> assigned to programmer 001: ollama/primary-001",
            "Applied edit to src/module.py",
            "── result ──\nstatus     succeeded\ntask       r1\nprogrammer 001 (free)\n",
            "── diff ──",
        ],
    );

    let run = fx.run(&["watch", "no-such-task"]).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stderr
            .contains("error: NOT_FOUND: task_id: no task \"no-such-task\""),
        "{run}"
    );

    let beyond = (r1_events.len() + 5).to_string();
    let run = fx.run(&["watch", "r1", "--after-seq", &beyond]).await;
    assert_eq!(run.code, 2, "{run}");
    assert!(
        run.stderr.contains("error: OUT_OF_RANGE: after_seq: "),
        "{run}"
    );
}

/// `pas dispatch --detach` returns once the task is accepted; `pas watch` follows it and its
/// Ctrl-C leaves it running; a second `pas watch` ends with the CANCELLED result (exit 130) once
/// the task is cancelled.
async fn detach_then_watch_and_cancel(fx: &Fixture) {
    let run = fx
        .run(&dispatch_args("hang", "run-b", "d1", "--detach"))
        .await;
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout
            .contains("==> task d1 runs on without this command; follow it with `pas watch d1`"),
        "{run}"
    );

    // Aider is up and waiting on a model that never answers.
    let (code, seen, stderr) = cli::interrupt_once_aider_is_up(fx.command(&["watch", "d1"])).await;
    assert_eq!(code, 130, "{seen}\n{stderr}");
    assert!(
        seen.contains(
            "==> task d1 runs on without this command; follow it with `pas watch d1 --after-seq "
        ),
        "{seen}\n{stderr}"
    );
    assert!(!seen.contains("cancelling"), "{seen}");
    assert_eq!(fx.state("d1").await, TaskState::Running, "{seen}");

    let (child, mut lines) = spawn_lines(fx.command(&["watch", "d1", "--json"]));
    let mut seen = String::new();
    read_until(&mut lines, &mut seen, |l| l.contains(r#""type":"output""#)).await;
    let cancelled = manager_client(&fx.pool)
        .await
        .cancel_task(CancelTaskRequest {
            task_id: "d1".into(),
        })
        .await
        .expect("CancelTask d1")
        .into_inner();
    assert!(cancelled.cancelled, "{cancelled:?}");
    let (code, stderr) = finish(child, lines, &mut seen).await;
    assert_eq!(code, 130, "{seen}\n{stderr}");
    let events = task_events(&json_lines(&seen));
    assert_eq!(seqs(&events), (1..=events.len() as u64).collect::<Vec<_>>());
    let last = events.last().expect("events");
    assert_eq!(last["type"], "result", "{seen}");
    assert_eq!(last["status"], "cancelled", "{seen}");
}

/// `pas tasks`: both tasks, newest first; filters by run id and state; pages of one.
async fn tasks_lists_filters_and_pages(fx: &Fixture) {
    let ids = |run: &Run| -> Vec<String> {
        assert_eq!(run.code, 0, "{run}");
        let all: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run}"));
        all.as_array()
            .unwrap_or_else(|| panic!("an array: {run}"))
            .iter()
            .map(|t| t["task_id"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let run = fx.run(&["tasks", "--json"]).await;
    assert_eq!(ids(&run), ["d1", "r1"], "newest first");
    let all: Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(all[0]["state"], "cancelled");
    assert_eq!(all[1]["state"], "succeeded");
    assert_eq!(all[1]["run_id"], "run-a");
    assert_eq!(all[1]["programmer_id"], "001");
    assert_eq!(all[1]["result"]["branch"], "pas/r1");

    let run = fx.run(&["tasks", "--json", "--run-id", "run-a"]).await;
    assert_eq!(ids(&run), ["r1"]);
    let run = fx.run(&["tasks", "--json", "--state", "cancelled"]).await;
    assert_eq!(ids(&run), ["d1"]);
    let run = fx
        .run(&[
            "tasks",
            "--json",
            "--state",
            "succeeded,cancelled",
            "--run-id",
            "run-b",
        ])
        .await;
    assert_eq!(ids(&run), ["d1"]);
    let run = fx.run(&["tasks", "--json", "--state", "running"]).await;
    assert!(ids(&run).is_empty(), "{run}");
    let run = fx.run(&["tasks", "--json", "--page-size", "1"]).await;
    assert_eq!(ids(&run), ["d1", "r1"], "paged one by one");

    let run = fx.run(&["tasks"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout.contains("TASK") && run.stdout.contains("DESCRIPTION"),
        "{run}"
    );
    let row = |id: &str| {
        run.stdout
            .lines()
            .find(|l| l.contains(&format!(" {id} ")))
            .unwrap_or_else(|| panic!("no row for {id}: {run}"))
            .to_string()
    };
    for cell in ["succeeded", "001", "run-a", "Add docstrings to all"] {
        assert!(row("r1").contains(cell), "{cell} in {}", row("r1"));
    }
    for cell in ["cancelled", "002", "run-b"] {
        assert!(row("d1").contains(cell), "{cell} in {}", row("d1"));
    }
    assert!(run.stdout.ends_with("2 tasks\n"), "{run}");
    let run = fx.run(&["tasks", "--limit", "1"]).await;
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stdout.contains(" d1 ") && !run.stdout.contains(" r1 "),
        "{run}"
    );
    assert!(
        run.stdout
            .ends_with("1 task (there are more: raise --limit)\n"),
        "{run}"
    );
}
