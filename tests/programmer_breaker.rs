//! The circuit breaker end to end: real `pas programmer` processes, real aider, llm-sim faults.
//!
//! The paused-clock unit tests in `services/programmer/breaker.rs` cover the state machine; these
//! tests prove the wiring: which LLM real tasks use, what `/health` and GetStatus show, that the
//! state is persisted across a restart, and that edit failures never count.

use crate::common;

use common::pool::{self, PoolOptions, ProgrammerClient, TestPool};
use pas::contract::v1::task_event::Kind;
use pas::contract::v1::{
    CircuitState, ErrorClass, GetStatusRequest, LlmState, TaskEvent, TaskResult, TaskState,
};
use std::time::Duration;

/// Cooldown of the end-to-end breaker test while it checks the open breaker and restarts the
/// programmer: far longer than the test, so the breaker is certainly still open after the
/// restart however slow the machine is.
const LONG_COOLDOWN_MINUTES: f64 = 60.0;

/// The cooldown the programmer is restarted with to reach half-open: 0.2 min = 12 s from the
/// moment the breaker opened (the restored breaker applies its cooldown from then).
const SHORT_COOLDOWN_MINUTES: f64 = 0.2;

/// Kills programmer `id` (`kill -9`) and starts it again with this pool's configuration file as
/// it is now.
fn restart(pool: &TestPool, prog: &mut common::pool::ChildGuard, id: &str) {
    prog.kill();
    *prog = pool.start_programmer(id);
}

/// Rewrites the pool's configuration file with `cooldown_minutes` (read by processes started
/// from now on).
fn set_cooldown(pool: &mut TestPool, cooldown_minutes: f64) {
    pool.options.cooldown_minutes = cooldown_minutes;
    std::fs::write(&pool.config_path, pool.config_yaml()).expect("rewrite the config");
}

async fn llm_state(c: &mut ProgrammerClient) -> LlmState {
    c.get_status(GetStatusRequest {})
        .await
        .expect("GetStatus")
        .into_inner()
        .llm
        .expect("llm state")
}

fn docstrings() -> pas::contract::v1::TaskRequest {
    pool::task_request(
        "sample",
        "Add docstrings to all functions",
        &["src/module.py"],
    )
}

/// Starts a task and returns its first event (Assigned) plus a handle on the rest of the run.
async fn start_task(
    pool: &TestPool,
) -> (
    pas::contract::v1::Assigned,
    tokio::task::JoinHandle<(Vec<TaskEvent>, TaskResult)>,
) {
    let mut c = pool.programmer_client("001").await;
    let mut stream = c
        .execute(docstrings())
        .await
        .expect("Execute accepted")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("stream")
        .expect("a first event");
    let Some(Kind::Assigned(assigned)) = first.kind.clone() else {
        panic!("the first event of a task that runs at once is Assigned: {first:?}");
    };
    let rest = tokio::spawn(async move {
        let _keep = c;
        let mut events = vec![first];
        while let Some(ev) = stream.message().await.expect("stream") {
            events.push(ev);
        }
        let result = pool::check_stream(&events);
        (events, result)
    });
    (assigned, rest)
}

fn succeeded(r: &TaskResult) {
    assert_eq!(
        TaskState::try_from(r.status),
        Ok(TaskState::Succeeded),
        "{r:#?}"
    );
}

