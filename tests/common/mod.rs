//! Shared helpers for integration tests: the real `pas llm-sim` on 127.0.0.1:0, temporary git
//! repositories, and the aider venv's python.
//!
//! Declared once by `tests/main.rs` (the one integration-test binary; a test file names it
//! `crate::common`) and by each bench with `#[path]`. Every helper works with real processes
//! and real files; nothing is mocked.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running `pas llm-sim` process, killed when dropped.
pub struct Sim {
    child: Child,
    /// The bound address.
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub base: String,
    /// Where the simulator's stderr log goes.
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sim {
    /// Starts the simulator with no script.
    pub fn start() -> Sim {
        Sim::start_with(&[])
    }

    /// Starts the simulator with a script (YAML or JSON text).
    pub fn start_with_script(script: &str) -> Sim {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("script.yaml");
        std::fs::write(&path, script).expect("write script");
        let arg = path.to_string_lossy().into_owned();
        let sim = Sim::start_with(&["--script", &arg]);
        drop(dir); // the script is read at start-up
        sim
    }

    /// Starts `pas llm-sim --listen 127.0.0.1:0 ARGS…` and reads the address from its first line.
    pub fn start_with(args: &[&str]) -> Sim {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("llm-sim.log");
        let stderr = std::fs::File::create(&log).expect("create sim log");
        let mut child = Command::new(pas_binary())
            .args(["llm-sim", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn pas llm-sim");
        let stdout = child.stdout.take().expect("sim stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the sim's first line");
        let base = line
            .trim()
            .strip_prefix("llm-sim listening on ")
            .unwrap_or_else(|| {
                let _ = child.kill();
                let log_text = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("unexpected first line from llm-sim: {line:?}\n{log_text}")
            })
            .to_string();
        let addr: SocketAddr = base
            .trim_start_matches("http://")
            .parse()
            .expect("sim address");
        Sim {
            child,
            addr,
            base,
            log,
            _dir: dir,
        }
    }

    /// Sends SIGTERM and waits (up to 10 s) for the simulator to exit; returns its status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "llm-sim did not stop on SIGTERM"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// `base + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The OpenAI-style API base (`.../v1`).
    pub fn openai_base(&self) -> String {
        self.url("/v1")
    }

    /// The simulator's log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Replaces the running script (`POST /_sim/script`).
    pub async fn set_script(&self, script: &str) {
        let resp = reqwest::Client::new()
            .post(self.url("/_sim/script"))
            .body(script.to_string())
            .send()
            .await
            .expect("POST /_sim/script");
        assert!(
            resp.status().is_success(),
            "script rejected: {:?}",
            resp.text().await
        );
    }

    /// `GET /_sim/usage` as JSON.
    pub async fn usage(&self) -> serde_json::Value {
        self.get_json("/_sim/usage").await
    }

    /// `GET /_sim/requests` as JSON.
    pub async fn requests(&self) -> serde_json::Value {
        self.get_json("/_sim/requests").await
    }

    /// GETs a JSON document.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        reqwest::get(self.url(path))
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON body")
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `pas` binary the harness runs: cargo's build of this crate (a [`pool::TestPool`] may be
/// pointed at another build, see its `binary`).
pub fn pas_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pas"))
}

/// `(pid, state, ppid)` of every process in /proc (state `Z` = exited, not yet reaped).
pub fn processes() -> Vec<(u32, char, u32)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may hold spaces and parens, so split at the last one.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next());
        let ppid = fields.next().and_then(|p| p.parse().ok());
        if let (Some(state), Some(ppid)) = (state, ppid) {
            out.push((pid, state, ppid));
        }
    }
    out
}

/// Live descendants of `pid` (children, their children, …; zombies excluded).
pub fn descendants(pid: u32) -> Vec<u32> {
    let procs = processes();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            procs
                .iter()
                .filter(|&&(child, state, ppid)| ppid == parent && state != 'Z' && child != pid)
                .map(|&(child, _, _)| child),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// True when `pid` still runs (exited-but-unreaped counts as gone).
pub fn alive(pid: u32) -> bool {
    processes()
        .iter()
        .any(|&(p, state, _)| p == pid && state != 'Z')
}

/// Children of `pid` that have exited but were not reaped yet.
pub fn zombie_children(pid: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|&(_, state, ppid)| state == 'Z' && ppid == pid)
        .map(|(child, _, _)| child)
        .collect()
}

/// Runs git in `dir` with a fixed identity; panics with git's stderr on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=pas-test",
            "-c",
            "user.email=pas-test@localhost",
        ])
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A temporary git repository holding `files` (path, content) in one first commit.
pub fn git_repo(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    git(dir.path(), &["init", "-q"]);
    for (path, content) in files {
        let full = dir.path().join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(full, content).expect("write file");
    }
    git(dir.path(), &["add", "-A"]);
    git(
        dir.path(),
        &["commit", "-q", "--allow-empty", "-m", "initial commit"],
    );
    dir
}

/// `git rev-parse HEAD`.
pub fn git_head(dir: &Path) -> String {
    git(dir, &["rev-parse", "HEAD"]).trim().to_string()
}

/// True when HEAD moved from `base` or the work tree has changes.
pub fn repo_changed(dir: &Path, base: &str) -> bool {
    git_head(dir) != base || !git(dir, &["status", "--porcelain"]).trim().is_empty()
}

