//! The manager end to end: real `pas manager` in front of real programmers.

use crate::common;
use crate::telemetry_support::scrape;

use common::pool::{PoolOptions, TestPool, TestProgrammer, wait_available, wait_until};
use pas::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use pas::contract::v1::task_event::Kind;
use pas::contract::v1::{DispatchRequest, GetTaskRequest, TaskEvent, TaskResult, TaskState};
use std::time::Duration;
use tonic::transport::Channel;

async fn manager(pool: &TestPool) -> ProgrammerPoolClient<Channel> {
    ProgrammerPoolClient::connect(pool.manager_url())
        .await
        .expect("connect to the manager")
}

async fn dispatch(
    c: &mut ProgrammerPoolClient<Channel>,
    req: DispatchRequest,
) -> (Vec<TaskEvent>, TaskResult) {
    let mut stream = c
        .dispatch(req)
        .await
        .expect("Dispatch accepted")
        .into_inner();
    let mut events = Vec::new();
    while let Some(ev) = stream.message().await.expect("stream") {
        events.push(ev);
    }
    let results: Vec<TaskResult> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Result(r)) => Some(TaskResult::clone(r)),
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 1, "exactly one result: {events:#?}");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    (events, results[0].clone())
}

fn request(description: &str) -> DispatchRequest {
    DispatchRequest {
        task_description: description.into(),
        files: vec!["src/module.py".into()],
        workspace: "sample".into(),
        run_id: "run-1".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn dispatch_routes_relays_and_records() {
    let options = PoolOptions {
        // The one real task runs on 001 (least_loaded, first of equals).
        programmers: vec![
            TestProgrammer::free("001"),
            TestProgrammer::free("002").without_aider(),
            TestProgrammer::paid("003").without_aider(),
        ],
        ..Default::default()
    };
    let pool = TestPool::new(options);
    pool.sample_repo();
    let _p: Vec<_> = ["001", "002", "003"]
        .iter()
        .map(|id| pool.start_programmer(id))
        .collect();
    let _m = pool.start_manager();
    let mut c = manager(&pool).await;
    wait_available(&c, 3).await;
    // A programmer's own aider_start wins over aider.start (the suite's mode).
    for (p, start) in [
        (&_p[0], common::aider_start()),
        (&_p[1], "cold"),
        (&_p[2], "cold"),
    ] {
        assert_eq!(p.started_aider(), start, "{}", p.name);
    }

    // A dry run is validated and routed, nothing runs.
    let (events, result) = dispatch(
        &mut c,
        DispatchRequest {
            dry_run: true,
            capabilities: vec!["fast".into()],
            ..request("dry")
        },
    )
    .await;
    assert_eq!(TaskState::try_from(result.status), Ok(TaskState::Succeeded));
    assert!(result.dry_run);
    assert!(
        ["001", "002"].contains(&result.programmer_id.as_str()),
        "fast goes to a free programmer"
    );
    let assigned = events
        .iter()
        .find_map(|e| match &e.kind {
            Some(Kind::Assigned(a)) => Some(a.clone()),
            _ => None,
        })
        .expect("assigned");
    assert_eq!(assigned.strategy, "least_loaded");

    // Dry runs one after another: each is recorded with where it ran, though a dry run's record
    // and placement are committed with its events rather than before its Execute. So they take
    // fewer than two store commits each (a real task takes two at the least: its placement
    // before Execute, its result), with room for a loaded machine that splits some task's first
    // event from its result and for the checkpoint thread's own writes.
    const DRY_RUNS: usize = 20;
    let commits = "pas_task_store_commits_total";
    let before = scrape(&pool.manager_url()).await.value(commits, &[]);
    let mut ran = Vec::new();
    for _ in 0..DRY_RUNS {
        let (events, result) = dispatch(
            &mut c,
            DispatchRequest {
                dry_run: true,
                ..request("dry, again")
            },
        )
        .await;
        ran.push((events[0].task_id.clone(), result.programmer_id));
    }
    let spent = scrape(&pool.manager_url()).await.value(commits, &[]) - before;
    assert!(
        spent < 1.5 * DRY_RUNS as f64,
        "{spent} commits for {DRY_RUNS} dry runs"
    );
    for (task_id, programmer) in ran {
        let record = c
            .get_task(GetTaskRequest {
                task_id: task_id.clone(),
            })
            .await
            .expect("GetTask")
            .into_inner();
        assert_eq!(TaskState::try_from(record.state), Ok(TaskState::Succeeded));
        assert_eq!(record.programmer_id, programmer, "{task_id}");
        assert!(
            record.started_ms > 0 && record.finished_ms >= record.started_ms,
            "{record:#?}"
        );
    }

    // A real task: edited on a branch, recorded.
    let (_, result) = dispatch(
        &mut c,
        DispatchRequest {
            task_id: "task-real-1".into(),
            ..request("Add docstrings to all functions")
        },
    )
    .await;
    assert_eq!(
        TaskState::try_from(result.status),
        Ok(TaskState::Succeeded),
        "{result:#?}"
    );
    assert!(!result.diff.is_empty());
    let record = c
        .get_task(GetTaskRequest {
            task_id: "task-real-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(TaskState::try_from(record.state), Ok(TaskState::Succeeded));
    assert_eq!(record.result.unwrap().commit, result.commit);

    // Premium work goes only to the paid programmer.
    let (_, result) = dispatch(
        &mut c,
        DispatchRequest {
            dry_run: true,
            capabilities: vec!["premium".into()],
            ..request("premium")
        },
    )
    .await;
    assert_eq!(result.programmer_id, "003");

    // No programmer has "gpu": FAILED_PRECONDITION before any stream.
    let err = c
        .dispatch(DispatchRequest {
            capabilities: vec!["gpu".into()],
            ..request("x")
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");

    // The original status JSON.
    let json: serde_json::Value =
        reqwest::get(format!("{}/programmer_pool/status", pool.manager_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    for key in [
        "pool_size",
        "available",
        "unavailable",
        "using_backup",
        "total_queue_depth",
        "programmers",
    ] {
        assert!(json.get(key).is_some(), "{key} in {json}");
    }
    assert_eq!(json["pool_size"], 3);
    assert_eq!(json["available"], 3);
}

/// `manager.runtimes: 2`: two one-thread runtimes share the manager's port, each accepting its own
/// share of the connections and opening its own channels to the programmers. Callers on sixteen
/// connections of their own are all served (the kernel spreads connections over the two sockets by
/// address and port: all sixteen on one socket has a chance of 2 in 65,536), each task is recorded
/// with its result, the second runtime opens channels of its own, and a second manager started
/// on the same port is refused there instead of joining the port and taking a share of the callers;
/// SIGTERM then stops the manager, both runtimes, with exit code 0.
#[tokio::test]
async fn two_runtimes_share_the_port_and_a_second_manager_cannot_join_it() {
    let options = PoolOptions {
        programmers: vec![TestProgrammer::free("001"), TestProgrammer::free("002")],
        max_concurrent_per_programmer: 8,
        runs_aider: false,
        ..Default::default()
    };
    let pool = TestPool::new(options);
    pool.edit_config(|yaml| yaml.replacen("manager:\n", "manager:\n  runtimes: 2\n", 1));
    pool.sample_repo();
    let _p = pool.start_programmers(&["001", "002"]);
    let mut m = pool.start_manager();
    let mut c = manager(&pool).await;
    wait_available(&c, 2).await;

    let callers: Vec<_> = (0..16)
        .map(|i| {
            let url = pool.manager_url();
            tokio::spawn(async move {
                // A connection of its own (a new channel), not a stream on a shared one.
                let mut c = ProgrammerPoolClient::connect(url).await.expect("connect");
                let req = DispatchRequest {
                    task_id: format!("runtimes-{i}"),
                    dry_run: true,
                    ..request("on a connection of its own")
                };
                dispatch(&mut c, req).await.1
            })
        })
        .collect();
    for (i, caller) in callers.into_iter().enumerate() {
        let result = caller.await.expect("caller");
        assert_eq!(
            TaskState::try_from(result.status),
            Ok(TaskState::Succeeded),
            "{result:?}"
        );
        let record = c
            .get_task(GetTaskRequest {
                task_id: format!("runtimes-{i}"),
            })
            .await
            .expect("GetTask")
            .into_inner();
        assert_eq!(
            TaskState::try_from(record.state),
            Ok(TaskState::Succeeded),
            "{record:?}"
        );
    }
    // The main runtime's channels exist from the start; the second runtime opened its own for
    // the tasks its callers sent.
    let opened = |log: &str| {
        log.lines().any(|l| {
            l.contains("channel to the programmer opened by a serving runtime")
                && l.contains("runtime=1")
        })
    };
    assert!(opened(&m.log_text()), "{}", m.log_text());

    let out = pool.run_until_exit(&["manager"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second manager ran: {stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{}", pool.manager_port)),
        "{stderr}"
    );
    // The first serves on.
    let (_, result) = dispatch(
        &mut c,
        DispatchRequest {
            dry_run: true,
            ..request("after a second manager was refused")
        },
    )
    .await;
    assert_eq!(TaskState::try_from(result.status), Ok(TaskState::Succeeded));

    // SIGTERM stops both runtimes: the main one waits for the other's thread, then exits 0.
    drop(c);
    m.terminate();
    wait_until(
        Duration::from_secs(60),
        "the manager to exit on SIGTERM",
        || {
            let exited = matches!(m.child.try_wait(), Ok(Some(_)));
            async move { exited }
        },
    )
    .await;
    let status = m.child.try_wait().expect("exit status").expect("exited");
    assert!(status.success(), "{status:?}\n{}", m.log_text());
}
