//! The programmer's task worktrees: every task runs in its own `git worktree` on its own branch.
//!
//! The original ran all ten programmers' aider processes in one working tree with auto-commit
//! on: edits of different tasks mixed and `.git/index.lock` races failed tasks. Here, on top of
//! a [`Workspace`] (opened and vetted by the lower floor, [`crate::workspace`]):
//!
//! - [`Workspace::resolve_base`] names the commit a task starts from.
//! - [`Workspace::create_task_worktree`] creates the *scratch* branch `pas-work/<task>` (the
//!   programmer-side task id of this dispatch attempt) at the task's base commit and a worktree
//!   for it in a directory *outside* the repository. Aider runs there, once
//!   [`TaskWorktree::check_files`] has vetted the task files against the tree at that commit.
//! - [`TaskWorktree`] resets between attempts, [`finish`](TaskWorktree::finish)es into a
//!   [`Change`], and is then either [`keep`](TaskWorktree::keep)-ed or
//!   [`discard`](TaskWorktree::discard)-ed (nothing left). Dropping it without either discards it
//!   (cancellation leaves nothing behind).
//!
//! # At most one kept result per task
//!
//! The manager may dispatch one caller task more than once (a programmer thought lost may still be
//! running it). Every dispatch attempt has its own scratch branch, but a result is kept on the
//! branch `pas/<origin task>`, named after the caller's id that all attempts share, and `keep`
//! creates it with `git update-ref <ref> <commit> ""`: the empty old value means "only if it does
//! not exist", checked and written atomically under git's ref lock. So git, not timing, decides:
//! the first attempt to keep wins, a later one gets [`WorktreeError::AlreadyKept`] and its edit is
//! discarded. The scratch branch and worktree go either way (also when a git killed mid-commit in
//! the worktree left the branch's ref lock behind); a scratch branch left by a killed programmer is
//! removed by [`sweep_abandoned`], which never touches a `pas/` branch.
//!
//! # Why concurrent programmers never race on `index.lock`
//!
//! The main repository's index and working tree are never touched: each worktree has its own
//! index and `HEAD`, each task its own branch ref. `git worktree add` and `git worktree remove`
//! are serialised per repository by a cross-process `flock` ([`crate::git`] explains why and how).
//! Branches are created and deleted with `git update-ref` (an atomic create-if-absent, and no
//! write to `.git/config` as `git branch -D` would do). The git runner ([`crate::git`]) keeps
//! read-only commands off the index lock, disables background gc and retries on git's own lock
//! files; the only shared lock left is `packed-refs.lock` on branch deletion, which git itself
//! waits for (`core.packedRefsTimeout`). Diffs are produced with `--no-ext-diff --no-textconv`,
//! and repository hooks never run.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::git::{
    DeadLocks, Git, GitError, WorktreeLock, remove_dead_lock, unstoppable, wait_out_dead_lock,
};
use crate::programmer::mirror::{Kept, Remote};
use crate::workspace::{Workspace, at_most, check_files, ref_problem};
use tonic::Status;

/// Prefix of the branch a task's result is kept on: `pas/<sanitized origin task id>`. Made only by
/// [`TaskWorktree::keep`], only if absent, and never deleted by the programmer.
pub const BRANCH_PREFIX: &str = "pas/";

/// Prefix of a dispatch attempt's scratch branch: `pas-work/<sanitized programmer-side task id>`.
/// A separate namespace rather than `pas/work/…`: git stores refs as paths, so scratch refs under
/// `pas/work/` would make a task named `work` impossible to keep (`pas/work` cannot be both a ref
/// and a directory of refs).
pub const SCRATCH_PREFIX: &str = "pas-work/";

