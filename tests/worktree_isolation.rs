//! Workspace/path validation and the task worktree life cycle, on real git repositories in
//! temporary directories.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pas::programmer::worktree::{
    Change, GitIdentity, TaskWorktree, WorktreeError, sanitize_task_id, sweep_abandoned,
};
use pas::workspace::{PathError, Workspace, WorkspaceError};

// ----- helpers -----

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Test Setup")
        .env("GIT_AUTHOR_EMAIL", "setup@example.test")
        .env("GIT_COMMITTER_NAME", "Test Setup")
        .env("GIT_COMMITTER_EMAIL", "setup@example.test")
        .output()
        .expect("git runs (is git installed?)");
    assert!(
        out.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A repository with `README.md`, `src/main.rs` and a `.gitignore` for `*.log`, one commit.
fn init_repo(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir.join("src")).expect("mkdir");
    git(dir, &["init", "-q", "-b", "main"]);
    fs::write(dir.join("README.md"), "# demo\n").expect("write");
    fs::write(dir.join("src/main.rs"), "fn main() {}\n").expect("write");
    fs::write(dir.join(".gitignore"), "*.log\n").expect("write");
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "initial"]);
    fs::canonicalize(dir).expect("canonical")
}

fn identity() -> GitIdentity {
    GitIdentity {
        name: "pas programmer-001".into(),
        email: "programmer-001@pas.test".into(),
    }
}

fn branches(repo: &Path) -> Vec<String> {
    let out = git(
        repo,
        &["for-each-ref", "--format=%(refname:short)", "refs/heads/"],
    );
    out.lines().map(str::to_string).collect()
}

/// Nothing of any task is left in `repo`: no branch but `main`, no worktree but its own.
fn assert_only_main_left(repo: &Path) {
    assert_eq!(branches(repo), vec!["main"]);
    assert_eq!(worktree_count(repo), 1);
}

fn worktree_count(repo: &Path) -> usize {
    git(repo, &["worktree", "list", "--porcelain"])
        .lines()
        .filter(|l| l.starts_with("worktree "))
        .count()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    repo: PathBuf,
    worktrees: PathBuf,
    ws: Workspace,
}

async fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("workspaces");
    let repo = init_repo(&root.join("proj"));
    let worktrees = tmp.path().join("worktrees");
    let ws = Workspace::open(&root, "proj").await.expect("open proj");
    Fixture {
        _tmp: tmp,
        root,
        repo,
        worktrees,
        ws,
    }
}

// ----- Workspace::open -----

#[tokio::test]
async fn open_accepts_a_repository_and_refuses_everything_else() {
    let f = fixture().await;
    assert_eq!(f.ws.path(), f.repo);
    assert_eq!(f.ws.name(), "proj");

    let outside = tempfile::tempdir().expect("tempdir");
    init_repo(&outside.path().join("other"));
    fs::create_dir_all(f.root.join("plain")).expect("mkdir");
    fs::create_dir_all(f.root.join("fresh")).expect("mkdir");
    git(&f.root.join("fresh"), &["init", "-q"]);
    symlink(outside.path().join("other"), f.root.join("escape")).expect("symlink");
    symlink(f.root.join("proj"), f.root.join("alias")).expect("symlink");

    let open = |name: &'static str| {
        let root = f.root.clone();
        async move { Workspace::open(&root, name).await }
    };
    // A symlink that stays inside the root is fine and resolves to the real repository.
    assert_eq!(open("alias").await.expect("alias").path(), f.repo);
    assert_eq!(open("./proj").await.expect("./proj").path(), f.repo);

    let err = |r: Result<Workspace, WorkspaceError>| r.expect_err("must be refused");
    assert!(matches!(
        err(open("").await),
        WorkspaceError::Invalid { .. }
    ));
    assert!(matches!(
        err(open("/etc").await),
        WorkspaceError::Absolute { .. }
    ));
    let abs = f.repo.to_string_lossy().into_owned();
    assert!(matches!(
        Workspace::open(&f.root, &abs).await,
        Err(WorkspaceError::Absolute { .. })
    ));
    assert!(matches!(
        err(open("..").await),
        WorkspaceError::EscapesRoot { .. }
    ));
    assert!(matches!(
        err(open("../workspaces/proj").await),
        WorkspaceError::EscapesRoot { .. }
    ));
    assert!(matches!(
        err(open("proj/../../x").await),
        WorkspaceError::EscapesRoot { .. }
    ));
    assert!(matches!(
        err(open("escape").await),
        WorkspaceError::EscapesRoot { .. }
    ));
    assert!(matches!(
        err(open("missing").await),
        WorkspaceError::NotFound { .. }
    ));
    assert!(matches!(
        err(open("plain").await),
        WorkspaceError::NotARepo { .. }
    ));
    assert!(matches!(
        err(open("proj/src").await),
        WorkspaceError::NotARepo { .. }
    ));
    assert!(matches!(
        err(open("proj/README.md").await),
        WorkspaceError::NotARepo { .. }
    ));
    assert!(matches!(
        err(open("fresh").await),
        WorkspaceError::NoCommits { .. }
    ));
    assert!(err(open("escape").await).is_invalid_argument());

    let missing_root = Workspace::open(&f.root.join("nope"), "proj").await;
    let e = missing_root.expect_err("root missing");
    assert!(matches!(e, WorkspaceError::Root { .. }));
    assert!(!e.is_invalid_argument());
}

