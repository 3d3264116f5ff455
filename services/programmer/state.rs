//! The state one programmer process keeps: its configuration, queue, breaker and counters, and
//! the status it reports (GetStatus and `GET /health` share one snapshot).

use crate::config::{
    AiderStart, CircuitBreakerConfig, Config, Durability, Failover, ProgrammerSpec,
};
use crate::contract::circuit_name;
use crate::contract::v1::{CircuitState, LlmState, ProgrammerStatus};
use crate::programmer::breaker::{
    Breaker, BreakerPolicy, BreakerSnapshot, BreakerState, BreakerStore,
};
use crate::programmer::queue::TaskQueue;
use crate::programmer::runs::TaskRuns;
use crate::programmer::warm::WarmPool;
use crate::programmer::worktree::GitIdentity;
use crate::task_sources::{CurrentSources, TaskSources};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How aider is run (from the config's `aider:` section).
#[derive(Debug, Clone)]
pub struct AiderSettings {
    pub python: PathBuf,
    /// `aider.nice`, applied by the launcher.
    pub nice: u8,
    /// The warm workers (`aider.start: warm`, or the programmer's own `aider_start`), started
    /// by [`Programmer::start_warm_workers`]; `None` when cold.
    pub warm: Option<Arc<WarmPool>>,
}

/// The keys of the configuration file a running programmer applies when it re-reads the file
/// (each task reads them once, as it starts: [`Programmer::live`]). Every other changed key is
/// named in a warning as read only at start-up.
pub const LIVE_KEYS: &[&str] = &[
    // What resolves the programmer's own entry (`Config::programmer_with`).
    "programmers",
    "defaults",
    "llms",
    "providers",
    "capability_routing",
    "failover.enabled",
    "failover.max_retries",
    "failover.retry_delay_s",
    "failover.always_failover",
    "failover.failure_conditions",
    "failover.circuit_breaker",
    "aider.extra_flags",
    "aider.request_timeout_s",
    // Defaults of the entry's LLMs and limits: they resolve into it as the entry does.
    "aider.edit_format",
    "aider.memory_limit_mb",
    // Where tasks' code comes from (`task_sources`): tasks validated afterwards use them.
    "workspace_root",
    "repositories",
    // The queue's bounds (`TaskQueue::set_limits`).
    "load_balancing.max_concurrent_per_programmer",
    "load_balancing.max_queue_per_programmer",
    // The share of new traces recorded (`telemetry::set_sample_ratio`).
    "telemetry.sample_ratio",
    // How long a task may go unfollowed (`LiveSettings::lease`), shared with the manager.
    "manager.task_lease_s",
];

/// The settings a programmer reads only as it starts, as `config` resolves them for one
/// programmer: what `pas up` compares to decide that a programmer must restart to apply a re-read
/// file ([`StartupSettings::changed`]). [`Programmer::new`] takes its own from here, so the two
/// cannot drift; the pool-wide ones at the end (which the manager reads too) are read as the
/// process starts (TLS files, the HTTP/2 bound, the trace sampling). Not here: the data dir,
/// which `pas up` itself keeps its files in (a move takes `pas restart`).
#[derive(Debug, Clone, PartialEq)]
pub struct StartupSettings {
    /// `aider.python` (or `PAS_AIDER_PYTHON`), resolved.
    pub aider_python: PathBuf,
    /// `aider.version`: checked against the installed aider as the programmer starts.
    pub aider_version: String,
    /// `aider.nice`.
    pub aider_nice: u8,
    /// The programmer's own `aider_start`, else `aider.start`.
    pub aider_start: AiderStart,
    /// How many warm workers it keeps when it starts warm: `aider.warm_workers`, else its
    /// concurrency (so a warm programmer without `aider.warm_workers` restarts for a new
    /// `load_balancing.max_concurrent_per_programmer`); `None` when it starts cold.
    pub warm_workers: Option<usize>,
    /// `durability`: what its reported results survive.
    pub durability: Durability,
    /// The `tls:` section (the files are re-read while it runs; their paths are not).
    pub tls: Option<crate::config::TlsConfig>,
    /// `limits.http2_max_concurrent_streams`.
    pub http2_max_concurrent_streams: u32,
}

impl StartupSettings {
    /// The settings `config` gives programmer `spec` (its entry as resolved, flags included).
    pub fn of(config: &Config, spec: &ProgrammerSpec) -> Self {
        let aider = &config.pool.aider;
        Self {
            aider_python: config.aider_python(),
            aider_version: aider.version.clone(),
            aider_nice: aider.nice,
            aider_start: spec.aider_start,
            warm_workers: (spec.aider_start == AiderStart::Warm).then(|| {
                aider
                    .warm_workers
                    .map_or(queue_bounds(config).0, |w| w as usize)
            }),
            durability: config.pool.durability,
            tls: config.pool.tls.clone(),
            http2_max_concurrent_streams: config.pool.limits.http2_max_concurrent_streams,
        }
    }

    /// The keys (as written in the file) whose settings differ between `self` and `other`, in
    /// the file's order; empty when a programmer started with one runs as with the other.
    pub fn changed(&self, other: &Self) -> Vec<&'static str> {
        crate::config::diff::differing([
            ("aider.python", self.aider_python != other.aider_python),
            ("aider.version", self.aider_version != other.aider_version),
            ("aider.nice", self.aider_nice != other.aider_nice),
            ("aider.start", self.aider_start != other.aider_start),
            (
                "aider.warm_workers",
                // Between cold and warm, `aider.start` names the change.
                self.warm_workers
                    .zip(other.warm_workers)
                    .is_some_and(|(a, b)| a != b),
            ),
            ("durability", self.durability != other.durability),
            ("tls", self.tls != other.tls),
            (
                "limits.http2_max_concurrent_streams",
                self.http2_max_concurrent_streams != other.http2_max_concurrent_streams,
            ),
        ])
    }
}

