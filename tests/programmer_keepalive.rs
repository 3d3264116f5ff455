//! HTTP/2 keepalive on every server: a programmer notices a manager that is gone without closing
//! its connection (here: frozen with SIGSTOP, as a crashed host or a network partition looks),
//! and once nobody has followed the task for its lease it stops the task and hands it back,
//! instead of working on — and committing — a task nobody will collect.

use crate::common;

use common::pool::{
    PoolOptions, TestPool, TestProgrammer, manager_client, sample_dispatch, wait_available,
    wait_for_model_call, wait_until,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_programmer_stops_the_task_of_a_manager_that_stopped_answering() {
    let sim = common::Sim::start_with_script(
        "rules:\n  - model: \"primary-*\"\n    fault: hang\n  - model: \"backup-*\"\n    fault: hang\n",
    );
    let pool = TestPool::with_sim(
        PoolOptions {
            programmers: vec![TestProgrammer::free("001")],
            // Neither aider nor the deadline ends the task within the test: only the lost
            // connection can.
            request_timeout_s: 600,
            task_timeout_s: 600,
            task_lease_s: 3,
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
    });
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
