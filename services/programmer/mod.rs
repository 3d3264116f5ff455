//! `pas programmer`: one AI programmer serving `pas.v1.Programmer`, grpc.health.v1, reflection and
//! `GET /health` on one port.
//!
//! A task flows: [`server`] (admission) → [`validate`] → [`queue`] → [`failover`] (attempt loop,
//! [`breaker`]) → [`attempt`] ([`worktree`], [`aider`], [`classify`]).

pub mod aider;
pub mod attempt;
pub mod breaker;
pub mod classify;
pub mod failover;
pub mod mirror;
pub mod queue;
pub mod runs;
pub mod server;
pub mod state;
pub mod validate;
pub mod warm;
pub mod worktree;

use crate::config::Config;
use crate::contract::v1::programmer_server::ProgrammerServer;
use crate::serve;
use axum::routing::get;
use server::ProgrammerService;
use state::{Programmer, health_json};
use std::sync::Arc;
use std::time::Duration;

/// Command-line arguments of `pas programmer`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProgrammerArgs {
    /// Which programmer to run (e.g. 001, or a pod's name): its entry in the configuration, if
    /// any, gives its settings; the flags below win over the entry, and describe an unlisted id.
    #[arg(long, env = "PROGRAMMER_ID")]
    pub id: String,
    /// Listen on this port instead of the configured one (0 = any free port).
    #[arg(long, env = "PAS_PORT")]
    pub port: Option<u16>,
    /// Listen on this host instead of the configured one.
    #[arg(long, env = "PAS_HOST")]
    pub host: Option<String>,
    /// Primary LLM (a model name of the catalog); required for an id the file does not list.
    #[arg(long, env = "PAS_PRIMARY_LLM", value_name = "MODEL")]
    pub primary_llm: Option<String>,
    /// Backup LLM; required for an id the file does not list.
    #[arg(long, env = "PAS_BACKUP_LLM", value_name = "MODEL")]
    pub backup_llm: Option<String>,
    /// Capability tags, comma-separated (replace the listed ones when given).
    #[arg(
        long,
        env = "PAS_CAPABILITIES",
        value_delimiter = ',',
        value_name = "A,B,C"
    )]
    pub capabilities: Option<Vec<String>>,
    /// Where this programmer runs (e.g. eu-west); managers prefer a task's region.
    #[arg(long, env = "PAS_REGION")]
    pub region: Option<String>,
    /// How its attempts start aider (`warm` or `cold`), instead of its entry's `aider_start` or
    /// `aider.start`: e.g. `cold` for a rarely used programmer on a host short of memory.
    #[arg(long, env = "PAS_AIDER_START", value_enum)]
    pub aider_start: Option<crate::config::AiderStart>,
    /// On SIGTERM, how long running tasks may finish before they are cancelled.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_s: u64,
    /// TLS files and the `--insecure` override.
    #[command(flatten)]
    pub security: serve::SecurityArgs,
}

