//! Where a task may work: workspace and file-path confinement, and the request checks the manager
//! and the programmer share.
//!
//! The manager validates a `DispatchRequest` up-front and the programmer validates the
//! `TaskRequest` it receives; both must apply *exactly* the same rules, so a bad path is
//! INVALID_ARGUMENT at Dispatch and never reaches a programmer. The rules live here, on the lower
//! floor, because the two are peers that share nothing else.
//!
//! - [`Workspace::open`] resolves a caller-supplied workspace name under the configured root and
//!   refuses anything that escapes it or is not the top level of a git repository with commits.
//! - [`check_file_in`] / [`Workspace::check_file`] vet a task file path: relative, no leading `-`
//!   (never an option on aider's command line), no `..`, not in `.git`, not one of aider's own
//!   `.aider*` files, no symlink escape.
//! - [`open_checked`], [`check_files`], [`check_id`], [`check_description`], [`check_ref`] turn
//!   those rules into INVALID_ARGUMENT [`Status`]es whose message starts with the offending
//!   field (`workspace`, `files[3]`, `task_id`, …), so a caller can fix its request.
//!
//! The programmer's task worktrees extend [`Workspace`] in [`crate::programmer::worktree`].

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tonic::Status;

use crate::git::{Git, GitError, WORKTREE_LOCK_FILE};

/// Largest accepted task description (bytes). Aider sends it to the LLM verbatim.
pub const MAX_DESCRIPTION_BYTES: usize = 64 * 1024;
/// Most files one task may name.
pub const MAX_FILES: usize = 200;
/// Longest accepted id (task id, run id).
pub const MAX_ID_LEN: usize = 128;
/// Task file lists up to this long are checked on the calling async worker (see [`open_checked`]).
const INLINE_FILE_CHECKS: usize = 8;
/// Longest accepted git ref (bytes): far above any real ref, far below the kernel's limit for one
/// argument (128 KiB), so an absurd ref is the caller's INVALID_ARGUMENT, not a failed spawn.
pub const MAX_REF_LEN: usize = 1024;

// ===== errors =====

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
        match self {
            // A name too long for the file system, or one that goes on below a file.
            WorkspaceError::Io { source, .. } => caller_named_no_path(source),
            WorkspaceError::Root { .. } | WorkspaceError::Git(_) => false,
            _ => true,
        }
    }
}

/// Why a task file path was refused ([`check_file_in`]).
#[derive(Debug, Error)]
pub enum PathError {
    /// Empty path.
    #[error("file path is empty")]
    Empty,
    /// Starts with `-`: aider (and git) would read the name as an option, e.g.
    /// `--openai-api-base=…` or `--test-cmd=…`. The runner also puts `--` before the files.
    #[error("file path {path:?} starts with '-', which a command line reads as an option")]
    LeadingDash {
        /// The path as given.
        path: String,
    },
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
    /// One of aider's own files (`.aider.conf.yml`, `.aiderignore`, `.aider.chat.history.md`, …):
    /// aider reads its configuration from the repository (a `.aider.conf.yml` can even name
    /// commands to run), and the programmer leaves `.aider*` files out of every result, so such a
    /// file can never be a task's work.
    #[error(
        "file path {path:?} is one of aider's own `.aider*` files (configuration or state), \
         which aider reads itself and results never include; it cannot be a task file"
    )]
    AiderFile {
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

impl PathError {
    /// `true` when the caller's path is at fault (→ `INVALID_ARGUMENT`), `false` when the file
    /// system could not be inspected (→ `INTERNAL`).
    pub fn is_invalid_argument(&self) -> bool {
        match self {
            PathError::Io { source, .. } => caller_named_no_path(source),
            _ => true,
        }
    }
}

/// True for a file system error that only the name asked for causes: a component too long for
/// the file system (`ENAMETOOLONG`) or a path that goes on below a file (`ENOTDIR`).
fn caller_named_no_path(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidFilename | io::ErrorKind::NotADirectory
    )
}

// ===== workspace =====

/// A git repository (its top level) inside the configured workspace root; canonical path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    name: String,
    path: PathBuf,
    /// [`WORKTREE_LOCK_FILE`] in the repository's common git dir.
    lock_path: PathBuf,
    /// Where the branches that count for "already kept" live: `refs/heads/` in a local
    /// workspace, [`MIRROR_REMOTE_REFS`] in a mirror (the remote's branches as last fetched).
    kept_refs: &'static str,
}

/// Where a programmer's bare mirror of a `repo_url` keeps the remote's branches (`+refs/heads/*`
/// is fetched there, pruned), apart from the mirror's own scratch branches in `refs/heads/`.
pub const MIRROR_REMOTE_REFS: &str = "refs/remotes/origin/";

impl Workspace {
    /// Resolve `name` (relative to `workspace_root`, symlinks resolved) and require it to be
    /// inside the root and the top level of a git repository with at least one commit. Runs git
    /// three times; services open workspaces through a [`WorkspaceCache`] instead.
    pub async fn open(workspace_root: &Path, name: &str) -> Result<Workspace, WorkspaceError> {
        let path = resolve_under(&canonical_root(workspace_root)?, name)?;
        let lock_path = verify_repository(&path, name).await?;
        Ok(Workspace {
            name: name.to_string(),
            lock_path,
            path,
            kept_refs: "refs/heads/",
        })
    }

    /// A programmer's bare mirror of a remote repository at `path` (canonical), named by its URL:
    /// task worktrees are made from it like from a local workspace, and a branch the remote
    /// already has under [`MIRROR_REMOTE_REFS`] counts as kept.
    pub fn mirror(url: &str, path: PathBuf) -> Workspace {
        Workspace {
            name: url.to_string(),
            lock_path: path.join(WORKTREE_LOCK_FILE),
            path,
            kept_refs: MIRROR_REMOTE_REFS,
        }
    }

