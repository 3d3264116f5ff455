//! `durability: power_loss`, end to end with real `pas` processes under `strace`: the manager
//! syncs its task store's WAL at every commit (SQLite `synchronous = FULL`), and a programmer
//! syncs each task's event file and the directory that names it once the task has its result.
//! Without the key (the default, durable across a process crash) neither happens per task: the
//! store's WAL is synced only at its checkpoints, about once a second, and event files never.
//!
//! Needs `strace` and `setpriv`, like `tests/security_hostile_tasks.rs`.

use crate::common;

use common::pool::{self, PoolOptions, TestPool, TestProgrammer};
use pas::contract::v1::{DispatchRequest, TaskState};
use std::path::Path;

/// Dry runs dispatched one after another: far more than the store's checkpoints (one a second)
/// could sync while they run.
const TASKS: usize = 20;

/// `fdatasync` and `fsync` of the process tree, each file descriptor shown with its path (`-y`).
fn syncs_traced(log: &Path) -> Vec<std::ffi::OsString> {
    let mut prefix = common::traced_prefix(log, "fdatasync,fsync");
    prefix.insert(1, "-y".into());
    prefix
}

/// How many sync calls of an strace log sync a file whose path ends with `suffix`.
fn syncs_of(log: &str, suffix: &str) -> usize {
    sync_calls(log)
        .filter(|line| line.contains(&format!("{suffix}>")))
        .count()
}

/// The lines of an strace log that are sync calls (a call strace splits across threads once, by
/// its first half).
fn sync_calls(log: &str) -> impl Iterator<Item = &str> {
    log.lines()
        .filter(|line| line.contains("sync(") && !line.contains("resumed>"))
}

#[tokio::test]
async fn power_loss_durability_syncs_every_commit_and_every_result() {
    let pool = TestPool::new(PoolOptions {
        runs_aider: false,
        ..PoolOptions::default()
    });
    pool.sample_repo();
    pool.append_config("durability: power_loss\n");
    let (manager_log, programmer_log) = (
        pool.dir.path().join("strace-manager.log"),
        pool.dir.path().join("strace-001.log"),
    );
    let mut programmer = pool.start_programmer_with_prefix("001", &syncs_traced(&programmer_log));
    let mut manager = pool.start_manager_with_prefix(&syncs_traced(&manager_log));
    let client = pool::manager_client(&pool).await;
    pool::wait_available(&client, 1).await;

    let ids: Vec<String> = (0..TASKS).map(|i| format!("durable-{i}")).collect();
    for id in &ids {
        let req = DispatchRequest {
            task_id: id.clone(),
            dry_run: true,
            ..pool::sample_dispatch("durable")
        };
        let (events, result) = pool::dispatch_collect(&client, req).await;
        assert_eq!(pool::state_of(&result), TaskState::Succeeded, "{events:#?}");
    }
    programmer.stop_traced();
    manager.stop_traced();

    let programmer_syncs = std::fs::read_to_string(&programmer_log).expect("programmer's trace");
    let unsynced: Vec<&String> = ids
        .iter()
        .filter(|id| syncs_of(&programmer_syncs, &format!("/events/{id}.events")) == 0)
        .collect();
    assert!(
        unsynced.is_empty(),
        "event files never synced: {unsynced:?}\n{programmer_syncs}"
    );
    assert!(
        syncs_of(&programmer_syncs, "/events") >= TASKS,
        "the events directory was not synced once per result:\n{programmer_syncs}"
    );
    let manager_syncs = std::fs::read_to_string(&manager_log).expect("manager's trace");
    eprintln!(
        "{TASKS} tasks: {} event file syncs, {} of the events directory; {} WAL syncs",
        syncs_of(&programmer_syncs, ".events"),
        syncs_of(&programmer_syncs, "/events"),
        syncs_of(&manager_syncs, "/tasks.sqlite-wal"),
    );
    assert!(
        syncs_of(&manager_syncs, "/tasks.sqlite-wal") >= TASKS,
        "the store's WAL was synced fewer times than one a task ({TASKS}):\n{manager_syncs}"
    );
}

/// The index of the first line of `log` that syncs a file whose path contains `part`.
fn first_sync_of(log: &str, part: &str) -> Option<usize> {
    sync_calls(log).position(|line| line.contains(part))
}

