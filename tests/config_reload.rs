//! The configuration file re-read while the processes run (`services/manager/reconfigure.rs`),
//! with real processes: on SIGHUP the manager takes up a programmer added to the file, holds
//! callers to a lowered per-caller task limit and the budget to a new daily limit at once, and
//! names the changed settings it reads only at start-up; a file that does not load is logged
//! with its file, line and key while the manager keeps serving on the configuration in force,
//! and a programmer removed from a fixed file leaves the pool; a programmer names its own
//! changed settings as waiting for its restart.

use crate::common;
use crate::telemetry_support as support;

use common::Sim;
use common::pool::{
    ChildGuard, PoolOptions, TestPool, TestProgrammer, admit, manager_client, pool_status,
    sample_dispatch, wait_available, wait_until,
};
use pas::contract::v1::{DispatchRequest, ProgrammerState};
use std::time::Duration;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(60);

fn sighup(child: &ChildGuard) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("send SIGHUP");
}

/// Waits until `child`'s log holds `text` `times` times.
async fn wait_log(child: &ChildGuard, text: &str, times: usize) {
    wait_until(
        WAIT,
        &format!("{text:?} × {times} in {}", child.name),
        || async { child.log_text().matches(text).count() >= times },
    )
    .await;
}

/// The manager's log lines holding `text`.
fn lines_with(child: &ChildGuard, text: &str) -> Vec<String> {
    child
        .log_text()
        .lines()
        .filter(|l| l.contains(text))
        .map(str::to_string)
        .collect()
}

/// The value of `name{labels}` in the manager's /metrics.
async fn metric(pool: &TestPool, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    support::scrape(&pool.manager_url()).await.get(name, labels)
}

/// The config text without programmer `id`'s entry, one programmer fewer in `pool_size`.
fn without_programmer(text: &str, id: &str, pool_size: usize) -> String {
    let start = text
        .find(&format!("  - id: \"{id}\"\n"))
        .expect("the programmer's entry");
    let rest = &text[start + 1..];
    let end = start
        + 1
        + rest
            .find("  - id: ")
            .or_else(|| rest.find("load_balancing:"))
            .expect("the entry's end");
    let text = format!("{}{}", &text[..start], &text[end..]);
    text.replacen(
        &format!("pool_size: {}\n", pool_size + 1),
        &format!("pool_size: {pool_size}\n"),
        1,
    )
}

/// `text` with the first `key: value` line (any indentation) set to `value`.
fn set_key(text: &str, key: &str, value: &str) -> String {
    let mut done = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let indent = line.len() - line.trim_start().len();
            if !done && line.trim_start().starts_with(&format!("{key}:")) {
                done = true;
                format!("{}{key}: {value}", &line[..indent])
            } else {
                line.to_string()
            }
        })
        .collect();
    assert!(done, "no {key:?} in the config");
    lines.join("\n") + "\n"
}

/// Programmers whose model never answers: a dispatched task stays running, holding its
/// caller's task slot.
fn hanging_pool(ids: &[&str]) -> TestPool {
    let sim = Sim::start_with_script("default:\n  fault: hang\n");
    TestPool::with_sim(
        PoolOptions {
            programmers: ids.iter().map(|id| TestProgrammer::free(id)).collect(),
            request_timeout_s: 600,
            task_timeout_s: 600,
            ..PoolOptions::default()
        },
        sim,
    )
}

/// A task of the one caller (the test's address) with id `id`.
fn task(id: &str) -> DispatchRequest {
    DispatchRequest {
        task_id: id.into(),
        ..sample_dispatch(&format!("Add docstrings ({id})"))
    }
}

