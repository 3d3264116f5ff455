//! `pas dispatch` as a user runs it, against a real pool: the real `pas manager` in front of real
//! `pas programmer`s that run the real Aider CLI on a real git repository, with the project's LLM
//! simulator standing in for the providers. Nothing is scripted but the simulator's faults.
//!
//! One pool serves every case; each case routes to its own programmer by capability, so the
//! cases run concurrently and each sees exactly the model behaviour it needs:
//!
//! | programmer | capability | simulated models                          | cases                         |
//! |------------|------------|-------------------------------------------|-------------------------------|
//! | 001        | `flaky`    | primary HTTP 500, backup answers          | success (plain) + `--json`    |
//! | 002        | `doomed`   | primary and backup HTTP 500               | failed                        |
//! | 003        | `hang`     | both never answer                         | timed out (`--timeout 2`)     |
//! | 004        | `slow`     | both answer after 15 s                    | Ctrl-C; the manager gone      |
//! | 005        | `tty`      | primary HTTP 500, backup answers          | the spinner on a pty          |
//! | 006        | `premium`  | paid, `max_cost_per_job_usd` over budget  | dry run, idempotency, budget  |
//!
//! Needs the aider venv: the harness FAILS with a clear message when it is missing.

use crate::common;

use common::cli::{self, Run, TASK_LIMIT, assert_in_order, finish, read_until, spawn_lines};
use common::pool::{ChildGuard, PoolOptions, TestPool, TestProgrammer};
use pas::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use pas::contract::v1::{GetTaskRequest, TaskRecord, TaskState};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The simulator's behaviour per model (see the table above).
const SIM_SCRIPT: &str = r#"
rules:
  - model: "primary-001"
    fault: http_500
  - model: "primary-002"
    fault: http_500
  - model: "backup-002"
    fault: http_500
  - model: "*-003"
    fault: hang
  - model: "*-004"
    latency_ms: 15000
  - model: "primary-005"
    fault: http_500
default:
  fault: none
"#;

const TASK: &str = cli::SAMPLE_TASK;

/// The running pool shared by every case.
struct Fixture {
    pool: TestPool,
    programmers: Vec<ChildGuard>,
    /// Taken (and killed) by the last case.
    manager: Mutex<Option<ChildGuard>>,
}

impl Fixture {
    async fn start() -> Fixture {
        let free = |id: &str, capability: &str| TestProgrammer {
            capabilities: vec![capability.into()],
            ..TestProgrammer::free(id)
        };
        let premium = TestProgrammer {
            // More than the whole day's budget: a real task can never be afforded (so it never
            // runs aider).
            max_cost_per_job_usd: Some(100.0),
            runs_aider: false,
            ..TestProgrammer::paid("006")
        };
        let options = PoolOptions {
            programmers: vec![
                free("001", "flaky"),
                free("002", "doomed"),
                free("003", "hang"),
                free("004", "slow"),
                free("005", "tty"),
                premium,
            ],
            // Every flaky task fails over (the breaker never opens); a task makes at most two
            // attempts: primary, then backup.
            failure_threshold: 100,
            max_retries: 1,
            ..PoolOptions::default()
        };
        let pool = TestPool::with_sim(options, common::Sim::start_with_script(SIM_SCRIPT));
        pool.repo(
            "sample",
            &[
                ("src/module.py", common::pool::SAMPLE_MODULE),
                ("README.md", "# sample\n"),
            ],
        );
        let mut procs = pool.start_all();
        let manager = procs.pop();
        let fixture = Fixture {
            pool,
            programmers: procs,
            manager: Mutex::new(manager),
        };
        fixture
            .pool
            .wait_manager_status(Duration::from_secs(60), "6 programmers available", |s| {
                s["available"] == 6
            })
            .await;
        fixture
    }

