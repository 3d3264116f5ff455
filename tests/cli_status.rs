//! `pas status` with the real binary against a real pool: the real `pas manager`, real
//! programmers running the real Aider CLI, the LLM simulator for the providers.
//!
//! The pool: 001 (free, healthy), 002 (paid: its primary `openai/gpt-4o-mini` answers HTTP 500,
//! its backup `openai/gpt-4o` works, `failure_threshold: 1`) and 003 (configured, never started).
//! One real task on 002 fails over and opens 002's breaker for real, spends real (simulated) money
//! past the alert threshold, and so makes the table show a programmer on its backup with an open
//! circuit, an unavailable one, the day's spend, and two alerts. `--watch` is running meanwhile.
//!
//! Needs the aider venv: the harness FAILS with a clear message when it is missing.

use crate::common;

use common::pool::{PoolOptions, TestPool, TestProgrammer, wait_until};
use serde_json::Value;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PAS: &str = env!("CARGO_BIN_EXE_pas");

/// How long one real task may take on a loaded 2-core machine.
const TASK_LIMIT: Duration = Duration::from_secs(240);

fn options() -> PoolOptions {
    let paid = TestProgrammer {
        primary: "openai/gpt-4o-mini".into(),
        backup: "openai/gpt-4o".into(),
        ..TestProgrammer::paid("002")
    };
    PoolOptions {
        programmers: vec![
            TestProgrammer::free("001"),
            paid,
            TestProgrammer::free("003"),
        ],
        failure_threshold: 1,
        max_retries: 1,
        // Any real spend crosses it.
        alert_threshold_usd: 0.001,
        ..PoolOptions::default()
    }
}

