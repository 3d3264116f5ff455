//! Queueing through the real manager: a burst that fills every programmer's queue completes
//! with nothing refused; past the manager's own bound a dispatch is RESOURCE_EXHAUSTED.

use crate::common;

use common::Sim;
use common::pool::{
    PoolOptions, TestPool, TestProgrammer, collect_events, dispatch_collect, manager_client,
    pool_status, queued, sample_dispatch, state_of, wait_available, wait_until,
};
use pas::contract::v1::{CancelTaskRequest, DispatchRequest, GetTaskRequest, TaskState};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[tokio::test]
async fn sixty_tasks_fill_ten_programmers_with_queue_five_and_all_complete() {
    // What proves the queueing is 60 tasks in the pool *at the same time*: every programmer
    // running one and holding five waiting, nothing refused, everything finishing. Dry runs are
    // instant, so each programmer's running slot is held by a real aider task whose model answers
    // after 5 s; the other 50 tasks are dry runs, which wait in the programmers' queues like
    // any task (a programmer runs a dry run only when it gets a slot). 60 real aider runs would
    // prove nothing more and cost minutes of CPU on a 2-core machine.
    let ids: Vec<String> = (1..=10).map(|i| format!("{i:03}")).collect();
    let sim = Sim::start_with_script("rules:\n  - model: 'primary-*'\n    latency_ms: 5000\n");
    let pool = TestPool::with_sim(
        PoolOptions {
            programmers: ids.iter().map(|id| TestProgrammer::free(id)).collect(),
            max_concurrent_per_programmer: 1,
            max_queue_per_programmer: 5,
            manager_max_queue: 100,
            queue_timeout_s: 600,
            task_timeout_s: 600,
            request_timeout_s: 120,
            ..PoolOptions::default()
        },
        sim,
    );
    let repo = pool.sample_repo();
    let _programmers = pool.start_all_programmers();
    let _manager = pool.start_manager();
    let c = manager_client(&pool).await;
    wait_available(&c, 10).await;
    let started = Instant::now();

    let spawn = |req: DispatchRequest| {
        let c = c.clone();
        tokio::spawn(async move {
            let id = req.task_id.clone();
            // A refusal (RESOURCE_EXHAUSTED) fails the test here.
            let stream = c
                .clone()
                .dispatch(req)
                .await
                .unwrap_or_else(|e| panic!("{id} refused: {e:?}"))
                .into_inner();
            collect_events(stream).await
        })
    };
    // 10 real tasks: least_loaded gives each programmer one.
    let mut tasks = Vec::new();
    for i in 0..10 {
        tasks.push(spawn(DispatchRequest {
            task_id: format!("real-{i:02}"),
            ..sample_dispatch(&format!("Add docstrings to all functions (task {i})"))
        }));
    }
    let c2 = c.clone();
    wait_until(
        Duration::from_secs(20),
        "one real task on every programmer",
        || {
            let c = c2.clone();
            async move {
                pool_status(&c)
                    .await
                    .programmers
                    .iter()
                    .all(|p| p.in_flight == 1)
            }
        },
    )
    .await;
    // 50 more at once: five wait behind each running task.
    for i in 0..50 {
        tasks.push(spawn(DispatchRequest {
            task_id: format!("dry-{i:02}"),
            dry_run: true,
            ..sample_dispatch(&format!("queued task {i}"))
        }));
    }
    let c2 = c.clone();
    wait_until(
        Duration::from_secs(20),
        "every programmer reporting 5 waiting",
        || {
            let c = c2.clone();
            async move {
                pool_status(&c)
                    .await
                    .programmers
                    .iter()
                    .all(|p| p.queue_depth == 5 && p.in_flight == 6)
            }
        },
    )
    .await;
    let full = pool_status(&c).await;
    assert_eq!(full.total_queue_depth, 50, "{full:#?}");
    assert_eq!(full.manager_queue_depth, 0, "all 60 are on programmers");
    for id in &ids {
        // The programmers' own view agrees: one running, five waiting, at their limit.
        let st = pool
            .programmer_client(id)
            .await
            .get_status(pas::contract::v1::GetStatusRequest {})
            .await
            .expect("GetStatus")
            .into_inner();
        assert_eq!((st.running, st.queue_depth), (1, 5), "{id}: {st:#?}");
    }

    // One more than the programmers hold waits in the manager's queue instead of being refused.
    tasks.push(spawn(DispatchRequest {
        task_id: "overflow".into(),
        dry_run: true,
        ..sample_dispatch("waits in the manager")
    }));
    let c2 = c.clone();
    wait_until(
        Duration::from_secs(10),
        "the 61st in the manager queue",
        || {
            let c = c2.clone();
            async move { pool_status(&c).await.manager_queue_depth == 1 }
        },
    )
    .await;

    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("task"));
    }
    eprintln!(
        "MEASURED: 61 tasks (10 real aider runs) through 10 programmers in {:?}",
        started.elapsed()
    );
    let mut branches = BTreeSet::new();
    for (events, r) in &results {
        assert_eq!(state_of(r), TaskState::Succeeded, "{r:#?}");
        if r.dry_run {
            continue;
        }
        assert!(!r.commit.is_empty() && !r.branch.is_empty(), "{r:#?}");
        branches.insert(r.branch.clone());
        let tip = common::git(&repo, &["rev-parse", &r.branch]);
        assert_eq!(tip.trim(), r.commit, "{events:#?}");
    }
    assert_eq!(branches.len(), 10, "one branch per real task");
    // The 61st (last) task waited in the manager's queue; where it waits once placed depends on
    // which programmer frees a place first, so only the 50 dry runs are counted here.
    let waited: Vec<&str> = results[..results.len() - 1]
        .iter()
        .filter(|(events, _)| queued(events).iter().any(|q| q.queue == "programmer"))
        .map(|(_, r)| r.programmer_id.as_str())
        .collect();
    assert_eq!(
        waited.len(),
        50,
        "every dry run waited in a programmer queue"
    );
    let overflow = results.last().expect("overflow");
    assert!(
        queued(&overflow.0).iter().any(|q| q.queue == "manager"),
        "{:#?}",
        overflow.0
    );
    let c2 = c.clone();
    wait_until(Duration::from_secs(10), "61 completions reported", || {
        let c = c2.clone();
        async move {
            pool_status(&c)
                .await
                .programmers
                .iter()
                .map(|p| p.completed)
                .sum::<u64>()
                == 61
        }
    })
    .await;
    let st = pool_status(&c).await;
    for p in &st.programmers {
        assert!(p.completed >= 6, "{}: {}", p.id, p.completed);
    }
    assert_eq!(st.manager_queue_depth, 0);
}

