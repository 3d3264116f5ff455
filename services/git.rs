//! Running `git`: one careful runner shared by the workspace checks ([`crate::workspace`], used by
//! the manager and the programmer) and the programmer's task worktrees
//! ([`crate::programmer::worktree`]).
//!
//! # How git is run
//!
//! `git` from `PATH` via argument vectors (never a shell), stdin closed, `GIT_TERMINAL_PROMPT=0`,
//! `LC_ALL=C` (stable messages), inherited `GIT_DIR`-style variables removed, and
//! `core.hooksPath=/dev/null`: our git operations are mechanical bookkeeping, and repository hooks
//! (arbitrary scripts) must not run ten times concurrently or block a task; review happens when a
//! task branch is merged. Every command runs with `GIT_OPTIONAL_LOCKS=0`, so read-only commands
//! never take the index lock opportunistically, and `gc.auto=0`, so no command starts a background
//! gc that would lock shared files. Async commands are *not* killed when their future is dropped:
//! killing git in the middle of a ref update is what leaves stale lock files behind.
//! aider's own git commands (its auto-commits) get the same configuration through the
//! environment ([`config_env`]).
//!
//! # Durable commits
//!
//! By default git syncs packs but neither loose objects nor refs, so after a power loss a branch
//! can be gone, or name a commit whose objects are. A [`Git`] made [`synced`](Git::synced) (and
//! aider's commits under [`config_env`]`(true)`) runs with git's own hardening,
//! `core.fsync=committed,derived-metadata` and `core.fsyncMethod=fsync`: each object and ref
//! file is synced before git reports success. The programmer asks for it with
//! `durability: power_loss`, so a result it reported names a branch that survives.
//!
//! # Lock contention
//!
//! Every command that fails with git's "Unable to create '….lock': File exists" is retried a
//! bounded number of times with jittered backoff (lock acquisition is the first step of a git
//! write, so a retry is safe). `git worktree add`/`remove` are additionally serialised per
//! repository across processes by [`WorktreeLock`], an `flock(2)` on [`WORKTREE_LOCK_FILE`]: without
//! it a concurrent `worktree add` reads another's half-written `.git/worktrees/<id>/` and dies with
//! "failed to read …/commondir" (measured with ten parallel adds on git 2.47). `flock` is released by
//! the kernel when a process dies, so unlike git's own `.lock` files it can never go stale. Those
//! a git killed mid-write leaves (a programmer's container killed during a fetch) are found by
//! their age and removed where only such a git can have left them ([`DeadLocks`]).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use rand::Rng;
use thiserror::Error;

/// Attempts of one git command that keeps failing on a held lock file.
const LOCK_ATTEMPTS: u32 = 8;

/// File in a repository's common git dir that serialises worktree add/remove across processes
/// (every programmer process takes it, see [`WorktreeLock`]).
pub const WORKTREE_LOCK_FILE: &str = "pas-worktrees.flock";

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

// ===== running git =====

/// One git invocation: built once, run (and re-run on lock contention) async or blocking.
#[derive(Debug, Clone)]
pub(crate) struct Git {
    dir: PathBuf,
    args: Vec<OsString>,
    env: Vec<(&'static str, String)>,
    synced: bool,
}

/// The configuration every git process we start runs with (see the module docs).
const PINNED_CONFIG: [(&str, &str); 6] = [
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("commit.gpgSign", "false"),
    ("core.quotePath", "false"),
];

/// Added to [`PINNED_CONFIG`] when what git writes must survive a power loss.
const SYNCED_CONFIG: [(&str, &str); 2] = [
    ("core.fsync", "committed,derived-metadata"),
    ("core.fsyncMethod", "fsync"),
];

/// The configuration a git process runs with: [`PINNED_CONFIG`], and [`SYNCED_CONFIG`] when
/// `synced`.
fn config(synced: bool) -> impl Iterator<Item = (&'static str, &'static str)> {
    let extra: &[(&str, &str)] = if synced { &SYNCED_CONFIG } else { &[] };
    PINNED_CONFIG.into_iter().chain(extra.iter().copied())
}

/// The same configuration as environment variables (`GIT_CONFIG_COUNT`, `GIT_CONFIG_KEY_<n>`,
/// `GIT_CONFIG_VALUE_<n>`; git gives them the precedence of `-c`), for git processes we do not
/// start ourselves: aider's, which commit its edits.
pub fn config_env(synced: bool) -> Vec<(String, String)> {
    let pairs: Vec<_> = config(synced).collect();
    let mut env = vec![("GIT_CONFIG_COUNT".to_string(), pairs.len().to_string())];
    for (n, (key, value)) in pairs.into_iter().enumerate() {
        env.push((format!("GIT_CONFIG_KEY_{n}"), key.to_string()));
        env.push((format!("GIT_CONFIG_VALUE_{n}"), value.to_string()));
    }
    env
}

impl Git {
    /// `git -C dir …`.
    pub(crate) fn new(dir: &Path) -> Self {
        Git {
            dir: dir.to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            synced: false,
        }
    }

