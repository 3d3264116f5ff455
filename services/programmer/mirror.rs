//! Remote workspaces: a task names a repository URL (`repo_url`) instead of a local workspace.
//!
//! Each programmer host keeps one bare mirror per URL under `repositories.mirror_dir` (directory
//! named by a hash of the URL). For every task, [`Mirrors::fetch`] brings the mirror up to date
//! and resolves the task's base commit, both under a per-mirror `flock` (one fetch at a time per
//! repository on this host; concurrent tasks of one URL share the mirror). The task's worktree is
//! then made from the mirror exactly like from a local workspace
//! ([`crate::programmer::worktree`]); on success [`Remote::push_create_only`] pushes
//! `refs/heads/pas/<task>` to the remote, *create-only*: the push carries "expected old value:
//! absent" (`--force-with-lease=<ref>:`), which the receiving git checks under its ref lock, so of
//! two attempts of one task exactly one ever lands, and an existing branch is never moved (a plain
//! push would fast-forward it).
//!
//! # Layout of a mirror
//!
//! - `refs/remotes/origin/*`: the remote's branches as of the last fetch (pruned), and
//!   `refs/remotes/origin/HEAD` (the remote's HEAD, fetched when a task asks for it).
//!   [`MIRROR_REMOTE_REFS`]`pas/<task>` existing means the task's result is already on the remote.
//! - `refs/tags/*`: the remote's tags.
//! - `refs/heads/pas-work/*`: this host's scratch branches (never fetched over, never pushed).
//!
//! # Credentials and safety
//!
//! Credentials come from the programmer's configuration and environment only: an ssh key
//! (`GIT_SSH_COMMAND`, the key path quoted) and an https token (an `http.extraHeader` given to git
//! through `GIT_CONFIG_*` environment variables, never on a command line where `ps` shows it).
//! Every remote command runs with `GIT_ALLOW_PROTOCOL=ssh:https:git:file` (no `ext::` transport
//! that runs a command), the URL after `--end-of-options`, hooks off (see [`crate::git`]), and in
//! a mirror whose configuration is ours (`git init --bare`): nothing the remote serves is ever
//! executed.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::config::RepoSettings;
use crate::git::{DeadLocks, Git, GitError, WorktreeLock, unstoppable};
use crate::repo_url::{ALLOWED_PROTOCOLS, AllowList, RepoUrl};
use crate::workspace::{MIRROR_REMOTE_REFS, Workspace, ref_problem};