/// What a programmer reads only at start-up beyond its [`StartupSettings`]: its data dir and
/// its address. A rolling restart does not apply them (`pas up` keeps its files in the data dir
/// and starts a programmer on the address it had), so they are not in the rollout's comparison,
/// but a change of either still waits for a restart: the warning and
/// `pas_config_restart_pending` name it ([`RestartOnly::changed`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RestartOnly {
    data_dir: PathBuf,
    address: (String, u16),
}

impl RestartOnly {
    /// Programmer `spec`'s in `config`.
    pub fn of(config: &Config, spec: &ProgrammerSpec) -> Self {
        Self {
            data_dir: config.data_dir(),
            address: (spec.host.clone(), spec.port),
        }
    }

    /// The keys whose settings differ between `self` and `other`.
    pub fn changed(&self, other: &Self) -> Vec<&'static str> {
        crate::config::diff::differing([
            ("data_dir", self.data_dir != other.data_dir),
            ("its host / port", self.address != other.address),
        ])
    }
}

/// `load_balancing.max_concurrent_per_programmer` and `max_queue_per_programmer`: the queue's
/// bounds, which follow a re-read file ([`TaskQueue::set_limits`]).
fn queue_bounds(config: &Config) -> (usize, usize) {
    let lb = &config.pool.load_balancing;
    (
        lb.max_concurrent_per_programmer as usize,
        lb.max_queue_per_programmer as usize,
    )
}

/// The settings of [`LIVE_KEYS`] as one value: a task's attempts all run under the one its task
/// started with.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSettings {
    /// Attempts, retry pause and the failure classes that fail over; its `circuit_breaker` is
    /// put in force on the breaker ([`Breaker::set_policy`]).
    pub failover: Failover,
    /// `aider.extra_flags`.
    pub extra_flags: Vec<String>,
    /// `aider.request_timeout_s`.
    pub request_timeout_s: u64,
    /// The programmer's entry as resolved from the file and its flags: the LLMs a task uses, the
    /// limits it runs under, and what GetStatus reports (its address is the one it started on).
    pub spec: ProgrammerSpec,
    /// `manager.task_lease_s`: how long a task may go unfollowed before it is stopped and handed
    /// back (a task keeps the lease it started with).
    pub lease: Duration,
}