#[tokio::test]
async fn past_the_manager_queue_bound_a_dispatch_is_resource_exhausted() {
    // One programmer with room for 2 (1 running + 1 waiting), a manager queue of 2.
    let pool = TestPool::with_sim(
        PoolOptions {
            programmers: vec![TestProgrammer::free("001")],
            max_concurrent_per_programmer: 1,
            max_queue_per_programmer: 1,
            manager_max_queue: 2,
            queue_timeout_s: 30,
            request_timeout_s: 300,
            task_timeout_s: 300,
            ..PoolOptions::default()
        },
        Sim::start_with(&["--fault", "hang"]),
    );
    pool.sample_repo();
    let _p = pool.start_all_programmers();
    let _m = pool.start_manager();
    let c = manager_client(&pool).await;
    wait_available(&c, 1).await;

    // Fill the programmer with two real tasks whose model never answers.
    let mut hung = Vec::new();
    for id in ["hung-1", "hung-2"] {
        let stream = c
            .clone()
            .dispatch(DispatchRequest {
                task_id: id.into(),
                ..sample_dispatch("Add docstrings to all functions")
            })
            .await
            .expect("accepted")
            .into_inner();
        hung.push(tokio::spawn(collect_events(stream)));
    }
    let c2 = c.clone();
    wait_until(Duration::from_secs(10), "both tasks on 001", || {
        let c = c2.clone();
        async move { pool_status(&c).await.programmers[0].in_flight == 2 }
    })
    .await;

    // Two more wait in the manager's queue, in order.
    let mut waiting = Vec::new();
    for id in ["wait-1", "wait-2"] {
        let stream = c
            .clone()
            .dispatch(DispatchRequest {
                task_id: id.into(),
                dry_run: true,
                ..sample_dispatch("waits in the manager")
            })
            .await
            .expect("accepted into the manager queue")
            .into_inner();
        waiting.push(tokio::spawn(collect_events(stream)));
    }
    let c2 = c.clone();
    wait_until(
        Duration::from_secs(10),
        "2 tasks in the manager queue",
        || {
            let c = c2.clone();
            async move { pool_status(&c).await.manager_queue_depth == 2 }
        },
    )
    .await;
    let st = pool_status(&c).await;
    assert_eq!(st.manager_queue_capacity, 2);
    let record = c
        .clone()
        .get_task(GetTaskRequest {
            task_id: "wait-2".into(),
        })
        .await
        .expect("GetTask")
        .into_inner();
    assert_eq!(record.state, TaskState::Queued as i32);

    // The next one is refused up-front.
    let over = DispatchRequest {
        task_id: "over".into(),
        dry_run: true,
        ..sample_dispatch("one too many")
    };
    let err = c
        .clone()
        .dispatch(over.clone())
        .await
        .expect_err("the manager queue is full");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("queue is full"), "{err:?}");

    // Free the programmer: the waiting tasks are placed in order and finish.
    for id in ["hung-1", "hung-2"] {
        c.clone()
            .cancel_task(CancelTaskRequest { task_id: id.into() })
            .await
            .expect("CancelTask");
    }
    for h in hung {
        let (_, r) = h.await.expect("hung task");
        assert_eq!(state_of(&r), TaskState::Cancelled, "{r:#?}");
    }
    for (i, w) in waiting.into_iter().enumerate() {
        let (events, r) = w.await.expect("waiting task");
        assert_eq!(state_of(&r), TaskState::Succeeded, "{r:#?}");
        let positions: Vec<u32> = queued(&events)
            .iter()
            .filter(|q| q.queue == "manager")
            .map(|q| q.position)
            .collect();
        assert_eq!(positions.first(), Some(&(i as u32 + 1)), "{events:#?}");
    }

    // A refused dispatch was never accepted: retrying the same id once there is room runs it.
    let (_, r) = dispatch_collect(&c, over).await;
    assert_eq!(state_of(&r), TaskState::Succeeded, "{r:#?}");
    assert!(r.dry_run);
    let left = pool
        .wait_worktree_processes_gone(Duration::from_secs(15))
        .await;
    assert!(left.is_empty(), "aider left running after cancel: {left:?}");
}