/// Failure to bring a mirror up to date or to find the task's base commit in it.
#[derive(Debug, Error)]
pub enum MirrorError {
    /// Creating or locking the mirror directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// `git init` or `git fetch` failed (unreachable remote, refused, not a repository, …).
    #[error("cannot fetch {url}: {source}")]
    Fetch {
        /// The URL (no credentials).
        url: String,
        /// What git said.
        source: GitError,
    },
    /// The base ref is not a branch, tag or commit of the remote.
    #[error("base ref {reference:?} names no branch, tag or commit of {url}")]
    UnknownRef {
        /// The ref as given (`HEAD` for the default).
        reference: String,
        /// The URL.
        url: String,
    },
    /// A base ref the programmer refuses to pass to git.
    #[error("invalid base ref {reference:?}: {reason}")]
    InvalidRef {
        /// The ref as given.
        reference: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// What a create-only ref write found (a push to a remote, or a local `update-ref`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// The ref was created at our commit.
    Created,
    /// The ref exists on the remote (another attempt kept its result); its commit when readable.
    Exists(Option<String>),
}

/// A remote repository with the credentials this programmer uses for it. `Debug` shows the URL
/// only: the environment may hold a token.
#[derive(Clone)]
pub struct Remote {
    url: RepoUrl,
    env: Vec<(&'static str, String)>,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl Remote {
    /// The URL (no credentials).
    pub fn url(&self) -> &RepoUrl {
        &self.url
    }

    /// `git -C dir …` with this remote's credentials and the transport restriction.
    fn git(&self, dir: &Path) -> Git {
        Git::new(dir).envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
    }

    /// Push `commit` (present in the repository at `repo`) to `refname` on the remote only if
    /// the remote has no such ref. Blocking (run it on the blocking pool). A rejected push is
    /// [`Kept::Exists`] when the ref is then found on the remote; any other failure is an
    /// error.
    pub fn push_create_only(
        &self,
        repo: &Path,
        commit: &str,
        refname: &str,
    ) -> Result<Kept, GitError> {
        let push = self
            .git(repo)
            .args(["push", "--porcelain", "--no-verify"])
            .arg(format!("--force-with-lease={refname}:"))
            .arg("--end-of-options")
            .arg(self.url.as_str())
            .arg(format!("{commit}:{refname}"));
        let out = push.output_blocking()?;
        if out.status.success() {
            return Ok(Kept::Created);
        }
        // Rejected (the lease saw the ref, or the server's ref lock did) or failed: git decides
        // which by what the remote has now.
        match self.remote_commit(repo, refname) {
            Ok(Some(existing)) if existing == commit => Ok(Kept::Created),
            Ok(Some(existing)) => Ok(Kept::Exists(Some(existing))),
            _ => Err(push.failed(&out)),
        }
    }

    /// The commit `refname` names on the remote (`git ls-remote`), `None` when absent. Blocking.
    fn remote_commit(&self, repo: &Path, refname: &str) -> Result<Option<String>, GitError> {
        let out = self
            .git(repo)
            .args(["ls-remote", "--end-of-options"])
            .arg(self.url.as_str())
            .arg(refname)
            .output_blocking()?;
        if !out.status.success() {
            return Ok(None);
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.split_once('\t').filter(|(_, r)| *r == refname))
            .map(|(commit, _)| commit.to_string()))
    }
}

/// The programmer's mirrors and its `repositories:` settings.
#[derive(Debug)]
pub struct Mirrors {
    dir: PathBuf,
    allow: AllowList,
    push: bool,
    ssh_key_file: Option<PathBuf>,
    https_token_env: Option<String>,
}

impl Mirrors {
    /// From the resolved `repositories:` section; `None` without it (no `repo_url` accepted).
    pub fn new(settings: Option<RepoSettings>) -> Option<Mirrors> {
        let s = settings?;
        Some(Mirrors {
            dir: s.mirror_dir,
            allow: s.allow,
            push: s.push,
            ssh_key_file: s.ssh_key_file,
            https_token_env: s.https_token_env,
        })
    }

    /// Which URLs tasks may name.
    pub fn allow(&self) -> &AllowList {
        &self.allow
    }

    /// Whether results are pushed to the remote.
    pub fn push(&self) -> bool {
        self.push
    }

