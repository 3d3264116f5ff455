//! Git isolation for tasks: every task runs in its own `git worktree` on its own branch.
//!
//! The original ran all ten programmers' aider processes in one working tree with auto-commit
//! on: edits of different tasks mixed and `.git/index.lock` races failed tasks. Here:
//!
//! - [`Workspace::open`] resolves a caller-supplied workspace name under the configured root and
//!   refuses anything that escapes it or is not the top level of a git repository with commits.
//! - [`Workspace::check_file`] vets each task file path (relative, no `..`, no `.git`, no symlink
//!   escape).
//! - [`Workspace::create_task_worktree`] creates branch `pas/<task>` at the task's base commit and
//!   a worktree for it in a directory *outside* the repository. Aider runs there.
//! - [`TaskWorktree`] resets between attempts, [`finish`](TaskWorktree::finish)es into a
//!   [`Change`], and is then either [`keep`](TaskWorktree::keep)-ed (directory removed, branch with
//!   the result kept) or [`discard`](TaskWorktree::discard)-ed (nothing left). Dropping it without
//!   either discards it (cancellation leaves nothing behind).
//!
//! # Why concurrent programmers never race on `index.lock`
//!
//! The main repository's index and working tree are never touched: each worktree has its own
//! index and `HEAD`, each task its own branch ref. `git worktree add` and `git worktree remove`
//! are serialised per repository by an `flock(2)` on `<git common dir>/pas-worktrees.flock`,
//! shared by every programmer process: without it a concurrent `worktree add` reads another's
//! half-written `.git/worktrees/<id>/` and dies with "failed to read …/commondir" (measured with
//! ten parallel adds on git 2.47). `flock` is released by the kernel when a process dies, so
//! unlike git's own `.lock` files it can never go stale. Branches are created and deleted with
//! `git update-ref` (an atomic create-if-absent, and no write to `.git/config` as
//! `git branch -D` would do). Every command runs with `GIT_OPTIONAL_LOCKS=0`, so read-only
//! commands never take the index lock opportunistically, and `gc.auto=0`, so no command starts a
//! background gc that would lock shared files. The only shared lock left is `packed-refs.lock` on
//! branch deletion, which git itself waits for (`core.packedRefsTimeout`). As a belt, every
//! command that fails with git's "Unable to create '….lock': File exists" is retried a bounded
//! number of times with jittered backoff (lock acquisition is the first step of a git write, so
//! a retry is safe).
//!
//! # How git is run
//!
//! `git` from `PATH` via argument vectors (never a shell), stdin closed, `GIT_TERMINAL_PROMPT=0`,
//! `LC_ALL=C` (stable messages), inherited `GIT_DIR`-style variables removed, and
//! `core.hooksPath=/dev/null`: the programmer's git operations are mechanical bookkeeping on a task
//! branch, and repository hooks (arbitrary scripts) must not run ten times concurrently or block a
//! task; review happens when the branch is merged. Diffs are produced with `--no-ext-diff
//! --no-textconv`. Async commands are *not* killed when their future is dropped: killing git in the
//! middle of a ref update is what leaves stale lock files behind.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use rand::Rng;
use thiserror::Error;

/// Prefix of every task branch: `pas/<sanitized task id>`.
pub const BRANCH_PREFIX: &str = "pas/";

/// Longest sanitized task id used in branch and directory names.
const MAX_TASK_NAME: usize = 64;

/// Attempts of one git command that keeps failing on a held lock file.
const LOCK_ATTEMPTS: u32 = 8;

/// File in the repository's common git dir that serialises worktree add/remove across processes.
pub const WORKTREE_LOCK_FILE: &str = "pas-worktrees.flock";

// ===== identity =====

/// Who the programmer's commits are attributed to (author and committer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitIdentity {
    /// `user.name`-style display name, e.g. `pas programmer-001`.
    pub name: String,
    /// `user.email`-style address.
    pub email: String,
}