// ----- check_file -----

#[tokio::test]
async fn check_file_refuses_traversal_absolute_and_symlink_escapes() {
    let f = fixture().await;
    let outside = tempfile::tempdir().expect("tempdir");
    fs::write(outside.path().join("secret.txt"), "secret").expect("write");
    symlink(outside.path(), f.repo.join("outdir")).expect("symlink dir");
    symlink(outside.path().join("secret.txt"), f.repo.join("secret.txt")).expect("symlink file");
    symlink(f.repo.join("src"), f.repo.join("srclink")).expect("inner symlink");
    symlink(f.repo.join("nowhere"), f.repo.join("dangling")).expect("dangling symlink");
    symlink(f.repo.join(".git/config"), f.repo.join("cfg")).expect("symlink into .git");
    fs::write(f.repo.join(".aider.conf.yml"), "auto-test: true\n").expect("write");
    symlink(f.repo.join(".aider.conf.yml"), f.repo.join("conf")).expect("symlink to aider file");

    let ok = |p: &str| {
        f.ws.check_file(p)
            .unwrap_or_else(|e| panic!("{p:?} should be accepted: {e}"))
    };
    ok("README.md");
    ok("src/main.rs");
    ok("./src/main.rs");
    ok("src/new_file.rs");
    ok("brand/new/dir/file.rs");
    ok("srclink/main.rs");
    ok("srclink/new.rs");

    let err = |p: &str| f.ws.check_file(p).expect_err(p);
    assert!(matches!(err(""), PathError::Empty));
    assert!(matches!(err("a\0b"), PathError::Nul { .. }));
    assert!(matches!(err("/etc/passwd"), PathError::Absolute { .. }));
    assert!(matches!(
        err("../proj/README.md"),
        PathError::ParentDir { .. }
    ));
    assert!(matches!(err("src/../../x"), PathError::ParentDir { .. }));
    assert!(matches!(err("src/.."), PathError::ParentDir { .. }));
    assert!(matches!(err(".git/config"), PathError::GitDir { .. }));
    assert!(matches!(err("sub/.GIT/hooks/x"), PathError::GitDir { .. }));
    assert!(matches!(err("cfg"), PathError::GitDir { .. }));
    // Aider's own configuration and state are never task files, directly or through a symlink.
    for aider in [
        ".aider.conf.yml",
        ".aiderignore",
        "sub/.aider.model.settings.yml",
        ".aider.tags.cache.v4/cache.db",
        "conf",
    ] {
        let e = err(aider);
        assert!(matches!(e, PathError::AiderFile { .. }), "{aider:?}: {e:?}");
    }
    assert!(matches!(
        err("outdir/secret.txt"),
        PathError::EscapesWorkspace { .. }
    ));
    assert!(matches!(
        err("outdir/new.txt"),
        PathError::EscapesWorkspace { .. }
    ));
    assert!(matches!(
        err("outdir/a/b/c.txt"),
        PathError::EscapesWorkspace { .. }
    ));
    assert!(matches!(
        err("secret.txt"),
        PathError::EscapesWorkspace { .. }
    ));
    assert!(matches!(err("dangling"), PathError::DanglingSymlink { .. }));
    assert!(matches!(
        err("dangling/x"),
        PathError::DanglingSymlink { .. }
    ));
    assert!(matches!(err("src"), PathError::IsDirectory { .. }));
    assert!(matches!(err("."), PathError::IsDirectory { .. }));
    assert!(matches!(
        err("README.md/x"),
        PathError::ParentNotDirectory { .. }
    ));
}

// ----- resolve_base -----