    /// `url` with this programmer's credentials for it (the token is read from the environment
    /// now, so a rotated secret is used by the next task).
    pub fn remote(&self, url: &RepoUrl) -> Remote {
        let mut env: Vec<(&'static str, String)> =
            vec![("GIT_ALLOW_PROTOCOL", ALLOWED_PROTOCOLS.to_string())];
        if url.is_ssh() {
            env.push(("GIT_SSH_COMMAND", ssh_command(self.ssh_key_file.as_deref())));
        }
        if url.is_https() {
            // A stalled server fails the transfer instead of holding the mirror's lock forever.
            let mut config = vec![
                ("http.lowSpeedLimit", "1000".to_string()),
                ("http.lowSpeedTime", "60".to_string()),
            ];
            let token = self
                .https_token_env
                .as_deref()
                .and_then(|var| std::env::var(var).ok())
                .filter(|t| !t.is_empty());
            if let Some(token) = token {
                let basic = base64::engine::general_purpose::STANDARD
                    .encode(format!("x-access-token:{token}"));
                config.push(("http.extraHeader", format!("Authorization: Basic {basic}")));
            }
            const KEYS: [&str; 3] = ["GIT_CONFIG_KEY_0", "GIT_CONFIG_KEY_1", "GIT_CONFIG_KEY_2"];
            const VALUES: [&str; 3] = [
                "GIT_CONFIG_VALUE_0",
                "GIT_CONFIG_VALUE_1",
                "GIT_CONFIG_VALUE_2",
            ];
            env.push(("GIT_CONFIG_COUNT", config.len().to_string()));
            for (i, (key, value)) in config.into_iter().enumerate() {
                env.push((KEYS[i], key.to_string()));
                env.push((VALUES[i], value));
            }
        }
        Remote {
            url: url.clone(),
            env,
        }
    }

    /// The mirror directory of `url`: `<mirror_dir>/<first 24 hex digits of sha256(url)>.git`.
    pub fn mirror_path(&self, url: &RepoUrl) -> PathBuf {
        let digest = Sha256::digest(url.as_str().as_bytes());
        let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{hex}.git"))
    }

    /// Create the mirror of `remote` if needed, fetch it, and resolve `base_ref` (default: the
    /// remote's HEAD) to a commit, all under the mirror's lock. Returns the mirror as a
    /// [`Workspace`] and the base commit. Runs to completion even if the caller goes away (a
    /// fetch is never cut in half).
    pub async fn fetch(
        &self,
        remote: &Remote,
        base_ref: Option<&str>,
    ) -> Result<(Workspace, String), MirrorError> {
        if let Some(reason) = base_ref.and_then(ref_problem) {
            return Err(MirrorError::InvalidRef {
                reference: base_ref.unwrap_or_default().to_string(),
                reason,
            });
        }
        let path = self.mirror_path(remote.url());
        let dir = self.dir.clone();
        let remote = remote.clone();
        let base_ref = base_ref.map(str::to_string);
        let io_path = path.clone();
        unstoppable(move || fetch_blocking(&dir, &path, &remote, base_ref.as_deref()))
            .await
            .map_err(|source| MirrorError::Io {
                path: io_path,
                source,
            })?
    }
}

/// `ssh [-i '<key>' -o IdentitiesOnly=yes] -o BatchMode=yes -o ConnectTimeout=30 -o
/// ServerAliveInterval=15 -o ServerAliveCountMax=4`: never a prompt, and a dead server fails the
/// transfer within about a minute instead of holding the mirror's lock. Git runs
/// `GIT_SSH_COMMAND` through a shell, so the key path is single-quoted (any `'` escaped), never
/// spliced in raw.
fn ssh_command(key: Option<&Path>) -> String {
    let identity = key.map_or_else(String::new, |key| {
        let quoted = key.to_string_lossy().replace('\'', r"'\''");
        format!(" -i '{quoted}' -o IdentitiesOnly=yes")
    });
    format!(
        "ssh{identity} -o BatchMode=yes -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4"
    )
}

fn fetch_blocking(
    dir: &Path,
    path: &Path,
    remote: &Remote,
    base_ref: Option<&str>,
) -> Result<(Workspace, String), MirrorError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MirrorError::Io { path, source }
    };
    let url = remote.url().as_str().to_string();
    let fetch_err = |source| MirrorError::Fetch {
        url: url.clone(),
        source,
    };
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let lock_file = path.with_extension("flock");
    let _lock = WorktreeLock::acquire_blocking(&lock_file).map_err(io_err(&lock_file))?;
    if !path.join("HEAD").exists() {
        Git::new(dir)
            .args(["init", "--bare", "--quiet", "--"])
            .arg(path)
            .run_blocking()
            .map_err(fetch_err)?;
    }
    let path = fs::canonicalize(path).map_err(io_err(path))?;
    // A programmer killed during a fetch (its container OOM-killed) leaves the locks its git
    // held on the refs it was updating, and every later fetch of this URL would fail on them.
    let remote_refs = MIRROR_REMOTE_REFS.trim_end_matches('/');
    let dead_locks = DeadLocks {
        git_dir: &path,
        ref_dirs: &[remote_refs, "refs/tags"],
    };
    dead_locks.remove();
    let mut refspecs = vec![
        format!("+refs/heads/*:{MIRROR_REMOTE_REFS}*"),
        "+refs/tags/*:refs/tags/*".to_string(),
    ];
    if base_ref.is_none() {
        refspecs.push(format!("+HEAD:{MIRROR_REMOTE_REFS}HEAD"));
    }
    let fetch = remote
        .git(&path)
        .args([
            "fetch",
            "--quiet",
            "--prune",
            "--no-tags",
            "--no-write-fetch-head",
        ])
        .arg("--end-of-options")
        .arg(remote.url().as_str())
        .args(&refspecs);
    // Still held past the retries: a lock a git killed moments ago left (this programmer's own
    // fetch before its container restarted), too young to be taken for dead above. It is once
    // it is a minute old; then fetch again.
    let out = fetch
        .output_blocking_past_dead_lock(|| !dead_locks.wait_out_and_remove().is_empty())
        .map_err(fetch_err)?;
    if !out.status.success() {
        return Err(fetch_err(fetch.failed(&out)));
    }
    let commit = resolve_base_blocking(&path, base_ref)
        .map_err(fetch_err)?
        .ok_or_else(|| MirrorError::UnknownRef {
            reference: base_ref.unwrap_or("HEAD").to_string(),
            url: url.clone(),
        })?;
    Ok((Workspace::mirror(&url, path), commit))
}

