//! The configuration's data model: what `configs/pas/programmer_pool.yaml` may contain.
//!
//! The original sections (`pool_size`, `defaults`, `programmers`, `load_balancing`, `failover`,
//! `capability_routing`, `cost_optimization`) keep their original names and meaning, so the original
//! file loads unchanged. The sections the mesh adds (`manager`, `llms`, `providers`, `aider`,
//! `workspace_root`, `data_dir`) are optional and take defaults. Unknown keys are errors
//! (`deny_unknown_fields`): a typo must not silently fall back to a default.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Number of programmers; must equal `programmers.len()` (the original file states it twice).
    pub pool_size: u32,
    /// Per-programmer limits that each programmer may override.
    #[serde(default)]
    pub defaults: JobDefaults,
    /// The programmers, in configuration order (capability_match picks the first that fits).
    /// With `discovery.mode: dns` the list may be empty: an entry then only gives defaults to the
    /// programmer that reports its id.
    #[serde(default)]
    pub programmers: Vec<ProgrammerConfig>,
    #[serde(default)]
    pub load_balancing: LoadBalancing,
    #[serde(default)]
    pub failover: Failover,
    /// Named groups of programmer ids; a task capability that names a group restricts the task to it.
    #[serde(default)]
    pub capability_routing: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub cost_optimization: CostOptimization,
    /// Free → paid escalation of tasks that fail for a task-level reason (added by the mesh).
    #[serde(default)]
    pub escalation: EscalationConfig,
    /// Manager process settings (added by the mesh).
    #[serde(default)]
    pub manager: ManagerConfig,
    /// LLM catalog entries, keyed by the model name programmers use (added by the mesh). Entries
    /// here override or extend the built-in catalog (see `catalog.rs`).
    #[serde(default)]
    pub llms: BTreeMap<String, LlmConfig>,
    /// Where each provider is reached (added by the mesh). Defaults per provider in `catalog.rs`.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// How Aider is run (added by the mesh).
    #[serde(default)]
    pub aider: AiderConfig,
    /// Task `workspace` names resolve under this directory. Relative paths in the file are relative
    /// to the config file's directory. `PAS_WORKSPACE_ROOT` wins over the file (so tests and
    /// operators can redirect it without editing); neither = `./workspaces` (cwd). See `PathEnv`.
    #[serde(default)]
    pub workspace_root: Option<PathBuf>,
    /// Budget ledger, task records, pid and log files live here. Same resolution rules:
    /// `PAS_DATA_DIR`, else this key, else `./data` (cwd).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// TLS on every listener and channel of the pool (added by the mesh). Without it the processes
    /// speak plaintext and listen on loopback only unless started with `--insecure`.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Bearer-token authentication of the manager's callers (added by the mesh).
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Remote repositories programmers may fetch for a task's `repo_url` (added by the mesh).
    /// Without it a programmer refuses every `repo_url`.
    #[serde(default)]
    pub repositories: Option<RepositoriesConfig>,
    /// What a server accepts before it refuses with RESOURCE_EXHAUSTED (added by the mesh).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// How the manager finds its programmers (added by the mesh): the `programmers:` list
    /// (`static`, the default) or a DNS name re-resolved on a period (`dns`).
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    /// Traces (added by the mesh); export itself is configured by the `OTEL_*` variables.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// What the manager's records and the programmers' results survive (added by the mesh).
    #[serde(default)]
    pub durability: Durability,
}

/// `durability:` — what a written record survives, for the manager's task store and budget
/// ledger and for each programmer's event files.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// A crash of any process, at any instant (the default): records are written to the
    /// kernel, which outlives the process, and synced about once a second (the store's
    /// checkpoints). A host that loses power, or a node whose kernel dies, may lose its last
    /// second of records; the pool then reroutes what a programmer no longer has. Costs no disk
    /// wait on a task's path.
    #[default]
    ProcessCrash,
    /// Also a power loss of the host: every commit of the manager's store and ledger is synced
    /// before anyone hears of it (SQLite `synchronous = FULL`), and a programmer syncs each
    /// result's event file (and its directory) before it reports the result. Each costs a disk
    /// flush (about a millisecond on a VM's disk), taken off the manager's runtime thread:
    /// the store's commits then run on its commit thread, where the writes queued meanwhile
    /// share the next one.
    PowerLoss,
}

