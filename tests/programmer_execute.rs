//! The programmer end to end: real `pas programmer`, real aider, real git, llm-sim.

mod common;

use common::pool::{PoolOptions, TestPool};
use pas::contract::v1::programmer_client::ProgrammerClient;
use pas::contract::v1::task_event::Kind;
use pas::contract::v1::{
    ErrorClass, GetStatusRequest, TaskEvent, TaskRequest, TaskResult, TaskState,
};

async fn client(pool: &TestPool, id: &str) -> ProgrammerClient<tonic::transport::Channel> {
    ProgrammerClient::connect(pool.programmer_url(id))
        .await
        .expect("connect to the programmer")
}

/// Runs a task to its end; returns every event and the result.
async fn execute(
    client: &mut ProgrammerClient<tonic::transport::Channel>,
    req: TaskRequest,
) -> (Vec<TaskEvent>, TaskResult) {
    let mut stream = client
        .execute(req)
        .await
        .expect("Execute accepted")
        .into_inner();
    let mut events = Vec::new();
    while let Some(ev) = stream.message().await.expect("stream") {
        events.push(ev);
    }
    let results: Vec<&TaskResult> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Result(r)) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 1, "exactly one result: {events:#?}");
    assert!(
        matches!(
            events.last().and_then(|e| e.kind.as_ref()),
            Some(Kind::Result(_))
        ),
        "result is last"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "seq numbers 1..n in order"
    );
    let result = results[0].clone();
    (events, result)
}

fn task(description: &str, files: &[&str]) -> TaskRequest {
    TaskRequest {
        task_description: description.into(),
        files: files.iter().map(|f| f.to_string()).collect(),
        workspace: "sample".into(),
        run_id: "run-123".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_task_edits_the_file_on_its_own_branch_and_streams_in_order() {
    let pool = TestPool::new(PoolOptions::default());
    let repo = pool.sample_repo();
    let base = common::git_head(&repo);
    let _prog = pool.start_programmer("001");
    let mut c = client(&pool, "001").await;

    let (events, result) = execute(
        &mut c,
        task("Add docstrings to all functions", &["src/module.py"]),
    )
    .await;
    assert_eq!(
        TaskState::try_from(result.status),
        Ok(TaskState::Succeeded),
        "{result:#?}"
    );
    assert_eq!(result.programmer_id, "001");
    assert_eq!(result.llm_used, "ollama/primary-001");
    assert!(!result.used_backup);
    assert_eq!(result.files_changed, vec!["src/module.py".to_string()]);
    assert!(
        result.diff.contains("+++ b/src/module.py"),
        "diff: {}",
        result.diff
    );
    assert!(
        result.branch.starts_with("pas/"),
        "branch {}",
        result.branch
    );
    assert_eq!(result.base_commit, base);
    assert_eq!(result.attempts.len(), 1);
    assert!(
        result.tokens_sent > 0 && result.tokens_received > 0,
        "tokens from the analytics log"
    );
    assert_eq!(result.cost_usd, 0.0, "local models are free");
    assert!(
        events
            .iter()
            .any(|e| matches!(e.kind, Some(Kind::Output(_)))),
        "aider output is streamed"
    );
    assert!(
        matches!(events[0].kind, Some(Kind::Assigned(_))),
        "first event names the LLM: {:?}",
        events[0]
    );

    // The change lives on the task branch; the main checkout is untouched.
    let on_branch = common::git(
        &repo,
        &["show", &format!("{}:src/module.py", result.branch)],
    );
    assert!(
        on_branch.contains("\"\"\""),
        "docstrings on the branch: {on_branch}"
    );
    assert_eq!(common::git_head(&repo), base, "main branch not moved");
    assert_eq!(
        std::fs::read_to_string(repo.join("src/module.py")).unwrap(),
        common::pool::SAMPLE_MODULE
    );
    assert_eq!(
        common::git(&repo, &["rev-parse", &result.branch]).trim(),
        result.commit
    );
    let worktrees = common::git(&repo, &["worktree", "list"]);
    assert_eq!(
        worktrees.lines().count(),
        1,
        "task worktree removed: {worktrees}"
    );

    let status = c
        .get_status(GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.completed, 1);
    assert_eq!(status.queue_depth, 0);
}

#[tokio::test]
async fn primary_500_fails_over_to_the_backup_and_counts_once() {
    let sim =
        common::Sim::start_with_script("rules:\n  - model: \"primary-001\"\n    fault: http_500\n");
    let pool = TestPool::with_sim(PoolOptions::default(), sim);
    pool.sample_repo();
    let _prog = pool.start_programmer("001");
    let mut c = client(&pool, "001").await;

    let (events, result) = execute(
        &mut c,
        task("Add docstrings to all functions", &["src/module.py"]),
    )
    .await;
    assert_eq!(
        TaskState::try_from(result.status),
        Ok(TaskState::Succeeded),
        "{result:#?}"
    );
    assert_eq!(result.llm_used, "ollama/backup-001");
    assert!(result.used_backup);
    assert_eq!(result.attempts.len(), 2);
    assert_eq!(
        ErrorClass::try_from(result.attempts[0].error_class),
        Ok(ErrorClass::ApiError)
    );
    let failovers: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Failover(f)) => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(failovers.len(), 1, "one Failover event");
    assert_eq!(failovers[0].from_llm, "ollama/primary-001");
    assert_eq!(failovers[0].to_llm, "ollama/backup-001");

    let status = c
        .get_status(GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let llm = status.llm.unwrap();
    assert_eq!(llm.failures, 1, "breaker counted the primary failure");
    assert!(!llm.circuit_open);
    assert_eq!(status.failovers, 1);
}
