//! The daily budget through the real manager: concurrent paid work never overspends (a paid
//! dispatch reserves its per-job cap first), the alert fires once and survives a restart with
//! the spend, and an exhausted budget sends mixed work to free programmers and refuses paid-only
//! work. Paid runs are real aider runs against `pas llm-sim`, charged tokens × catalog price.

use crate::common;

use common::Sim;
use common::pool::{
    PoolOptions, SHIPPED_CAPABILITY_ROUTING, SHIPPED_FREE, SHIPPED_PAID, TestPool, TestProgrammer,
    aider_only_on, collect_events, dispatch_collect, manager_client, pool_status, sample_dispatch,
    shipped_shape, state_of, wait_available, wait_for_model_call, wait_until,
};
use pas::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use pas::contract::v1::{
    Budget, DispatchRequest, ErrorClass, GetTaskRequest, Strategy, TaskResult, TaskState,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const ALERT_LINE: &str = "budget alert: daily spend reached the alert threshold";
const ALERT_RAISED: &str = "alert raised alert=\"budget_threshold\"";
const ALERT_CLEARED: &str = "alert cleared alert=\"budget_threshold\"";

fn budget_of(st: &pas::contract::v1::PoolStatus) -> Budget {
    st.budget.clone().expect("status carries the budget")
}

/// When the one active `budget_threshold` alert became active (panics unless exactly one).
fn budget_alert_since(st: &pas::contract::v1::PoolStatus) -> i64 {
    let alerts: Vec<_> = st
        .alerts
        .iter()
        .filter(|a| a.kind == "budget_threshold")
        .collect();
    assert_eq!(alerts.len(), 1, "{:#?}", st.alerts);
    alerts[0].since_ms
}

/// Log lines containing `needle` (ANSI colours stripped).
fn count_lines(log: &str, needle: &str) -> usize {
    let plain = strip_ansi(log);
    plain.lines().filter(|l| l.contains(needle)).count()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Nano-dollars (the ledger's unit) of a dollar amount this test configured.
fn nanos(usd: f64) -> u64 {
    (usd * 1e9).round() as u64
}

/// Samples the ledger every 20 ms until `done`: the highest `spent + reserved` and `reserved` seen,
/// in nano-dollars.
fn sample_ledger(
    c: &ProgrammerPoolClient<Channel>,
    done: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u32, u64, u64)> {
    let c = c.clone();
    tokio::spawn(async move {
        let (mut n, mut peak_total, mut peak_reserved) = (0u32, 0u64, 0u64);
        while !done.load(Ordering::SeqCst) {
            let b = budget_of(&pool_status(&c).await);
            n += 1;
            peak_total = peak_total.max(b.spent_nanousd + b.reserved_nanousd);
            peak_reserved = peak_reserved.max(b.reserved_nanousd);
            assert!(
                b.spent_nanousd + b.reserved_nanousd <= b.limit_nanousd,
                "spent + reserved over the limit: {b:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (n, peak_total, peak_reserved)
    })
}

#[tokio::test]
async fn two_hundred_concurrent_paid_tasks_never_overspend_and_alert_once() {
    // One real run on a paid simulated model costs about $0.01 (tokens × list price). With a
    // $0.03 per-job hold and a $0.10 day, at most three paid tasks hold money at once, and about
    // ten run before settled spend leaves no room for another hold.
    const JOB: f64 = 0.03;
    const LIMIT: f64 = 0.10;
    const ALERT: f64 = 0.05;
    let pool = TestPool::with_sim(
        PoolOptions {
            // aider runs on the paid programmers and, at the end, on the first free one (least
            // loaded); another free one would run that task cold.
            programmers: aider_only_on(shipped_shape(), &["001", "006", "007", "008"]),
            max_cost_per_job_usd: JOB,
            max_daily_spend_usd: LIMIT,
            alert_threshold_usd: ALERT,
            manager_max_queue: 250,
            queue_timeout_s: 900,
            task_timeout_s: 600,
            request_timeout_s: 120,
            ..PoolOptions::default()
        },
        Sim::start(),
    );
    pool.append_config(SHIPPED_CAPABILITY_ROUTING);
    let repo = pool.sample_repo();
    let _programmers = pool.start_all_programmers();
    let mut manager = pool.start_manager();
    let c = manager_client(&pool).await;
    wait_available(&c, 10).await;

    let done = Arc::new(AtomicBool::new(false));
    let sampler = sample_ledger(&c, done.clone());
    let started = Instant::now();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let req = DispatchRequest {
                    task_id: format!("paid-{i:03}"),
                    capabilities: vec!["premium".into()],
                    ..sample_dispatch(&format!("Add docstrings to all functions (task {i})"))
                };
                match c.clone().dispatch(req).await {
                    Ok(stream) => Ok(collect_events(stream.into_inner()).await.1),
                    Err(status) => Err(status),
                }
            })
        })
        .collect();
    let mut succeeded: Vec<TaskResult> = Vec::new();
    let (mut budget_failed, mut refused) = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Ok(r) if state_of(&r) == TaskState::Succeeded => {
                assert!(SHIPPED_PAID.contains(&r.programmer_id.as_str()), "{r:#?}");
                succeeded.push(r);
            }
            Ok(r) => {
                assert_eq!(
                    ErrorClass::try_from(r.error_class),
                    Ok(ErrorClass::BudgetExhausted),
                    "a task that did not run was stopped by the budget only: {r:#?}"
                );
                assert_eq!(r.programmer_id, "", "never placed: {r:#?}");
                budget_failed += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("budget"), "{status:?}");
                refused += 1;
            }
        }
    }
    done.store(true, Ordering::SeqCst);
    let (samples, peak_total, peak_reserved) = sampler.await.expect("sampler");
    let spent_by_results: u64 = succeeded.iter().map(|r| r.cost_nanousd).sum();
    let b = budget_of(&pool_status(&c).await);
    eprintln!(
        "MEASURED: 200 paid tasks in {:?}: {} ran (costs in n$ {:?}), {budget_failed} stopped by the budget in the queue, \
         {refused} refused at dispatch; ledger spent {} n$ reserved {} n$; {samples} samples, peak spent+reserved {peak_total} n$, peak reserved {peak_reserved} n$",
        started.elapsed(),
        succeeded.len(),
        succeeded.iter().map(|r| r.cost_nanousd).collect::<Vec<_>>(),
        b.spent_nanousd,
        b.reserved_nanousd,
    );

    // Never overspent, and the ledger is exactly what the tasks cost.
    assert_eq!(succeeded.len() + budget_failed + refused, 200);
    assert!(succeeded.len() >= 3, "the budget allowed real work");
    assert_eq!(b.limit_nanousd, nanos(LIMIT), "{b:#?}");
    assert!(b.spent_nanousd <= nanos(LIMIT), "{b:#?}");
    assert_eq!(b.reserved_nanousd, 0, "no hold left: {b:#?}");
    // Integers end to end: the ledger is the sum of the results' costs, to the nano-dollar (a
    // micro-dollar ledger of float costs once differed by 5 µ$ over ten settlements).
    assert_eq!(
        b.spent_nanousd, spent_by_results,
        "ledger = sum of the task results' cost_nanousd: {b:#?}"
    );
    assert_eq!(
        b.spent_usd,
        b.spent_nanousd as f64 / 1e9,
        "the double is derived"
    );
    for r in &succeeded {
        let attempts: u64 = r.attempts.iter().map(|a| a.cost_nanousd).sum();
        assert_eq!(
            r.cost_nanousd, attempts,
            "a task costs its attempts: {r:#?}"
        );
    }
    // The budget really bit: without reservations the 200 tasks would have spent far more.
    let cheapest = succeeded.iter().map(|r| r.cost_nanousd).min().unwrap_or(0);
    assert!(cheapest > 0 && cheapest < nanos(JOB), "{cheapest}");
    assert!(
        b.spent_nanousd + nanos(JOB) > nanos(LIMIT),
        "stopped only when no further hold fits: {b:#?}"
    );
    assert!(200 * cheapest > nanos(LIMIT), "200 runs would overspend");
    assert!(
        peak_reserved <= 3 * nanos(JOB),
        "at most three holds at once: {peak_reserved}"
    );
    for r in &succeeded {
        let tip = common::git(&repo, &["rev-parse", &r.branch]);
        assert_eq!(tip.trim(), r.commit);
    }

    // The alert fired once: one active alert in the status, one line of each kind in the log.
    let since = budget_alert_since(&pool_status(&c).await);
    let log = manager.log_text();
    assert_eq!(count_lines(&log, ALERT_LINE), 1, "{log}");
    assert_eq!(count_lines(&log, ALERT_RAISED), 1, "{log}");

    // kill -9 the manager and start it again: the spend and the alert are still there, and the
    // alert is not raised a second time.
    manager.kill();
    let manager = pool.start_manager();
    let c = manager_client(&pool).await;
    wait_available(&c, 10).await;
    let after = pool_status(&c).await;
    let b2 = budget_of(&after);
    assert_eq!(b2.spent_nanousd, b.spent_nanousd, "{b2:#?} vs {b:#?}");
    assert_eq!(b2.day, b.day);
    assert_eq!(
        budget_alert_since(&after),
        since,
        "the alert keeps its original time"
    );

    // Exhausted: paid-only work is refused up-front with a clear message...
    let err = c
        .clone()
        .dispatch(DispatchRequest {
            capabilities: vec!["premium".into()],
            ..sample_dispatch("Add docstrings to all functions")
        })
        .await
        .expect_err("premium needs the budget");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("budget"), "{err:?}");
    // ...while a dry run (never charged) is still routed to a paid programmer...
    let (_, r) = dispatch_collect(
        &c,
        DispatchRequest {
            dry_run: true,
            capabilities: vec!["premium".into()],
            ..sample_dispatch("dry")
        },
    )
    .await;
    assert!(SHIPPED_PAID.contains(&r.programmer_id.as_str()), "{r:#?}");
    // ...and work that may use either tier runs, for real, on a free programmer.
    let (_, r) = dispatch_collect(
        &c,
        DispatchRequest {
            task_id: "free-after-restart".into(),
            prefer_free: Some(true),
            ..sample_dispatch("Add docstrings to all functions")
        },
    )
    .await;
    assert_eq!(state_of(&r), TaskState::Succeeded, "{r:#?}");
    assert!(SHIPPED_FREE.contains(&r.programmer_id.as_str()), "{r:#?}");
    assert_eq!((r.cost_nanousd, r.cost_usd), (0, 0.0));
    let b3 = budget_of(&pool_status(&c).await);
    assert_eq!(b3.spent_nanousd, b.spent_nanousd);

    // The restarted manager never raised the alert again. Where it could have: at start-up (the
    // ledger's own line, logged before the manager listens), at the first status evaluation (the
    // "alert raised" line comes with putting the alert in the active list, and the status above
    // already listed it), or by clearing and raising it later (an "alert cleared" line first).
    // Once the manager has logged "task finished" for the free task (right after its result
    // reached us), its log is complete up to a point after all of those, a whole real task later.
    assert_eq!(
        budget_alert_since(&pool_status(&c).await),
        since,
        "still the original alert"
    );
    let finished = "task finished task_id=free-after-restart";
    wait_until(Duration::from_secs(30), finished, || async {
        count_lines(&manager.log_text(), finished) > 0
    })
    .await;
    let log = manager.log_text();
    assert_eq!(count_lines(&log, finished), 1, "{finished:?} in\n{log}");
    assert_eq!(count_lines(&log, ALERT_LINE), 0, "{log}");
    assert_eq!(count_lines(&log, ALERT_RAISED), 0, "{log}");
    assert_eq!(count_lines(&log, ALERT_CLEARED), 0, "{log}");
}

