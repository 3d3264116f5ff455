//! Cancels racing placements: 1,000 paid tasks are each cancelled at a random moment — while
//! queued in the manager, while the scheduler places them (a budget hold just reserved), right
//! after the programmer accepted them into its queue — and afterwards no hold is left: every
//! reservation was released or settled. A real paid programmer is kept busy by one task hanging
//! on its model, so the raced tasks can be placed (queued on the programmer, holding budget) but
//! never start aider. Real `pas` processes, `pas llm-sim`.

use crate::common;

use common::Sim;
use common::pool::{
    self, PoolOptions, TestPool, TestProgrammer, pool_status, sample_dispatch, state_of,
    wait_for_model_call, wait_until,
};
use pas::contract::v1::task_event::Kind;
use pas::contract::v1::{CancelTaskRequest, DispatchRequest, TaskState};
use rand::{Rng, SeedableRng};
use std::time::Duration;

const RACES: usize = 1_000;
const CONCURRENCY: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_cancels_racing_placements_leave_no_hold() {
    let sim = Sim::start_with_script("rules:\n  - model: 'gpt-4o*'\n    fault: hang\n");
    let pool = TestPool::with_sim(
        PoolOptions {
            programmers: vec![TestProgrammer::paid("001")],
            max_concurrent_per_programmer: 1,
            max_queue_per_programmer: 5,
            max_cost_per_job_usd: 0.25,
            max_daily_spend_usd: 1_000.0,
            alert_threshold_usd: 999.0,
            request_timeout_s: 600,
            task_timeout_s: 600,
            manager_max_queue: 1_000,
            ..PoolOptions::default()
        },
        sim,
    );
    pool.sample_repo();
    let (_programmer, _manager, c) = pool::start_one(&pool).await;

    // The blocker: runs aider against a model that never answers, holding the only slot.
    let blocker = DispatchRequest {
        task_id: "blocker".into(),
        capabilities: vec!["premium".into()],
        ..sample_dispatch("Add docstrings to all functions")
    };
    let mut blocker_stream = c
        .clone()
        .dispatch(blocker)
        .await
        .expect("blocker accepted")
        .into_inner();
    wait_for_model_call(&pool.sim, "gpt-4o").await;

    let seed: u64 = std::env::var("PAS_RACE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("cancel race seed: {seed} (PAS_RACE_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let delays: Vec<u32> = (0..RACES).map(|_| rng.random_range(0..64)).collect();

    let mut outcomes = Vec::with_capacity(RACES);
    for chunk in delays.chunks(CONCURRENCY).enumerate() {
        let (batch, delays) = chunk;
        let racers: Vec<_> = delays
            .iter()
            .enumerate()
            .map(|(i, &yields)| {
                let mut c = c.clone();
                let task_id = format!("race-{}", batch * CONCURRENCY + i);
                tokio::spawn(async move {
                    let req = DispatchRequest {
                        task_id: task_id.clone(),
                        capabilities: vec!["premium".into()],
                        ..sample_dispatch("Add docstrings to all functions")
                    };
                    let mut stream = c.dispatch(req).await.expect("Dispatch").into_inner();
                    // A random point in the task's placement: some are cancelled while queued,
                    // some while placed, some once the programmer holds them.
                    for _ in 0..yields {
                        tokio::task::yield_now().await;
                    }
                    c.cancel_task(CancelTaskRequest { task_id })
                        .await
                        .expect("CancelTask");
                    let mut result = None;
                    while let Some(event) = stream.message().await.expect("stream") {
                        if let Some(Kind::Result(r)) = event.kind {
                            result = Some(*r);
                        }
                    }
                    result.expect("a result")
                })
            })
            .collect();
        for racer in racers {
            outcomes.push(racer.await.expect("racer"));
        }
    }
    for (i, result) in outcomes.iter().enumerate() {
        assert_eq!(
            state_of(result),
            TaskState::Cancelled,
            "race-{i}: {result:#?}"
        );
    }

    // Only the blocker holds budget now; once it is cancelled, nothing does.
    let budget = pool_status(&c).await.budget.expect("budget");
    assert_eq!(
        budget.reserved_nanousd, 250_000_000,
        "only the blocker's hold is left: {budget:?}"
    );
    c.clone()
        .cancel_task(CancelTaskRequest {
            task_id: "blocker".into(),
        })
        .await
        .expect("cancel the blocker");
    while blocker_stream
        .message()
        .await
        .expect("blocker stream")
        .is_some()
    {}
    wait_until(Duration::from_secs(30), "every hold settled", || async {
        pool_status(&c)
            .await
            .budget
            .is_some_and(|b| b.reserved_nanousd == 0)
    })
    .await;
}
