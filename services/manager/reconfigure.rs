//! The configuration file re-read while the manager runs.
//!
//! An operator who raises the daily budget, throttles a caller, adds a programmer host or opens
//! `/metrics` edits `programmer_pool.yaml`; a restart to apply it would drop every caller's
//! connection. So the file is watched like the credential files ([`crate::reload`]: on SIGHUP
//! and every [`CHECK_EVERY`](crate::reload::CHECK_EVERY), read and validated off the runtime's
//! threads). A file that does not load is logged with its file, line and key, and the
//! configuration in force stays. One that loads is compared key by key with the one in force
//! ([`changed_keys`]), and:
//!
//! - the keys in [`LIVE`] apply at once — the programmers of static discovery join, leave, are
//!   replaced or move in the routing order ([`PoolView::reconcile`]); under DNS discovery the
//!   members are described again with the new entries and the name, port, period and resolver
//!   are used from the next lookup (`discovery`, which follows the configuration in force);
//!   `limits` (but the HTTP/2 stream bound), the queue's bound, timeout and dispatch attempts,
//!   retention, the default strategy and free-first, `cost_optimization` (the budget),
//!   `escalation`, `auth.open`, the queue bounds assumed for a programmer that has not reported
//!   yet, the status poll interval, the task lease, the trace sampling, and what a task's
//!   `workspace` and `repo_url` are checked against (`workspace_root`, `repositories`:
//!   [`crate::task_sources`], which the programmers follow the same way);
//! - every other changed key is named in one warning as read only at start-up (ports, TLS
//!   paths, the data dir, durability, the discovery mode, …):
//!   the running process keeps its value until it restarts.
//!
//! The log says which keys were applied and which were not; `/metrics` counts the reloads
//! (`pas_reloads_total{what="configuration"}`). Tasks already admitted keep what admitted them
//! (a slot under a lowered per-caller bound, a place in a shortened queue, a budget hold).

use crate::config::diff::{changed_keys, under};
use crate::config::{Config, DiscoveryMode};
use crate::manager::Manager;
use crate::manager::auth::Authenticator;
use crate::manager::budget::BudgetPolicy;
use crate::reload::CONFIGURATION;
use std::sync::Arc;

/// The keys a running manager applies (a key applies with every key under it), whatever its
/// discovery; [`PROGRAMMER_KEYS`] and [`DNS_KEYS`] apply too while the discovery mode stays.
pub const LIVE: &[&str] = &[
    "limits.max_in_flight_rpcs",
    "limits.per_caller_max_tasks",
    "limits.per_caller_rate_per_s",
    "limits.per_caller_burst",
    "manager.max_queue",
    "manager.task_lease_s",
    "manager.queue_timeout_s",
    "manager.max_dispatch_attempts",
    "manager.task_retention_s",
    "manager.task_retention_max_tasks",
    "load_balancing.strategy",
    "load_balancing.prefer_free_models",
    "load_balancing.max_concurrent_per_programmer",
    "load_balancing.max_queue_per_programmer",
    "load_balancing.health_check_interval_s",
    "cost_optimization",
    "escalation",
    "auth.open",
    "telemetry.sample_ratio",
    "workspace_root",
    "repositories",
];

/// What resolves the programmers' entries: applied by [`PoolView::reconcile`] with static
/// discovery, by describing the members again with DNS discovery.
///
/// [`PoolView::reconcile`]: crate::manager::membership::PoolView::reconcile
const PROGRAMMER_KEYS: &[&str] = &[
    "pool_size",
    "programmers",
    "defaults",
    "capability_routing",
    "llms",
];

/// What DNS discovery resolves, and how often (the mode itself needs a restart).
const DNS_KEYS: &[&str] = &[
    "discovery.name",
    "discovery.port",
    "discovery.refresh_s",
    "discovery.resolver",
];

/// The settings the manager reads only as it starts — those a re-read file names in its "read only
/// at start-up" warning that concern the manager (a programmer's `aider` or queue bounds do not) —
/// as `config` gives them: what `pas up` compares to decide that the manager must restart to apply
/// a re-read file. Not here: the data dir, which `pas up` itself keeps its files in (a move takes
/// `pas restart`).
#[derive(Debug, Clone, PartialEq)]
pub struct StartupSettings {
    /// `manager.host`, `port`, `admin_port`: where it listens.
    pub listen: (String, u16, Option<u16>),
    /// `manager.worker_threads`, `manager.runtimes`.
    pub threads: (u32, u32),
    /// `limits.http2_max_concurrent_streams`.
    pub http2_max_concurrent_streams: u32,
    /// The `tls:` section (the files are re-read while it runs; their paths are not).
    pub tls: Option<crate::config::TlsConfig>,
    /// Whether there is an `auth:` section, and its token sources (`open` is live).
    pub auth: Option<(Option<std::path::PathBuf>, Option<String>)>,
    /// `discovery.mode`.
    pub discovery_mode: DiscoveryMode,
    /// `durability`.
    pub durability: crate::config::Durability,
}