    /// The ref under which branch `branch` (e.g. `pas/<task>`) counts as already kept.
    pub fn kept_ref(&self, branch: &str) -> String {
        format!("{}{branch}", self.kept_refs)
    }

    /// The full commit id `reference` names (`reference^{commit}`), or `None` when it names no
    /// commit. The caller vets `reference` first ([`ref_problem`]); it is passed after
    /// `--end-of-options`, so it is never read as an option.
    pub async fn commit_of(&self, reference: &str) -> Result<Option<String>, GitError> {
        let git = Git::new(self.path())
            .args(["rev-parse", "--verify", "-q", "--end-of-options"])
            .arg(format!("{reference}^{{commit}}"));
        let out = git.output().await?;
        match out.status.code() {
            Some(0) => Ok(Some(
                String::from_utf8_lossy(&out.stdout).trim().to_string(),
            )),
            // rev-parse --verify -q: exit 1, no output, when the name resolves to no commit;
            // exit 128 and no message for a reflog entry it does not have (`HEAD@{99}`).
            Some(1) => Ok(None),
            Some(128) if out.stderr.is_empty() => Ok(None),
            _ => Err(git.failed(&out)),
        }
    }

    /// The name as the caller gave it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Canonical path of the repository's top level.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The repository's cross-process worktree lock file (see [`crate::git::WorktreeLock`]).
    pub(crate) fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    /// Vet a task file path against this workspace (see [`check_file_in`]).
    pub fn check_file(&self, rel: &str) -> Result<(), PathError> {
        check_file_in(&self.path, rel)
    }
}

/// The configured workspace root with its symlinks resolved, which every resolved workspace must
/// lie under.
fn canonical_root(workspace_root: &Path) -> Result<PathBuf, WorkspaceError> {
    fs::canonicalize(workspace_root).map_err(|source| WorkspaceError::Root {
        path: workspace_root.to_path_buf(),
        source,
    })
}