#[tokio::test]
async fn a_re_read_file_adds_a_programmer_and_applies_limits_and_budget_at_once() {
    let pool = hanging_pool(&["001", "002", "003"]);
    pool.sample_repo();
    let full = std::fs::read_to_string(&pool.config_path).unwrap();
    let _programmers = pool.start_all_programmers();
    // The manager starts on a file without 003 (its process runs already).
    pool.edit_config(|text| without_programmer(&text, "003", 2));
    let manager = pool.start_manager();
    let c = manager_client(&pool).await;
    wait_available(&c, 2).await;
    assert_eq!(pool_status(&c).await.programmers.len(), 2);
    let limit_before = pool_status(&c).await.budget.unwrap().limit_nanousd;

    // Two tasks of one caller are admitted under the default per-caller limit.
    admit(&c, task("first")).await.expect("first task");
    admit(&c, task("second")).await.expect("second task");

    // 003 back, one task per caller, a new daily limit and queue bound, and a setting read
    // only at start-up.
    pool.edit_config(|_| {
        let text = set_key(&full, "max_daily_spend_usd", "123.5");
        // 001's entry changes (its first key of that name): the manager replaces its member.
        let text = set_key(&text, "capabilities", "[\"fast\", \"reloaded\"]");
        set_key(&text, "max_queue", "7")
            + "limits:\n  per_caller_max_tasks: 1\n  http2_max_concurrent_streams: 100\n"
    });
    sighup(&manager);
    // The applied keys' line, then the warning naming the others (two lines of one reload).
    wait_log(&manager, "applied=", 1).await;
    wait_log(&manager, "read only at start-up", 1).await;
    let applied = lines_with(&manager, "applied=").join("\n");
    for key in [
        "joined [003]",
        "replaced [001]",
        "limits.per_caller_max_tasks",
        "cost_optimization.max_daily_spend_usd",
        "manager.max_queue",
    ] {
        assert!(applied.contains(key), "{key:?} not in {applied}");
    }
    assert!(
        !applied.contains("http2_max_concurrent_streams"),
        "{applied}"
    );
    let later = lines_with(&manager, "read only at start-up").join("\n");
    assert!(
        later.contains("keys=limits.http2_max_concurrent_streams"),
        "{later}"
    );

    // 003 joined and takes tasks; the caller, holding two tasks, is refused a third.
    wait_available(&c, 3).await;
    let refused = admit(&c, task("third"))
        .await
        .expect_err("past the lowered per-caller limit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .starts_with("limits.per_caller_max_tasks: address 127.0.0.1 already has 1"),
        "{refused:?}"
    );
    let status = pool_status(&c).await;
    // The replaced 001 takes new tasks with its new entry; its old member is listed as draining
    // while one of the tasks placed before runs there.
    let with_id = |state: ProgrammerState| {
        status
            .programmers
            .iter()
            .filter(|p| p.id == "001" && p.state == state as i32)
            .collect::<Vec<_>>()
    };
    let available = with_id(ProgrammerState::Available);
    assert_eq!(available.len(), 1, "{:?}", status.programmers);
    assert_eq!(available[0].capabilities, ["fast", "reloaded"]);
    for old in with_id(ProgrammerState::Draining) {
        assert_eq!(old.capabilities, ["fast", "free", "local"]);
        assert!(old.in_flight > 0, "{old:?}");
    }
    assert_eq!(status.pool_size, 3);
    assert_ne!(limit_before, 123_500_000_000);
    assert_eq!(status.budget.unwrap().limit_nanousd, 123_500_000_000);
    assert_eq!(status.manager_queue_capacity, 7);
    assert_eq!(
        metric(
            &pool,
            "pas_reloads_total",
            &[("what", "configuration"), ("outcome", "reloaded")]
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_file_that_does_not_load_changes_nothing_and_a_fixed_one_removes_a_programmer() {
    let pool = hanging_pool(&["001", "002"]);
    pool.sample_repo();
    let programmers = pool.start_all_programmers();
    let manager = pool.start_manager();
    let c = manager_client(&pool).await;
    wait_available(&c, 2).await;
    let good = std::fs::read_to_string(&pool.config_path).unwrap();

    pool.edit_config(|text| text + "limits:\n  per_caller_max_tasks: many\n");
    sighup(&manager);
    wait_log(&manager, "configuration not reloaded", 1).await;
    let error = lines_with(&manager, "configuration not reloaded").join("\n");
    let file = pool.config_path.display().to_string();
    assert!(
        error.contains(&file) && error.contains("per_caller_max_tasks"),
        "the error names the file and the key: {error}"
    );
    assert!(
        error.contains(&format!("{}:", good.lines().count() + 2)),
        "the error names the line: {error}"
    );
    assert_eq!(
        metric(&pool, "pas_reload_failing", &[("what", "configuration")]).await,
        Some(1.0)
    );
    // Still serving on the configuration in force.
    assert_eq!(pool_status(&c).await.programmers.len(), 2);
    admit(&c, task("while-broken"))
        .await
        .expect("a task is admitted");

    // Fixed, without 002.
    pool.edit_config(|_| without_programmer(&good, "002", 1));
    sighup(&manager);
    wait_log(&manager, "applied=", 1).await;
    assert!(
        lines_with(&manager, "applied=")
            .join("\n")
            .contains("left [002]"),
        "{}",
        manager.log_text()
    );
    assert_eq!(
        metric(&pool, "pas_reload_failing", &[("what", "configuration")]).await,
        Some(0.0)
    );
    // 002 takes no new task: draining while a task of ours runs there, then out of the status.
    wait_until(WAIT, "002 draining or gone", || async {
        pool_status(&c)
            .await
            .programmers
            .iter()
            .all(|p| p.id != "002" || p.state == ProgrammerState::Draining as i32)
    })
    .await;

    // A programmer applies nothing while it runs: it names what changed.
    let programmer = &programmers["001"];
    pool.edit_config(|text| set_key(&text, "max_retries", "7"));
    sighup(programmer);
    wait_log(programmer, "read only at start-up", 1).await;
    let line = lines_with(programmer, "read only at start-up").join("\n");
    assert!(line.contains("failover.max_retries"), "{line}");
}
