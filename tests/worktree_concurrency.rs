//! Ten programmers working on one repository at the same time must never trip over each other's
//! git locks: each creates a worktree, writes a file, commits, finishes and keeps its branch.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use pas::programmer::worktree::GitIdentity;
use pas::workspace::Workspace;

fn git_output(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Test Setup")
        .env("GIT_AUTHOR_EMAIL", "setup@example.test")
        .env("GIT_COMMITTER_NAME", "Test Setup")
        .env("GIT_COMMITTER_EMAIL", "setup@example.test")
        .output()
        .expect("git runs (is git installed?)")
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = git_output(dir, args);
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn init_repo(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir).expect("mkdir");
    git(dir, &["init", "-q", "-b", "main"]);
    fs::write(dir.join("README.md"), "# shared repository\n").expect("write");
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "initial"]);
    fs::canonicalize(dir).expect("canonical")
}

fn identity(i: usize) -> GitIdentity {
    GitIdentity {
        name: format!("pas programmer-{i:03}"),
        email: format!("programmer-{i:03}@pas.test"),
    }
}

fn assert_repo_healthy(repo: &Path, worktrees: &Path) {
    let fsck = git_output(repo, &["fsck", "--strict", "--no-progress"]);
    assert!(
        fsck.status.success(),
        "git fsck --strict failed: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let list = git(repo, &["worktree", "list", "--porcelain"]);
    let listed: Vec<&str> = list
        .lines()
        .filter(|l| l.starts_with("worktree "))
        .collect();
    assert_eq!(
        listed,
        vec![format!("worktree {}", repo.display())],
        "only the main worktree"
    );
    assert_eq!(
        fs::read_dir(worktrees).expect("worktrees dir").count(),
        0,
        "no worktree directory left"
    );
    assert_eq!(
        git(repo, &["status", "--porcelain"]),
        "",
        "main working tree untouched"
    );
    assert!(!repo.join(".git/index.lock").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_programmers_on_one_repository() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = init_repo(&tmp.path().join("ws/shared"));
    let worktrees = tmp.path().join("worktrees");
    let ws = Workspace::open(&tmp.path().join("ws"), "shared")
        .await
        .expect("open");
    let base = ws.resolve_base(None).await.expect("base");

    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(10));
    let tasks: Vec<_> = (1..=10)
        .map(|i| {
            let (ws, worktrees, base, barrier) =
                (ws.clone(), worktrees.clone(), base.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let wt = ws
                    .create_task_worktree(
                        &worktrees,
                        &format!("task-{i}"),
                        &format!("task-{i}"),
                        &base,
                        &identity(i),
                    )
                    .await
                    .map_err(|e| format!("task {i} create: {e}"))?;
                let file = format!("task-{i}.txt");
                fs::write(wt.path().join(&file), format!("written by task {i}\n"))
                    .map_err(|e| format!("task {i} write: {e}"))?;
                let change = wt
                    .finish(&format!("task {i}"))
                    .await
                    .map_err(|e| format!("task {i} finish: {e}"))?;
                wt.keep(&change)
                    .await
                    .map_err(|e| format!("task {i} keep: {e}"))?;
                Ok::<_, String>((i, file, change))
            })
        })
        .collect();

    let mut results = Vec::new();
    for t in tasks {
        results.push(
            t.await
                .expect("task panicked")
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }

    let mut expected_branches = vec!["main".to_string()];
    for (i, file, change) in &results {
        let branch = format!("pas/task-{i}");
        expected_branches.push(branch.clone());
        assert_eq!(change.files_changed, vec![file.clone()]);
        assert_eq!(git(&repo, &["rev-parse", &branch]), change.commit);
        assert_eq!(
            git(
                &repo,
                &["rev-list", "--count", &format!("{base}..{branch}")]
            ),
            "1",
            "{branch} holds exactly its own commit"
        );
        assert_eq!(git(&repo, &["rev-parse", &format!("{branch}^")]), base);
        assert_eq!(
            git(&repo, &["diff", "--name-only", &base, &branch]),
            file.as_str()
        );
        assert_eq!(
            git(&repo, &["show", &format!("{branch}:{file}")]),
            format!("written by task {i}")
        );
        assert_eq!(
            git(&repo, &["log", "-1", "--format=%an", &branch]),
            format!("pas programmer-{i:03}")
        );
    }
    expected_branches.sort();
    let mut branches: Vec<String> = git(
        &repo,
        &["for-each-ref", "--format=%(refname:short)", "refs/heads/"],
    )
    .lines()
    .map(str::to_string)
    .collect();
    branches.sort();
    assert_eq!(branches, expected_branches);
    assert_repo_healthy(&repo, &worktrees);
}

/// Heavier churn: ten programmers each run three tasks back to back, retrying once (reset) and
/// alternately keeping and discarding, all on one repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sustained_churn_keeps_the_repository_consistent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = init_repo(&tmp.path().join("ws/shared"));
    let worktrees = tmp.path().join("worktrees");
    let ws = Workspace::open(&tmp.path().join("ws"), "shared")
        .await
        .expect("open");
    let base = ws.resolve_base(None).await.expect("base");

    let tasks: Vec<_> = (1..=10)
        .map(|p| {
            let (ws, worktrees, base) = (ws.clone(), worktrees.clone(), base.clone());
            tokio::spawn(async move {
                let mut kept = Vec::new();
                for round in 0..3 {
                    let id = format!("p{p}-r{round}");
                    let wt = ws
                        .create_task_worktree(&worktrees, &id, &id, &base, &identity(p))
                        .await
                        .map_err(|e| format!("{id} create: {e}"))?;
                    fs::write(wt.path().join("failed-attempt.txt"), "x")
                        .map_err(|e| format!("{id} write: {e}"))?;
                    wt.reset().await.map_err(|e| format!("{id} reset: {e}"))?;
                    fs::write(wt.path().join(format!("{id}.txt")), &id)
                        .map_err(|e| format!("{id} write: {e}"))?;
                    let change = wt
                        .finish(&id)
                        .await
                        .map_err(|e| format!("{id} finish: {e}"))?;
                    if change.files_changed != vec![format!("{id}.txt")] {
                        return Err(format!("{id}: unexpected files {:?}", change.files_changed));
                    }
                    if (p + round) % 2 == 0 {
                        wt.keep(&change)
                            .await
                            .map_err(|e| format!("{id} keep: {e}"))?;
                        kept.push(format!("pas/{id}"));
                    } else {
                        wt.discard()
                            .await
                            .map_err(|e| format!("{id} discard: {e}"))?;
                    }
                }
                Ok::<_, String>(kept)
            })
        })
        .collect();

    let mut kept = vec!["main".to_string()];
    for t in tasks {
        kept.extend(
            t.await
                .expect("task panicked")
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }
    kept.sort();
    let mut branches: Vec<String> = git(
        &repo,
        &["for-each-ref", "--format=%(refname:short)", "refs/heads/"],
    )
    .lines()
    .map(str::to_string)
    .collect();
    branches.sort();
    assert_eq!(branches, kept);
    assert_eq!(kept.len(), 1 + 15);
    assert_repo_healthy(&repo, &worktrees);
}

// ----- separate processes, as in production -----

const CHILD_ENV: &str = "PAS_WORKTREE_CHILD";

/// Polls `ready` every 2 ms until it holds; panics after a minute (something is stuck).
fn wait_for(what: &str, ready: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Child-process half of `ten_processes_on_one_repository` (ignored so it never runs on its own;
/// the parent runs it with `--ignored` and the task in the environment).
#[test]
#[ignore = "run only as a child process of ten_processes_on_one_repository"]
fn child_programmer_process() {
    let spec = std::env::var(CHILD_ENV).expect("spawned by the parent test with its spec");
    let parts: Vec<&str> = spec.split('\t').collect();
    let [root, worktrees, base, index, sync] = parts[..] else {
        panic!("bad child spec {spec:?}");
    };
    let i: usize = index.parse().expect("index");
    let sync = Path::new(sync);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // Start together with the other nine: say ready, wait until the parent says go (it does once
    // all ten are ready).
    fs::write(sync.join(format!("ready-{i}")), "").expect("ready");
    wait_for("the parent to say go", || sync.join("go").exists());
    rt.block_on(async {
        let ws = Workspace::open(Path::new(root), "shared")
            .await
            .expect("open");
        let wt = ws
            .create_task_worktree(
                Path::new(worktrees),
                &format!("proc-{i}"),
                &format!("proc-{i}"),
                base,
                &identity(i),
            )
            .await
            .expect("create");
        // Holding a task worktree: do not finish before another process holds one too, so every
        // process's work overlaps another's whatever the scheduler does.
        fs::write(sync.join(format!("holding-{i}")), "").expect("holding");
        wait_for("another process to hold a worktree", || {
            (1..=10).any(|j| j != i && sync.join(format!("holding-{j}")).exists())
        });
        fs::write(
            wt.path().join(format!("proc-{i}.txt")),
            format!("process {i}\n"),
        )
        .expect("write");
        let change = wt.finish(&format!("process {i}")).await.expect("finish");
        assert_eq!(change.files_changed, vec![format!("proc-{i}.txt")]);
        wt.keep(&change).await.expect("keep");
    });
}

#[test]
fn ten_processes_on_one_repository() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("ws");
    let repo = init_repo(&root.join("shared"));
    let worktrees = tmp.path().join("worktrees");
    let base = git(&repo, &["rev-parse", "HEAD"]);
    let exe = std::env::current_exe().expect("test binary");
    let sync = tmp.path().join("sync");
    fs::create_dir(&sync).expect("sync dir");

    let children: Vec<_> = (1..=10)
        .map(|i| {
            let spec = format!(
                "{}\t{}\t{base}\t{i}\t{}",
                root.display(),
                worktrees.display(),
                sync.display()
            );
            let child = Command::new(&exe)
                .args([
                    "--exact",
                    "worktree_concurrency::child_programmer_process",
                    "--ignored",
                    "--nocapture",
                ])
                .env(CHILD_ENV, spec)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn child process");
            (i, child)
        })
        .collect();
    // Release them all at once, when every child is up and waiting.
    wait_for("all ten children ready", || {
        (1..=10).all(|i| sync.join(format!("ready-{i}")).exists())
    });
    fs::write(sync.join("go"), "").expect("go");
    for (i, child) in children {
        let out = child.wait_with_output().expect("child runs");
        assert!(
            out.status.success(),
            "process {i} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "process {i} did not run its task"
        );
    }

    for i in 1..=10 {
        let branch = format!("pas/proc-{i}");
        assert_eq!(
            git(
                &repo,
                &["rev-list", "--count", &format!("{base}..{branch}")]
            ),
            "1"
        );
        assert_eq!(git(&repo, &["rev-parse", &format!("{branch}^")]), base);
        assert_eq!(
            git(&repo, &["diff", "--name-only", &base, &branch]),
            format!("proc-{i}.txt")
        );
    }
    let branches = git(
        &repo,
        &["for-each-ref", "--format=%(refname:short)", "refs/heads/"],
    );
    assert_eq!(branches.lines().count(), 11, "{branches}");
    assert_repo_healthy(&repo, &worktrees);
}
