//! A task's cost cap holds *during* an attempt: the programmer tails aider's analytics log while
//! aider runs and stops it the moment the task's spend crosses the cap — not when the attempt
//! ends. Real `pas programmer`, real aider, real git, llm-sim.

use crate::common;

use common::pool::{self, PoolOptions, TestPool, TestProgrammer};
use pas::contract::v1::{ErrorClass, TaskRequest};
use std::time::Duration;

#[tokio::test]
async fn crossing_the_cost_cap_mid_attempt_stops_aider_there() {
    // The first request to the paid models answers: aider's edit call, about 2k prompt tokens at
    // $2.50 per million, well over the $0.001 cap. Every later one never answers (aider's next
    // call, the commit message): with a 600 s read timeout and deadline, only a stop during the
    // attempt can end this task early. Without it the task ends at its deadline, TIMED_OUT.
    let sim = common::Sim::start_with_script(
        "rules:\n  - model: \"gpt-4o*\"\n    after: 1\n    fault: hang\n",
    );
    let capped = TestProgrammer {
        max_cost_per_job_usd: Some(0.001),
        ..TestProgrammer::paid("001")
    };
    let pool = TestPool::with_sim(
        PoolOptions {
            programmers: vec![capped],
            request_timeout_s: 600,
            task_timeout_s: 600,
            ..PoolOptions::default()
        },
        sim,
    );
    let repo = pool.sample_repo();
    let _prog = pool.start_programmer("001");
    let mut client = pool.programmer_client("001").await;

    let (events, result) = pool::execute_task(
        &mut client,
        TaskRequest {
            task_id: "capped".into(),
            ..pool::task_request(
                "sample",
                "Add docstrings to all functions",
                &["src/module.py"],
            )
        },
    )
    .await;

    pool::assert_failed_with(&result, ErrorClass::JobLimit);
    let message = &result.error_message;
    assert!(
        message.contains("max_cost_per_job_usd exceeded")
            && message.contains("limit $0.001")
            && message.contains("aider was stopped during attempt 1"),
        "the message names the cap, the figures and the stop: {message}"
    );
    // The usage reported is that of the call that crossed the cap, priced by the catalog
    // (openai/gpt-4o: $2.50 per million prompt tokens, $10 per million completion tokens).
    assert!(
        result.tokens_sent > 0 && result.tokens_received > 0,
        "{result:#?}"
    );
    // Exact, in integer nano-dollars: 2,500 n$ per prompt token, 10,000 n$ per completion token.
    let expected = result.tokens_sent * 2_500 + result.tokens_received * 10_000;
    assert_eq!(result.cost_nanousd, expected, "cost = tokens × prices");
    assert!(
        result.cost_nanousd > 1_000_000,
        "over the $0.001 cap: {result:#?}"
    );
    let spent = pas::money::Usd::from_contract(result.cost_nanousd);
    assert!(
        message.contains(&format!("{spent} spent")),
        "the message carries the spend ({spent}): {message}"
    );
    // One attempt, no failover after a cap stop, and nothing kept.
    assert_eq!(result.attempts.len(), 1, "{result:#?}");
    assert_eq!(result.attempts[0].error_class, ErrorClass::JobLimit as i32);
    assert_eq!(result.attempts[0].cost_nanousd, result.cost_nanousd);
    assert!(pool::failovers(&events).is_empty(), "{events:#?}");
    assert!(
        result.branch.is_empty() && result.diff.is_empty(),
        "{result:#?}"
    );
    assert_eq!(
        (
            pool::sim_edit_requests(&pool.sim, "gpt-4o").await,
            pool::sim_edit_requests(&pool.sim, "gpt-4o-mini").await
        ),
        (1, 0),
        "one edit call on the primary, none on the backup: {:?}",
        pool::sim_requests(&pool.sim).await
    );
    assert!(
        pool.wait_worktree_processes_gone(Duration::from_secs(30))
            .await
            .is_empty(),
        "aider's process group was killed"
    );
    assert!(pool::task_branches(&repo).is_empty());
    assert_eq!(pool::worktree_count(&repo), 1);
}
