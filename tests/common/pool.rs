//! Whole-pool test harness: a temp directory with a config, a workspace root holding real git
//! repositories, a data dir, the real `pas llm-sim`, and real `pas programmer` / `pas manager`
//! processes on free 127.0.0.1 ports. Every child is killed when the harness is dropped.

#![allow(dead_code)]

use super::{Sim, aider_python};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One programmer of a test pool.
#[derive(Debug, Clone)]
pub struct TestProgrammer {
    pub id: String,
    pub primary: String,
    pub backup: String,
    pub capabilities: Vec<String>,
    /// Per-programmer `max_cost_per_job_usd` override.
    pub max_cost_per_job_usd: Option<f64>,
    /// Per-programmer `memory_limit_mb` override (aider's memory ceiling).
    pub memory_limit_mb: Option<u64>,
    /// Whether the test runs aider on this programmer; `false` starts it with its own
    /// `aider_start: cold` (see [`PoolOptions::runs_aider`], the same for a whole pool), e.g. the
    /// free programmers of a test whose real tasks all go to the paid ones.
    pub runs_aider: bool,
}

impl TestProgrammer {
    /// A free programmer on two simulated Ollama models.
    pub fn free(id: &str) -> Self {
        Self {
            id: id.into(),
            primary: format!("ollama/primary-{id}"),
            backup: format!("ollama/backup-{id}"),
            capabilities: vec!["fast".into(), "local".into(), "free".into()],
            max_cost_per_job_usd: None,
            memory_limit_mb: None,
            runs_aider: true,
        }
    }

    /// A paid programmer on simulated OpenAI models (priced in the catalog below).
    pub fn paid(id: &str) -> Self {
        Self {
            id: id.into(),
            primary: "openai/gpt-4o".into(),
            backup: "openai/gpt-4o-mini".into(),
            capabilities: vec!["premium".into(), "paid".into()],
            max_cost_per_job_usd: None,
            memory_limit_mb: None,
            runs_aider: true,
        }
    }

    /// The same programmer for a test that runs no aider on it (see [`Self::runs_aider`]).
    pub fn without_aider(self) -> Self {
        Self {
            runs_aider: false,
            ..self
        }
    }
}

/// Settings of a test pool; `Default` gives fast failover suitable for tests.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub programmers: Vec<TestProgrammer>,
    pub strategy: String,
    pub max_queue_per_programmer: u32,
    pub max_concurrent_per_programmer: u32,
    pub health_check_interval_s: u64,
    pub max_retries: u32,
    pub retry_delay_s: f64,
    pub failure_threshold: u32,
    pub window_minutes: f64,
    pub cooldown_minutes: f64,
    pub max_daily_spend_usd: f64,
    pub alert_threshold_usd: f64,
    pub max_cost_per_job_usd: f64,
    pub manager_max_queue: u32,
    pub queue_timeout_s: u64,
    /// aider's per-read timeout (`aider.request_timeout_s`).
    pub request_timeout_s: u64,
    /// Task deadline default (`defaults.timeout_s` and `max_duration_per_job_s`).
    pub task_timeout_s: u64,
    /// `manager.task_lease_s`: how long a programmer runs a task nobody follows.
    pub task_lease_s: u64,
    /// Whether the test runs aider on this pool's programmers. `false` — a test of dry runs,
    /// refusals, routing or status only — starts them with `aider.start: cold`: a warm
    /// programmer's zygote spends ~6 s of CPU importing aider at start-up (0.16 s for the whole
    /// programmer cold), which such a test never uses, on a suite that is CPU-bound
    /// (BENCHMARKS.md, "Test suite time"). A real task dispatched anyway still runs, cold.
    pub runs_aider: bool,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            programmers: vec![TestProgrammer::free("001")],
            strategy: "least_loaded".into(),
            max_queue_per_programmer: 5,
            max_concurrent_per_programmer: 1,
            health_check_interval_s: 1,
            max_retries: 2,
            retry_delay_s: 0.1,
            failure_threshold: 3,
            window_minutes: 10.0,
            cooldown_minutes: 5.0,
            max_daily_spend_usd: 50.0,
            alert_threshold_usd: 40.0,
            max_cost_per_job_usd: 2.5,
            manager_max_queue: 100,
            queue_timeout_s: 120,
            request_timeout_s: 20,
            task_timeout_s: 120,
            task_lease_s: 30,
            runs_aider: true,
        }
    }
}

/// A running child process, killed (SIGKILL) when dropped.
pub struct ChildGuard {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl ChildGuard {
    /// Kills the process now (like `kill -9`) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    /// Waits (up to 60 s) until the child's log holds `text` `times` times.
    pub async fn wait_log(&self, text: &str, times: usize) {
        wait_until(
            Duration::from_secs(60),
            &format!("{text:?} × {times} in {}", self.name),
            || async { self.log_text().matches(text).count() >= times },
        )
        .await;
    }

    /// Sends SIGHUP: the process re-reads its configuration and credential files.
    pub fn hang_up(&self) {
        self.signal(nix::sys::signal::Signal::SIGHUP);
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal);
    }