#[tokio::test]
async fn resolve_base_names_commits_and_refuses_options() {
    let f = fixture().await;
    let head = git(&f.repo, &["rev-parse", "HEAD"]);
    assert_eq!(f.ws.resolve_base(None).await.expect("HEAD"), head);
    assert_eq!(f.ws.resolve_base(Some("main")).await.expect("main"), head);
    git(&f.repo, &["tag", "-a", "-m", "v1", "v1"]);
    assert_eq!(
        f.ws.resolve_base(Some("v1")).await.expect("annotated tag"),
        head
    );
    assert_eq!(
        f.ws.resolve_base(Some(&head[..10])).await.expect("short"),
        head
    );

    for bad in ["-x", "--output=/tmp/x", "", "  ", "a\nb"] {
        assert!(
            matches!(
                f.ws.resolve_base(Some(bad)).await,
                Err(WorktreeError::InvalidRef { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        f.ws.resolve_base(Some("no-such-branch")).await,
        Err(WorktreeError::UnknownRef { .. })
    ));
}

// ----- life cycle -----

#[tokio::test]
async fn create_finish_keep_leaves_exactly_the_branch() {
    let f = fixture().await;
    let base = f.ws.resolve_base(None).await.expect("base");
    let wt =
        f.ws.create_task_worktree(&f.worktrees, "task-1", "task-1", &base, &identity())
            .await
            .expect("create");
    // The attempt works on a scratch branch; the result is kept under the task's own name.
    assert_eq!(wt.branch(), "pas-work/task-1");
    assert_eq!(wt.kept_branch(), "pas/task-1");
    assert_eq!(wt.base_commit(), base);
    assert!(wt.path().is_dir());
    assert!(!wt.path().starts_with(&f.repo), "worktree outside the repo");
    assert_eq!(worktree_count(&f.repo), 2);
    assert_eq!(
        git(wt.path(), &["rev-parse", "--abbrev-ref", "HEAD"]),
        "pas-work/task-1"
    );
    assert_eq!(git(&f.repo, &["rev-parse", "pas-work/task-1"]), base);
    assert_eq!(branches(&f.repo), vec!["main", "pas-work/task-1"]);

    fs::write(wt.path().join("hello.txt"), "hello\n").expect("write");
    fs::write(
        wt.path().join("src/main.rs"),
        "fn main() { println!(\"hi\"); }\n",
    )
    .expect("write");
    let change = wt.finish("Add hello").await.expect("finish");
    assert_ne!(change.commit, base);
    assert_eq!(change.files_changed, vec!["hello.txt", "src/main.rs"]);
    assert!(change.diff.contains("+hello"), "{}", change.diff);
    assert!(change.diff.contains("println!"), "{}", change.diff);

    let path = wt.path().to_path_buf();
    wt.keep(&change).await.expect("keep");
    assert!(!path.exists(), "worktree directory removed");
    assert_eq!(worktree_count(&f.repo), 1);
    assert_eq!(branches(&f.repo), vec!["main", "pas/task-1"]);
    assert_eq!(git(&f.repo, &["rev-parse", "pas/task-1"]), change.commit);
    assert_eq!(git(&f.repo, &["rev-parse", "pas/task-1^"]), base);
    assert_eq!(
        git(
            &f.repo,
            &["log", "-1", "--format=%an <%ae>|%cn|%s", "pas/task-1"]
        ),
        "pas programmer-001 <programmer-001@pas.test>|pas programmer-001|Add hello"
    );
    // The main working tree was never touched.
    assert_eq!(git(&f.repo, &["status", "--porcelain"]), "");
    assert_eq!(git(&f.repo, &["rev-parse", "HEAD"]), base);
}

#[tokio::test]
async fn a_change_too_large_for_a_result_is_cut_and_kept_whole_in_its_commit() {
    use pas::programmer::worktree::MAX_DIFF_BYTES;
    let f = fixture().await;
    let base = f.ws.resolve_base(None).await.expect("base");
    let wt =
        f.ws.create_task_worktree(&f.worktrees, "big-1", "big-1", &base, &identity())
            .await
            .expect("create");
    // A generated file of 3 MiB: its diff alone is past what a gRPC client reads by default.
    let line = "0123456789abcdef".repeat(4) + "\n";
    let lines = 3 * 1024 * 1024 / line.len();
    fs::write(wt.path().join("generated.txt"), line.repeat(lines)).expect("write");
    fs::write(wt.path().join("README.md"), "# demo, changed\n").expect("write");
    let change = wt.finish("Generate").await.expect("finish");
    assert!(change.truncated);
    assert_eq!(change.files_changed, vec!["README.md", "generated.txt"]);
    assert!(change.diff.len() <= MAX_DIFF_BYTES, "{}", change.diff.len());
    assert!(change.diff.len() > MAX_DIFF_BYTES - line.len() - 1);
    assert!(change.diff.ends_with('\n'));
    assert!(change.diff.contains("# demo, changed"));
    // The commit holds the whole change.
    let kept = git(
        wt.path(),
        &["show", &format!("{}:generated.txt", change.commit)],
    );
    assert_eq!(kept.lines().count(), lines);
    // A small change is not cut.
    let small =
        f.ws.create_task_worktree(&f.worktrees, "small-1", "small-1", &base, &identity())
            .await
            .expect("create");
    assert!(!edit(&small, "hello.txt").await.truncated);
}

#[tokio::test]
async fn finish_includes_commits_aider_made_and_excludes_aider_files() {
    let f = fixture().await;
    let base = f.ws.resolve_base(None).await.expect("base");
    let wt =
        f.ws.create_task_worktree(&f.worktrees, "task-2", "task-2", &base, &identity())
            .await
            .expect("create");
    // Like aider with auto-commits: one committed edit, one left in the working tree.
    fs::write(wt.path().join("a.txt"), "a\n").expect("write");
    git(wt.path(), &["add", "a.txt"]);
    git(wt.path(), &["commit", "-q", "-m", "aider: add a"]);
    fs::write(wt.path().join("b.txt"), "b\n").expect("write");
    fs::write(wt.path().join(".aider.chat.history.md"), "chat").expect("write");
    fs::create_dir_all(wt.path().join(".aider.tags.cache.v4")).expect("mkdir");
    fs::write(wt.path().join(".aider.tags.cache.v4/cache.db"), "x").expect("write");
    // At any depth: an `.aider*` file below the top would configure an aider run there.
    fs::create_dir_all(wt.path().join("sub")).expect("mkdir");
    fs::write(wt.path().join("sub/.aider.conf.yml"), "x").expect("write");

    let change = wt.finish("").await.expect("finish");
    assert_eq!(change.files_changed, vec!["a.txt", "b.txt"]);
    assert_eq!(
        git(
            &f.repo,
            &["rev-list", "--count", &format!("{base}..pas-work/task-2")]
        ),
        "2"
    );
    assert_eq!(
        git(&f.repo, &["rev-parse", "pas-work/task-2"]),
        change.commit
    );
    wt.keep(&change).await.expect("keep");
    assert_eq!(git(&f.repo, &["rev-parse", "pas/task-2"]), change.commit);
    assert_eq!(worktree_count(&f.repo), 1);
}

#[tokio::test]
async fn empty_change_reports_the_base_and_discard_leaves_nothing() {
    let f = fixture().await;
    let base = f.ws.resolve_base(None).await.expect("base");
    let wt =
        f.ws.create_task_worktree(&f.worktrees, "task-3", "task-3", &base, &identity())
            .await
            .expect("create");
    let change = wt.finish("nothing").await.expect("finish");
    assert_eq!(change.commit, base);
    assert!(change.files_changed.is_empty());
    assert!(change.diff.is_empty());

    let path = wt.path().to_path_buf();
    wt.discard().await.expect("discard");
    assert!(!path.exists());
    assert_only_main_left(&f.repo);
    assert_eq!(
        fs::read_dir(&f.worktrees).expect("worktrees dir").count(),
        0,
        "nothing left in the worktrees directory"
    );
}

#[tokio::test]
async fn reset_returns_to_the_base_for_the_next_attempt() {
    let f = fixture().await;
    let base = f.ws.resolve_base(None).await.expect("base");
    let wt =
        f.ws.create_task_worktree(&f.worktrees, "task-4", "task-4", &base, &identity())
            .await
            .expect("create");
    fs::write(wt.path().join("README.md"), "changed\n").expect("write");
    git(
        wt.path(),
        &["commit", "-q", "-am", "attempt 1 committed this"],
    );
    fs::write(wt.path().join("src/main.rs"), "broken").expect("write");
    fs::write(wt.path().join("untracked.txt"), "x").expect("write");
    fs::write(wt.path().join("debug.log"), "ignored").expect("write");
    fs::create_dir_all(wt.path().join("newdir/deep")).expect("mkdir");
    fs::write(wt.path().join("newdir/deep/f"), "x").expect("write");

    wt.reset().await.expect("reset");
    assert_eq!(git(wt.path(), &["rev-parse", "HEAD"]), base);
    assert_eq!(git(&f.repo, &["rev-parse", "pas-work/task-4"]), base);
    assert_eq!(git(wt.path(), &["status", "--porcelain", "--ignored"]), "");
    assert_eq!(
        fs::read_to_string(wt.path().join("README.md")).expect("read"),
        "# demo\n"
    );

    // Attempt 2 starts clean and its result is only its own.
    fs::write(wt.path().join("second.txt"), "2\n").expect("write");
    let change = wt.finish("attempt 2").await.expect("finish");
    assert_eq!(change.files_changed, vec!["second.txt"]);
    assert_eq!(git(&f.repo, &["rev-parse", "pas-work/task-4^"]), base);
    wt.discard().await.expect("discard");
}

#[tokio::test]
async fn dropping_an_unfinished_worktree_cleans_up() {
    let f = fixture().await;
    let base = f.ws.resolve_base(None).await.expect("base");
    let wt =
        f.ws.create_task_worktree(&f.worktrees, "task-5", "task-5", &base, &identity())
            .await
            .expect("create");
    fs::write(wt.path().join("half.txt"), "half done").expect("write");
    git(wt.path(), &["add", "half.txt"]);
    git(wt.path(), &["commit", "-q", "-m", "partial"]);
    let path = wt.path().to_path_buf();
    drop(wt);
    assert!(!path.exists());
    assert_only_main_left(&f.repo);
}

#[tokio::test]
async fn cancelled_task_leaves_nothing_behind() {
    let f = fixture().await;
    let base = f.ws.resolve_base(None).await.expect("base");
    let ws = f.ws.clone();
    let worktrees = f.worktrees.clone();
    let (created_tx, created_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let wt = ws
            .create_task_worktree(&worktrees, "task-6", "task-6", &base, &identity())
            .await
            .expect("create");
        fs::write(wt.path().join("x.txt"), "x").expect("write");
        let _ = created_tx.send(wt.path().to_path_buf());
        // "aider" runs for a long time; the task is cancelled meanwhile.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let change = wt.finish("never").await.expect("finish");
        wt.keep(&change).await
    });
    let path = created_rx.await.expect("worktree created");
    assert!(path.is_dir());
    assert_eq!(branches(&f.repo), vec!["main", "pas-work/task-6"]);
    task.abort();
    assert!(task.await.expect_err("aborted").is_cancelled());
    assert!(!path.exists());
    assert_only_main_left(&f.repo);
}

// ----- naming, duplicates, placement -----

#[tokio::test]
async fn task_ids_are_sanitized_for_refs_and_paths() {
    let f = fixture().await;
    let base = f.ws.resolve_base(None).await.expect("base");
    let id = "../../evil branch~1^:?*[lock";
    let wt =
        f.ws.create_task_worktree(&f.worktrees, id, id, &base, &identity())
            .await
            .expect("create");
    let name = sanitize_task_id(id).expect("sanitize");
    assert_eq!(wt.branch(), format!("pas-work/{name}"));
    assert_eq!(wt.kept_branch(), format!("pas/{name}"));
    assert_eq!(
        wt.path(),
        fs::canonicalize(&f.worktrees).expect("dir").join(&name)
    );
    git(
        &f.repo,
        &["check-ref-format", &format!("refs/heads/{}", wt.branch())],
    );
    git(
        &f.repo,
        &[
            "check-ref-format",
            &format!("refs/heads/{}", wt.kept_branch()),
        ],
    );
    wt.discard().await.expect("discard");
    assert_eq!(branches(&f.repo), vec!["main"]);

    assert!(matches!(
        f.ws.create_task_worktree(&f.worktrees, "", "", &base, &identity())
            .await,
        Err(WorktreeError::InvalidTaskId { .. })
    ));
    assert!(matches!(
        f.ws.create_task_worktree(&f.worktrees, "t", "t", "--orphan", &identity())
            .await,
        Err(WorktreeError::InvalidRef { .. })
    ));
    assert!(matches!(
        f.ws.create_task_worktree(&f.worktrees, "t", "t", "deadbeef", &identity())
            .await,
        Err(WorktreeError::UnknownRef { .. })
    ));
}

#[tokio::test]
async fn a_duplicate_task_id_does_not_disturb_the_first() {
    let f = fixture().await;
    let base = f.ws.resolve_base(None).await.expect("base");
    let first =
        f.ws.create_task_worktree(&f.worktrees, "dup", "dup", &base, &identity())
            .await
            .expect("create");
    fs::write(first.path().join("mine.txt"), "mine").expect("write");

    // Same id, different worktrees dir: the branch is taken.
    let other_dir = f.worktrees.with_file_name("worktrees-2");
    let second =
        f.ws.create_task_worktree(&other_dir, "dup", "dup", &base, &identity())
            .await;
    assert!(
        matches!(second, Err(WorktreeError::BranchExists { .. })),
        "{second:?}"
    );
    // Same id, same dir: the directory is taken.
    let third =
        f.ws.create_task_worktree(&f.worktrees, "dup", "dup", &base, &identity())
            .await;
    assert!(
        matches!(third, Err(WorktreeError::WorktreeExists { .. })),
        "{third:?}"
    );

    assert!(first.path().join("mine.txt").exists());
    assert_eq!(worktree_count(&f.repo), 2);
    let change = first.finish("mine").await.expect("finish");
    assert_eq!(change.files_changed, vec!["mine.txt"]);
    first.keep(&change).await.expect("keep");
    assert_eq!(branches(&f.repo), vec!["main", "pas/dup"]);
}

#[tokio::test]
async fn worktrees_inside_the_repository_are_refused() {
    let f = fixture().await;
    let base = f.ws.resolve_base(None).await.expect("base");
    let r =
        f.ws.create_task_worktree(&f.repo.join(".pas-worktrees"), "t", "t", &base, &identity())
            .await;
    assert!(
        matches!(r, Err(WorktreeError::WorktreesDirInsideRepo { .. })),
        "{r:?}"
    );
    assert_eq!(branches(&f.repo), vec!["main"]);
}

// ----- at most one kept result per task -----

/// Writes `file` in the worktree and finishes: one attempt's successful edit.
async fn edit(wt: &TaskWorktree, file: &str) -> Change {
    fs::write(wt.path().join(file), format!("{file}\n")).expect("write");
    wt.finish(file).await.expect("finish")
}

#[tokio::test]
async fn two_attempts_of_one_task_keep_exactly_one_branch() {
    let f = fixture().await;
    let base = f.ws.resolve_base(None).await.expect("base");
    // Dispatch attempt 1 (a programmer thought lost, still running) and attempt 2 (the reroute)
    // run at the same time, on two programmers with their own worktrees directories.
    let first =
        f.ws.create_task_worktree(&f.worktrees, "t", "t", &base, &identity())
            .await
            .expect("attempt 1");
    let other_dir = f.worktrees.with_file_name("worktrees-2");
    let second =
        f.ws.create_task_worktree(&other_dir, "t:attempt-2", "t", &base, &identity())
            .await
            .expect("attempt 2");
    assert_ne!(first.branch(), second.branch(), "own scratch branches");
    assert_eq!(first.kept_branch(), "pas/t");
    assert_eq!(second.kept_branch(), "pas/t");

    // Both succeed, with different edits.
    let one = edit(&first, "one.txt").await;
    let two = edit(&second, "two.txt").await;
    assert_ne!(one.commit, two.commit);

    // The second to keep is refused by git, whatever the order in time.
    second.keep(&two).await.expect("the first keep wins");
    let refused = first.keep(&one).await.expect_err("a second kept result");
    match &refused {
        WorktreeError::AlreadyKept { branch, commit } => {
            assert_eq!(branch, "pas/t");
            assert_eq!(commit.as_deref(), Some(two.commit.as_str()));
        }
        other => panic!("expected AlreadyKept, got {other:?}"),
    }
    assert!(refused.to_string().contains("already kept"), "{refused}");

    // Exactly one branch holds the task's result: attempt 2's; attempt 1 left nothing.
    assert_eq!(branches(&f.repo), vec!["main", "pas/t"]);
    assert_eq!(git(&f.repo, &["rev-parse", "pas/t"]), two.commit);
    assert_eq!(worktree_count(&f.repo), 1);
    for dir in [&f.worktrees, &other_dir] {
        assert_eq!(fs::read_dir(dir).expect("dir").count(), 0, "{dir:?}");
    }

    // A third attempt is refused before it starts (no LLM paid for a result that cannot be kept).
    let third =
        f.ws.create_task_worktree(&f.worktrees, "t:attempt-3", "t", &base, &identity())
            .await;
    assert!(
        matches!(third, Err(WorktreeError::AlreadyKept { .. })),
        "{third:?}"
    );
    assert_eq!(branches(&f.repo), vec!["main", "pas/t"]);
}

#[tokio::test]
async fn concurrent_keeps_of_one_task_leave_one_winner() {
    let f = fixture().await;
    let base = f.ws.resolve_base(None).await.expect("base");
    let mut attempts = Vec::new();
    for n in 1..=4 {
        let id = format!("race:attempt-{n}");
        let wt =
            f.ws.create_task_worktree(&f.worktrees, &id, "race", &base, &identity())
                .await
                .expect("create");
        let change = edit(&wt, &format!("attempt-{n}.txt")).await;
        attempts.push((wt, change));
    }
    // All four keep at once: git's ref lock, not timing, picks one.
    let outcomes = futures::future::join_all(
        attempts
            .into_iter()
            .map(|(wt, change)| async move { (wt.keep(&change).await, change.commit) }),
    )
    .await;
    let winners: Vec<&String> = outcomes
        .iter()
        .filter(|(r, _)| r.is_ok())
        .map(|(_, c)| c)
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    for (r, _) in &outcomes {
        if let Err(e) = r {
            assert!(matches!(e, WorktreeError::AlreadyKept { .. }), "{e:?}");
        }
    }
    assert_eq!(branches(&f.repo), vec!["main", "pas/race"]);
    assert_eq!(git(&f.repo, &["rev-parse", "pas/race"]), *winners[0]);
    assert_eq!(worktree_count(&f.repo), 1);
}

#[tokio::test]
async fn the_sweep_removes_a_killed_attempts_scratch_branch_and_never_a_kept_one() {
    let f = fixture().await;
    let base = f.ws.resolve_base(None).await.expect("base");
    // Attempt 1 of task "k" and an unrelated task run on a programmer that is then killed:
    // nothing runs to clean up (no Drop).
    for (id, origin) in [("k", "k"), ("other", "other")] {
        let wt =
            f.ws.create_task_worktree(&f.worktrees, id, origin, &base, &identity())
                .await
                .expect("create");
        std::mem::forget(wt);
    }
    // Attempt 2 of "k", rerouted to another programmer, keeps its result.
    let kept =
        f.ws.create_task_worktree(
            &f.worktrees.with_file_name("worktrees-2"),
            "k:attempt-2",
            "k",
            &base,
            &identity(),
        )
        .await
        .expect("create");
    let change = edit(&kept, "kept.txt").await;
    kept.keep(&change).await.expect("keep");
    assert_eq!(
        branches(&f.repo),
        vec!["main", "pas-work/k", "pas-work/other", "pas/k"]
    );

    // The killed programmer restarts: its scratch worktrees and branches go, the result stays.
    let removed = sweep_abandoned(&f.worktrees, &identity()).await;
    assert_eq!(removed, 2);
    assert_eq!(branches(&f.repo), vec!["main", "pas/k"]);
    assert_eq!(git(&f.repo, &["rev-parse", "pas/k"]), change.commit);
    assert_eq!(worktree_count(&f.repo), 1);
}

// ----- lock contention -----

#[tokio::test]
async fn a_briefly_held_ref_lock_is_waited_out() {
    let f = fixture().await;
    let base = f.ws.resolve_base(None).await.expect("base");
    let lock = f.repo.join(".git/refs/heads/pas-work/locked.lock");
    fs::create_dir_all(lock.parent().expect("parent")).expect("mkdir");
    fs::write(&lock, "").expect("hold the lock");
    let release = {
        let lock = lock.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            fs::remove_file(&lock).expect("release the lock");
        })
    };
    let wt =
        f.ws.create_task_worktree(&f.worktrees, "locked", "locked", &base, &identity())
            .await
            .expect("create succeeds once the lock is released");
    release.await.expect("release task");
    wt.discard().await.expect("discard");
}

