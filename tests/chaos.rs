//! Chaos: dry-run and real tasks flow through the pool while programmers and the manager are
//! killed with SIGKILL (and restarted) at seeded random points of the run. Afterwards:
//!
//! - no task is lost: every caller's stream (re-attached with WatchTask whenever it broke) holds
//!   each event exactly once, in order, ending with exactly one result;
//! - no task kept two edits, and no edit is unnamed: exactly one branch per succeeded real task,
//!   its result's, none for a failed one. A programmer killed after it kept an attempt's edit
//!   comes back (it is restarted at once) and ends that attempt with the kept edit, which the
//!   manager makes the task's result, so no task ends ALREADY_KEPT here; `git fsck` is clean;
//! - money is exact: no hold is left, spend ≤ the daily limit and ≥ what the paid results cost.
//!
//! The suite runs a small size (seeded by `PAS_CHAOS_SEED`, random otherwise and printed);
//! `PAS_CHAOS_DRY=1000 PAS_CHAOS_REAL=50` is the large size (see BENCHMARKS.md, "chaos").

use crate::common;

use common::Sim;
use common::pool::{
    ChildGuard, PoolOptions, TestPool, TestProgrammer, check_stream, manager_client, pool_status,
    sample_dispatch, state_of, task_branches, wait_available, wait_until,
};
use pas::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use pas::contract::v1::task_event::Kind;
use pas::contract::v1::{DispatchRequest, TaskEvent, TaskResult, TaskState, WatchTaskRequest};
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tonic::transport::Channel;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Each task's request and the events its caller saw.
type Finished = Vec<(DispatchRequest, Vec<TaskEvent>)>;

/// Programmers: two free, two paid (real tasks alternate between them by capability).
const PROGRAMMERS: [&str; 4] = ["001", "002", "003", "004"];

