//! Supervising the mesh's processes: start each child, watch its health, restart it with backoff
//! when it exits, and stop them all gracefully.
//!
//! Every child runs in its own process group (so a terminal's Ctrl-C reaches only the supervisor,
//! which then stops the children in order, and so a stop also reaches whatever the child spawned),
//! from an argument vector (never a shell), with stdout and stderr appended to its own log file.
//! The supervisor never gives up on a child: a crash loop just backs off to the maximum delay.

use super::backoff::Backoff;
use super::probe;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One process to keep running.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// Short key used on the command line and in files: "manager" or a programmer id.
    pub key: String,
    /// Display name, e.g. "Manager-Code" or "Prog-001".
    pub name: String,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// File its stdout and stderr are appended to.
    pub log: PathBuf,
    /// `host:port` its health is checked on.
    pub addr: String,
    /// The grpc.health.v1 service name that must report SERVING.
    pub health_service: String,
    /// TLS files the health probe connects with (the pool's `client` certificate; programmers
    /// require one); `None` = plaintext.
    pub probe_tls: Option<crate::tls::TlsFiles>,
    /// Variables set on top of the inherited environment (e.g. `pas demo` points the providers
    /// at the simulator this way, so the shipped config loads unchanged).
    pub env: Vec<(OsString, OsString)>,
}

/// Timing of the supervision.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Delays between restarts.
    pub backoff: Backoff,
    /// How long a child may take to exit after SIGTERM before it gets SIGKILL.
    pub stop_grace: Duration,
    /// Health probe period until a child is healthy (and while it is not).
    pub probe_starting: Duration,
    /// Health probe period while a child is healthy.
    pub probe_healthy: Duration,
    /// Timeout of one health probe.
    pub probe_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            stop_grace: Duration::from_secs(40),
            probe_starting: Duration::from_millis(250),
            probe_healthy: Duration::from_secs(2),
            probe_timeout: Duration::from_secs(2),
        }
    }
}

/// Where a child is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildState {
    /// Running, not yet healthy since its last start.
    Starting,
    /// Running and its health check reports SERVING.
    Healthy,
    /// Running, was healthy, now fails its health check.
    Unhealthy,
    /// Exited; waiting out the backoff before the next start.
    Restarting,
    /// Stopped by the supervisor.
    Stopped,
}

impl ChildState {
    /// Lower-case name for tables.
    pub fn as_str(self) -> &'static str {
        match self {
            ChildState::Starting => "starting",
            ChildState::Healthy => "healthy",
            ChildState::Unhealthy => "unhealthy",
            ChildState::Restarting => "restarting",
            ChildState::Stopped => "stopped",
        }
    }
}

/// A child as the supervisor sees it now (also what the state file holds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildReport {
    /// See [`ChildSpec::key`].
    pub key: String,
    /// See [`ChildSpec::name`].
    pub name: String,
    /// See [`ChildSpec::addr`].
    pub addr: String,
    /// Process id of the current run (also its process group id); none between runs.
    pub pid: Option<u32>,
    /// Current state.
    pub state: ChildState,
    /// How many times it was restarted after exiting.
    pub restarts: u32,
    /// How its last run ended, e.g. "killed by SIGKILL after 3.1s".
    pub last_exit: Option<String>,
    /// Its log file.
    pub log: PathBuf,
}

/// Errors starting the supervision.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("cannot create the log directory {path}: {source}")]
    LogDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The running supervision of a set of children.
#[derive(Debug)]
pub struct Supervisor {
    /// The children, in start order (added ones last; a removed one leaves once it stopped).
    slots: Arc<Mutex<Vec<Arc<Slot>>>>,
    stop: CancellationToken,
    tasks: Mutex<JoinSet<()>>,
    changes: watch::Receiver<u64>,
    /// Sends to `changes` (a child added or removed is a change too).
    changed: watch::Sender<u64>,
    policy: Policy,
}

