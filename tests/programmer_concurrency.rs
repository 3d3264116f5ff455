//! Ten `pas programmer` processes work on ONE repository at the same time (the original ran ten
//! aider processes in one working tree and raced on `.git/index.lock`). Real aider, llm-sim, git.

use crate::common;

use common::pool::{self, PoolOptions, TestPool, TestProgrammer};
use pas::contract::v1::TaskState;
use std::collections::BTreeSet;

const PROGRAMMERS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_programmers_on_one_repository_make_ten_branches_without_lock_errors() {
    let ids: Vec<String> = (1..=PROGRAMMERS).map(|i| format!("{i:03}")).collect();
    let options = PoolOptions {
        programmers: ids.iter().map(|id| TestProgrammer::free(id)).collect(),
        // Ten aider processes share two cores here: give each plenty of time.
        task_timeout_s: 600,
        request_timeout_s: 300,
        ..PoolOptions::default()
    };
    let pool = TestPool::new(options);
    let repo = pool.sample_repo();
    let base = common::git_head(&repo);
    let _procs: Vec<_> = ids.iter().map(|id| pool.start_programmer(id)).collect();

    let mut runs = Vec::new();
    for id in &ids {
        let mut c = pool.programmer_client(id).await;
        let req = pas::contract::v1::TaskRequest {
            task_id: format!("ten-{id}"),
            ..pool::task_request(
                "sample",
                "Add docstrings to all functions",
                &["src/module.py"],
            )
        };
        runs.push(tokio::spawn(async move {
            pool::execute_task(&mut c, req).await
        }));
    }
    let mut results = Vec::new();
    for run in runs {
        results.push(run.await.expect("task"));
    }

    let mut branches = BTreeSet::new();
    for (id, (events, r)) in ids.iter().zip(&results) {
        let output = pool::output_text(events);
        assert!(
            !output.contains("index.lock") && !r.error_message.contains("index.lock"),
            "{id}: index.lock trouble\n{output}"
        );
        assert_eq!(
            TaskState::try_from(r.status),
            Ok(TaskState::Succeeded),
            "{id}: {r:#?}\n{output}"
        );
        assert_eq!(&r.programmer_id, id);
        assert_eq!(r.files_changed, vec!["src/module.py".to_string()]);
        assert_eq!(r.base_commit, base);
        assert_eq!(
            common::git(&repo, &["rev-parse", &r.branch]).trim(),
            r.commit,
            "{id}: the branch holds the reported commit"
        );
        // Each branch carries exactly its own edit on top of the base.
        let log = common::git(&repo, &["rev-list", &format!("{base}..{}", r.branch)]);
        assert_eq!(log.lines().count(), 1, "{id}: one commit on its branch");
        let content = common::git(&repo, &["show", &format!("{}:src/module.py", r.commit)]);
        assert!(content.contains("\"\"\""), "{id}: {content}");
        branches.insert(r.branch.clone());
    }
    assert_eq!(branches.len(), PROGRAMMERS, "ten distinct branches");
    let listed: BTreeSet<String> = pool::task_branches(&repo).into_iter().collect();
    assert_eq!(listed, branches);

    // The repository is sound and the main checkout untouched.
    let fsck = std::process::Command::new("git")
        .args(["fsck", "--full", "--strict", "--no-dangling"])
        .current_dir(&repo)
        .output()
        .expect("git fsck");
    assert!(
        fsck.status.success() && fsck.stdout.is_empty(),
        "git fsck: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    assert!(
        String::from_utf8_lossy(&fsck.stderr).trim().is_empty(),
        "git fsck warnings: {}",
        String::from_utf8_lossy(&fsck.stderr)
    );
    assert_eq!(common::git_head(&repo), base);
    assert!(
        common::git(&repo, &["status", "--porcelain"])
            .trim()
            .is_empty()
    );
    assert!(!repo.join(".git/index.lock").exists());
    assert_eq!(
        pool::worktree_count(&repo),
        1,
        "every task worktree removed"
    );
}
