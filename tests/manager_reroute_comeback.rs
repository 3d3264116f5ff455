//! A task rerouted away from the only programmer that may take it waits for that programmer and
//! runs there once it is back, instead of waiting out the whole queue timeout (the failed
//! programmer is avoided only until it becomes available again).

mod common;

use common::pool::{
    PoolOptions, TestPool, TestProgrammer, expect_one_reroute, manager_client, wait_available,
    wait_for_model_call,
};
use pas::contract::v1::DispatchRequest;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_only_programmer_died_runs_there_when_it_comes_back() {
    // The first request to 001's primary hangs (so the task is mid-flight when 001 dies); every
    // later one answers.
    let sim = common::Sim::start_with_script(
        "rules:\n  - model: \"primary-001\"\n    fault: hang\n    times: 1\n",
    );
    let pool = TestPool::with_sim(
        PoolOptions {
            programmers: vec![
                TestProgrammer::free("001").with_capabilities(&["solo"]),
                TestProgrammer::free("002").with_capabilities(&["other"]),
            ],
            request_timeout_s: 600,
            task_timeout_s: 600,
            // Far beyond the test's own waits: only the comeback can place the task in time.
            queue_timeout_s: 600,
            ..PoolOptions::default()
        },
        sim,
    );
    pool.sample_repo();
    let mut solo = pool.start_programmer("001");
    let _other = pool.start_programmer("002");
    let manager = pool.start_manager();
    let client = manager_client(&pool).await;
    wait_available(&client, 2).await;

    let mut caller = client.clone();
    let task = tokio::spawn(async move {
        let request = DispatchRequest {
            capabilities: vec!["solo".into()],
            ..common::pool::sample_dispatch("Add docstrings to all functions")
        };
        let stream = caller
            .dispatch(request)
            .await
            .expect("Dispatch accepted")
            .into_inner();
        common::pool::collect_events(stream).await
    });
    wait_for_model_call(&pool.sim, "primary-001").await;
    solo.kill();
    wait_available(&client, 1).await;
    let solo = pool.start_programmer("001");
    // Far less than the queue timeout: only the comeback can place the task in time.
    expect_one_reroute(task, Duration::from_secs(120), ("001", "001"), || {
        format!(
            "programmer 001:\n{}\nmanager:\n{}",
            solo.log_text(),
            manager.log_text()
        )
    })
    .await;
}