impl Durability {
    /// SQLite's `synchronous` setting for this durability (WAL mode): NORMAL syncs only at
    /// checkpoints, FULL syncs the WAL at every commit.
    pub fn sqlite_synchronous(self) -> &'static str {
        match self {
            Self::ProcessCrash => "NORMAL",
            Self::PowerLoss => "FULL",
        }
    }
}

/// `telemetry:` section.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Share of traces started here that are recorded and exported (0.0–1.0), decided by trace
    /// id; a caller's sampled `traceparent` is always followed (parent-based), so one trace is
    /// kept or dropped whole across manager, programmer and aider.
    pub sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { sample_ratio: 1.0 }
    }
}

impl PoolConfig {
    /// Whether a task that does not say (`prefer_free` unset) tries free programmers before paid
    /// ones: the original file states the preference twice, as `load_balancing.prefer_free_models`
    /// and `cost_optimization.prefer_free_over_paid`, and either set to false turns it off.
    pub fn prefer_free_default(&self) -> bool {
        self.load_balancing.prefer_free_models && self.cost_optimization.prefer_free_over_paid
    }
}

/// `limits:` section: every bound on what the services accept, in one place. Past a bound a call
/// is refused at once (RESOURCE_EXHAUSTED naming the limit, with `google.rpc.RetryInfo`), so a
/// burst of callers gets fast answers instead of piling up work. The queue capacities keep their
/// original keys (`manager.max_queue`, `load_balancing.max_queue_per_programmer`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// HTTP/2 streams one connection may have open at once (every process).
    pub http2_max_concurrent_streams: u32,
    /// Calls to the manager's task API (pas.v1.ProgrammerPool) being admitted at once; more are
    /// shed. Health, reflection, /health and /metrics are never shed.
    pub max_in_flight_rpcs: u32,
    /// Tasks one caller may have queued or running at once (a caller is its bearer token's name,
    /// or its IP address when authentication is off).
    pub per_caller_max_tasks: u32,
    /// Calls per second one caller may make to the task API, sustained.
    pub per_caller_rate_per_s: u32,
    /// Calls one caller may make in a burst above that rate.
    pub per_caller_burst: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            http2_max_concurrent_streams: 256,
            max_in_flight_rpcs: 1024,
            per_caller_max_tasks: 1000,
            per_caller_rate_per_s: 500,
            per_caller_burst: 2000,
        }
    }
}

/// How the manager finds programmers.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryMode {
    /// The `programmers:` list, fixed for the manager's life (the original behaviour).
    #[default]
    Static,
    /// The addresses a DNS name resolves to; members join and leave as the answer changes.
    Dns,
}

/// `discovery:` section. With `mode: dns` the manager resolves `name` every `refresh_s` seconds
/// (and at once when a member's connection breaks), connects to every address in the answer, and
/// learns each programmer's id, LLMs, capabilities, region and limits from its `GetStatus`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    pub mode: DiscoveryMode,
    /// The DNS name: A/AAAA records (e.g. a Kubernetes headless Service), or SRV records when the
    /// name starts with `_` (e.g. `_grpc._tcp.pas-programmers.pas.svc.cluster.local`).
    pub name: Option<String>,
    /// Port of the programmers behind A/AAAA answers (SRV answers carry their own).
    pub port: Option<u16>,
    /// Re-resolve period in seconds.
    pub refresh_s: u64,
    /// DNS server to ask, `ip:port`; default: the system's resolv.conf.
    pub resolver: Option<String>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            mode: DiscoveryMode::Static,
            name: None,
            port: None,
            refresh_s: 10,
            resolver: None,
        }
    }
}

impl DiscoveryConfig {
    /// True when the name asks for SRV records (`_service._proto.name`).
    pub fn is_srv(&self) -> bool {
        self.name.as_deref().is_some_and(|n| n.starts_with('_'))
    }
}