    /// `pas --config POOL dispatch ARGS…`, stdout and stderr piped (so: plain mode).
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = cli::command(&self.pool, &["dispatch"]);
        cmd.args(args);
        cmd
    }

    /// Runs `pas dispatch ARGS…` to the end.
    async fn dispatch(&self, args: &[&str]) -> Run {
        cli::run_to_end(self.command(args), &format!("pas dispatch {args:?}")).await
    }

    async fn client(&self) -> ProgrammerPoolClient<tonic::transport::Channel> {
        ProgrammerPoolClient::connect(self.pool.manager_url())
            .await
            .expect("connect to the manager")
    }

    /// The manager's record of `task_id`.
    async fn record(&self, task_id: &str) -> Result<TaskRecord, tonic::Status> {
        self.client()
            .await
            .get_task(GetTaskRequest {
                task_id: task_id.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    fn sample(&self) -> std::path::PathBuf {
        self.pool.workspace_root.join("sample")
    }

    /// Every process's log, for the failure message.
    fn logs(&self) -> String {
        let mut out = String::new();
        let manager = self.manager.lock().unwrap_or_else(|p| p.into_inner());
        for p in self.programmers.iter().chain(manager.as_ref()) {
            out.push_str(&format!("--- {} ---\n{}\n", p.name, p.log_text()));
        }
        out.push_str(&format!("--- llm-sim ---\n{}\n", self.pool.sim.log_text()));
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pas_dispatch_against_a_real_pool() {
    let fx = Arc::new(Fixture::start().await);
    let mut cases: Vec<(&str, tokio::task::JoinHandle<()>)> = Vec::new();
    let mut spawn = |name, case: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>| {
        cases.push((name, tokio::spawn(case)));
    };
    spawn(
        "a successful task and its --json twin",
        Box::pin(success_plain_and_json(fx.clone())),
    );
    spawn("a failed task", Box::pin(failed_task_exits_1(fx.clone())));
    spawn(
        "a timed-out task",
        Box::pin(timed_out_task_exits_1(fx.clone())),
    );
    spawn(
        "rejected requests",
        Box::pin(rejected_requests_exit_2(fx.clone())),
    );
    spawn(
        "bad command lines",
        Box::pin(bad_command_lines_exit_2_before_calling_anyone(fx.clone())),
    );
    spawn("Ctrl-C", Box::pin(ctrl_c_cancels_the_task(fx.clone())));
    spawn(
        "the spinner on a pty",
        Box::pin(spinner_on_a_terminal(fx.clone())),
    );
    let mut failures = Vec::new();
    for (name, handle) in cases {
        if let Err(e) = handle.await {
            failures.push(format!("{name}: {e}"));
        }
    }
    // Last, since it stops the manager: a stream that breaks, then nobody to call.
    if let Err(e) = tokio::spawn(manager_gone_exits_1(fx.clone())).await {
        failures.push(format!("the manager dying: {e}"));
    }
    assert!(
        failures.is_empty(),
        "{} case(s) failed (their panics are printed above):\n{}\n\n{}",
        failures.len(),
        failures.join("\n"),
        fx.logs()
    );
}

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

/// `j1` (`--json`) starts on 001; `my-task` (plain, every request flag) is sent while `j1` runs,
/// so it waits in 001's queue first. Both fail over from the primary (HTTP 500) to the backup and
/// succeed with a real commit.
async fn success_plain_and_json(fx: Arc<Fixture>) {
    let repo = fx.sample();
    let base = common::git_head(&repo);
    let (json_child, mut json_lines) = spawn_lines(fx.command(&[
        TASK,
        "--files",
        "src/module.py",
        "README.md",
        "--workspace",
        "sample",
        "--capability",
        "flaky",
        "--json",
        "--task-id",
        "j1",
    ]));
    let mut json_text = String::new();
    read_until(&mut json_lines, &mut json_text, |l| {
        l.contains(r#""type":"assigned""#)
    })
    .await;

    let plain = fx.dispatch(&[
        TASK,
        "--files",
        "src/module.py",
        "README.md",
        "--workspace",
        "sample",
        "--capability",
        "flaky",
        "--prefer-free",
        "--strategy",
        "capability_match",
        "--run-id",
        "run-7",
        "--timeout",
        "200",
        "--base-ref",
        "main",
        "--task-id",
        "my-task",
    ]);
    let (plain, (json_code, json_err)) =
        tokio::join!(plain, finish(json_child, json_lines, &mut json_text));

    // ---- plain ----
    assert_eq!(plain.code, 0, "{plain}");
    let commit = common::git(&repo, &["rev-parse", "refs/heads/pas/my-task"]);
    let commit = commit.trim();
    let diff = common::git(&repo, &["diff", &base, commit]);
    assert!(diff.contains("+    \"\"\"Add.\"\"\""), "{diff}");
    let cost_and_duration = "cost       $0.0000 (";
    let branch_and_commit = format!(
        "branch     pas/my-task\ncommit     {commit} (from {})\n",
        &base[..12]
    );
    assert_in_order(
        &plain.stdout,
        &[
            "==> queued: position 1 in the programmer queue",
            "==> assigned to programmer 001: ollama/primary-001 [strategy capability_match]\n",
            "Added src/module.py to the chat.\n",
            "litellm.APIConnectionError: ",
            "==> failover: ollama/primary-001 → ollama/backup-001 (attempt 2): ",
            "Added src/module.py to the chat.\n",
            // Streamed in 16-character pieces, written as they come: one line again.
            "I will apply \"Add docstrings to all functions\" to 2 file(s).\n",
            "Applied edit to src/module.py\n",
            "── result ──\nstatus     succeeded\ntask       my-task\nprogrammer 001 (free)\nmodel      ollama/backup-001 (backup)\nfiles      README.md, src/module.py\n",
            cost_and_duration,
            "\nduration   ",
            &branch_and_commit,
            "attempts   1. ollama/primary-001 — api_error: litellm.APIConnectionError: ",
            "           2. ollama/backup-001 (backup) — ok (",
            "── diff ──\n",
        ],
    );
    assert!(
        plain.stdout.ends_with(&format!("── diff ──\n{diff}")),
        "the diff, last and complete:\n{plain}"
    );
    assert!(
        !plain.stdout.contains("error      "),
        "no error line for a success:\n{plain}"
    );
    assert!(
        !plain.stdout.contains('\x1b'),
        "no colours when piped:\n{plain}"
    );
    // The manager recorded the request as the flags said.
    let record = fx.record("my-task").await.expect("GetTask my-task");
    assert_eq!(record.state(), TaskState::Succeeded);
    assert_eq!(record.task_description, TASK);
    assert_eq!(record.files, ["src/module.py", "README.md"]);
    assert_eq!(record.workspace, "sample");
    assert_eq!(record.capabilities, ["flaky"]);
    assert_eq!(record.run_id, "run-7");
    assert_eq!(record.programmer_id, "001");
    let result = record.result.expect("recorded result");
    assert_eq!(result.commit, commit);
    assert_eq!(result.base_commit, base, "--base-ref main");

    // ---- json ----
    assert_eq!(json_code, 0, "{json_text}\n{json_err}");
    let values: Vec<serde_json::Value> = json_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let types: Vec<&str> = values
        .iter()
        .map(|v| v["type"].as_str().expect("type"))
        .collect();
    assert_eq!(types.first(), Some(&"assigned"), "{types:?}");
    assert_eq!(types.last(), Some(&"result"), "{types:?}");
    assert_eq!(types.iter().filter(|t| **t == "result").count(), 1);
    assert_eq!(types.iter().filter(|t| **t == "failover").count(), 1);
    let failover_at = types.iter().position(|t| *t == "failover").unwrap_or(0);
    assert!(
        types[1..failover_at].contains(&"output") && types[failover_at..].contains(&"output"),
        "output before and after the failover: {types:?}"
    );
    let seqs: Vec<u64> = values
        .iter()
        .map(|v| v["seq"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(seqs, (1..=values.len() as u64).collect::<Vec<u64>>());
    assert!(values.iter().all(|v| v["task_id"] == "j1"), "{json_text}");
    let failover = &values[failover_at];
    assert_eq!(failover["from_llm"], "ollama/primary-001");
    assert_eq!(failover["to_llm"], "ollama/backup-001");
    assert_eq!(failover["attempt"], 2);
    assert_eq!(failover["error_class"], "api_error");
    let output: String = values
        .iter()
        .filter(|v| v["type"] == "output")
        .map(|v| v["text"].as_str().unwrap_or(""))
        .collect();
    assert!(
        output.contains("Applied edit to src/module.py\n"),
        "{output}"
    );
    let result = values.last().expect("result");
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(result["programmer_id"], "001");
    assert_eq!(result["llm_used"], "ollama/backup-001");
    assert_eq!(result["used_backup"], true);
    assert_eq!(result["branch"], "pas/j1");
    assert_eq!(result["base_commit"], base.as_str());
    assert_eq!(result["attempts"][0]["error_class"], "api_error");
    assert_eq!(result["attempts"][1]["error_class"], "none");
    let j1_commit = result["commit"].as_str().expect("commit");
    assert_eq!(
        result["diff"].as_str(),
        Some(common::git(&repo, &["diff", &base, j1_commit]).as_str()),
        "the result's diff is the commit's"
    );
}

/// 002's primary and backup both fail: exit 1, the error, nothing changed.
async fn failed_task_exits_1(fx: Arc<Fixture>) {
    let run = fx
        .dispatch(&[
            TASK,
            "--files",
            "src/module.py",
            "--workspace",
            "sample",
            "--capability",
            "doomed",
        ])
        .await;
    assert_eq!(run.code, 1, "{run}");
    assert_in_order(
        &run.stdout,
        &[
            "==> assigned to programmer 002: ollama/primary-002",
            "==> failover: ollama/primary-002 → ollama/backup-002 (attempt 2)",
            "── result ──\nstatus     failed\n",
            "files      none changed\n",
            "attempts   1. ollama/primary-002 — api_error: ",
            "           2. ollama/backup-002 (backup) — api_error: ",
            "error      api_error: ",
        ],
    );
    assert!(!run.stdout.contains("── diff ──"), "{run}");
}

/// `--timeout 2` on a model that never answers: the deadline ends the task; exit 1.
async fn timed_out_task_exits_1(fx: Arc<Fixture>) {
    let run = fx
        .dispatch(&[
            TASK,
            "--files",
            "src/module.py",
            "--workspace",
            "sample",
            "--capability",
            "hang",
            "--timeout",
            "2",
        ])
        .await;
    assert_eq!(run.code, 1, "{run}");
    assert_in_order(
        &run.stdout,
        &[
            "==> assigned to programmer 003: ollama/primary-003",
            "── result ──\nstatus     timed_out\n",
            "files      none changed\n",
            "error      deadline: ",
        ],
    );
}

/// Requests the manager refuses exit 2 with its status message (1 for RESOURCE_EXHAUSTED).
async fn rejected_requests_exit_2(fx: Arc<Fixture>) {
    let run = fx
        .dispatch(&["x", "--files", "../x.py", "--workspace", "sample"])
        .await;
    assert_eq!(run.code, 2, "{run}");
    assert!(
        run.stderr.contains("error: INVALID_ARGUMENT: files[0]: ")
            && run.stderr.contains("../x.py"),
        "{run}"
    );

    let run = fx
        .dispatch(&["x", "--workspace", "sample", "--capability", "gpu"])
        .await;
    assert_eq!(run.code, 2, "{run}");
    assert!(
        run.stderr
            .contains("error: FAILED_PRECONDITION: capabilities: ")
            && run.stderr.contains("[gpu]"),
        "{run}"
    );

    // A dry run is routed (to the only premium programmer) but nothing runs.
    let dry = [
        "dry",
        "--workspace",
        "sample",
        "--capability",
        "premium",
        "--dry-run",
    ];
    let run = fx
        .dispatch(&[&dry[..], &["--task-id", "dup"]].concat())
        .await;
    assert_eq!(run.code, 0, "{run}");
    assert_in_order(
        &run.stdout,
        &[
            "==> assigned to programmer 006: openai/gpt-4o",
            "── result ──\nstatus     succeeded\ntask       dup\nprogrammer 006 (paid)\n",
            "dry run    validated and routed; aider was not run\n",
        ],
    );
    // The same id and request again: the recorded result, once more.
    let again = fx
        .dispatch(&[&dry[..], &["--task-id", "dup"]].concat())
        .await;
    assert_eq!(again.code, 0, "{again}");
    assert!(
        again
            .stdout
            .contains("status     succeeded\ntask       dup\nprogrammer 006 (paid)\n"),
        "{again}"
    );
    // The same id for another request: refused.
    let run = fx
        .dispatch(&[
            "other",
            "--workspace",
            "sample",
            "--dry-run",
            "--task-id",
            "dup",
        ])
        .await;
    assert_eq!(run.code, 2, "{run}");
    assert!(
        run.stderr.contains(
            "error: ALREADY_EXISTS: task_id: \"dup\" is already used by a different request"
        ),
        "{run}"
    );

    // Only a programmer the day's budget cannot cover holds "premium": refused up front, exit 1.
    let run = fx
        .dispatch(&["x", "--workspace", "sample", "--capability", "premium"])
        .await;
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stderr
            .contains("error: RESOURCE_EXHAUSTED: daily budget exhausted"),
        "{run}"
    );

    // In JSON mode the refusal is a JSON object on stdout.
    let run = fx
        .dispatch(&["x", "--files", "../x.py", "--workspace", "sample", "--json"])
        .await;
    assert_eq!(run.code, 2, "{run}");
    let error: serde_json::Value =
        serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run}"));
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "INVALID_ARGUMENT");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("files[0]: ")),
        "{error}"
    );
}

/// A command line clap refuses exits 2, and the manager never hears of the task.
async fn bad_command_lines_exit_2_before_calling_anyone(fx: Arc<Fixture>) {
    let run = fx
        .dispatch(&["x", "--files", "a.py", "--task-id", "bad-1"])
        .await;
    assert_eq!(run.code, 2, "missing --workspace: {run}");
    assert!(run.stderr.contains("--workspace"), "{run}");
    let run = fx
        .dispatch(&[
            "x",
            "--workspace",
            "sample",
            "--strategy",
            "fastest",
            "--task-id",
            "bad-2",
        ])
        .await;
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("fastest"), "{run}");
    for id in ["bad-1", "bad-2"] {
        let err = fx.record(id).await.expect_err("never sent");
        assert_eq!(err.code(), tonic::Code::NotFound, "{id}: {err:?}");
    }
}

/// SIGINT while aider waits for the (slow) model: the task is cancelled on the server.
async fn ctrl_c_cancels_the_task(fx: Arc<Fixture>) {
    // Aider is up and about to ask the model, which takes 15 s to answer.
    let (code, seen, stderr) = cli::interrupt_once_aider_is_up(fx.command(&[
        TASK,
        "--files",
        "src/module.py",
        "--workspace",
        "sample",
        "--capability",
        "slow",
        "--task-id",
        "c1",
    ]))
    .await;
    assert_eq!(code, 130, "{seen}\n{stderr}");
    assert_in_order(
        &seen,
        &[
            "==> assigned to programmer 004: ollama/primary-004",
            "==> cancelling task c1",
            "── result ──\nstatus     cancelled\ntask       c1\n",
        ],
    );
    assert!(!seen.contains("Applied edit"), "{seen}");
    let record = fx.record("c1").await.expect("GetTask c1");
    assert_eq!(record.state(), TaskState::Cancelled, "{record:?}");
}

/// Runs `pas dispatch` on a pseudo-terminal and returns its exit code and everything it drew.
fn dispatch_on_pty(mut cmd: std::process::Command) -> (i32, String) {
    use nix::pty::{Winsize, openpty};
    use std::io::Read;
    let size = Winsize {
        ws_row: 40,
        ws_col: 200,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None).expect("openpty");
    let slave = std::fs::File::from(pty.slave);
    let mut child = cmd
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .stdout(slave.try_clone().expect("dup pty"))
        .stderr(slave)
        .spawn()
        .expect("spawn pas dispatch");
    // The command holds copies of the slave too: drop them, so that the child's are the only
    // ones left and reading ends (EIO) when it exits.
    drop(cmd);
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    // Kill it after TASK_LIMIT, so a stuck run fails the case instead of hanging the suite.
    let deadline = std::time::Instant::now() + TASK_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for pas dispatch") {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().expect("wait for pas dispatch");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let drawn = reader.join().expect("pty reader");
    (status.code().unwrap_or(-1), drawn)
}

/// On a terminal: a spinner naming the phase and counting seconds, output lines printed whole
/// above it (aider streams the model's reply in pieces), a coloured summary and diff.
async fn spinner_on_a_terminal(fx: Arc<Fixture>) {
    let cmd = fx
        .pool
        .pas_command(&[&["dispatch"][..], &cli::sample_task("tty")].concat());
    let (code, drawn) = tokio::task::spawn_blocking(move || dispatch_on_pty(cmd))
        .await
        .expect("pty thread");
    assert_eq!(code, 0, "{drawn:?}");
    assert!(
        drawn.contains("running on 005 · ollama/primary-005"),
        "{drawn:?}"
    );
    assert!(
        drawn.contains("retrying on ollama/backup-005 (attempt 2)"),
        "{drawn:?}"
    );
    let elapsed: Vec<&str> = ["[0s]", "[1s]", "[2s]", "[3s]"]
        .into_iter()
        .filter(|s| drawn.contains(*s))
        .collect();
    assert!(
        elapsed.len() >= 2,
        "elapsed time not ticking: {elapsed:?} in {drawn:?}"
    );
    // Redrawn in place (line clearing / carriage return), not printed line after line.
    assert!(
        drawn.contains("\x1b[2K") || drawn.contains('\r'),
        "{drawn:?}"
    );
    // This line reaches `pas dispatch` in several output events (the simulator streams 16
    // characters at a time); on a terminal it is printed whole.
    let joined = "I will apply \"Add docstrings to all functions\" to 1 file(s).";
    let a = drawn
        .find("Model: ollama/primary-005")
        .expect("first attempt's output");
    let b = drawn.find(joined).expect("a streamed line, printed whole");
    let c = drawn
        .find("Applied edit to src/module.py")
        .expect("last output line");
    assert!(a < b && b < c, "output in order: {drawn:?}");
    assert!(drawn.contains("\x1b["), "colours on a terminal");
    assert!(drawn.contains("── result ──"), "{drawn:?}");
    assert!(drawn.contains("+    \"\"\"Add.\"\"\""), "{drawn:?}");
}

/// The manager dies while a task runs and stays away: `pas dispatch` says it lost the stream,
/// tries to re-attach for `--reattach-timeout-s`, then gives up with exit 1 and the command that
/// follows the task later; then a new dispatch cannot reach anyone, exit 1.
async fn manager_gone_exits_1(fx: Arc<Fixture>) {
    let (child, mut lines) = spawn_lines(fx.command(&[
        TASK,
        "--files",
        "src/module.py",
        "--workspace",
        "sample",
        "--capability",
        "slow",
        "--task-id",
        "orphan",
        "--reattach-timeout-s",
        "1",
    ]));
    let mut seen = String::new();
    read_until(&mut lines, &mut seen, |l| l.starts_with("==> assigned")).await;
    let mut manager = fx
        .manager
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .expect("the manager runs");
    manager.kill();
    let (code, stderr) = finish(child, lines, &mut seen).await;
    assert_eq!(code, 1, "{seen}\n{stderr}");
    assert!(
        seen.contains("==> lost the stream of task orphan (")
            && seen.contains("re-attaching after seq "),
        "{seen}\n{stderr}"
    );
    assert!(
        stderr.starts_with("error: UNAVAILABLE: gave up re-attaching to task orphan after 1s")
            && stderr.contains("follow it with `pas watch orphan --after-seq "),
        "{seen}\n{stderr}"
    );
    assert!(!seen.contains("── result ──"), "{seen}");

    let addr = format!("127.0.0.1:{}", fx.pool.manager_port);
    let run = fx.dispatch(&["x", "--workspace", "sample"]).await;
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stderr.contains(&addr) && run.stderr.contains("pas up"),
        "{run}"
    );
}
