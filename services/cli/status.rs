//! `pas status`: the pool as the manager sees it — one row per programmer (state, LLM in use,
//! circuit, queue, counters), then the day's spend against the budget and the active alerts.
//!
//! The table comes from the manager's `GetPoolStatus`; `--json` prints the manager's HTTP
//! `/programmer_pool/status` document unchanged (the original JSON, for `jq` users); `--watch`
//! redraws either until Ctrl-C.

use super::probe;
use super::rundir::{ReloadState, RunDir};
use crate::contract::circuit_name;
use crate::contract::v1::{
    CircuitState, GetPoolStatusRequest, LlmStats, PoolStatus, ProgrammerState, ProgrammerSummary,
};
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// Command-line arguments of `pas status`.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// The manager's address (`host:port`); default: the configured manager.
    #[arg(long, value_name = "ADDR")]
    pub manager: Option<String>,
    /// Print the manager's `/programmer_pool/status` JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Refresh every SECS seconds (default 2) until Ctrl-C.
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    pub watch: Option<f64>,
}

/// Why a status could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Connect(#[from] probe::ProbeError),
    #[error("GetPoolStatus on {addr} failed: {status}")]
    Rpc { addr: String, status: tonic::Status },
    #[error("GET {url} failed: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("GET {url} answered {status}")]
    HttpStatus {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("GET {url} did not answer JSON: {source}")]
    Json {
        url: String,
        source: serde_json::Error,
    },
}

/// Runs `pas status`. Exit 0 when the manager answered (every time, for `--watch` until Ctrl-C),
/// 1 when it could not be reached.
pub fn run(config_path: &Path, args: StatusArgs) -> ExitCode {
    let addr = match probe::manager_addr(config_path, args.manager.as_deref()) {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("error: no --manager given and the configuration is unusable:\n{e}");
            return ExitCode::FAILURE;
        }
    };
    // The supervisor line is a bonus: shown when the configuration loads and `pas up` runs.
    let run_dir = crate::config::Config::load(config_path)
        .ok()
        .map(|c| RunDir::new(c.data_dir()));
    let security = crate::channel::ClientSecurity::for_cli(config_path);
    let security = &security;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let Some(every) = args.watch else {
            return match snapshot(&addr, security, args.json, run_dir.as_ref(), false).await {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    // The manager is down but `pas up` may still know about its processes.
                    if let Some(table) = run_dir.as_ref().and_then(process_table) {
                        print!("{table}");
                    }
                    eprintln!("error: {e} ({})", e.hint());
                    ExitCode::FAILURE
                }
            };
        };
        let every = Duration::from_secs_f64(every.clamp(0.2, 3600.0));
        let tty = std::io::stdout().is_terminal();
        // One receiver for the whole loop, so a Ctrl-C during a fetch is not lost.
        let mut interrupt =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: cannot handle Ctrl-C: {e}");
                    return ExitCode::FAILURE;
                }
            };
        loop {
            let fetched = tokio::select! {
                fetched = snapshot(&addr, security, args.json, run_dir.as_ref(), true) => fetched,
                _ = interrupt.recv() => return ExitCode::SUCCESS,
            };
            let text = match fetched {
                Ok(text) => text,
                Err(e) => format!("error: {e}\n"),
            };
            let mut out = std::io::stdout().lock();
            if tty {
                // Home, draw, clear what is left of the previous frame: no flicker.
                let stamp = chrono::Local::now().format("%H:%M:%S");
                let _ = write!(
                    out,
                    "\x1b[H{}\x1b[J",
                    format!(
                        "pas status — {addr} — every {:.1}s — {stamp}\n\n{text}",
                        every.as_secs_f64()
                    )
                    .replace('\n', "\x1b[K\n")
                );
            } else {
                let _ = write!(out, "{text}");
                if !args.json {
                    let _ = writeln!(out);
                }
            }
            let _ = out.flush();
            drop(out);
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = interrupt.recv() => return ExitCode::SUCCESS,
            }
        }
    })
}

/// One rendering of the status: the table (plus supervisor line) or the JSON document.
async fn snapshot(
    addr: &str,
    security: &crate::channel::ClientSecurity,
    json: bool,
    run_dir: Option<&RunDir>,
    compact: bool,
) -> Result<String, StatusError> {
    if json {
        let value = fetch_json(addr, security).await?;
        let text = if compact {
            serde_json::to_string(&value)
        } else {
            serde_json::to_string_pretty(&value)
        }
        .unwrap_or_default();
        return Ok(format!("{text}\n"));
    }
    let status = fetch(addr, security).await?;
    let mut text = render(&status);
    if let Some(line) = run_dir.and_then(supervisor_line) {
        text.push_str(&line);
    }
    Ok(text)
}