/// `pas status ARGS…` against the pool (by its configuration) to the end: (code, stdout, stderr).
async fn status(pool: &TestPool, args: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::from(pool.pas_command(&["status"]));
    cmd.args(args).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("pas status did not finish within 60s")
        .expect("run pas status");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The cells of programmer `id`'s table row, trimmed.
fn row_cells(table: &str, id: &str) -> Vec<String> {
    let row = table
        .lines()
        .find(|l| l.starts_with('│') && l.split(['│', '┆']).nth(1).map(str::trim) == Some(id))
        .unwrap_or_else(|| panic!("no row for {id} in:\n{table}"));
    row.split(['│', '┆'])
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

/// The frames `pas status --watch` has finished drawing in `text` (the one still being drawn, the
/// last, is left out until the next begins).
fn complete_frames(text: &str) -> Vec<&str> {
    let mut frames: Vec<&str> = text.split("Pool: ").skip(1).collect();
    frames.pop();
    frames
}

/// Waits until a finished frame in the `--watch` output satisfies `shown` (panics with the output
/// after a generous timeout).
async fn wait_for_frame(watched: &Mutex<Vec<u8>>, what: &str, shown: impl Fn(&str) -> bool) {
    wait_until(TASK_LIMIT, what, || {
        let text = watched_text(watched);
        let seen = complete_frames(&text).into_iter().any(&shown);
        async move { seen }
    })
    .await;
}

/// The `--watch` output so far.
fn watched_text(watched: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&watched.lock().expect("watch buffer")).into_owned()
}

fn programmer<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["programmers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["id"] == id))
        .unwrap_or_else(|| panic!("no programmer {id} in {status}"))
}

fn alert_kinds(status: &Value) -> Vec<String> {
    let mut kinds: Vec<String> = status["alerts"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|a| a["kind"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    kinds.sort();
    kinds
}

#[tokio::test(flavor = "multi_thread")]
async fn pas_status_shows_a_real_pool() {
    let sim = common::Sim::start_with_script(
        "rules:\n  - model: \"gpt-4o-mini\"\n    fault: http_500\ndefault:\n  fault: none\n",
    );
    let pool = TestPool::with_sim(options(), sim);
    pool.sample_repo();
    let _procs = [
        pool.start_programmer("001"),
        pool.start_programmer("002"),
        pool.start_manager(),
    ];
    pool.wait_manager_status(Duration::from_secs(60), "001 and 002 available", |s| {
        s["available"] == 2
    })
    .await;

    // --watch redraws until Ctrl-C, while a real task changes the pool under it.
    let mut watch = tokio::process::Command::from(pool.pas_command(&["status", "--watch", "0.3"]))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn pas status --watch");
    // Read as it goes (a full pipe would stall the redraws) into a buffer the test can watch.
    let mut watch_out = watch.stdout.take().expect("piped stdout");
    let watched = Arc::new(Mutex::new(Vec::new()));
    let reader = tokio::spawn({
        let watched = watched.clone();
        async move {
            let mut chunk = vec![0u8; 8192];
            loop {
                let n = tokio::io::AsyncReadExt::read(&mut watch_out, &mut chunk).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(());
                }
                watched
                    .lock()
                    .expect("watch buffer")
                    .extend_from_slice(&chunk[..n]);
            }
        }
    });
    // The first frame shows the pool before the task (002 on its primary, breaker closed).
    wait_for_frame(&watched, "a first frame", |_| true).await;

    // The task: 002's primary fails (its breaker opens at once), the backup edits and is paid.
    let mut dispatch = tokio::process::Command::from(pool.pas_command(&[
        "dispatch",
        "Add docstrings to all functions",
        "--files",
        "src/module.py",
        "--workspace",
        "sample",
        "--capability",
        "premium",
    ]));
    dispatch.kill_on_drop(true);
    let out = tokio::time::timeout(TASK_LIMIT, dispatch.output())
        .await
        .expect("pas dispatch did not finish")
        .expect("run pas dispatch");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("==> failover: openai/gpt-4o-mini → openai/gpt-4o")
            && stdout.contains("model      openai/gpt-4o (backup)")
            && !stdout.contains("cost       $0.0000"),
        "{stdout}"
    );

    // The manager learns of the open breaker from 002's next health report.
    let settled = pool
        .wait_manager_status(Duration::from_secs(60), "002 open and paid for", |s| {
            let p = programmer(s, "002");
            p["circuit_state"] == "open"
                && p["completed"] == 1
                && s["budget"]["daily_spend_usd"].as_f64().unwrap_or(0.0) > 0.0
                && s["budget"]["reserved_usd"].as_f64() == Some(0.0)
                && alert_kinds(s) == ["budget_threshold", "high_backup_usage"]
        })
        .await;
    // --watch redraws on its own: wait for a frame that shows the task's outcome.
    wait_for_frame(&watched, "a frame with 002 on its backup, open", |frame| {
        row_cells(frame, "002")[3..5] == ["openai/gpt-4o (backup)", "open"]
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watch.id().expect("watch runs") as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let stopped = tokio::time::timeout(Duration::from_secs(60), watch.wait())
        .await
        .expect("pas status --watch did not stop on Ctrl-C")
        .expect("wait for pas status --watch");
    assert_eq!(stopped.code(), Some(0));
    reader.await.expect("reader task").expect("read the frames");
    let text = watched_text(&watched);
    let frames: Vec<&str> = text.split("Pool: ").skip(1).collect();
    assert!(frames.len() >= 3, "{} frames:\n{text}", frames.len());
    // Each frame is fresh: the first shows 002 before the task, a later one after it.
    let cells = |frame: &str| row_cells(frame, "002");
    let first = cells(frames[0]);
    assert_eq!(
        first[3..5],
        ["openai/gpt-4o-mini (primary)", "closed"],
        "{first:?}"
    );
    let last = cells(frames[frames.len() - 1]);
    assert_eq!(last[3..5], ["openai/gpt-4o (backup)", "open"], "{last:?}");

    // ---- the table ----
    let (code, table, err) = status(&pool, &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        table.starts_with("Pool: 2 of 3 programmers available, 1 on backup LLM, queue 0 (manager 0/100), strategy least_loaded\n"),
        "{table}"
    );
    let port = |id: &str| pool.ports[id].to_string();
    assert_eq!(
        row_cells(&table, "001"),
        [
            "001",
            &port("001"),
            "available",
            "ollama/primary-001 (primary)",
            "closed",
            "0",
            "0",
            "0",
            "0"
        ]
    );
    assert_eq!(
        row_cells(&table, "002"),
        [
            "002",
            &port("002"),
            "available",
            "openai/gpt-4o (backup)",
            "open",
            "0",
            "0",
            "1",
            "0"
        ]
    );
    let row = row_cells(&table, "003");
    assert_eq!(
        row[..4],
        [
            "003",
            &port("003"),
            "unavailable",
            "ollama/primary-003 (primary)"
        ]
    );
    let b = &settled["budget"];
    let usd = |key: &str| b[key].as_f64().unwrap_or(f64::NAN);
    let budget = format!(
        "Budget {}: ${:.2} spent + $0.00 reserved of $50.00 (${:.2} left; alert at $0.00)\n",
        b["day"].as_str().unwrap_or("?"),
        usd("daily_spend_usd"),
        usd("remaining_usd"),
    );
    assert!(table.contains(&budget), "{budget:?} in\n{table}");
    assert!(table.contains("Alerts (2):\n"), "{table}");
    assert!(
        table.contains("  ! high_backup_usage: 1 programmers are on their backup LLM"),
        "{table}"
    );
    assert!(
        table.contains(&format!(
            "  ! budget_threshold: daily spend ${:.2} reached the alert threshold $0.00",
            usd("daily_spend_usd")
        )),
        "{table}"
    );

    // ---- --json is the manager's HTTP document, unchanged ----
    let mut compared = false;
    for _ in 0..5 {
        let before = pool.manager_status_json().await.expect("status document");
        let (code, out, err) = status(&pool, &["--json"]).await;
        assert_eq!(code, 0, "{err}");
        let after = pool.manager_status_json().await.expect("status document");
        if before != after {
            continue; // the pool moved meanwhile: compare again
        }
        let printed: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(printed, before);
        compared = true;
        break;
    }
    assert!(compared, "the status document never held still");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_manager_is_an_error() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = free.local_addr().expect("addr").to_string();
    drop(free);
    let run = |args: Vec<&str>| {
        let out = std::process::Command::new(PAS)
            .arg("status")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run pas status");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(vec!["--manager", &dead]);
    assert_eq!(code, Some(1));
    assert!(err.contains(&dead) && err.contains("pas up"), "{err}");
    let (code, err) = run(vec!["--manager", &dead, "--json"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("/programmer_pool/status"), "{err}");
}