impl LiveSettings {
    /// The live settings `config` gives, with the programmer's entry `spec` resolved from it.
    pub fn of(config: &Config, spec: ProgrammerSpec) -> Self {
        let pool = &config.pool;
        Self {
            failover: pool.failover.clone(),
            extra_flags: pool.aider.extra_flags.clone(),
            request_timeout_s: pool.aider.request_timeout_s,
            spec,
            lease: Duration::from_secs(pool.manager.task_lease_s),
        }
    }
}

/// The breaker's policy from the `circuit_breaker:` section.
fn breaker_policy(cb: &CircuitBreakerConfig) -> BreakerPolicy {
    BreakerPolicy {
        enabled: cb.enabled,
        failure_threshold: cb.failure_threshold,
        window: Duration::from_secs_f64(cb.window_minutes * 60.0),
        cooldown: Duration::from_secs_f64(cb.cooldown_minutes * 60.0),
    }
}

/// The LLM of `spec` a new task would use with the breaker as in `snap`, and whether it is the
/// backup.
fn current_llm_of(spec: &ProgrammerSpec, snap: &BreakerSnapshot) -> (String, bool) {
    if snap.using_backup {
        (spec.backup.name.clone(), true)
    } else {
        (spec.primary.name.clone(), false)
    }
}

/// Counters since start, reported in GetStatus.
#[derive(Debug, Default)]
pub struct Counters {
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub failovers: AtomicU64,
    pub cancelled: AtomicU64,
}

/// Errors while setting a programmer up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot prepare the warm aider workers: {0}")]
    Warm(#[source] std::io::Error),
}

/// One programmer's live state, shared by its gRPC handlers and task drivers.
#[derive(Debug)]
pub struct Programmer {
    /// The entry as the programmer started: its id, agent and address (which a running process
    /// keeps). Its LLMs, limits and capabilities as in force now are `live().spec`.
    pub spec: ProgrammerSpec,
    /// What a re-read configuration file changes while the programmer runs (see [`LIVE_KEYS`]).
    live: std::sync::RwLock<Arc<LiveSettings>>,
    pub aider: AiderSettings,
    /// The workspace root and `repositories:` in force (a task takes them once, as it is
    /// validated): [`Programmer::sources`].
    sources: CurrentSources,
    /// Task worktrees live here (outside every repository).
    pub worktrees_dir: PathBuf,
    /// Private HOMEs and other per-attempt scratch files.
    pub scratch_dir: PathBuf,
    pub breaker: Breaker,
    breaker_store: BreakerStore,
    pub queue: TaskQueue,
    pub counters: Counters,
    started: Instant,
    draining: AtomicBool,
    /// The port actually bound (differs from the config when started with `--port 0`).
    pub port: u16,
    /// Cancelled at the end of a drain: every running task then stops.
    pub shutdown: CancellationToken,
    /// Every task driver, so a drain can wait for them.
    pub tasks: TaskTracker,
    /// The accepted tasks by id: event logs (journaled), cancellation, lease.
    pub runs: Arc<TaskRuns>,
    /// Tasks a previous process left running, handed back at start-up.
    pub interrupted_on_start: usize,
    /// What a reported result survives (`durability`): with `power_loss` its event file and
    /// its commits and kept branch are synced before it is reported.
    pub durability: Durability,
}

impl Programmer {
    /// The live settings in force now (see [`LIVE_KEYS`]): read once per task.
    pub fn live(&self) -> Arc<LiveSettings> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The workspace root and `repositories:` in force now: read once per task, as it is
    /// validated, and kept for its whole life.
    pub fn sources(&self) -> Arc<TaskSources> {
        self.sources.get()
    }

