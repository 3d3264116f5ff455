//! The manager's API beyond routing: CancelTask (queued and running), GetTask in every state,
//! idempotent re-dispatch, INVALID_ARGUMENT naming the field, and the original HTTP JSON
//! (`curl /programmer_pool/status | jq`, `/health`). Real processes, real aider, `pas llm-sim`.

use crate::common;

use common::Sim;
use common::pool::{
    PoolOptions, TestPool, TestProgrammer, assigned_ids, collect_events, dispatch_collect,
    manager_client, pool_status, sample_dispatch, shipped_shape, state_of, wait_available,
    wait_until,
};
use pas::contract::v1::{
    CancelTaskRequest, DispatchRequest, ErrorClass, GetStatusRequest, GetTaskRequest, TaskRecord,
    TaskState, task_event::Kind,
};
use std::process::{Command, Stdio};
use std::time::Duration;

async fn get_task(
    c: &pas::contract::v1::programmer_pool_client::ProgrammerPoolClient<tonic::transport::Channel>,
    id: &str,
) -> TaskRecord {
    c.clone()
        .get_task(GetTaskRequest { task_id: id.into() })
        .await
        .unwrap_or_else(|e| panic!("GetTask {id}: {e:?}"))
        .into_inner()
}

#[tokio::test]
async fn cancel_and_get_task_for_queued_running_and_finished_tasks() {
    // One programmer with one slot and one place to wait; its models never answer.
    let pool = TestPool::with_sim(
        PoolOptions {
            programmers: vec![TestProgrammer::free("001")],
            max_concurrent_per_programmer: 1,
            max_queue_per_programmer: 1,
            // The shipped poll interval: nothing but the task itself may wake the scheduler
            // when a queued task is cancelled.
            health_check_interval_s: 30,
            request_timeout_s: 300,
            task_timeout_s: 300,
            ..PoolOptions::default()
        },
        Sim::start_with(&["--fault", "hang"]),
    );
    let repo = pool.sample_repo();
    let _p = pool.start_all_programmers();
    let _m = pool.start_manager();
    let c = manager_client(&pool).await;
    wait_available(&c, 1).await;

    let running_req = DispatchRequest {
        task_id: "running-1".into(),
        ..sample_dispatch("Add docstrings to all functions")
    };
    let running = tokio::spawn(collect_events(
        c.clone()
            .dispatch(running_req.clone())
            .await
            .expect("accepted")
            .into_inner(),
    ));
    // aider is really running: it called the (hanging) model.
    let sim = &pool.sim;
    wait_until(
        Duration::from_secs(60),
        "aider to call its model",
        || async {
            sim.requests()
                .await
                .as_array()
                .is_some_and(|a| !a.is_empty())
        },
    )
    .await;
    assert!(
        !pool.processes_in_worktrees().is_empty(),
        "aider runs in the task worktree"
    );
    let rec = get_task(&c, "running-1").await;
    assert_eq!(rec.state, TaskState::Running as i32, "{rec:#?}");
    assert_eq!(rec.programmer_id, "001");
    assert!(rec.started_ms >= rec.created_ms && rec.started_ms > 0);
    assert_eq!((rec.finished_ms, rec.result.is_none()), (0, true));
    assert_eq!(rec.task_description, "Add docstrings to all functions");
    assert_eq!(rec.files, vec!["src/module.py"]);

    // The same id while it runs: attaches to the task (its events from the first), starts
    // nothing; leaving again does not stop it.
    let mut attached = c
        .clone()
        .dispatch(running_req.clone())
        .await
        .expect("a live task id attaches")
        .into_inner();
    let first = attached.message().await.unwrap().expect("an event");
    assert_eq!(first.seq, 1, "{first:?}");
    assert!(
        matches!(first.kind, Some(Kind::Assigned(ref a)) if a.programmer_id == "001"),
        "{first:?}"
    );
    drop(attached);

    // A dry run waits behind it on the programmer (placed: RUNNING as far as the manager
    // knows), and a third task waits in the manager's queue.
    let filler = tokio::spawn(collect_events(
        c.clone()
            .dispatch(DispatchRequest {
                task_id: "filler".into(),
                dry_run: true,
                ..sample_dispatch("waits on the programmer")
            })
            .await
            .expect("accepted")
            .into_inner(),
    ));
    let c2 = c.clone();
    wait_until(Duration::from_secs(10), "filler taken by 001", || {
        let c = c2.clone();
        async move {
            let rec = get_task(&c, "filler").await;
            rec.state == TaskState::Running as i32 && rec.programmer_id == "001"
        }
    })
    .await;
    assert_eq!(pool_status(&c).await.programmers[0].in_flight, 2);
    let queued = tokio::spawn(collect_events(
        c.clone()
            .dispatch(DispatchRequest {
                task_id: "queued-1".into(),
                dry_run: true,
                ..sample_dispatch("waits")
            })
            .await
            .expect("accepted")
            .into_inner(),
    ));
    let c2 = c.clone();
    wait_until(
        Duration::from_secs(10),
        "queued-1 in the manager queue",
        || {
            let c = c2.clone();
            async move { pool_status(&c).await.manager_queue_depth == 1 }
        },
    )
    .await;
    let rec = get_task(&c, "queued-1").await;
    assert_eq!(rec.state, TaskState::Queued as i32, "{rec:#?}");
    assert_eq!((rec.programmer_id.as_str(), rec.started_ms), ("", 0));
    assert!(rec.dry_run);

    // Cancel the queued one.
    let resp = c
        .clone()
        .cancel_task(CancelTaskRequest {
            task_id: "queued-1".into(),
        })
        .await
        .expect("CancelTask")
        .into_inner();
    assert!(resp.cancelled, "{resp:#?}");
    assert_eq!(resp.previous_state, TaskState::Queued as i32);
    let (events, r) = queued.await.expect("queued task");
    assert_eq!(state_of(&r), TaskState::Cancelled, "{r:#?}");
    assert_eq!(
        ErrorClass::try_from(r.error_class),
        Ok(ErrorClass::Cancelled)
    );
    assert!(
        assigned_ids(&events).is_empty(),
        "never assigned: {events:#?}"
    );
    let rec = get_task(&c, "queued-1").await;
    assert_eq!(rec.state, TaskState::Cancelled as i32);
    assert!(rec.finished_ms > 0);
    let c2 = c.clone();
    wait_until(
        Duration::from_secs(2),
        "the cancelled task to leave the manager queue",
        || {
            let c = c2.clone();
            async move { pool_status(&c).await.manager_queue_depth == 0 }
        },
    )
    .await;

    // Cancel the running one: CANCELLED result, aider killed, nothing left in the repository.
    let resp = c
        .clone()
        .cancel_task(CancelTaskRequest {
            task_id: "running-1".into(),
        })
        .await
        .expect("CancelTask")
        .into_inner();
    assert!(resp.cancelled);
    assert_eq!(resp.previous_state, TaskState::Running as i32);
    let (_, r) = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the cancelled task ends")
        .expect("running task");
    assert_eq!(state_of(&r), TaskState::Cancelled, "{r:#?}");
    assert_eq!(r.programmer_id, "001");
    // The slot it held goes to the dry run waiting behind it.
    let (_, f) = filler.await.expect("filler");
    assert_eq!(state_of(&f), TaskState::Succeeded, "{f:#?}");
    let left = pool
        .wait_worktree_processes_gone(Duration::from_secs(15))
        .await;
    assert!(
        left.is_empty(),
        "aider still running after CancelTask: {left:?}"
    );
    let mut prog = pool.programmer_client("001").await;
    let c_prog = prog.clone();
    wait_until(
        Duration::from_secs(10),
        "the programmer to count it cancelled",
        || {
            let mut p = c_prog.clone();
            async move {
                p.get_status(GetStatusRequest {})
                    .await
                    .map(|s| {
                        let s = s.into_inner();
                        s.cancelled == 1 && s.running == 0 && s.completed == 1
                    })
                    .unwrap_or(false)
            }
        },
    )
    .await;
    let st = prog
        .get_status(GetStatusRequest {})
        .await
        .expect("GetStatus")
        .into_inner();
    assert_eq!(
        (st.completed, st.failed),
        (1, 0),
        "only the dry run completed: {st:#?}"
    );
    let branches = common::git(&repo, &["branch", "--list", "pas/*", "pas-work/*"]);
    assert!(branches.trim().is_empty(), "task branch left: {branches}");
    let rec = get_task(&c, "running-1").await;
    assert_eq!(rec.state, TaskState::Cancelled as i32);
    assert_eq!(
        state_of(rec.result.as_ref().expect("result recorded")),
        TaskState::Cancelled
    );

    // Cancelling a finished task changes nothing and says so; unknown and empty ids are errors.
    let resp = c
        .clone()
        .cancel_task(CancelTaskRequest {
            task_id: "running-1".into(),
        })
        .await
        .expect("CancelTask")
        .into_inner();
    assert!(!resp.cancelled);
    assert_eq!(resp.previous_state, TaskState::Cancelled as i32);
    let err = c
        .clone()
        .cancel_task(CancelTaskRequest {
            task_id: "nope".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = c
        .clone()
        .get_task(GetTaskRequest {
            task_id: "nope".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), tonic::Code::NotFound);
    for err in [
        c.clone()
            .cancel_task(CancelTaskRequest::default())
            .await
            .expect_err("empty"),
        c.clone()
            .get_task(GetTaskRequest::default())
            .await
            .expect_err("empty"),
    ] {
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("task_id"), "{err:?}");
    }
}

#[tokio::test]
async fn a_finished_task_id_replays_its_result_and_a_different_request_conflicts() {
    let pool = TestPool::new(PoolOptions {
        // The one real task runs on 001 (least_loaded, first of equals).
        programmers: vec![
            TestProgrammer::free("001"),
            TestProgrammer::free("002").without_aider(),
        ],
        ..PoolOptions::default()
    });
    let repo = pool.sample_repo();
    let _p = pool.start_all_programmers();
    let _m = pool.start_manager();
    let c = manager_client(&pool).await;
    wait_available(&c, 2).await;

    let req = DispatchRequest {
        task_id: "idem-1".into(),
        ..sample_dispatch("Add docstrings to all functions")
    };
    let (first_events, first) = dispatch_collect(&c, req.clone()).await;
    assert_eq!(state_of(&first), TaskState::Succeeded, "{first:#?}");
    assert!(first_events.len() > 2);
    let sim_requests = pool.sim.requests().await.as_array().map(Vec::len);

    // The same request again: the recorded events, replayed; nothing runs again.
    let (events, replayed) = dispatch_collect(&c, req.clone()).await;
    assert_eq!(events, first_events);
    assert_eq!(replayed, first);
    assert_eq!(events[0].task_id, "idem-1");
    assert_eq!(
        pool.sim.requests().await.as_array().map(Vec::len),
        sim_requests
    );
    let completed: u64 = pool_status(&c)
        .await
        .programmers
        .iter()
        .map(|p| p.completed)
        .sum();
    assert!(completed <= 1, "no second run: {completed}");

    // Same id, different request.
    let err = c
        .clone()
        .dispatch(DispatchRequest {
            task_description: "Something else".into(),
            ..req.clone()
        })
        .await
        .expect_err("the id is taken by another request");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    assert!(err.message().starts_with("task_id"), "{err:?}");
    let rec = get_task(&c, "idem-1").await;
    assert_eq!(rec.state, TaskState::Succeeded as i32);
    assert_eq!(rec.result, Some(first.clone()));
    assert!(rec.finished_ms >= rec.started_ms && rec.started_ms > 0);

    // Dry runs are recorded and replayed the same way.
    let dry = DispatchRequest {
        task_id: "idem-dry".into(),
        dry_run: true,
        ..sample_dispatch("dry")
    };
    let (first_events, a) = dispatch_collect(&c, dry.clone()).await;
    let (events, b) = dispatch_collect(&c, dry).await;
    assert_eq!((events, &a), (first_events, &b));

    // A repeat the pool would refuse today (its base branch deleted since) still replays.
    common::git(&repo, &["branch", "gone"]);
    let based = DispatchRequest {
        task_id: "idem-gone".into(),
        dry_run: true,
        base_ref: "gone".into(),
        ..sample_dispatch("dry")
    };
    let (first_events, a) = dispatch_collect(&c, based.clone()).await;
    assert_eq!(state_of(&a), TaskState::Succeeded, "{a:#?}");
    common::git(&repo, &["branch", "-D", "gone"]);
    let (events, b) = dispatch_collect(&c, based.clone()).await;
    assert_eq!((events, &a), (first_events, &b));
    let err = c
        .clone()
        .dispatch(DispatchRequest {
            task_id: "idem-new".into(),
            ..based
        })
        .await
        .expect_err("a new task on the deleted branch");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("base_ref"), "{err:?}");
}