/// A real task (aider against the simulator, aider's auto-commit on, as shipped) under
/// `power_loss`: git syncs the objects of the task's commit and the kept branch's ref before
/// the programmer syncs the result's event file. Git's defaults sync neither loose objects nor
/// refs, so without the key a power loss could keep a result that names a branch that is gone,
/// or a branch whose commit is.
#[tokio::test]
async fn power_loss_durability_syncs_the_commit_and_the_kept_branch_before_the_result() {
    let pool = TestPool::new(PoolOptions::default());
    let repo = pool.sample_repo();
    pool.append_config("durability: power_loss\n");
    let programmer_log = pool.dir.path().join("strace-001.log");
    let mut programmer = pool.start_programmer_with_prefix("001", &syncs_traced(&programmer_log));
    let mut manager = pool.start_manager();
    let client = pool::manager_client(&pool).await;
    pool::wait_available(&client, 1).await;

    let id = "kept-durable";
    let req = DispatchRequest {
        task_id: id.into(),
        ..pool::sample_dispatch("add a docstring to add()")
    };
    let (events, result) = pool::dispatch_collect(&client, req).await;
    assert_eq!(pool::state_of(&result), TaskState::Succeeded, "{events:#?}");
    assert!(!result.files_changed.is_empty(), "no edit: {result:#?}");
    programmer.stop_traced();
    manager.kill();

    let log = std::fs::read_to_string(&programmer_log).expect("programmer's trace");
    let objects = repo.join(".git/objects/");
    let kept_ref = repo.join(format!(".git/refs/heads/pas/{id}"));
    let result_file = format!("/events/{id}.events>");
    let (Some(object), Some(branch), Some(result_synced)) = (
        first_sync_of(&log, &objects.display().to_string()),
        first_sync_of(&log, &kept_ref.display().to_string()),
        first_sync_of(&log, &result_file),
    ) else {
        panic!(
            "a commit object ({}), the kept branch ({}) or the result ({result_file}) was never synced:\n{log}",
            objects.display(),
            kept_ref.display()
        );
    };
    assert!(
        object < result_synced && branch < result_synced,
        "the result was synced (sync #{result_synced}) before the commit's objects (#{object}) \
         or the kept branch (#{branch}):\n{log}"
    );
}

/// A paid task under `power_loss`: the budget ledger's WAL is synced for its hold and again for
/// its settlement, each time on a thread of the blocking pool, never on the manager's main
/// thread once it serves: that thread runs every task and dispatch, and a flush there (SQLite
/// `synchronous = FULL` in the reservation) held every caller.
#[tokio::test]
async fn power_loss_durability_syncs_the_budget_ledger_off_the_manager_s_thread() {
    let pool = TestPool::new(PoolOptions {
        programmers: vec![TestProgrammer::paid("001")],
        ..PoolOptions::default()
    });
    pool.sample_repo();
    pool.append_config("durability: power_loss\n");
    let manager_log = pool.dir.path().join("strace-manager.log");
    let _programmer = pool.start_programmer("001");
    let mut manager = pool.start_manager_with_prefix(&syncs_traced(&manager_log));
    let client = pool::manager_client(&pool).await;
    pool::wait_available(&client, 1).await;
    let main_thread = manager.traced_pid();

    let req = DispatchRequest {
        task_id: "paid-durable".into(),
        ..pool::sample_dispatch("add a docstring to add()")
    };
    let (events, result) = pool::dispatch_collect(&client, req).await;
    assert_eq!(pool::state_of(&result), TaskState::Succeeded, "{events:#?}");
    assert!(result.cost_nanousd > 0, "not a paid run: {result:#?}");
    manager.stop_traced();

    let log = std::fs::read_to_string(&manager_log).expect("manager's trace");
    // The manager opens the ledger, then the task store: what SQLite synced while it made the
    // ledger's files (on the main thread, once) comes before the store's first line.
    let opened = log
        .find("/tasks.sqlite")
        .expect("the task store's files in the trace");
    let ledger_syncs: Vec<&str> = sync_calls(&log[opened..])
        .filter(|line| line.contains("/budget.sqlite-wal>"))
        .collect();
    assert!(
        ledger_syncs.len() >= 2,
        "the ledger's WAL was not synced for the hold and the settlement:\n{log}"
    );
    let on_main: Vec<&&str> = ledger_syncs
        .iter()
        .filter(|line| line.split_whitespace().next() == Some(&main_thread.to_string()))
        .collect();
    assert!(
        on_main.is_empty(),
        "synced on the manager's main thread ({main_thread}): {on_main:#?}"
    );
}