#[tokio::test]
async fn a_stuck_lock_fails_with_the_command_and_stderr() {
    let f = fixture().await;
    let base = f.ws.resolve_base(None).await.expect("base");
    let lock = f.repo.join(".git/refs/heads/pas-work/stuck.lock");
    fs::create_dir_all(lock.parent().expect("parent")).expect("mkdir");
    fs::write(&lock, "").expect("hold the lock");
    let err =
        f.ws.create_task_worktree(&f.worktrees, "stuck", "stuck", &base, &identity())
            .await
            .expect_err("a lock that is never released fails after bounded retries");
    let text = err.to_string();
    assert!(text.contains("git update-ref"), "{text}");
    assert!(text.contains("stuck.lock': File exists"), "{text}");
    assert_eq!(worktree_count(&f.repo), 1);
    assert!(!f.worktrees.join("stuck").exists());
}

#[tokio::test]
async fn a_ref_lock_left_by_a_killed_commit_does_not_keep_the_scratch_branch() {
    let f = fixture().await;
    let base = f.ws.resolve_base(None).await.expect("base");
    for (id, how) in [("killed-mid-commit", "discard"), ("dropped", "drop")] {
        let wt =
            f.ws.create_task_worktree(&f.worktrees, id, id, &base, &identity())
                .await
                .expect("create");
        // Aider's `git commit` in the worktree was killed (usage cap, deadline) between taking
        // the branch's ref lock and renaming it into place: the lock stays.
        let lock = f.repo.join(format!(".git/refs/heads/pas-work/{id}.lock"));
        fs::write(&lock, base.as_bytes()).expect("the lock a killed git left");
        match how {
            "discard" => wt.discard().await.expect("discard removes the stale lock"),
            _ => tokio::task::spawn_blocking(move || drop(wt))
                .await
                .expect("drop"),
        }
        assert_eq!(branches(&f.repo), vec!["main"], "after {how}");
        assert!(!lock.exists(), "after {how}");
        assert_eq!(worktree_count(&f.repo), 1);
    }
}