impl StartupSettings {
    /// The manager's start-up settings in `config`.
    pub fn of(config: &Config) -> Self {
        let (pool, m) = (&config.pool, &config.pool.manager);
        Self {
            listen: (m.host.clone(), m.port, m.admin_port),
            threads: (m.worker_threads, m.runtimes),
            http2_max_concurrent_streams: pool.limits.http2_max_concurrent_streams,
            tls: pool.tls.clone(),
            auth: pool
                .auth
                .as_ref()
                .map(|a| (a.tokens_file.clone(), a.tokens_env.clone())),
            discovery_mode: pool.discovery.mode,
            durability: pool.durability,
        }
    }

    /// The keys (as written in the file) whose settings differ between `self` and `other`.
    pub fn changed(&self, other: &Self) -> Vec<&'static str> {
        crate::config::diff::differing([
            (
                "manager.host / port / admin_port",
                self.listen != other.listen,
            ),
            (
                "manager.worker_threads / runtimes",
                self.threads != other.threads,
            ),
            (
                "limits.http2_max_concurrent_streams",
                self.http2_max_concurrent_streams != other.http2_max_concurrent_streams,
            ),
            ("tls", self.tls != other.tls),
            ("auth", self.auth != other.auth),
            (
                "discovery.mode",
                self.discovery_mode != other.discovery_mode,
            ),
            ("durability", self.durability != other.durability),
        ])
    }
}

/// Watches the manager's configuration file from now on (see the module docs). `auth`: the
/// caller authentication in force, if any (for `auth.open`). Call inside the manager's runtime,
/// before it reports itself started (SIGHUP then reloads instead of ending it).
pub fn watch(mgr: Arc<Manager>, auth: Option<Arc<Authenticator>>) {
    // What the manager derives from the file must build too, or nothing of it applies.
    let mut current = crate::reload::configuration(mgr.config(), |config| {
        BudgetPolicy::from_config(&config.pool.cost_optimization)
            .map_err(|e| anyhow::anyhow!("{}: cost_optimization: {e}", config.source.display()))?;
        Ok(())
    });
    // What it started with: a file that changes any of it leaves a restart due until it no
    // longer does (`pas_config_restart_pending`).
    // The data dir too, which the rollout leaves to `pas restart`.
    let started = (StartupSettings::of(&mgr.config()), mgr.config().data_dir());
    crate::telemetry::metrics::config_restart_pending(false);
    tokio::spawn(async move {
        while current.changed().await.is_ok() {
            let new = current.borrow_and_update().clone();
            let pending = !started.0.changed(&StartupSettings::of(&new)).is_empty()
                || started.1 != new.data_dir();
            // A file not taken changes nothing, the gauge included.
            if apply(&mgr, auth.as_deref(), new) {
                crate::telemetry::metrics::config_restart_pending(pending);
            }
        }
    });
}

