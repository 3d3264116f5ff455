//! Routing through the real manager: each strategy picks as specified, capability groups and the
//! free/paid tiers are never crossed. A 10-programmer pool shaped like the shipped config (real
//! `pas programmer` processes, `pas llm-sim`), `dry_run` tasks where only routing matters, and real
//! aider runs against a hanging simulated model where a test needs programmers under load.

use crate::common;

use common::Sim;
use common::pool::{
    PoolOptions, SHIPPED_CAPABILITY_ROUTING, SHIPPED_FREE, SHIPPED_PAID, TestPool, assigned_ids,
    dispatch_collect, manager_client, pool_status, sample_dispatch, shipped_shape, state_of,
    wait_available, wait_until,
};
use pas::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use pas::contract::v1::{
    CancelTaskRequest, DispatchRequest, ErrorClass, GetTaskRequest, Strategy, TaskRequest,
    TaskState,
};
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::transport::Channel;

/// The shipped shape with its capability_routing, every programmer and the manager started.
struct Shipped {
    pool: TestPool,
    programmers: BTreeMap<String, common::pool::ChildGuard>,
    _manager: common::pool::ChildGuard,
    client: ProgrammerPoolClient<Channel>,
}

/// The shipped shape for a test of dry runs only (no aider: its programmers start cold).
async fn shipped_dry_runs() -> Shipped {
    let options = PoolOptions {
        runs_aider: false,
        ..PoolOptions::default()
    };
    shipped(options, Sim::start()).await
}

async fn shipped(options: PoolOptions, sim: Sim) -> Shipped {
    let pool = TestPool::with_sim(
        PoolOptions {
            programmers: shipped_shape(),
            ..options
        },
        sim,
    );
    pool.append_config(SHIPPED_CAPABILITY_ROUTING);
    pool.sample_repo();
    let programmers = pool.start_all_programmers();
    let manager = pool.start_manager();
    let client = manager_client(&pool).await;
    wait_available(&client, 10).await;
    Shipped {
        pool,
        programmers,
        _manager: manager,
        client,
    }
}