    /// Puts the live settings of a re-read `config` (with the programmer's entry `spec` resolved
    /// from it) in force for the tasks that start from now, and its `circuit_breaker` on the
    /// breaker (saved, as every change of it is). A new primary LLM starts with a closed breaker:
    /// the failures counted were the old one's. The address stays the one it started on. A new
    /// workspace root or `repositories:` section applies to the tasks validated from now.
    pub fn set_live(&self, config: &Config, mut spec: ProgrammerSpec) {
        if (spec.host.as_str(), spec.port) != (self.spec.host.as_str(), self.spec.port) {
            tracing::warn!(programmer = %self.spec.id, "the programmer's address changed in the configuration: it applies when the process restarts");
            spec.host.clone_from(&self.spec.host);
            spec.port = self.spec.port;
        }
        let live = LiveSettings::of(config, spec);
        let before = self.live();
        if live.spec.primary.name != before.spec.primary.name {
            tracing::info!(programmer = %self.spec.id, from = %before.spec.primary.name,
                to = %live.spec.primary.name, "primary LLM changed: the breaker starts closed");
            self.breaker.forget();
        }
        self.breaker
            .set_policy(breaker_policy(&live.failover.circuit_breaker));
        self.persist_breaker();
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
        if crate::telemetry::set_sample_ratio(config.pool.telemetry.sample_ratio) {
            tracing::info!(programmer = %self.spec.id, sample_ratio = config.pool.telemetry.sample_ratio,
                "trace sampling changed: new traces from now");
        }
        let (running, waiting) = queue_bounds(config);
        if self.queue.set_limits(running, waiting) {
            tracing::info!(programmer = %self.spec.id, max_concurrent = running, max_queue = waiting,
                "queue bounds changed: waiting tasks that fit start now; running and waiting ones stay");
        }
        if self.sources.follow(config) {
            let sources = self.sources();
            tracing::info!(programmer = %self.spec.id, workspace_root = %sources.workspaces.root().display(),
                repositories = sources.mirrors.is_some(), "task sources changed: tasks validated from now use them");
        }
    }

    /// Sets up programmer `spec` (from the file and the flags, see
    /// [`Config::programmer_with`]) with `config`'s pool settings, serving on `port`; restores
    /// its breaker from the data dir.
    pub fn new(config: &Config, spec: ProgrammerSpec, port: u16) -> Result<Self, SetupError> {
        let own_dir = config.data_dir().join("programmers").join(&spec.id);
        let worktrees_dir = own_dir.join("worktrees");
        let scratch_dir = own_dir.join("scratch");
        for dir in [&worktrees_dir, &scratch_dir] {
            std::fs::create_dir_all(dir).map_err(|source| SetupError::Dir {
                path: dir.clone(),
                source,
            })?;
        }
        let pool = &config.pool;
        let startup = StartupSettings::of(config, &spec);
        let policy = breaker_policy(&pool.failover.circuit_breaker);
        let breaker_store = BreakerStore::new(own_dir.join("breaker.json"));
        let events_dir = own_dir.join("events");
        let (runs, interrupted_on_start) =
            TaskRuns::open_with(events_dir.clone(), &spec.id, startup.durability).map_err(
                |source| SetupError::Dir {
                    path: events_dir,
                    source,
                },
            )?;
        let breaker = match breaker_store.load() {
            Some(saved) => Breaker::restore(policy, saved),
            None => Breaker::new(policy),
        };
        let warm = match startup.warm_workers {
            None => None,
            Some(workers) => Some(Arc::new(
                WarmPool::new(
                    startup.aider_python.clone(),
                    workers,
                    startup.aider_nice,
                    crate::programmer::aider::neutral_environment,
                )
                .map_err(SetupError::Warm)?,
            )),
        };
        Ok(Self {
            live: std::sync::RwLock::new(Arc::new(LiveSettings::of(config, spec.clone()))),
            aider: AiderSettings {
                python: startup.aider_python,
                nice: startup.aider_nice,
                warm,
            },
            sources: CurrentSources::of(config),
            worktrees_dir,
            scratch_dir,
            breaker,
            breaker_store,
            queue: {
                let (running, waiting) = queue_bounds(config);
                TaskQueue::new(running, waiting)
            },
            counters: Counters::default(),
            started: Instant::now(),
            draining: AtomicBool::new(false),
            port,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            runs: Arc::new(runs),
            interrupted_on_start,
            durability: startup.durability,
            spec,
        })
    }

