//! What a programmer accepts, refuses and reports: bad requests get INVALID_ARGUMENT naming the
//! field, a full queue RESOURCE_EXHAUSTED, and the service keeps serving; waiting tasks see their
//! position; GetStatus/`/health` count what happened. Real `pas programmer`, aider, llm-sim, git.

use crate::common;

use common::pool::{self, PoolOptions, ProgrammerClient, TestPool};
use pas::contract::v1::task_event::Kind;
use pas::contract::v1::{
    ErrorClass, GetStatusRequest, ProgrammerStatus, StopTaskRequest, TaskEvent, TaskRequest,
    TaskResult, TaskState,
};
use std::time::Duration;
use tonic::Code;

fn docstrings() -> TaskRequest {
    pool::task_request(
        "sample",
        "Add docstrings to all functions",
        &["src/module.py"],
    )
}

async fn status(c: &mut ProgrammerClient) -> ProgrammerStatus {
    c.get_status(GetStatusRequest {})
        .await
        .expect("GetStatus")
        .into_inner()
}

/// An accepted task whose events are read in the background; `first` is its first event.
struct Started {
    first: TaskEvent,
    rest: tokio::task::JoinHandle<(Vec<TaskEvent>, TaskResult)>,
}

async fn start(c: &ProgrammerClient, req: TaskRequest) -> Started {
    let mut c = c.clone();
    let mut stream = c.execute(req).await.expect("Execute accepted").into_inner();
    let first = stream
        .message()
        .await
        .expect("stream")
        .expect("a first event");
    let head = first.clone();
    let rest = tokio::spawn(async move {
        let _keep = c;
        let mut events = vec![head];
        while let Some(ev) = stream.message().await.expect("stream") {
            events.push(ev);
        }
        let result = pool::check_stream(&events);
        (events, result)
    });
    Started { first, rest }
}

fn queued_position(ev: &TaskEvent) -> Option<u32> {
    match &ev.kind {
        Some(Kind::Queued(q)) => Some(q.position),
        _ => None,
    }
}

fn state(r: &TaskResult) -> TaskState {
    TaskState::try_from(r.status).unwrap_or(TaskState::Unspecified)
}