/// The aider venv's python: `$PAS_AIDER_PYTHON` or `<crate>/.aider-venv/bin/python`.
/// Panics (so the test FAILS, never skips) when it is missing.
pub fn aider_python() -> PathBuf {
    let path = std::env::var_os("PAS_AIDER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".aider-venv/bin/python"));
    assert!(
        path.exists(),
        "aider python not found at {} — run scripts/install-aider.sh (or set PAS_AIDER_PYTHON)",
        path.display()
    );
    path
}

/// How the suites start aider: warm (the default, like the product) unless `PAS_TEST_AIDER_START=cold`
/// asks for the cold path (`scripts/test.sh` runs a representative set that way).
pub fn aider_start_cold() -> bool {
    std::env::var("PAS_TEST_AIDER_START").is_ok_and(|v| v == "cold")
}

/// The `aider.start` value generated configurations carry.
pub fn aider_start() -> &'static str {
    if aider_start_cold() { "cold" } else { "warm" }
}

/// Warm aider workers for tests that call `run_aider` directly (`None` when the suites run cold):
/// one zygote for the whole test binary, on a thread of its own that lives as long as the process
/// (the zygote's parent-death signal follows the thread that spawned it), ready when returned.
pub fn warm_pool() -> Option<std::sync::Arc<pas::programmer::warm::WarmPool>> {
    use pas::programmer::warm::{READY_WAIT, WarmPool};
    use std::sync::{Arc, OnceLock};
    static POOL: OnceLock<Arc<WarmPool>> = OnceLock::new();
    if aider_start_cold() {
        return None;
    }
    let pool = POOL.get_or_init(|| {
        let pool = Arc::new(
            WarmPool::new(
                aider_python(),
                3,
                0,
                pas::programmer::aider::neutral_environment,
            )
            .expect("warm pool"),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let started = pool.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                started.start();
                let ready = started.wait_ready(READY_WAIT).await;
                tx.send(ready).expect("report");
                std::future::pending::<()>().await
            })
        });
        assert!(
            rx.recv().expect("warm pool thread"),
            "warm aider workers not ready"
        );
        pool
    });
    Some(pool.clone())
}

/// Pids of live processes in process group `pgid` (from `/proc/*/stat`; zombies excluded).
pub fn processes_in_group(pgid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[0] != "Z" && fields[2].parse::<i32>().ok() == Some(pgid) {
            pids.push(pid);
        }
    }
    pids
}

/// Pids of live processes whose working directory is `dir` or below it.
pub fn processes_in_dir(dir: &Path) -> Vec<i32> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) {
            let zombie = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, r)| r.trim_start().starts_with('Z'))
                })
                .unwrap_or(false);
            if cwd.starts_with(&dir) && !zombie {
                pids.push(pid);
            }
        }
    }
    pids
}

/// `connect(2)` calls in an `strace -f -e trace=connect` log that go anywhere but loopback
/// (127.0.0.0/8, ::1, ::ffff:127.x) or a unix socket. Empty = no network attempt beyond loopback.
pub fn non_loopback_connects(strace_log: &str) -> Vec<String> {
    strace_log
        .lines()
        .filter(|l| l.contains("connect("))
        .filter(|l| {
            let unix = l.contains("sa_family=AF_UNIX");
            let v4_loopback = l.contains("sa_family=AF_INET,") && l.contains("inet_addr(\"127.");
            let v6_loopback = l.contains("sa_family=AF_INET6")
                && (l.contains("\"::1\"") || l.contains("\"::ffff:127."));
            !(unix || v4_loopback || v6_loopback)
        })
        .map(str::to_string)
        .collect()
}

/// `strace` prefix for [`pas::programmer::aider::AiderInvocation::launch_prefix`] that logs every
/// `connect(2)` of the whole process tree to `log`. Panics when strace is missing.
pub fn strace_prefix(log: &Path) -> Vec<std::ffi::OsString> {
    strace_prefix_for(log, "connect")
}

/// `strace` prefix that logs the system calls `trace` names (strace's `-e trace=` syntax, e.g.
/// `%file,%process,connect`) of the whole process tree to `log`, strings up to 256 bytes.
/// Panics when strace is missing.
pub fn strace_prefix_for(log: &Path, trace: &str) -> Vec<std::ffi::OsString> {
    let found = Command::new("strace")
        .arg("-V")
        .output()
        .map(|o| o.status.success());
    assert!(
        matches!(found, Ok(true)),
        "strace is needed to watch aider's system calls (apt-get install strace)"
    );
    let trace = format!("trace={trace}");
    [
        "strace",
        "-f",
        "-qq",
        "--seccomp-bpf",
        "-s",
        "256",
        "-e",
        &trace,
        "-e",
        "signal=none",
        "-o",
    ]
    .iter()
    .map(std::ffi::OsString::from)
    .chain(std::iter::once(log.as_os_str().to_owned()))
    .collect()
}
/// [`strace_prefix_for`] then `setpriv --pdeathsig KILL --`: the traced process dies with its
/// tracer even when the test is torn down by SIGKILL. Stop it with
/// [`pool::ChildGuard::stop_traced`], which leaves the log complete.
pub fn traced_prefix(log: &Path, trace: &str) -> Vec<std::ffi::OsString> {
    let mut prefix = strace_prefix_for(log, trace);
    prefix.extend(["setpriv", "--pdeathsig", "KILL", "--"].map(std::ffi::OsString::from));
    prefix
}

pub mod browser;
pub mod cli;
pub mod dns;
pub mod gitserver;
pub mod pool;
pub mod proxy;
pub mod secure;
pub mod sse;
