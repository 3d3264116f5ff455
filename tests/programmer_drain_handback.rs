//! A programmer that shuts down (SIGTERM) while a task runs past its drain timeout hands the task
//! back — a distinct outcome, never "cancelled by the caller" — and the manager reroutes it to
//! another programmer, where it succeeds. The caller sees one Rerouted event and one result.

use crate::common;

use common::pool::{
    PoolOptions, TestPool, TestProgrammer, expect_one_reroute, manager_client, sample_dispatch,
    wait_available, wait_for_model_call,
};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_programmer_hands_its_task_back_and_the_manager_reroutes_it() {
    // 001's models never answer; 002's work.
    let sim = common::Sim::start_with_script(
        "rules:\n  - model: \"primary-001\"\n    fault: hang\n  - model: \"backup-001\"\n    fault: hang\n",
    );
    let pool = TestPool::with_sim(
        PoolOptions {
            programmers: vec![TestProgrammer::free("001"), TestProgrammer::free("002")],
            // Only the drain timeout can end the task on 001.
            request_timeout_s: 600,
            task_timeout_s: 600,
            ..PoolOptions::default()
        },
        sim,
    );
    pool.sample_repo();
    let mut first = pool.start_programmer_with_args("001", &["--drain-timeout-s", "1"]);
    let _manager = pool.start_manager();
    let client = manager_client(&pool).await;
    wait_available(&client, 1).await;

    let mut caller = client.clone();
    let task = tokio::spawn(async move {
        let stream = caller
            .dispatch(sample_dispatch("Add docstrings to all functions"))
            .await
            .expect("Dispatch accepted")
            .into_inner();
        common::pool::collect_events(stream).await
    });
    wait_for_model_call(&pool.sim, "primary-001").await;
    let _second = pool.start_programmer("002");
    wait_available(&client, 2).await;

    first.terminate();
    let exit = first.wait_exit(Duration::from_secs(60));
    assert!(
        exit.is_some_and(|s| s.success()),
        "001 drains and exits 0: {exit:?}\n{}",
        first.log_text()
    );
    let hop = expect_one_reroute(task, Duration::from_secs(180), ("001", "002"), || {
        first.log_text()
    })
    .await;
    assert!(
        hop.reason.contains("handed back"),
        "the reason says why: {:?}\n{}",
        hop.reason,
        first.log_text()
    );
    let log = first.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("task finished") && l.contains("handed back")),
        "001 logs the hand-back:\n{log}"
    );
}