/// Each bad request is refused up-front with INVALID_ARGUMENT naming the field (traversal,
/// absolute path, symlink escapes, a workspace that is not a repository, a base ref that names no
/// commit, empty and oversize descriptions); a full queue is RESOURCE_EXHAUSTED; afterwards a good task still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_a_full_queue_are_refused_and_the_service_keeps_serving() {
    let options = PoolOptions {
        max_queue_per_programmer: 1,
        max_concurrent_per_programmer: 1,
        ..PoolOptions::default()
    };
    let pool = TestPool::new(options);
    let outside = tempfile::tempdir().expect("temp dir");
    std::fs::write(outside.path().join("secret.py"), "SECRET = 1\n").expect("write");
    let repo = pool.sample_repo();
    // Symlinks that leave the repository, committed like any file.
    std::os::unix::fs::symlink(outside.path(), repo.join("escape")).expect("symlink dir");
    std::os::unix::fs::symlink("/etc/passwd", repo.join("passwd.py")).expect("symlink file");
    common::git(&repo, &["add", "-A"]);
    common::git(&repo, &["commit", "-q", "-m", "symlinks"]);
    // A directory under the workspace root that is not a git repository.
    let plain = pool.workspace_root.join("plain");
    std::fs::create_dir_all(&plain).expect("mkdir");
    std::fs::write(plain.join("a.py"), "x = 1\n").expect("write");
    let _prog = pool.start_programmer("001");
    let mut c = pool.programmer_client("001").await;

    let files = |f: &[&str]| TaskRequest {
        files: f.iter().map(|s| s.to_string()).collect(),
        ..docstrings()
    };
    let cases: Vec<(&str, TaskRequest, &str)> = vec![
        ("traversal", files(&["../x"]), "files[0]"),
        (
            "traversal inside",
            files(&["src/../../sample2/x.py"]),
            "files[0]",
        ),
        ("absolute path", files(&["/etc/passwd"]), "files[0]"),
        (
            "symlinked directory out",
            files(&["src/module.py", "escape/secret.py"]),
            "files[1]",
        ),
        ("symlinked file out", files(&["passwd.py"]), "files[0]"),
        (
            "workspace traversal",
            TaskRequest {
                workspace: "../x".into(),
                ..docstrings()
            },
            "workspace",
        ),
        (
            "absolute workspace",
            TaskRequest {
                workspace: repo.display().to_string(),
                ..docstrings()
            },
            "workspace",
        ),
        (
            "not a repository",
            TaskRequest {
                workspace: "plain".into(),
                files: vec!["a.py".into()],
                ..docstrings()
            },
            "workspace",
        ),
        (
            "missing workspace",
            TaskRequest {
                workspace: "nope".into(),
                ..docstrings()
            },
            "workspace",
        ),
        (
            "unknown base ref",
            TaskRequest {
                base_ref: "no-such-branch".into(),
                ..docstrings()
            },
            "base_ref",
        ),
        (
            "option as base ref",
            TaskRequest {
                base_ref: "--orphan".into(),
                ..docstrings()
            },
            "base_ref",
        ),
        (
            "empty description",
            TaskRequest {
                task_description: "".into(),
                ..docstrings()
            },
            "task_description",
        ),
        (
            "blank description",
            TaskRequest {
                task_description: " \n\t".into(),
                ..docstrings()
            },
            "task_description",
        ),
        (
            "oversize description",
            TaskRequest {
                task_description: "x".repeat(64 * 1024 + 1),
                ..docstrings()
            },
            "task_description",
        ),
    ];
    for (name, req, field) in cases {
        let refused = c
            .execute(req)
            .await
            .expect_err(&format!("{name}: must be refused"));
        assert_eq!(refused.code(), Code::InvalidArgument, "{name}: {refused:?}");
        assert!(
            refused.message().starts_with(&format!("{field}: ")),
            "{name}: the message names {field}: {:?}",
            refused.message()
        );
    }
    assert!(
        !pool.workspace_root.join("plain/.git").exists(),
        "nobody ran git init in the plain directory"
    );
    let s = status(&mut c).await;
    assert_eq!(
        (s.completed, s.failed, s.cancelled, s.queue_depth, s.running),
        (0, 0, 0, 0, 0),
        "refused requests never became tasks: {s:?}"
    );

    // --- a full queue: one running on a hanging model, one waiting, the third refused ---
    pool.sim
        .set_script("rules:\n  - model: \"primary-001\"\n    fault: hang\n")
        .await;
    let running = start(&c, docstrings()).await;
    assert!(matches!(running.first.kind, Some(Kind::Assigned(_))));
    let waiting = start(&c, docstrings()).await;
    assert_eq!(queued_position(&waiting.first), Some(1));
    let full = c
        .execute(docstrings())
        .await
        .expect_err("the queue is full");
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    assert!(full.message().contains("queue"), "{:?}", full.message());
    let s = status(&mut c).await;
    assert_eq!((s.running, s.queue_depth, s.max_queue), (1, 1, 1), "{s:?}");

    // Callers give up on both (StopTask: tasks outlive their streams); the programmer frees the
    // slot and the place.
    for given_up in [running, waiting] {
        c.stop_task(StopTaskRequest {
            task_id: given_up.first.task_id.clone(),
        })
        .await
        .expect("StopTask");
        let (_, result) = given_up.rest.await.expect("stream");
        assert_eq!(state(&result), TaskState::Cancelled, "{result:#?}");
    }
    common::pool::wait_until(Duration::from_secs(20), "both cancelled", || {
        let mut c = c.clone();
        async move {
            let s = status(&mut c).await;
            s.cancelled == 2 && s.running == 0 && s.queue_depth == 0
        }
    })
    .await;

    // --- still serving: a good task succeeds ---
    pool.sim.set_script("rules: []\n").await;
    let (_, result) = pool::execute_task(&mut c, docstrings()).await;
    assert_eq!(state(&result), TaskState::Succeeded, "{result:#?}");
    assert_eq!(pool::task_branches(&repo), vec![result.branch.clone()]);
    assert_eq!(pool::worktree_count(&repo), 1);
}