    /// The child's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How a programmer starts aider (`warm` or `cold`), as its start line says; panics with
    /// the log if the line is not there yet.
    pub fn started_aider(&self) -> String {
        let log = self.log_text();
        log.lines()
            .find(|l| l.contains("programmer started"))
            .and_then(|l| l.split_once("aider_start="))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no start line naming aider_start in {}:\n{log}", self.name))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A test pool on disk; processes are started on demand.
pub struct TestPool {
    pub dir: tempfile::TempDir,
    pub sim: Sim,
    pub options: PoolOptions,
    pub config_path: PathBuf,
    pub workspace_root: PathBuf,
    pub data_dir: PathBuf,
    pub ports: BTreeMap<String, u16>,
    pub manager_port: u16,
    /// The `pas` binary its processes run (this crate's build unless a benchmark compares with
    /// an earlier one).
    pub binary: PathBuf,
    /// `aider.start` in the config: the suite's mode ([`super::aider_start`]) unless a test or
    /// benchmark asks for one ([`TestPool::with_aider_start`]).
    pub aider_start: &'static str,
}

/// A free port on 127.0.0.1 for a process the test starts later.
///
/// Picked below Linux's ephemeral range (32768+): a port bound with `:0` and released comes from
/// that range, where any outgoing connection (aider → llm-sim, manager → programmer) may take it
/// before our process binds it. Below it only explicit binds compete; ports handed out in this
/// test binary are remembered so two pools never get the same one.
pub fn free_port() -> u16 {
    use rand::Rng;
    use std::sync::{Mutex, OnceLock};
    static HANDED_OUT: OnceLock<Mutex<std::collections::HashSet<u16>>> = OnceLock::new();
    let handed = HANDED_OUT.get_or_init(Default::default);
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(20_000..32_000);
        let mut taken = handed.lock().unwrap_or_else(|p| p.into_inner());
        if taken.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return port;
        }
    }
    panic!("no free port in 20000..32000");
}

impl Drop for TestPool {
    fn drop(&mut self) {
        // PAS_TEST_KEEP=1 keeps the directory (config, logs, repos) for a post-mortem.
        if std::env::var_os("PAS_TEST_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!("kept test pool dir: {}", dir.keep().display());
        }
    }
}

impl TestPool {
    /// Writes the config for `options` (ports picked now) and starts the simulator.
    pub fn new(options: PoolOptions) -> Self {
        Self::with_sim(options, Sim::start())
    }

