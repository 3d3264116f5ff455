//! Faults on the wire between the manager and a programmer that stays up.
//!
//! A task whose stream breaks every time the manager follows it again is given up on that
//! programmer after the task's lease: stopped there, rerouted, finished elsewhere. Before, the
//! manager followed it again at once, without end (a WatchTask call and two log lines each time).
//!
//! A task whose stream breaks after its caller's cancel was passed on is followed to the
//! programmer's own result (what it spent known), not ended at once as cancelled.
//!
//! A programmer that refuses every task at its admission while it reports room does not hold a
//! task past its caller's queue timeout (each refusal sends the task back to the same wait), nor
//! is it asked again at once after every refusal.
//!
//! An attempt whose Execute answer was lost after the programmer took the task, and which the
//! manager then cannot reach for the lease, may have spent money: its whole hold is booked, not
//! released as if it had never started.
//!
//! The real programmer 001 runs behind a gRPC proxy in this test (its configured port is the
//! proxy's): the proxy forwards Execute, StopTask and GetStatus, cuts Execute's stream after its
//! first event, and answers every WatchTask with a stream that fails at once: what a programmer
//! that can no longer read its task back (or sends an event the manager cannot decode) looks
//! like. The real programmer has no switch for that fault.

use crate::common;

use common::pool::{ChildGuard, TestPool};
use common::pool::{
    PoolOptions, TestProgrammer, dispatch_collect, expect_one_reroute, manager_client,
    patient_pool, pool_status, rerouted, state_of, wait_available, wait_until,
};
use common::proxy::{Faults, Seen};
use pas::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use pas::contract::v1::{CancelTaskRequest, DispatchRequest, TaskState};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tonic::transport::Channel;

/// The real 001 behind the proxy with `faults`, the programmers `others` beside it, and the
/// manager, every programmer available to it.
struct Behind {
    seen: Arc<Seen>,
    manager: ChildGuard,
    client: ProgrammerPoolClient<Channel>,
    _programmers: Vec<ChildGuard>,
}

impl Behind {
    async fn start(pool: &TestPool, faults: Faults, others: &[&str]) -> Self {
        let (real, seen) = common::proxy::start_behind(pool, "001", faults).await;
        let mut programmers = vec![real];
        programmers.extend(others.iter().map(|id| pool.start_programmer(id)));
        let manager = pool.start_manager();
        let client = manager_client(pool).await;
        wait_available(&client, programmers.len() as u32).await;
        Self {
            seen,
            manager,
            client,
            _programmers: programmers,
        }
    }
}

