//! Warm aider workers (`aider.start: warm`): a task reaches its LLM without paying the seconds a
//! cold Python interpreter spends importing aider and litellm.
//!
//! One zygote per programmer ([`ZYGOTE_PY`]) imports aider, litellm and the launcher's patches once,
//! with a neutral environment (no API key, an empty HOME), and keeps `aider.warm_workers` forked,
//! idle copies of itself (pages shared until written). An attempt hands one of them its I/O over a
//! Unix socket (SCM_RIGHTS: the stdout and stderr pipes the attempt reads, and a control socket),
//! learns its pid (= its process group), and sends it the task — working directory, arguments and
//! environment built by [`super::aider`] exactly as for a cold start. From then on the attempt is
//! handled like a cold one: output streamed from the pipes, the group killed on cancel, deadline
//! and usage cap; the zygote reaps the worker and writes its exit status on the control socket.
//!
//! One task per worker; the zygote forks a replacement at once. Workers die with the zygote and
//! the zygote with the programmer (PR_SET_PDEATHSIG both), so nothing outlives the programmer. A
//! dead zygote is restarted with a backoff; while none is ready (or when no worker answers within
//! [`TAKE_TIMEOUT`]) attempts start cold — the cold path stays the fallback.

use std::ffi::OsString;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::aider::GroupGuard;
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr, sendmsg, socketpair,
};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The zygote script, embedded like the launcher and written next to it.
pub const ZYGOTE_PY: &str = include_str!("aider_zygote.py");

/// How long an attempt waits for an idle worker to answer before it starts cold. Idle workers
/// answer in milliseconds; a replacement is forked in tens.
pub const TAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an attempt waits for a zygote that is still importing (a cold start would import the
/// same modules from scratch, so waiting for the one already under way is never slower).
pub const READY_WAIT: Duration = Duration::from_secs(60);
/// First and longest pause before a dead zygote is started again.
const RESTART_MIN: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A zygote that lived this long resets the restart backoff.
const HEALTHY_LIFE: Duration = Duration::from_secs(60);

/// Where the zygote is.
#[derive(Debug, Clone)]
enum ZygoteState {
    /// Started, importing; attempts wait for it (up to [`READY_WAIT`]).
    Starting,
    /// Workers are waiting on this job socket.
    Ready(Arc<OwnedFd>),
    /// Dead, waiting out the restart backoff: attempts start cold.
    Down,
}

/// How a warm worker ended, from the zygote's report on the control socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct WorkerExit {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// The signal that ended it; when the zygote could not report (it died too), SIGKILL.
    pub signal: Option<i32>,
}

/// A warm worker running one task: its pid (also its process group), its output pipes, and its
/// exit status to come.
#[derive(Debug)]
pub struct WarmChild {
    /// The worker's pid, which is its process group id.
    pub pid: Pid,
    /// The task's stdout (taken by the reader).
    pub stdout: Option<pipe::Receiver>,
    /// The task's stderr (taken by the reader).
    pub stderr: Option<pipe::Receiver>,
    /// Resolves when the zygote reported the worker's end (or died).
    pub exit: JoinHandle<WorkerExit>,
}

/// One programmer's zygote and its idle workers.
#[derive(Debug)]
pub struct WarmPool {
    python: PathBuf,
    workers: usize,
    /// The zygote's environment (no key, HOME = an empty private directory).
    neutral_env: Vec<(String, String)>,
    /// zygote + launcher scripts and the neutral HOME; outside every worktree.
    dir: tempfile::TempDir,
    state: watch::Sender<ZygoteState>,
    /// The running zygote's pid (0: none).
    zygote: AtomicU32,
}

