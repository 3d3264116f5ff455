//! A manager killed with SIGKILL while ten real tasks run loses none of them. The restarted
//! manager follows each task on its programmer from the last event it had journaled; callers whose
//! streams broke re-attach with WatchTask from the last seq they saw and see every event exactly
//! once, in order; every task ends with one result and one kept branch; the budget holds become
//! exactly the settled real costs. Real `pas` processes, real aider, real git, `pas llm-sim`.

mod common;

use common::Sim;
use common::pool::{
    PoolOptions, TestPool, TestProgrammer, check_stream, collect_events, manager_client,
    pool_status, sample_dispatch, sim_requests, state_of, task_branches, wait_available,
    wait_until,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pas::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use pas::contract::v1::task_event::Kind;
use pas::contract::v1::{DispatchRequest, GetTaskRequest, TaskEvent, TaskState, WatchTaskRequest};
use std::time::Duration;
use tonic::transport::Channel;

const TASKS: usize = 10;

/// Reads a Dispatch stream until it ends or breaks; returns what arrived.
async fn read_until_broken(
    mut c: ProgrammerPoolClient<Channel>,
    req: DispatchRequest,
) -> Vec<TaskEvent> {
    let mut stream = c
        .dispatch(req)
        .await
        .expect("Dispatch accepted")
        .into_inner();
    let mut events = Vec::new();
    while let Ok(Some(event)) = stream.message().await {
        events.push(event);
    }
    events
}

async fn state(c: &ProgrammerPoolClient<Channel>, task_id: &str) -> TaskState {
    // NOT_FOUND until the Dispatch call has been accepted.
    match c
        .clone()
        .get_task(GetTaskRequest {
            task_id: task_id.into(),
        })
        .await
    {
        Ok(record) => {
            TaskState::try_from(record.into_inner().state).unwrap_or(TaskState::Unspecified)
        }
        Err(status) if status.code() == tonic::Code::NotFound => TaskState::Unspecified,
        Err(status) => panic!("GetTask {task_id}: {status:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_real_tasks_survive_a_killed_manager_and_callers_reattach() {
    // Replies stream slowly, so the tasks are still running when the manager dies.
    let sim = Sim::start_with_script("default:\n  chunk_delay_ms: 100\n  chunk_chars: 8\n");
    let pool = TestPool::with_sim(
        PoolOptions {
            programmers: ["001", "002", "003", "004", "005"]
                .into_iter()
                .map(TestProgrammer::paid)
                .collect(),
            max_concurrent_per_programmer: 2,
            max_cost_per_job_usd: 0.5,
            max_daily_spend_usd: 50.0,
            request_timeout_s: 300,
            task_timeout_s: 300,
            task_lease_s: 120,
            ..PoolOptions::default()
        },
        sim,
    );
    let repo = pool.sample_repo();
    let programmers = pool.start_all_programmers();
    let mut manager = pool.start_manager();
    let c = manager_client(&pool).await;
    wait_available(&c, 5).await;

    let ids: Vec<String> = (0..TASKS).map(|i| format!("survivor-{i}")).collect();
    let callers: Vec<_> = ids
        .iter()
        .map(|id| {
            let req = DispatchRequest {
                task_id: id.clone(),
                capabilities: vec!["premium".into()],
                ..sample_dispatch("Add docstrings to all functions")
            };
            tokio::spawn(read_until_broken(c.clone(), req))
        })
        .collect();
    // Every task placed and running, and aider talking to the model for some of them.
    wait_until(
        Duration::from_secs(120),
        "all ten tasks running and the model answering",
        || async {
            for id in &ids {
                if state(&c, id).await != TaskState::Running {
                    return false;
                }
            }
            // Accepted by their programmers (the manager records a placement before it sends it).
            let accepted: usize = programmers
                .values()
                .map(|p| p.log_text().matches("task accepted").count())
                .sum();
            accepted >= TASKS && sim_requests(&pool.sim).await.len() >= 3
        },
    )
    .await;
    let held = pool_status(&c).await.budget.expect("budget").reserved_usd;
    assert!(held > 0.0, "paid tasks hold budget");

    kill(Pid::from_raw(manager.pid() as i32), Signal::SIGKILL).expect("kill -9 the manager");
    manager.kill();
    let mut seen = Vec::new();
    for caller in callers {
        seen.push(caller.await.expect("caller"));
    }
    let unfinished = seen
        .iter()
        .filter(|events| {
            !events
                .iter()
                .any(|e| matches!(e.kind, Some(Kind::Result(_))))
        })
        .count();
    assert!(unfinished > 0, "the kill cut some task streams short");

    let _manager = pool.start_manager();
    let c = manager_client(&pool).await;
    let mut total_nanos = 0u64;
    for (id, before) in ids.iter().zip(seen) {
        // Re-attach from the last seq this caller saw.
        let after_seq = before.last().map_or(0, |e| e.seq);
        let rest = c
            .clone()
            .watch_task(WatchTaskRequest {
                task_id: id.clone(),
                after_seq,
            })
            .await
            .unwrap_or_else(|e| panic!("WatchTask {id}: {e:?}"))
            .into_inner();
        let mut stitched = before.clone();
        let mut rest_events = Vec::new();
        let mut rest = rest;
        loop {
            match tokio::time::timeout(Duration::from_secs(240), rest.message()).await {
                Ok(Ok(Some(ev))) if matches!(ev.kind, Some(Kind::Heartbeat(_))) => {}
                Ok(Ok(Some(ev))) => rest_events.push(ev),
                Ok(Ok(None)) => break,
                other => panic!("{id}: watch ended badly: {other:?}\nso far: {rest_events:#?}"),
            }
        }
        stitched.extend(rest_events);
        // Every event once, in seq order, one result.
        let result = check_stream(&stitched);
        assert_eq!(state_of(&result), TaskState::Succeeded, "{id}: {result:#?}");
        // One placement: the task never ran twice.
        let assigned = stitched
            .iter()
            .filter(|e| matches!(e.kind, Some(Kind::Assigned(_))))
            .count();
        let rerouted = stitched
            .iter()
            .filter(|e| matches!(e.kind, Some(Kind::Rerouted(_))))
            .count();
        assert_eq!((assigned, rerouted), (1, 0), "{id}: {stitched:#?}");
        // A caller that re-attaches from the start sees the same stream.
        let replay = c
            .clone()
            .watch_task(WatchTaskRequest {
                task_id: id.clone(),
                after_seq: 0,
            })
            .await
            .expect("WatchTask from 0")
            .into_inner();
        let (replayed, _) = collect_events(replay).await;
        assert_eq!(replayed, stitched, "{id}: replay differs");
        assert!(
            task_branches(&repo).iter().any(|b| b == &result.branch),
            "{id}: its branch {} exists",
            result.branch
        );
        total_nanos += result.cost_nanousd;
    }
    assert_eq!(
        task_branches(&repo).len(),
        TASKS,
        "one kept branch per task"
    );
    let budget = pool_status(&c).await.budget.expect("budget");
    assert_eq!(budget.reserved_nanousd, 0, "no hold left: {budget:?}");
    assert_eq!(
        budget.spent_nanousd, total_nanos,
        "spend is the sum of the real costs, to the nano-dollar: {budget:?}"
    );
    assert!(total_nanos > 0);
}