/// Limits every programmer inherits unless it overrides them (original `defaults:` section).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobDefaults {
    /// The whole task's deadline in seconds (every attempt and failover pause) when the request
    /// gives none.
    pub timeout_s: u64,
    /// A task stops when its attempts have used more tokens than this.
    pub max_tokens_per_job: u64,
    /// A task stops when its cost exceeds this; the manager reserves this amount before a paid dispatch.
    pub max_cost_per_job_usd: f64,
    /// The longest one aider run (one attempt) may take, in seconds; the task's deadline
    /// (`timeout_s`) is not cut to it.
    pub max_duration_per_job_s: u64,
    /// Context size in tokens written into aider's model metadata for LLMs the catalog does not
    /// know; a programmer's own `context_limit` replaces its LLMs' figure.
    pub context_limit: u64,
    /// Commit the edit on the task's branch (aider auto-commits).
    pub auto_commit: bool,
    /// Aider's reflection limit (original `max_fix_iterations`): how many times one aider run
    /// sends a failed edit back to the model for a fix.
    pub max_fix_iterations: u32,
}

impl Default for JobDefaults {
    fn default() -> Self {
        Self {
            timeout_s: 900,
            max_tokens_per_job: 80_000,
            max_cost_per_job_usd: 2.50,
            max_duration_per_job_s: 600,
            context_limit: 131_072,
            auto_commit: true,
            max_fix_iterations: 3,
        }
    }
}

/// One programmer as written in the file. Optional limits override `defaults`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProgrammerConfig {
    /// Unique id, e.g. "001". The agent name is "Prog-<id>".
    pub id: String,
    /// gRPC + HTTP port.
    pub port: u16,
    /// Host the programmer listens on and the manager connects to (default 127.0.0.1).
    #[serde(default)]
    pub host: Option<String>,
    pub primary_llm: String,
    pub backup_llm: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub timeout_s: Option<u64>,
    #[serde(default)]
    pub max_tokens_per_job: Option<u64>,
    #[serde(default)]
    pub max_cost_per_job_usd: Option<f64>,
    #[serde(default)]
    pub max_duration_per_job_s: Option<u64>,
    #[serde(default)]
    pub context_limit: Option<u64>,
    #[serde(default)]
    pub auto_commit: Option<bool>,
    #[serde(default)]
    pub max_fix_iterations: Option<u32>,
    /// This programmer's `aider.memory_limit_mb`.
    #[serde(default)]
    pub memory_limit_mb: Option<u64>,
    /// Where it runs (e.g. `eu-west`): the manager prefers programmers of a task's region and
    /// uses other regions only when none there can take the task. Empty or absent: no region.
    #[serde(default)]
    pub region: Option<String>,
    /// This programmer's `aider.start`: a warm zygote holds ~200 MiB and spends seconds of a
    /// core importing aider when the programmer starts, which a programmer that rarely gets a
    /// task (a paid tier kept in reserve, a host short of memory) may be better without.
    #[serde(default)]
    pub aider_start: Option<AiderStart>,
}

/// Original `load_balancing:` section.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoadBalancing {
    pub strategy: StrategyName,
    pub prefer_free_models: bool,
    /// Tasks that may wait on one programmer (not counting the running ones).
    pub max_queue_per_programmer: u32,
    /// How often the manager polls each programmer's GetStatus (health itself is a Watch stream).
    pub health_check_interval_s: u64,
    /// Tasks one programmer runs at once (added by the mesh; 1 = the original behaviour).
    pub max_concurrent_per_programmer: u32,
}

impl Default for LoadBalancing {
    fn default() -> Self {
        Self {
            strategy: StrategyName::LeastLoaded,
            prefer_free_models: true,
            max_queue_per_programmer: 5,
            health_check_interval_s: 30,
            max_concurrent_per_programmer: 1,
        }
    }
}

/// Routing policy names accepted in `load_balancing.strategy`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum StrategyName {
    LeastLoaded,
    RoundRobin,
    CapabilityMatch,
    P2cPeakEwma,
    LeastExpectedWait,
}

impl StrategyName {
    /// The name as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LeastLoaded => "least_loaded",
            Self::RoundRobin => "round_robin",
            Self::CapabilityMatch => "capability_match",
            Self::P2cPeakEwma => "p2c_peak_ewma",
            Self::LeastExpectedWait => "least_expected_wait",
        }
    }
}