/// Connects to the manager, retrying while it is down (it is being restarted).
async fn connect(pool: &TestPool) -> ProgrammerPoolClient<Channel> {
    let url = format!("http://127.0.0.1:{}", pool.manager_port);
    loop {
        if let Ok(c) = ProgrammerPoolClient::connect(url.clone()).await {
            return c;
        }
        // The event is the port accepting again; nothing announces it to a caller, so poll.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Errors a caller retries: the manager is gone, restarting, or still resuming its tasks.
fn retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// Runs one task to its result as a persistent caller would: dispatch with a fixed id, and on any
/// break follow it again from the last seq seen (Dispatch again until the manager knows the id).
async fn run_caller(pool: Arc<TestPool>, req: DispatchRequest) -> Vec<TaskEvent> {
    let mut events: Vec<TaskEvent> = Vec::new();
    let mut backoff = Duration::from_millis(20);
    loop {
        let mut c = connect(&pool).await;
        let stream = if events.is_empty() {
            c.dispatch(req.clone()).await
        } else {
            c.watch_task(WatchTaskRequest {
                task_id: req.task_id.clone(),
                after_seq: events.last().map_or(0, |e| e.seq),
            })
            .await
        };
        let stream = match stream {
            Ok(stream) => stream,
            // The manager is down or still resuming its tasks: try again.
            Err(status) if retryable(&status) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
            Err(status) => panic!(
                "{}: {status:?} after {} events: {events:#?}",
                req.task_id,
                events.len()
            ),
        };
        let mut stream = stream.into_inner();
        while let Ok(Some(event)) = stream.message().await {
            if matches!(event.kind, Some(Kind::Heartbeat(_))) {
                continue;
            }
            let done = matches!(event.kind, Some(Kind::Result(_)));
            events.push(event);
            if done {
                return events;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_survive_random_kills_of_programmers_and_the_manager() {
    let dry = env_or("PAS_CHAOS_DRY", 120);
    let real = env_or("PAS_CHAOS_REAL", 6);
    let seed: u64 = std::env::var("PAS_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("chaos: {dry} dry-run + {real} real tasks, seed {seed} (PAS_CHAOS_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let sim = Sim::start_with_script("default:\n  chunk_delay_ms: 20\n  chunk_chars: 32\n");
    let limit_usd = 20.0;
    let pool = Arc::new(TestPool::with_sim(
        PoolOptions {
            programmers: vec![
                TestProgrammer::free("001").with_capabilities(&["python", "dry"]),
                TestProgrammer::free("002").with_capabilities(&["python", "dry"]),
                TestProgrammer::paid("003"),
                TestProgrammer::paid("004"),
            ],
            max_concurrent_per_programmer: 2,
            max_queue_per_programmer: 10,
            max_cost_per_job_usd: 0.5,
            max_daily_spend_usd: limit_usd,
            alert_threshold_usd: limit_usd,
            manager_max_queue: 5_000,
            queue_timeout_s: 600,
            request_timeout_s: 120,
            task_timeout_s: 300,
            task_lease_s: 20,
            ..PoolOptions::default()
        },
        sim,
    ));
    let repo = pool.sample_repo();
    let programmers: Vec<ChildGuard> = PROGRAMMERS
        .iter()
        .map(|id| pool.start_programmer(id))
        .collect();
    let programmers = Arc::new(Mutex::new(programmers));
    let manager = Arc::new(Mutex::new(pool.start_manager()));
    let c = manager_client(&pool).await;
    wait_available(&c, PROGRAMMERS.len() as u32).await;

    // The tasks, shuffled: real ones spread through the run.
    let mut requests: Vec<DispatchRequest> = (0..dry)
        .map(|i| DispatchRequest {
            task_id: format!("dry-{i:05}"),
            dry_run: true,
            capabilities: vec!["dry".into()],
            ..sample_dispatch("dry run")
        })
        .chain((0..real).map(|i| DispatchRequest {
            task_id: format!("real-{i:05}"),
            capabilities: vec![if i % 2 == 0 { "python" } else { "premium" }.into()],
            ..sample_dispatch("Add docstrings to all functions")
        }))
        .collect();
    for i in (1..requests.len()).rev() {
        requests.swap(i, rng.random_range(0..=i));
    }
    let total = requests.len();
    let started = std::time::Instant::now();

    // Chaos by progress: after every few finished tasks, kill something and restart it.
    // Results so far; the chaos driver waits on it (no polling).
    let (finished, _) = tokio::sync::watch::channel(0usize);
    let finished = Arc::new(finished);
    let kills = env_or("PAS_CHAOS_KILLS", 8);
    let mut kill_points: Vec<(usize, Option<usize>)> = (0..kills)
        .map(|k| {
            let at = rng.random_range(1..total.max(2));
            // None: the manager (at least once a run); Some(i): programmer i.
            let manager = k == 0 || rng.random_range(0..5) == 0;
            let victim = (!manager).then(|| rng.random_range(0..PROGRAMMERS.len()));
            (at, victim)
        })
        .collect();
    kill_points.sort();
    let chaos = {
        let (pool, finished, programmers, manager) = (
            pool.clone(),
            finished.clone(),
            programmers.clone(),
            manager.clone(),
        );
        tokio::spawn(async move {
            for (at, victim) in kill_points {
                if finished.subscribe().wait_for(|n| *n >= at).await.is_err() {
                    return;
                }
                match victim {
                    Some(i) => {
                        eprintln!(
                            "chaos: kill -9 programmer {} after {at} results",
                            PROGRAMMERS[i]
                        );
                        let mut guards = programmers.lock().await;
                        guards[i].kill();
                        let pool = pool.clone();
                        guards[i] =
                            tokio::task::block_in_place(|| pool.start_programmer(PROGRAMMERS[i]));
                    }
                    None => {
                        eprintln!("chaos: kill -9 the manager after {at} results");
                        let mut guard = manager.lock().await;
                        guard.kill();
                        let pool = pool.clone();
                        *guard = tokio::task::block_in_place(|| pool.start_manager());
                    }
                }
            }
        })
    };

    // Callers: a bounded number at a time, each following its task to the end.
    let queue = Arc::new(Mutex::new(requests));
    let results: Arc<Mutex<Finished>> = Arc::default();
    let callers: Vec<_> = (0..24)
        .map(|_| {
            let (pool, queue, results, finished) = (
                pool.clone(),
                queue.clone(),
                results.clone(),
                finished.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let Some(req) = queue.lock().await.pop() else {
                        return;
                    };
                    let events = run_caller(pool.clone(), req.clone()).await;
                    finished.send_modify(|n| *n += 1);
                    results.lock().await.push((req, events));
                }
            })
        })
        .collect();
    // Bounded: a caller that cannot get its result fails the test instead of hanging it.
    let all = futures::future::join_all(callers);
    let joined = tokio::time::timeout(Duration::from_secs(60 * 20), all)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "callers still waiting after 20 min ({} of {total} finished)",
                *finished.borrow()
            )
        });
    for caller in joined {
        caller.expect("caller");
    }
    chaos.abort();

    // No task lost, every stream whole.
    let results = std::mem::take(&mut *results.lock().await);
    assert_eq!(results.len(), total);
    let c = connect(&pool).await;
    let mut paid_costs = 0u64;
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    let branches = task_branches(&repo);
    for (req, events) in &results {
        let result: TaskResult = check_stream(events);
        let state = state_of(&result);
        // Failures by class, so the summary line shows why (e.g. a queue timeout).
        let outcome = match state {
            TaskState::Failed => format!(
                "Failed/{}",
                pas::contract::error_class_name(result.error_class)
            ),
            _ => format!("{state:?}"),
        };
        if state != TaskState::Succeeded {
            eprintln!("chaos: {} {outcome}: {}", req.task_id, result.error_message);
        }
        *outcomes.entry(outcome).or_default() += 1;
        if req.dry_run {
            continue;
        }
        let id = &req.task_id;
        let kept: Vec<&String> = branches
            .iter()
            .filter(|b| **b == format!("pas/{id}") || b.starts_with(&format!("pas/{id}-")))
            .collect();
        match state {
            TaskState::Succeeded => {
                assert_eq!(kept, [&result.branch], "{id}: one kept branch: {result:#?}")
            }
            _ => assert!(
                kept.is_empty(),
                "{id} failed yet kept {kept:?}: {result:#?}"
            ),
        }
        if req.capabilities == ["premium"] {
            paid_costs += result.cost_nanousd;
        }
    }
    eprintln!(
        "chaos summary: {total} tasks ({dry} dry-run, {real} real), {kills} kills, outcomes {outcomes:?}, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Nothing here waits that long legitimately: programmers come back within seconds and no task
    // is refused by the budget. A queue timeout is a task the scheduler could never place (once: a
    // hold left by a killed manager took its next attempt's budget key).
    assert!(
        !outcomes.contains_key("Failed/queue_timeout"),
        "a task waited out the queue timeout: {outcomes:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .filter(|(outcome, _)| *outcome == "Succeeded" || outcome.starts_with("Failed/"))
            .map(|(_, n)| n)
            .sum::<usize>(),
        total,
        "every task succeeded or failed (none cancelled, none without a result): {outcomes:?}"
    );
    common::git(&repo, &["fsck", "--strict"]);

    // Money: no hold left once the last task settled; within the limit; at least the real costs.
    wait_until(Duration::from_secs(30), "no hold left", || async {
        pool_status(&c)
            .await
            .budget
            .is_some_and(|b| b.reserved_nanousd == 0)
    })
    .await;
    let budget = pool_status(&c).await.budget.expect("budget");
    assert!(budget.spent_nanousd <= budget.limit_nanousd, "{budget:?}");
    assert!(
        budget.spent_nanousd >= paid_costs,
        "{budget:?} < {paid_costs}"
    );
    drop(manager);
    drop(programmers);
}