impl GitIdentity {
    /// The `GIT_AUTHOR_*`/`GIT_COMMITTER_*` variables for this identity; the aider runner sets the
    /// same ones so aider's own commits carry the same identity.
    pub fn env(&self) -> [(&'static str, &str); 4] {
        [
            ("GIT_AUTHOR_NAME", self.name.as_str()),
            ("GIT_AUTHOR_EMAIL", self.email.as_str()),
            ("GIT_COMMITTER_NAME", self.name.as_str()),
            ("GIT_COMMITTER_EMAIL", self.email.as_str()),
        ]
    }
}

// ===== errors =====

/// A git command that could not be run or exited unsuccessfully.
#[derive(Debug, Error)]
pub enum GitError {
    /// `git` could not be started (not installed, not on `PATH`, …).
    #[error("could not run `{command}` in {dir}: {source}")]
    Spawn {
        /// The command line, e.g. `git worktree add …`.
        command: String,
        /// Directory it ran in.
        dir: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// Git ran and failed.
    #[error("`{command}` in {dir} failed (exit {}): {stderr}", code.map_or_else(|| "by signal".to_string(), |c| c.to_string()))]
    Failed {
        /// The command line.
        command: String,
        /// Directory it ran in.
        dir: PathBuf,
        /// Exit code, `None` when killed by a signal.
        code: Option<i32>,
        /// Git's stderr, trimmed.
        stderr: String,
    },
}

/// Why a workspace name was refused ([`Workspace::open`]).
#[derive(Debug, Error)]
pub enum WorkspaceError {
    /// Empty name (or one holding a NUL byte).
    #[error("workspace name {name:?} is empty or contains a NUL byte")]
    Invalid {
        /// The name as given.
        name: String,
    },
    /// An absolute path instead of a name relative to the workspace root.
    #[error("workspace {name:?} is an absolute path; give a path relative to the workspace root")]
    Absolute {
        /// The name as given.
        name: String,
    },
    /// The name (through `..` or a symlink) leads outside the workspace root.
    #[error("workspace {name:?} resolves outside the workspace root")]
    EscapesRoot {
        /// The name as given.
        name: String,
    },
    /// Nothing by that name under the root.
    #[error("workspace {name:?} does not exist under the workspace root")]
    NotFound {
        /// The name as given.
        name: String,
    },
    /// Not a directory, not in a git repository, or only a subdirectory of one.
    #[error("workspace {name:?} is not the top level of a git repository: {detail}")]
    NotARepo {
        /// The name as given.
        name: String,
        /// What was found instead.
        detail: String,
    },
    /// A git repository whose `HEAD` has no commit yet: there is no base to branch from.
    #[error("workspace {name:?} is a git repository without commits")]
    NoCommits {
        /// The name as given.
        name: String,
    },
    /// The configured root itself cannot be resolved (a server misconfiguration).
    #[error("workspace root {path} is unusable: {source}")]
    Root {
        /// The configured root.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// Inspecting the workspace failed for a reason other than "not found".
    #[error("cannot inspect workspace {name:?}: {source}")]
    Io {
        /// The name as given.
        name: String,
        /// Underlying error.
        source: io::Error,
    },
    /// Git itself could not be run.
    #[error(transparent)]
    Git(GitError),
}

impl WorkspaceError {
    /// `true` when the caller's `workspace` argument is at fault (→ `INVALID_ARGUMENT`), `false`
    /// for server-side problems (root missing, I/O, git not runnable → `INTERNAL`).
    pub fn is_invalid_argument(&self) -> bool {
        !matches!(
            self,
            WorkspaceError::Root { .. } | WorkspaceError::Io { .. } | WorkspaceError::Git(_)
        )
    }
}

/// Why a task file path was refused ([`Workspace::check_file`]).
#[derive(Debug, Error)]
pub enum PathError {
    /// Empty path.
    #[error("file path is empty")]
    Empty,
    /// A NUL byte in the path.
    #[error("file path {path:?} contains a NUL byte")]
    Nul {
        /// The path as given.
        path: String,
    },
    /// Absolute instead of relative to the workspace.
    #[error("file path {path:?} is absolute; give it relative to the workspace")]
    Absolute {
        /// The path as given.
        path: String,
    },
    /// A `..` component.
    #[error("file path {path:?} contains a `..` component")]
    ParentDir {
        /// The path as given.
        path: String,
    },
    /// Inside the repository's `.git` (editing git's own files, e.g. `config`, is never a task).
    #[error("file path {path:?} points into the .git directory")]
    GitDir {
        /// The path as given.
        path: String,
    },
    /// A symlink on the way leads outside the workspace.
    #[error("file path {path:?} resolves outside the workspace, to {resolved}")]
    EscapesWorkspace {
        /// The path as given.
        path: String,
        /// Where the existing part of it resolves to.
        resolved: PathBuf,
    },
    /// A symlink whose target does not exist (writing through it could create a file anywhere).
    #[error("file path {path:?} goes through a dangling symlink")]
    DanglingSymlink {
        /// The path as given.
        path: String,
    },
    /// Names a directory (or the workspace itself), not a file.
    #[error("file path {path:?} is a directory, not a file")]
    IsDirectory {
        /// The path as given.
        path: String,
    },
    /// An existing ancestor is a file, so the path cannot be created.
    #[error("file path {path:?} has an ancestor that is not a directory")]
    ParentNotDirectory {
        /// The path as given.
        path: String,
    },
    /// Inspecting the path failed for a reason other than "not found".
    #[error("cannot inspect file path {path:?}: {source}")]
    Io {
        /// The path as given.
        path: String,
        /// Underlying error.
        source: io::Error,
    },
}

/// Failure of a ref or worktree operation.
#[derive(Debug, Error)]
pub enum WorktreeError {
    /// A base ref the programmer refuses to pass to git (empty, starts with `-`, NUL, …).
    #[error("invalid base ref {reference:?}: {reason}")]
    InvalidRef {
        /// The ref as given.
        reference: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The ref does not name a commit in the repository.
    #[error("base ref {reference:?} does not name a commit in the workspace")]
    UnknownRef {
        /// The ref as given.
        reference: String,
    },
    /// A task id that sanitizes to nothing.
    #[error("task id {task_id:?} cannot be used for a branch name")]
    InvalidTaskId {
        /// The id as given.
        task_id: String,
    },
    /// The task branch already exists (a task id used twice, or a leftover to inspect).
    #[error("branch {branch} already exists")]
    BranchExists {
        /// The full branch name.
        branch: String,
    },
    /// The worktree directory already exists.
    #[error("worktree directory {path} already exists")]
    WorktreeExists {
        /// The directory.
        path: PathBuf,
    },
    /// Worktrees would be created inside the repository they belong to.
    #[error("worktrees directory {path} lies inside the repository {repo}")]
    WorktreesDirInsideRepo {
        /// The worktrees directory (canonical).
        path: PathBuf,
        /// The repository.
        repo: PathBuf,
    },
    /// Something other than the task branch is checked out in the worktree at finish time.
    #[error("worktree {path} no longer has branch {branch} checked out (HEAD is {head})")]
    HeadMoved {
        /// The worktree.
        path: PathBuf,
        /// The task branch.
        branch: String,
        /// What `HEAD` is instead.
        head: String,
    },
    /// Filesystem error around the worktrees directory.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// A git command failed.
    #[error(transparent)]
    Git(#[from] GitError),
}

// ===== running git =====

/// One git invocation: built once, run (and re-run on lock contention) async or blocking.
#[derive(Debug, Clone)]
struct Git {
    dir: PathBuf,
    args: Vec<OsString>,
    env: Vec<(&'static str, String)>,
}

impl Git {
    fn new(dir: &Path) -> Self {
        Git {
            dir: dir.to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    fn identity(mut self, identity: &GitIdentity) -> Self {
        self.env
            .extend(identity.env().map(|(k, v)| (k, v.to_string())));
        self
    }

    fn display(&self) -> String {
        let mut s = String::from("git");
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    fn std_command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new("git");
        for config in [
            "gc.auto=0",
            "maintenance.auto=false",
            "core.hooksPath=/dev/null",
            "core.fsmonitor=false",
            "commit.gpgSign=false",
            "core.quotePath=false",
        ] {
            cmd.arg("-c").arg(config);
        }
        cmd.arg("-C").arg(&self.dir).args(&self.args);
        for var in [
            "GIT_DIR",
            "GIT_WORK_TREE",
            "GIT_INDEX_FILE",
            "GIT_COMMON_DIR",
            "GIT_OBJECT_DIRECTORY",
            "GIT_ALTERNATE_OBJECT_DIRECTORIES",
            "GIT_NAMESPACE",
            "GIT_PREFIX",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_OPTIONAL_LOCKS", "0")
            .env("LC_ALL", "C")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn spawn_error(&self, source: io::Error) -> GitError {
        GitError::Spawn {
            command: self.display(),
            dir: self.dir.clone(),
            source,
        }
    }

    fn failed(&self, out: &Output) -> GitError {
        GitError::Failed {
            command: self.display(),
            dir: self.dir.clone(),
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
    }

    /// Run to completion, retrying while git reports a held lock file. Any exit status is
    /// returned; only a failure to spawn is an error.
    async fn output(&self) -> Result<Output, GitError> {
        let mut attempt = 0;
        loop {
            let out = tokio::process::Command::from(self.std_command())
                .output()
                .await
                .map_err(|e| self.spawn_error(e))?;
            attempt += 1;
            if out.status.success() || !is_lock_contention(&out.stderr) || attempt >= LOCK_ATTEMPTS
            {
                return Ok(out);
            }
            tracing::debug!(command = %self.display(), attempt, "git lock held; retrying");
            tokio::time::sleep(lock_backoff(attempt)).await;
        }
    }

    /// Blocking twin of [`output`](Self::output), for `Drop`.
    fn output_blocking(&self) -> Result<Output, GitError> {
        let mut attempt = 0;
        loop {
            let out = self
                .std_command()
                .output()
                .map_err(|e| self.spawn_error(e))?;
            attempt += 1;
            if out.status.success() || !is_lock_contention(&out.stderr) || attempt >= LOCK_ATTEMPTS
            {
                return Ok(out);
            }
            std::thread::sleep(lock_backoff(attempt));
        }
    }

    /// Run; a non-zero exit is an error. Returns stdout.
    async fn run(&self) -> Result<String, GitError> {
        let out = self.output().await?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(self.failed(&out))
        }
    }

    fn run_blocking(&self) -> Result<(), GitError> {
        let out = self.output_blocking()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(self.failed(&out))
        }
    }
}

/// Git's message when another process holds a lock file, e.g.
/// `Unable to create '/repo/.git/refs/heads/x.lock': File exists.`
fn is_lock_contention(stderr: &[u8]) -> bool {
    let s = String::from_utf8_lossy(stderr);
    s.contains("Unable to create '") && s.contains(".lock': File exists")
}

/// 20 ms doubling up to 500 ms, plus up to 50 % jitter so contenders spread out (≈2–3 s in all).
fn lock_backoff(attempt: u32) -> Duration {
    let base = 20u64
        .saturating_mul(1 << attempt.saturating_sub(1).min(5))
        .min(500);
    let jitter = rand::rng().random_range(0..=base / 2);
    Duration::from_millis(base + jitter)
}

// ===== cross-process worktree lock =====

/// Held while adding or removing a worktree of one repository; unlocks on drop.
struct WorktreeLock {
    _flock: Flock<fs::File>,
}

impl WorktreeLock {
    fn acquire_blocking(path: &Path) -> Result<WorktreeLock, WorktreeError> {
        let io_err = |source| WorktreeError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err)?;
        let flock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io_err(io::Error::from(errno)))?;
        Ok(WorktreeLock { _flock: flock })
    }
}

/// Run `work` on tokio's blocking pool. Used for every step that must not be cut in half by a
/// cancelled future: the closure runs to completion even if the caller stops waiting, and
/// whatever it returns (e.g. a [`TaskWorktree`]) is then dropped — and cleaned up — there.
async fn unstoppable<T, F>(what: &Path, work: F) -> Result<T, WorktreeError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, WorktreeError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|join| WorktreeError::Io {
            path: what.to_path_buf(),
            source: io::Error::other(join.to_string()),
        })?
}

// ===== workspace =====

/// A git repository (its top level) inside the configured workspace root; canonical path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    name: String,
    path: PathBuf,
    /// [`WORKTREE_LOCK_FILE`] in the repository's common git dir.
    lock_path: PathBuf,
}

impl Workspace {
    /// Resolve `name` (relative to `workspace_root`, symlinks resolved) and require it to be
    /// inside the root and the top level of a git repository with at least one commit.
    pub async fn open(workspace_root: &Path, name: &str) -> Result<Workspace, WorkspaceError> {
        let owned = || name.to_string();
        if name.is_empty() || name.contains('\0') {
            return Err(WorkspaceError::Invalid { name: owned() });
        }
        let rel = Path::new(name);
        if rel.has_root() || rel.is_absolute() {
            return Err(WorkspaceError::Absolute { name: owned() });
        }
        // Climbing above the root is refused even when the path comes back inside it.
        if lexically_escapes(rel) {
            return Err(WorkspaceError::EscapesRoot { name: owned() });
        }
        let root = fs::canonicalize(workspace_root).map_err(|source| WorkspaceError::Root {
            path: workspace_root.to_path_buf(),
            source,
        })?;
        let path = match fs::canonicalize(root.join(rel)) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(WorkspaceError::NotFound { name: owned() });
            }
            Err(source) => {
                return Err(WorkspaceError::Io {
                    name: owned(),
                    source,
                });
            }
        };
        if !path.starts_with(&root) {
            return Err(WorkspaceError::EscapesRoot { name: owned() });
        }
        if !path.is_dir() {
            return Err(WorkspaceError::NotARepo {
                name: owned(),
                detail: "not a directory".into(),
            });
        }

