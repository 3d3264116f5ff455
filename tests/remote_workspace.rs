//! Remote workspaces end to end: a task names a `repo_url` instead of a local workspace; the
//! programmer fetches it into its own mirror, real aider edits a worktree of it (LLM: llm-sim),
//! and the result is pushed to the remote as `pas/<task>`, create-only. The remote is a real
//! `git daemon` on 127.0.0.1 (git://) or a bare repository reached over file://; the pool's
//! workspace root stays empty, so nothing is shared with the programmer but the URL.

use crate::common;

use common::gitserver::{GitDaemon, bare_repo, diff, pas_branches, ref_commit};
use common::pool::{
    PoolOptions, SAMPLE_MODULE, TestPool, TestProgrammer, assert_failed_with, dispatch_collect,
    execute_task, free_port, manager_client, sim_edit_requests, state_of, wait_available,
};
use pas::contract::v1::{DispatchRequest, ErrorClass, TaskRequest, TaskState};
use std::path::{Path, PathBuf};
use tonic::Code;

/// The secret the programmers' `https_token_env` names (the harness's test OpenAI key).
const TOKEN: &str = "sk-test-openai-secret";

const SAMPLE_FILES: [(&str, &str); 2] = [("src/module.py", SAMPLE_MODULE), ("README.md", "# s\n")];

/// A pool whose config allows the patterns `allow` returns; the served repositories live in
/// `<pool>/served`. Its programmers' https token is `$PAS_TEST_OPENAI_KEY`, which the harness
/// sets on every process to [`TOKEN`].
fn pool_allowing(programmers: &[&str], allow: impl FnOnce(&Path) -> String) -> (TestPool, PathBuf) {
    let pool = TestPool::new(PoolOptions {
        programmers: programmers
            .iter()
            .map(|id| TestProgrammer::free(id))
            .collect(),
        ..Default::default()
    });
    let served = pool.dir.path().join("served");
    std::fs::create_dir_all(&served).expect("served dir");
    let patterns = allow(&served);
    pool.append_config(&format!(
        "repositories:\n  allow: [\"{patterns}\"]\n  https_token_env: PAS_TEST_OPENAI_KEY\n"
    ));
    (pool, served)
}

fn remote_request(task_id: &str, url: &str) -> DispatchRequest {
    DispatchRequest {
        task_id: task_id.into(),
        task_description: "Add docstrings to all functions".into(),
        files: vec!["src/module.py".into()],
        repo_url: url.into(),
        run_id: "run-remote".into(),
        ..Default::default()
    }
}

/// The branch the result names exists on the served repository at the reported commit, with
/// exactly the reported diff from the reported base.
#[track_caller]
fn assert_pushed(served: &Path, result: &pas::contract::v1::TaskResult, task_id: &str) {
    assert_eq!(state_of(result), TaskState::Succeeded, "{result:#?}");
    let refname = format!("refs/heads/pas/{task_id}");
    assert_eq!(result.pushed_ref, refname);
    assert_eq!(result.pushed_commit, result.commit);
    assert_eq!(result.branch, format!("pas/{task_id}"));
    assert_eq!(
        ref_commit(served, &refname).as_deref(),
        Some(result.commit.as_str())
    );
    assert_eq!(
        ref_commit(served, "refs/heads/main").as_deref(),
        Some(result.base_commit.as_str()),
        "the task started from the remote's HEAD"
    );
    assert!(!result.diff.is_empty());
    assert_eq!(
        diff(served, &result.base_commit, &result.commit),
        result.diff
    );
    assert_eq!(result.files_changed, ["src/module.py"]);
}