/// Longest sanitized task id used in branch and directory names.
const MAX_TASK_NAME: usize = 64;

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
    /// The scratch branch already exists (a programmer-side task id used twice, or a leftover of
    /// a killed programmer not swept yet).
    #[error("branch {branch} already exists")]
    BranchExists {
        /// The full branch name.
        branch: String,
    },
    /// Another attempt of the same task already kept its result: at most one is kept per task.
    #[error(
        "another attempt of this task already kept its result on branch {branch}{}; nothing of this attempt was kept",
        commit.as_deref().map(|c| format!(" (commit {c})")).unwrap_or_default()
    )]
    AlreadyKept {
        /// The kept branch, `pas/<origin task>`.
        branch: String,
        /// Its commit, when it could be read.
        commit: Option<String>,
    },
    /// Pushing the kept branch to the task's remote failed for another reason than the branch
    /// existing there (unreachable, refused, authentication). Nothing was pushed.
    #[error("could not push {branch} to {url}: {source}")]
    PushFailed {
        /// The branch, `pas/<origin task>`.
        branch: String,
        /// The remote (no credentials).
        url: String,
        /// What git said (boxed: the error stays small on every other path).
        source: Box<GitError>,
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
    /// The worktree's `.git` file no longer holds what `git worktree add` wrote (something in
    /// the task rewrote it, e.g. to point git at a directory of its own whose config runs
    /// commands). It was restored; nothing of the attempt is used.
    #[error("{path} was changed during the task (restored); nothing of this attempt is used")]
    GitLinkChanged {
        /// The worktree's `.git` file.
        path: PathBuf,
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

// ===== task worktrees of a workspace =====

/// Task worktrees are made from a [`Workspace`]; these methods live here, with the programmer,
/// because the manager never creates one.
impl Workspace {
    /// The commit a task starts from: `base_ref` (default `HEAD`) resolved to a full sha. A ref
    /// that [`ref_problem`] refuses is never passed to git.
    pub async fn resolve_base(&self, base_ref: Option<&str>) -> Result<String, WorktreeError> {
        let reference = base_ref.unwrap_or("HEAD");
        // The same rule the request validation applies (`crate::workspace::check_ref`).
        if let Some(reason) = ref_problem(reference) {
            return Err(WorktreeError::InvalidRef {
                reference: reference.to_string(),
                reason,
            });
        }
        self.rev_parse_commit(reference).await
    }

    async fn rev_parse_commit(&self, reference: &str) -> Result<String, WorktreeError> {
        self.commit_of(reference)
            .await?
            .ok_or_else(|| WorktreeError::UnknownRef {
                reference: reference.to_string(),
            })
    }

    /// Create the scratch branch `pas-work/<task>` at `base_commit` and check it out in a new
    /// worktree `<worktrees_dir>/<task>` (the directory is created if needed and must lie outside
    /// the repository). `task_id` is this dispatch attempt's id, `origin_task_id` the caller's
    /// (the same for every attempt; pass `task_id` when there is only one): a successful result is
    /// kept on `pas/<origin>`. Both are sanitized with [`sanitize_task_id`].
    ///
    /// Fails with [`WorktreeError::AlreadyKept`] when that branch exists already, before any LLM is
    /// paid for: [`TaskWorktree::keep`] would refuse the result anyway.
    pub async fn create_task_worktree(
        &self,
        worktrees_dir: &Path,
        task_id: &str,
        origin_task_id: &str,
        base_commit: &str,
        identity: &GitIdentity,
    ) -> Result<TaskWorktree, WorktreeError> {
        let name = sanitize_task_id(task_id)?;
        let branch = format!("{SCRATCH_PREFIX}{name}");
        let kept_branch = format!("{BRANCH_PREFIX}{}", sanitize_task_id(origin_task_id)?);
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
        if let Some(commit) = self.commit_of(&self.kept_ref(&kept_branch)).await? {
            return Err(WorktreeError::AlreadyKept {
                branch: kept_branch,
                commit: Some(commit),
            });
        }

        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| WorktreeError::Io { path, source }
        };
        fs::create_dir_all(worktrees_dir).map_err(io_err(worktrees_dir))?;
        let dir = fs::canonicalize(worktrees_dir).map_err(io_err(worktrees_dir))?;
        if dir.starts_with(self.path()) {
            return Err(WorktreeError::WorktreesDirInsideRepo {
                path: dir,
                repo: self.path().to_path_buf(),
            });
        }
        let path = dir.join(&name);
        if fs::symlink_metadata(&path).is_ok() {
            return Err(WorktreeError::WorktreeExists { path });
        }

        let wt = TaskWorktree {
            repo: self.path().to_path_buf(),
            lock_path: self.lock_path().to_path_buf(),
            path,
            branch,
            kept_branch,
            task_id: task_id.to_string(),
            base_commit: base,
            identity: identity.clone(),
            push: None,
            synced: false,
            git_link: None,
            armed: false,
        };
        let path = wt.path.clone();
        unstoppable(move || wt.create_blocking())
            .await
            .map_err(|source| WorktreeError::Io { path, source })?
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
    /// True when `diff` or `files_changed` was cut to fit a result ([`MAX_DIFF_BYTES`],
    /// [`MAX_FILES_CHANGED_BYTES`]); `commit` holds the whole change either way.
    pub truncated: bool,
}

/// Most bytes of diff a result carries. gRPC clients refuse messages over 4 MiB by default (tonic,
/// grpcio, grpc-js, grpcurl), and a result that one cannot read can never be delivered: the
/// manager's relay, and any caller, would break on it at every attempt to re-attach. The diff is
/// cut at the end of a line; the whole change is the result's commit.
pub const MAX_DIFF_BYTES: usize = 1024 * 1024;

/// Most bytes of paths a result's `files_changed` carries (see [`MAX_DIFF_BYTES`]).
pub const MAX_FILES_CHANGED_BYTES: usize = 1024 * 1024;

/// `files_changed` and `diff` cut to fit a result; true when either was cut.
fn fit_in_result(mut files: Vec<String>, mut diff: String) -> (Vec<String>, String, bool) {
    let mut truncated = false;
    if diff.len() > MAX_DIFF_BYTES {
        let end = at_most(&diff, MAX_DIFF_BYTES).len();
        // At the end of the last whole line (a line longer than the cap is cut where it is).
        let end = diff[..end].rfind('\n').map_or(end, |newline| newline + 1);
        diff.truncate(end);
        truncated = true;
    }
    let mut bytes = 0;
    if let Some(over) = files.iter().position(|path| {
        bytes += path.len();
        bytes > MAX_FILES_CHANGED_BYTES
    }) {
        files.truncate(over);
        truncated = true;
    }
    (files, diff, truncated)
}

/// One dispatch attempt's worktree on its scratch branch `pas-work/<task>`, and the branch
/// `pas/<origin task>` its result would be kept on; see the module docs for its life cycle.
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
    /// The scratch branch checked out in the worktree: `pas-work/<task>`.
    branch: String,
    /// Where [`keep`](Self::keep) puts the result: `pas/<origin task>`, shared by all attempts.
    kept_branch: String,
    /// The programmer-side task id (for ref log messages).
    task_id: String,
    base_commit: String,
    identity: GitIdentity,
    /// For a task on a `repo_url`: [`keep`](Self::keep) pushes the kept branch there,
    /// create-only, instead of creating it in the (mirror) repository.
    push: Option<Remote>,
    /// Commits and the kept branch synced by git before it reports them
    /// ([`sync_writes`](Self::sync_writes)).
    synced: bool,
    /// The worktree's `.git` file as `git worktree add` wrote it (`gitdir: <its admin dir>`):
    /// every git command of ours in the worktree is pinned to that directory, and the file must
    /// still hold it after aider ran ([`verify_git_link`](Self::verify_git_link)). `None` for an
    /// abandoned worktree found by the sweep.
    git_link: Option<String>,
    /// Still ours to clean up on drop.
    armed: bool,
}

impl TaskWorktree {
    /// The worktree directory (where aider runs).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The scratch branch checked out in the worktree, e.g. `pas-work/5f0c…-attempt-2-…`.
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// The branch [`keep`](Self::keep) creates for the result, e.g. `pas/5f0c…` (the caller's id).
    pub fn kept_branch(&self) -> &str {
        &self.kept_branch
    }

    /// The repository [`keep`](Self::keep) creates the kept branch in; `None` when it pushes the
    /// branch to a remote instead.
    pub fn keeps_in(&self) -> Option<&Path> {
        self.push.is_none().then_some(self.repo.as_path())
    }

    /// Keep results by pushing `pas/<origin task>` to `remote` (create-only) rather than by
    /// creating the branch locally: the task's repository is a mirror of that remote.
    pub fn push_to(&mut self, remote: Remote) {
        self.push = Some(remote);
    }

    /// Make every commit of the task (ours and aider's, through [`git_env`](Self::git_env)) and
    /// the kept branch durable across a power loss: git syncs each object and ref it writes
    /// before it exits (`durability: power_loss`; see [`crate::git`], "Durable commits").
    pub fn sync_writes(&mut self) {
        self.synced = true;
    }

    /// The git configuration for the git processes aider starts in this worktree, as
    /// environment variables: the same pinned settings as ours (no hooks, no fsmonitor, no
    /// signing, no background gc) and, after [`sync_writes`](Self::sync_writes), git's syncing.
    pub fn git_env(&self) -> Vec<(String, String)> {
        crate::git::config_env(self.synced)
    }

    /// Full sha of the commit the task started from.
    pub fn base_commit(&self) -> &str {
        &self.base_commit
    }

    /// Vet the task files against this worktree, i.e. the tree at the task's base commit, which
    /// is what aider will open: a symlink committed on the base ref that leaves the worktree is
    /// refused even when the main checkout (checked at admission) lacks it. The error names the
    /// field, as request validation does (`files[2]: …`). Call it before aider runs.
    pub async fn check_files(&self, files: &[String]) -> Result<(), Status> {
        check_files(&self.path, files).await
    }

    fn git(&self) -> Git {
        let git = Git::new(&self.path)
            .envs(self.identity.env())
            .synced(self.synced);
        match self.admin_dir() {
            // Not found through the worktree's `.git` file, which the task's files sit beside.
            Some(admin) => git.envs([
                ("GIT_DIR", admin.as_str()),
                ("GIT_WORK_TREE", &*self.path.to_string_lossy()),
            ]),
            None => git,
        }
    }

    /// The worktree's administrative directory (`<repo>/.git/worktrees/<name>`), as `git
    /// worktree add` named it in the worktree's `.git` file.
    fn admin_dir(&self) -> Option<String> {
        let named = self
            .git_link
            .as_deref()?
            .strip_prefix("gitdir: ")?
            .trim_end();
        Some(self.path.join(named).to_string_lossy().into_owned())
    }

    /// Fails ([`WorktreeError::GitLinkChanged`]) when the worktree's `.git` file no longer holds
    /// what `git worktree add` wrote, after restoring it: aider's edits and commits run in the
    /// worktree, and a rewritten link would point git (aider's, or a later one in a repository
    /// that kept the change) at a directory the task wrote, config and all. Call it before using
    /// anything of an attempt.
    fn verify_git_link(&self) -> Result<(), WorktreeError> {
        let Some(expected) = &self.git_link else {
            return Ok(());
        };
        let link = self.path.join(".git");
        let intact = fs::symlink_metadata(&link).is_ok_and(|m| m.is_file())
            && fs::read(&link).is_ok_and(|content| content == expected.as_bytes());
        if intact {
            return Ok(());
        }
        tracing::warn!(worktree = %self.path.display(), "the worktree's .git file was changed during the task; restoring it");
        let restored = match fs::symlink_metadata(&link) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&link),
            Ok(_) => fs::remove_file(&link),
            Err(_) => Ok(()),
        }
        .and_then(|()| fs::write(&link, expected));
        if let Err(e) = restored {
            tracing::warn!(worktree = %self.path.display(), "cannot restore the worktree's .git file: {e}");
        }
        Err(WorktreeError::GitLinkChanged { path: link })
    }

    /// `git update-ref -m <why> refs/heads/<branch> <commit> ""`: creates the branch only if it
    /// does not exist — the empty old value makes git check and write under the ref's lock, so of
    /// concurrent creators exactly one succeeds. `Ok(false)`: it existed. Blocking. `shared`: the
    /// branch is one other attempts of the task may create too (the kept one), so a lock a killed
    /// one left is waited out rather than failed on (a scratch branch is this attempt's alone).
    fn create_branch_if_absent(
        &self,
        branch: &str,
        commit: &str,
        why: String,
        shared: bool,
    ) -> Result<bool, WorktreeError> {
        let refname = format!("refs/heads/{branch}");
        let create = Git::new(&self.repo)
            .envs(self.identity.env())
            .synced(self.synced)
            .args(["update-ref", "-m"])
            .arg(why)
            .args([refname.as_str(), commit, ""]);
        // Held past the retries: a git killed in the middle of creating it (a programmer killed
        // while it kept this task's result) left its lock, on which every attempt of the task
        // would fail to keep. Dead once a minute old: then it goes, and the creation is tried
        // again.
        let lock = self.common_dir().join(format!("{refname}.lock"));
        let out = create.output_blocking_past_dead_lock(|| shared && wait_out_dead_lock(&lock))?;
        if out.status.success() {
            return Ok(true);
        }
        if String::from_utf8_lossy(&out.stderr).contains("reference already exists") {
            return Ok(false);
        }
        Err(create.failed(&out).into())
    }

    /// Create the branch, then the worktree; runs on the blocking pool ([`unstoppable`]).
    fn create_blocking(mut self) -> Result<TaskWorktree, WorktreeError> {
        // Atomic create-if-absent: a concurrent duplicate fails here, before it could touch
        // anyone's worktree.
        let why = format!("pas: scratch branch for task {}", self.task_id);
        if !self.create_branch_if_absent(&self.branch, &self.base_commit, why, false)? {
            return Err(WorktreeError::BranchExists {
                branch: self.branch.clone(),
            });
        }
        // The branch is ours from here on: any early return drops `self`, which removes the
        // (possibly half-made) worktree and the branch.
        self.armed = true;
        {
            let _lock = self.lock_worktrees()?;
            Git::new(&self.repo)
                .envs(self.identity.env())
                .args(["worktree", "add", "--quiet"])
                .arg(&self.path)
                .arg(&self.branch)
                .run_blocking()?;
        }
        let link = self.path.join(".git");
        let written = fs::read_to_string(&link).map_err(|source| WorktreeError::Io {
            path: link.clone(),
            source,
        })?;
        self.git_link = Some(written);
        tracing::debug!(branch = %self.branch, path = %self.path.display(),
            base = %self.base_commit, "task worktree created");
        Ok(self)
    }

    /// Back to the base commit for the next attempt: `reset --hard` (also undoing commits aider
    /// made) and `clean -ffdx` (untracked and ignored files, nested repositories).
    /// Precondition: no process (aider) is still running in the worktree.
    pub async fn reset(&self) -> Result<(), WorktreeError> {
        self.verify_git_link()?;
        self.git()
            .args(["reset", "--quiet", "--hard", self.base_commit.as_str()])
            .run()
            .await?;
        self.git().args(["clean", "-ffdxq"]).run().await?;
        Ok(())
    }

    /// Commit whatever aider left uncommitted (aider's own `.aider*` files, at any depth,
    /// excluded) and report the change from the base commit. An empty change reports
    /// `commit == base_commit`.
    pub async fn finish(&self, commit_message: &str) -> Result<Change, WorktreeError> {
        self.verify_git_link()?;
        self.git()
            .args(["add", "--all", "--", "."])
            .args([":(exclude,glob)**/.aider*", ":(exclude,glob)**/.aider*/**"])
            .run()
            .await?;
        let staged = self.git().args(["diff", "--cached", "--quiet"]);
        let out = staged.output().await?;
        match out.status.code() {
            Some(0) => {}
            Some(1) => {
                let message = if commit_message.trim().is_empty() {
                    format!("pas: result of {}", self.kept_branch)
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
        let files = names
            .split('\0')
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect();
        let (files_changed, diff, truncated) = fit_in_result(files, diff);
        Ok(Change {
            commit: head,
            files_changed,
            diff,
            truncated,
        })
    }

    /// Keep `change` (from [`finish`](Self::finish)) for the caller to merge: create
    /// [`kept_branch`](Self::kept_branch) at its commit only if no attempt of the task kept one
    /// before ([`WorktreeError::AlreadyKept`] otherwise: then nothing of this attempt is kept),
    /// then remove the worktree and the scratch branch either way. With a [`push_to`](Self::push_to)
    /// remote the branch is created *there* (a create-only push; the full ref pushed is returned),
    /// otherwise in the repository. Once the kept branch exists, a failed clean-up is only logged
    /// (the start-up sweep finishes it). Runs to completion even if the caller's future is dropped.
    pub async fn keep(mut self, change: &Change) -> Result<Option<String>, WorktreeError> {
        let path = self.path.clone();
        let commit = change.commit.clone();
        unstoppable(move || {
            self.armed = false;
            let refname = format!("refs/heads/{}", self.kept_branch);
            let kept = match &self.push {
                None => {
                    let why = format!("pas: result of task {}", self.task_id);
                    self.create_branch_if_absent(&self.kept_branch, &commit, why, true)
                        .map(|created| match created {
                            true => Kept::Created,
                            false => Kept::Exists(None),
                        })
                }
                Some(remote) => remote
                    .push_create_only(&self.repo, &commit, &refname)
                    .map_err(|source| WorktreeError::PushFailed {
                        branch: self.kept_branch.clone(),
                        url: remote.url().to_string(),
                        source: Box::new(source),
                    }),
            };
            let cleaned = self.discard_blocking();
            match kept? {
                Kept::Created => {
                    if let Err(e) = cleaned {
                        tracing::warn!(branch = %self.branch, "result kept, but the scratch worktree or branch could not be removed: {e}");
                    }
                    tracing::debug!(kept = %self.kept_branch, pushed = self.push.is_some(), "result kept, scratch worktree and branch removed");
                    Ok(self.push.is_some().then_some(refname))
                }
                Kept::Exists(existing) => Err(WorktreeError::AlreadyKept {
                    commit: existing.or_else(|| self.kept_commit_blocking()),
                    branch: self.kept_branch.clone(),
                }),
            }
        })
        .await
        .map_err(|source| WorktreeError::Io { path, source })?
    }

    /// Remove the worktree directory and delete the scratch branch: nothing is left behind.
    /// Runs to completion even if the caller's future is dropped.
    pub async fn discard(mut self) -> Result<(), WorktreeError> {
        let path = self.path.clone();
        unstoppable(move || {
            self.armed = false;
            self.discard_blocking()?;
            tracing::debug!(branch = %self.branch, "task worktree and branch discarded");
            Ok(())
        })
        .await
        .map_err(|source| WorktreeError::Io { path, source })?
    }

    /// Worktree removal and scratch branch deletion, both tried; the first error is returned.
    fn discard_blocking(&self) -> Result<(), WorktreeError> {
        // `git worktree remove` refuses a worktree whose `.git` does not point back to it.
        let _ = self.verify_git_link();
        let removed = self.remove_worktree_blocking();
        let deleted = self.delete_branch_blocking(removed.is_ok());
        removed?;
        deleted
    }

    /// Deletes the scratch branch. A git killed mid-commit in the task's worktree (aider's
    /// process group ended by the usage cap or the deadline) leaves the branch's ref lock behind,
    /// and every later update of the ref fails on it: once the worktree is gone no process can
    /// still be committing to this task-only branch, so a lock that outlived the retries is
    /// removed and the deletion tried again. So is a dead git's `packed-refs.lock` (see
    /// [`DeadLocks`]), which every branch deletion in the repository takes: left by a programmer
    /// killed mid-deletion, it would otherwise keep every later task's scratch branch.
    fn delete_branch_blocking(&self, worktree_gone: bool) -> Result<(), WorktreeError> {
        let delete = self.delete_branch();
        let stale = self
            .common_dir()
            .join(format!("refs/heads/{}.lock", self.branch));
        let packed_refs = DeadLocks {
            git_dir: self.common_dir(),
            ref_dirs: &[],
        };
        let out = delete.output_blocking_past_dead_lock(|| {
            // Both looked at (`|`, not `||`): either may be the one the deletion failed on.
            (worktree_gone && remove_dead_lock(&stale)) | !packed_refs.remove().is_empty()
        })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(delete.failed(&out).into())
        }
    }

    /// The repository's shared git directory (its `.git`, or a mirror itself), where refs live.
    fn common_dir(&self) -> &Path {
        self.lock_path.parent().unwrap_or(&self.repo)
    }

    /// The commit of the kept branch, if it can be read (for the AlreadyKept message).
    fn kept_commit_blocking(&self) -> Option<String> {
        let out = Git::new(&self.repo)
            .args(["rev-parse", "--verify", "-q", "--end-of-options"])
            .arg(format!("refs/heads/{}", self.kept_branch))
            .output_blocking()
            .ok()?;
        let commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !commit.is_empty()).then_some(commit)
    }

    /// The repository's cross-process worktree lock; blocks (blocking pool or `Drop` only).
    fn lock_worktrees(&self) -> Result<WorktreeLock, WorktreeError> {
        WorktreeLock::acquire_blocking(&self.lock_path).map_err(|source| WorktreeError::Io {
            path: self.lock_path.clone(),
            source,
        })
    }

    fn remove_worktree_cmd(&self) -> Git {
        Git::new(&self.repo)
            .args(["worktree", "remove", "--force"])
            .arg(&self.path)
    }

    /// `git worktree remove --force` under the repository's worktree lock. A worktree whose
    /// directory never came to exist (creation failed early) counts as removed.
    fn remove_worktree_blocking(&self) -> Result<(), WorktreeError> {
        let _lock = self.lock_worktrees()?;
        match self.remove_worktree_cmd().run_blocking() {
            Err(_) if fs::symlink_metadata(&self.path).is_err() => Ok(()),
            other => Ok(other?),
        }
    }

    /// `update-ref -d` rather than `branch -D`: no write to the shared `.git/config`.
    fn delete_branch(&self) -> Git {
        Git::new(&self.repo)
            .envs(self.identity.env())
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
        match self.discard_blocking() {
            Ok(()) => {
                tracing::debug!(branch = %self.branch, "unfinished task worktree discarded");
            }
            Err(e) => tracing::warn!(
                branch = %self.branch,
                path = %self.path.display(),
                "could not fully discard an unfinished task worktree: {e}"
            ),
        }
    }
}