/// A dry run with `caps` and `strategy`; returns the programmer it was routed to.
async fn route(c: &ProgrammerPoolClient<Channel>, caps: &[&str], strategy: Strategy) -> String {
    let (events, result) = dispatch_collect(
        c,
        DispatchRequest {
            dry_run: true,
            capabilities: caps.iter().map(|s| s.to_string()).collect(),
            strategy: strategy as i32,
            ..sample_dispatch("route me")
        },
    )
    .await;
    assert_eq!(state_of(&result), TaskState::Succeeded, "{result:#?}");
    assert!(result.dry_run);
    assert_eq!(
        assigned_ids(&events),
        vec![result.programmer_id.clone()],
        "one Assigned naming the result's programmer"
    );
    result.programmer_id
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn round_robin_cycles_each_capability_group_in_config_order() {
    let s = shipped_dry_runs().await;
    let c = &s.client;

    // "fast" cycles 001..005 twice, in order; "deepseek" interleaved keeps its own cursor.
    let mut fast = Vec::new();
    let mut deepseek = Vec::new();
    for i in 0..10 {
        fast.push(route(c, &["fast"], Strategy::RoundRobin).await);
        if i % 2 == 0 {
            deepseek.push(route(c, &["deepseek"], Strategy::RoundRobin).await);
        }
    }
    assert_eq!(
        fast,
        ids(&[
            "001", "002", "003", "004", "005", "001", "002", "003", "004", "005"
        ])
    );
    assert_eq!(deepseek, ids(&["009", "010", "009", "010", "009"]));

    // The same capability set in another order is the same group ("local,free" == "free,local").
    let mut local_free = Vec::new();
    for i in 0..8 {
        let caps: &[&str] = if i % 2 == 0 {
            &["local", "free"]
        } else {
            &["free", "local"]
        };
        local_free.push(route(c, caps, Strategy::RoundRobin).await);
    }
    assert_eq!(
        local_free,
        ids(&["001", "002", "003", "004", "005", "009", "010", "001"])
    );

    // Premium cycles over the paid ones only.
    let mut premium = Vec::new();
    for _ in 0..4 {
        premium.push(route(c, &["premium"], Strategy::RoundRobin).await);
    }
    assert_eq!(premium, ids(&["006", "007", "008", "006"]));
}

#[tokio::test]
async fn capability_match_takes_the_first_holder_in_config_order() {
    let s = shipped_dry_runs().await;
    let c = &s.client;
    for _ in 0..3 {
        assert_eq!(route(c, &["fast"], Strategy::CapabilityMatch).await, "001");
    }
    assert_eq!(
        route(c, &["premium"], Strategy::CapabilityMatch).await,
        "006"
    );
    // 008 holds "openai" only by its tag; "reasoning" lists 006–008 in capability_routing.
    assert_eq!(
        route(c, &["openai"], Strategy::CapabilityMatch).await,
        "008"
    );
    assert_eq!(
        route(c, &["reasoning", "openai"], Strategy::CapabilityMatch).await,
        "008"
    );
    assert_eq!(
        route(c, &["deepseek"], Strategy::CapabilityMatch).await,
        "009"
    );
    // No capabilities with prefer_free (the configured default): the first free one.
    assert_eq!(route(c, &[], Strategy::CapabilityMatch).await, "001");
    // Without prefer_free the single tier is in config order too.
    let (_, r) = dispatch_collect(
        c,
        DispatchRequest {
            dry_run: true,
            capabilities: vec!["paid".into()],
            prefer_free: Some(false),
            strategy: Strategy::CapabilityMatch as i32,
            ..sample_dispatch("paid, no preference")
        },
    )
    .await;
    assert_eq!(r.programmer_id, "006");
}

#[tokio::test]
async fn capability_groups_and_tiers_are_never_crossed() {
    let s = shipped_dry_runs().await;
    let c = &s.client;

    // Sequential round robin visits every holder; concurrent least_loaded spreads the load;
    // neither ever leaves the group.
    let mut seen: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (caps, n) in [("fast", 10), ("premium", 6), ("free", 14), ("local", 7)] {
        for _ in 0..n {
            let id = route(c, &[caps], Strategy::RoundRobin).await;
            seen.entry(caps).or_default().push(id);
        }
    }
    let set = |v: &Vec<String>| {
        let mut v = v.clone();
        v.sort();
        v.dedup();
        v
    };
    assert_eq!(
        set(&seen["fast"]),
        ids(&["001", "002", "003", "004", "005"])
    );
    assert_eq!(set(&seen["premium"]), ids(&SHIPPED_PAID));
    assert_eq!(set(&seen["free"]), ids(&SHIPPED_FREE));
    assert_eq!(set(&seen["local"]), ids(&SHIPPED_FREE));

    let concurrent: Vec<_> = (0..40)
        .map(|i| {
            let c = c.clone();
            let caps = if i % 2 == 0 { "fast" } else { "premium" };
            tokio::spawn(async move { (caps, route(&c, &[caps], Strategy::LeastLoaded).await) })
        })
        .collect();
    for t in concurrent {
        let (caps, id) = t.await.expect("task");
        match caps {
            "fast" => assert!(
                ["001", "002", "003", "004", "005"].contains(&id.as_str()),
                "fast went to {id}"
            ),
            _ => assert!(SHIPPED_PAID.contains(&id.as_str()), "premium went to {id}"),
        }
    }

    // Nobody holds both: refused before any stream, naming the field.
    let err = c
        .clone()
        .dispatch(DispatchRequest {
            dry_run: true,
            capabilities: vec!["local".into(), "paid".into()],
            ..sample_dispatch("impossible")
        })
        .await
        .expect_err("no programmer is local and paid");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("capabilities"), "{err:?}");

    // Every free programmer dies. Free-only work waits for them (and times out) rather than
    // landing on a paid model; work that names no capability may use the paid tier.
    let mut programmers = s.programmers;
    for id in SHIPPED_FREE {
        programmers.get_mut(id).expect("guard").kill();
    }
    wait_available(c, 3).await;
    for caps in [&["free"][..], &["fast"], &["local"], &["deepseek"]] {
        let (events, r) = dispatch_collect(
            c,
            DispatchRequest {
                dry_run: true,
                capabilities: caps.iter().map(|s| s.to_string()).collect(),
                queue_timeout_s: 1,
                ..sample_dispatch("free work while the free tier is down")
            },
        )
        .await;
        assert_eq!(state_of(&r), TaskState::Failed, "{caps:?}: {r:#?}");
        assert_eq!(
            ErrorClass::try_from(r.error_class),
            Ok(ErrorClass::QueueTimeout),
            "{caps:?}: {r:#?}"
        );
        assert!(
            assigned_ids(&events).is_empty(),
            "{caps:?} was never assigned: {events:#?}"
        );
        assert_eq!(r.programmer_id, "");
    }
    let id = route(c, &[], Strategy::LeastLoaded).await;
    assert!(SHIPPED_PAID.contains(&id.as_str()), "{id}");
    drop(s.pool);
}

