//! Overload through the real manager: a burst past capacity is refused at once, exactly, with
//! `google.rpc.RetryInfo`, records nothing, leaves no zombie, and never starves health; per-caller
//! limits refuse one caller while another is admitted; an aider that needs more memory than its
//! ceiling fails its own task and nothing else.

use crate::common;

use common::pool::{
    ChildGuard, PoolOptions, TestPool, TestProgrammer, admit, collect_events, free_port,
    manager_client, pool_status, sample_dispatch, state_of, wait_available, wait_until,
};
use common::secure::{self, with_token};
use common::{Sim, zombie_children};
use pas::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use pas::contract::v1::{
    CancelTaskRequest, DispatchRequest, ErrorClass, GetTaskRequest, TaskState,
};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

/// The value of the counter `name{labels}` in the manager's /metrics (0 when absent).
async fn counter(pool: &TestPool, series: &str) -> u64 {
    let text = reqwest::get(format!("{}/metrics", pool.manager_url()))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Programmers whose model never answers, one running and one waiting task each at most.
fn hanging_pool(programmers: &[&str], manager_max_queue: u32) -> TestPool {
    let sim = Sim::start_with_script("default:\n  fault: hang\n");
    TestPool::with_sim(
        PoolOptions {
            programmers: programmers
                .iter()
                .map(|id| TestProgrammer::free(id))
                .collect(),
            max_concurrent_per_programmer: 1,
            max_queue_per_programmer: 1,
            manager_max_queue,
            request_timeout_s: 600,
            task_timeout_s: 600,
            queue_timeout_s: 600,
            ..PoolOptions::default()
        },
        sim,
    )
}

#[tokio::test]
async fn a_burst_past_capacity_is_refused_at_once_exactly_and_cheaply() {
    let pool = hanging_pool(&["001", "002"], 3);
    pool.sample_repo();
    let _programmers = pool.start_all_programmers();
    // The probes are also served on a port of their own (its own thread).
    let admin_port = free_port();
    let manager: ChildGuard =
        pool.start_manager_with_args(&["--admin-port", &admin_port.to_string()]);
    let admin_url = format!("http://127.0.0.1:{admin_port}");
    let c = manager_client(&pool).await;
    wait_available(&c, 2).await;

    // Fill both programmers (one running, one waiting each): the tasks hang at the model.
    for i in 0..4 {
        let req = DispatchRequest {
            task_id: format!("fill-{i}"),
            ..sample_dispatch(&format!("Add docstrings (fill {i})"))
        };
        admit(&c, tonic::Request::new(req))
            .await
            .expect("room on a programmer");
    }
    let c2 = c.clone();
    wait_until(
        Duration::from_secs(30),
        "4 tasks placed on 2 programmers",
        || {
            let c = c2.clone();
            async move {
                let s = pool_status(&c).await;
                s.manager_queue_depth == 0 && s.programmers.iter().all(|p| p.in_flight == 2)
            }
        },
    )
    .await;
    let refusals_before = counter(
        &pool,
        "pas_admission_refusals_total{limit=\"manager.max_queue\"}",
    )
    .await;

    // The burst: 60 callers at once against a pool with room for 3 more (the manager's queue).
    const BURST: usize = 60;
    let mut health = HealthClient::new(
        Channel::from_shared(pool.manager_url())
            .expect("url")
            .connect()
            .await
            .expect("health channel"),
    );
    let mut admin_health = HealthClient::new(
        Channel::from_shared(admin_url.clone())
            .expect("url")
            .connect()
            .await
            .expect("admin health channel"),
    );
    let calls: Vec<_> = (0..BURST)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let req = DispatchRequest {
                    task_id: format!("burst-{i:02}"),
                    ..sample_dispatch(&format!("Add docstrings (burst {i})"))
                };
                (i, admit(&c, tonic::Request::new(req)).await)
            })
        })
        .collect();
    // Health is answered while the burst is being refused, on both ports.
    for health in [&mut health, &mut admin_health] {
        let during = health
            .check(HealthCheckRequest {
                service: "pas.v1.ProgrammerPool".into(),
            })
            .await
            .expect("health during the burst")
            .into_inner();
        assert_eq!(during.status(), ServingStatus::Serving);
    }

    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    for call in calls {
        let (i, outcome) = call.await.expect("join");
        match outcome {
            Ok(()) => admitted.push(i),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    status.message().starts_with("manager.max_queue: "),
                    "the refusal names the limit it hit: {status:?}"
                );
                let retry = status
                    .get_details_retry_info()
                    .and_then(|r| r.retry_delay)
                    .unwrap_or_else(|| panic!("RetryInfo in the details: {status:?}"));
                assert!(retry > Duration::ZERO, "{retry:?}");
                refused.push(i);
            }
        }
    }
    assert_eq!(
        admitted.len(),
        3,
        "exactly the room left is admitted: {admitted:?}"
    );
    assert_eq!(refused.len(), BURST - 3);
    let s = pool_status(&c).await;
    assert_eq!(s.manager_queue_depth, 3, "{s:#?}");

    // Nothing was recorded for a refused call: its id is unknown (and free to retry).
    for i in &refused {
        let err = c
            .clone()
            .get_task(GetTaskRequest {
                task_id: format!("burst-{i:02}"),
            })
            .await
            .expect_err("a refused task is not recorded");
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
    for i in &admitted {
        let rec = c
            .clone()
            .get_task(GetTaskRequest {
                task_id: format!("burst-{i:02}"),
            })
            .await
            .expect("an admitted task is recorded")
            .into_inner();
        assert_eq!(rec.state(), TaskState::Queued);
    }
    // Counted by limit in /metrics; one workspace verification for the whole run (the first
    // task's), whatever the burst did.
    let refusals = counter(
        &pool,
        "pas_admission_refusals_total{limit=\"manager.max_queue\"}",
    )
    .await;
    assert_eq!(refusals - refusals_before, (BURST - 3) as u64);
    assert_eq!(counter(&pool, "pas_workspace_verifications_total").await, 1);

    let after = health
        .check(HealthCheckRequest {
            service: "pas.v1.ProgrammerPool".into(),
        })
        .await
        .expect("health after the burst")
        .into_inner();
    assert_eq!(after.status(), ServingStatus::Serving);
    // The admin port answers the probes and nothing else: the JSON health and metrics (the same
    // counters as the main port), but no task calls.
    let health_json: serde_json::Value = reqwest::get(format!("{admin_url}/health"))
        .await
        .expect("GET /health on the admin port")
        .json()
        .await
        .expect("JSON");
    assert_eq!(health_json["status"], "ok", "{health_json}");
    let metrics = reqwest::get(format!("{admin_url}/metrics"))
        .await
        .expect("GET /metrics on the admin port")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("pas_admission_refusals_total{limit=\"manager.max_queue\"}"),
        "{metrics}"
    );
    let mut admin_tasks = ProgrammerPoolClient::new(
        Channel::from_shared(admin_url)
            .expect("url")
            .connect()
            .await
            .expect("admin channel"),
    );
    let err = admin_tasks
        .get_task(GetTaskRequest {
            task_id: "burst-00".into(),
        })
        .await
        .expect_err("no task calls on the admin port");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    wait_until(
        Duration::from_secs(10),
        "no zombie child of the manager",
        || {
            let pid = manager.pid();
            async move { zombie_children(pid).is_empty() }
        },
    )
    .await;
}