/// Runs programmer `args.id` until SIGTERM/SIGINT, then drains: stops accepting, lets running tasks
/// finish for up to `drain_timeout_s`, cancels the rest, and exits.
pub async fn run(config: Config, args: ProgrammerArgs) -> anyhow::Result<()> {
    // The flags win over the file, at start and at every re-read.
    let overrides = crate::config::ProgrammerOverrides {
        primary_llm: args.primary_llm.clone(),
        backup_llm: args.backup_llm.clone(),
        capabilities: args.capabilities.clone(),
        region: args.region.clone(),
        host: args.host.clone(),
        port: args.port,
        aider_start: args.aider_start,
    };
    let spec = config.programmer_with(&args.id, &overrides)?;
    // The aider this programmer would run is the pinned one, or it does not start.
    aider::check_installed_version(&config.aider_python(), &config.pool.aider.version).await?;
    let host = spec.host.clone();
    let tls = args
        .security
        .tls_files(&config, &format!("programmer-{}", args.id));
    let missing: &[&str] = if tls.is_some() { &[] } else { &["TLS"] };
    serve::check_exposure(&host, missing, args.security.insecure).await?;
    // Client certificates are required: only holders of a pool certificate (the manager) may
    // call Execute, which would otherwise skip the manager's authentication and budget.
    let server_tls = tls
        .as_ref()
        .map(|f| crate::tls::reloading_server_config(f, crate::tls::ClientAuth::Required))
        .transpose()?;
    let listener = serve::Bound::new(serve::bind(&host, spec.port).await?, server_tls)?;
    let addr = listener.local_addr()?;
    let prog = Arc::new(Programmer::new(&config, spec, addr.port())?);
    prog.start_warm_workers();
    // Finished tasks leave memory, and event files older than a day the disk, while it runs.
    tokio::spawn(prog.runs.clone().keep_tidy(prog.shutdown.child_token()));
    let swept = worktree::sweep_abandoned(&prog.worktrees_dir, &prog.git_identity()).await;
    if swept > 0 {
        tracing::warn!(programmer = %prog.spec.id, worktrees = swept, "removed worktrees abandoned by a previous run");
    }

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ProgrammerServer<ProgrammerService>>()
        .await;
    let routes =
        tonic::service::Routes::new(ProgrammerServer::new(ProgrammerService::new(prog.clone())));
    let (status_prog, metrics_prog) = (prog.clone(), prog.clone());
    let router = serve::with_health_and_reflection(
        routes,
        health_service,
        <ProgrammerServer<ProgrammerService> as tonic::server::NamedService>::NAME,
    )?
    .into_axum_router()
    .route(
        "/health",
        get(move || {
            let prog = status_prog.clone();
            async move { axum::Json(health_json(&prog.status())) }
        }),
    )
    .route(
        "/metrics",
        crate::telemetry::metrics::route(move || {
            crate::telemetry::metrics::programmer_gauges(&metrics_prog.status())
        }),
    );
    let label_prog = prog.clone();
    crate::telemetry::metrics::watch_breaker(
        prog.breaker.subscribe(),
        &prog.spec.id,
        move || label_prog.live().spec.primary.name.clone(),
        |t: &breaker::Transition| (t.from.as_str(), t.to.as_str()),
    );

    crate::reload::take_sighup();
    // A programmer applies its live settings (its entry's LLMs and limits, failover, aider's
    // flags and request timeout, the workspace root and repositories) from a re-read file to the tasks that start afterwards; any
    // other edit is named in the log as waiting for its restart. A file in which its entry does
    // not resolve (say, an unknown LLM) is not taken at all.
    let live_prog = prog.clone();
    let (check_id, check_overrides) = (args.id.clone(), overrides.clone());
    let (waiting_id, waiting_overrides) = (args.id.clone(), overrides.clone());
    let started = state::StartupSettings::of(&config, &prog.spec);
    let started_only = state::RestartOnly::of(&config, &prog.spec);
    crate::reload::follow(
        crate::reload::configuration(Arc::new(config.clone()), move |c| {
            c.programmer_with(&check_id, &check_overrides)?;
            Ok(())
        }),
        state::LIVE_KEYS,
        move |config| match config.programmer_with(&waiting_id, &waiting_overrides) {
            // Against the settings it started with (a file in which its entry does not resolve
            // is not taken at all).
            Ok(spec) => {
                let mut keys = started.changed(&state::StartupSettings::of(config, &spec));
                keys.extend(started_only.changed(&state::RestartOnly::of(config, &spec)));
                keys
            }
            Err(_) => Vec::new(),
        },
        move |config| match config.programmer_with(&args.id, &overrides) {
            Ok(spec) => live_prog.set_live(config, spec),
            Err(e) => tracing::error!("configuration not applied: {e}"),
        },
    );
    // Tests and `pas up` read this line to learn the bound address.
    println!("{} listening on {addr}", prog.spec.agent);
    let aider_start = if prog.aider.warm.is_some() {
        "warm"
    } else {
        "cold"
    };
    tracing::info!(programmer = %prog.spec.id, %addr, primary = %prog.spec.primary.name,
        backup = %prog.spec.backup.name, %aider_start, "programmer started");

    let drain_prog = prog.clone();
    let drain_timeout = Duration::from_secs(args.drain_timeout_s);
    let shutdown = async move {
        serve::shutdown_signal().await;
        drain_prog.start_draining();
        health_reporter
            .set_not_serving::<ProgrammerServer<ProgrammerService>>()
            .await;
        drain_prog.tasks.close();
        let running = drain_prog.queue.depth();
        tracing::info!(
            running = running.running,
            waiting = running.waiting,
            "draining"
        );
        if tokio::time::timeout(drain_timeout, drain_prog.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout: cancelling the remaining tasks");
            drain_prog.shutdown.cancel();
            drain_prog.tasks.wait().await;
        }
        tracing::info!(
            completed = drain_prog
                .counters
                .completed
                .load(std::sync::atomic::Ordering::Relaxed),
            "programmer stopped"
        );
    };
    serve::serve(listener, router, &config.pool.limits, shutdown).await?;
    Ok(())
}