        let toplevel = Git::new(&path).args(["rev-parse", "--show-toplevel"]);
        let out = toplevel.output().await.map_err(WorkspaceError::Git)?;
        if !out.status.success() {
            return Err(WorkspaceError::NotARepo {
                name: owned(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let top = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let top_canonical = fs::canonicalize(&top).unwrap_or_else(|_| PathBuf::from(&top));
        if top_canonical != path {
            return Err(WorkspaceError::NotARepo {
                name: owned(),
                detail: format!("it lies inside the repository at {top}"),
            });
        }

        let head = Git::new(&path).args(["rev-parse", "--verify", "-q", "HEAD^{commit}"]);
        let out = head.output().await.map_err(WorkspaceError::Git)?;
        if !out.status.success() {
            return Err(WorkspaceError::NoCommits { name: owned() });
        }
        let common_dir = Git::new(&path)
            .args(["rev-parse", "--path-format=absolute", "--git-common-dir"])
            .run()
            .await
            .map_err(WorkspaceError::Git)?;
        Ok(Workspace {
            name: owned(),
            lock_path: Path::new(common_dir.trim()).join(WORKTREE_LOCK_FILE),
            path,
        })
    }

    /// The name as the caller gave it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Canonical path of the repository's top level.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Vet a task file path against this workspace (see [`check_file_in`]).
    pub fn check_file(&self, rel: &str) -> Result<(), PathError> {
        check_file_in(&self.path, rel)
    }

    /// The commit a task starts from: `base_ref` (default `HEAD`) resolved to a full sha.
    pub async fn resolve_base(&self, base_ref: Option<&str>) -> Result<String, WorktreeError> {
        let reference = base_ref.unwrap_or("HEAD");
        let invalid = |reason| WorktreeError::InvalidRef {
            reference: reference.to_string(),
            reason,
        };
        if reference.trim().is_empty() {
            return Err(invalid("empty"));
        }
        if reference.starts_with('-') {
            return Err(invalid("must not start with '-'"));
        }
        if reference.chars().any(char::is_control) {
            return Err(invalid("contains control characters"));
        }
        self.rev_parse_commit(reference).await
    }

    async fn rev_parse_commit(&self, reference: &str) -> Result<String, WorktreeError> {
        let git = Git::new(&self.path)
            .args(["rev-parse", "--verify", "-q", "--end-of-options"])
            .arg(format!("{reference}^{{commit}}"));
        let out = git.output().await?;
        match out.status.code() {
            Some(0) => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
            Some(1) => Err(WorktreeError::UnknownRef {
                reference: reference.to_string(),
            }),
            _ => Err(git.failed(&out).into()),
        }
    }

    /// Create branch `pas/<task>` at `base_commit` and check it out in a new worktree
    /// `<worktrees_dir>/<task>` (the directory is created if needed and must lie outside the
    /// repository). `task_id` is sanitized with [`sanitize_task_id`].
    pub async fn create_task_worktree(
        &self,
        worktrees_dir: &Path,
        task_id: &str,
        base_commit: &str,
        identity: &GitIdentity,
    ) -> Result<TaskWorktree, WorktreeError> {
        let name = sanitize_task_id(task_id)?;
        let branch = format!("{BRANCH_PREFIX}{name}");
        if base_commit.len() < 4
            || base_commit.len() > 64
            || !base_commit.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(WorktreeError::InvalidRef {
                reference: base_commit.to_string(),
                reason: "base commit must be a hexadecimal commit id",
            });
        }
        let base = self.rev_parse_commit(base_commit).await?;

        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WorktreeError::Io { path, source }
        };
        fs::create_dir_all(worktrees_dir).map_err(io_err(worktrees_dir))?;
        let dir = fs::canonicalize(worktrees_dir).map_err(io_err(worktrees_dir))?;
        if dir.starts_with(&self.path) {
            return Err(WorktreeError::WorktreesDirInsideRepo {
                path: dir,
                repo: self.path.clone(),
            });
        }
        let path = dir.join(&name);
        if fs::symlink_metadata(&path).is_ok() {
            return Err(WorktreeError::WorktreeExists { path });
        }

        let wt = TaskWorktree {
            repo: self.path.clone(),
            lock_path: self.lock_path.clone(),
            path,
            branch,
            base_commit: base,
            identity: identity.clone(),
            armed: false,
        };
        let task_id = task_id.to_string();
        unstoppable(&wt.path.clone(), move || wt.create_blocking(&task_id)).await
    }
}

/// `true` when `..` components climb above the starting directory (`a/../../b`).
fn lexically_escapes(rel: &Path) -> bool {
    let mut depth: i64 = 0;
    for c in rel.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return true,
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

/// Vet task file path `rel` against the directory `root` (canonical): relative, no NUL, no `..`
/// component, not inside `.git`, and — after resolving the symlinks of the existing part of the
/// path — still inside `root`. A file that does not exist yet is fine if its deepest existing
/// ancestor is a directory inside `root`.
pub fn check_file_in(root: &Path, rel: &str) -> Result<(), PathError> {
    let owned = || rel.to_string();
    if rel.is_empty() {
        return Err(PathError::Empty);
    }
    if rel.contains('\0') {
        return Err(PathError::Nul { path: owned() });
    }
    let path = Path::new(rel);
    if path.has_root() || path.is_absolute() {
        return Err(PathError::Absolute { path: owned() });
    }
    let mut parts: Vec<&OsStr> = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => {
                if part.eq_ignore_ascii_case(".git") {
                    return Err(PathError::GitDir { path: owned() });
                }
                parts.push(part);
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(PathError::ParentDir { path: owned() }),
            Component::RootDir | Component::Prefix(_) => {
                return Err(PathError::Absolute { path: owned() });
            }
        }
    }
    if parts.is_empty() {
        return Err(PathError::IsDirectory { path: owned() });
    }

    // Walk down while the path exists (symlinks included, dangling or not).
    let mut existing = root.to_path_buf();
    let mut missing = 0;
    for (i, part) in parts.iter().enumerate() {
        let next = existing.join(part);
        match fs::symlink_metadata(&next) {
            Ok(_) => existing = next,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing = parts.len() - i;
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
                // An ancestor is a regular file.
                return Err(PathError::ParentNotDirectory { path: owned() });
            }
            Err(source) => {
                return Err(PathError::Io {
                    path: owned(),
                    source,
                });
            }
        }
    }
    let resolved = match fs::canonicalize(&existing) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(PathError::DanglingSymlink { path: owned() });
        }
        Err(source) => {
            return Err(PathError::Io {
                path: owned(),
                source,
            });
        }
    };
    if !resolved.starts_with(root) {
        return Err(PathError::EscapesWorkspace {
            path: owned(),
            resolved,
        });
    }
    if resolved.starts_with(root.join(".git")) {
        return Err(PathError::GitDir { path: owned() });
    }
    match (missing, resolved.is_dir()) {
        (0, true) => Err(PathError::IsDirectory { path: owned() }),
        (0, false) | (_, true) => Ok(()),
        (_, false) => Err(PathError::ParentNotDirectory { path: owned() }),
    }
}

/// Turn a task id into a name safe for both a ref (`pas/<name>`) and a directory: ASCII letters,
/// digits, `_` and `-` are kept, anything else becomes `-`, a leading `-` gets a `t` prefix, and
/// the result is cut to 64 characters. An id that had to change gets an 8-hex-digit hash of the
/// original appended, so distinct ids stay distinct. UUIDs pass through unchanged.
pub fn sanitize_task_id(task_id: &str) -> Result<String, WorktreeError> {
    if task_id.trim().is_empty() {
        return Err(WorktreeError::InvalidTaskId {
            task_id: task_id.to_string(),
        });
    }
    let mut name: String = task_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(MAX_TASK_NAME)
        .collect();
    if name.starts_with('-') {
        name.insert(0, 't');
        name.truncate(MAX_TASK_NAME);
    }
    if name != task_id {
        name.push_str(&format!("-{:08x}", fnv1a32(task_id.as_bytes())));
    }
    Ok(name)
}

/// FNV-1a, 32 bit: a stable (across Rust versions and processes) fingerprint for names.
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

// ===== task worktree =====

/// What a task produced: the commit at the tip of its branch and the diff from its base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Tip of the task branch; equals the base commit when nothing changed.
    pub commit: String,
    /// Paths (relative to the repository) that differ between base and `commit`; a rename is
    /// listed as both its old and new path.
    pub files_changed: Vec<String>,
    /// `git diff base commit` (text; non-UTF-8 bytes replaced, binary files summarised by git).
    pub diff: String,
}