#[tokio::test]
async fn a_caller_past_its_task_limit_is_refused_while_another_is_admitted() {
    let pool = hanging_pool(&["001", "002"], 10);
    pool.sample_repo();
    let s = secure::secure(&pool, "[]");
    pool.append_config("limits:\n  per_caller_max_tasks: 2\n");
    let _programmers = pool.start_all_programmers();
    let _manager = pool.start_manager();
    let channel = secure::tls_channel(pool.manager_port, &s.files("client"), false)
        .await
        .expect("manager channel");
    let c = ProgrammerPoolClient::new(channel);
    let dispatch = |id: &str| {
        with_token(
            DispatchRequest {
                task_id: id.into(),
                ..sample_dispatch(&format!("Add docstrings ({id})"))
            },
            &s.dispatch,
        )
    };
    admit(&c, dispatch("director-1")).await.expect("first task");
    admit(&c, dispatch("director-2"))
        .await
        .expect("second task");
    let refused = admit(&c, dispatch("director-3"))
        .await
        .expect_err("a third task is past the caller's limit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .starts_with("limits.per_caller_max_tasks: token director already has 2"),
        "{refused:?}"
    );
    assert!(refused.get_details_retry_info().is_some(), "{refused:?}");

    // Another caller is not affected.
    let other = with_token(
        DispatchRequest {
            task_id: "intruder-1".into(),
            ..sample_dispatch("Add docstrings (another caller)")
        },
        &s.other,
    );
    admit(&c, other).await.expect("another caller's task");

    // A task that ends gives its slot back.
    c.clone()
        .cancel_task(with_token(
            CancelTaskRequest {
                task_id: "director-1".into(),
            },
            &s.dispatch,
        ))
        .await
        .expect("cancel");
    let c2 = c.clone();
    let token = s.dispatch.clone();
    wait_until(Duration::from_secs(30), "director-1 cancelled", || {
        let (c, token) = (c2.clone(), token.clone());
        async move {
            c.clone()
                .get_task(with_token(
                    GetTaskRequest {
                        task_id: "director-1".into(),
                    },
                    &token,
                ))
                .await
                .is_ok_and(|r| r.into_inner().state() == TaskState::Cancelled)
        }
    })
    .await;
    let c2 = c.clone();
    let token = s.dispatch.clone();
    // The slot comes back when the task's life has ended, just after its result is recorded.
    wait_until(
        Duration::from_secs(30),
        "a third task of director admitted",
        || {
            let (c, token) = (c2.clone(), token.clone());
            async move {
                let req = with_token(
                    DispatchRequest {
                        task_id: "director-3".into(),
                        ..sample_dispatch("Add docstrings (director-3)")
                    },
                    &token,
                );
                match admit(&c, req).await {
                    Ok(()) => true,
                    Err(e) if e.code() == Code::ResourceExhausted => false,
                    Err(e) => panic!("{e:?}"),
                }
            }
        },
    )
    .await;
}