/// Mirrors under the pool's data dir, and the scratch branches left in them.
fn mirrors_and_scratch(pool: &TestPool) -> (usize, Vec<String>) {
    let dir = pool.data_dir.join("mirrors");
    let mirrors: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "git"))
                .collect()
        })
        .unwrap_or_default();
    let scratch = mirrors
        .iter()
        .flat_map(|m| {
            common::git(m, &["for-each-ref", "--format=%(refname)", "refs/heads/"])
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    (mirrors.len(), scratch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repo_url_task_pushes_its_branch_with_exactly_the_reported_diff_once() {
    let port = free_port();
    let (pool, served) = pool_allowing(&["001"], |_| format!("git://127.0.0.1:{port}/*"));
    let bare = bare_repo(&served, "sample", &SAMPLE_FILES);
    let daemon = GitDaemon::start(&[], &served, "127.0.0.1", port);
    let url = daemon.url("sample");
    let _procs = pool.start_all();
    let c = manager_client(&pool).await;
    wait_available(&c, 1).await;

    let (_, result) = dispatch_collect(&c, remote_request("remote-1", &url)).await;
    assert_pushed(&bare, &result, "remote-1");
    assert_eq!(pas_branches(&bare), ["refs/heads/pas/remote-1"]);
    assert!(
        std::fs::read_dir(&pool.workspace_root)
            .expect("root")
            .next()
            .is_none(),
        "no local copy of the repository was needed"
    );

    // Another attempt of the same task (the manager re-sending it) pushes nothing: the remote
    // already has the branch, seen in the fetch before any LLM is paid for.
    let edits_before = sim_edit_requests(&pool.sim, "primary-001").await;
    assert!(edits_before > 0, "the first attempt's edits are counted");
    let mut prog = pool.programmer_client("001").await;
    let (_, second) = execute_task(
        &mut prog,
        TaskRequest {
            task_id: "remote-1:attempt-2".into(),
            origin_task_id: "remote-1".into(),
            task_description: "Add docstrings to all functions".into(),
            files: vec!["src/module.py".into()],
            repo_url: url.clone(),
            ..Default::default()
        },
    )
    .await;
    assert_failed_with(&second, ErrorClass::AlreadyKept);
    assert_eq!(second.commit, result.commit, "names the result that exists");
    assert!(second.pushed_ref.is_empty() && second.pushed_commit.is_empty());
    assert_eq!(
        ref_commit(&bare, "refs/heads/pas/remote-1").as_deref(),
        Some(result.commit.as_str()),
        "the kept branch did not move"
    );
    assert_eq!(
        sim_edit_requests(&pool.sim, "primary-001").await,
        edits_before
    );

    let (mirrors, scratch) = mirrors_and_scratch(&pool);
    assert_eq!(mirrors, 1);
    assert!(scratch.is_empty(), "scratch branches left: {scratch:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tasks_on_one_url_share_the_hosts_mirror_and_push_their_own_branches() {
    let (pool, served) = pool_allowing(&["001", "002"], |served| {
        format!("file://{}/*", served.display())
    });
    let bare = bare_repo(&served, "sample", &SAMPLE_FILES);
    let url = format!("file://{}", bare.display());
    let _procs = pool.start_all();
    let c = manager_client(&pool).await;
    wait_available(&c, 2).await;

    let (a, b) = tokio::join!(
        dispatch_collect(&c, remote_request("conc-a", &url)),
        dispatch_collect(&c, remote_request("conc-b", &url)),
    );
    assert_pushed(&bare, &a.1, "conc-a");
    assert_pushed(&bare, &b.1, "conc-b");
    assert_ne!(
        a.1.programmer_id, b.1.programmer_id,
        "both programmers worked from the one mirror at once"
    );
    assert_eq!(
        pas_branches(&bare),
        ["refs/heads/pas/conc-a", "refs/heads/pas/conc-b"]
    );
    let (mirrors, scratch) = mirrors_and_scratch(&pool);
    assert_eq!(mirrors, 1, "one mirror per URL on a host");
    assert!(scratch.is_empty(), "scratch branches left: {scratch:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_urls_name_repo_url_and_credentials_never_leak() {
    let (pool, served) = pool_allowing(&["001"], |served| {
        format!("file://{}/*\", \"https://127.0.0.1:1/*", served.display())
    });
    let bare = bare_repo(&served, "sample", &SAMPLE_FILES);
    let allowed = format!("file://{}", bare.display());
    let procs = pool.start_all();
    let c = manager_client(&pool).await;
    wait_available(&c, 1).await;

    let secret = "hunter2-s3cret";
    let cases = [
        (
            remote_request("r-1", "file:///etc/elsewhere.git"),
            "is not in repositories.allow",
        ),
        (
            remote_request("r-2", &format!("https://user:{secret}@127.0.0.1/x.git")),
            "embeds credentials",
        ),
        (
            remote_request("r-3", &format!("https://{secret}@127.0.0.1/x.git")),
            "embeds credentials",
        ),
        (
            remote_request("r-4", "ext::sh -c touch% /tmp/pwned"),
            "whitespace",
        ),
        (remote_request("r-5", "ext::sh"), "unsupported transport"),
        (
            DispatchRequest {
                workspace: "sample".into(),
                ..remote_request("r-6", &allowed)
            },
            "not both",
        ),
    ];
    for (req, expected) in cases {
        let status = c.clone().dispatch(req).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with("repo_url: ") && status.message().contains(expected),
            "{:?} should name repo_url and say {expected:?}",
            status.message()
        );
        assert!(!status.message().contains(secret), "{}", status.message());
    }

    // The programmer is the authority: a direct Execute outside its allow-list is refused too.
    let mut prog = pool.programmer_client("001").await;
    let status = prog
        .execute(TaskRequest {
            task_id: "direct-1".into(),
            task_description: "x".into(),
            repo_url: format!("https://user:{secret}@127.0.0.1/x.git"),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(!status.message().contains(secret), "{}", status.message());
    let status = prog
        .execute(TaskRequest {
            task_id: "direct-2".into(),
            task_description: "x".into(),
            repo_url: "file:///etc/elsewhere.git".into(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(
        status.message(),
        "repo_url: \"file:///etc/elsewhere.git\" is not in repositories.allow"
    );

    // A base ref the remote does not have fails the task with the git error, nothing pushed.
    let (_, result) = dispatch_collect(
        &c,
        DispatchRequest {
            base_ref: "no-such-branch".into(),
            ..remote_request("r-7", &allowed)
        },
    )
    .await;
    assert_failed_with(&result, ErrorClass::GitError);
    assert!(
        result.error_message.contains("no-such-branch"),
        "{result:#?}"
    );
    assert!(pas_branches(&bare).is_empty());

    // An https remote gets the programmer's own token (through git's environment); the remote
    // is unreachable, and neither the failure nor any log shows the token, raw or encoded.
    let (_, result) =
        dispatch_collect(&c, remote_request("r-8", "https://127.0.0.1:1/x.git")).await;
    assert_failed_with(&result, ErrorClass::GitError);
    let encoded = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{TOKEN}"))
    };
    let text = format!("{result:?}");
    assert!(text.contains("https://127.0.0.1:1/x.git"), "{text}");
    for leak in [TOKEN, encoded.as_str()] {
        assert!(!text.contains(leak), "{text}");
    }

    for p in &procs {
        let log = p.log_text();
        for leak in [secret, TOKEN, encoded.as_str()] {
            assert!(!log.contains(leak), "{} logged a secret", p.name);
        }
    }
}
