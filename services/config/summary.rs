//! The human-readable summary `pas config check` prints for a valid configuration.

use super::model::Durability;
use super::spec::Config;
use std::fmt::Write as _;

/// Renders `config` as aligned plain-text tables and key/value lines.
pub(crate) fn render(config: &Config) -> String {
    let pool = &config.pool;
    let mut out = String::new();
    let _ = writeln!(out, "Configuration {} is valid.", config.source.display());

    let _ = writeln!(out, "\nProgrammers ({}):", config.programmers().len());
    let mut rows = vec![row(&[
        "ID",
        "ADDRESS",
        "PRIMARY -> BACKUP",
        "CAPABILITIES",
        "COST",
        "PER JOB",
    ])];
    for p in config.programmers() {
        let caps: Vec<&str> = p.capabilities.iter().map(String::as_str).collect();
        let l = &p.limits;
        rows.push(vec![
            p.id.clone(),
            p.address(),
            format!("{} -> {}", p.primary.name, p.backup.name),
            caps.join(","),
            if p.paid { "paid".into() } else { "free".into() },
            format!(
                "${:.2}, {} tokens, timeout {}s (max {}s)",
                l.max_cost_per_job_usd, l.max_tokens_per_job, l.timeout_s, l.max_duration_per_job_s
            ),
        ]);
    }
    table(&mut out, &rows);

    let _ = writeln!(out, "\nLLM catalog (USD per million tokens):");
    let mut rows = vec![row(&[
        "MODEL", "PROVIDER", "INPUT", "OUTPUT", "EDIT", "CONTEXT", "ENDPOINT",
    ])];
    for llm in config.llms() {
        let endpoint = match &llm.api_key_env {
            Some(key) => format!(
                "${} or {}, key ${key}",
                llm.api_base_env, llm.default_api_base
            ),
            None => format!("${} or {}", llm.api_base_env, llm.default_api_base),
        };
        rows.push(vec![
            llm.name.clone(),
            llm.provider.to_string(),
            format!("${:.2}", llm.input_cost_per_token * 1e6),
            format!("${:.2}", llm.output_cost_per_token * 1e6),
            llm.edit_format.clone(),
            llm.context_limit.to_string(),
            endpoint,
        ]);
    }
    table(&mut out, &rows);

    let _ = writeln!(out, "\nCapability groups:");
    let mut rows = Vec::new();
    for capability in config.capabilities() {
        let ids: Vec<&str> = config
            .capability_holders(capability)
            .iter()
            .map(|p| p.id.as_str())
            .collect();
        rows.push(vec![format!("{capability}:"), ids.join(", ")]);
    }
    table(&mut out, &rows);

    let lb = &pool.load_balancing;
    let f = &pool.failover;
    let cb = &f.circuit_breaker;
    let cost = &pool.cost_optimization;
    let m = &pool.manager;
    let a = &pool.aider;
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let on_off = |b: bool| if b { "on" } else { "off" };
    let conditions: Vec<&str> = f.failure_conditions.iter().map(|c| c.as_str()).collect();
    let mut lines = vec![
        (
            "Strategy",
            format!(
                "{} (prefer free: {}, queue per programmer: {}, concurrent per programmer: {}, health every {}s)",
                lb.strategy.as_str(),
                yes_no(lb.prefer_free_models),
                lb.max_queue_per_programmer,
                lb.max_concurrent_per_programmer,
                lb.health_check_interval_s
            ),
        ),
        (
            "Failover",
            format!(
                "{} (max retries {}, retry delay {}s, always failover: {}, on: {})",
                on_off(f.enabled),
                f.max_retries,
                f.retry_delay_s,
                yes_no(f.always_failover),
                conditions.join(", ")
            ),
        ),
        (
            "Circuit breaker",
            format!(
                "{} ({} failures in {} min opens it for {} min)",
                on_off(cb.enabled),
                cb.failure_threshold,
                cb.window_minutes,
                cb.cooldown_minutes
            ),
        ),
        (
            "Budget",
            match cost.alert_threshold_usd {
                Some(alert) => format!(
                    "${:.2} per day, alert at ${alert:.2} (cost optimization {}, prefer free: {})",
                    cost.max_daily_spend_usd,
                    on_off(cost.enabled),
                    yes_no(cost.prefer_free_over_paid)
                ),
                None => format!(
                    "${:.2} per day, no alert (cost optimization {}, prefer free: {})",
                    cost.max_daily_spend_usd,
                    on_off(cost.enabled),
                    yes_no(cost.prefer_free_over_paid)
                ),
            },
        ),
        (
            "Escalation",
            if pool.escalation.enabled {
                let on: Vec<&str> = pool.escalation.on.iter().map(|t| t.as_str()).collect();
                format!("free → paid on {} (within the budget)", on.join(", "))
            } else {
                "off (a request's escalate turns it on)".to_string()
            },
        ),
        (
            "Manager",
            format!(
                "{}:{} (queue {}, queue timeout {}s, {} dispatch attempts, task lease {}s, {})",
                m.host,
                m.port,
                m.max_queue,
                m.queue_timeout_s,
                m.max_dispatch_attempts,
                m.task_lease_s,
                match (m.task_retention_s, m.task_retention_max_tasks) {
                    (0, 0) => "finished tasks kept forever".to_string(),
                    (s, 0) => format!("finished tasks kept {s}s"),
                    (0, n) => format!("finished tasks kept while among the last {n} recorded"),
                    (s, n) =>
                        format!("finished tasks kept {s}s, while among the last {n} recorded"),
                }
            ),
        ),
        (
            "Aider",
            format!(
                "{} version {}, edit format {}, request timeout {}s{}",
                config.aider_python().display(),
                a.version,
                a.edit_format,
                a.request_timeout_s,
                if a.extra_flags.is_empty() {
                    String::new()
                } else {
                    format!(", extra flags {}", a.extra_flags.join(" "))
                }
            ),
        ),
        (
            "Workspace root",
            config.workspace_root().display().to_string(),
        ),
        ("Data dir", config.data_dir().display().to_string()),
        (
            "Durability",
            match pool.durability {
                Durability::ProcessCrash => {
                    "process crash (records synced about once a second)".into()
                }
                Durability::PowerLoss => {
                    "power loss (every commit and each result synced before it is reported)".into()
                }
            },
        ),
        (
            "TLS",
            match config.tls_files("{name}") {
                Some(f) => format!(
                    "on (CA {}, certificates {}, keys {}; programmers require client certificates)",
                    f.ca.display(),
                    f.cert.display(),
                    f.key.display()
                ),
                None => "off (processes listen on loopback only unless --insecure)".into(),
            },
        ),
        (
            "Caller auth",
            match &pool.auth {
                Some(auth) => {
                    let sources: Vec<String> = auth
                        .tokens_file
                        .iter()
                        .map(|f| format!("file {}", f.display()))
                        .chain(auth.tokens_env.iter().map(|v| format!("${v}")))
                        .collect();
                    let open: Vec<&str> = auth.open.iter().map(|r| r.as_str()).collect();
                    format!(
                        "bearer tokens from {} (open without a token: health{}{})",
                        sources.join(" and "),
                        if open.is_empty() { "" } else { ", " },
                        open.join(", ")
                    )
                }
                None => "off (anyone who reaches the manager's port may call it)".into(),
            },
        ),
    ];
    let _ = writeln!(out);
    let width = lines.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    for (key, value) in lines.drain(..) {
        let _ = writeln!(out, "{:width$} {value}", format!("{key}:"));
    }
    out
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Writes rows with columns padded to their widest cell, two spaces apart, indented by two.
fn table(out: &mut String, rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::from(" ");
        for (c, cell) in r.iter().enumerate() {
            let pad = if c + 1 == r.len() {
                0
            } else {
                widths[c] - cell.chars().count()
            };
            let _ = write!(line, " {cell}{} ", " ".repeat(pad));
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}