/// `GetPoolStatus` on the manager at `addr`.
pub async fn fetch(
    addr: &str,
    security: &crate::channel::ClientSecurity,
) -> Result<PoolStatus, StatusError> {
    let mut client = probe::pool_client(addr, Duration::from_secs(5), security).await?;
    let call = client.get_pool_status(GetPoolStatusRequest {});
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(StatusError::Rpc {
            addr: addr.to_string(),
            status,
        }),
        Err(_) => Err(StatusError::Rpc {
            addr: addr.to_string(),
            status: tonic::Status::deadline_exceeded("no answer within 10s"),
        }),
    }
}

/// The manager's `GET /programmer_pool/status` document.
pub async fn fetch_json(
    addr: &str,
    security: &crate::channel::ClientSecurity,
) -> Result<serde_json::Value, StatusError> {
    let url = format!("{}://{addr}/programmer_pool/status", security.scheme());
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
    if let Some(files) = &security.tls {
        let tls = crate::tls::rustls_client_config(files)
            .map_err(|e| StatusError::Connect(crate::channel::ChannelError::from(e).into()))?;
        builder = builder.use_preconfigured_tls(tls);
    }
    let client = builder.build().map_err(|source| StatusError::Http {
        url: url.clone(),
        source,
    })?;
    let mut request = client.get(&url);
    if let Some(token) = &security.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|source| StatusError::Http {
        url: url.clone(),
        source,
    })?;
    if !response.status().is_success() {
        return Err(StatusError::HttpStatus {
            url,
            status: response.status(),
        });
    }
    let body = response.bytes().await.map_err(|source| StatusError::Http {
        url: url.clone(),
        source,
    })?;
    serde_json::from_slice(&body).map_err(|source| StatusError::Json { url, source })
}

impl StatusError {
    /// What the operator should try next.
    pub fn hint(&self) -> &'static str {
        let refused = match self {
            StatusError::Rpc { status, .. } => matches!(
                status.code(),
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
            ),
            StatusError::HttpStatus { status, .. } => matches!(
                *status,
                reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN
            ),
            _ => false,
        };
        if refused {
            "set PAS_TOKEN to a token with the read role or more: `pas token new`"
        } else {
            "is the pool running? `pas up`"
        }
    }
}

/// The human view: summary line, programmer table, budget, alerts.
pub fn render(s: &PoolStatus) -> String {
    let mut out = format!(
        "Pool: {} of {} programmers available, {} on backup LLM, queue {} (manager {}/{}), strategy {}\n",
        s.available,
        s.pool_size,
        s.using_backup,
        s.total_queue_depth,
        s.manager_queue_depth,
        s.manager_queue_capacity,
        if s.strategy.is_empty() {
            "-"
        } else {
            &s.strategy
        },
    );
    // Programmers found by DNS share a port on many hosts: show their addresses then, and the
    // region column only when some programmer has one (a static pool's table is unchanged).
    let hosts: std::collections::BTreeSet<&str> = s
        .programmers
        .iter()
        .map(|p| p.address.rsplit_once(':').map_or("", |(host, _)| host))
        .collect();
    let by_address = hosts.len() > 1;
    let regions = s.programmers.iter().any(|p| !p.region.is_empty());
    let mut header = vec!["ID", if by_address { "ADDRESS" } else { "PORT" }];
    if regions {
        header.push("REGION");
    }
    header.extend([
        "STATE",
        "LLM IN USE",
        "CIRCUIT",
        "QUEUE",
        "IN FLIGHT",
        "DONE",
        "FAILED",
    ]);
    let mut table = super::table(&header);
    for p in &s.programmers {
        let mut row = programmer_row(p);
        if by_address {
            row[1] = p.address.clone();
        }
        if regions {
            let region = if p.region.is_empty() { "-" } else { &p.region };
            row.insert(2, region.to_string());
        }
        table.add_row(row);
    }
    out.push_str(&table.to_string());
    out.push('\n');
    out.push_str(&render_llm_stats(&s.llm_stats));
    match &s.budget {
        Some(b) => {
            out.push_str(&format!(
                "Budget {}: ${:.2} spent + ${:.2} reserved of ${:.2} (${:.2} left",
                b.day, b.spent_usd, b.reserved_usd, b.limit_usd, b.remaining_usd
            ));
            if b.alert_threshold_usd > 0.0 {
                out.push_str(&format!("; alert at ${:.2}", b.alert_threshold_usd));
            }
            out.push_str(")\n");
            if b.earlier_holds_usd > 0.0 {
                out.push_str(&format!(
                    "  + ${:.2} still held by tasks reserved on earlier days (booked there)\n",
                    b.earlier_holds_usd
                ));
            }
        }
        None => out.push_str("Budget: unknown\n"),
    }
    if s.alerts.is_empty() {
        out.push_str("Alerts: none\n");
    } else {
        out.push_str(&format!("Alerts ({}):\n", s.alerts.len()));
        for a in &s.alerts {
            let since = chrono::DateTime::from_timestamp_millis(a.since_ms)
                .map(|t| format!(" (since {})", t.format("%Y-%m-%d %H:%M:%SZ")))
                .unwrap_or_default();
            out.push_str(&format!("  ! {}: {}{since}\n", a.kind, a.message));
        }
    }
    out
}