/// Starts a real task directly on programmer `id` (bypassing the manager) and returns its open
/// stream: the task holds its place on the programmer until it is cancelled (`load-<id>-<i>`).
async fn occupy(
    pool: &TestPool,
    id: &str,
    n: usize,
) -> Vec<tonic::Streaming<pas::contract::v1::TaskEvent>> {
    let mut client = pool.programmer_client(id).await;
    let mut streams = Vec::new();
    for i in 0..n {
        let stream = client
            .execute(TaskRequest {
                task_id: format!("load-{id}-{i}"),
                task_description: "Add docstrings to all functions".into(),
                files: vec!["src/module.py".into()],
                workspace: "sample".into(),
                run_id: "load".into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("Execute {i} on {id}: {e:?}"))
            .into_inner();
        streams.push(stream);
    }
    streams
}

#[tokio::test]
async fn least_loaded_picks_the_idle_programmer_under_real_load() {
    // Every model hangs: a running task holds its programmer's one slot until cancelled.
    let sim = Sim::start_with(&["--fault", "hang"]);
    let options = PoolOptions {
        max_concurrent_per_programmer: 1,
        max_queue_per_programmer: 5,
        request_timeout_s: 300,
        task_timeout_s: 300,
        ..PoolOptions::default()
    };
    let s = shipped(options, sim).await;
    let c = &s.client;

    // Queue depths 5,2,0,3,1 on 001..005: one running (hung in aider) plus that many waiting.
    let wanted: [(&str, u32); 5] = [("001", 5), ("002", 2), ("003", 0), ("004", 3), ("005", 1)];
    let mut load = Vec::new();
    for (id, depth) in wanted {
        let n = if depth == 0 { 0 } else { depth as usize + 1 };
        load.push(occupy(&s.pool, id, n).await);
    }
    let c2 = c.clone();
    wait_until(
        Duration::from_secs(20),
        "the manager's status to show queue depths 5,2,0,3,1",
        || {
            let c = c2.clone();
            async move {
                let st = pool_status(&c).await;
                let depths: Vec<u32> = st.programmers[..5].iter().map(|p| p.queue_depth).collect();
                depths == [5, 2, 0, 3, 1]
            }
        },
    )
    .await;
    let st = pool_status(c).await;
    assert_eq!(st.total_queue_depth, 11, "{st:#?}");

    // least_loaded (the configured default, and asked for explicitly) picks the idle 003.
    for strategy in [Strategy::Unspecified, Strategy::LeastLoaded] {
        let task_id = format!("ll-{}", strategy as i32);
        let routed = tokio::time::timeout(
            Duration::from_secs(30),
            dispatch_collect(
                c,
                DispatchRequest {
                    task_id: task_id.clone(),
                    dry_run: true,
                    capabilities: vec!["fast".into()],
                    strategy: strategy as i32,
                    ..sample_dispatch("least loaded")
                },
            ),
        )
        .await;
        // An idle programmer answers a dry run at once; one stuck behind a hung task would not.
        let Ok((events, r)) = routed else {
            let rec = c
                .clone()
                .get_task(GetTaskRequest { task_id })
                .await
                .expect("GetTask")
                .into_inner();
            panic!(
                "{strategy:?}: the dry run waited: placed on {:?} instead of the idle 003",
                rec.programmer_id
            );
        };
        assert_eq!(r.programmer_id, "003", "{strategy:?}: {events:#?}");
        assert_eq!(state_of(&r), TaskState::Succeeded);
    }

    // capability_match under the same load: 001 is full (1 running + 5 waiting), so the first
    // holder in config order with room is 002. The dry run then waits in 002's queue behind the
    // hung task: see where the manager placed it, then cancel it.
    let mut task = c
        .clone()
        .dispatch(DispatchRequest {
            task_id: "cm-under-load".into(),
            dry_run: true,
            capabilities: vec!["fast".into()],
            strategy: Strategy::CapabilityMatch as i32,
            ..sample_dispatch("capability match")
        })
        .await
        .expect("accepted")
        .into_inner();
    let c2 = c.clone();
    wait_until(Duration::from_secs(10), "the task to be placed", || {
        let mut c = c2.clone();
        async move {
            c.get_task(GetTaskRequest {
                task_id: "cm-under-load".into(),
            })
            .await
            .map(|r| r.into_inner().state == TaskState::Running as i32)
            .unwrap_or(false)
        }
    })
    .await;
    let record = c
        .clone()
        .get_task(GetTaskRequest {
            task_id: "cm-under-load".into(),
        })
        .await
        .expect("GetTask")
        .into_inner();
    assert_eq!(record.programmer_id, "002");
    let cancelled = c
        .clone()
        .cancel_task(CancelTaskRequest {
            task_id: "cm-under-load".into(),
        })
        .await
        .expect("CancelTask")
        .into_inner();
    assert!(cancelled.cancelled);
    let mut last = None;
    while let Some(ev) = task.message().await.expect("stream") {
        last = Some(ev);
    }
    match last.and_then(|e| e.kind) {
        Some(pas::contract::v1::task_event::Kind::Result(r)) => {
            assert_eq!(state_of(&r), TaskState::Cancelled, "{r:#?}")
        }
        other => panic!("last event is not a result: {other:?}"),
    }

    // Release the load: tasks outlive their streams, so each is stopped on its programmer.
    drop(load);
    for (id, depth) in wanted {
        let n = if depth == 0 { 0 } else { depth as usize + 1 };
        let mut client = s.pool.programmer_client(id).await;
        for i in 0..n {
            client
                .stop_task(pas::contract::v1::StopTaskRequest {
                    task_id: format!("load-{id}-{i}"),
                })
                .await
                .expect("StopTask");
        }
    }
    let left = s
        .pool
        .wait_worktree_processes_gone(Duration::from_secs(15))
        .await;
    assert!(left.is_empty(), "aider processes left running: {left:?}");
}