/// GetStatus and `/health` count completed, failed, failovers and cancelled tasks and show the
/// queue while tasks wait; waiting tasks get Queued events with their position, which moves up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_every_outcome_and_waiting_tasks_see_their_position() {
    let options = PoolOptions {
        max_queue_per_programmer: 5,
        max_concurrent_per_programmer: 1,
        ..PoolOptions::default()
    };
    let pool = TestPool::new(options);
    let repo = pool.sample_repo();
    let _prog = pool.start_programmer("001");
    let mut c = pool.programmer_client("001").await;

    // 1. The primary fails once: failover, success on the backup.
    pool.sim
        .set_script("rules:\n  - model: \"primary-001\"\n    fault: http_500\n    times: 1\n")
        .await;
    let (_, r) = pool::execute_task(&mut c, docstrings()).await;
    assert_eq!(state(&r), TaskState::Succeeded, "{r:#?}");
    assert!(r.used_backup);

    // 2. The primary answers with an edit that does not apply: failed, no failover.
    pool.sim
        .set_script("rules:\n  - model: \"primary-001\"\n    fault: malformed\n")
        .await;
    let (_, r) = pool::execute_task(&mut c, docstrings()).await;
    assert_eq!(state(&r), TaskState::Failed, "{r:#?}");
    assert_eq!(
        ErrorClass::try_from(r.error_class),
        Ok(ErrorClass::EditFailed)
    );

    // 3. A slow task runs; three more wait behind it and see positions 1, 2, 3.
    pool.sim
        .set_script("rules:\n  - model: \"primary-001\"\n    latency_ms: 4000\n")
        .await;
    let a = start(&c, docstrings()).await;
    assert!(
        matches!(a.first.kind, Some(Kind::Assigned(_))),
        "{:?}",
        a.first
    );
    let b = start(&c, docstrings()).await;
    let cc = start(&c, docstrings()).await;
    let d = start(&c, docstrings()).await;
    assert_eq!(queued_position(&b.first), Some(1));
    assert_eq!(queued_position(&cc.first), Some(2));
    assert_eq!(queued_position(&d.first), Some(3));
    let s = status(&mut c).await;
    assert_eq!((s.running, s.queue_depth), (1, 3), "{s:?}");
    let health = pool.programmer_health("001").await;
    assert_eq!(health["queue_depth"], 3, "{health}");
    assert_eq!(health["running"], 1, "{health}");

    // The last one gives up while waiting.
    c.stop_task(StopTaskRequest {
        task_id: d.first.task_id.clone(),
    })
    .await
    .expect("StopTask");
    let (_, stopped) = d.rest.await.expect("d");
    assert_eq!(state(&stopped), TaskState::Cancelled, "{stopped:#?}");
    common::pool::wait_until(
        Duration::from_secs(20),
        "the waiting task cancelled",
        || {
            let mut c = c.clone();
            async move {
                let s = status(&mut c).await;
                s.cancelled == 1 && s.queue_depth == 2
            }
        },
    )
    .await;
    pool.sim.set_script("rules: []\n").await;

    let (_, ra) = a.rest.await.expect("a");
    let (eb, rb) = b.rest.await.expect("b");
    let (ec, rc) = cc.rest.await.expect("c");
    for r in [&ra, &rb, &rc] {
        assert_eq!(state(r), TaskState::Succeeded, "{r:#?}");
    }
    // Positions only move up, and the Queued events come before Assigned.
    let positions =
        |events: &[TaskEvent]| -> Vec<u32> { events.iter().filter_map(queued_position).collect() };
    assert_eq!(positions(&eb), vec![1]);
    assert_eq!(positions(&ec), vec![2, 1]);
    for events in [&eb, &ec] {
        let assigned = events
            .iter()
            .position(|e| matches!(e.kind, Some(Kind::Assigned(_))))
            .expect("assigned");
        assert!(
            events[..assigned]
                .iter()
                .all(|e| queued_position(e).is_some())
        );
    }

    let s = status(&mut c).await;
    assert_eq!(
        (s.completed, s.failed, s.failovers, s.cancelled),
        (4, 1, 1, 1),
        "{s:?}"
    );
    assert_eq!((s.queue_depth, s.running), (0, 0));
    let health = pool.programmer_health("001").await;
    for (key, want) in [
        ("completed", 4),
        ("failed", 1),
        ("failovers", 1),
        ("cancelled", 1),
        ("queue_depth", 0),
    ] {
        assert_eq!(health[key], want, "{key}: {health}");
    }
    assert_eq!(pool::task_branches(&repo).len(), 4);
}