/// Per-LLM task figures (from the manager's finished tasks): p50/p95 duration and success rate.
fn render_llm_stats(stats: &[LlmStats]) -> String {
    if stats.is_empty() {
        return "LLMs: no finished tasks yet\n".to_string();
    }
    let mut table = super::table(&["LLM", "TASKS", "SUCCESS", "P50", "P95", "ATTEMPTS (FAILED)"]);
    for l in stats {
        let (rate, p50, p95) = if l.tasks == 0 {
            ("-".to_string(), "-".to_string(), "-".to_string())
        } else {
            (
                format!("{:.0}%", l.success_rate * 100.0),
                duration_text(l.p50_duration_ms),
                duration_text(l.p95_duration_ms),
            )
        };
        table.add_row([
            l.llm.clone(),
            l.tasks.to_string(),
            rate,
            p50,
            p95,
            format!("{} ({})", l.attempts, l.attempts_failed),
        ]);
    }
    format!("LLMs (tasks finished since the manager started):\n{table}\n")
}

/// `850ms`, `4.2s`, `2m05s`: a duration as the tables show it (also `pas tasks`).
pub fn duration_text(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

fn programmer_row(p: &ProgrammerSummary) -> Vec<String> {
    let state = match ProgrammerState::try_from(p.state) {
        Ok(ProgrammerState::Available) => "available",
        Ok(ProgrammerState::Unavailable) => "unavailable",
        Ok(ProgrammerState::Draining) => "draining",
        _ => "unknown",
    };
    let which = if p.using_backup { "backup" } else { "primary" };
    let llm = if p.current_llm.is_empty() {
        "-".to_string()
    } else {
        format!("{} ({which})", p.current_llm)
    };
    let circuit = circuit_name(CircuitState::try_from(p.circuit_state).unwrap_or_default());
    vec![
        p.id.clone(),
        p.port.to_string(),
        state.to_string(),
        llm,
        circuit.to_string(),
        p.queue_depth.to_string(),
        p.in_flight.to_string(),
        p.completed.to_string(),
        p.failed.to_string(),
    ]
}

/// The supervisor's process table, when `pas up` runs for this data directory.
fn process_table(run: &RunDir) -> Option<String> {
    run.running_pid()?;
    let state = run.read_state().ok().flatten()?;
    Some(format!(
        "Processes of pas up (pid {}):\n{}\n",
        state.pid,
        super::up::children_table(&state.children)
    ))
}

/// "Supervisor: pas up pid N, 3 processes, 1 restart (Prog-001: killed by SIGKILL after 2.4s)".
fn supervisor_line(run: &RunDir) -> Option<String> {
    let pid = run.running_pid()?;
    let state = run.read_state().ok().flatten()?;
    let restarts: u32 = state.children.iter().map(|c| c.restarts).sum();
    let mut line = format!(
        "Supervisor: pas up pid {pid}, {} processes, {restarts} restart{}",
        state.children.len(),
        if restarts == 1 { "" } else { "s" }
    );
    let details: Vec<String> = state
        .children
        .iter()
        .filter(|c| c.restarts > 0)
        .map(|c| {
            format!(
                "{} ×{}: {}",
                c.name,
                c.restarts,
                c.last_exit.as_deref().unwrap_or("?")
            )
        })
        .collect();
    if !details.is_empty() {
        line.push_str(&format!(" ({})", details.join("; ")));
    }
    line.push('\n');
    if let Some(reload) = &state.reload {
        let state = match reload.state {
            ReloadState::Rolling => "restarting",
            ReloadState::Done => "done",
            ReloadState::Stopped => "stopped",
            ReloadState::Invalid => "file not loaded",
        };
        line.push_str(&format!(
            "Last configuration re-read (#{}): {state}: {}\n",
            reload.seq, reload.detail
        ));
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::v1::{Alert, Budget};

    fn programmer(id: &str, up: bool, backup: bool) -> ProgrammerSummary {
        ProgrammerSummary {
            id: id.into(),
            port: 6151,
            primary_llm: "ollama/a".into(),
            backup_llm: "ollama/b".into(),
            capabilities: vec!["fast".into()],
            state: if up {
                ProgrammerState::Available
            } else {
                ProgrammerState::Unavailable
            } as i32,
            queue_depth: 2,
            in_flight: 1,
            circuit_state: if backup {
                CircuitState::Open
            } else {
                CircuitState::Closed
            } as i32,
            using_backup: backup,
            current_llm: if backup { "ollama/b" } else { "ollama/a" }.into(),
            completed: 7,
            failed: 3,
            paid: false,
            region: String::new(),
            address: "127.0.0.1:6151".into(),
        }
    }

    #[test]
    fn the_table_shows_every_programmer_budget_and_alerts() {
        let status = PoolStatus {
            pool_size: 2,
            available: 1,
            unavailable: 1,
            using_backup: 1,
            total_queue_depth: 4,
            programmers: vec![
                programmer("001", true, true),
                programmer("002", false, false),
            ],
            budget: Some(Budget {
                day: "2026-11-24".into(),
                spent_usd: 1.5,
                reserved_usd: 5.0,
                limit_usd: 50.0,
                remaining_usd: 43.5,
                alert_threshold_usd: 40.0,
                earlier_holds_usd: 2.5,
                ..Default::default()
            }),
            alerts: vec![Alert {
                kind: "low_availability".into(),
                message: "only 1 of 2 programmers available".into(),
                since_ms: 0,
            }],
            manager_queue_depth: 0,
            manager_queue_capacity: 100,
            strategy: "least_loaded".into(),
            llm_stats: vec![LlmStats {
                llm: "ollama/a".into(),
                tasks: 20,
                succeeded: 19,
                success_rate: 0.95,
                p50_duration_ms: 4_200,
                p95_duration_ms: 65_000,
                attempts: 22,
                attempts_failed: 3,
            }],
        };
        let text = render(&status);
        assert!(text.starts_with("Pool: 1 of 2 programmers available, 1 on backup LLM, queue 4 (manager 0/100), strategy least_loaded\n"), "{text}");
        let row1 = text.lines().find(|l| l.contains("001")).unwrap();
        for cell in ["6151", "available", "ollama/b (backup)", "open", "7", "3"] {
            assert!(row1.contains(cell), "{cell} missing in {row1}");
        }
        let row2 = text.lines().find(|l| l.contains("002")).unwrap();
        for cell in ["unavailable", "ollama/a (primary)", "closed"] {
            assert!(row2.contains(cell), "{cell} missing in {row2}");
        }
        assert!(text.contains("Budget 2026-11-24: $1.50 spent + $5.00 reserved of $50.00 ($43.50 left; alert at $40.00)\n  + $2.50 still held by tasks reserved on earlier days"), "{text}");
        assert!(text.contains("  ! low_availability: only 1 of 2 programmers available (since 1970-01-01 00:00:00Z)"), "{text}");
        let llm_row = text
            .lines()
            .find(|l| l.contains("ollama/a") && l.contains("95%"))
            .unwrap_or_else(|| panic!("LLM row in {text}"));
        for cell in ["20", "4.2s", "1m05s", "22 (3)"] {
            assert!(llm_row.contains(cell), "{cell} missing in {llm_row}");
        }
    }

    #[test]
    fn no_alerts_and_no_budget_are_said_plainly() {
        let text = render(&PoolStatus::default());
        assert!(text.contains("Budget: unknown"), "{text}");
        assert!(text.contains("Alerts: none"), "{text}");
        assert!(text.contains("LLMs: no finished tasks yet"), "{text}");
    }

    #[test]
    fn the_supervisor_line_tells_the_last_configuration_re_read() {
        use super::super::rundir::{ReloadReport, UpState};
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path().to_path_buf());
        run.write_pid(std::process::id()).unwrap();
        let mut state = UpState {
            pid: std::process::id(),
            config: "/x/pool.yaml".into(),
            only: Vec::new(),
            started_ms: 0,
            ready: true,
            failed: None,
            children: Vec::new(),
            reload: None,
        };
        run.write_state(&state).unwrap();
        let line = supervisor_line(&run).unwrap();
        assert!(!line.contains("re-read"), "{line}");
        state.reload = Some(ReloadReport {
            seq: 2,
            state: ReloadState::Stopped,
            detail: "Prog-001 was not healthy within 60 s".into(),
        });
        run.write_state(&state).unwrap();
        let line = supervisor_line(&run).unwrap();
        assert!(
            line.contains("Last configuration re-read (#2): stopped: Prog-001 was not healthy"),
            "{line}"
        );
    }
}