/// `manager.task_retention_s`: a finished task is remembered that long after it ended, then
/// deleted (GetTask NOT_FOUND, and its id names a new task). That unfinished tasks are kept is
/// checked by the store's unit tests.
#[tokio::test]
async fn a_finished_task_is_forgotten_after_its_retention() {
    let pool = TestPool::new(PoolOptions {
        runs_aider: false,
        ..PoolOptions::default()
    });
    pool.edit_config(|c| c.replace("  task_lease_s:", "  task_retention_s: 1\n  task_lease_s:"));
    pool.sample_repo();
    let _p = pool.start_all_programmers();
    let _m = pool.start_manager();
    let c = manager_client(&pool).await;
    wait_available(&c, 1).await;

    let dry = DispatchRequest {
        task_id: "short-lived".into(),
        dry_run: true,
        ..sample_dispatch("dry")
    };
    let (first_events, first) = dispatch_collect(&c, dry.clone()).await;
    assert_eq!(state_of(&first), TaskState::Succeeded, "{first:#?}");
    wait_until(Duration::from_secs(60), "the task forgotten", || async {
        match c
            .clone()
            .get_task(GetTaskRequest {
                task_id: "short-lived".into(),
            })
            .await
        {
            Ok(_) => false,
            Err(status) if status.code() == tonic::Code::NotFound => true,
            Err(status) => panic!("GetTask: {status:?}"),
        }
    })
    .await;
    // The same id and request again: a new task (it runs; its events are new ones).
    let (events, again) = dispatch_collect(&c, dry).await;
    assert_eq!(state_of(&again), TaskState::Succeeded, "{again:#?}");
    assert_eq!(events.len(), first_events.len());
    assert!(
        events[0].timestamp_ms > first_events.last().unwrap().timestamp_ms,
        "new events, not a replay"
    );
}

