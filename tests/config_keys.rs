//! Every configuration key the README documents does what it says: each test changes one key
//! and sees the difference, with real `pas` processes, real aider and `pas llm-sim` (which
//! records the requests aider makes).
//!
//! - `max_fix_iterations` is aider's reflection limit: a model whose edits never apply is asked
//!   1 + max_fix_iterations times in one run;
//! - a programmer's `context_limit` reaches aider's model metadata: aider warns that the chat
//!   exceeds exactly that limit;
//! - `max_duration_per_job_s` bounds one aider run, `timeout_s` the whole task (the default
//!   deadline is not cut to the per-run limit);
//! - `aider.version` is checked at programmer start-up against the venv's aider;
//! - `cost_optimization.prefer_free_over_paid: false` turns the free-first preference off.

use crate::common;

use common::Sim;
use common::pool::{
    self, PoolOptions, TestPool, TestProgrammer, dispatch_collect, manager_client, sample_dispatch,
    state_of, wait_available,
};
use pas::contract::v1::{ErrorClass, TaskState};

fn docstrings() -> pas::contract::v1::TaskRequest {
    pool::task_request(
        "sample",
        "Add docstrings to all functions",
        &["src/module.py"],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fix_iterations_context_limit_and_run_limit_reach_aider() {
    let sim = Sim::start_with_script(
        "rules:\n  - model: \"primary-001\"\n    fault: no_match\n  - model: \"primary-002\"\n    fault: no_match\n  - model: \"primary-004\"\n    fault: hang\n  - model: \"primary-005\"\n    fault: hang\n",
    );
    let pool = TestPool::with_sim(
        PoolOptions {
            programmers: ["001", "002", "003", "004", "005"]
                .map(TestProgrammer::free)
                .to_vec(),
            task_timeout_s: 600,
            request_timeout_s: 120,
            ..PoolOptions::default()
        },
        sim,
    );
    pool.sample_repo();
    pool.set_programmer_key("001", "max_fix_iterations", "1");
    pool.set_programmer_key("002", "max_fix_iterations", "2");
    pool.set_programmer_key("003", "context_limit", "50");
    // 004: each aider run may take 3 s, the task 600 s; 005: the task 3 s, a run 600 s.
    pool.set_programmer_key("004", "max_duration_per_job_s", "3");
    pool.set_programmer_key("005", "timeout_s", "3");
    let _procs = pool.start_all_programmers();
    let mut clients = Vec::new();
    for id in ["001", "002", "003", "004", "005"] {
        clients.push(pool.programmer_client(id).await);
    }
    let runs: Vec<_> = clients
        .into_iter()
        .map(|mut c| tokio::spawn(async move { pool::execute_task(&mut c, docstrings()).await }))
        .collect();
    let mut results = Vec::new();
    for r in runs {
        results.push(r.await.expect("task"));
    }

    // max_fix_iterations: the first request plus one fix request per reflection.
    for (i, (id, fixes)) in [("001", 1), ("002", 2)].into_iter().enumerate() {
        let (_, result) = &results[i];
        assert_eq!(state_of(result), TaskState::Failed, "{id}: {result:#?}");
        assert_eq!(
            pool::sim_edit_requests(&pool.sim, &format!("primary-{id}")).await,
            1 + fixes,
            "{id}: max_fix_iterations {fixes}"
        );
    }

    // context_limit 50 reaches aider's model metadata: aider says the chat exceeds it. The
    // programmers without the override never hit a limit.
    let (events, _) = &results[2];
    let said = pool::output_text(events);
    assert!(said.contains(" 50 token limit"), "{said}");
    for (events, _) in &results[..2] {
        assert!(!pool::output_text(events).contains("token limit"));
    }

    // The per-run limit and the task deadline are distinct, and each is named.
    let (_, run_limited) = &results[3];
    assert_eq!(
        state_of(run_limited),
        TaskState::TimedOut,
        "{run_limited:#?}"
    );
    assert_eq!(run_limited.error_class, ErrorClass::Deadline as i32);
    assert!(
        run_limited
            .error_message
            .contains("max_duration_per_job_s (3s)"),
        "{run_limited:#?}"
    );
    let (_, deadline) = &results[4];
    assert_eq!(state_of(deadline), TaskState::TimedOut, "{deadline:#?}");
    assert!(
        deadline
            .error_message
            .contains("task deadline of 3s exceeded"),
        "{deadline:#?}"
    );
}

#[tokio::test]
async fn a_programmer_refuses_to_start_on_another_aider_version() {
    let pool = TestPool::new(PoolOptions::default());
    pool.edit_config(|text| text.replacen("aider:\n", "aider:\n  version: \"0.0.1\"\n", 1));
    let out = pool
        .pas_command(&["programmer", "--id", "001"])
        .output()
        .expect("run pas programmer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it must not start: {stderr}");
    assert!(
        stderr.contains("aider.version: the configuration pins aider-chat 0.0.1")
            && stderr.contains("0.86.2 installed"),
        "{stderr}"
    );
    // The pinned version starts.
    pool.edit_config(|text| text.replacen("  version: \"0.0.1\"\n", "", 1));
    let _programmer = pool.start_programmer("001");
}

/// Where an idle pool of a paid programmer (listed first) and a free one sends a task that does
/// not say whether it prefers free programmers.
async fn routed_with_prefer_free_over_paid(value: bool) -> String {
    let pool = TestPool::new(PoolOptions {
        programmers: vec![TestProgrammer::paid("001"), TestProgrammer::free("002")],
        runs_aider: false,
        ..PoolOptions::default()
    });
    pool.edit_config(|text| {
        text.replacen(
            "prefer_free_over_paid: true",
            &format!("prefer_free_over_paid: {value}"),
            1,
        )
    });
    pool.sample_repo();
    let _procs = pool.start_all();
    let client = manager_client(&pool).await;
    wait_available(&client, 2).await;
    let (_, result) = dispatch_collect(
        &client,
        pas::contract::v1::DispatchRequest {
            dry_run: true,
            ..sample_dispatch("route me")
        },
    )
    .await;
    assert_eq!(state_of(&result), TaskState::Succeeded, "{result:#?}");
    result.programmer_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_free_over_paid_false_turns_the_free_first_preference_off() {
    assert_eq!(routed_with_prefer_free_over_paid(true).await, "002");
    // One tier of both: least_loaded's tie goes to configuration order, the paid one.
    assert_eq!(routed_with_prefer_free_over_paid(false).await, "001");
}