/// Something in the task (an LLM's edit of the `.git` file, which the launcher refuses; this
/// writes it directly) pointed the worktree's `.git` at a git directory of its own whose config
/// runs a command at the next `git add`: neither finish nor reset runs git there, the link is
/// restored, and the worktree still goes away without a trace.
#[tokio::test]
async fn a_rewritten_worktree_git_file_is_never_followed() {
    let f = fixture().await;
    let base = f.ws.resolve_base(None).await.expect("base");
    let ran = f.worktrees.with_file_name("filter-ran");
    for (id, step) in [("via-finish", "finish"), ("via-reset", "reset")] {
        let wt =
            f.ws.create_task_worktree(&f.worktrees, id, id, &base, &identity())
                .await
                .expect("create");
        let link = wt.path().join(".git");
        let original = fs::read_to_string(&link).expect("the worktree's .git file");
        let evil = wt.path().join("e.");
        for dir in ["objects", "refs"] {
            fs::create_dir_all(evil.join(dir)).expect("mkdir");
        }
        fs::write(evil.join("HEAD"), "ref: refs/heads/x\n").expect("HEAD");
        fs::write(
            evil.join("config"),
            format!(
                "[core]\n\trepositoryformatversion = 0\n[filter \"p\"]\n\tclean = \"touch {} && cat\"\n",
                ran.display()
            ),
        )
        .expect("config");
        fs::write(wt.path().join(".gitattributes"), "* filter=p\n").expect("attributes");
        fs::write(&link, "gitdir: e.\n").expect("the rewritten link");
        let result = match step {
            "finish" => wt.finish("x").await.map(|_| ()),
            _ => wt.reset().await,
        };
        assert!(!ran.exists(), "{step}: the filter ran ({result:?})");
        let err = result.expect_err("refused");
        assert!(
            matches!(err, WorktreeError::GitLinkChanged { .. }),
            "{step}: {err}"
        );
        assert_eq!(fs::read_to_string(&link).expect("restored"), original);
        wt.discard().await.expect("discard");
    }
    assert_only_main_left(&f.repo);
}