/// `manager.task_retention_max_tasks`: past the cap, the oldest finished tasks are deleted
/// however recently they ended, and the newest stay.
#[tokio::test]
async fn past_the_record_cap_the_oldest_finished_tasks_are_forgotten() {
    let pool = TestPool::new(PoolOptions {
        runs_aider: false,
        ..PoolOptions::default()
    });
    pool.edit_config(|c| {
        c.replace(
            "  task_lease_s:",
            "  task_retention_max_tasks: 3\n  task_lease_s:",
        )
    });
    pool.sample_repo();
    let _p = pool.start_all_programmers();
    let _m = pool.start_manager();
    let c = manager_client(&pool).await;
    wait_available(&c, 1).await;

    let ids: Vec<String> = (0..6).map(|i| format!("capped-{i}")).collect();
    for id in &ids {
        let dry = DispatchRequest {
            task_id: id.clone(),
            dry_run: true,
            ..sample_dispatch("dry")
        };
        let (_, result) = dispatch_collect(&c, dry).await;
        assert_eq!(state_of(&result), TaskState::Succeeded, "{result:#?}");
    }
    let known = |id: String| {
        let c = c.clone();
        async move {
            match c.clone().get_task(GetTaskRequest { task_id: id }).await {
                Ok(_) => true,
                Err(status) if status.code() == tonic::Code::NotFound => false,
                Err(status) => panic!("GetTask: {status:?}"),
            }
        }
    };
    wait_until(
        Duration::from_secs(60),
        "the three oldest forgotten",
        || {
            let ids = ids.clone();
            let known = &known;
            async move {
                for id in &ids[..3] {
                    if known(id.clone()).await {
                        return false;
                    }
                }
                true
            }
        },
    )
    .await;
    for id in &ids[3..] {
        assert!(
            known(id.clone()).await,
            "{id}: among the newest three, kept"
        );
    }
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field_and_nothing_is_recorded() {
    let pool = TestPool::new(PoolOptions {
        runs_aider: false,
        ..PoolOptions::default()
    });
    let repo = pool.sample_repo();
    std::os::unix::fs::symlink("/etc", repo.join("escape")).expect("symlink");
    common::git(&repo, &["add", "escape"]);
    common::git(&repo, &["commit", "-q", "-m", "symlink"]);
    std::fs::create_dir_all(pool.workspace_root.join("not-a-repo")).expect("dir");
    let _p = pool.start_all_programmers();
    let _m = pool.start_manager();
    let c = manager_client(&pool).await;
    wait_available(&c, 1).await;

    let base = || DispatchRequest {
        task_id: "bad-1".into(),
        ..sample_dispatch("Add docstrings to all functions")
    };
    let cases: Vec<(&str, DispatchRequest)> = vec![
        (
            "task_description",
            DispatchRequest {
                task_description: "   ".into(),
                ..base()
            },
        ),
        (
            "task_id",
            DispatchRequest {
                task_id: "-starts-with-dash".into(),
                ..base()
            },
        ),
        (
            "task_id",
            DispatchRequest {
                task_id: "has space".into(),
                ..base()
            },
        ),
        (
            "run_id",
            DispatchRequest {
                run_id: "a/b".into(),
                ..base()
            },
        ),
        (
            "strategy",
            DispatchRequest {
                strategy: 99,
                ..base()
            },
        ),
        (
            "capabilities",
            DispatchRequest {
                capabilities: (0..17).map(|i| format!("c{i}")).collect(),
                ..base()
            },
        ),
        (
            "capabilities[1]",
            DispatchRequest {
                capabilities: vec!["fast".into(), "no spaces".into()],
                ..base()
            },
        ),
        (
            "base_ref",
            DispatchRequest {
                base_ref: "bad..ref".into(),
                ..base()
            },
        ),
        (
            "base_ref",
            DispatchRequest {
                base_ref: "no-such-branch".into(),
                ..base()
            },
        ),
        (
            "workspace",
            DispatchRequest {
                workspace: "".into(),
                ..base()
            },
        ),
        (
            "workspace",
            DispatchRequest {
                workspace: "../outside".into(),
                ..base()
            },
        ),
        (
            "workspace",
            DispatchRequest {
                workspace: "missing".into(),
                ..base()
            },
        ),
        (
            "workspace",
            DispatchRequest {
                workspace: "not-a-repo".into(),
                ..base()
            },
        ),
        (
            "files[0]",
            DispatchRequest {
                files: vec!["/etc/passwd".into()],
                ..base()
            },
        ),
        (
            "files[1]",
            DispatchRequest {
                files: vec!["src/module.py".into(), "../../x.py".into()],
                ..base()
            },
        ),
        (
            "files[0]",
            DispatchRequest {
                files: vec!["escape/passwd".into()],
                ..base()
            },
        ),
    ];
    for (field, req) in cases {
        let err = c
            .clone()
            .dispatch(req.clone())
            .await
            .expect_err(&format!("{field} should be refused: {req:?}"));
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(&format!("{field}:"))
                || err.message().starts_with(&format!("{field} ")),
            "the message names {field}: {:?}",
            err.message()
        );
    }
    // Nothing was recorded or queued for the refused requests.
    let err = c
        .clone()
        .get_task(GetTaskRequest {
            task_id: "bad-1".into(),
        })
        .await
        .expect_err("never recorded");
    assert_eq!(err.code(), tonic::Code::NotFound);
    // The valid request under the same id still runs (as a dry run here).
    let (_, r) = dispatch_collect(
        &c,
        DispatchRequest {
            dry_run: true,
            ..base()
        },
    )
    .await;
    assert_eq!(state_of(&r), TaskState::Succeeded);
}