/// One task's worktree on branch `pas/<task>`; see the module docs for its life cycle.
///
/// If it is dropped without [`keep`](Self::keep) or [`discard`](Self::discard) (the task was
/// cancelled, timed out or panicked), `Drop` discards it: worktree and branch are removed with
/// *blocking* `std::process::Command` git calls. Blocking a runtime thread for a few tens of
/// milliseconds on this rare path is preferred over spawning a task, because a spawned task is not
/// guaranteed to run when the runtime is shutting down — and cleanup must happen then too.
///
/// Creation, `keep` and `discard` run on tokio's blocking pool and always run to completion,
/// even when the awaiting future is dropped: a creation whose caller went away drops its result
/// there, which discards it. So no cancellation point can leave a branch or worktree behind.
#[derive(Debug)]
pub struct TaskWorktree {
    repo: PathBuf,
    lock_path: PathBuf,
    path: PathBuf,
    branch: String,
    base_commit: String,
    identity: GitIdentity,
    /// Still ours to clean up on drop.
    armed: bool,
}

impl TaskWorktree {
    /// The worktree directory (where aider runs).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The task branch, e.g. `pas/5f0c…`.
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// Full sha of the commit the task started from.
    pub fn base_commit(&self) -> &str {
        &self.base_commit
    }

