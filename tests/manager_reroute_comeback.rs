//! A task rerouted away from the only programmer that may take it waits for that programmer and
//! runs there once it is back, instead of waiting out the whole queue timeout (the failed
//! programmer is avoided only until it becomes available again); and when that programmer never
//! went down, the task goes back to it at once (an exclusion is soft: it holds only while another
//! programmer could take the task). A rerouted task that waits again keeps its caller's queue
//! timeout.

use crate::common;

use common::pool::{
    ChildGuard, PoolOptions, TestPool, TestProgrammer, admit, dispatch_collect, expect_one_reroute,
    manager_client, patient_pool, pool_status, state_of, wait_available, wait_for_model_call,
    wait_pool, wait_until,
};
use common::proxy::{Faults, Seen};
use pas::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use pas::contract::v1::{CancelTaskRequest, DispatchRequest, TaskEvent, TaskResult, TaskState};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// 001 alone may take "solo" tasks; 002 is up beside it for other work.
fn only_001_can_solo() -> PoolOptions {
    PoolOptions {
        programmers: vec![
            TestProgrammer::free("001").with_capabilities(&["solo"]),
            TestProgrammer::free("002")
                .with_capabilities(&["other"])
                .without_aider(),
        ],
        ..PoolOptions::default()
    }
}

/// 001's first Execute fails on the wire: 001 never had that attempt, and its health stays
/// SERVING throughout, so it never "comes back".
const REFUSE_ONE_EXECUTE: Faults = Faults {
    refuse_executes: 1,
    lose_execute_answers: 0,
    refuse_admission: false,
    cut_streams: false,
    cut_streams_on_stop: false,
    break_watches: false,
    refuse_watches: false,
};

/// The sample task, for programmers with `capability` (and under the caller's `task_id`).
fn solo_request(capability: &str, task_id: Option<&str>) -> DispatchRequest {
    DispatchRequest {
        task_id: task_id.unwrap_or_default().into(),
        capabilities: vec![capability.into()],
        ..common::pool::sample_dispatch("Add docstrings to all functions")
    }
}

