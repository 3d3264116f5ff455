//! `pas manager`: Manager-Code serving `pas.v1.ProgrammerPool`, grpc.health.v1, reflection, and
//! `GET /health` + `GET /programmer_pool/status` on one port.
//!
//! A task flows: [`server`] (validate, eligibility, idempotency) → [`waitqueue`] (scheduler) →
//! [`balancer`] (ReadyCache + [`strategy`], [`budget`] reservation) → [`dispatch`] (relay, reroute,
//! settle) → [`store`]. [`membership`] keeps the balancer's view of the programmers current;
//! [`status`] renders the pool and its [alerts](status::Alerts).

pub mod admission;
pub mod auth;
pub mod balancer;
pub mod budget;
pub mod discovery;
pub mod dispatch;
pub mod durations;
pub mod eligibility;
pub mod escalation;
pub mod http;
pub mod membership;
pub mod reconfigure;
pub mod resume;
pub mod runtimes;
pub mod server;
pub mod status;
pub mod store;
pub mod strategy;
pub mod validate;
pub mod waitqueue;

use crate::config::Config;
use crate::contract::v1::programmer_pool_server::ProgrammerPoolServer;
use crate::contract::v1::{TaskResult, TaskState};
use crate::money::Usd;
use crate::serve;
use crate::task_events::{TaskEventSink, TaskLog};
use crate::task_sources::{CurrentSources, TaskSources};
use axum::routing::get;
use balancer::{Hold, Route};
use budget::{BudgetLedger, BudgetPolicy};
use membership::PoolView;
use server::PoolService;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::TaskStore;
use strategy::{StrategyKind, StrategySet, TierRegistry};
use tokio_util::sync::CancellationToken;
use waitqueue::Scheduler;

/// The log line of the once-a-day budget alert (operators and tests grep for it).
pub const BUDGET_ALERT_LOG: &str = "budget alert: daily spend reached the alert threshold";

/// Command-line arguments of `pas manager`.
#[derive(Debug, Clone, clap::Args)]
pub struct ManagerArgs {
    /// Listen on this port instead of the configured one (0 = any free port).
    #[arg(long)]
    pub port: Option<u16>,
    /// Listen on this host instead of the configured one.
    #[arg(long)]
    pub host: Option<String>,
    /// Serve the probes (grpc.health.v1, `/health`, `/metrics`, `/programmer_pool/status`) also on
    /// this port, from a thread of their own, instead of the configured `manager.admin_port`
    /// (0 = any free port).
    #[arg(long)]
    pub admin_port: Option<u16>,
    /// TLS files and the `--insecure` override.
    #[command(flatten)]
    pub security: serve::SecurityArgs,
}

/// A task the manager is working on now.
#[derive(Debug)]
struct ActiveTask {
    cancel: CancellationToken,
    log: Arc<TaskLog>,
}