    /// Vet a task file path against this worktree (what aider will actually open).
    pub fn check_file(&self, rel: &str) -> Result<(), PathError> {
        check_file_in(&self.path, rel)
    }

    fn git(&self) -> Git {
        Git::new(&self.path).identity(&self.identity)
    }

    /// Create the branch, then the worktree; runs on the blocking pool ([`unstoppable`]).
    fn create_blocking(mut self, task_id: &str) -> Result<TaskWorktree, WorktreeError> {
        let refname = format!("refs/heads/{}", self.branch);
        // Atomic create-if-absent: the empty old value makes a concurrent duplicate fail here,
        // before it could touch anyone's worktree.
        let create = Git::new(&self.repo)
            .identity(&self.identity)
            .args(["update-ref", "-m"])
            .arg(format!("pas: branch for task {task_id}"))
            .args([refname.as_str(), self.base_commit.as_str(), ""]);
        let out = create.output_blocking()?;
        if !out.status.success() {
            if String::from_utf8_lossy(&out.stderr).contains("reference already exists") {
                return Err(WorktreeError::BranchExists {
                    branch: self.branch.clone(),
                });
            }
            return Err(create.failed(&out).into());
        }
        // The branch is ours from here on: any early return drops `self`, which removes the
        // (possibly half-made) worktree and the branch.
        self.armed = true;
        {
            let _lock = WorktreeLock::acquire_blocking(&self.lock_path)?;
            Git::new(&self.repo)
                .identity(&self.identity)
                .args(["worktree", "add", "--quiet"])
                .arg(&self.path)
                .arg(&self.branch)
                .run_blocking()?;
        }
        tracing::debug!(branch = %self.branch, path = %self.path.display(),
            base = %self.base_commit, "task worktree created");
        Ok(self)
    }

