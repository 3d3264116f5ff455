//! How a task ends early, and how the programmer itself ends: a caller that goes away mid-stream
//! (the task goes on until its lease expires), StopTask,
//! the task deadline, and a graceful SIGTERM. Real `pas programmer`, real aider, llm-sim, git.
//! Every way out must leave no aider process, no worktree and no task branch behind.

use crate::common;

use common::pool::{self, PoolOptions, TestPool, TestProgrammer};
use pas::contract::v1::task_event::Kind;
use pas::contract::v1::{
    ErrorClass, GetStatusRequest, StopTaskRequest, TaskEvent, TaskRequest, TaskState,
    WatchTaskRequest,
};
use std::path::Path;
use std::time::Duration;

fn docstrings() -> TaskRequest {
    pool::task_request(
        "sample",
        "Add docstrings to all functions",
        &["src/module.py"],
    )
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// What is left of a task: processes running in `worktrees`, entries in it, worktrees of `repo`
/// beside its main one, task branches (empty: nothing).
fn leftovers(worktrees: &Path, repo: &Path) -> Vec<String> {
    let mut left = Vec::new();
    let pids = common::processes_in_dir(worktrees);
    if !pids.is_empty() {
        left.push(format!("processes {pids:?}"));
    }
    let entries: Vec<_> = std::fs::read_dir(worktrees)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    if !entries.is_empty() {
        left.push(format!("entries {entries:?}"));
    }
    let worktrees_of_repo = pool::worktree_count(repo);
    if worktrees_of_repo != 1 {
        left.push(format!("{worktrees_of_repo} worktrees of the repository"));
    }
    let branches = pool::task_branches(repo);
    if !branches.is_empty() {
        left.push(format!("branches {branches:?}"));
    }
    left
}

/// No process runs in `worktrees`, the directory is empty, the repository has only its main
/// worktree and no task branch — once the programmer has cleaned up (a killed process group
/// reaped, git's worktree and branch removed: slower on two busy cores); a failure names what
/// is left.
async fn assert_nothing_left(worktrees: &Path, repo: &Path, what: &str) {
    common::pool::wait_until_none_left(Duration::from_secs(60), what, || async {
        leftovers(worktrees, repo)
    })
    .await;
}

/// A caller leaving mid-stream does not stop the task: following it again with WatchTask from
/// the last seq seen continues exactly there (no gap, no repeat). Once nobody has followed it for
/// the lease (here the one a re-read file gave the running programmer), the programmer stops it:
/// the whole aider process group is killed, the worktree and the task branch are removed, and the
/// result — still there to replay — says it was handed back because the lease expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_outlives_its_caller_until_the_lease_expires_then_nothing_is_left() {
    // A slow stream: 4 characters every 400 ms.
    let sim = common::Sim::start_with_script(
        "rules:\n  - model: \"primary-001\"\n    chunk_delay_ms: 400\n    chunk_chars: 4\n",
    );
    // Started with an hour's lease; the file then says 3 s, which the programmer applies to the
    // tasks that start afterwards without a restart.
    let options = PoolOptions {
        task_lease_s: 3600,
        ..PoolOptions::default()
    };
    let pool = TestPool::with_sim(options, sim);
    let repo = pool.sample_repo();
    let prog = pool.start_programmer("001");
    pool.edit_config(|text| text.replace("task_lease_s: 3600", "task_lease_s: 3"));
    prog.hang_up();
    prog.wait_log("manager.task_lease_s", 1).await;
    let worktrees = pool.worktrees_dir("001");
    let mut c = pool.programmer_client("001").await;
    let request = TaskRequest {
        task_id: "outlives-1".into(),
        ..docstrings()
    };
    let task_id = request.task_id.clone();
    let mut stream = c.execute(request).await.expect("Execute").into_inner();

    // Read until the LLM's reply is being streamed through aider.
    let mut events: Vec<TaskEvent> = Vec::new();
    let streaming = tokio::time::timeout(Duration::from_secs(180), async {
        while let Some(ev) = stream.message().await.expect("stream") {
            events.push(ev);
            if pool::output_text(&events).contains("I will apply") {
                return;
            }
        }
        panic!("the task ended before streaming: {events:#?}");
    })
    .await;
    assert!(streaming.is_ok(), "no streamed reply: {events:#?}");
    let aider_pids = common::processes_in_dir(&worktrees);
    assert!(
        !aider_pids.is_empty(),
        "aider runs in the task worktree while streaming"
    );
    drop(stream);

    // Back within the lease: the task still runs, and the stream continues where it was.
    let last = events.last().expect("events").seq;
    let mut again = c
        .watch_task(WatchTaskRequest {
            task_id: task_id.clone(),
            after_seq: last,
        })
        .await
        .expect("WatchTask")
        .into_inner();
    let next = loop {
        let ev = again.message().await.expect("watch").expect("an event");
        if !matches!(ev.kind, Some(Kind::Heartbeat(_))) {
            break ev;
        }
    };
    assert_eq!(next.seq, last + 1, "{next:?}");
    assert!(
        aider_pids.iter().all(|&pid| alive(pid)),
        "aider kept running while nobody listened"
    );
    drop(again);
    drop(c);

    // Nobody follows it for the lease: stopped, nothing left.
    assert_nothing_left(&worktrees, &repo, "cleanup after the lease expired").await;
    for pid in aider_pids {
        assert!(!alive(pid), "aider process {pid} survived the lease");
    }
    let mut c = pool.programmer_client("001").await;
    let replay = c
        .watch_task(WatchTaskRequest {
            task_id: task_id.clone(),
            after_seq: 0,
        })
        .await
        .expect("WatchTask after the end")
        .into_inner();
    let (replayed, result) = pool::collect_events(replay).await;
    assert_eq!(
        replayed.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=replayed.len() as u64).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert_eq!(
        result.error_class,
        ErrorClass::HandedBack as i32,
        "{result:?}"
    );
    assert!(result.error_message.contains("lease expired"), "{result:?}");
    let s = c
        .get_status(GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.completed, s.running), (0, 0), "{s:?}");
    // The commit-message request never came: aider died mid-reply.
    let kinds: Vec<_> = pool::sim_requests(&pool.sim).await;
    assert!(
        kinds.iter().all(|(_, kind, _)| kind != "commit_message"),
        "{kinds:?}"
    );
    // A stop is not a verdict on the primary.
    assert_eq!(s.llm.expect("llm").failures, 0);
}