/// Original `failover:` section.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Failover {
    pub enabled: bool,
    /// Retries after the first attempt (2 = primary, backup, backup).
    pub max_retries: u32,
    /// Pause before a retry, in seconds (fractions allowed).
    pub retry_delay_s: f64,
    /// Failure classes that trigger failover and count for the breaker.
    pub failure_conditions: Vec<FailureCondition>,
    /// Always try the backup before failing, even when `max_retries` is 0.
    pub always_failover: bool,
    pub circuit_breaker: CircuitBreakerConfig,
}

impl Default for Failover {
    fn default() -> Self {
        Self {
            enabled: true,
            max_retries: 2,
            retry_delay_s: 5.0,
            failure_conditions: vec![
                FailureCondition::Timeout,
                FailureCondition::ApiError,
                FailureCondition::RateLimit,
                FailureCondition::ModelUnavailable,
            ],
            always_failover: true,
            circuit_breaker: CircuitBreakerConfig::default(),
        }
    }
}

/// LLM-class failure names accepted in `failover.failure_conditions`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum FailureCondition {
    Timeout,
    ApiError,
    RateLimit,
    ModelUnavailable,
}

impl FailureCondition {
    /// The name as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::ApiError => "api_error",
            Self::RateLimit => "rate_limit",
            Self::ModelUnavailable => "model_unavailable",
        }
    }
}

/// `failover.circuit_breaker`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    pub enabled: bool,
    pub failure_threshold: u32,
    /// Sliding window for counting failures (fractions allowed, for tests).
    pub window_minutes: f64,
    /// How long the breaker stays open before a half-open probe (fractions allowed).
    pub cooldown_minutes: f64,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_threshold: 3,
            window_minutes: 10.0,
            cooldown_minutes: 5.0,
        }
    }
}

/// Original `cost_optimization:` section.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CostOptimization {
    pub enabled: bool,
    pub prefer_free_over_paid: bool,
    pub max_daily_spend_usd: f64,
    /// Spend at which the budget alert fires (once per day). Must not exceed the daily limit.
    pub alert_threshold_usd: Option<f64>,
}

impl Default for CostOptimization {
    fn default() -> Self {
        Self {
            enabled: true,
            prefer_free_over_paid: true,
            max_daily_spend_usd: 50.0,
            alert_threshold_usd: None,
        }
    }
}

/// `escalation:` section (added by the mesh): a task that fails on a free programmer for a
/// task-level reason is dispatched once more to a paid programmer, within the daily budget (the
/// original design's "route expensive tasks to cheaper models first").
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EscalationConfig {
    /// Escalate the tasks that do not say (`DispatchRequest.escalate` unset). Off by default:
    /// paid work is spent only where the configuration or the caller asks for it.
    pub enabled: bool,
    /// The failures that escalate.
    pub on: Vec<EscalationTrigger>,
}

impl Default for EscalationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            on: vec![
                EscalationTrigger::EditFailed,
                EscalationTrigger::NoEdit,
                EscalationTrigger::AttemptsExhausted,
            ],
        }
    }
}

/// A task-level failure that may escalate (`escalation.on`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EscalationTrigger {
    /// The model's edit could not be applied (ERROR_CLASS_EDIT_FAILED: malformed, no match).
    EditFailed,
    /// The model proposed no edit (ERROR_CLASS_NO_EDIT).
    NoEdit,
    /// Every LLM attempt failed (primary and backup), or every programmer tried lost the task.
    AttemptsExhausted,
}

impl EscalationTrigger {
    /// The name the configuration, events and results use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EditFailed => "edit_failed",
            Self::NoEdit => "no_edit",
            Self::AttemptsExhausted => "attempts_exhausted",
        }
    }
}