    /// Back to the base commit for the next attempt: `reset --hard` (also undoing commits aider
    /// made) and `clean -ffdx` (untracked and ignored files, nested repositories).
    /// Precondition: no process (aider) is still running in the worktree.
    pub async fn reset(&self) -> Result<(), WorktreeError> {
        self.git()
            .args(["reset", "--quiet", "--hard", self.base_commit.as_str()])
            .run()
            .await?;
        self.git().args(["clean", "-ffdxq"]).run().await?;
        Ok(())
    }

    /// Commit whatever aider left uncommitted (aider's own `.aider*` files excluded) and report
    /// the change from the base commit. An empty change reports `commit == base_commit`.
    pub async fn finish(&self, commit_message: &str) -> Result<Change, WorktreeError> {
        self.git()
            .args(["add", "--all", "--", ".", ":(exclude).aider*"])
            .run()
            .await?;
        let staged = self.git().args(["diff", "--cached", "--quiet"]);
        let out = staged.output().await?;
        match out.status.code() {
            Some(0) => {}
            Some(1) => {
                let message = if commit_message.trim().is_empty() {
                    format!("pas: result of {}", self.branch)
                } else {
                    commit_message.to_string()
                };
                self.git()
                    .args(["commit", "--quiet", "--no-verify", "--no-gpg-sign", "-m"])
                    .arg(message)
                    .run()
                    .await?;
            }
            _ => return Err(staged.failed(&out).into()),
        }

        let head = self
            .git()
            .args(["rev-parse", "--verify", "HEAD"])
            .run()
            .await?
            .trim()
            .to_string();
        let tip = self
            .git()
            .args(["rev-parse", "--verify", "--end-of-options"])
            .arg(format!("refs/heads/{}", self.branch))
            .run()
            .await?
            .trim()
            .to_string();
        if head != tip {
            return Err(WorktreeError::HeadMoved {
                path: self.path.clone(),
                branch: self.branch.clone(),
                head,
            });
        }
        let range = [self.base_commit.as_str(), head.as_str()];
        let names = self
            .git()
            .args(["diff", "--name-only", "-z", "--no-renames", "--no-ext-diff"])
            .args(range)
            .run()
            .await?;
        let diff = self
            .git()
            .args(["diff", "--no-color", "--no-ext-diff", "--no-textconv"])
            .args(range)
            .run()
            .await?;
        Ok(Change {
            commit: head,
            files_changed: names
                .split('\0')
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect(),
            diff,
        })
    }