// ===== start-up sweep =====

/// Removes task worktrees (and their scratch branches) that a previous run of this programmer left
/// behind when it was killed (Drop never ran): every directory under `worktrees_dir` belongs to a
/// task that did not finish, since finished tasks remove theirs. Only scratch (`pas-work/…`)
/// branches are deleted; a kept `pas/…` branch is a result and is never touched (a worktree on
/// any other branch only loses its directory). Returns how many were removed; problems are logged,
/// never fatal.
pub async fn sweep_abandoned(worktrees_dir: &Path, identity: &GitIdentity) -> usize {
    let Ok(entries) = fs::read_dir(worktrees_dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let dir = entry.path();
        if !dir.is_dir() {
            continue;
        }
        let common = Git::new(&dir)
            .args(["rev-parse", "--path-format=absolute", "--git-common-dir"])
            .run()
            .await;
        let branch = Git::new(&dir)
            .args(["symbolic-ref", "--short", "HEAD"])
            .run()
            .await;
        match (common, branch) {
            (Ok(common), Ok(branch)) if branch.trim().starts_with(SCRATCH_PREFIX) => {
                let common = PathBuf::from(common.trim());
                // A mirror (bare) is its own common dir; a workspace's is its `.git`.
                let repo = if common.file_name().is_some_and(|n| n == ".git") {
                    let Some(parent) = common.parent() else {
                        continue;
                    };
                    parent.to_path_buf()
                } else {
                    common.clone()
                };
                let abandoned = TaskWorktree {
                    repo,
                    lock_path: common.join(crate::git::WORKTREE_LOCK_FILE),
                    path: dir.clone(),
                    branch: branch.trim().to_string(),
                    kept_branch: String::new(),
                    task_id: String::new(),
                    base_commit: String::new(),
                    identity: identity.clone(),
                    push: None,
                    synced: false,
                    git_link: None,
                    armed: true,
                };
                match abandoned.discard().await {
                    Ok(()) => removed += 1,
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), "could not remove an abandoned worktree: {e}")
                    }
                }
            }
            // Not a (complete) worktree: a creation interrupted half-way. Its repository's own
            // `git worktree prune` cleans the registration; the directory goes now.
            _ => match fs::remove_dir_all(&dir) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), "could not remove a stale directory: {e}")
                }
            },
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_too_large_for_a_result_is_cut_at_a_line_end() {
        let small = (vec!["a.txt".to_string()], "+a\n".to_string());
        assert_eq!(
            fit_in_result(small.0.clone(), small.1.clone()),
            (small.0, small.1, false)
        );
        let line = format!("+{}\n", "é".repeat(40));
        let diff = line.repeat(2 * MAX_DIFF_BYTES / line.len());
        let (files, cut, truncated) = fit_in_result(vec!["big.txt".into()], diff.clone());
        assert!(truncated);
        assert_eq!(files, vec!["big.txt"]);
        assert!(cut.len() <= MAX_DIFF_BYTES && cut.len() > MAX_DIFF_BYTES - line.len());
        assert!(diff.starts_with(&cut) && cut.ends_with('\n'));
        // One line longer than the cap is cut inside it, at a character boundary.
        let (_, cut, truncated) = fit_in_result(vec![], "é".repeat(MAX_DIFF_BYTES));
        assert!(truncated && cut.len() == MAX_DIFF_BYTES);
        // Paths are kept whole, in order, up to the cap.
        let path = "src/generated/".to_string() + &"x".repeat(86);
        let paths = vec![path; 2 * MAX_FILES_CHANGED_BYTES / 100];
        let (files, diff, truncated) = fit_in_result(paths.clone(), String::new());
        assert!(truncated && diff.is_empty());
        assert_eq!(files.len(), MAX_FILES_CHANGED_BYTES / 100);
        assert_eq!(files[..], paths[..files.len()]);
    }

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
}