    /// Like [`TestPool::new`] with a simulator started by the caller (e.g. with a script).
    pub fn with_sim(options: PoolOptions, sim: Sim) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let workspace_root = dir.path().join("workspaces");
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&workspace_root).expect("workspace root");
        std::fs::create_dir_all(&data_dir).expect("data dir");
        // Released ports can be handed out again: make the picks distinct.
        let mut picked = std::collections::BTreeSet::new();
        let mut next_port = || loop {
            let port = free_port();
            if picked.insert(port) {
                return port;
            }
        };
        let ports: BTreeMap<String, u16> = options
            .programmers
            .iter()
            .map(|p| (p.id.clone(), next_port()))
            .collect();
        let manager_port = next_port();
        let config_path = dir.path().join("pool.yaml");
        let aider_start = if options.runs_aider {
            super::aider_start()
        } else {
            "cold"
        };
        let pool = Self {
            dir,
            sim,
            options,
            config_path,
            workspace_root,
            data_dir,
            ports,
            manager_port,
            binary: super::pas_binary(),
            aider_start,
        };
        std::fs::write(&pool.config_path, pool.config_yaml()).expect("write config");
        pool
    }

    /// The YAML of this pool's configuration.
    pub fn config_yaml(&self) -> String {
        let o = &self.options;
        let mut y = String::new();
        y.push_str(&format!("pool_size: {}\n", o.programmers.len()));
        y.push_str(&format!(
            "defaults:\n  timeout_s: {t}\n  max_duration_per_job_s: {t}\n  max_cost_per_job_usd: {}\n",
            o.max_cost_per_job_usd,
            t = o.task_timeout_s
        ));
        y.push_str("programmers:\n");
        for p in &o.programmers {
            y.push_str(&format!(
                "  - id: \"{}\"\n    port: {}\n    primary_llm: \"{}\"\n    backup_llm: \"{}\"\n    capabilities: [{}]\n",
                p.id,
                self.ports[&p.id],
                p.primary,
                p.backup,
                p.capabilities.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ")
            ));
            if let Some(c) = p.max_cost_per_job_usd {
                y.push_str(&format!("    max_cost_per_job_usd: {c}\n"));
            }
            if let Some(m) = p.memory_limit_mb {
                y.push_str(&format!("    memory_limit_mb: {m}\n"));
            }
            if !p.runs_aider {
                y.push_str("    aider_start: cold\n");
            }
        }
        y.push_str(&format!(
            "load_balancing:\n  strategy: {}\n  prefer_free_models: true\n  max_queue_per_programmer: {}\n  health_check_interval_s: {}\n  max_concurrent_per_programmer: {}\n",
            o.strategy, o.max_queue_per_programmer, o.health_check_interval_s, o.max_concurrent_per_programmer
        ));
        y.push_str(&format!(
            "failover:\n  enabled: true\n  max_retries: {}\n  retry_delay_s: {}\n  always_failover: true\n  circuit_breaker:\n    enabled: true\n    failure_threshold: {}\n    window_minutes: {}\n    cooldown_minutes: {}\n",
            o.max_retries, o.retry_delay_s, o.failure_threshold, o.window_minutes, o.cooldown_minutes
        ));
        y.push_str(&format!(
            "cost_optimization:\n  enabled: true\n  prefer_free_over_paid: true\n  max_daily_spend_usd: {}\n  alert_threshold_usd: {}\n",
            o.max_daily_spend_usd, o.alert_threshold_usd
        ));
        y.push_str(&format!(
            "manager:\n  host: 127.0.0.1\n  port: {}\n  max_queue: {}\n  queue_timeout_s: {}\n  max_dispatch_attempts: 3\n  task_lease_s: {}\n",
            self.manager_port, o.manager_max_queue, o.queue_timeout_s, o.task_lease_s
        ));
        let base = &self.sim.base;
        y.push_str(&format!(
            "providers:\n  ollama:\n    api_base: \"{base}\"\n  openai:\n    api_base: \"{base}/v1\"\n    api_key_env: PAS_TEST_OPENAI_KEY\n  anthropic:\n    api_base: \"{base}\"\n    api_key_env: PAS_TEST_ANTHROPIC_KEY\n"
        ));
        y.push_str(&format!(
            "aider:\n  python: \"{}\"\n  request_timeout_s: {}\n  start: {}\n",
            aider_python().display(),
            o.request_timeout_s,
            self.aider_start
        ));
        y.push_str(&format!(
            "workspace_root: \"{}\"\ndata_dir: \"{}\"\n",
            self.workspace_root.display(),
            self.data_dir.display()
        ));
        y
    }

    /// The same pool with `aider.start: start` (`warm` or `cold`) whatever the suite's mode, for the
    /// tests and benchmarks that compare the two; call before starting any process.
    pub fn with_aider_start(mut self, start: &'static str) -> Self {
        self.aider_start = start;
        std::fs::write(&self.config_path, self.config_yaml()).expect("write config");
        self
    }

    /// Creates a git repository `name` under the workspace root with `files` and one commit.
    pub fn repo(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let path = self.workspace_root.join(name);
        std::fs::create_dir_all(&path).expect("repo dir");
        for (rel, content) in files {
            let file = path.join(rel);
            std::fs::create_dir_all(file.parent().expect("parent")).expect("parent dir");
            std::fs::write(&file, content).expect("write file");
        }
        super::git(&path, &["init", "-q", "-b", "main"]);
        super::git(&path, &["add", "-A"]);
        super::git(
            &path,
            &[
                "-c",
                "user.name=test",
                "-c",
                "user.email=test@example.com",
                "commit",
                "-q",
                "-m",
                "initial",
            ],
        );
        path
    }

    /// The sample repository most tests use: `sample` with `src/module.py`.
    pub fn sample_repo(&self) -> PathBuf {
        self.repo(
            "sample",
            &[
                ("src/module.py", SAMPLE_MODULE),
                ("README.md", "# sample\n"),
            ],
        )
    }

    fn spawn(&self, name: &str, args: &[&str]) -> (ChildGuard, String) {
        self.spawn_with_prefix(name, &[], args)
    }

    fn spawn_with_prefix(
        &self,
        name: &str,
        prefix: &[std::ffi::OsString],
        args: &[&str],
    ) -> (ChildGuard, String) {
        self.spawn_with_env(name, prefix, args, &[])
    }

    /// `prefix… pas --config … args…` with `env` added: `prefix` (e.g. strace) runs the `pas`
    /// process.
    fn spawn_with_env(
        &self,
        name: &str,
        prefix: &[std::ffi::OsString],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (ChildGuard, String) {
        let log = self.dir.path().join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut cmd = match prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        cmd.arg("--config")
            .arg(&self.config_path)
            .args(args)
            .envs(env.iter().copied())
            .env("PAS_TEST_OPENAI_KEY", "sk-test-openai-secret")
            .env("PAS_TEST_ANTHROPIC_KEY", "sk-ant-test-secret");
        let mut child = server_process(&mut cmd, stderr).spawn().expect("spawn pas");
        let line = first_line_then_drain(&mut child);
        let mut guard = ChildGuard {
            child,
            name: name.into(),
            log,
        };
        let Some((_, addr)) = line.trim().split_once(" listening on ") else {
            guard.kill();
            panic!(
                "{name} did not start: first line {line:?}\n{}",
                guard.log_text()
            );
        };
        (guard, addr.to_string())
    }

    /// Starts programmer `id` on its configured port.
    pub fn start_programmer(&self, id: &str) -> ChildGuard {
        self.start_programmer_with_prefix(id, &[])
    }

    /// Starts programmer `id` under `prefix` (e.g. [`super::strace_prefix_for`] followed by
    /// `setpriv --pdeathsig KILL --`, so the programmer dies with the tracer): what it and the
    /// aider processes it spawns do can be watched.
    pub fn start_programmer_with_prefix(
        &self,
        id: &str,
        prefix: &[std::ffi::OsString],
    ) -> ChildGuard {
        self.spawn_with_prefix(&format!("prog-{id}"), prefix, &["programmer", "--id", id])
            .0
    }

    /// Starts programmer `id` with extra arguments (e.g. `--drain-timeout-s 1`).
    pub fn start_programmer_with_args(&self, id: &str, extra: &[&str]) -> ChildGuard {
        let args = [&["programmer", "--id", id][..], extra].concat();
        self.spawn(&format!("prog-{id}"), &args).0
    }

    /// Starts the manager on its configured port.
    pub fn start_manager(&self) -> ChildGuard {
        self.spawn("manager", &["manager"]).0
    }

    /// Starts the manager under `prefix` (e.g. [`super::traced_prefix`]).
    pub fn start_manager_with_prefix(&self, prefix: &[std::ffi::OsString]) -> ChildGuard {
        self.spawn_with_prefix("manager", prefix, &["manager"]).0
    }

    /// Starts the manager with extra environment (e.g. `LD_PRELOAD` of another allocator).
    pub fn start_manager_with_env(&self, env: &[(&str, &str)]) -> ChildGuard {
        self.spawn_with_env("manager", &[], &["manager"], env).0
    }

    /// Starts the manager with extra arguments after `manager` (e.g. `--admin-port`).
    pub fn start_manager_with_args(&self, args: &[&str]) -> ChildGuard {
        let all: Vec<&str> = std::iter::once("manager")
            .chain(args.iter().copied())
            .collect();
        self.spawn_with_env("manager", &[], &all, &[]).0
    }

    /// Starts every configured programmer (configuration order), then the manager last.
    pub fn start_all(&self) -> Vec<ChildGuard> {
        let mut procs: Vec<ChildGuard> = self
            .options
            .programmers
            .iter()
            .map(|p| self.start_programmer(&p.id))
            .collect();
        procs.push(self.start_manager());
        procs
    }

    /// `pas --config <this pool's config> ARGS…`, with the environment the pool's own processes
    /// get (test API keys set, `PAS_*` overrides removed) and stdin closed: how an operator runs
    /// the CLI against this pool. Convert with `tokio::process::Command::from` for async use.
    pub fn pas_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config")
            .arg(&self.config_path)
            .args(args)
            .env("PAS_TEST_OPENAI_KEY", "sk-test-openai-secret")
            .env("PAS_TEST_ANTHROPIC_KEY", "sk-ant-test-secret")
            .env_remove("PAS_WORKSPACE_ROOT")
            .env_remove("PAS_DATA_DIR")
            .env_remove("PAS_CONFIG")
            .stdin(Stdio::null());
        cmd
    }

    /// The manager's `GET /programmer_pool/status` document; None while it cannot be fetched.
    pub async fn manager_status_json(&self) -> Option<serde_json::Value> {
        let url = format!("{}/programmer_pool/status", self.manager_url());
        reqwest::get(url).await.ok()?.json().await.ok()
    }

    /// Polls the manager's status document until `ready` holds for it; returns that document.
    /// Panics after `timeout` with the last document seen.
    pub async fn wait_manager_status(
        &self,
        timeout: Duration,
        what: &str,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = serde_json::Value::Null;
        loop {
            if let Some(status) = self.manager_status_json().await {
                if ready(&status) {
                    return status;
                }
                last = status;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("timed out after {timeout:?} waiting for {what}; last status: {last}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `http://127.0.0.1:PORT` of programmer `id`.
    pub fn programmer_url(&self, id: &str) -> String {
        format!("http://127.0.0.1:{}", self.ports[id])
    }

    /// `http://127.0.0.1:PORT` of the manager.
    pub fn manager_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.manager_port)
    }
}

/// `cmd` set up as a test's `pas` server: info logs (the shipped default; a benchmark may set
/// `PAS_BENCH_SERVER_LOG` to another `RUST_LOG` filter to measure what logging costs), no `PAS_*`
/// path overrides from the test's own environment, stdin closed, stdout piped (for
/// [`first_line_then_drain`]), stderr to `log`.
pub fn server_process(cmd: &mut Command, log: std::fs::File) -> &mut Command {
    let filter = std::env::var("PAS_BENCH_SERVER_LOG").unwrap_or_else(|_| "info".into());
    cmd.env("RUST_LOG", filter)
        .env_remove("PAS_WORKSPACE_ROOT")
        .env_remove("PAS_DATA_DIR")
        .env_remove("PAS_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
}

/// The first line `child` prints on its piped stdout (a `pas` server prints `… listening on
/// ADDR` once it serves); the rest is drained by a thread so the child never blocks on a full pipe.
pub fn first_line_then_drain(child: &mut Child) -> String {
    let mut reader = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    std::thread::spawn(move || {
        let mut sink = String::new();
        while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    line
}

/// Waits until `check` holds, polling every 50 ms, up to `timeout`; panics with `what` otherwise.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_until_none_left(timeout, what, || {
        let holds = check();
        async move {
            if holds.await {
                Vec::new()
            } else {
                vec!["not yet".to_string()]
            }
        }
    })
    .await;
}

/// Waits until `left` finds nothing (what it returns names what is still missing or still
/// there), polling every 50 ms, up to `timeout`; panics with `what` and its last finding
/// otherwise.
pub async fn wait_until_none_left<F, Fut>(timeout: Duration, what: &str, mut left: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let found = left().await;
        if found.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}: {}",
                found.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sample module: two functions without docstrings.
pub const SAMPLE_MODULE: &str =
    "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n";

/// True when `path` exists.
pub fn exists(path: &Path) -> bool {
    path.exists()
}

// ===== Manager-test helpers =====
//
// Used by `tests/manager_*.rs`: the shipped config's shape, manager and programmer clients, and
// the "exactly one result, seq 1..n" check every Dispatch stream must pass.

use pas::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use pas::contract::v1::task_event::Kind;
use pas::contract::v1::{
    DispatchRequest, GetPoolStatusRequest, PoolStatus, TaskEvent, TaskResult, TaskState,
};
use tonic::transport::Channel;

impl TestProgrammer {
    /// A paid programmer on the simulated Anthropic models, like the shipped 006/007.
    pub fn paid_anthropic(id: &str) -> Self {
        Self {
            id: id.into(),
            primary: "anthropic/claude-sonnet-4-20250514".into(),
            backup: "anthropic/claude-3-7-sonnet-20250219".into(),
            capabilities: vec!["premium".into(), "reasoning".into(), "paid".into()],
            max_cost_per_job_usd: None,
            memory_limit_mb: None,
            runs_aider: true,
        }
    }

    /// This programmer with other capability tags.
    pub fn with_capabilities(mut self, caps: &[&str]) -> Self {
        self.capabilities = caps.iter().map(|c| c.to_string()).collect();
        self
    }
}

/// Ten programmers shaped like the shipped `programmer_pool.yaml`: 001–005 fast/local/free,
/// 006–007 premium/reasoning/paid (Anthropic), 008 premium/openai/paid (OpenAI),
/// 009–010 deepseek/local/free. Model names are per programmer for the free ones, so a simulator
/// script can single one out.
pub fn shipped_shape() -> Vec<TestProgrammer> {
    let mut out: Vec<TestProgrammer> = ["001", "002", "003", "004", "005"]
        .iter()
        .map(|id| TestProgrammer::free(id))
        .collect();
    out.push(TestProgrammer::paid_anthropic("006"));
    out.push(TestProgrammer::paid_anthropic("007"));
    out.push(TestProgrammer::paid("008").with_capabilities(&["premium", "openai", "paid"]));
    for id in ["009", "010"] {
        out.push(TestProgrammer::free(id).with_capabilities(&["deepseek", "local", "free"]));
    }
    out
}

/// `programmers` with aider kept to the ones in `ids` (the others start with
/// `aider_start: cold`, see [`TestProgrammer::runs_aider`]): for a test whose real tasks go to
/// those alone. One that gets a real task anyway still runs it, cold.
pub fn aider_only_on(programmers: Vec<TestProgrammer>, ids: &[&str]) -> Vec<TestProgrammer> {
    programmers
        .into_iter()
        .map(|p| {
            if ids.contains(&p.id.as_str()) {
                p
            } else {
                p.without_aider()
            }
        })
        .collect()
}

/// The shipped config's `capability_routing` section (append with [`TestPool::append_config`]).
pub const SHIPPED_CAPABILITY_ROUTING: &str = "capability_routing:
  fast: [\"001\", \"002\", \"003\", \"004\", \"005\"]
  premium: [\"006\", \"007\", \"008\"]
  reasoning: [\"006\", \"007\", \"008\"]
  free: [\"001\", \"002\", \"003\", \"004\", \"005\", \"009\", \"010\"]
  local: [\"001\", \"002\", \"003\", \"004\", \"005\", \"009\", \"010\"]
  paid: [\"006\", \"007\", \"008\"]
";

/// The programmer ids of the shipped shape that are free / paid.
pub const SHIPPED_FREE: [&str; 7] = ["001", "002", "003", "004", "005", "009", "010"];
pub const SHIPPED_PAID: [&str; 3] = ["006", "007", "008"];

impl TestPool {
    /// Appends top-level YAML (sections the generated config does not write, such as
    /// `capability_routing:` or `llms:`) to the config file. Call before starting processes.
    pub fn append_config(&self, yaml: &str) {
        self.edit_config(|text| text + yaml);
    }

    /// Rewrites the config file: `edit` gets its text and returns the new one (e.g. to add a key
    /// to a section the generated config writes). The file is replaced whole (a rename), so a
    /// running process that re-reads it never sees it half-written.
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config_path).expect("read config");
        let next = self.config_path.with_extension("yaml.next");
        std::fs::write(&next, edit(text)).expect("write config");
        std::fs::rename(&next, &self.config_path).expect("replace config");
    }

    /// Adds `key: value` to programmer `id`'s entry (a per-programmer override such as
    /// `max_fix_iterations: 1`). Call before starting processes.
    pub fn set_programmer_key(&self, id: &str, key: &str, value: &str) {
        let entry = format!("  - id: \"{id}\"\n");
        self.edit_config(|text| {
            assert!(text.contains(&entry), "no programmer {id} in the config");
            text.replacen(&entry, &format!("{entry}    {key}: {value}\n"), 1)
        });
    }

    /// Every configured programmer id, in configuration order.
    pub fn ids(&self) -> Vec<String> {
        self.options
            .programmers
            .iter()
            .map(|p| p.id.clone())
            .collect()
    }

    /// Starts the given programmers; the guards are keyed by id.
    /// Runs `pas ARGS` on this pool's configuration to its exit and returns what it printed: for
    /// a process expected to refuse to start. The 120 s are only a guard against hanging.
    pub async fn run_until_exit(&self, args: &[&str]) -> std::process::Output {
        let run = tokio::process::Command::from(self.pas_command(args))
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(Duration::from_secs(120), run)
            .await
            .unwrap_or_else(|_| panic!("pas {args:?} did not exit by itself"))
            .unwrap_or_else(|e| panic!("run pas {args:?}: {e}"))
    }

    pub fn start_programmers(&self, ids: &[&str]) -> BTreeMap<String, ChildGuard> {
        ids.iter()
            .map(|id| (id.to_string(), self.start_programmer(id)))
            .collect()
    }

    /// Starts every configured programmer.
    pub fn start_all_programmers(&self) -> BTreeMap<String, ChildGuard> {
        let ids = self.ids();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.start_programmers(&ids)
    }

    /// Pids of processes (aider and its children) still working inside any programmer's
    /// worktrees under the data dir.
    pub fn processes_in_worktrees(&self) -> Vec<i32> {
        let dir = self.data_dir.join("programmers");
        if !dir.exists() {
            return Vec::new();
        }
        super::processes_in_dir(&dir)
    }

    /// Waits (up to `timeout`) until no process works inside a programmer's worktrees; returns
    /// the pids still there (empty when all ended).
    pub async fn wait_worktree_processes_gone(&self, timeout: Duration) -> Vec<i32> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = self.processes_in_worktrees();
            if left.is_empty() || tokio::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A client of the test pool's manager.
pub async fn manager_client(pool: &TestPool) -> ProgrammerPoolClient<Channel> {
    ProgrammerPoolClient::connect(pool.manager_url())
        .await
        .expect("connect to the manager")
}

/// Starts programmer `001` and the manager, and waits until the manager counts it available:
/// the pool most single-task tests need. Keep both guards alive for the test.
pub async fn start_one(pool: &TestPool) -> (ChildGuard, ChildGuard, ProgrammerPoolClient<Channel>) {
    let programmer = pool.start_programmer("001");
    let manager = pool.start_manager();
    let client = manager_client(pool).await;
    wait_available(&client, 1).await;
    (programmer, manager, client)
}

/// `GetPoolStatus`.
pub async fn pool_status(c: &ProgrammerPoolClient<Channel>) -> PoolStatus {
    c.clone()
        .get_pool_status(GetPoolStatusRequest {})
        .await
        .expect("GetPoolStatus")
        .into_inner()
}

/// Waits (up to `timeout`) until the manager's `GetPoolStatus` satisfies `holds`; panics naming
/// `what` otherwise. A status call that fails (the manager still starting) counts as not yet.
pub async fn wait_pool(
    c: &ProgrammerPoolClient<Channel>,
    timeout: Duration,
    what: &str,
    holds: impl Fn(&PoolStatus) -> bool,
) {
    let holds = &holds;
    wait_until(timeout, what, || {
        let mut c = c.clone();
        async move {
            c.get_pool_status(GetPoolStatusRequest {})
                .await
                .is_ok_and(|s| holds(s.get_ref()))
        }
    })
    .await;
}

/// Waits (up to 20 s) until the manager counts exactly `n` programmers available.
pub async fn wait_available(c: &ProgrammerPoolClient<Channel>, n: u32) {
    wait_pool(
        c,
        Duration::from_secs(20),
        &format!("{n} programmers available"),
        |s| s.available == n,
    )
    .await;
}

/// Waits until `n` programmers are available and each has sent the manager its own status report
/// (its circuit state is known). Availability comes from the health check, the report from a
/// separate poll, so a snapshot taken after [`wait_available`] alone may still change.
pub async fn wait_reported(c: &ProgrammerPoolClient<Channel>, n: u32) {
    use pas::contract::v1::CircuitState;
    wait_pool(
        c,
        Duration::from_secs(20),
        &format!("{n} programmers available and reported"),
        |s| {
            s.available == n
                && s.programmers
                    .iter()
                    .all(|p| p.circuit_state != CircuitState::Unspecified as i32)
        },
    )
    .await;
}

/// Dispatches `req` and returns once it was admitted (its first event arrived; the stream is
/// then followed in the background so the task stays followed) or refused.
pub async fn admit(
    c: &ProgrammerPoolClient<Channel>,
    req: impl tonic::IntoRequest<DispatchRequest>,
) -> Result<(), tonic::Status> {
    let mut stream = c.clone().dispatch(req).await?.into_inner();
    let first = stream.message().await?;
    assert!(
        first.is_some(),
        "an admitted task's stream starts with an event"
    );
    // Drained, not checked: its first event was read here.
    tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
    Ok(())
}

/// A pool with the sample repository whose tasks may wait 600 s in the manager's queue and whose
/// model calls may hang as long: far beyond the tests' own waits, so a task that ends in time was
/// placed by what the test shows, not by a timeout.
pub fn patient_pool(options: PoolOptions, sim: Sim) -> TestPool {
    let pool = TestPool::with_sim(
        PoolOptions {
            request_timeout_s: 600,
            task_timeout_s: 600,
            queue_timeout_s: 600,
            ..options
        },
        sim,
    );
    pool.sample_repo();
    pool
}

/// Reads a task stream to its end and checks the contract every stream must keep: exactly one
/// result, it is the last event, and `seq` runs 1..n. Returns every event but heartbeats (seq 0,
/// sent while a followed task is quiet, e.g. waiting in a queue) and the result.
pub async fn collect_events(
    mut stream: tonic::Streaming<TaskEvent>,
) -> (Vec<TaskEvent>, TaskResult) {
    use pas::contract::v1::task_event::Kind;
    let mut events = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(ev)) if matches!(ev.kind, Some(Kind::Heartbeat(_))) => {}
            Ok(Some(ev)) => events.push(ev),
            Ok(None) => break,
            Err(status) => panic!("task stream broke: {status:?}\nevents so far: {events:#?}"),
        }
    }
    let result = check_stream(&events);
    (events, result)
}

/// Dispatches `req` through the manager and reads its stream to the end (see [`collect_events`]).
pub async fn dispatch_collect(
    c: &ProgrammerPoolClient<Channel>,
    req: DispatchRequest,
) -> (Vec<TaskEvent>, TaskResult) {
    let stream = c
        .clone()
        .dispatch(req)
        .await
        .expect("Dispatch accepted")
        .into_inner();
    collect_events(stream).await
}

/// A request on the sample repository (`src/module.py`).
pub fn sample_dispatch(description: &str) -> DispatchRequest {
    DispatchRequest {
        task_description: description.into(),
        files: vec!["src/module.py".into()],
        workspace: "sample".into(),
        run_id: "run-mgr".into(),
        ..Default::default()
    }
}

/// The result's state.
pub fn state_of(result: &TaskResult) -> TaskState {
    TaskState::try_from(result.status).unwrap_or(TaskState::Unspecified)
}

/// The programmer ids named by `Assigned` events, in order.
pub fn assigned_ids(events: &[TaskEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Assigned(a)) => Some(a.programmer_id.clone()),
            _ => None,
        })
        .collect()
}

/// Awaits a spawned task stream (see [`collect_events`]) for up to `timeout` and asserts it
/// succeeded on `to` after exactly one reroute, from `from`; returns that `Rerouted` event.
/// `context` (e.g. a process log) is printed when it did not.
pub async fn expect_one_reroute(
    task: tokio::task::JoinHandle<(Vec<TaskEvent>, TaskResult)>,
    timeout: Duration,
    (from, to): (&str, &str),
    context: impl Fn() -> String,
) -> pas::contract::v1::Rerouted {
    let (events, result) = tokio::time::timeout(timeout, task)
        .await
        .unwrap_or_else(|_| panic!("the task did not end within {timeout:?}\n{}", context()))
        .expect("task join");
    check_stream(&events);
    assert_eq!(
        state_of(&result),
        TaskState::Succeeded,
        "{result:#?}\n{}",
        context()
    );
    assert_eq!(result.programmer_id, to);
    // Every dispatch attempt keeps its result under the caller's id, never its own.
    let task_id = &events.first().expect("events").task_id;
    let name = pas::programmer::worktree::sanitize_task_id(task_id).expect("task id");
    assert_eq!(result.branch, format!("pas/{name}"), "{result:#?}");
    let hops = rerouted(&events);
    assert_eq!(hops.len(), 1, "{hops:?}");
    assert_eq!(
        (
            hops[0].from_programmer.as_str(),
            hops[0].to_programmer.as_str()
        ),
        (from, to)
    );
    hops[0].clone()
}

/// The `Rerouted` events, in order.
pub fn rerouted(events: &[TaskEvent]) -> Vec<pas::contract::v1::Rerouted> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Rerouted(r)) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

