//! Semantic checks of a deserialized [`PoolConfig`]: everything serde's types cannot express.
//!
//! Every check runs and every finding is kept, so one `pas config check` shows all problems.
//! Findings name a [`KeyPath`]; the loader turns them into located issues via the source map.

use super::catalog::{self, ENDPOINT_KEYS};
use super::locate::KeyPath;
use super::model::{DiscoveryMode, PoolConfig};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// Which part of an entry a finding points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Point {
    /// The key itself (the key is wrong, e.g. an unknown provider section).
    Key,
    /// The value (the value is wrong, e.g. a duplicate port).
    Value,
}

/// One semantic problem, not yet located in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    pub key: KeyPath,
    pub point: Point,
    pub message: String,
}

impl Finding {
    /// A problem with the value at `key`.
    pub fn value(key: KeyPath, message: impl Into<String>) -> Self {
        Self {
            key,
            point: Point::Value,
            message: message.into(),
        }
    }

    /// A problem with the key `key` itself.
    pub fn key(key: KeyPath, message: impl Into<String>) -> Self {
        Self {
            key,
            point: Point::Key,
            message: message.into(),
        }
    }
}

/// Runs every check; returns all findings (empty = valid as far as these checks go).
pub(crate) fn check(pool: &PoolConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    let root = KeyPath::root();
    check_programmers(pool, &mut out);
    check_defaults(pool, &root.key("defaults"), &mut out);
    check_load_balancing(pool, &root.key("load_balancing"), &mut out);
    check_failover(pool, &root.key("failover"), &mut out);
    check_capability_routing(pool, &root.key("capability_routing"), &mut out);
    check_cost(pool, &root.key("cost_optimization"), &mut out);
    check_escalation(pool, &root.key("escalation"), &mut out);
    check_manager(pool, &root.key("manager"), &mut out);
    check_discovery(pool, &root.key("discovery"), &mut out);
    check_providers(pool, &root.key("providers"), &mut out);
    check_llms(pool, &root.key("llms"), &mut out);
    check_aider(pool, &root.key("aider"), &mut out);
    check_limits(pool, &root.key("limits"), &mut out);
    check_security(pool, &root, &mut out);
    check_repositories(pool, &root.key("repositories"), &mut out);
    let ratio = pool.telemetry.sample_ratio;
    if !(0.0..=1.0).contains(&ratio) {
        out.push(Finding::value(
            root.key("telemetry").key("sample_ratio"),
            format!("must be between 0.0 and 1.0 (found {ratio})"),
        ));
    }
    for (name, path) in [
        ("workspace_root", &pool.workspace_root),
        ("data_dir", &pool.data_dir),
    ] {
        if path.as_deref().is_some_and(|p| p.as_os_str().is_empty()) {
            out.push(Finding::value(
                root.key(name),
                "empty path (leave the key out for the default)",
            ));
        }
    }
    out
}

/// `tls:` paths must not be empty; `auth:` must name where its tokens are.
fn check_security(pool: &PoolConfig, root: &KeyPath, out: &mut Vec<Finding>) {
    if let Some(tls) = &pool.tls {
        let key = root.key("tls");
        for (name, path) in [("ca", &tls.ca), ("cert", &tls.cert), ("key", &tls.key)] {
            if path.as_os_str().is_empty() {
                out.push(Finding::value(key.key(name), "empty path"));
            }
        }
    }
    if let Some(auth) = &pool.auth {
        let key = root.key("auth");
        if auth.tokens_file.is_none() && auth.tokens_env.is_none() {
            out.push(Finding::value(
                key,
                "name `tokens_file` or `tokens_env` (or both): where the token hashes are",
            ));
        } else if auth.tokens_env.as_deref().is_some_and(str::is_empty) {
            out.push(Finding::value(key.key("tokens_env"), "empty variable name"));
        }
    }
}