#[tokio::test]
async fn an_exhausted_budget_moves_mixed_work_to_free_and_refuses_paid_only_work() {
    // 001 (paid, listed first) and 002 (free) both hold "python". 001's model never answers.
    let sim = Sim::start_with_script("rules:\n  - model: 'paid-*'\n    fault: hang\n");
    let pool = TestPool::with_sim(
        PoolOptions {
            programmers: vec![
                TestProgrammer {
                    id: "001".into(),
                    primary: "openai/paid-a".into(),
                    backup: "openai/paid-b".into(),
                    capabilities: vec!["python".into(), "paid".into()],
                    ..TestProgrammer::free("001")
                },
                TestProgrammer::free("002").with_capabilities(&["python", "free"]),
            ],
            max_cost_per_job_usd: 1.0,
            max_daily_spend_usd: 1.5,
            alert_threshold_usd: 1.2,
            request_timeout_s: 300,
            task_timeout_s: 300,
            ..PoolOptions::default()
        },
        sim,
    );
    pool.append_config(
        "llms:\n  \"openai/paid-a\":\n    input_cost_per_token: 2.5e-6\n    output_cost_per_token: 1.0e-5\n  \"openai/paid-b\":\n    input_cost_per_token: 2.5e-6\n    output_cost_per_token: 1.0e-5\n",
    );
    pool.sample_repo();
    let mut programmers = pool.start_all_programmers();
    let _m = pool.start_manager();
    let c = manager_client(&pool).await;
    wait_available(&c, 2).await;

    // With money left and no preference for free models, config order puts it on paid 001.
    let mixed = |id: &str, prefer_free: bool| DispatchRequest {
        task_id: id.into(),
        capabilities: vec!["python".into()],
        prefer_free: Some(prefer_free),
        strategy: Strategy::CapabilityMatch as i32,
        ..sample_dispatch("Add docstrings to all functions")
    };
    let stream = c
        .clone()
        .dispatch(mixed("on-paid", false))
        .await
        .expect("accepted")
        .into_inner();
    let on_paid = tokio::spawn(collect_events(stream));
    let c2 = c.clone();
    wait_until(Duration::from_secs(60), "the task running on 001", || {
        let mut c = c2.clone();
        async move {
            c.get_task(GetTaskRequest {
                task_id: "on-paid".into(),
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                r.state == TaskState::Running as i32 && r.programmer_id == "001"
            })
            .unwrap_or(false)
        }
    })
    .await;
    // Running there for real: aider is waiting on 001's model.
    wait_for_model_call(&pool.sim, "paid-a").await;
    assert_eq!(
        budget_of(&pool_status(&c).await).reserved_nanousd,
        nanos(1.0)
    );
    // Lost mid-run (its programmer killed): what it spent there is unknown, so the whole hold is
    // booked; the task is rerouted to free 002 and succeeds there.
    programmers.get_mut("001").expect("001").kill();
    let (_, r) = on_paid.await.expect("task");
    assert_eq!(state_of(&r), TaskState::Succeeded, "{r:#?}");
    assert_eq!(r.programmer_id, "002", "{r:#?}");
    let b = budget_of(&pool_status(&c).await);
    assert_eq!(b.spent_nanousd, nanos(1.0), "{b:#?}");
    assert_eq!(b.reserved_nanousd, 0, "{b:#?}");
    // 001 is back: from here on only the budget keeps work off it.
    programmers.insert("001".into(), pool.start_programmer("001"));
    wait_available(&c, 2).await;

    // $0.50 left < $1.00 per job: the same kind of task now runs on free 002, with or without
    // the preference for free models.
    for (id, prefer_free) in [("after-1", false), ("after-2", true)] {
        let (_, r) = dispatch_collect(&c, mixed(id, prefer_free)).await;
        assert_eq!(state_of(&r), TaskState::Succeeded, "{r:#?}");
        assert_eq!(r.programmer_id, "002", "{r:#?}");
    }
    // Paid-only work is refused before any stream.
    let err = c
        .clone()
        .dispatch(DispatchRequest {
            capabilities: vec!["paid".into()],
            ..sample_dispatch("Add docstrings to all functions")
        })
        .await
        .expect_err("paid-only work cannot be afforded");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("budget"), "{err:?}");
    let b2 = budget_of(&pool_status(&c).await);
    assert_eq!(
        b2.spent_nanousd,
        nanos(1.0),
        "free work costs nothing: {b2:#?}"
    );
    let left = pool
        .wait_worktree_processes_gone(Duration::from_secs(60))
        .await;
    assert!(
        left.is_empty(),
        "aider left running after its programmer died: {left:?}"
    );
}