/// The manager's shared state.
pub struct Manager {
    /// The configuration in force: the file as read at start-up, or as re-read since
    /// ([`reconfigure`]). Settings read from it per task (the default strategy, the queue
    /// timeout, dispatch attempts, escalation, free-first) follow a re-read at once; DNS
    /// discovery follows it too (it subscribes).
    config: tokio::sync::watch::Sender<Arc<Config>>,
    pub pool: Arc<PoolView>,
    pub scheduler: Scheduler,
    pub budget: Arc<BudgetLedger>,
    pub store: Arc<TaskStore>,
    /// The lease a task accepted now gets (`manager.task_lease_s` in force, in s:
    /// [`Manager::task_lease`]): its programmer stops it once nobody followed it this long, and a
    /// manager that cannot reach the programmer this long knows it stopped.
    task_lease_s: std::sync::atomic::AtomicU64,
    /// What a task's `workspace` and `repo_url` are checked against (see [`Manager::sources`]).
    sources: CurrentSources,
    /// Interns the tiers admission computes, so the balancer keeps one index per distinct tier.
    pub tiers: TierRegistry,
    pub alerts: status::Alerts,
    /// The `limits:` on calls and per-caller tasks (the queue bound is the scheduler's).
    pub admission: Arc<admission::Admission>,
    /// Per-LLM task figures for `pas status`, from the tasks finished here.
    pub llm_stats: crate::telemetry::LlmStats,
    /// Per-LLM decayed task durations (least_expected_wait), from the same results.
    pub durations: Arc<durations::DurationEstimates>,
    pub port: u16,
    /// When this process started the manager (Unix ms): alerts recorded before it were raised
    /// by an earlier process.
    pub started_ms: i64,
    active: Mutex<HashMap<String, ActiveTask>>,
    pub stop: CancellationToken,
    /// The pool's status as the HTTP face's pool streams share it (`http::sse`): one poll for all.
    pub pool_feed:
        std::sync::OnceLock<tokio::sync::watch::Receiver<Arc<crate::contract::v1::PoolStatus>>>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// The workspace root and repository allow list in force: read once per Dispatch.
    pub fn sources(&self) -> Arc<TaskSources> {
        self.sources.get()
    }