/// The `Escalated` events, in order.
pub fn escalated(events: &[TaskEvent]) -> Vec<pas::contract::v1::Escalated> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Escalated(x)) => Some(pas::contract::v1::Escalated::clone(x)),
            _ => None,
        })
        .collect()
}

/// The `Queued` events, in order.
pub fn queued(events: &[TaskEvent]) -> Vec<pas::contract::v1::Queued> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Queued(q)) => Some(q.clone()),
            _ => None,
        })
        .collect()
}

// ===== programmer helpers (used by tests/programmer_*.rs) =====

/// A `pas.v1.Programmer` client over a fresh connection.
pub type ProgrammerClient =
    pas::contract::v1::programmer_client::ProgrammerClient<tonic::transport::Channel>;

impl ChildGuard {
    /// Waits up to `timeout` for the process to exit by itself; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The pid of the process started under [`super::traced_prefix`] (the tracer's child), which
    /// is also the thread id of its main thread in the trace.
    pub fn traced_pid(&self) -> i32 {
        *children_of(self.pid())
            .first()
            .unwrap_or_else(|| panic!("{} has no traced process", self.name))
    }

    /// Stops a process started under [`super::traced_prefix`]: SIGKILL to the traced process
    /// (the tracer's child), then strace exits with its last tracee, its log complete.
    pub fn stop_traced(&mut self) {
        for pid in children_of(self.pid()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert!(
            self.wait_exit(Duration::from_secs(30)).is_some(),
            "strace did not end after {}",
            self.name
        );
    }
}

/// Pids whose parent is `pid`.
fn children_of(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

impl TestPool {
    /// Connects to programmer `id`.
    pub async fn programmer_client(&self, id: &str) -> ProgrammerClient {
        ProgrammerClient::connect(self.programmer_url(id))
            .await
            .unwrap_or_else(|e| panic!("connect to programmer {id}: {e}"))
    }

    /// `GET /health` of programmer `id` (HTTP/1.1 JSON on the gRPC port).
    pub async fn programmer_health(&self, id: &str) -> serde_json::Value {
        let url = format!("{}/health", self.programmer_url(id));
        let resp = reqwest::get(&url)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
        resp.json().await.expect("/health JSON")
    }

    /// Where programmer `id` creates its task worktrees.
    pub fn worktrees_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("programmers").join(id).join("worktrees")
    }
}

/// Runs one task on a programmer to its end; returns every event and the result. Asserts the
/// stream invariants every task must keep: seq numbers 1..n in order, exactly one result, and the
/// result is the last event.
pub async fn execute_task(
    client: &mut ProgrammerClient,
    req: pas::contract::v1::TaskRequest,
) -> (
    Vec<pas::contract::v1::TaskEvent>,
    pas::contract::v1::TaskResult,
) {
    let stream = client
        .execute(req)
        .await
        .unwrap_or_else(|s| panic!("Execute refused: {s:?}"))
        .into_inner();
    collect_task(stream).await
}

/// Reads an Execute stream to its end and checks the invariants of [`execute_task`].
pub async fn collect_task(
    mut stream: tonic::Streaming<pas::contract::v1::TaskEvent>,
) -> (
    Vec<pas::contract::v1::TaskEvent>,
    pas::contract::v1::TaskResult,
) {
    let mut events = Vec::new();
    while let Some(ev) = stream.message().await.expect("the event stream breaks off") {
        events.push(ev);
    }
    let result = check_stream(&events);
    (events, result)
}

/// The stream invariants (see [`execute_task`]); returns the result.
pub fn check_stream(events: &[pas::contract::v1::TaskEvent]) -> pas::contract::v1::TaskResult {
    use pas::contract::v1::task_event::Kind;
    let results: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Result(r)) => Some(pas::contract::v1::TaskResult::clone(r)),
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 1, "exactly one result: {events:#?}");
    assert!(
        matches!(
            events.last().and_then(|e| e.kind.as_ref()),
            Some(Kind::Result(_))
        ),
        "the result is the last event: {events:#?}"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "seq numbers 1..n in order"
    );
    results.into_iter().next().expect("one result")
}