    /// Brings the warm aider workers up in the background (`aider.start: warm`); attempts start
    /// cold until they are ready (or wait for a zygote still importing).
    pub fn start_warm_workers(&self) {
        if let Some(warm) = &self.aider.warm {
            warm.start();
        }
    }

    /// Who this programmer's commits are attributed to.
    pub fn git_identity(&self) -> GitIdentity {
        GitIdentity {
            name: self.spec.agent.clone(),
            email: format!("prog-{}@programmer-pool.local", self.spec.id),
        }
    }

    /// Writes the breaker's state to the data dir so a restart keeps it (best effort, logged).
    pub fn persist_breaker(&self) {
        if let Err(e) = self.breaker_store.save_breaker(&self.breaker) {
            tracing::warn!(programmer = %self.spec.id, "could not save the breaker state: {e}");
        }
    }

    /// Stops accepting tasks (Execute answers UNAVAILABLE, health reports draining).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// True once draining started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The LLM a new task would use now and whether it is the backup.
    pub fn current_llm(&self) -> (String, bool) {
        current_llm_of(&self.live().spec, &self.breaker.snapshot())
    }

    /// The status GetStatus returns and `/health` renders.
    pub fn status(&self) -> ProgrammerStatus {
        let snap = self.breaker.snapshot();
        let depth = self.queue.depth();
        let (max_running, max_waiting) = self.queue.limits();
        let circuit_state = match snap.state {
            BreakerState::Closed => CircuitState::Closed,
            BreakerState::Open => CircuitState::Open,
            BreakerState::HalfOpen => CircuitState::HalfOpen,
        };
        let live = self.live();
        let spec = &live.spec;
        let (current, using_backup) = current_llm_of(spec, &snap);
        ProgrammerStatus {
            status: if self.is_draining() { "draining" } else { "ok" }.into(),
            agent: self.spec.agent.clone(),
            programmer_id: self.spec.id.clone(),
            port: u32::from(self.port),
            llm: Some(LlmState {
                current,
                primary: spec.primary.name.clone(),
                backup: spec.backup.name.clone(),
                using_backup,
                circuit_open: snap.state != BreakerState::Closed,
                failures: snap.failures_in_window,
                circuit_state: circuit_state as i32,
                cooldown_remaining_ms: snap.cooldown_remaining.map_or(0, |d| d.as_millis() as u64),
            }),
            capabilities: spec.capabilities.iter().cloned().collect(),
            queue_depth: depth.waiting as u32,
            running: depth.running as u32,
            max_queue: max_waiting as u32,
            max_concurrent: max_running as u32,
            completed: self.counters.completed.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            failovers: self.counters.failovers.load(Ordering::Relaxed),
            cancelled: self.counters.cancelled.load(Ordering::Relaxed),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            region: spec.region.clone(),
            paid: spec.paid,
            max_cost_per_job_nanousd: crate::money::Usd::from_usd(spec.limits.max_cost_per_job_usd)
                .map_or(0, |u| u.to_contract()),
        }
    }
}

