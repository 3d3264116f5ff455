//! A real git server for tests: `git daemon` serving bare repositories over `git://` (fetch and
//! push), and helpers to read what landed on it. Killed when dropped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `git daemon --export-all --enable=receive-pack` on `host:port`, serving `base`.
pub struct GitDaemon {
    child: Child,
    /// Directory holding the served bare repositories (`<base>/<name>.git`).
    pub base: PathBuf,
    /// `host:port` it listens on.
    pub addr: String,
}

impl GitDaemon {
    /// Starts the daemon under `prefix` (e.g. `ip netns exec git`; empty to run it here) and waits
    /// until its port accepts connections (the daemon logs `Ready to rumble` then).
    pub fn start(prefix: &[&str], base: &Path, host: &str, port: u16) -> GitDaemon {
        let log = base.with_extension("daemon.log");
        let mut args: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
        args.extend(
            [
                "git",
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--enable=receive-pack",
                "--informative-errors",
                "--verbose",
            ]
            .map(String::from),
        );
        args.push(format!("--base-path={}", base.display()));
        args.push(format!("--listen={host}"));
        args.push(format!("--port={port}"));
        args.push(base.display().to_string());
        let child = Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(&log).expect("daemon log"),
            ))
            .spawn()
            .expect("spawn git daemon");
        let daemon = GitDaemon {
            child,
            base: base.to_path_buf(),
            addr: format!("{host}:{port}"),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Ready to rumble") {
                return daemon;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "git daemon did not become ready: {text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `git://host:port/<name>.git`.
    pub fn url(&self, name: &str) -> String {
        format!("git://{}/{name}.git", self.addr)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates the bare repository `<base>/<name>.git` holding `files` in one commit on `main`
/// (built in a scratch clone that is removed). Returns the bare repository's path.
pub fn bare_repo(base: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let bare = base.join(format!("{name}.git"));
    std::fs::create_dir_all(&bare).expect("bare dir");
    super::git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    let work = tempfile::tempdir().expect("scratch clone");
    super::git(work.path(), &["init", "-q", "-b", "main"]);
    for (rel, content) in files {
        let file = work.path().join(rel);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("parent dir");
        std::fs::write(&file, content).expect("write file");
    }
    super::git(work.path(), &["add", "-A"]);
    super::git(work.path(), &["commit", "-q", "-m", "initial"]);
    super::git(
        work.path(),
        &["push", "-q", &bare.display().to_string(), "main"],
    );
    bare
}

/// The commit `refname` names in repository `repo`, `None` when absent.
pub fn ref_commit(repo: &Path, refname: &str) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["rev-parse", "--verify", "-q", refname])
        .output()
        .expect("git rev-parse");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Every `refs/heads/pas/*` branch of `repo`.
pub fn pas_branches(repo: &Path) -> Vec<String> {
    super::git(
        repo,
        &["for-each-ref", "--format=%(refname)", "refs/heads/pas/"],
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// `git diff base commit` in `repo`, formatted as the programmer reports a result's diff.
pub fn diff(repo: &Path, base: &str, commit: &str) -> String {
    super::git(
        repo,
        &[
            "diff",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            base,
            commit,
        ],
    )
}
