//! A programmer killed with SIGKILL mid-task: the manager stops routing to it at once, re-routes
//! its in-flight task to another programmer of the group (one Rerouted event, exactly one result),
//! and takes it back when it restarts. Real `pas` processes, real aider, `pas llm-sim`.

use crate::common;

use common::Sim;
use common::pool::{
    PoolOptions, SHIPPED_CAPABILITY_ROUTING, TestPool, TestProgrammer, aider_only_on, assigned_ids,
    collect_events, dispatch_collect, manager_client, pool_status, rerouted, sample_dispatch,
    shipped_shape, state_of, wait_available, wait_for_model_call, wait_until,
};
use pas::contract::v1::{DispatchRequest, GetTaskRequest, ProgrammerState, Strategy, TaskState};
use std::time::Duration;

/// The manager's view of programmer `id`'s state.
async fn state_in_manager(
    c: &pas::contract::v1::programmer_pool_client::ProgrammerPoolClient<tonic::transport::Channel>,
    id: &str,
) -> ProgrammerState {
    let st = pool_status(c).await;
    let p = st
        .programmers
        .iter()
        .find(|p| p.id == id)
        .unwrap_or_else(|| panic!("{id} in status"));
    ProgrammerState::try_from(p.state).unwrap_or(ProgrammerState::Unspecified)
}

/// Dispatches the docstring task `task_id` needing `capability` with capability_match (the first
/// programmer in configuration order holding it takes it), and returns its event stream.
async fn dispatch_victim(
    c: &pas::contract::v1::programmer_pool_client::ProgrammerPoolClient<tonic::transport::Channel>,
    task_id: &str,
    capability: &str,
) -> tonic::Streaming<pas::contract::v1::TaskEvent> {
    c.clone()
        .dispatch(DispatchRequest {
            task_id: task_id.into(),
            capabilities: vec![capability.into()],
            strategy: Strategy::CapabilityMatch as i32,
            ..sample_dispatch("Add docstrings to all functions")
        })
        .await
        .expect("accepted")
        .into_inner()
}