    /// When `synced`, git syncs every object and ref it writes before it exits (see "Durable
    /// commits" in the module docs).
    pub(crate) fn synced(mut self, synced: bool) -> Self {
        self.synced = synced;
        self
    }

    pub(crate) fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    pub(crate) fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Extra environment variables, e.g. the `GIT_AUTHOR_*` of a commit identity.
    pub(crate) fn envs<'a, I>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (&'static str, &'a str)>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k, v.to_string())));
        self
    }

    /// The command line for messages, e.g. `git update-ref -d refs/heads/x`.
    pub(crate) fn display(&self) -> String {
        let mut s = String::from("git");
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    fn std_command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new("git");
        for (key, value) in config(self.synced) {
            cmd.arg("-c").arg(format!("{key}={value}"));
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

    /// The error for a finished command whose exit status the caller did not accept.
    pub(crate) fn failed(&self, out: &Output) -> GitError {
        GitError::Failed {
            command: self.display(),
            dir: self.dir.clone(),
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
    }

    /// Run to completion, retrying while git reports a held lock file. Any exit status is
    /// returned; only a failure to spawn is an error.
    pub(crate) async fn output(&self) -> Result<Output, GitError> {
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

    /// Blocking twin of [`output`](Self::output), for the blocking pool and `Drop`.
    pub(crate) fn output_blocking(&self) -> Result<Output, GitError> {
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

    /// [`output_blocking`](Self::output_blocking), run once more when it still failed on a held
    /// lock file and `clear_dead_lock` took a dead git's away (returned true): the one place a
    /// command gets past a lock its retries could not wait out.
    pub(crate) fn output_blocking_past_dead_lock(
        &self,
        clear_dead_lock: impl FnOnce() -> bool,
    ) -> Result<Output, GitError> {
        let out = self.output_blocking()?;
        if out.status.success() || !is_lock_contention(&out.stderr) || !clear_dead_lock() {
            return Ok(out);
        }
        self.output_blocking()
    }

    /// Run; a non-zero exit is an error. Returns stdout.
    pub(crate) async fn run(&self) -> Result<String, GitError> {
        let out = self.output().await?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(self.failed(&out))
        }
    }

    /// Blocking [`run`](Self::run) that discards stdout.
    pub(crate) fn run_blocking(&self) -> Result<(), GitError> {
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

/// Held while adding or removing a worktree of one repository (and, on a file next to a
/// programmer's mirror, while fetching it: `programmer::mirror`); unlocks on drop (or when the
/// process dies).
#[derive(Debug)]
pub(crate) struct WorktreeLock {
    _flock: Flock<fs::File>,
}

impl WorktreeLock {
    /// Block until the exclusive `flock` on `path` (the repository's [`WORKTREE_LOCK_FILE`],
    /// created if missing) is ours. Call it on the blocking pool.
    pub(crate) fn acquire_blocking(path: &Path) -> io::Result<WorktreeLock> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        let flock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| io::Error::from(errno))?;
        Ok(WorktreeLock { _flock: flock })
    }
}

/// How old a ref's lock file must be before [`DeadLocks`] takes it for a dead git's: git holds
/// one for the milliseconds of a ref update, so one a minute old is from a git killed
/// mid-write, which git itself never removes, and on which every later write of its ref fails.
pub(crate) const STALE_LOCK_AGE: Duration = Duration::from_secs(60);

/// [`STALE_LOCK_AGE`] for `packed-refs.lock`, which every branch deletion in the repository also
/// takes (outside any lock of ours): ten times as long, so even a git paused for a while (a
/// frozen container) keeps it.
pub(crate) const STALE_PACKED_REFS_LOCK_AGE: Duration = Duration::from_secs(600);

/// The git lock files (`*.lock`) of one repository that only a dead git can hold: those under
/// some ref directories (e.g. `refs/tags`) at least [`STALE_LOCK_AGE`] old, and
/// `packed-refs.lock` at least [`STALE_PACKED_REFS_LOCK_AGE`] old. The age, not a lock of ours,
/// tells a dead git's lock from a live one: a git started by a programmer that was killed (an
/// orphan still fetching) holds no lock of ours. Problems reading the directories are logged and
/// skipped: at worst a lock stays, and git reports it.
pub(crate) struct DeadLocks<'a> {
    /// The repository's git directory.
    pub git_dir: &'a Path,
    /// Ref directories whose locks are looked at, relative to `git_dir`.
    pub ref_dirs: &'a [&'a str],
}

impl DeadLocks<'_> {
    /// Every lock file looked at, with the age it must reach and its age now.
    fn found(&self) -> Vec<(PathBuf, Duration, Duration)> {
        fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
            let entries = match fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), "cannot look for stale git locks: {e}");
                    return;
                }
            };
            for entry in entries.flatten() {
                let path = entry.path();
                match entry.file_type() {
                    Ok(kind) if kind.is_dir() => walk(&path, found),
                    Ok(kind) if kind.is_file() && path.extension().is_some_and(|e| e == "lock") => {
                        found.push(path)
                    }
                    _ => {}
                }
            }
        }
        let mut refs = Vec::new();
        for dir in self.ref_dirs {
            walk(&self.git_dir.join(dir), &mut refs);
        }
        let packed = self.git_dir.join("packed-refs.lock");
        refs.into_iter()
            .map(|p| (p, STALE_LOCK_AGE))
            .chain(std::iter::once((packed, STALE_PACKED_REFS_LOCK_AGE)))
            .filter_map(|(path, stale)| {
                let age = lock_age(&path)?;
                Some((path, stale, age))
            })
            .collect()
    }

    /// Removes the locks old enough to be a dead git's; returns them (each is logged).
    pub(crate) fn remove(&self) -> Vec<PathBuf> {
        self.found()
            .into_iter()
            .filter(|(path, stale, age)| age >= stale && remove_dead_lock(path))
            .map(|(path, _, _)| path)
            .collect()
    }

    /// Blocks until every ref lock looked at is [`STALE_LOCK_AGE`] old (at most that long; a
    /// live git removes its own long before), then [`remove`](Self::remove)s the dead ones.
    /// For a git that just failed on a lock a git killed moments ago left. Returns what was
    /// removed.
    pub(crate) fn wait_out_and_remove(&self) -> Vec<PathBuf> {
        let wait = self
            .found()
            .into_iter()
            .filter(|(_, stale, _)| *stale == STALE_LOCK_AGE)
            .map(|(_, stale, age)| stale.saturating_sub(age))
            .max()
            .unwrap_or_default();
        if !wait.is_zero() {
            tracing::info!(git_dir = %self.git_dir.display(), wait_s = wait.as_secs(), "waiting for the ref locks a killed git may have left to age");
            std::thread::sleep(wait);
        }
        self.remove()
    }
}