/// Dispatches [`solo_request`] and follows it to its end in the background.
fn spawn_dispatch(
    client: &ProgrammerPoolClient<Channel>,
    capability: &str,
    task_id: Option<&str>,
) -> JoinHandle<(Vec<TaskEvent>, TaskResult)> {
    let client = client.clone();
    let request = solo_request(capability, task_id);
    tokio::spawn(async move { common::pool::dispatch_collect(&client, request).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_only_programmer_died_runs_there_when_it_comes_back() {
    // The first request to 001's primary hangs (so the task is mid-flight when 001 dies); every
    // later one answers.
    let sim = common::Sim::start_with_script(
        "rules:\n  - model: \"primary-001\"\n    fault: hang\n    times: 1\n",
    );
    let pool = patient_pool(only_001_can_solo(), sim);
    let mut solo = pool.start_programmer("001");
    let _other = pool.start_programmer("002");
    let manager = pool.start_manager();
    let client = manager_client(&pool).await;
    wait_available(&client, 2).await;

    let task = spawn_dispatch(&client, "solo", None);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_only_programmer_failed_a_call_without_going_down_runs_there_again() {
    let pool = patient_pool(only_001_can_solo(), common::Sim::start());
    let (_real, seen) = common::proxy::start_behind(&pool, "001", REFUSE_ONE_EXECUTE).await;
    let _other = pool.start_programmer("002");
    let manager = pool.start_manager();
    let client = manager_client(&pool).await;
    wait_available(&client, 2).await;

    let task = spawn_dispatch(&client, "solo", None);
    // Far less than the queue timeout: only going back to 001 at once ends the task in time.
    let reroute = expect_one_reroute(task, Duration::from_secs(120), ("001", "001"), || {
        manager.log_text()
    })
    .await;
    // Asked after the failed call, 001 said it never had that attempt.
    assert!(
        reroute.reason.contains("does not have the task"),
        "{reroute:?}"
    );
    assert_eq!(seen.executes.load(Ordering::SeqCst), 2);
}

/// 001 (behind a proxy whose first Execute fails on the wire) and 002 may both take "solo"
/// tasks; 002 is full with two tasks only it may take (`FILLERS`: the first hangs in its model
/// call, the second waits behind it) until they are cancelled.
struct BusyPool {
    _pool: TestPool,
    client: ProgrammerPoolClient<Channel>,
    manager: ChildGuard,
    seen: Arc<Seen>,
    _programmers: [ChildGuard; 2],
}

const FILLERS: [&str; 2] = ["busy-1", "busy-2"];

impl BusyPool {
    async fn start() -> Self {
        let sim = common::Sim::start_with_script(
            "rules:\n  - model: \"primary-002\"\n    fault: hang\n    times: 1\n",
        );
        let pool = patient_pool(
            PoolOptions {
                // 001 never runs aider: its first Execute fails on the wire, and the task
                // rerouted from it waits for 002.
                programmers: vec![
                    TestProgrammer::free("001")
                        .with_capabilities(&["solo"])
                        .without_aider(),
                    TestProgrammer::free("002").with_capabilities(&["solo", "busy"]),
                ],
                max_concurrent_per_programmer: 1,
                max_queue_per_programmer: 1,
                ..PoolOptions::default()
            },
            sim,
        );
        let (real, seen) = common::proxy::start_behind(&pool, "001", REFUSE_ONE_EXECUTE).await;
        let busy = pool.start_programmer("002");
        let manager = pool.start_manager();
        let client = manager_client(&pool).await;
        wait_available(&client, 2).await;
        for id in FILLERS {
            admit(&client, solo_request("busy", Some(id)))
                .await
                .expect("filler admitted");
        }
        wait_for_model_call(&pool.sim, "primary-002").await;
        wait_pool(&client, Duration::from_secs(60), "002 full", |s| {
            s.programmers
                .iter()
                .any(|p| p.id == "002" && p.in_flight == 2)
        })
        .await;
        Self {
            _pool: pool,
            client,
            manager,
            seen,
            _programmers: [real, busy],
        }
    }

    /// Waits until the task failed on 001 and then either waits in the manager's queue (for
    /// 002) or went back to 001 (a second Execute there).
    async fn wait_rerouted(&self) {
        wait_until(
            Duration::from_secs(60),
            "the task rerouted and waiting",
            || async {
                let executes = self.seen.executes.load(Ordering::SeqCst);
                executes >= 2
                    || (executes == 1 && pool_status(&self.client).await.manager_queue_depth == 1)
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerouted_task_waits_for_a_busy_programmer_rather_than_go_back_to_the_one_that_failed_it()
{
    let busy = BusyPool::start().await;
    let task = spawn_dispatch(&busy.client, "solo", None);
    busy.wait_rerouted().await;
    for id in FILLERS {
        busy.client
            .clone()
            .cancel_task(CancelTaskRequest { task_id: id.into() })
            .await
            .expect("CancelTask");
    }
    expect_one_reroute(task, Duration::from_secs(120), ("001", "002"), || {
        busy.manager.log_text()
    })
    .await;
    assert_eq!(busy.seen.executes.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerouted_task_keeps_its_caller_s_queue_timeout() {
    // The manager's own queue timeout is 600 s; this caller allows 2 s of waiting. 002 stays full.
    let busy = BusyPool::start().await;
    let client = busy.client.clone();
    let request = DispatchRequest {
        queue_timeout_s: 2,
        ..solo_request("solo", None)
    };
    let task = tokio::spawn(async move { dispatch_collect(&client, request).await });
    busy.wait_rerouted().await;
    let (events, result) = tokio::time::timeout(Duration::from_secs(120), task)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the task did not end within 120 s (its caller's queue timeout was 2 s)\n{}",
                busy.manager.log_text()
            )
        })
        .expect("task join");
    assert_eq!(state_of(&result), TaskState::Failed, "{result:#?}");
    assert!(
        result.error_message.contains("in the manager's queue"),
        "{result:#?}"
    );
    // It waited again after 001 lost it (no Rerouted event: it was never taken elsewhere).
    assert!(!common::pool::queued(&events).is_empty(), "{events:#?}");
    assert_eq!(busy.seen.executes.load(Ordering::SeqCst), 1);
}