    /// The task lease in force (`manager.task_lease_s`): read as a task is accepted (its lease
    /// for life, sent to its programmers) and, as a floor, where a task's stream is followed.
    pub fn task_lease(&self) -> Duration {
        Duration::from_secs(self.task_lease_s.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Puts a re-read `manager.task_lease_s` in force for the tasks accepted from now; returns
    /// whether it changed.
    pub fn set_task_lease(&self, seconds: u64) -> bool {
        let seconds = seconds.max(1);
        self.task_lease_s
            .swap(seconds, std::sync::atomic::Ordering::Relaxed)
            != seconds
    }

    /// Puts the workspace root and allow list of a re-read `config` in force for the Dispatches
    /// that start from now, when it changes them (see [`crate::task_sources`]).
    pub fn follow_sources(&self, config: &Config) -> bool {
        self.sources.follow(config)
    }

    /// Builds the manager: opens the ledger and task store in the data dir, starts membership
    /// watchers and the scheduler; with DNS discovery, waits for the first answer's programmers
    /// to join before resuming unfinished tasks (they may be placed on them).
    /// `tls`: this manager's files, used as a client of the programmers (which require them).
    pub async fn start(
        config: Arc<Config>,
        port: u16,
        tls: Option<&crate::tls::TlsFiles>,
    ) -> anyhow::Result<Arc<Self>> {
        let pool_cfg = &config.pool;
        let data_dir = config.data_dir();
        std::fs::create_dir_all(&data_dir).map_err(|e| {
            anyhow::anyhow!("cannot create the data dir {}: {e}", data_dir.display())
        })?;
        let cost = &pool_cfg.cost_optimization;
        let budget = Arc::new(BudgetLedger::open(
            data_dir.join("budget.sqlite"),
            BudgetPolicy::from_config(cost)?,
            budget::system_clock(),
            pool_cfg.durability,
        )?);
        let started_ms = crate::task_events::now_unix_ms();
        let store = Arc::new(TaskStore::open_with(
            data_dir.join("tasks.sqlite"),
            pool_cfg.durability,
        )?);
        store.retain_as(&config.pool.manager);
        if store.recovered_on_open() > 0 {
            tracing::warn!(
                tasks = store.recovered_on_open(),
                "tasks left unfinished by a manager too old to resume them were marked failed"
            );
        }
        let stop = CancellationToken::new();
        let pool = PoolView::new(&config, tls, &stop)?;
        let durations = Arc::new(durations::DurationEstimates::default());
        let poll = Duration::from_secs(pool_cfg.load_balancing.health_check_interval_s);
        let discovery = membership::start(pool.clone(), poll);
        let balancer = balancer::Balancer::new(
            pool.clone(),
            Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(
                discovery,
            )),
            StrategySet::new(),
            budget.clone(),
            durations.clone(),
        );
        let mgr_cfg = &pool_cfg.manager;
        let scheduler = Scheduler::start(
            balancer,
            pool.clone(),
            mgr_cfg.max_queue as usize,
            stop.clone(),
        );
        let mgr = Arc::new(Self {
            task_lease_s: std::sync::atomic::AtomicU64::new(mgr_cfg.task_lease_s.max(1)),
            sources: CurrentSources::of(&config),
            tiers: TierRegistry::default(),
            alerts: status::Alerts::default(),
            admission: admission::Admission::new(&pool_cfg.limits),
            llm_stats: crate::telemetry::LlmStats::default(),
            pool_feed: Default::default(),
            durations,
            config: tokio::sync::watch::Sender::new(config.clone()),
            pool,
            scheduler,
            budget,
            store,
            port,
            started_ms,
            active: Mutex::new(HashMap::new()),
            stop,
        });
        if config.pool.discovery.mode == crate::config::DiscoveryMode::Dns {
            discovery::start(mgr.pool.clone(), mgr.config.subscribe(), mgr.stop.clone()).await?;
        }
        resume::unfinished_tasks(&mgr)?;
        tokio::spawn(status::watch_alerts(mgr.clone()));
        Ok(mgr)
    }

    /// The configuration in force now.
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// Puts `config` in force for everything that reads it per task (see [`reconfigure`]).
    fn set_config(&self, config: Arc<Config>) {
        self.config.send_replace(config);
    }

    /// The strategy of a task that names none (`load_balancing.strategy`).
    pub fn default_strategy(&self) -> StrategyKind {
        self.config().pool.load_balancing.strategy
    }

    /// How long `route`'s task may wait in the queue this time: the caller's own bound, on its
    /// first wait and after every reroute, re-queue or escalation alike; else
    /// `manager.queue_timeout_s` as configured now.
    pub fn max_wait(&self, route: &Route) -> Duration {
        route
            .queue_timeout
            .unwrap_or_else(|| Duration::from_secs(self.config().pool.manager.queue_timeout_s))
    }

    /// Programmers one task may be dispatched to (`manager.max_dispatch_attempts`, at least 1).
    pub fn max_dispatch_attempts(&self) -> u32 {
        self.config().pool.manager.max_dispatch_attempts.max(1)
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<String, ActiveTask>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a task as active with its event log; returns its cancellation token (only a
    /// caller's CancelTask fires it: a stopping manager leaves its tasks to the next one).
    pub fn register(&self, task_id: &str, log: Arc<TaskLog>) -> CancellationToken {
        let cancel = CancellationToken::new();
        self.active().insert(
            task_id.to_string(),
            ActiveTask {
                cancel: cancel.clone(),
                log,
            },
        );
        cancel
    }

    /// The event log of an active task.
    pub fn active_log(&self, task_id: &str) -> Option<Arc<TaskLog>> {
        self.active().get(task_id).map(|t| t.log.clone())
    }

    /// A new event log for `task_id`, journaled in the task store.
    pub fn new_log(
        &self,
        task_id: &str,
        events: Vec<crate::contract::v1::TaskEvent>,
    ) -> Arc<TaskLog> {
        let journal: Arc<dyn crate::task_events::Journal> = self.store.clone();
        TaskLog::restore(task_id, events, Some(journal))
    }

    /// Cancels an active task; false when it is not active here.
    pub fn cancel(&self, task_id: &str) -> bool {
        match self.active().get(task_id) {
            Some(t) => {
                t.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Number of tasks queued or running in the manager.
    pub fn active_count(&self) -> usize {
        self.active().len()
    }

    /// Turns a budget hold into spend: the real cost when known, else the whole hold (the
    /// programmer may have spent it; the ledger must never under-count).
    pub fn settle(&self, task_id: &str, hold: Option<Hold>, cost: Option<Usd>) {
        let Some(hold) = hold else {
            return;
        };
        let amount = cost.unwrap_or(hold.amount);
        match self.budget.settle(&hold.key, amount) {
            Ok(s) if s.alert_crossed => {
                tracing::warn!(day = %s.day, spent_usd = %s.day_spent, "{BUDGET_ALERT_LOG}");
            }
            Ok(_) => {}
            Err(e) => tracing::error!(%task_id, "budget ledger: {e}"),
        }
    }

    /// Drops a budget hold for a dispatch attempt that never started on a programmer, so the
    /// attempt can reserve again under the same key.
    pub fn release(&self, task_id: &str, hold: Option<Hold>) {
        if let Some(hold) = hold
            && let Err(e) = self.budget.release(&hold.key)
        {
            tracing::error!(%task_id, "budget ledger: {e}");
        }
    }

    /// Records and publishes a task's result (one durable write), forgets it as active, and logs
    /// its "task finished" line.
    ///
    /// The line comes after the publish, once the caller's stream — woken by it, on this
    /// thread — has had its turn: formatting and writing it took 8–11 µs that every caller waited
    /// for on a lone dispatch (BENCHMARKS "Hot path, part 14"). So a caller may hear of its result
    /// just before the line is in the log. Metrics and the routing figures are still updated
    /// before the publish (a scrape right after the result counts it).
    pub async fn finish_task(&self, task_id: &str, sink: &TaskEventSink, result: Box<TaskResult>) {
        let status = TaskState::try_from(result.status).unwrap_or(TaskState::Unspecified);
        crate::telemetry::task_finished(crate::telemetry::Role::Manager, &result);
        self.llm_stats.record(&result);
        self.durations.record(&result);
        let (programmer, llm, error) = (
            result.programmer_id.clone(),
            result.llm_used.clone(),
            result.error_message.clone(),
        );
        let (cost_usd, duration_ms) = (result.cost_usd, result.duration_ms);
        // Journaling the result event also records the task finished, in one write.
        sink.finish(result).await;
        self.active().remove(task_id);
        tokio::task::yield_now().await;
        tracing::info!(%task_id, status = status.as_str_name(), %programmer, %llm, cost_usd,
            duration_ms, %error, "task finished");
    }
}

/// Runs the manager until SIGTERM/SIGINT.
pub async fn run(config: Config, args: ManagerArgs) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let mgr_cfg = &config.pool.manager;
    let host = args.host.clone().unwrap_or_else(|| mgr_cfg.host.clone());
    let tls = args.security.tls_files(&config, "manager");
    let authenticator = match &config.pool.auth {
        Some(auth_cfg) => {
            let policy = auth::Authenticator::reloading(auth_cfg, config.config_dir())?;
            tracing::info!(tokens = policy.token_count(), "caller authentication on");
            Some(Arc::new(policy))
        }
        None => None,
    };
    let mut missing = Vec::new();
    if tls.is_none() {
        missing.push("TLS");
    }
    if authenticator.is_none() {
        missing.push("caller tokens (auth:)");
    }
    serve::check_exposure(&host, &missing, args.security.insecure).await?;
    // One listening socket per serving runtime (see `runtimes`): this one's, and the others'.
    let (listener, others) = serve::bind_shared(
        &host,
        args.port.unwrap_or(mgr_cfg.port),
        runtimes::count(mgr_cfg.runtimes),
    )
    .await?;
    // One set of server settings for every port and runtime, kept current with its files.
    let server_tls = tls
        .as_ref()
        .map(|f| crate::tls::reloading_server_config(f, crate::tls::ClientAuth::Optional))
        .transpose()?;
    let listener = serve::Bound::new(listener, server_tls.clone())?;
    let addr = listener.local_addr()?;
    let mgr = Manager::start(config.clone(), addr.port(), tls.as_ref()).await?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ProgrammerPoolServer<PoolService>>()
        .await;
    let service = PoolService::new(mgr.clone());
    let routes = tonic::service::Routes::new(ProgrammerPoolServer::new(service.clone()));
    let router = serve::with_health_and_reflection(
        routes,
        health_service.clone(),
        <ProgrammerPoolServer<PoolService> as tonic::server::NamedService>::NAME,
    )?
    .into_axum_router()
    .merge(probe_routes(&mgr))
    // The HTTP/JSON API (`/v1/…`, the same service in process) and the dashboard at `/`.
    .merge(http::router(service));
    // Layers run outside-in: authentication first (the caller is known), then the limits.
    let router = router.layer(axum::middleware::from_fn_with_state(
        mgr.admission.clone(),
        admission::middleware,
    ));
    let authenticate = |router: axum::Router| match &authenticator {
        Some(policy) => router.layer(axum::middleware::from_fn_with_state(
            policy.clone(),
            auth::middleware,
        )),
        None => router,
    };
    let router = authenticate(router);
    let admin = match args.admin_port.or(mgr_cfg.admin_port) {
        Some(port) => Some(serve::bind(&host, port).await?),
        None => None,
    };

    crate::reload::take_sighup();
    reconfigure::watch(mgr.clone(), authenticator.clone());
    println!("Manager-Code listening on {addr}");
    tracing::info!(%addr, programmers = mgr.pool.members().len(), strategy = mgr.default_strategy().name(), "manager started");
    if let Some(admin) = admin {
        let admin_addr = admin.local_addr()?;
        let probes = authenticate(
            tonic::service::Routes::new(health_service)
                .into_axum_router()
                .merge(probe_routes(&mgr)),
        );
        let stop = mgr.stop.clone();
        serve::serve_on_own_thread(
            "pas-admin",
            admin,
            server_tls.clone(),
            probes,
            config.pool.limits.clone(),
            stop.cancelled_owned(),
            || {},
        )?;
        println!("Manager-Code probes on {admin_addr}");
        tracing::info!(addr = %admin_addr, "probes served on their own thread");
    }

    // The other serving runtimes, each on its own thread with its own share of the connections.
    let mut serving = Vec::new();
    for (slot, listener) in (1..).zip(others) {
        serving.push(serve::serve_on_own_thread(
            &format!("pas-serve-{slot}"),
            listener,
            server_tls.clone(),
            router.clone(),
            config.pool.limits.clone(),
            mgr.stop.clone().cancelled_owned(),
            move || runtimes::enter(slot),
        )?);
    }
    if !serving.is_empty() {
        tracing::info!(
            runtimes = serving.len() + 1,
            "port served by one-thread runtimes sharing it"
        );
    }

    let stop = mgr.stop.clone();
    serve::serve(listener, router, &config.pool.limits, async move {
        serve::shutdown_signal().await;
        health_reporter
            .set_not_serving::<ProgrammerPoolServer<PoolService>>()
            .await;
        stop.cancel();
    })
    .await?;
    // The other runtimes stopped accepting with this one; their connections get the same grace.
    tokio::task::spawn_blocking(move || {
        for thread in serving {
            let _ = thread.join();
        }
    })
    .await?;
    Ok(())
}

/// The JSON probes every manager port answers: `/health`, `/programmer_pool/status` (the original
/// shapes) and `/metrics`.
fn probe_routes(mgr: &Arc<Manager>) -> axum::Router {
    let (m1, m2, m3) = (mgr.clone(), mgr.clone(), mgr.clone());
    axum::Router::new()
        .route(
            "/health",
            get(move || {
                let mgr = m1.clone();
                async move { axum::Json(status::health_json(&mgr)) }
            }),
        )
        .route(
            "/programmer_pool/status",
            get(move || {
                let mgr = m2.clone();
                async move { axum::Json(status::pool_status_json(&status::pool_status(&mgr))) }
            }),
        )
        .route(
            "/metrics",
            crate::telemetry::metrics::route(move || {
                crate::telemetry::metrics::pool_gauges(&status::pool_status(&m3))
            }),
        )
}