/// Three primary failures inside the window open the breaker (`/health` and GetStatus agree:
/// circuit_open, using_backup), new tasks then start on the backup, the state survives a
/// `kill -9` restart, after the cooldown exactly one task probes the primary while the others
/// keep using the backup, and the probe's success closes the breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_failures_open_the_breaker_one_probe_closes_it_and_a_restart_keeps_it() {
    // The primary fails its next three requests, then recovers.
    let sim = common::Sim::start_with_script(
        "rules:\n  - model: \"primary-001\"\n    fault: http_500\n    times: 3\n",
    );
    let options = PoolOptions {
        max_concurrent_per_programmer: 4,
        // Failures stay in the window for the whole test.
        window_minutes: 60.0,
        cooldown_minutes: LONG_COOLDOWN_MINUTES,
        failure_threshold: 3,
        ..PoolOptions::default()
    };
    let mut pool = TestPool::with_sim(options, sim);
    let repo = pool.sample_repo();
    let mut prog = pool.start_programmer("001");
    let mut c = pool.programmer_client("001").await;

    // --- three tasks fail on the primary at about the same time and fail over ---
    let mut first_three = Vec::new();
    for _ in 0..3 {
        let (assigned, rest) = start_task(&pool).await;
        assert!(!assigned.using_backup, "closed breaker: primary first");
        first_three.push(rest);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while !llm_state(&mut c).await.circuit_open {
        if tokio::time::Instant::now() > deadline || first_three.iter().all(|t| t.is_finished()) {
            let mut results = Vec::new();
            for t in first_three {
                results.push(t.await.map(|(_, r)| r));
            }
            panic!(
                "the breaker did not open: {:?}\nresults: {results:#?}\nsim: {:?}\nlog:\n{}",
                llm_state(&mut c).await,
                pool::sim_requests(&pool.sim).await,
                prog.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Both views of the same port agree.
    let llm = llm_state(&mut c).await;
    assert!(llm.circuit_open && llm.using_backup, "{llm:?}");
    assert_eq!(llm.failures, 3, "{llm:?}");
    assert_eq!(
        CircuitState::try_from(llm.circuit_state),
        Ok(CircuitState::Open)
    );
    assert_eq!(llm.current, "ollama/backup-001");
    let health = pool.programmer_health("001").await;
    assert_eq!(health["llm"]["circuit_open"], true, "{health}");
    assert_eq!(health["llm"]["using_backup"], true, "{health}");
    assert_eq!(health["llm"]["failures"], 3, "{health}");
    assert_eq!(health["llm"]["circuit_state"], "open", "{health}");
    assert_eq!(health["llm"]["current"], "ollama/backup-001", "{health}");

    // --- while open, a new task starts on the backup and never asks the primary ---
    let (assigned, fourth) = start_task(&pool).await;
    assert!(
        assigned.using_backup && assigned.llm == "ollama/backup-001",
        "open breaker: backup first: {assigned:?}"
    );
    for rest in first_three {
        let (events, result) = rest.await.expect("task");
        succeeded(&result);
        assert!(result.used_backup);
        assert_eq!(result.attempts.len(), 2);
        assert_eq!(pool::failovers(&events).len(), 1);
    }
    let (events, result) = fourth.await.expect("task");
    succeeded(&result);
    assert_eq!(result.llm_used, "ollama/backup-001");
    assert_eq!(result.attempts.len(), 1, "no primary attempt while open");
    assert!(pool::failovers(&events).is_empty());
    assert_eq!(pool::sim_edit_requests(&pool.sim, "primary-001").await, 3);

    // --- kill -9 and restart: the breaker is still open (persisted in the data dir) ---
    let before = llm_state(&mut c).await;
    assert_eq!(
        CircuitState::try_from(before.circuit_state),
        Ok(CircuitState::Open),
        "{before:?}"
    );
    restart(&pool, &mut prog, "001");
    let mut c = pool.programmer_client("001").await;
    let llm = llm_state(&mut c).await;
    assert!(llm.circuit_open, "breaker state lost on restart: {llm:?}");
    assert_eq!(llm.failures, 3, "failures in the window survive: {llm:?}");
    assert_eq!(
        CircuitState::try_from(llm.circuit_state),
        Ok(CircuitState::Open),
        "{llm:?}"
    );
    // The time that passed before the restart counts against the cooldown: it goes on from
    // where it was (a restarted cooldown would be back near the full hour).
    assert!(
        llm.cooldown_remaining_ms <= before.cooldown_remaining_ms,
        "cooldown restarted instead of resumed: {llm:?} after the restart, {before:?} before"
    );

    // --- restarted with a 12 s cooldown, which counts from when the breaker opened ---
    set_cooldown(&mut pool, SHORT_COOLDOWN_MINUTES);
    restart(&pool, &mut prog, "001");
    let mut c = pool.programmer_client("001").await;
    let llm = llm_state(&mut c).await;
    assert!(llm.circuit_open, "breaker state lost on restart: {llm:?}");

    // --- after the cooldown: half-open, exactly one probe goes to the primary ---
    common::pool::wait_until(Duration::from_secs(60), "half-open", || {
        let mut c = c.clone();
        async move {
            CircuitState::try_from(llm_state(&mut c).await.circuit_state)
                == Ok(CircuitState::HalfOpen)
        }
    })
    .await;
    let health = pool.programmer_health("001").await;
    assert_eq!(health["llm"]["circuit_state"], "half_open", "{health}");
    assert_eq!(
        health["llm"]["using_backup"], false,
        "the next task may probe: {health}"
    );
    let before = pool::sim_edit_requests(&pool.sim, "primary-001").await;
    let mut after_cooldown = Vec::new();
    for _ in 0..3 {
        after_cooldown.push(start_task(&pool).await);
    }
    let probes: Vec<_> = after_cooldown
        .iter()
        .filter(|(a, _)| !a.using_backup)
        .collect();
    assert_eq!(
        probes.len(),
        1,
        "exactly one probe: {:?}",
        after_cooldown.iter().map(|(a, _)| a).collect::<Vec<_>>()
    );
    assert_eq!(probes[0].0.llm, "ollama/primary-001");
    // While the probe runs, everyone else is told to use the backup.
    let llm = llm_state(&mut c).await;
    assert!(llm.using_backup && llm.circuit_open, "{llm:?}");
    assert_eq!(
        CircuitState::try_from(llm.circuit_state),
        Ok(CircuitState::HalfOpen)
    );
    for (assigned, rest) in after_cooldown {
        let (_, result) = rest.await.expect("task");
        succeeded(&result);
        assert_eq!(result.llm_used, assigned.llm);
        assert_eq!(result.attempts.len(), 1);
    }
    assert_eq!(
        pool::sim_edit_requests(&pool.sim, "primary-001").await - before,
        1,
        "one request to the primary after the cooldown"
    );

    // --- the probe succeeded: closed, counts reset, the primary is current again ---
    let llm = llm_state(&mut c).await;
    assert!(!llm.circuit_open && !llm.using_backup, "{llm:?}");
    assert_eq!(llm.failures, 0, "{llm:?}");
    assert_eq!(
        CircuitState::try_from(llm.circuit_state),
        Ok(CircuitState::Closed)
    );
    assert_eq!(llm.current, "ollama/primary-001");
    let health = pool.programmer_health("001").await;
    assert_eq!(health["llm"]["circuit_open"], false, "{health}");
    assert_eq!(health["llm"]["circuit_state"], "closed", "{health}");
    // 3 failed-over + 1 on the backup + 3 after the cooldown, each on its own branch.
    assert_eq!(pool::task_branches(&repo).len(), 7);
    assert_eq!(pool::worktree_count(&repo), 1);
}

/// The LLM answers but its edit does not apply (sim faults `malformed` and `no_match`): the task
/// fails with EDIT_FAILED after one attempt, no failover, the backup is never asked, and the
/// breaker counts nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_failures_neither_fail_over_nor_count_for_the_breaker() {
    let sim = common::Sim::start_with_script(
        "rules:\n  - model: \"primary-001\"\n    fault: malformed\n  - model: \"primary-002\"\n    fault: no_match\n",
    );
    let options = PoolOptions {
        programmers: vec![
            common::pool::TestProgrammer::free("001"),
            common::pool::TestProgrammer::free("002"),
        ],
        failure_threshold: 1,
        ..PoolOptions::default()
    };
    let pool = TestPool::with_sim(options, sim);
    let repo = pool.sample_repo();
    let _p1 = pool.start_programmer("001");
    let _p2 = pool.start_programmer("002");
    let mut c1 = pool.programmer_client("001").await;
    let mut c2 = pool.programmer_client("002").await;

    let ((e1, r1), (e2, r2)) = tokio::join!(
        pool::execute_task(&mut c1, docstrings()),
        pool::execute_task(&mut c2, docstrings()),
    );
    for (id, events, result, c) in [("001", e1, r1, &mut c1), ("002", e2, r2, &mut c2)] {
        assert_eq!(
            TaskState::try_from(result.status),
            Ok(TaskState::Failed),
            "{id}: {result:#?}"
        );
        assert_eq!(
            ErrorClass::try_from(result.error_class),
            Ok(ErrorClass::EditFailed),
            "{id}: {result:#?}"
        );
        assert_eq!(
            result.attempts.len(),
            1,
            "{id}: no retry on an edit failure"
        );
        assert_eq!(result.llm_used, format!("ollama/primary-{id}"));
        assert!(pool::failovers(&events).is_empty(), "{id}: no failover");
        assert!(
            result.tokens_received > 0,
            "{id}: the LLM did answer: {result:#?}"
        );
        let status = c
            .get_status(GetStatusRequest {})
            .await
            .expect("status")
            .into_inner();
        let llm = status.llm.expect("llm");
        // With failure_threshold 1, a single counted failure would have opened it.
        assert_eq!(llm.failures, 0, "{id}: {llm:?}");
        assert!(!llm.circuit_open, "{id}: {llm:?}");
        assert_eq!((status.failed, status.failovers), (1, 0), "{id}");
        assert_eq!(
            pool::sim_edit_requests(&pool.sim, &format!("backup-{id}")).await,
            0,
            "{id}: the backup was never asked"
        );
        let health = pool.programmer_health(id).await;
        assert_eq!(health["llm"]["failures"], 0, "{health}");
    }
    // Failed tasks leave nothing behind.
    assert!(pool::task_branches(&repo).is_empty());
    assert_eq!(pool::worktree_count(&repo), 1);
}

/// The programmer is killed (`kill -9`) while its half-open probe waits on the primary: aider does
/// not outlive it, and the restarted programmer treats the probe as unanswered — the breaker is
/// open again for a full cooldown instead of letting the next task probe at once — and removes
/// the dead task's worktree and branch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_the_probe_reopens_the_breaker_and_leaves_nothing_behind() {
    let sim = common::Sim::start_with_script(
        "rules:\n  - model: \"primary-001\"\n    fault: http_500\n    times: 1\n",
    );
    let options = PoolOptions {
        failure_threshold: 1,
        window_minutes: 5.0,
        cooldown_minutes: 0.05,
        ..PoolOptions::default()
    };
    let mut pool = TestPool::with_sim(options, sim);
    let repo = pool.sample_repo();
    let worktrees = pool.worktrees_dir("001");
    let mut prog = pool.start_programmer("001");
    let mut c = pool.programmer_client("001").await;

    // One failure opens the breaker (threshold 1); the task finishes on the backup.
    let (_, first) = pool::execute_task(&mut c, docstrings()).await;
    succeeded(&first);
    assert!(first.used_backup);

    // The primary now hangs; after the 3 s cooldown the next task is the probe.
    pool.sim
        .set_script("rules:\n  - model: \"primary-001\"\n    fault: hang\n")
        .await;
    common::pool::wait_until(Duration::from_secs(30), "half-open", || {
        let mut c = c.clone();
        async move {
            CircuitState::try_from(llm_state(&mut c).await.circuit_state)
                == Ok(CircuitState::HalfOpen)
        }
    })
    .await;
    let mut probe = c.execute(docstrings()).await.expect("Execute").into_inner();
    let assigned = probe.message().await.expect("stream").expect("an event");
    assert!(
        matches!(&assigned.kind, Some(Kind::Assigned(a)) if !a.using_backup),
        "the probe: {assigned:?}"
    );
    common::pool::wait_until(
        Duration::from_secs(180),
        "the probe to ask the primary",
        || async { pool::sim_edit_requests(&pool.sim, "primary-001").await == 2 },
    )
    .await;
    let aider_pids = common::processes_in_dir(&worktrees);
    assert!(!aider_pids.is_empty(), "aider runs the probe");

    prog.kill();
    drop(probe);
    drop(prog);
    common::pool::wait_until(
        Duration::from_secs(60),
        "aider to die with the programmer",
        || async { common::processes_in_dir(&worktrees).is_empty() },
    )
    .await;

    // Restarted with an hour's cooldown, so that the breaker the restart re-opens is certainly
    // still open when we look, however slow the start.
    set_cooldown(&mut pool, LONG_COOLDOWN_MINUTES);
    let restarting = std::time::Instant::now();
    let _prog = pool.start_programmer("001");
    let mut c = pool.programmer_client("001").await;
    let llm = llm_state(&mut c).await;
    let since_restart = restarting.elapsed().as_millis() as u64;
    assert_eq!(
        CircuitState::try_from(llm.circuit_state),
        Ok(CircuitState::Open),
        "an unanswered probe re-opens the breaker: {llm:?}"
    );
    // A fresh cooldown, begun during the restart: no more of it is gone than the restart took
    // (give or take 2 ms of rounding); one counted from the original opening would be short by
    // the first cooldown as well.
    let full = (LONG_COOLDOWN_MINUTES * 60_000.0) as u64;
    assert!(
        llm.cooldown_remaining_ms <= full && llm.cooldown_remaining_ms + since_restart + 2 >= full,
        "a fresh cooldown starts: {llm:?}, {since_restart} ms since the restart began"
    );
    assert!(llm.using_backup);
    // The killed task's worktree and branch are gone; the first task's branch stays.
    assert_eq!(pool::task_branches(&repo), vec![first.branch.clone()]);
    assert_eq!(pool::worktree_count(&repo), 1);
    assert!(
        std::fs::read_dir(&worktrees).map_or(true, |mut d| d.next().is_none()),
        "worktrees dir emptied"
    );
}