/// A programmer killed while it deleted a scratch branch left `packed-refs.lock`, which every
/// branch deletion in the repository takes: once it is old enough to be a dead git's, the next
/// discard removes it and deletes its branch; a young one (a live git's) is left alone.
#[tokio::test]
async fn a_packed_refs_lock_a_killed_deletion_left_does_not_keep_every_scratch_branch() {
    let f = fixture().await;
    let base = f.ws.resolve_base(None).await.expect("base");
    let lock = f.repo.join(".git/packed-refs.lock");
    for (id, age_s, removed) in [("young", 5, false), ("dead", 11 * 60, true)] {
        let file = fs::File::create(&lock).expect("the lock a killed deletion left");
        file.set_modified(std::time::SystemTime::now() - Duration::from_secs(age_s))
            .expect("its age");
        let wt =
            f.ws.create_task_worktree(&f.worktrees, id, id, &base, &identity())
                .await
                .expect("create");
        let discarded = wt.discard().await;
        assert_eq!(discarded.is_ok(), removed, "{id}: {discarded:?}");
        assert_eq!(!lock.exists(), removed, "{id}");
        assert_eq!(worktree_count(&f.repo), 1, "{id}");
    }
    // The young lock's branch stays (its deletion failed); the dead lock's went.
    assert_eq!(branches(&f.repo), vec!["main", "pas-work/young"]);
}