/// Asserts that a task failed with `class` (the result is printed when not).
#[track_caller]
pub fn assert_failed_with(
    result: &pas::contract::v1::TaskResult,
    class: pas::contract::v1::ErrorClass,
) {
    use pas::contract::v1::{ErrorClass, TaskState};
    assert_eq!(
        (
            TaskState::try_from(result.status),
            ErrorClass::try_from(result.error_class)
        ),
        (Ok(TaskState::Failed), Ok(class)),
        "{result:#?}"
    );
}

/// The Failover events of a task.
pub fn failovers(events: &[pas::contract::v1::TaskEvent]) -> Vec<pas::contract::v1::Failover> {
    use pas::contract::v1::task_event::Kind;
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Failover(f)) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

/// All streamed output of a task, concatenated in order.
pub fn output_text(events: &[pas::contract::v1::TaskEvent]) -> String {
    use pas::contract::v1::task_event::Kind;
    events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Output(o)) => Some(o.text.as_str()),
            _ => None,
        })
        .collect()
}

/// Every branch programmers made in a repository: kept results (`pas/*`) and the scratch branches
/// of attempts still running or left by a killed programmer (`pas-work/*`).
pub fn task_branches(repo: &Path) -> Vec<String> {
    super::git(
        repo,
        &[
            "for-each-ref",
            "--format=%(refname:short)",
            "refs/heads/pas/",
            "refs/heads/pas-work/",
        ],
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// Lines of `git worktree list` (1 = only the main checkout).
pub fn worktree_count(repo: &Path) -> usize {
    super::git(repo, &["worktree", "list", "--porcelain"])
        .lines()
        .filter(|l| l.starts_with("worktree "))
        .count()
}

/// A task request on workspace `workspace` editing `files`.
pub fn task_request(
    workspace: &str,
    description: &str,
    files: &[&str],
) -> pas::contract::v1::TaskRequest {
    pas::contract::v1::TaskRequest {
        task_description: description.into(),
        files: files.iter().map(|f| f.to_string()).collect(),
        workspace: workspace.into(),
        run_id: "run-test".into(),
        ..Default::default()
    }
}

/// The models named in the simulator's request log, with the kind of each request
/// (`edit_diff`, `edit_whole`, `commit_message`) and the fault injected, in order.
pub async fn sim_requests(sim: &Sim) -> Vec<(String, String, String)> {
    let log = sim.requests().await;
    let entries = log
        .as_array()
        .or_else(|| log.get("requests").and_then(|r| r.as_array()))
        .cloned()
        .unwrap_or_else(|| panic!("unexpected /_sim/requests shape: {log}"));
    entries
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (s("model"), s("kind"), s("fault"))
        })
        .collect()
}

/// How many edit requests (not commit messages) the simulator got for `model` (wire name).
/// Waits until the simulator has seen a request for `model`, i.e. aider on that model's
/// programmer is really waiting on its LLM. Bounded at 240 s: aider starts slowly under load,
/// and 60 s was exceeded twice on 2026-12-06 (`manager_budget`, beside its sibling test's 200
/// concurrent paid tasks on a 2-core machine whose cores were saturated).
pub async fn wait_for_model_call(sim: &Sim, model: &str) {
    wait_until(
        Duration::from_secs(240),
        &format!("aider to call {model}"),
        || async { sim_requests(sim).await.iter().any(|(m, _, _)| m == model) },
    )
    .await;
}

pub async fn sim_edit_requests(sim: &Sim, model: &str) -> usize {
    sim_requests(sim)
        .await
        .iter()
        .filter(|(m, kind, _)| m == model && kind.starts_with("edit"))
        .count()
}