    /// Remove the worktree directory, keep the branch (with the result) for the caller to merge.
    /// Runs to completion even if the caller's future is dropped (the branch is then kept).
    pub async fn keep(mut self) -> Result<(), WorktreeError> {
        let path = self.path.clone();
        unstoppable(&path, move || {
            self.armed = false;
            self.remove_worktree_blocking()?;
            tracing::debug!(branch = %self.branch, "task worktree removed, branch kept");
            Ok(())
        })
        .await
    }

    /// Remove the worktree directory and delete the branch: nothing is left behind.
    /// Runs to completion even if the caller's future is dropped.
    pub async fn discard(mut self) -> Result<(), WorktreeError> {
        let path = self.path.clone();
        unstoppable(&path, move || {
            self.armed = false;
            let removed = self.remove_worktree_blocking();
            let deleted = self.delete_branch().run_blocking();
            removed?;
            deleted?;
            tracing::debug!(branch = %self.branch, "task worktree and branch discarded");
            Ok(())
        })
        .await
    }

    fn remove_worktree_cmd(&self) -> Git {
        Git::new(&self.repo)
            .args(["worktree", "remove", "--force"])
            .arg(&self.path)
    }

    /// `git worktree remove --force` under the repository's worktree lock. A worktree whose
    /// directory never came to exist (creation failed early) counts as removed.
    fn remove_worktree_blocking(&self) -> Result<(), WorktreeError> {
        let _lock = WorktreeLock::acquire_blocking(&self.lock_path)?;
        match self.remove_worktree_cmd().run_blocking() {
            Err(_) if fs::symlink_metadata(&self.path).is_err() => Ok(()),
            other => Ok(other?),
        }
    }