impl WarmPool {
    /// Prepares a pool of `workers` idle workers run by `python`; [`start`](Self::start) brings
    /// the zygote up. `neutral_env(home)` is the environment the zygote imports with; `nice` is
    /// the niceness it imports at (the programmer's `aider.nice`): the import is aider's work,
    /// seconds of a core per programmer when a pool starts, and must not compete with the
    /// services at their priority. Its workers inherit it.
    pub fn new(
        python: PathBuf,
        workers: usize,
        nice: u8,
        neutral_env: impl FnOnce(&Path) -> Vec<(String, String)>,
    ) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("pas-warm-").tempdir()?;
        let home = dir.path().join("home");
        std::fs::create_dir(&home)?;
        std::fs::write(
            dir.path().join("aider_launcher.py"),
            super::aider::LAUNCHER_PY,
        )?;
        std::fs::write(dir.path().join("aider_zygote.py"), ZYGOTE_PY)?;
        Ok(Self {
            python,
            workers: workers.max(1),
            neutral_env: {
                let mut env = neutral_env(&home);
                // Read by the zygote before its imports (aider_zygote.py).
                env.push(("PAS_AIDER_NICE".to_string(), nice.to_string()));
                env
            },
            dir,
            state: watch::Sender::new(ZygoteState::Starting),
            zygote: AtomicU32::new(0),
        })
    }

    /// Starts the zygote and keeps it running (restarted with a backoff when it dies) for as long
    /// as the programmer runs. Must run on a runtime thread that lives as long as the process:
    /// the zygote's parent-death signal follows the thread that spawned it.
    pub fn start(self: &Arc<Self>) {
        tokio::spawn(self.clone().supervise());
    }

    /// The running zygote's pid, if one runs (its children are the workers).
    pub fn zygote_pid(&self) -> Option<u32> {
        Some(self.zygote.load(Ordering::Relaxed)).filter(|&p| p != 0)
    }

    /// True while idle workers wait for tasks.
    pub fn is_ready(&self) -> bool {
        matches!(*self.state.borrow(), ZygoteState::Ready(_))
    }

    /// Waits (up to `within`) until the zygote is ready; false if it is not by then.
    pub async fn wait_ready(&self, within: Duration) -> bool {
        let mut rx = self.state.subscribe();
        let ready = rx.wait_for(|s| matches!(s, ZygoteState::Ready(_)));
        matches!(tokio::time::timeout(within, ready).await, Ok(Ok(_)))
    }

    async fn supervise(self: Arc<Self>) {
        let mut delay = RESTART_MIN;
        loop {
            let started = Instant::now();
            self.state.send_replace(ZygoteState::Starting);
            match self.run_zygote().await {
                Ok(status) => tracing::warn!(%status, "warm aider zygote ended; restarting it"),
                Err(e) => tracing::warn!(error = %e, "cannot run the warm aider zygote"),
            }
            self.zygote.store(0, Ordering::Relaxed);
            self.state.send_replace(ZygoteState::Down);
            if started.elapsed() >= HEALTHY_LIFE {
                delay = RESTART_MIN;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RESTART_MAX);
        }
    }

    /// Runs one zygote to its end: spawn, wait for "ready", publish the job socket.
    async fn run_zygote(&self) -> std::io::Result<std::process::ExitStatus> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let mut child = Command::new(&self.python)
            .arg(self.dir.path().join("aider_zygote.py"))
            .arg(self.workers.to_string())
            .current_dir(self.dir.path())
            .env_clear()
            .envs(self.neutral_env.iter().cloned())
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        self.zygote
            .store(child.id().unwrap_or(0), Ordering::Relaxed);
        if let Some(err) = child.stderr.take() {
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::warn!(%line, "warm aider zygote");
                }
            });
        }
        let mut ours = Some(Arc::new(ours));
        let mut stdout = child.stdout.take().map(|o| BufReader::new(o).lines());
        loop {
            tokio::select! {
                status = child.wait() => return status,
                line = async { match stdout.as_mut() {
                    Some(l) => l.next_line().await,
                    None => std::future::pending().await,
                } } => match line {
                    Ok(Some(l)) if l == "ready" => {
                        if let Some(jobs) = ours.take() {
                            tracing::info!(workers = self.workers, "warm aider workers ready");
                            self.state.send_replace(ZygoteState::Ready(jobs));
                        }
                    }
                    Ok(Some(_)) => {}
                    _ => stdout = None,
                }
            }
        }
    }

    /// Hands a task to an idle worker: `cwd`, `argv` (aider's arguments, after the launcher) and
    /// `env` (the whole environment) exactly as a cold start would use them. `None` when no warm
    /// worker could take it — the caller then starts the task cold; nothing ran. Waiting for a
    /// zygote still importing ends at `deadline` or on `cancel`.
    pub async fn launch(
        &self,
        cwd: &Path,
        argv: &[OsString],
        env: &[(String, String)],
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Option<WarmChild> {
        let jobs = tokio::select! {
            jobs = self.jobs(deadline) => jobs?,
            () = cancel.cancelled() => return None,
        };
        let task = task_line(cwd, argv, env)?;
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).ok()?;
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).ok()?;
        let (ctl, ctl_peer) = std::os::unix::net::UnixStream::pair().ok()?;
        let fds = [out_w.as_raw_fd(), err_w.as_raw_fd(), ctl_peer.as_raw_fd()];
        if let Err(e) = sendmsg::<UnixAddr>(
            jobs.as_raw_fd(),
            &[IoSlice::new(b"j")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            tracing::warn!(error = %e, "no warm aider worker can take the task: starting it cold");
            return None;
        }
        // Only the worker holds the far ends now: its end closes the pipes.
        drop((out_w, err_w, ctl_peer));
        ctl.set_nonblocking(true).ok()?;
        let mut ctl = BufReader::new(tokio::net::UnixStream::from_std(ctl).ok()?);
        let mut line = String::new();
        let answered = tokio::time::timeout(TAKE_TIMEOUT, ctl.read_line(&mut line)).await;
        #[derive(Deserialize)]
        struct Taken {
            pid: i32,
        }
        let pid = match answered {
            Ok(Ok(n)) if n > 0 => Pid::from_raw(serde_json::from_str::<Taken>(&line).ok()?.pid),
            _ => {
                // Dropping the control socket tells a late worker to exit unused.
                tracing::warn!("no warm aider worker answered: starting the task cold");
                return None;
            }
        };
        // From here the worker is ours: a dropped future must not leave it waiting or running.
        let guard = GroupGuard::new(pid);
        ctl.get_mut().write_all(task.as_bytes()).await.ok()?;
        let stdout = pipe::Receiver::from_owned_fd(out_r).ok()?;
        let stderr = pipe::Receiver::from_owned_fd(err_r).ok()?;
        let exit = tokio::spawn(async move {
            let mut line = String::new();
            match ctl.read_line(&mut line).await {
                Ok(n) if n > 0 => serde_json::from_str(&line).unwrap_or_default(),
                // The zygote died before it could report: the worker died with it (SIGKILL).
                _ => WorkerExit {
                    code: None,
                    signal: Some(Signal::SIGKILL as i32),
                },
            }
        });
        guard.disarm();
        Some(WarmChild {
            pid,
            stdout: Some(stdout),
            stderr: Some(stderr),
            exit,
        })
    }

    /// The job socket of a ready zygote, waiting for one still importing (at most [`READY_WAIT`],
    /// and not past `deadline`).
    async fn jobs(&self, deadline: Instant) -> Option<Arc<OwnedFd>> {
        let mut rx = self.state.subscribe();
        let settled = rx.wait_for(|s| !matches!(s, ZygoteState::Starting));
        let until = deadline.min(Instant::now() + READY_WAIT);
        match tokio::time::timeout_at(until, settled).await {
            Ok(Ok(state)) => match &*state {
                ZygoteState::Ready(jobs) => Some(jobs.clone()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// The task as the worker reads it: one JSON line `{"cwd", "argv", "env"}` (`None` when a path or
/// an argument is not UTF-8: such a task starts cold).
fn task_line(cwd: &Path, argv: &[OsString], env: &[(String, String)]) -> Option<String> {
    let argv: Option<Vec<&str>> = argv.iter().map(|a| a.to_str()).collect();
    let env: serde_json::Map<String, serde_json::Value> = env
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
        .collect();
    let line = serde_json::json!({"cwd": cwd.to_str()?, "argv": argv?, "env": env});
    Some(format!("{line}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_line_is_one_json_line_with_the_whole_environment() {
        let line = task_line(
            Path::new("/w"),
            &["--message=a\nb".into(), "--".into()],
            &[("HOME".into(), "/h".into())],
        )
        .expect("utf-8");
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["argv"][0], "--message=a\nb");
        assert_eq!(v["env"]["HOME"], "/h");
        assert_eq!(v["cwd"], "/w");
    }

    #[test]
    fn a_worker_exit_reads_code_or_signal() {
        let e: WorkerExit = serde_json::from_str(r#"{"code": 75}"#).expect("json");
        assert_eq!((e.code, e.signal), (Some(75), None));
        let e: WorkerExit = serde_json::from_str(r#"{"signal": 15}"#).expect("json");
        assert_eq!((e.code, e.signal), (None, Some(15)));
    }
}