/// A task's lease is the one its Execute carries (`lease_s`: the manager's, as it accepted the
/// task), not the programmer's own: here 3 s against the file's hour, so both ends give the task
/// up together whenever each re-reads a changed lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_held_for_the_lease_its_execute_carries() {
    let sim = common::Sim::start_with_script("default:\n  fault: hang\n");
    let options = PoolOptions {
        task_lease_s: 3600,
        request_timeout_s: 600,
        task_timeout_s: 600,
        ..PoolOptions::default()
    };
    let pool = TestPool::with_sim(options, sim);
    let repo = pool.sample_repo();
    let prog = pool.start_programmer("001");
    let worktrees = pool.worktrees_dir("001");
    let mut c = pool.programmer_client("001").await;
    let request = TaskRequest {
        task_id: "carried-lease".into(),
        lease_s: 3,
        ..docstrings()
    };
    let stream = c.execute(request).await.expect("Execute").into_inner();
    prog.wait_log("aider started", 1).await;
    drop(stream);
    drop(c);
    assert_nothing_left(&worktrees, &repo, "cleanup after the carried lease").await;
    prog.wait_log("lease expired", 1).await;
    let log = prog.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("no manager followed the task") && l.contains("lease_s=3")),
        "{log}"
    );
}

/// StopTask stops a running task at once: aider killed, worktree and branch removed, the
/// result CANCELLED, and the cancellation counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_task_kills_aider_and_removes_the_worktree() {
    let sim = common::Sim::start_with_script(
        "rules:\n  - model: \"primary-001\"\n    chunk_delay_ms: 400\n    chunk_chars: 4\n",
    );
    let pool = TestPool::with_sim(PoolOptions::default(), sim);
    let repo = pool.sample_repo();
    let _prog = pool.start_programmer("001");
    let worktrees = pool.worktrees_dir("001");
    let mut c = pool.programmer_client("001").await;
    let request = TaskRequest {
        task_id: "cancelled-1".into(),
        ..docstrings()
    };
    let task_id = request.task_id.clone();
    let mut stream = c.execute(request).await.expect("Execute").into_inner();
    let mut events: Vec<TaskEvent> = Vec::new();
    while let Some(ev) = stream.message().await.expect("stream") {
        events.push(ev);
        if pool::output_text(&events).contains("I will apply") {
            break;
        }
    }
    let aider_pids = common::processes_in_dir(&worktrees);
    assert!(!aider_pids.is_empty(), "aider runs: {events:#?}");
    let answer = c
        .stop_task(StopTaskRequest {
            task_id: task_id.clone(),
        })
        .await
        .expect("StopTask")
        .into_inner();
    assert!(answer.stopped, "{answer:?}");
    while let Some(ev) = stream.message().await.expect("stream") {
        events.push(ev);
    }
    let result = pool::check_stream(&events);
    assert_eq!(result.status, TaskState::Cancelled as i32, "{result:?}");
    assert_nothing_left(&worktrees, &repo, "cleanup after StopTask").await;
    for pid in aider_pids {
        assert!(!alive(pid), "aider process {pid} survived the cancellation");
    }
    let s = c
        .get_status(GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s.cancelled, s.completed, s.failed), (1, 0, 0), "{s:?}");
    let again = c
        .stop_task(StopTaskRequest { task_id })
        .await
        .expect("StopTask again")
        .into_inner();
    assert!(!again.stopped, "a finished task: {again:?}");
}