/// `manager:` section (added by the mesh).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ManagerConfig {
    pub host: String,
    pub port: u16,
    /// Capacity of the manager's FIFO of tasks waiting for a programmer slot.
    pub max_queue: u32,
    /// How long a task may wait in that FIFO before failing with UNAVAILABLE, in seconds.
    pub queue_timeout_s: u64,
    /// Programmers one task may be dispatched to before giving up (reroutes + 1).
    pub max_dispatch_attempts: u32,
    /// A task's lease, in seconds: a programmer stops (and hands back) a task nobody has followed
    /// for this long, so a manager that never comes back leaves no work running; a manager that
    /// cannot reach a task's programmer for this long knows the task stopped there and reroutes it.
    pub task_lease_s: u64,
    /// How long a finished task's record and events stay in the task store, in seconds, counted
    /// from its end: GetTask, WatchTask, ListTasks and idempotent re-dispatch see it this long,
    /// then it is deleted (a Dispatch reusing its id then starts a new task). 0 keeps every task
    /// forever (the store's file then only grows). Unfinished tasks are never deleted.
    pub task_retention_s: u64,
    /// The most task records the store keeps, whatever their age: once more were recorded since
    /// the oldest one kept, the oldest finished ones are deleted (about 2,000 a second at most).
    /// Bounds the store's file under floods of short tasks, which a week's retention does not.
    /// 0: no cap. Unfinished tasks are never deleted.
    pub task_retention_max_tasks: u64,
    /// A second port answering only the probes (grpc.health.v1, `/health`, `/metrics`,
    /// `/programmer_pool/status`) from a thread of its own, so a burst of calls on `port` cannot
    /// delay them: point Kubernetes probes and monitoring here. None: probes on `port` only.
    pub admin_port: Option<u16>,
    /// Threads of the manager's async runtime. 1 (the default): tokio's current-thread scheduler,
    /// so a task's steps (accept, record, Execute, relay, result) follow each other on one thread
    /// with no hand-off or wake-up between threads; one core carries thousands of dispatches a
    /// second (BENCHMARKS.md, "Hot path, part 7"), and the probes on `admin_port` have a thread of
    /// their own anyway. N > 1: a multi-threaded runtime with N workers; 0: one per core.
    pub worker_threads: u32,
    /// One-thread runtimes serving `port`, each accepting its own share of the connections (the
    /// kernel spreads them over one listening socket per runtime, `SO_REUSEPORT`) and holding its
    /// own connections to the programmers, so a task's steps stay on the thread that accepted its
    /// caller while many callers' connections spread over the cores. 1 (the default): one
    /// runtime, as `worker_threads` makes it; N > 1: N such runtimes (`worker_threads` must then
    /// stay 1); 0: one per core.
    pub runtimes: u32,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 6141,
            max_queue: 500,
            queue_timeout_s: 600,
            max_dispatch_attempts: 3,
            task_lease_s: 60,
            task_retention_s: 7 * 24 * 3600,
            task_retention_max_tasks: 1_000_000,
            admin_port: None,
            worker_threads: 1,
            runtimes: 1,
        }
    }
}

/// One LLM catalog entry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// Provider (`ollama`, `ollama_chat`, `openai`, `anthropic`); default: the model name's prefix.
    #[serde(default)]
    pub provider: Option<String>,
    /// US dollars per prompt token (0 for local models).
    #[serde(default)]
    pub input_cost_per_token: Option<f64>,
    /// US dollars per completion token.
    #[serde(default)]
    pub output_cost_per_token: Option<f64>,
    /// Aider edit format for this model (`diff` or `whole`); default `aider.edit_format`.
    #[serde(default)]
    pub edit_format: Option<String>,
    /// Context window in tokens; default `defaults.context_limit`.
    #[serde(default)]
    pub context_limit: Option<u64>,
}

/// Where a provider's API is reached. The base URL comes from the environment variable
/// `api_base_env` when set there, else `api_base`; the key likewise. Callers can never choose it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    #[serde(default)]
    pub api_base: Option<String>,
    #[serde(default)]
    pub api_base_env: Option<String>,
    #[serde(default)]
    pub api_key_env: Option<String>,
}