/// The `/health` JSON: the original shape (`status, agent, programmer_id, port, llm{…}, capabilities`)
/// plus queue and counters.
pub fn health_json(s: &ProgrammerStatus) -> serde_json::Value {
    let llm = s.llm.clone().unwrap_or_default();
    let circuit = CircuitState::try_from(llm.circuit_state).unwrap_or(CircuitState::Unspecified);
    serde_json::json!({
        "status": s.status,
        "agent": s.agent,
        "programmer_id": s.programmer_id,
        "port": s.port,
        "llm": {
            "current": llm.current,
            "primary": llm.primary,
            "backup": llm.backup,
            "using_backup": llm.using_backup,
            "circuit_open": llm.circuit_open,
            "failures": llm.failures,
            "circuit_state": circuit_name(circuit),
            "cooldown_remaining_ms": llm.cooldown_remaining_ms,
        },
        "capabilities": s.capabilities,
        "queue_depth": s.queue_depth,
        "running": s.running,
        "max_queue": s.max_queue,
        "max_concurrent": s.max_concurrent,
        "completed": s.completed,
        "failed": s.failed,
        "failovers": s.failovers,
        "cancelled": s.cancelled,
        "uptime_ms": s.uptime_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two programmers on the simulator's LLMs: 002 with its own `aider_start`.
    const BASE: &str = r#"
pool_size: 2
programmers:
  - { id: "001", port: 16151, primary_llm: "ollama/qwen2.5-coder:7b-instruct", backup_llm: "ollama/qwen2.5-coder:14b-instruct" }
  - { id: "002", port: 16152, primary_llm: "ollama/qwen2.5-coder:7b-instruct", backup_llm: "ollama/qwen2.5-coder:14b-instruct", aider_start: cold }
"#;

    fn settings(extra: &str, id: &str) -> StartupSettings {
        let env = crate::config::PathEnv::in_dir("/tmp");
        let yaml = format!("{BASE}{extra}");
        let config =
            Config::from_yaml_with(&yaml, std::path::Path::new("/cfg/pool.yaml"), &env).unwrap();
        StartupSettings::of(&config, config.programmer(id).unwrap())
    }

    #[test]
    fn each_setting_read_at_start_up_is_named_and_live_ones_are_not() {
        let base = settings("", "001");
        for (extra, key) in [
            ("aider:\n  python: /opt/venv/bin/python\n", "aider.python"),
            ("aider:\n  version: \"0.1.0\"\n", "aider.version"),
            ("aider:\n  nice: 3\n", "aider.nice"),
            ("aider:\n  start: cold\n", "aider.start"),
            ("aider:\n  warm_workers: 9\n", "aider.warm_workers"),
            // It starts warm, with as many workers as it runs tasks.
            (
                "load_balancing:\n  max_concurrent_per_programmer: 4\n",
                "aider.warm_workers",
            ),
            ("durability: power_loss\n", "durability"),
            (
                "tls:\n  ca: ca.pem\n  cert: \"{name}.pem\"\n  key: \"{name}-key.pem\"\n",
                "tls",
            ),
            (
                "limits:\n  http2_max_concurrent_streams: 9\n",
                "limits.http2_max_concurrent_streams",
            ),
        ] {
            assert_eq!(base.changed(&settings(extra, "001")), [key], "{extra}");
        }
        for live in [
            "aider:\n  request_timeout_s: 77\n  extra_flags: [\"--no-pretty\"]\n  memory_limit_mb: 99\n  edit_format: whole\n",
            "failover:\n  max_retries: 5\n",
            "manager:\n  max_queue: 3\n  admin_port: 7000\n",
            "workspace_root: /elsewhere\n",
            "repositories:\n  allow: [\"https://git.example.com/\"]\n",
            "load_balancing:\n  max_queue_per_programmer: 7\n",
            "telemetry:\n  sample_ratio: 0.5\n",
            "manager:\n  task_lease_s: 99\n",
        ] {
            assert_eq!(base.changed(&settings(live, "001")), [""; 0], "{live}");
        }
        // Its own `aider_start` wins over `aider.start`: nothing changes for it; and cold, it
        // applies a new concurrency while running, as a new queue bound.
        let own = settings("", "002");
        for live in [
            "aider:\n  start: warm\n  warm_workers: 3\n",
            "load_balancing:\n  max_concurrent_per_programmer: 4\n",
        ] {
            assert_eq!(own.changed(&settings(live, "002")), [""; 0], "{live}");
        }
    }
}