/// The task deadline (`timeout_s` in the request) ends a task whose model never answers with
/// TIMED_OUT, both while aider is still starting (2 s) and while it waits on the hanging model;
/// nothing is left behind and the breaker counts nothing.
///
/// How long aider takes to reach the model depends on the machine's load (≈4 s alone, much more
/// on two busy cores), so the second case is not given one fixed deadline: it is tried with 20 s,
/// then doubled, until a deadline hits while the simulator holds aider's request (each try must
/// end TIMED_OUT all the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_deadline_ends_a_hanging_task_with_timed_out_and_nothing_left() {
    let sim = common::Sim::start_with_script(
        "rules:\n  - model: \"primary-*\"\n    fault: hang\n  - model: \"backup-*\"\n    fault: hang\n",
    );
    let options = PoolOptions {
        programmers: vec![TestProgrammer::free("001"), TestProgrammer::free("002")],
        failure_threshold: 1,
        // aider's read timeout beyond the longest deadline, so the hanging request is never
        // abandoned and re-sent by aider before our deadline ends it.
        request_timeout_s: 300,
        // and the job limit beyond the longest deadline tried.
        task_timeout_s: 300,
        ..PoolOptions::default()
    };
    let pool = TestPool::with_sim(options, sim);
    let repo = pool.sample_repo();
    let _p1 = pool.start_programmer("001");
    let _p2 = pool.start_programmer("002");
    let mut c1 = pool.programmer_client("001").await;
    let mut c2 = pool.programmer_client("002").await;

    /// Runs one task with deadline `secs` and checks it ended TIMED_OUT by that deadline,
    /// with one attempt, no failover and nothing left behind.
    async fn timed_out_task(
        pool: &TestPool,
        repo: &Path,
        c: &mut pool::ProgrammerClient,
        id: &str,
        secs: u64,
    ) {
        let req = TaskRequest {
            timeout_s: u32::try_from(secs).expect("a deadline in seconds"),
            ..docstrings()
        };
        let (events, result) = pool::execute_task(c, req).await;
        assert_eq!(
            TaskState::try_from(result.status),
            Ok(TaskState::TimedOut),
            "{id}: {result:#?}"
        );
        assert_eq!(
            ErrorClass::try_from(result.error_class),
            Ok(ErrorClass::Deadline)
        );
        assert!(
            result.error_message.contains(&format!("{secs}s")),
            "{id}: {}",
            result.error_message
        );
        assert!(
            result.duration_ms >= secs * 1000,
            "{id}: ended before its deadline: {result:#?}"
        );
        assert_eq!(result.attempts.len(), 1, "{id}");
        assert!(pool::failovers(&events).is_empty(), "{id}: no failover");
        assert_nothing_left(&pool.worktrees_dir(id), repo, "cleanup after the deadline").await;
    }

    // 001: 2 s, before aider (≈4 s start-up) reaches the model. 002: a deadline that hits after
    // aider has sent its request to the hanging model (see above).
    let waiting_on_the_model = async {
        let mut tries = 0u64;
        for secs in [20, 40, 80, 160] {
            tries += 1;
            let before = pool::sim_edit_requests(&pool.sim, "primary-002").await;
            timed_out_task(&pool, &repo, &mut c2, "002", secs).await;
            let after = pool::sim_edit_requests(&pool.sim, "primary-002").await;
            assert!(after - before <= 1, "aider re-sent the hanging request");
            if after - before == 1 {
                return tries;
            }
        }
        panic!("002's aider never reached the model within a 160 s deadline");
    };
    let (_, tries) = tokio::join!(
        timed_out_task(&pool, &repo, &mut c1, "001", 2),
        waiting_on_the_model
    );
    for (c, failed) in [(&mut c1, 1), (&mut c2, tries)] {
        let s = c
            .get_status(GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!((s.failed, s.running), (failed, 0), "{s:?}");
        let llm = s.llm.expect("llm");
        assert_eq!(llm.failures, 0, "a deadline is not a verdict: {llm:?}");
        assert!(!llm.circuit_open);
    }
}