/// `aider:` section (added by the mesh).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AiderConfig {
    /// Python interpreter of the virtualenv that has aider installed. Relative paths in the file are
    /// relative to the config file's directory. `PAS_AIDER_PYTHON` wins over the file; neither =
    /// `.aider-venv/bin/python` (cwd).
    pub python: Option<PathBuf>,
    /// The aider-chat version that must be installed there.
    pub version: String,
    /// Edit format for models without their own (`diff` or `whole`).
    pub edit_format: String,
    /// Extra flags appended before ours (ours win: they come last).
    pub extra_flags: Vec<String>,
    /// Per-read inactivity timeout passed to aider's `--timeout`, seconds.
    pub request_timeout_s: u64,
    /// CPU niceness aider runs at (0-19), so the services stay responsive on a saturated host.
    pub nice: u8,
    /// How attempts start aider: `warm` (a pre-imported worker forked from the programmer's
    /// zygote, falling back to cold when none is ready) or `cold` (a new interpreter each time).
    pub start: AiderStart,
    /// Idle warm workers each programmer keeps ready; default: its concurrency
    /// (`load_balancing.max_concurrent_per_programmer`).
    pub warm_workers: Option<u32>,
    /// Memory ceiling of the aider process of one attempt, MiB (its data segment, RLIMIT_DATA,
    /// set by the launcher): an aider that needs more fails its own task with
    /// ERROR_CLASS_RESOURCE_LIMIT, and nothing else. A programmer's `memory_limit_mb` wins.
    pub memory_limit_mb: u64,
}

/// `aider.start`: how an attempt gets its aider process.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AiderStart {
    /// A warm worker (aider already imported); cold when none is ready.
    #[default]
    Warm,
    /// A new Python interpreter per attempt.
    Cold,
}

impl Default for AiderConfig {
    fn default() -> Self {
        Self {
            python: None,
            version: "0.86.2".into(),
            edit_format: "diff".into(),
            extra_flags: Vec::new(),
            request_timeout_s: 120,
            nice: 10,
            start: AiderStart::Warm,
            warm_workers: None,
            memory_limit_mb: 2048,
        }
    }
}

/// `tls:` section: the pool CA and each process's certificate and key (PEM files, relative to the
/// config file's directory). `{name}` in `cert` and `key` becomes `manager`, `programmer-<id>` or
/// `client` (the CLI), so one section serves every process; `pas certs init DIR` writes files
/// with exactly these names. A process's `--tls-cert/--tls-key/--tls-ca` flags win.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The pool CA certificate: servers are verified against it, and programmers accept only
    /// clients holding a certificate it signed.
    pub ca: PathBuf,
    /// This process's certificate chain, e.g. `certs/{name}.pem`.
    pub cert: PathBuf,
    /// This process's private key, e.g. `certs/{name}-key.pem`.
    pub key: PathBuf,
}

/// `auth:` section: who may call the manager. Tokens are stored as hashes (see `pas token new`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// File of `<name> <role> sha256:<hex>` lines (relative to the config file's directory).
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// Environment variable holding entries in the same format (lines or `;`-separated), e.g.
    /// from a Kubernetes secret. Both sources may be given.
    #[serde(default)]
    pub tokens_env: Option<String>,
    /// Routes anyone may read without a token: `status` (GetPoolStatus and
    /// `/programmer_pool/status`) and/or `metrics` (`/metrics`). Health is always open.
    #[serde(default)]
    pub open: Vec<OpenRoute>,
}

/// Read-only routes that `auth.open` can leave open.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum OpenRoute {
    /// GetPoolStatus and `/programmer_pool/status`.
    Status,
    /// `/metrics`.
    Metrics,
}

impl OpenRoute {
    /// The name as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Metrics => "metrics",
        }
    }
}

/// `repositories:` section: which remote repositories a task may name (`repo_url`) and how a
/// programmer reaches them. Credentials come from here (the programmer's own files and
/// environment), never from the caller.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RepositoriesConfig {
    /// Wildmatch patterns a `repo_url` must match as a whole (`*` any characters, `?` one), e.g.
    /// `git://git.example/*`. An empty list allows nothing.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Where a programmer keeps its bare mirror of each repository (relative to the config file's
    /// directory); default `<data_dir>/mirrors`.
    #[serde(default)]
    pub mirror_dir: Option<PathBuf>,
    /// Push a successful result to the remote as `refs/heads/pas/<task>` (create-only). With
    /// `false` the result stays on that branch in the programmer's mirror.
    #[serde(default = "yes")]
    pub push: bool,
    /// SSH private key for `ssh://` and `user@host:path` URLs (relative to the config file).
    #[serde(default)]
    pub ssh_key_file: Option<PathBuf>,
    /// Name of an environment variable holding a token for `https://` URLs (sent as HTTP basic
    /// auth through git's environment, never on a command line).
    #[serde(default)]
    pub https_token_env: Option<String>,
}

fn yes() -> bool {
    true
}
