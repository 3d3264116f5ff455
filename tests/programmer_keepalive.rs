//! HTTP/2 keepalive on every server: a programmer notices a manager that is gone without closing
//! its connection (here: frozen with SIGSTOP, as a crashed host or a network partition looks),
//! and once nobody has followed the task for its lease it stops the task and hands it back,
//! instead of working on — and committing — a task nobody will collect. A frozen programmer is
//! waited for by the manager for the lease the task was accepted with, one a re-read file
//! lowered since notwithstanding.

use crate::common;

use common::pool::{
    ChildGuard, PoolOptions, TestPool, TestProgrammer, manager_client, sample_dispatch,
    wait_available, wait_for_model_call, wait_until,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::time::Duration;

/// Programmer 001 and a manager with `task_lease_s`, one task dispatched through the manager
/// and running aider on a model that never answers (neither aider nor the deadline ends it within
/// a test: only a lost connection or a lease can). The caller's stream runs in the returned task.
async fn one_hanging_task(task_lease_s: u64) -> (TestPool, ChildGuard, ChildGuard, Dispatched) {
    let sim = common::Sim::start_with_script("default:\n  fault: hang\n");
    let pool = TestPool::with_sim(
        PoolOptions {
            programmers: vec![TestProgrammer::free("001")],
            request_timeout_s: 600,
            task_timeout_s: 600,
            task_lease_s,
            ..PoolOptions::default()
        },
        sim,
    );
    pool.sample_repo();
    let programmer = pool.start_programmer("001");
    let manager = pool.start_manager();
    let client = manager_client(&pool).await;
    wait_available(&client, 1).await;
    let mut caller = client.clone();
    let stream = tokio::spawn(async move {
        caller
            .dispatch(sample_dispatch("Add docstrings to all functions"))
            .await
            .map(|_| ())
    });
    wait_for_model_call(&pool.sim, "primary-001").await;
    (pool, programmer, manager, stream)
}

type Dispatched = tokio::task::JoinHandle<Result<(), tonic::Status>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_programmer_stops_the_task_of_a_manager_that_stopped_answering() {
    let (pool, programmer, manager, stream) = one_hanging_task(3).await;
    wait_for_model_call(&pool.sim, "primary-001").await;
    assert!(
        !pool.processes_in_worktrees().is_empty(),
        "aider runs in the task's worktree"
    );

    // Freeze the manager: its socket stays open, but it answers no HTTP/2 PING any more.
    let manager_pid = Pid::from_raw(manager.pid() as i32);
    kill(manager_pid, Signal::SIGSTOP).expect("SIGSTOP the manager");
    let finished = |log: &str| {
        log.lines()
            .any(|l| l.contains("task finished") && l.contains("lease expired"))
    };
    wait_until(
        Duration::from_secs(90),
        "the programmer to hand back the task of the frozen manager",
        || async { finished(&programmer.log_text()) },
    )
    .await;
    let left = pool
        .wait_worktree_processes_gone(Duration::from_secs(30))
        .await;
    kill(manager_pid, Signal::SIGCONT).expect("SIGCONT the manager");
    assert!(left.is_empty(), "aider left running: {left:?}");
    stream.abort();
}

/// The manager waits for a frozen programmer by the lease the task was accepted with, not by one
/// a re-read file lowered since (which the programmer, holding the task by the lease it was sent,
/// does not apply to it): here an hour, not the 2 s the file says once the task runs — and so
/// does a manager restarted on that file, which resumes the task with the lease it recorded.
/// Lowered mid-task, the manager used to give the task up after 2 s while its programmer ran it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_programmer_is_waited_for_by_the_lease_its_task_was_accepted_with() {
    let (pool, programmer, mut manager, stream) = one_hanging_task(3600).await;
    pool.edit_config(|text| text.replace("task_lease_s: 3600", "task_lease_s: 2"));
    manager.hang_up();
    manager.wait_log("applied=", 1).await;
    let programmer_pid = Pid::from_raw(programmer.pid() as i32);
    // Frozen: the manager's stream breaks (keepalive) and it cannot follow the task; past the
    // first unanswered call (5 s, beyond the new 2 s) it keeps trying.
    let keeps_trying = |manager: &ChildGuard| {
        let log = manager.log_text();
        assert!(
            !log.contains("unreachable for the task's lease"),
            "gave the task up: {log}"
        );
        log.contains("cannot follow the task yet")
    };
    kill(programmer_pid, Signal::SIGSTOP).expect("SIGSTOP the programmer");
    wait_until(
        Duration::from_secs(120),
        "the manager to keep trying to reach the frozen programmer",
        || async { keeps_trying(&manager) },
    )
    .await;
    kill(programmer_pid, Signal::SIGCONT).expect("SIGCONT the programmer");

    // A manager started on the lowered file resumes the task with its recorded lease.
    manager.kill();
    let manager = pool.start_manager();
    manager
        .wait_log("resumed the tasks a previous manager left unfinished", 1)
        .await;
    kill(programmer_pid, Signal::SIGSTOP).expect("SIGSTOP the programmer");
    wait_until(
        Duration::from_secs(120),
        "the restarted manager to keep trying to reach the frozen programmer",
        || async { keeps_trying(&manager) },
    )
    .await;
    kill(programmer_pid, Signal::SIGCONT).expect("SIGCONT the programmer");
    stream.abort();
}
