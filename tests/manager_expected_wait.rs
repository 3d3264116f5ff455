//! least_expected_wait with real processes: two programmers on a fast model, two on a model the
//! simulator answers 25 s late (`latency_ms` per model; aider asks twice per task: the edit and
//! the commit message), real aider on both. The slow model stays at least twice as slow as the
//! fast one however long aider itself takes on a loaded machine (~5 s idle, ~50 s under load). Once the manager has
//! seen one task finish on each model, a batch placed at once goes mostly to the fast model's
//! programmers: a task there is expected to finish sooner even behind several others. least_loaded
//! would split the batch evenly (it counts tasks, not their length).

use crate::common;

use common::Sim;
use common::pool::{
    PoolOptions, TestPool, TestProgrammer, dispatch_collect, manager_client, sample_dispatch,
    state_of, wait_available,
};
use pas::contract::v1::task_event::Kind;
use pas::contract::v1::{Strategy, TaskState};
use std::collections::BTreeMap;

const FAST: &str = "ollama/fast-7b";
const SLOW: &str = "ollama/slow-14b";

fn programmer(id: &str, model: &str) -> TestProgrammer {
    TestProgrammer {
        primary: model.into(),
        backup: format!("{model}-backup"),
        ..TestProgrammer::free(id)
    }
}

/// Dispatches `n` edit tasks at once with least_expected_wait; returns how many each programmer
/// ran. Every task must succeed and be placed by least_expected_wait.
async fn batch(
    client: &pas::contract::v1::programmer_pool_client::ProgrammerPoolClient<
        tonic::transport::Channel,
    >,
    label: &str,
    n: usize,
) -> BTreeMap<String, usize> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let client = client.clone();
            let mut req = sample_dispatch(&format!("{label} {i}: add a docstring to greet"));
            req.strategy = Strategy::LeastExpectedWait as i32;
            tokio::spawn(async move { dispatch_collect(&client, req).await })
        })
        .collect();
    let mut counts = BTreeMap::new();
    for t in tasks {
        let (events, result) = t.await.expect("task");
        assert_eq!(state_of(&result), TaskState::Succeeded, "{result:#?}");
        let strategies: Vec<&str> = events
            .iter()
            .filter_map(|e| match &e.kind {
                Some(Kind::Assigned(a)) => Some(a.strategy.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(strategies, vec!["least_expected_wait"]);
        *counts.entry(result.programmer_id).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slow_models_programmers_get_fewer_tasks() {
    let sim = Sim::start_with_script("rules:\n  - model: \"slow-14b\"\n    latency_ms: 25000\n");
    let pool = TestPool::with_sim(
        PoolOptions {
            programmers: vec![
                programmer("001", FAST),
                programmer("002", FAST),
                programmer("003", SLOW),
                programmer("004", SLOW),
            ],
            strategy: "least_expected_wait".into(),
            max_queue_per_programmer: 5,
            request_timeout_s: 120,
            task_timeout_s: 600,
            queue_timeout_s: 600,
            ..PoolOptions::default()
        },
        sim,
    );
    pool.sample_repo();
    let _procs = pool.start_all();
    let client = manager_client(&pool).await;
    wait_available(&client, 4).await;

    // Nothing measured yet: every model has the prior, so the first four spread like
    // least_loaded, one per programmer, and teach the manager both models' durations.
    let warm = batch(&client, "warm-up", 4).await;
    assert_eq!(
        warm.values().copied().collect::<Vec<_>>(),
        vec![1; 4],
        "{warm:?}"
    );

    // Now a batch of 12 at once (room for 24): least_loaded would place 3 on each.
    let counts = batch(&client, "batch", 12).await;
    let on = |ids: &[&str]| {
        ids.iter()
            .map(|id| counts.get(*id).copied().unwrap_or(0))
            .sum::<usize>()
    };
    let (fast, slow) = (on(&["001", "002"]), on(&["003", "004"]));
    assert_eq!(fast + slow, 12);
    assert!(
        slow < fast,
        "the slow model's programmers should get fewer tasks than the fast ones: \
         fast {fast}, slow {slow} ({counts:?})"
    );
    eprintln!("placed: fast {fast}, slow {slow} ({counts:?})");
}
