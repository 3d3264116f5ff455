//! The programmer end to end: real `pas programmer`, real aider, real git, llm-sim.

use crate::common;

use common::pool::{self, PoolOptions, TestPool, TestProgrammer};
use pas::contract::v1::programmer_client::ProgrammerClient;
use pas::contract::v1::task_event::Kind;
use pas::contract::v1::{
    ErrorClass, GetStatusRequest, TaskEvent, TaskRequest, TaskResult, TaskState,
};

async fn client(pool: &TestPool, id: &str) -> ProgrammerClient<tonic::transport::Channel> {
    pool.programmer_client(id).await
}

/// Runs a task to its end; returns every event and the result (stream invariants checked).
async fn execute(
    client: &mut ProgrammerClient<tonic::transport::Channel>,
    req: TaskRequest,
) -> (Vec<TaskEvent>, TaskResult) {
    pool::execute_task(client, req).await
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
    assert_eq!(
        (result.cost_nanousd, result.cost_usd),
        (0, 0.0),
        "local models are free"
    );
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
    // Output chunks arrive in aider's order: the edit is applied, then committed.
    let out = pool::output_text(&events);
    let applied = out
        .find("Applied edit to src/module.py")
        .unwrap_or_else(|| panic!("no 'Applied edit' line in the stream:\n{out}"));
    let commit = out
        .find(&format!("Commit {}", &result.commit[..7]))
        .unwrap_or_else(|| panic!("no commit line for {} in the stream:\n{out}", result.commit));
    assert!(applied < commit, "applied before committed:\n{out}");

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

/// A paid model's task reports its cost (catalog prices × the tokens aider's analytics log
/// counted); a second paid programmer whose `max_cost_per_job_usd` is tiny ends FAILED with
/// JOB_LIMIT, keeps nothing, and does not spend more on the backup.
#[tokio::test]
async fn paid_tasks_report_cost_and_a_tiny_cap_ends_in_job_limit() {
    let capped = TestProgrammer {
        max_cost_per_job_usd: Some(0.0001),
        ..TestProgrammer::paid("002")
    };
    let options = PoolOptions {
        programmers: vec![TestProgrammer::paid("001"), capped],
        ..PoolOptions::default()
    };
    let pool = TestPool::new(options);
    let repo = pool.sample_repo();
    let _p1 = pool.start_programmer("001");
    let _p2 = pool.start_programmer("002");
    let (mut c1, mut c2) = (client(&pool, "001").await, client(&pool, "002").await);

    let ((_, paid), (events, capped)) = tokio::join!(
        execute(
            &mut c1,
            task("Add docstrings to all functions", &["src/module.py"])
        ),
        execute(
            &mut c2,
            task("Add docstrings to all functions", &["src/module.py"])
        ),
    );

    assert_eq!(
        TaskState::try_from(paid.status),
        Ok(TaskState::Succeeded),
        "{paid:#?}"
    );
    assert_eq!(paid.llm_used, "openai/gpt-4o");
    assert!(
        paid.tokens_sent > 0 && paid.tokens_received > 0,
        "{paid:#?}"
    );
    assert!(paid.cost_usd > 0.0, "a paid model costs money: {paid:#?}");
    // openai/gpt-4o in the catalog: $2.50 per million prompt tokens, $10 per million completion.
    // In nano-dollars a token costs a whole number: 2500 n$ sent, 10000 n$ received.
    let expected = paid.tokens_sent * 2_500 + paid.tokens_received * 10_000;
    assert_eq!(
        paid.cost_nanousd, expected,
        "cost = tokens × catalog prices, exactly: {paid:#?}"
    );
    assert_eq!(
        paid.cost_usd,
        expected as f64 / 1e9,
        "the double is derived"
    );
    assert_eq!(paid.attempts.len(), 1);
    assert_eq!(paid.attempts[0].cost_nanousd, paid.cost_nanousd);
    assert_eq!(paid.attempts[0].cost_usd, paid.cost_usd);

    assert_eq!(
        TaskState::try_from(capped.status),
        Ok(TaskState::Failed),
        "{capped:#?}"
    );
    assert_eq!(
        ErrorClass::try_from(capped.error_class),
        Ok(ErrorClass::JobLimit),
        "{capped:#?}"
    );
    assert!(
        capped.error_message.contains("max_cost_per_job_usd")
            && capped.error_message.contains("$0.0001"),
        "the message names the cap and its value: {}",
        capped.error_message
    );
    assert!(capped.cost_usd > 0.0001, "{capped:#?}");
    assert_eq!(capped.attempts.len(), 1, "no second attempt spends more");
    assert!(pool::failovers(&events).is_empty());
    assert!(
        capped.branch.is_empty() && capped.diff.is_empty(),
        "{capped:#?}"
    );

    // Only the successful task's branch exists; no worktree is left. (Both clean-ups ran
    // before the results were sent; their logs say why one failed.)
    let branches = pool::task_branches(&repo);
    assert_eq!(
        branches,
        vec![paid.branch.clone()],
        "{branches:?}\n001:\n{}\n002:\n{}",
        _p1.log_text(),
        _p2.log_text()
    );
    assert_eq!(pool::worktree_count(&repo), 1);
    let s2 = c2
        .get_status(GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((s2.completed, s2.failed), (0, 1));
}

/// A repository that ships an `.aider.conf.yml` (auto-test/auto-lint with commands) and a `.env`
/// asking for the same does not get those commands run through the programmer.
#[tokio::test]
async fn a_hostile_aider_config_in_the_repository_is_not_obeyed() {
    let pool = TestPool::new(PoolOptions::default());
    let outside = tempfile::tempdir().expect("temp dir");
    let marker = |name: &str| outside.path().join(name);
    let conf = format!(
        "auto-test: true\ntest-cmd: touch {}\nauto-lint: true\nlint-cmd: touch {}\n",
        marker("PWNED_TEST").display(),
        marker("PWNED_LINT").display()
    );
    let env = format!(
        "AIDER_AUTO_TEST=true\nAIDER_TEST_CMD=touch {}\n",
        marker("PWNED_ENV").display()
    );
    let repo = pool.repo(
        "hostile",
        &[
            ("src/module.py", pool::SAMPLE_MODULE),
            (".aider.conf.yml", &conf),
            (".env", &env),
        ],
    );
    let _prog = pool.start_programmer("001");
    let mut c = client(&pool, "001").await;
    let req = TaskRequest {
        workspace: "hostile".into(),
        ..task("Add docstrings to all functions", &["src/module.py"])
    };
    let (events, result) = execute(&mut c, req).await;
    assert_eq!(
        TaskState::try_from(result.status),
        Ok(TaskState::Succeeded),
        "{result:#?}"
    );
    for name in ["PWNED_TEST", "PWNED_LINT", "PWNED_ENV"] {
        assert!(
            !marker(name).exists(),
            "{name}: the repository's configuration ran a command\n{}",
            pool::output_text(&events)
        );
    }
    assert_eq!(result.files_changed, vec!["src/module.py".to_string()]);
    let out = pool::output_text(&events);
    assert!(
        !out.contains("Running touch") && !out.contains("PWNED"),
        "aider was told about the hostile commands:\n{out}"
    );
    assert_eq!(pool::worktree_count(&repo), 1);
}

/// A dispatch attempt of a task whose result another attempt already kept (`pas/<origin>`) is
/// refused before aider runs: a distinct, final failure naming the branch and commit that exist,
/// and nothing of it is left in the repository.
#[tokio::test]
async fn an_attempt_of_an_already_kept_task_fails_already_kept_without_calling_the_llm() {
    let pool = TestPool::new(PoolOptions::default());
    let repo = pool.sample_repo();
    let base = common::git_head(&repo);
    // Attempt 1 of task "k" kept its result (made by hand here).
    common::git(&repo, &["branch", "pas/k", &base]);
    let _prog = pool.start_programmer("001");
    let mut c = client(&pool, "001").await;

    let (_, result) = execute(
        &mut c,
        TaskRequest {
            task_id: "k:attempt-2".into(),
            origin_task_id: "k".into(),
            dispatch_attempt: 2,
            ..task("Add docstrings to all functions", &["src/module.py"])
        },
    )
    .await;
    pool::assert_failed_with(&result, ErrorClass::AlreadyKept);
    assert!(
        result.error_message.contains("already kept") && result.error_message.contains("pas/k"),
        "{}",
        result.error_message
    );
    assert_eq!(
        (result.branch.as_str(), result.commit.as_str()),
        ("pas/k", base.as_str())
    );
    assert!(result.attempts.is_empty(), "no LLM paid: {result:#?}");
    assert!(pool::sim_requests(&pool.sim).await.is_empty());
    assert_eq!(pool::task_branches(&repo), vec!["pas/k".to_string()]);
    assert_eq!(pool::worktree_count(&repo), 1);
}