    /// `update-ref -d` rather than `branch -D`: no write to the shared `.git/config`.
    fn delete_branch(&self) -> Git {
        Git::new(&self.repo)
            .identity(&self.identity)
            .args(["update-ref", "-d"])
            .arg(format!("refs/heads/{}", self.branch))
    }
}

impl Drop for TaskWorktree {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.armed = false;
        let removed = self.remove_worktree_blocking();
        let deleted = self.delete_branch().run_blocking();
        match (removed, deleted) {
            (Ok(()), Ok(())) => {
                tracing::debug!(branch = %self.branch, "unfinished task worktree discarded");
            }
            (removed, deleted) => tracing::warn!(
                branch = %self.branch,
                path = %self.path.display(),
                remove_error = ?removed.err(),
                delete_error = ?deleted.err(),
                "could not fully discard an unfinished task worktree"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_are_sanitized_stably_and_distinctly() {
        let uuid = "5f0c1d2e-8a9b-4c3d-9e8f-0123456789ab";
        assert_eq!(sanitize_task_id(uuid).expect("uuid"), uuid);
        let a = sanitize_task_id("feature/../x y").expect("a");
        let b = sanitize_task_id("feature/..-x y").expect("b");
        assert!(a.starts_with("feature----x-y-"), "{a}");
        assert_ne!(a, b);
        assert_eq!(a, sanitize_task_id("feature/../x y").expect("again"));
        assert!(sanitize_task_id("-rf").expect("dash").starts_with("t-rf-"));
        assert!(sanitize_task_id(&"x".repeat(200)).expect("long").len() <= MAX_TASK_NAME + 9);
        assert!(sanitize_task_id(" ").is_err());
        assert!(sanitize_task_id("").is_err());
    }

    #[test]
    fn lock_contention_is_recognised() {
        let msg = b"fatal: update_ref failed for ref 'refs/heads/pas/b': cannot lock ref \
            'refs/heads/pas/b': Unable to create '/r/.git/refs/heads/pas/b.lock': File exists.";
        assert!(is_lock_contention(msg));
        assert!(!is_lock_contention(b"fatal: reference already exists"));
    }

    #[test]
    fn lexical_escape_detection() {
        assert!(lexically_escapes(Path::new("../x")));
        assert!(lexically_escapes(Path::new("a/../../x")));
        assert!(!lexically_escapes(Path::new("a/../b")));
        assert!(!lexically_escapes(Path::new("./a")));
    }
}
