//! A programmer killed with SIGKILL mid-task: its aider dies with it (parent-death signal), and on
//! restart it removes the worktree and branch the dead run left behind, then serves normally.

use crate::common;

use common::pool::{PoolOptions, TestPool, wait_until};
use pas::contract::v1::programmer_client::ProgrammerClient;
use pas::contract::v1::task_event::Kind;
use pas::contract::v1::{ErrorClass, TaskRequest, TaskState};
use std::time::Duration;

fn task(id: &str) -> TaskRequest {
    TaskRequest {
        task_id: id.into(),
        task_description: "Add docstrings to all functions".into(),
        files: vec!["src/module.py".into()],
        workspace: "sample".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn kill_9_leaves_no_orphan_aider_and_restart_sweeps_the_worktree() {
    let sim = common::Sim::start_with_script("rules:\n  - model: \"*-001\"\n    fault: hang\n");
    let pool = TestPool::with_sim(PoolOptions::default(), sim);
    let repo = pool.sample_repo();
    let worktrees = pool.data_dir.join("programmers/001/worktrees");
    let mut prog = pool.start_programmer("001");

    let mut client = ProgrammerClient::connect(pool.programmer_url("001"))
        .await
        .unwrap();
    let mut stream = client.execute(task("doomed")).await.unwrap().into_inner();
    // Wait until aider is running inside the task worktree.
    let mut seen_output = false;
    while !seen_output {
        match stream.message().await.unwrap() {
            Some(ev) => seen_output = matches!(ev.kind, Some(Kind::Output(_))),
            None => panic!("stream ended early"),
        }
    }
    let task_dir = std::fs::read_dir(&worktrees)
        .unwrap()
        .flatten()
        .next()
        .expect("a task worktree")
        .path();
    wait_until(
        Duration::from_secs(20),
        "aider running in the worktree",
        || {
            let dir = task_dir.clone();
            async move { !common::processes_in_dir(&dir).is_empty() }
        },
    )
    .await;

    // Everything the programmer started: the running aider and, warm, the zygote and its idle
    // workers.
    let tree = common::descendants(prog.pid());
    assert!(!tree.is_empty());
    prog.kill();
    wait_until(
        Duration::from_secs(5),
        "aider killed with its programmer",
        || {
            let dir = task_dir.clone();
            async move { common::processes_in_dir(&dir).is_empty() }
        },
    )
    .await;
    wait_until(
        Duration::from_secs(5),
        "every process the programmer started gone (zygote, idle workers)",
        || {
            let tree = tree.clone();
            async move { !tree.iter().any(|&p| common::alive(p)) }
        },
    )
    .await;
    assert!(
        task_dir.exists(),
        "the dead run left its worktree behind (nothing could clean it)"
    );
    // The attempt's scratch branch; no result was kept.
    assert!(
        common::git(&repo, &["branch", "--list", "pas-work/doomed"]).contains("pas-work/doomed")
    );
    assert!(
        common::git(&repo, &["branch", "--list", "pas/*"])
            .trim()
            .is_empty()
    );

    // Restart: the leftover worktree and branch are swept before serving.
    pool.sim.set_script("rules: []\n").await;
    let _prog = pool.start_programmer("001");
    assert!(!task_dir.exists(), "abandoned worktree removed on start-up");
    assert_eq!(common::git(&repo, &["worktree", "list"]).lines().count(), 1);
    assert!(
        common::git(&repo, &["branch", "--list", "pas-work/*", "pas/*"])
            .trim()
            .is_empty(),
        "abandoned branch deleted"
    );

    // The programmer's journal remembers the task: asked again under the same id, it answers
    // that the task ended with the process that ran it (handed back, for the manager to run it
    // elsewhere under a new attempt id) instead of running it a second time.
    let mut client = ProgrammerClient::connect(pool.programmer_url("001"))
        .await
        .unwrap();
    let last_kind = |mut stream: tonic::Streaming<pas::contract::v1::TaskEvent>| async move {
        let mut last = None;
        while let Some(ev) = stream.message().await.unwrap() {
            last = ev.kind;
        }
        match last {
            Some(Kind::Result(result)) => result,
            other => panic!("no result: {other:?}"),
        }
    };
    let again = last_kind(client.execute(task("doomed")).await.unwrap().into_inner()).await;
    assert_eq!(
        again.error_class,
        ErrorClass::HandedBack as i32,
        "{again:#?}"
    );
    assert!(again.error_message.contains("restarted"), "{again:#?}");

    // And it serves: a new task runs cleanly.
    let result = last_kind(client.execute(task("reborn")).await.unwrap().into_inner()).await;
    assert_eq!(
        TaskState::try_from(result.status),
        Ok(TaskState::Succeeded),
        "{result:#?}"
    );
    assert_eq!(result.branch, "pas/reborn");
}

/// A task on programmer 001 whose attempt keeps its edit (branch `pas/<id>`), 001 killed right
/// after that, before it journals the result, then restarted. `programmers` are started (001
/// first) with `max_dispatch_attempts`; the task's result must be that kept edit.
async fn an_edit_kept_just_before_a_kill(programmers: &[&str], max_dispatch_attempts: u32) {
    use common::pool::{
        collect_events, manager_client, sample_dispatch, sim_requests, state_of, task_branches,
        wait_available,
    };
    use nix::fcntl::{Flock, FlockArg};
    use pas::contract::v1::DispatchRequest;
    use pas::git::WORKTREE_LOCK_FILE;

    // Replies stream slowly: there is time to take the lock below while aider runs.
    let sim = common::Sim::start_with_script("default:\n  chunk_delay_ms: 50\n  chunk_chars: 16\n");
    let pool = TestPool::with_sim(
        PoolOptions {
            programmers: programmers
                .iter()
                .map(|&id| common::pool::TestProgrammer::free(id))
                .collect(),
            task_lease_s: 120,
            ..PoolOptions::default()
        },
        sim,
    );
    pool.edit_config(|c| {
        c.replace(
            "max_dispatch_attempts: 3",
            &format!("max_dispatch_attempts: {max_dispatch_attempts}"),
        )
    });
    let repo = pool.sample_repo();
    let mut prog = pool.start_programmer("001");
    let _manager = pool.start_manager();
    let c = manager_client(&pool).await;
    wait_available(&c, 1).await;

    let id = "kept-then-killed";
    let request = DispatchRequest {
        task_id: id.into(),
        ..sample_dispatch("Add docstrings to all functions")
    };
    let caller = c
        .clone()
        .dispatch(request)
        .await
        .expect("Dispatch")
        .into_inner();
    wait_until(
        Duration::from_secs(60),
        "aider asking the model",
        || async { !sim_requests(&pool.sim).await.is_empty() },
    )
    .await;
    // The others start now: the task is on 001.
    let _others: Vec<_> = programmers[1..]
        .iter()
        .map(|id| pool.start_programmer(id))
        .collect();
    // The task's worktree exists. Holding the repository's worktree lock stops the programmer
    // right after it keeps the edit, when it removes that worktree: the branch exists, the
    // result is not journaled yet.
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(repo.join(".git").join(WORKTREE_LOCK_FILE))
        .expect("lock file");
    let held = Flock::lock(lock_file, FlockArg::LockExclusive).expect("hold the lock");
    let branch = format!("pas/{id}");
    wait_until(
        Duration::from_secs(120),
        "the edit kept on its branch",
        || async { task_branches(&repo).contains(&branch) },
    )
    .await;
    prog.kill();
    drop(held);
    assert!(
        !prog.log_text().contains("task finished"),
        "killed before its result: {}",
        prog.log_text()
    );
    let _prog = pool.start_programmer("001");

    let (_, result) = collect_events(caller).await;
    assert_eq!(state_of(&result), TaskState::Succeeded, "{result:#?}");
    assert_eq!(result.branch, branch);
    let tip = common::git(
        &repo,
        &["rev-parse", "--verify", "--end-of-options", &branch],
    );
    assert_eq!(
        result.commit,
        tip.trim(),
        "the commit it names is the branch's"
    );
    assert!(
        !result.diff.is_empty() && !result.files_changed.is_empty(),
        "{result:#?}"
    );
    assert_eq!(task_branches(&repo), [branch], "one kept branch");
}

/// On the task's last dispatch attempt: the manager waits for the killed programmer instead of
/// giving up on a process that is gone, and the restarted programmer ends the attempt with the
/// kept edit. Before, the task ended "gave up after 1 programmer(s)" with its edit on the branch,
/// named by no result (found by the chaos test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_kept_just_before_a_kill_is_the_tasks_result_after_restart() {
    an_edit_kept_just_before_a_kill(&["001"], 1).await;
}

/// With attempts left: the task is rerouted at once, the next attempt finds the branch and ends
/// ALREADY_KEPT, and the manager then asks the lost attempt's programmer (waiting for it to
/// come back) for that attempt's result: the kept edit. Before, the task failed ALREADY_KEPT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_kept_before_a_kill_and_rerouted_is_the_tasks_result() {
    an_edit_kept_just_before_a_kill(&["001", "002"], 3).await;
}