/// For a git that failed on one ref's lock past its retries: waits until the lock file at `path`
/// is [`STALE_LOCK_AGE`] old (at most that long; a live git removes its own long before), then
/// removes it if it is still there, as a dead git's (see [`DeadLocks`]). Returns whether it did.
pub(crate) fn wait_out_dead_lock(path: &Path) -> bool {
    let Some(now) = lock_age(path) else {
        return false;
    };
    std::thread::sleep(STALE_LOCK_AGE.saturating_sub(now));
    lock_age(path).is_some_and(|age| age >= STALE_LOCK_AGE) && remove_dead_lock(path)
}

/// How long ago the lock file at `path` was written; `None` when there is none.
fn lock_age(path: &Path) -> Option<Duration> {
    let modified = fs::symlink_metadata(path).and_then(|m| m.modified()).ok()?;
    Some(modified.elapsed().unwrap_or_default())
}

/// Removes the lock file at `path`, known to be a dead git's; logs it, or why it could not.
/// Returns whether it removed one.
pub(crate) fn remove_dead_lock(path: &Path) -> bool {
    match fs::remove_file(path) {
        Ok(()) => {
            tracing::warn!(lock = %path.display(), "removed a lock file a killed git left");
            true
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => {
            tracing::warn!(lock = %path.display(), "cannot remove a stale git lock: {e}");
            false
        }
    }
}

/// Run `work` on tokio's blocking pool. Used for every step that must not be cut in half by a
/// cancelled future: the closure runs to completion even if the caller stops waiting, and
/// whatever it returns (e.g. a task worktree) is then dropped — and cleaned up — there.
///
/// The error is the closure's panic (or its cancellation by a runtime shutting down before it
/// started), as an [`io::Error`].
pub(crate) async fn unstoppable<T, F>(work: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|join| io::Error::other(join.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_contention_is_recognised() {
        let msg = b"fatal: update_ref failed for ref 'refs/heads/pas/b': cannot lock ref \
            'refs/heads/pas/b': Unable to create '/r/.git/refs/heads/pas/b.lock': File exists.";
        assert!(is_lock_contention(msg));
        assert!(!is_lock_contention(b"fatal: reference already exists"));
    }

    #[test]
    fn lock_backoff_grows_and_is_bounded() {
        for attempt in 1..20 {
            let base = 20u64 << (attempt - 1).min(5);
            let base = base.min(500);
            let d = lock_backoff(attempt).as_millis() as u64;
            assert!(
                (base..=base + base / 2).contains(&d),
                "attempt {attempt}: {d} ms"
            );
        }
    }

    #[tokio::test]
    async fn runs_git_and_reports_failures_with_command_and_stderr() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let out = Git::new(tmp.path())
            .args(["rev-parse", "--is-inside-work-tree"])
            .output()
            .await
            .expect("git runs (is git installed?)");
        assert!(!out.status.success(), "a bare temp dir is not a work tree");
        let err = Git::new(tmp.path())
            .args(["rev-parse", "--is-inside-work-tree"])
            .run()
            .await
            .expect_err("must fail outside a repository");
        let text = err.to_string();
        assert!(
            text.contains("git rev-parse --is-inside-work-tree"),
            "{text}"
        );
        assert!(text.contains("not a git repository"), "{text}");
    }

    #[tokio::test]
    async fn environment_is_passed_and_git_dir_is_not_inherited() {
        let tmp = tempfile::tempdir().expect("tempdir");
        Git::new(tmp.path())
            .args(["init", "-q"])
            .run()
            .await
            .expect("init");
        let ident = Git::new(tmp.path())
            .args(["var", "GIT_AUTHOR_IDENT"])
            .envs([
                ("GIT_AUTHOR_NAME", "Tess"),
                ("GIT_AUTHOR_EMAIL", "t@x.test"),
            ])
            .run()
            .await
            .expect("git var");
        assert!(ident.starts_with("Tess <t@x.test>"), "{ident}");
    }

    #[test]
    fn the_worktree_lock_excludes_a_second_holder_until_dropped() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join(WORKTREE_LOCK_FILE);
        let held = WorktreeLock::acquire_blocking(&path).expect("first");
        let other = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        let other = match Flock::lock(other, FlockArg::LockExclusiveNonblock) {
            Ok(_) => panic!("a second exclusive lock must not be granted while held"),
            Err((file, _)) => file,
        };
        drop(held);
        Flock::lock(other, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| e)
            .expect("free after drop");
    }

    #[tokio::test]
    async fn unstoppable_runs_to_completion_when_the_caller_goes_away() {
        let (tx, rx) = std::sync::mpsc::channel();
        let fut = unstoppable(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send("done").expect("send");
        });
        // Poll once so the closure is handed to the blocking pool, then drop the future.
        let _ = tokio::time::timeout(Duration::from_millis(1), fut).await;
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).expect("finished"),
            "done"
        );
    }
}