#[tokio::test]
async fn a_killed_programmer_leaves_at_once_its_task_is_rerouted_and_it_rejoins() {
    // 001's models never answer: a task there is in flight until something breaks it.
    let sim = Sim::start_with_script(
        "rules:\n  - model: 'primary-001'\n    fault: hang\n  - model: 'backup-001'\n    fault: hang\n",
    );
    let pool = TestPool::with_sim(
        PoolOptions {
            // aider runs on 001 (the victim's first programmer) and 002 (where capability_match
            // reroutes it); a reroute elsewhere in the fast group runs cold.
            programmers: aider_only_on(shipped_shape(), &["001", "002"]),
            request_timeout_s: 300,
            task_timeout_s: 300,
            ..PoolOptions::default()
        },
        sim,
    );
    pool.append_config(SHIPPED_CAPABILITY_ROUTING);
    let repo = pool.sample_repo();
    let mut programmers = pool.start_all_programmers();
    let _manager = pool.start_manager();
    let c = manager_client(&pool).await;
    wait_available(&c, 10).await;

    // The victim: capability_match puts it on 001, the first "fast" programmer.
    let victim = tokio::spawn(collect_events(dispatch_victim(&c, "victim", "fast").await));

    // Wait until aider on 001 is really waiting on its LLM.
    wait_for_model_call(&pool.sim, "primary-001").await;
    let record = c
        .clone()
        .get_task(GetTaskRequest {
            task_id: "victim".into(),
        })
        .await
        .expect("GetTask")
        .into_inner();
    assert_eq!(record.state, TaskState::Running as i32);
    assert_eq!(record.programmer_id, "001");

    // kill -9: the manager stops counting it available (how fast is the failure-detection
    // benchmark's to measure).
    programmers.get_mut("001").expect("001").kill();
    wait_until(
        Duration::from_secs(60),
        "001 unavailable, 9 available",
        || async {
            let st = pool_status(&c).await;
            st.programmers[0].state == ProgrammerState::Unavailable as i32 && st.available == 9
        },
    )
    .await;

    // Its task moves to another fast programmer and ends there with exactly one result.
    let (events, result) = tokio::time::timeout(Duration::from_secs(120), victim)
        .await
        .expect("the victim finishes")
        .expect("collector");
    let moves = rerouted(&events);
    assert_eq!(moves.len(), 1, "one Rerouted: {events:#?}");
    assert_eq!(moves[0].from_programmer, "001");
    assert_eq!(moves[0].to_programmer, result.programmer_id);
    assert!(!moves[0].reason.is_empty());
    assert!(
        ["002", "003", "004", "005"].contains(&result.programmer_id.as_str()),
        "rerouted within the fast group: {result:#?}"
    );
    assert_eq!(state_of(&result), TaskState::Succeeded, "{result:#?}");
    assert!(!result.diff.is_empty() && !result.commit.is_empty());
    // The re-dispatch ran under its own id: the killed programmer's scratch branch is still in
    // the repository (nothing cleaned up after kill -9) and was not in the way. The result is
    // kept under the caller's id, the one branch any attempt of the task may keep.
    assert_eq!(result.branch, "pas/victim");
    assert!(
        common::git(&repo, &["branch", "--list", "pas-work/victim"]).contains("pas-work/victim"),
        "the killed attempt's scratch branch is left for its programmer's restart sweep"
    );
    let assigned = assigned_ids(&events);
    assert_eq!(
        assigned.last(),
        Some(&result.programmer_id),
        "the last Assigned is the new programmer: {assigned:?}"
    );
    // The commit is on the rerouted attempt's branch in the workspace repository.
    let log = common::git(&repo, &["log", "--format=%H", &result.branch]);
    assert!(log.contains(&result.commit), "{log}");
    let record = c
        .clone()
        .get_task(GetTaskRequest {
            task_id: "victim".into(),
        })
        .await
        .expect("GetTask")
        .into_inner();
    assert_eq!(record.state, TaskState::Succeeded as i32);
    assert_eq!(record.programmer_id, result.programmer_id);

    // New tasks avoid it: capability_match would pick 001 first if it could.
    for _ in 0..5 {
        let (_, r) = dispatch_collect(
            &c,
            DispatchRequest {
                dry_run: true,
                capabilities: vec!["fast".into()],
                strategy: Strategy::CapabilityMatch as i32,
                ..sample_dispatch("after the kill")
            },
        )
        .await;
        assert_eq!(r.programmer_id, "002");
    }
    for _ in 0..8 {
        let (_, r) = dispatch_collect(
            &c,
            DispatchRequest {
                dry_run: true,
                capabilities: vec!["fast".into()],
                strategy: Strategy::RoundRobin as i32,
                ..sample_dispatch("after the kill, round robin")
            },
        )
        .await;
        assert_ne!(r.programmer_id, "001");
    }

    // Restart it on the same port: it rejoins and takes work again.
    programmers.insert("001".into(), pool.start_programmer("001"));
    wait_available(&c, 10).await;
    assert_eq!(
        state_in_manager(&c, "001").await,
        ProgrammerState::Available
    );
    let (_, r) = dispatch_collect(
        &c,
        DispatchRequest {
            dry_run: true,
            capabilities: vec!["fast".into()],
            strategy: Strategy::CapabilityMatch as i32,
            ..sample_dispatch("after the restart")
        },
    )
    .await;
    assert_eq!(r.programmer_id, "001");

    // The aider the killed programmer left behind still hangs on its LLM: end it by pid.
    let dir = pool.data_dir.join("programmers/001/worktrees");
    for pid in common::processes_in_dir(&dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[tokio::test]
async fn a_rerouted_paid_task_holds_budget_again_and_the_lost_hold_is_booked() {
    // Two paid programmers on their own priced models; 001's never answer.
    let sim = Sim::start_with_script("rules:\n  - model: 'slow-*'\n    fault: hang\n");
    let paid = |id: &str, primary: &str, backup: &str| TestProgrammer {
        id: id.into(),
        primary: primary.into(),
        backup: backup.into(),
        capabilities: vec!["premium".into(), "paid".into()],
        ..TestProgrammer::free(id)
    };
    let pool = TestPool::with_sim(
        PoolOptions {
            programmers: vec![
                paid("001", "openai/slow-a", "openai/slow-b"),
                paid("002", "openai/fast-a", "openai/fast-b"),
            ],
            max_cost_per_job_usd: 0.5,
            max_daily_spend_usd: 10.0,
            alert_threshold_usd: 9.0,
            request_timeout_s: 300,
            task_timeout_s: 300,
            ..PoolOptions::default()
        },
        sim,
    );
    let mut llms = String::from("llms:\n");
    for m in ["slow-a", "slow-b", "fast-a", "fast-b"] {
        llms.push_str(&format!(
            "  \"openai/{m}\":\n    input_cost_per_token: 2.5e-6\n    output_cost_per_token: 1.0e-5\n"
        ));
    }
    pool.append_config(&llms);
    pool.sample_repo();
    let mut programmers = pool.start_all_programmers();
    let _manager = pool.start_manager();
    let c = manager_client(&pool).await;
    wait_available(&c, 2).await;

    let victim = tokio::spawn(collect_events(
        dispatch_victim(&c, "paid-victim", "premium").await,
    ));
    wait_for_model_call(&pool.sim, "slow-a").await;
    // max_cost_per_job_usd: 0.5, in nano-dollars.
    const HOLD: u64 = 500_000_000;
    let held = pool_status(&c).await.budget.expect("budget");
    assert_eq!(held.reserved_nanousd, HOLD, "{held:#?}");

    programmers.get_mut("001").expect("001").kill();
    let (events, result) = tokio::time::timeout(Duration::from_secs(120), victim)
        .await
        .expect("the victim finishes (a refused re-reservation would leave it queued)")
        .expect("collector");
    assert_eq!(state_of(&result), TaskState::Succeeded, "{result:#?}");
    assert_eq!(result.programmer_id, "002");
    assert_eq!(rerouted(&events).len(), 1, "{events:#?}");
    assert!(
        result.cost_nanousd > 0 && result.cost_nanousd < HOLD,
        "{result:#?}"
    );

    // The first hold is booked in full (the killed programmer may have spent it), the second
    // settles to the real cost, nothing stays held.
    let b = pool_status(&c).await.budget.expect("budget");
    assert_eq!(b.reserved_nanousd, 0, "{b:#?}");
    assert_eq!(
        b.spent_nanousd,
        HOLD + result.cost_nanousd,
        "spent = $0.50 (lost hold) + the real cost, to the nano-dollar: {b:#?}"
    );

    let dir = pool.data_dir.join("programmers/001/worktrees");
    for pid in common::processes_in_dir(&dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