/// SIGTERM: the programmer stops accepting (Execute → UNAVAILABLE, grpc health NOT_SERVING,
/// `/health` says draining), lets the running task finish and deliver its result, and exits 0
/// even with an idle client connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_finishes_the_running_task_and_exits_0() {
    // Each reply starts after 3 s, so the task is still running when SIGTERM arrives.
    let sim = common::Sim::start_with_script(
        "rules:\n  - model: \"primary-001\"\n    latency_ms: 3000\n",
    );
    let pool = TestPool::with_sim(PoolOptions::default(), sim);
    let repo = pool.sample_repo();
    let mut prog = pool.start_programmer("001");
    let mut c = pool.programmer_client("001").await;
    let stream = c.execute(docstrings()).await.expect("Execute").into_inner();
    let running = tokio::spawn(pool::collect_task(stream));
    common::pool::wait_until(
        Duration::from_secs(180),
        "aider to ask the model",
        || async { pool::sim_edit_requests(&pool.sim, "primary-001").await == 1 },
    )
    .await;

    prog.terminate();
    common::pool::wait_until(Duration::from_secs(10), "/health: draining", || async {
        pool.programmer_health("001").await["status"] == "draining"
    })
    .await;
    let refused = c
        .execute(docstrings())
        .await
        .expect_err("a draining programmer takes no new task");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Channel::from_shared(pool.programmer_url("001"))
            .expect("url")
            .connect()
            .await
            .expect("connect"),
    );
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "pas.v1.Programmer".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(
        serving.status(),
        tonic_health::pb::health_check_response::ServingStatus::NotServing
    );

    let (events, result) = running.await.expect("the running task");
    assert_eq!(
        TaskState::try_from(result.status),
        Ok(TaskState::Succeeded),
        "the running task finished: {result:#?}"
    );
    assert!(matches!(events[0].kind, Some(Kind::Assigned(_))));
    let status = prog
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no exit after the drain\n{}", prog.log_text()));
    assert_eq!(status.code(), Some(0), "{}", prog.log_text());
    drop(c);
    drop(health);
    assert_eq!(pool::task_branches(&repo), vec![result.branch.clone()]);
    assert_eq!(pool::worktree_count(&repo), 1);
    assert!(common::processes_in_dir(&pool.worktrees_dir("001")).is_empty());
}