/// Puts `new` in force: the [`LIVE`] keys now, the others named in a warning. Returns false
/// when the file was not taken (a programmers section that does not reconcile).
pub fn apply(mgr: &Manager, auth: Option<&Authenticator>, new: Arc<Config>) -> bool {
    let old = mgr.config();
    let changed = changed_keys(&old.pool, &new.pool);
    let same_mode = old.pool.discovery.mode == new.pool.discovery.mode;
    let static_pool = same_mode && new.pool.discovery.mode == DiscoveryMode::Static;
    let dns_pool = same_mode && new.pool.discovery.mode == DiscoveryMode::Dns;
    if changed.is_empty() {
        tracing::info!(file = %new.source.display(), "configuration re-read: no setting changed");
        return true;
    }
    let (live, later): (Vec<&str>, Vec<&str>) =
        changed.iter().map(String::as_str).partition(|key| {
            under(key, LIVE)
                || (same_mode && under(key, PROGRAMMER_KEYS))
                || (dns_pool && under(key, DNS_KEYS))
        });
    let mut applied: Vec<String> = Vec::new();
    if static_pool && live.iter().any(|k| under(k, PROGRAMMER_KEYS)) {
        match mgr.pool.reconcile(new.programmers()) {
            Ok(done) => applied.push(format!(
                "programmers (joined [{}], left [{}], replaced [{}])",
                done.joined.join(", "),
                done.left.join(", "),
                done.changed.join(", ")
            )),
            Err(e) => {
                // Checked before anything changed: the whole file waits for the next good one
                // (counted as a failed reload after the read that succeeded).
                crate::telemetry::metrics::reload(CONFIGURATION, false);
                tracing::error!(file = %new.source.display(),
                    "configuration not applied, the one read before stays in force: programmers: {e}");
                return false;
            }
        }
    }
    let (pool, was) = (&new.pool, &old.pool);
    if pool.limits != was.limits {
        mgr.admission.set_limits(&pool.limits);
    }
    if pool.manager.max_queue != was.manager.max_queue {
        mgr.scheduler.set_capacity(pool.manager.max_queue as usize);
    }
    mgr.store.retain_as(&pool.manager);
    if let Ok(policy) = BudgetPolicy::from_config(&pool.cost_optimization)
        && let Err(e) = mgr.budget.set_policy(policy)
    {
        tracing::error!("cost_optimization not applied: {e}");
    }
    if let (Some(auth), Some(section)) = (auth, &pool.auth) {
        auth.set_open(&section.open);
    }
    mgr.follow_sources(&new);
    if crate::telemetry::set_sample_ratio(pool.telemetry.sample_ratio) {
        tracing::info!(
            sample_ratio = pool.telemetry.sample_ratio,
            "trace sampling changed: new traces from now"
        );
    }
    mgr.pool.set_queue_defaults(&pool.load_balancing);
    if mgr.set_task_lease(pool.manager.task_lease_s) {
        tracing::info!(
            task_lease_s = pool.manager.task_lease_s,
            "task lease changed: for the tasks accepted from now"
        );
    }
    let poll = std::time::Duration::from_secs(pool.load_balancing.health_check_interval_s);
    if mgr.pool.set_poll_interval(poll) {
        tracing::info!(
            health_check_interval_s = pool.load_balancing.health_check_interval_s,
            "status polls changed: every programmer polled now, then at the new interval"
        );
    }
    // Read per task from here on: strategy, queue timeout, attempts, escalation, free-first;
    // DNS discovery takes its keys and the programmers' entries from it.
    mgr.set_config(new.clone());
    // Every live key by name (the programmers' ones too: an `llms` entry no programmer uses
    // changes no member, and is still in force).
    applied.extend(live.iter().map(|k| k.to_string()));
    if !applied.is_empty() {
        tracing::info!(file = %new.source.display(), applied = %applied.join(", "),
            "configuration reloaded");
    }
    if !later.is_empty() {
        tracing::warn!(file = %new.source.display(), keys = %later.join(", "),
            "configuration changed in settings read only at start-up: they apply when the process restarts");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_under_its_own_section_only() {
        assert!(under("cost_optimization.max_daily_spend_usd", LIVE));
        assert!(under("limits.per_caller_burst", LIVE));
        assert!(!under("limits.http2_max_concurrent_streams", LIVE));
        assert!(!under("auth.tokens_file", LIVE));
        assert!(under("auth.open", LIVE));
        assert!(
            !under("auth", LIVE),
            "auth added or removed as a whole needs a restart"
        );
        assert!(!under("escalation_x", LIVE));
        assert!(under("llms.my-model.cost_per_1k_input", PROGRAMMER_KEYS));
        assert!(under("discovery.refresh_s", DNS_KEYS));
        assert!(
            !under("discovery.mode", DNS_KEYS) && !under("discovery.mode", LIVE),
            "a switch of discovery mode needs a restart"
        );
    }

    /// The pool the manager tests read, with `extra` appended.
    fn startup(extra: &str) -> StartupSettings {
        StartupSettings::of(&crate::config::one_programmer_pool(extra))
    }

    #[test]
    fn each_manager_setting_read_at_start_up_is_named_and_live_ones_are_not() {
        let base = startup("");
        for (extra, key) in [
            (
                "manager:\n  admin_port: 7000\n",
                "manager.host / port / admin_port",
            ),
            (
                "manager:\n  runtimes: 2\n",
                "manager.worker_threads / runtimes",
            ),
            (
                "limits:\n  http2_max_concurrent_streams: 9\n",
                "limits.http2_max_concurrent_streams",
            ),
            ("auth:\n  tokens_env: PAS_TOKENS\n", "auth"),
            ("durability: power_loss\n", "durability"),
        ] {
            assert_eq!(base.changed(&startup(extra)), [key], "{extra}");
        }
        for live in [
            "manager:\n  max_queue: 3\n",
            "limits:\n  per_caller_burst: 4\n",
            "aider:\n  nice: 3\n",
            "workspace_root: /elsewhere\n",
            "telemetry:\n  sample_ratio: 0.5\n",
            "load_balancing:\n  health_check_interval_s: 3\n",
            "manager:\n  task_lease_s: 99\n",
        ] {
            assert_eq!(base.changed(&startup(live)), [""; 0], "{live}");
        }
        let with_auth = startup("auth:\n  tokens_env: PAS_TOKENS\n");
        let opened = startup("auth:\n  tokens_env: PAS_TOKENS\n  open: [metrics]\n");
        assert_eq!(with_auth.changed(&opened), [""; 0], "auth.open is live");
    }
}