/// `curl -sS URL | jq -e FILTER` as two processes (no shell); returns jq's output.
fn curl_jq(url: &str, filter: &str) -> String {
    let mut curl = Command::new("curl")
        .args(["-sS", "--max-time", "10", url])
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl is installed");
    let out = Command::new("jq")
        .args(["-e", filter])
        .stdin(Stdio::from(curl.stdout.take().expect("curl stdout")))
        .output()
        .expect("jq is installed");
    let curl_status = curl.wait().expect("curl exits");
    assert!(curl_status.success(), "curl {url}: {curl_status}");
    assert!(
        out.status.success(),
        "jq -e {filter:?} on {url} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn status_and_health_json_keep_the_original_fields() {
    let pool = TestPool::new(PoolOptions {
        programmers: shipped_shape(),
        runs_aider: false,
        ..PoolOptions::default()
    });
    pool.sample_repo();
    let mut programmers = pool.start_all_programmers();
    let _m = pool.start_manager();
    let c = manager_client(&pool).await;
    wait_available(&c, 10).await;
    let status_url = format!("{}/programmer_pool/status", pool.manager_url());

    // The original document's output, field for field, plus the programmers' entries.
    curl_jq(
        &status_url,
        ".pool_size == 10 and .available == 10 and .unavailable == 0 and .using_backup == 0 \
         and .total_queue_depth == 0 and (.programmers | length) == 10",
    );
    let first = curl_jq(&status_url, ".programmers[0]");
    let p: serde_json::Value = serde_json::from_str(&first).expect("JSON");
    assert_eq!(p["id"], "001");
    assert_eq!(p["port"], pool.ports["001"]);
    assert_eq!(p["primary_llm"], "ollama/primary-001");
    assert_eq!(p["backup_llm"], "ollama/backup-001");
    assert_eq!(p["current_llm"], "ollama/primary-001");
    assert_eq!(
        p["capabilities"],
        serde_json::json!(["fast", "free", "local"])
    );
    assert_eq!(p["state"], "available");
    assert_eq!(p["using_backup"], false);
    assert_eq!(p["queue_depth"], 0);
    assert_eq!(p["circuit_state"], "closed");
    curl_jq(
        &status_url,
        "[.programmers[] | select(.paid)] | map(.id) == [\"006\",\"007\",\"008\"]",
    );
    curl_jq(
        &status_url,
        ".budget.limit_usd == 50 and .budget.daily_spend_usd == 0 and .alerts == [] \
         and .budget.limit_nanousd == 50000000000 and .budget.daily_spend_nanousd == 0",
    );

    // The manager's /health: status with a pool summary.
    let health = format!("{}/health", pool.manager_url());
    curl_jq(
        &health,
        ".status == \"ok\" and .agent == \"Manager-Code\" and .pool.pool_size == 10 \
         and .pool.available == 10 and .pool.unavailable == 0 and .pool.using_backup == 0 \
         and .pool.total_queue_depth == 0",
    );
    curl_jq(&health, &format!(".port == {}", pool.manager_port));
    // A programmer's /health: the original shape.
    curl_jq(
        &format!("{}/health", pool.programmer_url("006")),
        ".status == \"ok\" and .agent == \"Prog-006\" and .programmer_id == \"006\" \
         and .llm.current == \"anthropic/claude-sonnet-4-20250514\" \
         and .llm.primary == \"anthropic/claude-sonnet-4-20250514\" \
         and .llm.backup == \"anthropic/claude-3-7-sonnet-20250219\" \
         and .llm.using_backup == false and .llm.circuit_open == false and .llm.failures == 0 \
         and (.capabilities | sort) == [\"paid\",\"premium\",\"reasoning\"]",
    );

    // Six programmers die: availability drops below 5 and the low-availability alert shows.
    for id in ["001", "002", "003", "004", "005", "006"] {
        programmers.get_mut(id).expect("guard").kill();
    }
    wait_available(&c, 4).await;
    curl_jq(
        &status_url,
        ".available == 4 and .unavailable == 6 and ([.programmers[] | select(.state == \"unavailable\")] | length) == 6 \
         and ([.alerts[] | select(.kind == \"low_availability\")] | length) == 1",
    );
    curl_jq(
        &health,
        ".pool.available == 4 and (.alerts | index(\"low_availability\")) != null",
    );
}