#[tokio::test]
async fn an_aider_past_its_memory_ceiling_fails_its_task_and_nothing_else() {
    // 001's aider may use 100 MiB: loading litellm for the LLM call needs more. 002 has the
    // default ceiling. Both take a real task at the same time.
    let pool = TestPool::new(PoolOptions {
        programmers: vec![
            TestProgrammer {
                memory_limit_mb: Some(100),
                ..TestProgrammer::free("001")
            },
            TestProgrammer::free("002"),
        ],
        strategy: "capability_match".into(),
        ..PoolOptions::default()
    });
    pool.sample_repo();
    pool.append_config("capability_routing:\n  tight: [\"001\"]\n  roomy: [\"002\"]\n");
    let _programmers = pool.start_all_programmers();
    let _manager = pool.start_manager();
    let c = manager_client(&pool).await;
    wait_available(&c, 2).await;
    let task = |group: &str| {
        let c = c.clone();
        let req = DispatchRequest {
            task_id: format!("task-{group}"),
            capabilities: vec![group.into()],
            ..sample_dispatch("Add docstrings to all functions")
        };
        tokio::spawn(async move {
            let stream = c
                .clone()
                .dispatch(req)
                .await
                .expect("admitted")
                .into_inner();
            collect_events(stream).await
        })
    };
    let (tight, roomy) = (task("tight"), task("roomy"));
    let (tight, roomy) = (tight.await.expect("join"), roomy.await.expect("join"));

    let (_, failed) = tight;
    assert_eq!(state_of(&failed), TaskState::Failed, "{failed:#?}");
    assert_eq!(failed.programmer_id, "001");
    assert_eq!(
        failed.error_class(),
        ErrorClass::ResourceLimit,
        "{failed:#?}"
    );
    assert!(
        failed
            .error_message
            .contains("ran out of memory under its ceiling of 100 MiB (aider.memory_limit_mb)"),
        "{}",
        failed.error_message
    );
    let (_, done) = roomy;
    assert_eq!(state_of(&done), TaskState::Succeeded, "{done:#?}");
    assert_eq!(done.programmer_id, "002");

    // 001 itself is fine: healthy, and it runs the next task that fits (a dry run).
    let health = pool.programmer_health("001").await;
    assert_eq!(health["status"], "ok", "{health}");
    let req = DispatchRequest {
        task_id: "after".into(),
        capabilities: vec!["tight".into()],
        dry_run: true,
        ..sample_dispatch("Add docstrings to all functions")
    };
    let (_, after) = collect_events(
        c.clone()
            .dispatch(req)
            .await
            .expect("admitted")
            .into_inner(),
    )
    .await;
    assert_eq!(state_of(&after), TaskState::Succeeded);
}