/// `repositories:` patterns must be usable, paths and variable names not empty.
fn check_repositories(pool: &PoolConfig, key: &KeyPath, out: &mut Vec<Finding>) {
    let Some(repos) = &pool.repositories else {
        return;
    };
    for (i, pattern) in repos.allow.iter().enumerate() {
        let problem = if pattern.is_empty() {
            Some("empty pattern")
        } else if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Some("a pattern must not contain whitespace or control characters")
        } else if !pattern.contains("://") && !pattern.contains(':') {
            Some("a pattern is matched against whole URLs, e.g. `git://host/*`")
        } else {
            None
        };
        if let Some(problem) = problem {
            out.push(Finding::value(key.key("allow").index(i), problem));
        }
    }
    for (name, path) in [
        ("mirror_dir", &repos.mirror_dir),
        ("ssh_key_file", &repos.ssh_key_file),
    ] {
        if path.as_deref().is_some_and(|p| p.as_os_str().is_empty()) {
            out.push(Finding::value(key.key(name), "empty path"));
        }
    }
    if repos.https_token_env.as_deref().is_some_and(str::is_empty) {
        out.push(Finding::value(
            key.key("https_token_env"),
            "empty variable name",
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Small value checks
// ---------------------------------------------------------------------------------------------

/// Integer limits: zero disables nothing sensible, so it is an error.
fn positive_int(out: &mut Vec<Finding>, key: KeyPath, value: u64) {
    if value == 0 {
        out.push(Finding::value(key, "must be greater than 0"));
    }
}

/// Money and durations written as decimals: must be finite and > 0.
fn positive_float(out: &mut Vec<Finding>, key: KeyPath, value: f64) {
    if !value.is_finite() || value <= 0.0 {
        out.push(Finding::value(
            key,
            format!("must be a number greater than 0 (found {value})"),
        ));
    }
}

/// Prices and delays: must be finite and >= 0.
fn non_negative_float(out: &mut Vec<Finding>, key: KeyPath, value: f64) {
    if !value.is_finite() || value < 0.0 {
        out.push(Finding::value(
            key,
            format!("must not be negative (found {value})"),
        ));
    }
}

fn non_empty(out: &mut Vec<Finding>, key: KeyPath, value: &str, what: &str) {
    if value.trim().is_empty() {
        out.push(Finding::value(key, format!("empty {what}")));
    }
}

// ---------------------------------------------------------------------------------------------
// Sections
// ---------------------------------------------------------------------------------------------

fn check_programmers(pool: &PoolConfig, out: &mut Vec<Finding>) {
    let root = KeyPath::root();
    let list = root.key("programmers");
    // Found by DNS, the pool's members are not listed: the list only gives defaults by id.
    let listed_pool = pool.discovery.mode == DiscoveryMode::Static;
    if listed_pool && pool.programmers.is_empty() {
        out.push(Finding::value(
            list.clone(),
            "no programmers: list at least one",
        ));
    }
    if listed_pool && pool.pool_size as usize != pool.programmers.len() {
        out.push(Finding::value(
            root.key("pool_size"),
            format!(
                "pool_size is {} but {} programmers are listed",
                pool.pool_size,
                pool.programmers.len()
            ),
        ));
    }

    let mut ids: HashMap<&str, usize> = HashMap::new();
    // Ports in use, with who uses them (the manager first: it is the fixed point of the mesh).
    // Equal ports conflict whatever the hosts: `pas up` runs the whole pool on one machine, and
    // 0.0.0.0 vs 127.0.0.1 on one port collide there too.
    let mut ports: HashMap<u16, String> = HashMap::new();
    if pool.manager.port != 0 {
        ports.insert(pool.manager.port, "the manager".to_string());
    }
    // `unit`: what the key counts, in the singular.
    let threads = |key: &str, n: u32, unit: &str| {
        (n > MAX_WORKER_THREADS).then(|| {
            Finding::value(
                KeyPath::root().key("manager").key(key),
                format!(
                    "{n} {unit}s; at most {MAX_WORKER_THREADS} (1: one {unit}, 0: one per core)"
                ),
            )
        })
    };
    let too_many_threads = threads("worker_threads", pool.manager.worker_threads, "thread");
    let too_many_runtimes = threads("runtimes", pool.manager.runtimes, "runtime");
    let runtimes_ok = too_many_runtimes.is_none();
    out.extend(too_many_threads.into_iter().chain(too_many_runtimes));
    if runtimes_ok && pool.manager.runtimes != 1 && pool.manager.worker_threads != 1 {
        out.push(Finding::value(
            KeyPath::root().key("manager").key("runtimes"),
            format!(
                "{} one-thread runtimes and worker_threads: {} exclude each other: each runtime \
                 has one thread (set worker_threads: 1, or runtimes: 1)",
                pool.manager.runtimes, pool.manager.worker_threads
            ),
        ));
    }
    match pool.manager.admin_port {
        Some(0) => out.push(Finding::value(
            KeyPath::root().key("manager").key("admin_port"),
            "port 0 is not allowed: probes need a fixed port (omit the key for none)",
        )),
        Some(port) if ports.contains_key(&port) => out.push(Finding::value(
            KeyPath::root().key("manager").key("admin_port"),
            format!("duplicate port {port} (also used by the manager's port)"),
        )),
        Some(port) => {
            ports.insert(port, "the manager's probes (admin_port)".to_string());
        }
        None => {}
    }
    for (i, p) in pool.programmers.iter().enumerate() {
        let at = list.index(i);
        if p.id.trim().is_empty() {
            out.push(Finding::value(at.key("id"), "empty id"));
        } else if !p
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            out.push(Finding::value(
                at.key("id"),
                format!(
                    "id \"{}\" may contain only letters, digits, '-' and '_' (it names branches)",
                    p.id
                ),
            ));
        } else if let Some(first) = ids.get(p.id.as_str()) {
            out.push(Finding::value(
                at.key("id"),
                format!("duplicate id \"{}\" (also programmers[{first}])", p.id),
            ));
        } else {
            ids.insert(&p.id, i);
        }

        if p.port == 0 {
            out.push(Finding::value(
                at.key("port"),
                "port 0 is not allowed: a programmer needs a fixed port the manager can reach",
            ));
        } else if let Some(owner) = ports.get(&p.port) {
            out.push(Finding::value(
                at.key("port"),
                format!("duplicate port {} (also used by {owner})", p.port),
            ));
        } else {
            ports.insert(p.port, format!("programmer \"{}\"", p.id));
        }

        if let Some(host) = &p.host {
            non_empty(out, at.key("host"), host, "host");
        }
        non_empty(out, at.key("primary_llm"), &p.primary_llm, "LLM name");
        non_empty(out, at.key("backup_llm"), &p.backup_llm, "LLM name");
        for (j, tag) in p.capabilities.iter().enumerate() {
            non_empty(out, at.key("capabilities").index(j), tag, "capability");
        }
        let overrides = [
            ("timeout_s", p.timeout_s),
            ("max_tokens_per_job", p.max_tokens_per_job),
            ("max_duration_per_job_s", p.max_duration_per_job_s),
            ("context_limit", p.context_limit),
            ("memory_limit_mb", p.memory_limit_mb),
        ];
        for (name, value) in overrides {
            if let Some(value) = value {
                positive_int(out, at.key(name), value);
            }
        }
        if let Some(cost) = p.max_cost_per_job_usd {
            positive_float(out, at.key("max_cost_per_job_usd"), cost);
        }
        if let Some(problem) = p.region.as_deref().and_then(super::spec::region_problem) {
            out.push(Finding::value(at.key("region"), problem));
        }
    }
}

fn check_discovery(pool: &PoolConfig, at: &KeyPath, out: &mut Vec<Finding>) {
    let d = &pool.discovery;
    positive_int(out, at.key("refresh_s"), d.refresh_s);
    if let Some(resolver) = &d.resolver
        && resolver.parse::<std::net::SocketAddr>().is_err()
    {
        out.push(Finding::value(
            at.key("resolver"),
            format!("{resolver:?} is not an ip:port address (e.g. 10.0.0.2:53)"),
        ));
    }
    if d.port == Some(0) {
        out.push(Finding::value(at.key("port"), "must be greater than 0"));
    }
    if d.mode != DiscoveryMode::Dns {
        return;
    }
    match d.name.as_deref().map(str::trim) {
        None | Some("") => out.push(Finding::value(
            at.key("mode"),
            "mode dns needs `name:` (the DNS name the programmers are found under)",
        )),
        Some(_) if !d.is_srv() && d.port.is_none() => out.push(Finding::value(
            at.key("name"),
            "an A/AAAA name needs `port:` (only SRV names, starting with `_`, carry ports)",
        )),
        Some(_) => {}
    }
}

fn check_defaults(pool: &PoolConfig, at: &KeyPath, out: &mut Vec<Finding>) {
    let d = &pool.defaults;
    positive_int(out, at.key("timeout_s"), d.timeout_s);
    positive_int(out, at.key("max_tokens_per_job"), d.max_tokens_per_job);
    positive_int(
        out,
        at.key("max_duration_per_job_s"),
        d.max_duration_per_job_s,
    );
    positive_int(out, at.key("context_limit"), d.context_limit);
    positive_float(out, at.key("max_cost_per_job_usd"), d.max_cost_per_job_usd);
}

fn check_load_balancing(pool: &PoolConfig, at: &KeyPath, out: &mut Vec<Finding>) {
    let lb = &pool.load_balancing;
    positive_int(
        out,
        at.key("max_queue_per_programmer"),
        lb.max_queue_per_programmer.into(),
    );
    positive_int(
        out,
        at.key("health_check_interval_s"),
        lb.health_check_interval_s,
    );
    positive_int(
        out,
        at.key("max_concurrent_per_programmer"),
        lb.max_concurrent_per_programmer.into(),
    );
}

fn check_failover(pool: &PoolConfig, at: &KeyPath, out: &mut Vec<Finding>) {
    let f = &pool.failover;
    non_negative_float(out, at.key("retry_delay_s"), f.retry_delay_s);
    let cb = at.key("circuit_breaker");
    positive_int(
        out,
        cb.key("failure_threshold"),
        f.circuit_breaker.failure_threshold.into(),
    );
    positive_float(
        out,
        cb.key("window_minutes"),
        f.circuit_breaker.window_minutes,
    );
    positive_float(
        out,
        cb.key("cooldown_minutes"),
        f.circuit_breaker.cooldown_minutes,
    );
}

fn check_capability_routing(pool: &PoolConfig, at: &KeyPath, out: &mut Vec<Finding>) {
    let ids: BTreeSet<&str> = pool.programmers.iter().map(|p| p.id.as_str()).collect();
    for (capability, members) in &pool.capability_routing {
        let group = at.key(capability.as_str());
        if capability.trim().is_empty() {
            out.push(Finding::key(group.clone(), "empty capability name"));
        }
        for (i, id) in members.iter().enumerate() {
            if !ids.contains(id.as_str()) {
                out.push(Finding::value(
                    group.index(i),
                    format!("unknown programmer id \"{id}\""),
                ));
            }
        }
    }
}

fn check_cost(pool: &PoolConfig, at: &KeyPath, out: &mut Vec<Finding>) {
    let c = &pool.cost_optimization;
    positive_float(out, at.key("max_daily_spend_usd"), c.max_daily_spend_usd);
    if let Some(alert) = c.alert_threshold_usd {
        let key = at.key("alert_threshold_usd");
        if !alert.is_finite() || alert <= 0.0 {
            positive_float(out, key, alert);
        } else if alert > c.max_daily_spend_usd {
            out.push(Finding::value(
                key,
                format!(
                    "alert threshold ${alert:.2} is above the daily budget ${:.2} (max_daily_spend_usd)",
                    c.max_daily_spend_usd
                ),
            ));
        }
    }
}

fn check_escalation(pool: &PoolConfig, at: &KeyPath, out: &mut Vec<Finding>) {
    let e = &pool.escalation;
    if e.enabled && e.on.is_empty() {
        out.push(Finding::value(
            at.key("on"),
            "no failure escalates while escalation.enabled is true: list edit_failed, no_edit and/or attempts_exhausted (or set enabled: false)",
        ));
    }
}

fn check_manager(pool: &PoolConfig, at: &KeyPath, out: &mut Vec<Finding>) {
    let m = &pool.manager;
    non_empty(out, at.key("host"), &m.host, "host");
    if m.port == 0 {
        out.push(Finding::value(
            at.key("port"),
            "port 0 is not allowed: programmers and clients need the manager's fixed port",
        ));
    }
    positive_int(out, at.key("max_queue"), m.max_queue.into());
    positive_int(out, at.key("queue_timeout_s"), m.queue_timeout_s);
    positive_int(
        out,
        at.key("max_dispatch_attempts"),
        m.max_dispatch_attempts.into(),
    );
    positive_int(out, at.key("task_lease_s"), m.task_lease_s);
}

fn check_limits(pool: &PoolConfig, at: &KeyPath, out: &mut Vec<Finding>) {
    let l = &pool.limits;
    for (key, value) in [
        (
            "http2_max_concurrent_streams",
            l.http2_max_concurrent_streams,
        ),
        ("max_in_flight_rpcs", l.max_in_flight_rpcs),
        ("per_caller_max_tasks", l.per_caller_max_tasks),
        ("per_caller_rate_per_s", l.per_caller_rate_per_s),
        ("per_caller_burst", l.per_caller_burst),
    ] {
        positive_int(out, at.key(key), value.into());
    }
}

fn check_providers(pool: &PoolConfig, at: &KeyPath, out: &mut Vec<Finding>) {
    for (name, provider) in &pool.providers {
        let section = at.key(name.as_str());
        if !ENDPOINT_KEYS.contains(&name.as_str()) {
            let hint = if name == "ollama_chat" {
                " (ollama_chat models use providers.ollama)"
            } else {
                ""
            };
            out.push(Finding::key(
                section.clone(),
                format!("unknown provider \"{name}\" (expected ollama, openai or anthropic){hint}"),
            ));
        }
        if let Some(base) = &provider.api_base {
            if !(base.starts_with("http://") || base.starts_with("https://")) {
                out.push(Finding::value(
                    section.key("api_base"),
                    format!("\"{base}\" is not an http:// or https:// URL"),
                ));
            }
        }
        for (key, var) in [
            ("api_base_env", &provider.api_base_env),
            ("api_key_env", &provider.api_key_env),
        ] {
            if let Some(var) = var {
                non_empty(out, section.key(key), var, "environment variable name");
            }
        }
    }
}

fn check_llms(pool: &PoolConfig, at: &KeyPath, out: &mut Vec<Finding>) {
    for (name, llm) in &pool.llms {
        let entry = at.key(name.as_str());
        if name.trim().is_empty() {
            out.push(Finding::key(entry.clone(), "empty LLM name"));
        }
        if let Some(price) = llm.input_cost_per_token {
            non_negative_float(out, entry.key("input_cost_per_token"), price);
        }
        if let Some(price) = llm.output_cost_per_token {
            non_negative_float(out, entry.key("output_cost_per_token"), price);
        }
        if let Some(format) = &llm.edit_format {
            edit_format(out, entry.key("edit_format"), format);
        }
        if let Some(limit) = llm.context_limit {
            positive_int(out, entry.key("context_limit"), limit);
        }
    }
}

fn edit_format(out: &mut Vec<Finding>, key: KeyPath, format: &str) {
    if !catalog::EDIT_FORMATS.contains(&format) {
        out.push(Finding::value(
            key,
            format!(
                "unknown edit format \"{format}\" (expected one of {})",
                catalog::EDIT_FORMATS.join(", ")
            ),
        ));
    }
}

/// The most idle warm workers one programmer may keep (each holds a forked interpreter).
const MAX_WARM_WORKERS: u32 = 64;

/// Most threads `manager.worker_threads` (or runtimes `manager.runtimes`) may ask for: far above
/// any core count the manager could use, far below a typo's thousands of idle threads.
const MAX_WORKER_THREADS: u32 = 1024;

fn check_aider(pool: &PoolConfig, at: &KeyPath, out: &mut Vec<Finding>) {
    let a = &pool.aider;
    non_empty(out, at.key("version"), &a.version, "version");
    edit_format(out, at.key("edit_format"), &a.edit_format);
    positive_int(out, at.key("request_timeout_s"), a.request_timeout_s);
    positive_int(out, at.key("memory_limit_mb"), a.memory_limit_mb);
    if a.nice > 19 {
        out.push(Finding::value(
            at.key("nice"),
            format!("must be 0-19 (found {})", a.nice),
        ));
    }
    if let Some(n) = a
        .warm_workers
        .filter(|n| !(1..=MAX_WARM_WORKERS).contains(n))
    {
        out.push(Finding::value(
            at.key("warm_workers"),
            format!("must be 1-{MAX_WARM_WORKERS} (found {n}; use `start: cold` for none)"),
        ));
    }
    if a.python
        .as_deref()
        .is_some_and(|p: &Path| p.as_os_str().is_empty())
    {
        out.push(Finding::value(
            at.key("python"),
            "empty path (leave the key out for the default)",
        ));
    }
}