/// Outcome of [`Supervisor::wait_ready`].
#[derive(Debug, Clone, PartialEq)]
pub enum Readiness {
    /// Every child is healthy.
    Ready,
    /// This child keeps exiting before it ever became healthy.
    CrashLoop(ChildReport),
    /// Not every child became healthy in time.
    TimedOut,
}

/// Shared state of one child.
#[derive(Debug)]
struct Slot {
    spec: ChildSpec,
    /// Stops this child alone ([`Supervisor::remove`]); a child of the supervisor's own.
    stop: CancellationToken,
    report: Mutex<ChildReport>,
    changed: watch::Sender<u64>,
    /// Whether any run of the child was ever healthy.
    healthy_once: std::sync::atomic::AtomicBool,
    /// Cancelled once the child, stopped on its own ([`Supervisor::remove`]), has exited and left
    /// the list.
    gone: CancellationToken,
}

impl Slot {
    fn update(&self, f: impl FnOnce(&mut ChildReport)) {
        let mut report = lock(&self.report);
        let before = report.clone();
        f(&mut report);
        if *report != before {
            drop(report);
            self.changed.send_modify(|n| *n += 1);
        }
    }

    fn state(&self) -> ChildState {
        lock(&self.report).state
    }

    fn was_healthy(&self) -> bool {
        self.healthy_once.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Its report, when it has exited `limit` times without ever being healthy: it will not
    /// start by itself, so there is no point waiting for it.
    fn crash_loop(&self, limit: u32) -> Option<ChildReport> {
        let report = lock(&self.report).clone();
        (report.restarts >= limit && !self.was_healthy()).then_some(report)
    }
}

impl Supervisor {
    /// Starts every child and keeps it running until [`Supervisor::shutdown`].
    pub fn start(children: Vec<ChildSpec>, policy: Policy) -> Result<Self, SuperviseError> {
        for spec in &children {
            if let Some(dir) = spec.log.parent() {
                std::fs::create_dir_all(dir).map_err(|source| SuperviseError::LogDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
        }
        let (changed, changes) = watch::channel(0u64);
        let sup = Self {
            slots: Arc::default(),
            stop: CancellationToken::new(),
            tasks: Mutex::new(JoinSet::new()),
            changes,
            changed,
            policy,
        };
        for spec in children {
            sup.add(spec)?;
        }
        Ok(sup)
    }

    /// Starts one more child (a programmer added to the configuration) and keeps it running
    /// like the others.
    pub fn add(&self, spec: ChildSpec) -> Result<(), SuperviseError> {
        self.add_at(spec, None)
    }

    /// Stops child `spec.key` as [`Supervisor::remove`] does, waits until it has exited, and
    /// starts `spec` in its place in the list (a programmer whose settings read at start-up
    /// changed: the new process must find its port and its data dir free). False, and nothing
    /// started, when there is no such child.
    pub async fn replace(&self, spec: ChildSpec) -> Result<bool, SuperviseError> {
        let Some((index, old)) = self
            .slots()
            .into_iter()
            .enumerate()
            .find(|(_, s)| s.spec.key == spec.key)
        else {
            return Ok(false);
        };
        old.stop.cancel();
        old.gone.cancelled().await;
        self.add_at(spec, Some(index))?;
        Ok(true)
    }

    /// Waits until child `key` is healthy ([`Readiness::Ready`]), has exited `crash_limit`
    /// times without becoming healthy ([`Readiness::CrashLoop`]), or `timeout` passes or it is
    /// not supervised ([`Readiness::TimedOut`]).
    pub async fn wait_healthy(&self, key: &str, timeout: Duration, crash_limit: u32) -> Readiness {
        self.wait_for(timeout, |slots| {
            let Some(slot) = slots.iter().find(|s| s.spec.key == key) else {
                return Some(Readiness::TimedOut);
            };
            if slot.state() == ChildState::Healthy {
                return Some(Readiness::Ready);
            }
            slot.crash_loop(crash_limit).map(Readiness::CrashLoop)
        })
        .await
    }

    /// [`Supervisor::add`], at position `index` of the list (the end when `None`).
    fn add_at(&self, spec: ChildSpec, index: Option<usize>) -> Result<(), SuperviseError> {
        if let Some(dir) = spec.log.parent() {
            std::fs::create_dir_all(dir).map_err(|source| SuperviseError::LogDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let slot = Arc::new(Slot {
            report: Mutex::new(ChildReport {
                key: spec.key.clone(),
                name: spec.name.clone(),
                addr: spec.addr.clone(),
                pid: None,
                state: ChildState::Starting,
                restarts: 0,
                last_exit: None,
                log: spec.log.clone(),
            }),
            spec,
            stop: self.stop.child_token(),
            changed: self.changed.clone(),
            healthy_once: Default::default(),
            gone: CancellationToken::new(),
        });
        {
            let mut slots = lock(&self.slots);
            let at = index.map_or(slots.len(), |i| i.min(slots.len()));
            slots.insert(at, slot.clone());
        }
        self.changed.send_modify(|n| *n += 1);
        let (slots, changed, policy) = (
            self.slots.clone(),
            self.changed.clone(),
            self.policy.clone(),
        );
        lock(&self.tasks).spawn(async move {
            keep_running(slot.clone(), policy, slot.stop.clone()).await;
            // Removed on its own (not the whole pool stopping): it leaves the list.
            if slot.stop.is_cancelled() {
                lock(&slots).retain(|s| !Arc::ptr_eq(s, &slot));
                changed.send_modify(|n| *n += 1);
            }
            slot.gone.cancel();
        });
        Ok(())
    }

    /// Stops child `key` (SIGTERM, then SIGKILL after the grace period) and drops it from the
    /// list once it exited; false when there is no such child.
    pub fn remove(&self, key: &str) -> bool {
        let slots = lock(&self.slots);
        match slots.iter().find(|s| s.spec.key == key) {
            Some(slot) => {
                slot.stop.cancel();
                true
            }
            None => false,
        }
    }

    /// The keys and specs of the children supervised now.
    pub fn specs(&self) -> Vec<ChildSpec> {
        lock(&self.slots).iter().map(|s| s.spec.clone()).collect()
    }

    fn slots(&self) -> Vec<Arc<Slot>> {
        lock(&self.slots).clone()
    }

    /// Every child's state, in start order.
    pub fn reports(&self) -> Vec<ChildReport> {
        self.slots()
            .iter()
            .map(|s| lock(&s.report).clone())
            .collect()
    }

    /// Sends `signal` to every child that is healthy now — to the process alone, not its group
    /// (a programmer's git and aider processes must not get it) — and returns how many got it.
    /// A child still starting is skipped: it reads its files as it starts, and may not take the
    /// signal yet (SIGHUP would end it).
    pub fn signal_healthy(&self, signal: Signal) -> usize {
        let mut sent = 0;
        for report in self.reports() {
            let pid = report
                .pid
                .and_then(|p| i32::try_from(p).ok())
                .filter(|p| *p > 1);
            if let (ChildState::Healthy, Some(pid)) = (report.state, pid) {
                match nix::sys::signal::kill(Pid::from_raw(pid), signal) {
                    Ok(()) => sent += 1,
                    Err(e) => {
                        tracing::warn!(child = %report.name, pid, ?signal, "cannot signal the child: {e}")
                    }
                }
            }
        }
        sent
    }

    /// A receiver that changes whenever any child's report changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// Waits until every child is healthy at once ([`Readiness::Ready`]), a child has exited
    /// `crash_limit` times without ever becoming healthy ([`Readiness::CrashLoop`]: it will not
    /// start by itself, so there is no point waiting), or `timeout` passes.
    pub async fn wait_ready(&self, timeout: Duration, crash_limit: u32) -> Readiness {
        self.wait_for(timeout, |slots| {
            if slots.iter().all(|s| s.state() == ChildState::Healthy) {
                return Some(Readiness::Ready);
            }
            slots
                .iter()
                .find_map(|s| s.crash_loop(crash_limit))
                .map(Readiness::CrashLoop)
        })
        .await
    }

    /// Checks the children at every change until `check` has a verdict, or `timeout` passes.
    async fn wait_for(
        &self,
        timeout: Duration,
        check: impl Fn(&[Arc<Slot>]) -> Option<Readiness>,
    ) -> Readiness {
        let mut changes = self.changes();
        let wait = async {
            loop {
                if let Some(readiness) = check(&self.slots()) {
                    return readiness;
                }
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Readiness::TimedOut)
    }

    /// Stops every child (SIGTERM to its process group, then SIGKILL after the grace period) and
    /// waits until all have exited.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        while let Some(joined) = tasks.join_next().await {
            if let Err(e) = joined {
                tracing::error!("supervision task failed: {e}");
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs one child forever: start, watch, restart after backoff; stop on `stop`.
async fn keep_running(slot: Arc<Slot>, policy: Policy, stop: CancellationToken) {
    let mut backoff = policy.backoff.clone();
    let name = slot.spec.name.clone();
    loop {
        let started = Instant::now();
        let exit = match spawn(&slot.spec) {
            Ok(mut child) => {
                let pid = child.id();
                tracing::info!(child = %name, pid, log = %slot.spec.log.display(), "started");
                slot.update(|r| {
                    r.pid = pid;
                    r.state = ChildState::Starting;
                });
                tokio::select! {
                    status = child.wait() => {
                        // Whatever the child left in its process group goes with it.
                        signal_group(pid, Signal::SIGKILL);
                        match status {
                            Ok(status) => describe_exit(status),
                            Err(e) => format!("lost track of it: {e}"),
                        }
                    }
                    never = watch_health(&slot, &policy) => match never {},
                    _ = stop.cancelled() => {
                        terminate(&name, &mut child, pid, policy.stop_grace).await;
                        slot.update(|r| {
                            r.pid = None;
                            r.state = ChildState::Stopped;
                        });
                        return;
                    }
                }
            }
            Err(e) => format!("cannot start: {e}"),
        };
        let ran_for = started.elapsed();
        let delay = backoff.after_exit(ran_for);
        let last_exit = format!("{exit} after {:.1}s", ran_for.as_secs_f64());
        let restarts = {
            let mut n = 0;
            slot.update(|r| {
                r.pid = None;
                r.state = ChildState::Restarting;
                r.restarts += 1;
                r.last_exit = Some(last_exit.clone());
                n = r.restarts;
            });
            n
        };
        tracing::warn!(child = %name, exit = %last_exit, restart = restarts,
            delay_ms = delay.as_millis() as u64, "child exited; restarting after backoff");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => {
                slot.update(|r| r.state = ChildState::Stopped);
                return;
            }
        }
    }
}

/// Probes the child's health forever, updating its state.
async fn watch_health(slot: &Slot, policy: &Policy) -> std::convert::Infallible {
    loop {
        let healthy = probe::check(
            &slot.spec.addr,
            &slot.spec.health_service,
            policy.probe_timeout,
            slot.spec.probe_tls.as_ref(),
        )
        .await
        .is_ok();
        if healthy {
            slot.healthy_once
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        slot.update(|r| {
            r.state = match (r.state, healthy) {
                (_, true) => ChildState::Healthy,
                (ChildState::Starting, false) => ChildState::Starting,
                (_, false) => ChildState::Unhealthy,
            }
        });
        let period = if healthy {
            policy.probe_healthy
        } else {
            policy.probe_starting
        };
        tokio::time::sleep(period).await;
    }
}

/// Starts the child in its own process group with output appended to its log.
fn spawn(spec: &ChildSpec) -> std::io::Result<Child> {
    use std::io::Write;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)?;
    writeln!(
        log,
        "--- pas up: starting {} at {} ---",
        spec.name,
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    )?;
    let stderr = log.try_clone()?;
    Command::new(&spec.program)
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(stderr))
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
}

/// SIGTERM to the child's group, wait up to `grace`, then SIGKILL; always reaps the child.
async fn terminate(name: &str, child: &mut Child, pid: Option<u32>, grace: Duration) {
    signal_group(pid, Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => {
            let exit = status.map_or_else(|e| e.to_string(), describe_exit);
            tracing::info!(child = %name, %exit, "stopped");
        }
        Err(_) => {
            tracing::warn!(child = %name, grace_s = grace.as_secs_f64(), "did not stop in time; killing it");
            signal_group(pid, Signal::SIGKILL);
            let _ = child.wait().await;
        }
    }
    // Anything it spawned into its group and left behind.
    signal_group(pid, Signal::SIGKILL);
}

/// Sends `signal` to the process group `pid` (the child is its group's leader). A group that is
/// already gone is not an error.
pub fn signal_group(pid: Option<u32>, signal: Signal) {
    let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1) else {
        return;
    };
    if let Err(e) = killpg(Pid::from_raw(pid), signal)
        && e != nix::errno::Errno::ESRCH
    {
        tracing::warn!(pgid = pid, ?signal, "cannot signal the process group: {e}");
    }
}

/// "exited with status 1", "killed by SIGKILL".
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(sig) => match Signal::try_from(sig) {
            Ok(signal) => format!("killed by {}", signal.as_str()),
            Err(_) => format!("killed by signal {sig}"),
        },
        None => "exited".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(key: &str, dir: &std::path::Path, secs: &str) -> ChildSpec {
        ChildSpec {
            key: key.into(),
            name: format!("sleeper-{key}"),
            program: "sleep".into(),
            args: vec![secs.into()],
            log: dir.join(format!("{key}.log")),
            // Nothing listens here, so the child never becomes healthy.
            addr: "127.0.0.1:9".into(),
            health_service: probe::PROGRAMMER_SERVICE.into(),
            probe_tls: None,
            env: Vec::new(),
        }
    }

    fn quick_policy() -> Policy {
        Policy {
            backoff: Backoff::new(
                Duration::from_millis(50),
                Duration::from_millis(200),
                Duration::from_secs(60),
            ),
            stop_grace: Duration::from_secs(5),
            probe_starting: Duration::from_millis(100),
            probe_healthy: Duration::from_millis(100),
            probe_timeout: Duration::from_millis(200),
        }
    }

    async fn wait_for(sup: &Supervisor, what: impl Fn(&[ChildReport]) -> bool) -> Vec<ChildReport> {
        let mut changes = sup.changes();
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let reports = sup.reports();
                if what(&reports) {
                    return reports;
                }
                changes.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out; last reports: {:#?}", sup.reports()))
    }

    #[tokio::test]
    async fn a_replaced_child_has_exited_before_its_successor_starts_in_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let children = ["a", "b", "c"].map(|k| sleeper(k, dir.path(), "1000"));
        let sup = Supervisor::start(children.to_vec(), quick_policy()).unwrap();
        let before = wait_for(&sup, |r| r.iter().all(|c| c.pid.is_some())).await;
        let old = before[1].pid.unwrap();

        assert!(sup.replace(sleeper("b", dir.path(), "2000")).await.unwrap());
        // Reaped before the successor was started: no process has its pid any more.
        let gone = nix::sys::signal::kill(Pid::from_raw(old as i32), None);
        assert_eq!(gone, Err(nix::errno::Errno::ESRCH));
        let after = wait_for(&sup, |r| r.len() == 3 && r[1].pid.is_some()).await;
        let keys: Vec<&str> = after.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_ne!(after[1].pid, Some(old));
        assert_eq!(sup.specs()[1].args, [std::ffi::OsString::from("2000")]);
        assert_eq!((after[0].pid, after[2].pid), (before[0].pid, before[2].pid));

        assert!(!sup.replace(sleeper("z", dir.path(), "1")).await.unwrap());
        assert_eq!(sup.reports().len(), 3);
        sup.shutdown().await;
    }

    #[tokio::test]
    async fn a_crashing_child_is_restarted_and_its_exits_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let sup = Supervisor::start(vec![sleeper("a", dir.path(), "0")], quick_policy()).unwrap();
        let reports = wait_for(&sup, |r| r[0].restarts >= 3).await;
        assert_eq!(
            reports[0]
                .last_exit
                .as_deref()
                .map(|s| s.starts_with("exited with status 0")),
            Some(true),
            "{reports:?}"
        );
        sup.shutdown().await;
        let log = std::fs::read_to_string(dir.path().join("a.log")).unwrap();
        assert!(
            log.matches("--- pas up: starting sleeper-a").count() >= 3,
            "{log}"
        );
    }

    #[tokio::test]
    async fn a_child_that_never_gets_healthy_is_reported_as_a_crash_loop() {
        let dir = tempfile::tempdir().unwrap();
        let sup = Supervisor::start(
            vec![
                sleeper("a", dir.path(), "600"),
                sleeper("b", dir.path(), "0"),
            ],
            quick_policy(),
        )
        .unwrap();
        match sup.wait_ready(Duration::from_secs(20), 3).await {
            Readiness::CrashLoop(report) => {
                assert_eq!(report.key, "b");
                assert!(report.restarts >= 3);
            }
            other => panic!("expected a crash loop, got {other:?}"),
        }
        // Nothing is healthy (nothing listens on the probe address): a plain time-out.
        let sup2 =
            Supervisor::start(vec![sleeper("c", dir.path(), "600")], quick_policy()).unwrap();
        assert_eq!(
            sup2.wait_ready(Duration::from_millis(500), 3).await,
            Readiness::TimedOut
        );
        sup.shutdown().await;
        sup2.shutdown().await;
    }

    #[tokio::test]
    async fn a_killed_child_comes_back_with_a_new_pid_and_shutdown_stops_all() {
        let dir = tempfile::tempdir().unwrap();
        let sup = Supervisor::start(
            vec![
                sleeper("a", dir.path(), "600"),
                sleeper("b", dir.path(), "600"),
            ],
            quick_policy(),
        )
        .unwrap();
        let reports = wait_for(&sup, |r| r.iter().all(|c| c.pid.is_some())).await;
        let first = reports[0].pid.unwrap();
        signal_group(Some(first), Signal::SIGKILL);
        let reports = wait_for(&sup, |r| {
            r[0].restarts == 1 && r[0].pid.is_some_and(|p| p != first)
        })
        .await;
        assert_eq!(
            reports[0]
                .last_exit
                .as_deref()
                .map(|s| s.starts_with("killed by SIGKILL")),
            Some(true),
            "{reports:?}"
        );
        let pids: Vec<u32> = reports.iter().filter_map(|r| r.pid).collect();
        sup.shutdown().await;
        for pid in pids {
            let gone = nix::sys::signal::kill(Pid::from_raw(pid as i32), None).is_err();
            assert!(gone, "process {pid} still exists after shutdown");
        }
    }

    #[tokio::test]
    async fn a_child_that_ignores_sigterm_is_killed_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = sleeper("stubborn", dir.path(), "600");
        // A program that ignores SIGTERM, started without a shell: python's signal module.
        spec.program = "python3".into();
        // It says when SIGTERM is ignored by creating `ready` (python starts slowly under load).
        let ready = dir.path().join("ready");
        spec.args = vec![
            "-c".into(),
            "import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n\
             open(sys.argv[1], 'w').close()\ntime.sleep(600)"
                .into(),
            ready.clone().into_os_string(),
        ];
        let mut policy = quick_policy();
        policy.stop_grace = Duration::from_millis(500);
        let sup = Supervisor::start(vec![spec], policy).unwrap();
        let reports = wait_for(&sup, |r| r[0].pid.is_some()).await;
        let pid = reports[0].pid.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "python never got ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = std::time::Instant::now();
        sup.shutdown().await;
        assert!(started.elapsed() >= Duration::from_millis(500));
        assert!(nix::sys::signal::kill(Pid::from_raw(pid as i32), None).is_err());
    }

    #[test]
    fn exits_are_described() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            describe_exit(ExitStatus::from_raw(1 << 8)),
            "exited with status 1"
        );
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "killed by SIGKILL");
    }
}