/// The commit `base_ref` names in a freshly fetched mirror: the remote's HEAD by default; else the
/// remote branch of that name (`main` or `refs/heads/main`), a tag (`v1`, `refs/tags/v1`), or a
/// commit id the fetch brought.
fn resolve_base_blocking(
    mirror: &Path,
    base_ref: Option<&str>,
) -> Result<Option<String>, GitError> {
    let candidates: Vec<String> = match base_ref {
        None => vec![format!("{MIRROR_REMOTE_REFS}HEAD")],
        Some(r) => {
            let branch = r.strip_prefix("refs/heads/").unwrap_or(r);
            let tag = r.strip_prefix("refs/tags/").unwrap_or(r);
            let mut c = vec![
                format!("{MIRROR_REMOTE_REFS}{branch}"),
                format!("refs/tags/{tag}"),
            ];
            if (4..=64).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_hexdigit()) {
                c.push(r.to_string());
            }
            c
        }
    };
    for candidate in candidates {
        let git = Git::new(mirror)
            .args(["rev-parse", "--verify", "-q", "--end-of-options"])
            .arg(format!("{candidate}^{{commit}}"));
        let out = git.output_blocking()?;
        match out.status.code() {
            Some(0) => {
                return Ok(Some(
                    String::from_utf8_lossy(&out.stdout).trim().to_string(),
                ));
            }
            Some(1) => continue,
            _ => return Err(git.failed(&out)),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_command_quotes_the_key_path() {
        assert_eq!(
            ssh_command(Some(Path::new("/k/it's key"))),
            r"ssh -i '/k/it'\''s key' -o IdentitiesOnly=yes -o BatchMode=yes -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4"
        );
        assert!(ssh_command(None).starts_with("ssh -o BatchMode=yes"));
    }

    #[test]
    fn credentials_go_to_the_environment_of_matching_urls_only_and_never_to_debug() {
        // A variable name nobody sets: the token is absent.
        let var = "PAS_TEST_MIRROR_TOKEN_7f3a";
        let mirrors = Mirrors {
            dir: PathBuf::from("/m"),
            allow: AllowList::default(),
            push: true,
            ssh_key_file: Some(PathBuf::from("/keys/id")),
            https_token_env: Some(var.to_string()),
        };
        // The token is absent from the environment here: no header, no failure.
        let https = RepoUrl::parse("https://h/x.git").expect("url");
        let r = mirrors.remote(&https);
        assert!(!r.env.iter().any(|(_, v)| v.contains("Authorization")));
        assert!(r.env.contains(&("GIT_CONFIG_COUNT", "2".to_string())));
        assert!(!r.env.iter().any(|(k, _)| *k == "GIT_SSH_COMMAND"));
        let ssh = RepoUrl::parse("git@h:x.git").expect("url");
        let r = mirrors.remote(&ssh);
        assert!(
            r.env
                .iter()
                .any(|(k, v)| *k == "GIT_SSH_COMMAND" && v.contains("/keys/id"))
        );
        assert_eq!(format!("{r:?}"), "Remote { url: \"git@h:x.git\", .. }");
        assert_ne!(
            mirrors.mirror_path(&https),
            mirrors.mirror_path(&ssh),
            "one mirror per URL"
        );
    }

    /// A bare "server" repository with `main` (one commit) and a working clone of it.
    fn server() -> (tempfile::TempDir, PathBuf, PathBuf, RepoUrl) {
        use crate::workspace::testing::git;
        let tmp = tempfile::tempdir().expect("tempdir");
        let srv = tmp.path().join("srv.git");
        let work = tmp.path().join("work");
        fs::create_dir_all(&srv).expect("mkdir");
        git(&srv, &["init", "-q", "--bare", "-b", "main"]);
        fs::create_dir_all(&work).expect("mkdir");
        git(&work, &["init", "-q", "-b", "main"]);
        fs::write(work.join("a.txt"), "a\n").expect("write");
        git(&work, &["add", "a.txt"]);
        git(&work, &["commit", "-q", "-m", "a"]);
        let url = RepoUrl::parse(&format!("file://{}", srv.display())).expect("url");
        git(&work, &["push", "-q", url.as_str(), "main"]);
        (tmp, srv, work, url)
    }

    fn mirrors_in(dir: &Path) -> Mirrors {
        Mirrors {
            dir: dir.join("mirrors"),
            allow: AllowList::new(["file://*"]),
            push: true,
            ssh_key_file: None,
            https_token_env: None,
        }
    }

    fn rev(dir: &Path, r: &str) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["rev-parse", "--verify", "-q", r])
            .output()
            .expect("git");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    #[tokio::test]
    async fn fetch_resolves_the_remote_head_branches_and_refuses_unknown_refs() {
        let (tmp, srv, _work, url) = server();
        let mirrors = mirrors_in(tmp.path());
        let remote = mirrors.remote(&url);
        let main = rev(&srv, "refs/heads/main");
        let (ws, head) = mirrors.fetch(&remote, None).await.expect("fetch");
        assert_eq!(head, main);
        assert_eq!(
            ws.path(),
            fs::canonicalize(mirrors.mirror_path(&url)).expect("canon")
        );
        assert_eq!(ws.kept_ref("pas/x"), "refs/remotes/origin/pas/x");
        for r in ["main", "refs/heads/main", &main[..12]] {
            let (_, c) = mirrors.fetch(&remote, Some(r)).await.expect(r);
            assert_eq!(c, main, "{r}");
        }
        let e = mirrors
            .fetch(&remote, Some("nope"))
            .await
            .expect_err("unknown");
        assert!(matches!(e, MirrorError::UnknownRef { .. }), "{e}");
        let e = mirrors
            .fetch(&remote, Some("--upload-pack=x"))
            .await
            .expect_err("option");
        assert!(matches!(e, MirrorError::InvalidRef { .. }), "{e}");
        // Concurrent fetches of one URL share the mirror, one at a time.
        let (a, b) = tokio::join!(mirrors.fetch(&remote, None), mirrors.fetch(&remote, None));
        assert_eq!(a.expect("a").1, main);
        assert_eq!(b.expect("b").1, main);
    }

    #[tokio::test]
    async fn a_fetch_killed_mid_write_does_not_block_the_next_ones() {
        use crate::workspace::testing::git;
        let (tmp, _srv, work, url) = server();
        let mirrors = mirrors_in(tmp.path());
        let remote = mirrors.remote(&url);
        mirrors.fetch(&remote, None).await.expect("first fetch");
        // A fetch killed while it updated the remote's `main` and a tag, and pruned a branch,
        // left its locks (a minute ago; ten for packed-refs); a live git's lock (just taken) is
        // left alone.
        let mirror = mirrors.mirror_path(&url);
        let locks = [
            format!("{MIRROR_REMOTE_REFS}main.lock"),
            "refs/tags/v1.lock".to_string(),
            "packed-refs.lock".to_string(),
        ];
        for lock in &locks {
            let age = match lock.as_str() {
                "packed-refs.lock" => crate::git::STALE_PACKED_REFS_LOCK_AGE,
                _ => crate::git::STALE_LOCK_AGE,
            };
            aged_lock(&mirror.join(lock), age);
        }
        let live = mirror.join(format!("{MIRROR_REMOTE_REFS}live.lock"));
        fs::write(&live, "").expect("a live lock");
        commit_b(&work);
        git(&work, &["tag", "v1"]);
        git(&work, &["push", "-q", url.as_str(), "main", "v1"]);
        let (_, head) = mirrors
            .fetch(&remote, None)
            .await
            .expect("fetch past the locks");
        assert_eq!(head, rev(&work, "HEAD"));
        let (_, tagged) = mirrors.fetch(&remote, Some("v1")).await.expect("the tag");
        assert_eq!(tagged, head);
        for lock in &locks {
            assert!(!mirror.join(lock).exists(), "{lock}");
        }
        assert!(live.exists());
    }

    /// A second commit (`b.txt`) in the working clone `work`.
    fn commit_b(work: &Path) {
        use crate::workspace::testing::git;
        fs::write(work.join("b.txt"), "b\n").expect("write");
        git(work, &["add", "b.txt"]);
        git(work, &["commit", "-q", "-m", "b"]);
    }

    /// A lock file at `path`, last written `age` ago.
    fn aged_lock(path: &Path, age: std::time::Duration) {
        let file = fs::File::create(path).expect("a lock");
        file.set_modified(std::time::SystemTime::now() - age)
            .expect("its age");
    }

    #[tokio::test]
    async fn a_lock_a_fetch_killed_moments_ago_left_is_waited_out() {
        use crate::workspace::testing::git;
        let (tmp, _srv, work, url) = server();
        let mirrors = mirrors_in(tmp.path());
        let remote = mirrors.remote(&url);
        mirrors.fetch(&remote, None).await.expect("first fetch");
        // The programmer's own fetch died with its container moments before it restarted: the
        // lock is too young to be taken for dead at once.
        let lock = mirrors
            .mirror_path(&url)
            .join(format!("{MIRROR_REMOTE_REFS}main.lock"));
        aged_lock(
            &lock,
            crate::git::STALE_LOCK_AGE - std::time::Duration::from_secs(4),
        );
        commit_b(&work);
        git(&work, &["push", "-q", url.as_str(), "main"]);
        let (_, head) = mirrors
            .fetch(&remote, None)
            .await
            .expect("fetch once it aged");
        assert_eq!(head, rev(&work, "HEAD"));
        assert!(!lock.exists());
    }

    #[tokio::test]
    async fn push_is_create_only_even_where_a_plain_push_would_fast_forward() {
        use crate::workspace::testing::git;
        let (tmp, srv, work, url) = server();
        let remote = mirrors_in(tmp.path()).remote(&url);
        let a = rev(&work, "HEAD");
        git(
            &work,
            &["push", "-q", url.as_str(), "HEAD:refs/heads/pas/t"],
        );
        commit_b(&work);
        let b = rev(&work, "HEAD");
        // b is a descendant of a: a plain push would move pas/t. Create-only does not.
        let outcome = remote
            .push_create_only(&work, &b, "refs/heads/pas/t")
            .expect("push ran");
        assert_eq!(outcome, Kept::Exists(Some(a.clone())));
        assert_eq!(
            rev(&srv, "refs/heads/pas/t"),
            a,
            "the existing branch did not move"
        );
        // An absent ref is created.
        let outcome = remote
            .push_create_only(&work, &b, "refs/heads/pas/u")
            .expect("push ran");
        assert_eq!(outcome, Kept::Created);
        assert_eq!(rev(&srv, "refs/heads/pas/u"), b);
        // An unreachable remote is an error, not "exists".
        let gone = mirrors_in(tmp.path())
            .remote(&RepoUrl::parse("file:///nonexistent/pas-test.git").expect("url"));
        assert!(
            gone.push_create_only(&work, &b, "refs/heads/pas/v")
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_killed_programmers_worktree_of_a_mirror_is_swept() {
        use crate::programmer::worktree::{GitIdentity, sweep_abandoned};
        let (tmp, _srv, _work, url) = server();
        let mirrors = mirrors_in(tmp.path());
        let (ws, base) = mirrors
            .fetch(&mirrors.remote(&url), None)
            .await
            .expect("fetch");
        let identity = GitIdentity {
            name: "t".into(),
            email: "t@x.test".into(),
        };
        let worktrees = tmp.path().join("worktrees");
        let wt = ws
            .create_task_worktree(&worktrees, "t-1", "t-1", &base, &identity)
            .await
            .expect("worktree");
        // A killed programmer never runs Drop.
        std::mem::forget(wt);
        assert_eq!(rev(ws.path(), "refs/heads/pas-work/t-1"), base);
        assert_eq!(sweep_abandoned(&worktrees, &identity).await, 1);
        assert_eq!(
            rev(ws.path(), "refs/heads/pas-work/t-1"),
            "",
            "scratch branch deleted"
        );
        assert!(!worktrees.join("t-1").exists());
    }
}