/// A simulator whose calls to `model` hang (the first `times` of them; all when `None`).
fn sim_hanging(model: &str, times: Option<u32>) -> common::Sim {
    let times = times
        .map(|n| format!("    times: {n}\n"))
        .unwrap_or_default();
    common::Sim::start_with_script(&format!(
        "rules:\n  - model: \"{model}\"\n    fault: hang\n{times}"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_breaks_whenever_followed_is_given_up_after_the_lease() {
    // 001's first model call hangs: the task cannot finish there before the manager gives up.
    let sim = sim_hanging("primary-001", Some(1));
    let lease_s = 3;
    let pool = patient_pool(
        PoolOptions {
            programmers: vec![TestProgrammer::free("001"), TestProgrammer::free("002")],
            task_lease_s: lease_s,
            ..PoolOptions::default()
        },
        sim,
    );

    // The real 001 on a port of its own; the proxy on the port the configuration gives 001.
    let (_real, seen) = common::proxy::start_behind(
        &pool,
        "001",
        Faults {
            cut_streams: true,
            break_watches: true,
            ..Faults::default()
        },
    )
    .await;

    // 002 starts once the task runs on 001, and takes it when 001 loses it.
    let manager = pool.start_manager();
    let client = manager_client(&pool).await;
    wait_available(&client, 1).await;

    let request = common::pool::sample_dispatch("Add docstrings to all functions");
    let caller = client.clone();
    let task = tokio::spawn(async move { dispatch_collect(&caller, request).await });
    wait_until(Duration::from_secs(60), "the task sent to 001", || async {
        seen.executes.load(Ordering::SeqCst) > 0
    })
    .await;
    let _other = pool.start_programmer("002");
    let (events, result) = tokio::time::timeout(Duration::from_secs(120), task)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the task never ended; WatchTask calls so far: {}\nmanager:\n{}",
                seen.watch_calls.load(Ordering::SeqCst),
                manager.log_text()
            )
        })
        .expect("the caller's task");
    let log = manager.log_text();

    // Given up on 001 after the lease, and finished on 002.
    let reroutes = rerouted(&events);
    assert_eq!(reroutes.len(), 1, "{reroutes:?}\nmanager:\n{log}");
    assert_eq!(reroutes[0].from_programmer, "001");
    assert!(
        reroutes[0].reason.contains("its stream broke")
            && reroutes[0]
                .reason
                .contains(&format!("carrying nothing for {lease_s} s"))
            && reroutes[0].reason.contains("cannot be read back"),
        "{}",
        reroutes[0].reason
    );
    assert_eq!(
        state_of(&result),
        TaskState::Succeeded,
        "{result:?}\nmanager:\n{log}"
    );
    assert_eq!(reroutes[0].to_programmer, "002");
    assert_eq!(result.programmer_id, "002");

    // Followed again after growing pauses, not without end: 0, 50, 100, … 1,600 ms fill a 3 s
    // lease in 8 calls; a slower machine makes fewer.
    let calls = seen.watch_calls.load(Ordering::SeqCst);
    assert!((2..=9).contains(&calls), "{calls} WatchTask calls\n{log}");
    // And stopped on 001.
    assert!(
        seen.stops.load(Ordering::SeqCst) >= 1,
        "no StopTask reached 001\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_whose_execute_answer_was_lost_keeps_its_whole_hold() {
    // 001's model calls hang: the task runs there, unseen, until 001 stops it after the lease.
    // 002 runs on another model. capability_match places the task on 001 first (configuration
    // order).
    let sim = sim_hanging("claude-sonnet-4-20250514", None);
    let lease_s = 3;
    let hold_nanousd = 2_500_000_000;
    let pool = patient_pool(
        PoolOptions {
            programmers: vec![
                TestProgrammer::paid_anthropic("001"),
                TestProgrammer::paid("002"),
            ],
            strategy: "capability_match".into(),
            max_cost_per_job_usd: 2.5,
            task_lease_s: lease_s,
            ..PoolOptions::default()
        },
        sim,
    );
    // 001 takes the task, but its answer to Execute is lost and no WatchTask reaches it.
    let behind = Behind::start(
        &pool,
        Faults {
            lose_execute_answers: 1,
            refuse_watches: true,
            ..Faults::default()
        },
        &["002"],
    )
    .await;
    let (seen, manager, client) = (&behind.seen, &behind.manager, &behind.client);

    let request = common::pool::sample_dispatch("Add docstrings to all functions");
    let caller = client.clone();
    let task = tokio::spawn(async move { dispatch_collect(&caller, request).await });
    let reroute = expect_one_reroute(task, Duration::from_secs(120), ("001", "002"), || {
        manager.log_text()
    })
    .await;
    assert!(
        reroute.reason.contains("unreachable for the task's lease"),
        "{reroute:?}"
    );
    assert_eq!(seen.executes.load(Ordering::SeqCst), 1);
    // What 001 spent is unknown: its whole hold is booked (before, it was released, as for an
    // attempt that never started), beside what 002 spent.
    let budget = pool_status(client).await.budget.expect("budget");
    assert!(
        budget.spent_nanousd >= hold_nanousd,
        "{budget:?}\nmanager:\n{}",
        manager.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_breaks_after_a_cancel_is_followed_to_the_programmer_s_own_result() {
    // 001's model calls hang: the task runs until it is cancelled.
    let sim = sim_hanging("claude-sonnet-4-20250514", None);
    let hold_nanousd = 2_500_000_000;
    let pool = patient_pool(
        PoolOptions {
            programmers: vec![TestProgrammer::paid_anthropic("001")],
            max_cost_per_job_usd: 2.5,
            ..PoolOptions::default()
        },
        sim,
    );
    // The task's stream to the manager breaks when the StopTask comes, before 001 has it.
    let behind = Behind::start(
        &pool,
        Faults {
            cut_streams_on_stop: true,
            ..Faults::default()
        },
        &[],
    )
    .await;
    let (seen, manager, client) = (&behind.seen, &behind.manager, &behind.client);

    let request = DispatchRequest {
        task_id: "cancel-me".into(),
        ..common::pool::sample_dispatch("Add docstrings to all functions")
    };
    let caller = client.clone();
    let task = tokio::spawn(async move { dispatch_collect(&caller, request).await });
    common::pool::wait_for_model_call(&pool.sim, "claude-sonnet-4-20250514").await;
    client
        .clone()
        .cancel_task(CancelTaskRequest {
            task_id: "cancel-me".into(),
        })
        .await
        .expect("CancelTask");
    let (_events, result) = tokio::time::timeout(Duration::from_secs(120), task)
        .await
        .unwrap_or_else(|_| panic!("the task never ended\nmanager:\n{}", manager.log_text()))
        .expect("the caller's task");
    let log = manager.log_text();
    assert_eq!(
        state_of(&result),
        TaskState::Cancelled,
        "{result:#?}\n{log}"
    );
    assert_eq!(seen.stops.load(Ordering::SeqCst), 1, "{log}");
    assert!(
        seen.watch_calls.load(Ordering::SeqCst) >= 1,
        "never followed again\n{log}"
    );
    // 001 said what it spent (its model call never answered): not the whole hold, as a result
    // made up by the manager would have booked.
    let budget = pool_status(client).await.budget.expect("budget");
    assert!(
        budget.spent_nanousd < hold_nanousd && budget.reserved_nanousd == 0,
        "{budget:?}\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_programmer_that_keeps_refusing_at_admission_does_not_hold_a_task_past_its_queue_timeout()
{
    // Reports every 60 s: after a refusal the manager asks for one at once only the first time.
    let pool = patient_pool(
        PoolOptions {
            health_check_interval_s: 60,
            runs_aider: false,
            ..PoolOptions::default()
        },
        common::Sim::start(),
    );
    let behind = Behind::start(
        &pool,
        Faults {
            refuse_admission: true,
            ..Faults::default()
        },
        &[],
    )
    .await;
    let (seen, manager, client) = (&behind.seen, &behind.manager, &behind.client);

    // The manager's own queue timeout is 600 s; this caller allows 2 s.
    let request = DispatchRequest {
        queue_timeout_s: 2,
        ..common::pool::sample_dispatch("Add docstrings to all functions")
    };
    let caller = client.clone();
    let task = tokio::spawn(async move { dispatch_collect(&caller, request).await });
    let (_events, result) = tokio::time::timeout(Duration::from_secs(120), task)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the task did not end within 120 s (its caller's queue timeout was 2 s); {} Executes refused\nmanager:\n{}",
                seen.executes.load(Ordering::SeqCst),
                manager.log_text()
            )
        })
        .expect("the caller's task");
    assert_eq!(state_of(&result), TaskState::Failed, "{result:#?}");
    assert!(
        result.error_message.contains("in the manager's queue"),
        "{result:#?}"
    );
    // Sent before any report, again after the report the first refusal asked for, and at most
    // once more after the report the programmer's start-up may have left pending; then not before
    // the next scheduled report (60 s). Without the rule, hundreds in the 2 s.
    let executes = seen.executes.load(Ordering::SeqCst);
    assert!((1..=3).contains(&executes), "{executes} Executes");
}