/// The file-system half of [`Workspace::open`]: `name` resolved under `root` (canonical; symlinks
/// included) to an existing directory inside it. No process is started.
fn resolve_under(root: &Path, name: &str) -> Result<PathBuf, WorkspaceError> {
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
    // Without a symlink on the way, the last component's metadata is the resolved one.
    let (path, plain_is_dir) = match plain_path_under(root, rel) {
        Some((plain, is_dir)) => (Ok(plain), is_dir),
        None => (fs::canonicalize(root.join(rel)), None),
    };
    let path = match path {
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
    if !path.starts_with(root) {
        return Err(WorkspaceError::EscapesRoot { name: owned() });
    }
    if !plain_is_dir.unwrap_or_else(|| path.is_dir()) {
        return Err(WorkspaceError::NotARepo {
            name: owned(),
            detail: "not a directory".into(),
        });
    }
    Ok(path)
}

/// `root.join(rel)` when every component of `rel` exists and none is a symlink: then that path is
/// already canonical (`root` is, and `rel` has no `..`), and resolving it again would cost a
/// `readlink` per component of the whole path on every request. Also says whether it is a
/// directory, from its last component's metadata (none read when `rel` names the root itself).
/// `None` sends the caller to `fs::canonicalize`, which also explains any failure.
fn plain_path_under(root: &Path, rel: &Path) -> Option<(PathBuf, Option<bool>)> {
    let mut path = root.to_path_buf();
    let mut is_dir = None;
    for part in rel.components() {
        match part {
            Component::Normal(part) => path.push(part),
            Component::CurDir => continue,
            _ => return None,
        }
        let meta = fs::symlink_metadata(&path).ok()?;
        if meta.file_type().is_symlink() {
            return None;
        }
        is_dir = Some(meta.is_dir());
    }
    Some((path, is_dir))
}

/// The git half of [`Workspace::open`]: `path` (canonical) is the top level of a repository whose
/// `HEAD` names a commit. Returns the repository's worktree lock file (in its common git dir).
async fn verify_repository(path: &Path, name: &str) -> Result<PathBuf, WorkspaceError> {
    let owned = || name.to_string();
    let toplevel = Git::new(path).args(["rev-parse", "--show-toplevel"]);
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

    let head = Git::new(path).args(["rev-parse", "--verify", "-q", "HEAD^{commit}"]);
    let out = head.output().await.map_err(WorkspaceError::Git)?;
    if !out.status.success() {
        return Err(WorkspaceError::NoCommits { name: owned() });
    }
    let common_dir = Git::new(path)
        .args(["rev-parse", "--path-format=absolute", "--git-common-dir"])
        .run()
        .await
        .map_err(WorkspaceError::Git)?;
    Ok(Path::new(common_dir.trim()).join(WORKTREE_LOCK_FILE))
}

// ===== cached opening =====

/// Opens workspaces under one root the way [`Workspace::open`] does, but runs git only when a
/// repository is new or has changed since it was last verified.
///
/// Every task is validated twice (by the manager and by its programmer), and verifying a
/// repository starts three `git` processes: at a few milliseconds each, that was most of what a
/// dry-run dispatch cost. What git verified (top level, a commit at `HEAD`, the common dir) only
/// changes when the repository's `.git` entry or `HEAD` file changes, and git rewrites both by
/// renaming a lock file over them, which gives them a new inode and ctime. So a verification is
/// reused while a [`RepoStamp`] of the two is unchanged. The file-system checks (name, root
/// confinement after resolving symlinks) run on every call; they cost no process.
///
/// A branch deleted from under a running pool without touching `.git` or `HEAD` (a loose ref
/// removed by hand) can leave a stale "has commits" answer: the programmer then fails the task
/// when it resolves its base commit, with git's error, as it would for any ref that vanished
/// between validation and start.
///
/// Opening is single-flight: requests that arrive together for a repository not yet verified
/// wait for one verification (a burst of callers must not start one set of `git` processes
/// each), and a name that is not a repository at all (no `.git` entry) is remembered as such
/// until one appears, so repeating a bad request costs no process either.
#[derive(Debug)]
pub struct WorkspaceCache {
    root: PathBuf,
    /// `root` with its symlinks resolved, once that succeeded: the root is the operator's, fixed
    /// while the service runs, so resolving it again (a `readlink` per component) on every
    /// request would only cost time. Unset until the root exists.
    canonical_root: std::sync::OnceLock<PathBuf>,
    verified: std::sync::Mutex<HashMap<PathBuf, Verdict>>,
    /// One lock per repository being verified now: the single flight.
    flights: std::sync::Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
    /// Verifications that ran git (cache misses).
    misses: std::sync::atomic::AtomicU64,
    /// Base refs found to name a commit, by repository, with the refs' stamp then: asking again
    /// while nothing under the stamp changed starts no process.
    base_refs: std::sync::Mutex<HashMap<(PathBuf, String), RefsStamp>>,
    /// Base-ref checks that ran git.
    ref_lookups: std::sync::atomic::AtomicU64,
}

/// What a verification found, valid while the repository's stamp is unchanged.
#[derive(Debug, Clone)]
enum Verdict {
    /// A repository with commits: its worktree lock path.
    Repository(RepoStamp, PathBuf),
    /// No `.git` entry: not the top level of a repository (git's explanation kept).
    NotARepo(String),
}

/// Repositories remembered at most; past it the cache starts over (they are re-verified).
const MAX_CACHED_REPOSITORIES: usize = 1024;

impl WorkspaceCache {
    /// A cache for workspaces under `root` (its symlinks resolved once, at the first open that
    /// finds it).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            canonical_root: Default::default(),
            verified: Default::default(),
            flights: Default::default(),
            misses: Default::default(),
            base_refs: Default::default(),
            ref_lookups: Default::default(),
        }
    }

    /// [`check_base_ref`], remembering a ref that named a commit while the repository's refs
    /// (`HEAD`, `packed-refs`, `refs/heads/`, `refs/tags/`: git renames a new file into place,
    /// changing the directory or file stamp) are unchanged, so a stream of tasks on one base ref
    /// costs one `git rev-parse`, not one each. Only "it exists" is remembered, never "it does
    /// not"; a nested branch (`refs/heads/a/b`) deleted by hand can leave a stale yes, and the
    /// programmer then fails the task with git's error when it resolves its base.
    pub async fn check_base_ref(&self, ws: &Workspace, field: &str, r: &str) -> Result<(), Status> {
        check_ref(field, r)?;
        let key = (ws.path().to_path_buf(), r.to_string());
        let stamp = RefsStamp::read(ws.path());
        {
            let known = self.base_refs.lock().unwrap_or_else(|e| e.into_inner());
            if stamp.is_some() && known.get(&key) == stamp.as_ref() {
                return Ok(());
            }
        }
        self.ref_lookups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("pas_base_ref_lookups_total").increment(1);
        check_base_ref(ws, field, r).await?;
        if let Some(stamp) = stamp {
            let mut known = self.base_refs.lock().unwrap_or_else(|e| e.into_inner());
            if known.len() >= MAX_CACHED_REPOSITORIES * 4 {
                known.clear();
            }
            known.insert(key, stamp);
        }
        Ok(())
    }

    /// How many opens had to verify a repository with git (the rest were answered from the cache).
    pub fn misses(&self) -> u64 {
        self.misses.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many base-ref checks had to run git.
    pub fn ref_lookups(&self) -> u64 {
        self.ref_lookups.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The configured workspace root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// [`Workspace::open`], reusing an earlier verification of the same unchanged repository.
    pub async fn open(&self, name: &str) -> Result<Workspace, WorkspaceError> {
        let path = resolve_under(self.canonical_root()?, name)?;
        let lock_path = match self.cached(&path, name) {
            Some(found) => found?,
            None => {
                let flight = self.flight(&path);
                let verified = {
                    let _turn = flight.lock().await;
                    // Whoever held the flight before us may have verified it meanwhile.
                    match self.cached(&path, name) {
                        Some(found) => found,
                        None => self.verify(&path, name).await,
                    }
                };
                self.land(&path, flight);
                verified?
            }
        };
        Ok(Workspace {
            name: name.to_string(),
            lock_path,
            path,
            kept_refs: "refs/heads/",
        })
    }

    /// The root, resolved at the first call that finds it.
    fn canonical_root(&self) -> Result<&Path, WorkspaceError> {
        if let Some(root) = self.canonical_root.get() {
            return Ok(root);
        }
        let root = canonical_root(&self.root)?;
        Ok(self.canonical_root.get_or_init(|| root))
    }

    /// The remembered answer for `path`, when its stamp still matches.
    fn cached(&self, path: &Path, name: &str) -> Option<Result<PathBuf, WorkspaceError>> {
        let stamp = RepoStamp::read(path);
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        match (verified.get(path)?, stamp) {
            (Verdict::Repository(seen, lock_path), Some(stamp)) if *seen == stamp => {
                Some(Ok(lock_path.clone()))
            }
            (Verdict::NotARepo(detail), None) => Some(Err(WorkspaceError::NotARepo {
                name: name.to_string(),
                detail: detail.clone(),
            })),
            _ => None,
        }
    }

    /// Runs git to verify `path` and remembers what can be remembered.
    async fn verify(&self, path: &Path, name: &str) -> Result<PathBuf, WorkspaceError> {
        self.misses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("pas_workspace_verifications_total").increment(1);
        // Read before verifying: a change during verification then misses on the next call.
        let stamp = RepoStamp::read(path);
        let found = verify_repository(path, name).await;
        let verdict = match (&found, stamp) {
            (Ok(lock_path), Some(stamp)) => Some(Verdict::Repository(stamp, lock_path.clone())),
            (Err(WorkspaceError::NotARepo { detail, .. }), None) => {
                Some(Verdict::NotARepo(detail.clone()))
            }
            // A repository without commits gains one without touching what the stamp covers,
            // and server-side failures may pass: neither is remembered.
            _ => None,
        };
        if let Some(verdict) = verdict {
            let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if verified.len() >= MAX_CACHED_REPOSITORIES {
                verified.clear();
            }
            verified.insert(path.to_path_buf(), verdict);
        }
        found
    }

    /// The flight lock of `path`, shared by everyone verifying it now.
    fn flight(&self, path: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        flights.entry(path.to_path_buf()).or_default().clone()
    }

    /// Done with `flight`: the last one out removes it, so the map holds only flights in the air.
    fn land(&self, path: &Path, flight: Arc<tokio::sync::Mutex<()>>) {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        // Ours and the map's: nobody else is waiting on it.
        if Arc::strong_count(&flight) == 2 {
            flights.remove(path);
        }
    }
}

/// Identity of a repository's `.git` entry (and the change times of a `.git` file) and of
/// `.git/HEAD` with its change times: equal stamps
/// mean git has not rewritten either since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RepoStamp {
    git: FileStamp,
    head: Option<FileStamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn read(path: &Path) -> Option<Self> {
        Some(Self::of(&fs::symlink_metadata(path).ok()?))
    }

    fn of(m: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// What a base ref's meaning depends on: the repository ([`RepoStamp`]: `.git` and `HEAD`) and
/// the places git writes refs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RefsStamp {
    repo: RepoStamp,
    packed: Option<FileStamp>,
    heads: Option<FileStamp>,
    tags: Option<FileStamp>,
}

impl RefsStamp {
    /// `None` when `<repo>/.git` cannot be read (then nothing is remembered).
    fn read(repo: &Path) -> Option<Self> {
        let dot_git = repo.join(".git");
        Some(Self {
            repo: RepoStamp::read(repo)?,
            packed: FileStamp::read(&dot_git.join("packed-refs")),
            heads: FileStamp::read(&dot_git.join("refs/heads")),
            tags: FileStamp::read(&dot_git.join("refs/tags")),
        })
    }
}

impl RepoStamp {
    /// `None` when `<repo>/.git` cannot be read: such a workspace is verified every time.
    fn read(repo: &Path) -> Option<Self> {
        let dot_git = repo.join(".git");
        let meta = fs::symlink_metadata(&dot_git).ok()?;
        let mut git = FileStamp::of(&meta);
        if meta.is_dir() {
            // A `.git` directory's times change whenever git creates or removes an entry in it
            // (a lock file, `worktrees/` when a programmer adds a worktree), none of which
            // changes what was verified; replacing the directory changes its inode.
            git.size = 0;
            git.mtime = (0, 0);
            git.ctime = (0, 0);
        }
        Some(Self {
            git,
            head: FileStamp::read(&dot_git.join("HEAD")),
        })
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

/// `.git` in any letter case: on case-insensitive file systems `.GIT` *is* the git dir.
fn is_git_dir_name(part: &OsStr) -> bool {
    part.eq_ignore_ascii_case(".git")
}

/// Aider's own files and directories all start with `.aider` (`.aider.conf.yml`, `.aiderignore`,
/// `.aider.tags.cache.v4/`, …); any letter case, as for `.git`.
fn is_aider_name(part: &OsStr) -> bool {
    part.as_encoded_bytes()
        .get(..6)
        .is_some_and(|p| p.eq_ignore_ascii_case(b".aider"))
}

/// The lexical half of [`check_file_in`], for a task whose repository is not on this host yet (a
/// `repo_url`): relative, no leading `-`, no NUL, no `..`, not in `.git`, no `.aider*` component.
/// Returns the path's components. The file-system half runs later, in the task's worktree.
pub fn check_file_name(rel: &str) -> Result<Vec<&OsStr>, PathError> {
    let owned = || rel.to_string();
    if rel.is_empty() {
        return Err(PathError::Empty);
    }
    if rel.starts_with('-') {
        return Err(PathError::LeadingDash { path: owned() });
    }
    if rel.contains('\0') {
        return Err(PathError::Nul { path: owned() });
    }
    let path = Path::new(rel);
    if path.has_root() || path.is_absolute() {
        return Err(PathError::Absolute { path: owned() });
    }
    let mut parts: Vec<&OsStr> = Vec::new();
    let mut aider = false;
    for c in path.components() {
        match c {
            Component::Normal(part) => {
                if is_git_dir_name(part) {
                    return Err(PathError::GitDir { path: owned() });
                }
                aider |= is_aider_name(part);
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
    if aider {
        return Err(PathError::AiderFile { path: owned() });
    }
    Ok(parts)
}

/// Vet task file path `rel` against the directory `root` (canonical): relative, no leading `-`,
/// no NUL, no `..` component, not inside `.git`, no `.aider*` component, and — after resolving the symlinks of
/// the existing part of the path — still inside `root` and still neither in `.git` nor an
/// `.aider*` file. A file that does not exist yet is fine if its deepest existing ancestor is a
/// directory inside `root`.
pub fn check_file_in(root: &Path, rel: &str) -> Result<(), PathError> {
    let owned = || rel.to_string();
    let parts = check_file_name(rel)?;

    // Walk down while the path exists (symlinks included, dangling or not).
    let mut existing = root.to_path_buf();
    let mut missing = 0;
    // Whether the existing part holds a symlink, and what its last component is.
    let mut symlinked = false;
    let mut last: Option<fs::Metadata> = None;
    for (i, part) in parts.iter().enumerate() {
        let next = existing.join(part);
        match fs::symlink_metadata(&next) {
            Ok(meta) => {
                symlinked |= meta.file_type().is_symlink();
                last = Some(meta);
                existing = next;
            }
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
    // Without a symlink on the way, `root` (canonical) joined with plain names is the resolved
    // path already (no `readlink` per component of it), and its last component's metadata is
    // the resolved one.
    let plain = last.filter(|_| !symlinked);
    let resolved = match plain {
        Some(_) => Ok(existing),
        None => fs::canonicalize(&existing),
    };
    let resolved = match resolved {
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
    let Ok(inside) = resolved.strip_prefix(root) else {
        return Err(PathError::EscapesWorkspace {
            path: owned(),
            resolved,
        });
    };
    // A symlink inside the workspace may still lead into `.git` or to an aider file.
    let mut inside = inside.components().filter_map(|c| match c {
        Component::Normal(part) => Some(part),
        _ => None,
    });
    if inside.clone().any(is_git_dir_name) {
        return Err(PathError::GitDir { path: owned() });
    }
    if inside.any(is_aider_name) {
        return Err(PathError::AiderFile { path: owned() });
    }
    let is_dir = plain.map_or_else(|| resolved.is_dir(), |meta| meta.is_dir());
    match (missing, is_dir) {
        (0, true) => Err(PathError::IsDirectory { path: owned() }),
        (0, false) | (_, true) => Ok(()),
        (_, false) => Err(PathError::ParentNotDirectory { path: owned() }),
    }
}

// ===== request validation (shared by the manager and the programmer) =====

/// INVALID_ARGUMENT whose message starts with the offending field: `"files[2]: …"`.
pub fn invalid(field: &str, problem: &str) -> Status {
    Status::invalid_argument(format!("{field}: {}", shortened(problem)))
}

/// Longest text an error message echoes from a request (`…` marks a cut): a message is sent
/// in a header (`grpc-message`), and a client refuses one of megabytes as a whole response.
pub const MAX_ECHOED_BYTES: usize = 1024;

/// `text` cut to [`MAX_ECHOED_BYTES`] at a character boundary, with `…` where it was cut.
pub fn shortened(text: &str) -> String {
    if text.len() <= MAX_ECHOED_BYTES {
        return text.to_string();
    }
    format!("{}…", at_most(text, MAX_ECHOED_BYTES))
}

/// The longest start of `text` of at most `max_bytes` that ends between two characters (what a
/// result's text fields and an error's echo of a request are cut to).
pub fn at_most(text: &str, max_bytes: usize) -> &str {
    let mut end = max_bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// An id (task id, run id): 1-[`MAX_ID_LEN`] characters of `A-Za-z0-9-_.:`, not starting with `.`
/// or `-` (ids end up in branch names, file names and log lines). With `allow_empty`, `""` means
/// "not given" and passes.
pub fn check_id(field: &str, value: &str, allow_empty: bool) -> Result<(), Status> {
    if value.is_empty() {
        return if allow_empty {
            Ok(())
        } else {
            Err(invalid(field, "must not be empty"))
        };
    }
    let ok = value.len() <= MAX_ID_LEN
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        && !value.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            &format!(
                "{value:?} must be 1-{MAX_ID_LEN} characters of A-Z a-z 0-9 - _ . : \
                 (not starting with . or -)"
            ),
        ))
    }
}

/// The task description (field `task_description`): not blank, at most
/// [`MAX_DESCRIPTION_BYTES`].
pub fn check_description(text: &str) -> Result<(), Status> {
    if text.trim().is_empty() {
        return Err(invalid("task_description", "must not be empty"));
    }
    // It becomes aider's `--message=` argument, which a NUL would cut (the spawn fails).
    if text.contains('\0') {
        return Err(invalid(
            "task_description",
            "must not contain a NUL character",
        ));
    }
    if text.len() > MAX_DESCRIPTION_BYTES {
        return Err(invalid(
            "task_description",
            &format!(
                "is {} bytes; the limit is {MAX_DESCRIPTION_BYTES}",
                text.len()
            ),
        ));
    }
    Ok(())
}

/// What is wrong with git ref `r` as something we pass to git, if anything: empty, longer than
/// [`MAX_REF_LEN`], a leading `-` (git would read an option), whitespace or control characters.
/// Whether it names a commit is for git to say later. The programmer's worktree code applies the
/// same rule when it resolves a base ref.
pub fn ref_problem(r: &str) -> Option<&'static str> {
    if r.is_empty() {
        Some("must not be empty")
    } else if r.len() > MAX_REF_LEN {
        Some("is too long")
    } else if r.starts_with('-') {
        Some("must not start with '-'")
    } else if r.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("must not contain whitespace or control characters")
    } else {
        None
    }
}

/// A git ref given by the caller (e.g. field `base_ref`); see [`ref_problem`]. Callers skip an
/// empty field that means "the default".
pub fn check_ref(field: &str, r: &str) -> Result<(), Status> {
    match ref_problem(r) {
        None => Ok(()),
        Some(problem) => Err(invalid(field, &format!("{r:?} {problem}"))),
    }
}

/// Field `field` (a base ref the caller gave) must name a commit of `ws`: a typo is the caller's
/// INVALID_ARGUMENT up-front, not a task that is queued, routed and (on a paid programmer) holds
/// budget only to fail with a git error. The manager and the programmer both apply it.
pub async fn check_base_ref(ws: &Workspace, field: &str, r: &str) -> Result<(), Status> {
    check_ref(field, r)?;
    match ws.commit_of(r).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(invalid(
            field,
            &format!("{r:?} is not a commit in workspace {:?}", ws.name()),
        )),
        Err(e) => Err(Status::internal(format!("{field}: {e}"))),
    }
}

/// A task on a local workspace names one (INVALID_ARGUMENT `workspace` otherwise).
pub fn check_workspace_named(workspace: &str) -> Result<(), Status> {
    if workspace.is_empty() {
        return Err(invalid(
            "workspace",
            "must name a git repository under the workspace root",
        ));
    }
    Ok(())
}

/// `files` names at most [`MAX_FILES`] files (INVALID_ARGUMENT `files` otherwise).
pub fn check_file_count(files: &[String]) -> Result<(), Status> {
    if files.len() > MAX_FILES {
        return Err(invalid(
            "files",
            &format!("names {} files; the limit is {MAX_FILES}", files.len()),
        ));
    }
    Ok(())
}

/// Open workspace `workspace` (through the cache) and vet every task file against it, as one request
/// check: field `workspace` for the workspace ([`WorkspaceError`] messages), `files` for more than
/// [`MAX_FILES`] files, `files[i]` for a refused path ([`PathError`] messages) or one listed twice
/// (after dropping `.` components and doubled slashes). Server-side failures (root missing, git
/// not runnable, I/O) are INTERNAL, not the caller's fault.
pub async fn open_checked(
    workspaces: &WorkspaceCache,
    workspace: &str,
    files: &[String],
) -> Result<Workspace, Status> {
    check_workspace_named(workspace)?;
    check_file_count(files)?;
    let ws = workspaces.open(workspace).await.map_err(|e| {
        if e.is_invalid_argument() {
            invalid("workspace", &e.to_string())
        } else {
            Status::internal(format!("workspace: {e}"))
        }
    })?;
    check_files(ws.path(), files).await?;
    Ok(ws)
}

/// Vet every task file against the directory `root` (canonical) as the request check
/// [`open_checked`] does: `files[i]` names a refused path ([`PathError`] messages) or one listed
/// twice (after dropping `.` components and doubled slashes); I/O failures are INTERNAL. The
/// manager and the programmer run it against the workspace at admission, the programmer again
/// against a task's own worktree at its base commit.
pub async fn check_files(root: &Path, files: &[String]) -> Result<(), Status> {
    // The path checks are file-system calls (a few per file). A handful cost less than the
    // hand-off to the blocking pool, which would put two thread switches on every dispatch;
    // long lists go off the async workers.
    if files.len() <= INLINE_FILE_CHECKS {
        return check_files_blocking(Some(root), files);
    }
    let root = root.to_path_buf();
    let files = files.to_vec();
    tokio::task::spawn_blocking(move || check_files_blocking(Some(&root), &files))
        .await
        .map_err(|e| Status::internal(format!("file path checks did not finish: {e}")))?
}

/// The request check of [`check_files`] without a directory to check against: the lexical rules of
/// [`check_file_name`], the [`MAX_FILES`] limit and duplicates. For a task on a `repo_url`, whose
/// files are checked against its worktree once the repository is fetched.
pub fn check_file_names(files: &[String]) -> Result<(), Status> {
    check_file_count(files)?;
    check_files_blocking(None, files)
}

fn check_files_blocking(root: Option<&Path>, files: &[String]) -> Result<(), Status> {
    let mut seen: HashMap<PathBuf, usize> = HashMap::with_capacity(files.len());
    for (i, file) in files.iter().enumerate() {
        let field = format!("files[{i}]");
        match root {
            Some(root) => check_file_in(root, file),
            None => check_file_name(file).map(drop),
        }
        .map_err(|e| {
            if e.is_invalid_argument() {
                invalid(&field, &e.to_string())
            } else {
                Status::internal(format!("{field}: {e}"))
            }
        })?;
        // Accepted paths have no `..` and no root, so this is their lexical normal form.
        let normal: PathBuf = Path::new(file)
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        if let Some(first) = seen.insert(normal, i) {
            return Err(invalid(
                &field,
                &format!("{file:?} is listed twice (also as files[{first}])"),
            ));
        }
    }
    Ok(())
}

/// Temporary repositories for the unit tests of the modules that validate workspaces.
#[cfg(test)]
pub(crate) mod testing {
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    pub(crate) fn git(dir: &Path, args: &[&str]) {
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
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `<tmp>/root/proj`: a repository with `README.md` and `src/main.rs`.
    pub(crate) fn root_with_repo() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("root");
        let repo = root.join("proj");
        fs::create_dir_all(repo.join("src")).expect("mkdir");
        git(&repo, &["init", "-q", "-b", "main"]);
        fs::write(repo.join("README.md"), "# demo\n").expect("write");
        fs::write(repo.join("src/main.rs"), "fn main() {}\n").expect("write");
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "initial"]);
        (tmp, root)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{git, root_with_repo};
    use super::*;
    use std::os::unix::fs::symlink;
    use tonic::Code;

    /// The status is INVALID_ARGUMENT and its message starts with `field: `.
    #[track_caller]
    fn assert_field(r: Result<impl std::fmt::Debug, Status>, field: &str) -> String {
        let s = r.expect_err("must be refused");
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(
            s.message().starts_with(&format!("{field}: ")),
            "message {:?} should name field {field}",
            s.message()
        );
        s.message().to_string()
    }

    fn files(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn lexical_escape_detection() {
        assert!(lexically_escapes(Path::new("../x")));
        assert!(lexically_escapes(Path::new("a/../../x")));
        assert!(!lexically_escapes(Path::new("a/../b")));
        assert!(!lexically_escapes(Path::new("./a")));
    }

    #[test]
    fn invalid_names_the_field() {
        let s = invalid("files[3]", "is absolute");
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "files[3]: is absolute");
    }

    #[test]
    fn ids() {
        for ok in [
            "a",
            "task-1",
            "5f0c1d2e-8a9b-4c3d-9e8f-0123456789ab",
            "run:2024.01_x",
        ] {
            check_id("task_id", ok, false).unwrap_or_else(|e| panic!("{ok:?}: {e:?}"));
        }
        check_id("task_id", &"x".repeat(MAX_ID_LEN), false).expect("max length");
        check_id("run_id", "", true).expect("empty allowed");
        let m = assert_field(check_id("run_id", "", false), "run_id");
        assert!(m.contains("empty"), "{m}");
        for bad in [
            "-rf",
            ".hidden",
            "a b",
            "a/b",
            "a\nb",
            "ü",
            "a@{1}",
            &"x".repeat(MAX_ID_LEN + 1),
        ] {
            assert_field(check_id("task_id", bad, true), "task_id");
        }
        assert_field(check_id("run_id", "../x", true), "run_id");
    }

    #[test]
    fn descriptions() {
        check_description("Add a README").expect("ok");
        check_description(&"x".repeat(MAX_DESCRIPTION_BYTES)).expect("at the limit");
        for bad in ["", "  \n\t "] {
            let m = assert_field(check_description(bad), "task_description");
            assert!(m.contains("empty"), "{m}");
        }
        let m = assert_field(
            check_description(&"x".repeat(MAX_DESCRIPTION_BYTES + 1)),
            "task_description",
        );
        assert!(m.contains(&MAX_DESCRIPTION_BYTES.to_string()), "{m}");
    }

    #[test]
    fn refs() {
        for ok in [
            "main",
            "HEAD~2",
            "v1.0^{commit}",
            "refs/heads/pas/x",
            "deadbeef",
        ] {
            check_ref("base_ref", ok).unwrap_or_else(|e| panic!("{ok:?}: {e:?}"));
        }
        for bad in [
            "",
            "-x",
            "--output=/tmp/x",
            "a b",
            "main\n",
            "a\0b",
            "\tmain",
            &"r".repeat(MAX_REF_LEN + 1),
        ] {
            assert_field(check_ref("base_ref", bad), "base_ref");
            assert!(ref_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn aider_names() {
        for name in [".aider.conf.yml", ".aiderignore", ".AIDER.x", ".aider"] {
            assert!(is_aider_name(OsStr::new(name)), "{name}");
        }
        for name in ["aider.py", ".aide", "x.aider", ".env"] {
            assert!(!is_aider_name(OsStr::new(name)), "{name}");
        }
    }

    /// The cache answers an unchanged repository without git, and notices what git rewrites:
    /// HEAD moved to a branch without commits, `.git` removed or replaced.
    #[tokio::test]
    async fn the_cache_reverifies_a_repository_git_changed() {
        let (_tmp, root) = root_with_repo();
        let cache = WorkspaceCache::new(&root);
        let first = cache.open("proj").await.expect("open");
        assert_eq!(cache.open("proj").await.expect("again"), first);
        assert_eq!(
            cache.open("./proj").await.expect("same repo").path(),
            first.path()
        );
        assert_eq!(
            cache.misses(),
            1,
            "verified once, then answered from the cache"
        );
        assert_eq!(
            first,
            Workspace::open(&root, "proj").await.expect("uncached")
        );

        // HEAD now names a branch without commits: no base to branch from.
        let repo = root.join("proj");
        git(&repo, &["checkout", "-q", "--orphan", "empty"]);
        let e = cache.open("proj").await.expect_err("no commits at HEAD");
        assert!(matches!(e, WorkspaceError::NoCommits { .. }), "{e}");
        git(&repo, &["checkout", "-q", "-f", "main"]);
        cache.open("proj").await.expect("back on main");

        // `.git` gone, then a fresh repository without commits in its place.
        fs::rename(repo.join(".git"), root.join("saved-git")).expect("move .git away");
        let e = cache.open("proj").await.expect_err("not a repository");
        assert!(matches!(e, WorkspaceError::NotARepo { .. }), "{e}");
        git(&repo, &["init", "-q", "-b", "main"]);
        let e = cache.open("proj").await.expect_err("no commits");
        assert!(matches!(e, WorkspaceError::NoCommits { .. }), "{e}");
    }

    /// A base ref that named a commit is not looked up again while the refs are unchanged; a new
    /// or deleted branch makes it look again, and a ref that names nothing is never remembered.
    #[tokio::test]
    async fn base_refs_are_looked_up_once_while_the_refs_are_unchanged() {
        let (_tmp, root) = root_with_repo();
        let repo = root.join("proj");
        let cache = WorkspaceCache::new(&root);
        let ws = cache.open("proj").await.expect("open");
        for _ in 0..3 {
            cache
                .check_base_ref(&ws, "base_ref", "main")
                .await
                .expect("main is a commit");
        }
        assert_eq!(cache.ref_lookups(), 1, "one git process for three checks");
        for _ in 0..2 {
            assert_field(
                cache.check_base_ref(&ws, "base_ref", "nope").await,
                "base_ref",
            );
        }
        assert_eq!(
            cache.ref_lookups(),
            3,
            "a missing ref is looked up every time"
        );

        git(&repo, &["branch", "feature"]);
        cache
            .check_base_ref(&ws, "base_ref", "feature")
            .await
            .expect("the new branch is found");
        cache
            .check_base_ref(&ws, "base_ref", "main")
            .await
            .expect("main again");
        assert_eq!(cache.ref_lookups(), 5, "refs changed: main looked up again");
        git(&repo, &["branch", "-q", "-D", "feature"]);
        assert_field(
            cache.check_base_ref(&ws, "base_ref", "feature").await,
            "base_ref",
        );
    }

    /// Requests that arrive together for a repository not yet verified share one verification
    /// (one set of git processes), and a name that is no repository is remembered as such.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_opens_verifies_once() {
        let (_tmp, root) = root_with_repo();
        fs::create_dir(root.join("plain")).expect("plain dir");
        let cache = Arc::new(WorkspaceCache::new(&root));
        let opens: Vec<_> = (0..32)
            .map(|i| {
                let cache = cache.clone();
                let name = if i % 2 == 0 { "proj" } else { "plain" };
                tokio::spawn(async move { (name, cache.open(name).await) })
            })
            .collect();
        for open in opens {
            let (name, opened) = open.await.expect("join");
            match name {
                "proj" => {
                    opened.expect("a repository");
                }
                _ => assert!(
                    matches!(opened, Err(WorkspaceError::NotARepo { .. })),
                    "{opened:?}"
                ),
            }
        }
        assert_eq!(
            cache.misses(),
            2,
            "one verification per name, not per request"
        );
        assert!(
            cache.flights.lock().expect("flights").is_empty(),
            "no flight left in the air"
        );
    }

    /// Confinement is checked on every open, cached or not: a symlink retargeted outside the
    /// root after a successful open is refused.
    #[tokio::test]
    async fn the_cache_never_skips_the_confinement_checks() {
        let (tmp, root) = root_with_repo();
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&outside).expect("mkdir");
        git(&outside, &["init", "-q", "-b", "main"]);
        fs::write(outside.join("f"), "x\n").expect("write");
        git(&outside, &["add", "-A"]);
        git(&outside, &["commit", "-q", "-m", "outside"]);
        let link = root.join("link");
        symlink(root.join("proj"), &link).expect("symlink");
        let cache = WorkspaceCache::new(&root);
        cache
            .open("link")
            .await
            .expect("a symlink to a repository inside the root");
        fs::remove_file(&link).expect("rm link");
        symlink(&outside, &link).expect("symlink out");
        let e = cache.open("link").await.expect_err("escapes");
        assert!(matches!(e, WorkspaceError::EscapesRoot { .. }), "{e}");
    }

    #[tokio::test]
    async fn open_checked_accepts_a_good_request() {
        let (_tmp, root) = root_with_repo();
        let ws = open_checked(
            &WorkspaceCache::new(&root),
            "proj",
            &files(&["README.md", "src/new.rs", "./docs/a.md"]),
        )
        .await
        .expect("valid");
        assert_eq!(ws.name(), "proj");
        assert_eq!(
            ws.path(),
            fs::canonicalize(root.join("proj")).expect("canon")
        );
        open_checked(&WorkspaceCache::new(&root), "proj", &[])
            .await
            .expect("no files is fine");
    }

    #[tokio::test]
    async fn open_checked_names_the_workspace_field() {
        let (tmp, root) = root_with_repo();
        fs::create_dir_all(root.join("plain")).expect("mkdir");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&outside).expect("mkdir");
        symlink(&outside, root.join("escape")).expect("symlink");
        for (name, expect) in [
            ("", "must name a git repository"),
            ("/etc", "absolute"),
            ("../root/proj", "outside the workspace root"),
            ("escape", "outside the workspace root"),
            ("missing", "does not exist"),
            ("plain", "not the top level of a git repository"),
            ("proj/src", "not the top level of a git repository"),
        ] {
            let m = assert_field(
                open_checked(&WorkspaceCache::new(&root), name, &[]).await,
                "workspace",
            );
            assert!(m.contains(expect), "{name:?}: {m}");
        }
        // A missing root is the server's problem, not the caller's.
        let s = open_checked(&WorkspaceCache::new(root.join("nope")), "proj", &[])
            .await
            .expect_err("root missing");
        assert_eq!(s.code(), Code::Internal, "{s:?}");
        assert!(s.message().starts_with("workspace: "), "{}", s.message());
    }

    #[tokio::test]
    async fn open_checked_names_the_offending_file() {
        let (tmp, root) = root_with_repo();
        let repo = root.join("proj");
        fs::write(tmp.path().join("secret"), "s").expect("write");
        symlink(tmp.path().join("secret"), repo.join("secret")).expect("symlink");
        symlink(repo.join(".git/config"), repo.join("cfg")).expect("symlink");
        fs::write(repo.join(".aider.conf.yml"), "auto-test: true\n").expect("write");
        symlink(repo.join(".aider.conf.yml"), repo.join("conf")).expect("symlink");

        for (bad, expect) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../x", "`..`"),
            (".git/config", ".git"),
            ("cfg", ".git"),
            ("secret", "outside the workspace"),
            ("src", "directory"),
            ("README.md/x", "not a directory"),
            (".aider.conf.yml", ".aider*"),
            (".aiderignore", ".aider*"),
            ("sub/.aider.chat.history.md", ".aider*"),
            (".aider.tags.cache.v4/cache.db", ".aider*"),
            ("conf", ".aider*"),
            ("-rf", "starts with '-'"),
            ("--openai-api-base=http://elsewhere/v1", "starts with '-'"),
            ("--test-cmd=touch X", "starts with '-'"),
        ] {
            let list = files(&["README.md", bad]);
            let m = assert_field(
                open_checked(&WorkspaceCache::new(&root), "proj", &list).await,
                "files[1]",
            );
            assert!(m.contains(expect), "{bad:?}: {m}");
        }
    }

    #[tokio::test]
    async fn open_checked_refuses_duplicates_and_too_many_files() {
        let (_tmp, root) = root_with_repo();
        for list in [
            ["README.md", "src/main.rs", "README.md"],
            ["README.md", "src/main.rs", "./src/main.rs"],
            ["README.md", "src/main.rs", "src//main.rs"],
        ] {
            let m = assert_field(
                open_checked(&WorkspaceCache::new(&root), "proj", &files(&list)).await,
                "files[2]",
            );
            assert!(m.contains("listed twice"), "{m}");
        }
        let many: Vec<String> = (0..=MAX_FILES).map(|i| format!("f{i}.txt")).collect();
        let m = assert_field(
            open_checked(&WorkspaceCache::new(&root), "proj", &many).await,
            "files",
        );
        assert!(m.contains(&MAX_FILES.to_string()), "{m}");
        let max: Vec<String> = many[..MAX_FILES].to_vec();
        open_checked(&WorkspaceCache::new(&root), "proj", &max)
            .await
            .expect("at the limit");
    }
}