/// A programmer killed while it kept a task's result left the kept branch's lock (moments
/// before: too young to be taken for dead at once): another attempt of the task waits it out and
/// keeps its result instead of failing on it.
#[tokio::test]
async fn a_kept_branch_lock_a_killed_keep_left_is_waited_out() {
    let f = fixture().await;
    let base = f.ws.resolve_base(None).await.expect("base");
    let lock = f.repo.join(".git/refs/heads/pas/origin-k.lock");
    fs::create_dir_all(lock.parent().expect("parent")).expect("mkdir");
    let file = fs::File::create(&lock).expect("the lock a killed keep left");
    file.set_modified(std::time::SystemTime::now() - Duration::from_secs(56))
        .expect("its age");
    let wt =
        f.ws.create_task_worktree(&f.worktrees, "k-2", "origin-k", &base, &identity())
            .await
            .expect("create");
    let change = edit(&wt, "kept.txt").await;
    wt.keep(&change).await.expect("kept once the lock aged");
    assert_eq!(git(&f.repo, &["rev-parse", "pas/origin-k"]), change.commit);
    assert!(!lock.exists());
}

#[tokio::test]
async fn a_creation_cancelled_midway_leaves_nothing_behind() {
    use nix::fcntl::{Flock, FlockArg};
    use pas::git::WORKTREE_LOCK_FILE;

    let f = fixture().await;
    let base = f.ws.resolve_base(None).await.expect("base");
    // Another programmer holds the repository's worktree lock: creation stops after the branch.
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(f.repo.join(".git").join(WORKTREE_LOCK_FILE))
        .expect("lock file");
    let held = Flock::lock(lock_file, FlockArg::LockExclusive).expect("hold the lock");

    let (ws, worktrees) = (f.ws.clone(), f.worktrees.clone());
    let task = tokio::spawn(async move {
        ws.create_task_worktree(&worktrees, "cancel-me", "cancel-me", &base, &identity())
            .await
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !branches(&f.repo).contains(&"pas-work/cancel-me".to_string()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "branch never created"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
    assert!(task.await.expect_err("aborted").is_cancelled());
    drop(held);

    // The creation finishes in the background, sees nobody wants it, and cleans up.
    while branches(&f.repo).len() > 1 || worktree_count(&f.repo) > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "cleanup never happened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let leftover = f.worktrees.join("cancel-me");
    while leftover.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "directory left behind"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(branches(&f.repo), vec!["main"]);
}
