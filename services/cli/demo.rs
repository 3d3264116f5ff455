//! `pas demo`: the main job. Starts the LLM simulator in place of the providers (clearly labelled),
//! the manager and every programmer of the configuration as supervised children, prepares a small
//! sample git repository, dispatches the original example task ("Add docstrings to all functions"
//! on `src/module.py`) plus concurrent tasks with other capabilities, streams their progress, and
//! ends with the pool status and every diff. `--real` skips the simulator and uses the providers
//! the environment points at (OLLAMA_API_BASE, ANTHROPIC_API_KEY, OPENAI_API_KEY, …).
//!
//! The shipped configuration is used unchanged: the demo redirects the workspace root, the data
//! directory and the provider endpoints through the environment of its children.

use crate::cli::supervisor::{Policy, Readiness, Supervisor};
use crate::cli::{dispatch_view, probe, status, up};
use crate::config::Config;
use crate::contract::v1::task_event::Kind;
use crate::contract::v1::{DispatchRequest, TaskResult, TaskState};
use crate::telemetry::LogFormat;
use anyhow::{Context, bail};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

/// Command-line arguments of `pas demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Use the real LLM providers from the environment instead of the simulator.
    #[arg(long)]
    pub real: bool,
    /// Directory for the demo's workspaces, data and logs (recreated; default: <data_dir>/demo).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Leave the pool running at the end (stop it with Ctrl-C).
    #[arg(long)]
    pub keep_running: bool,
    /// How long the pool may take to become healthy.
    #[arg(long, default_value_t = 90)]
    pub wait_timeout_s: u64,
}

/// One demo task.
struct DemoTask {
    label: &'static str,
    description: &'static str,
    files: &'static [&'static str],
    capabilities: &'static [&'static str],
}

/// The original example task first, then one task per kind of programmer.
const TASKS: &[DemoTask] = &[
    DemoTask {
        label: "docstrings",
        description: "Add docstrings to all functions",
        files: &["src/module.py"],
        capabilities: &["fast"],
    },
    DemoTask {
        label: "premium",
        description: "Add docstrings to all functions",
        files: &["src/billing.py"],
        capabilities: &["premium", "reasoning"],
    },
    DemoTask {
        label: "openai",
        description: "Add a comment explaining the retry policy",
        files: &["src/retry.py"],
        capabilities: &["openai"],
    },
    DemoTask {
        label: "deepseek",
        description: "Add docstrings to all functions",
        files: &["src/strings.py"],
        capabilities: &["deepseek"],
    },
];

const SAMPLE_FILES: &[(&str, &str)] = &[
    (
        "README.md",
        "# sample\n\nA small project the demo's programmers edit.\n",
    ),
    (
        "src/module.py",
        "def add(a, b):\n    return a + b\n\n\ndef scale(values, factor):\n    return [v * factor for v in values]\n\n\ndef mean(values):\n    return sum(values) / len(values)\n",
    ),
    (
        "src/billing.py",
        "def invoice_total(lines, tax_rate):\n    subtotal = sum(qty * price for qty, price in lines)\n    return round(subtotal * (1 + tax_rate), 2)\n\n\ndef discount(total, percent):\n    return total * (100 - percent) / 100\n",
    ),
    (
        "src/retry.py",
        "import time\n\n\ndef retry(fn, attempts=3, delay=0.5):\n    for i in range(attempts):\n        try:\n            return fn()\n        except Exception:\n            if i == attempts - 1:\n                raise\n            time.sleep(delay * 2 ** i)\n",
    ),
    (
        "src/strings.py",
        "def slugify(text):\n    return '-'.join(text.lower().split())\n\n\ndef truncate(text, width):\n    return text if len(text) <= width else text[: width - 1] + '…'\n",
    ),
];

/// The sim makes Claude Sonnet 4 fail once, so the demo shows a failover to the backup.
const SIM_SCRIPT: &str =
    "rules:\n  - model: \"claude-sonnet-4*\"\n    fault: http_500\n    times: 1\n";

/// Runs the demo; exit 0 when every task succeeded.
pub fn run(config_path: &Path, log_format: LogFormat, args: DemoArgs) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(demo(config_path, log_format, args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(config_path: &Path, log_format: LogFormat, args: DemoArgs) -> anyhow::Result<bool> {
    let started = Instant::now();
    let config_path = std::fs::canonicalize(config_path)
        .with_context(|| format!("configuration {}", config_path.display()))?;
    let config =
        Config::load(&config_path).map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| config.data_dir().join("demo"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    let (workspaces, data, logs) = (dir.join("workspaces"), dir.join("data"), dir.join("logs"));
    for d in [&workspaces, &data, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let exe = std::env::current_exe().context("cannot find the pas executable")?;
    let mut env: Vec<(OsString, OsString)> = vec![
        ("PAS_WORKSPACE_ROOT".into(), workspaces.clone().into()),
        ("PAS_DATA_DIR".into(), data.clone().into()),
    ];

    heading("Programmer Pool demo");
    println!("config      {}", config_path.display());
    println!(
        "pool        {} programmers + Manager-Code on port {}",
        config.programmers().len(),
        config.pool.manager.port
    );
    let _sim = if args.real {
        println!(
            "LLMs        REAL providers from the environment (OLLAMA_API_BASE, ANTHROPIC_API_KEY, OPENAI_API_KEY, …)"
        );
        None
    } else {
        let (sim, base) = start_sim(&exe, &logs.join("llm-sim.log")).await?;
        println!(
            "LLMs        SIMULATED — every model is answered by `pas llm-sim` at {base}; no real LLM is called"
        );
        println!(
            "            (Claude Sonnet 4 is scripted to fail once, to show a failover to its backup)"
        );
        for (k, v) in [
            ("OLLAMA_API_BASE", base.clone()),
            ("OPENAI_API_BASE", format!("{base}/v1")),
            ("ANTHROPIC_API_BASE", base.clone()),
            ("OPENAI_API_KEY", "sk-simulated".into()),
            ("ANTHROPIC_API_KEY", "sk-ant-simulated".into()),
        ] {
            env.push((k.into(), v.into()));
        }
        Some(sim)
    };
    let repo = workspaces.join("sample");
    make_repo(&repo).await?;
    println!("workspace   {} (git repository \"sample\")", repo.display());
    println!("logs        {}", logs.display());

    heading("Starting the pool");
    let mut children =
        up::select_children(&config, &config_path, &[], &exe, log_format, &logs, &data)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    for child in &mut children {
        child.env = env.clone();
    }
    let supervisor =
        Supervisor::start(children, Policy::default()).map_err(|e| anyhow::anyhow!("{e}"))?;
    match supervisor
        .wait_ready(Duration::from_secs(args.wait_timeout_s), 3)
        .await
    {
        Readiness::Ready => {}
        other => {
            println!("{}", up::children_table(&supervisor.reports()));
            supervisor.shutdown().await;
            bail!(
                "the pool did not become healthy: {other:?} (see the logs in {})",
                logs.display()
            );
        }
    }
    println!("{}", up::children_table(&supervisor.reports()));

    let manager = crate::channel::connect_addr(&config.pool.manager.host, config.pool.manager.port);
    let security = crate::channel::ClientSecurity::for_config(Some(&config));
    let outcome = run_tasks(&manager, &security).await;
    let all_ok = match &outcome {
        Ok(results) => {
            heading("Pool status");
            match status::fetch(&manager, &security).await {
                Ok(s) => println!("{}", status::render(&s)),
                Err(e) => println!("(status unavailable: {e})"),
            }
            heading("Results");
            for (task, result) in results {
                println!("[{}] {}", task.label, task.description);
                println!("{}", dispatch_view::summary(&result_task_id(task), result));
                if !result.diff.is_empty() {
                    println!("{}", result.diff);
                }
            }
            results
                .iter()
                .all(|(_, r)| r.status == TaskState::Succeeded as i32)
        }
        Err(e) => {
            println!("dispatch failed: {e:#}");
            false
        }
    };

    if args.keep_running {
        println!("\nThe pool keeps running (manager at {manager}); press Ctrl-C to stop it.");
        let _ = tokio::signal::ctrl_c().await;
    }
    heading("Stopping the pool");
    supervisor.shutdown().await;
    let verdict = if all_ok {
        "all tasks succeeded"
    } else {
        "SOME TASKS FAILED"
    };
    println!(
        "demo finished in {:.1}s: {verdict}",
        started.elapsed().as_secs_f64()
    );
    Ok(all_ok)
}

fn heading(title: &str) {
    println!(
        "\n=== {title} {}",
        "=".repeat(70usize.saturating_sub(title.len()))
    );
}

fn result_task_id(task: &DemoTask) -> String {
    format!("demo-{}", task.label)
}

/// Dispatches every demo task at once and prints their events as they arrive, each line tagged
/// with its task.
async fn run_tasks(
    manager: &str,
    security: &crate::channel::ClientSecurity,
) -> anyhow::Result<Vec<(&'static DemoTask, TaskResult)>> {
    heading("Dispatching tasks (live)");
    let client = probe::pool_client(manager, Duration::from_secs(5), security)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let runs = TASKS.iter().map(|task| {
        let mut client = client.clone();
        async move {
            let request = DispatchRequest {
                task_description: task.description.into(),
                files: task.files.iter().map(|f| f.to_string()).collect(),
                run_id: "demo".into(),
                capabilities: task.capabilities.iter().map(|c| c.to_string()).collect(),
                prefer_free: Some(true),
                workspace: "sample".into(),
                task_id: format!("{}-{}", result_task_id(task), uuid::Uuid::new_v4().simple()),
                ..Default::default()
            };
            println!(
                "[{}] dispatch: {:?} on {} (capabilities: {})",
                task.label,
                task.description,
                task.files.join(", "),
                task.capabilities.join(", ")
            );
            let mut stream = client
                .dispatch(request)
                .await
                .map_err(|s| anyhow::anyhow!("[{}] {}: {}", task.label, s.code(), s.message()))?
                .into_inner();
            let mut result = None;
            // Output chunks end anywhere; print whole lines only, so tasks interleave readably.
            let mut pending = String::new();
            while let Some(event) = stream
                .message()
                .await
                .map_err(|s| anyhow::anyhow!("[{}] stream: {s}", task.label))?
            {
                match &event.kind {
                    Some(Kind::Output(o)) => {
                        pending.push_str(&o.text);
                        while let Some(end) = pending.find('\n') {
                            let line: String = pending.drain(..=end).collect();
                            if !line.trim().is_empty() {
                                println!("[{}] │ {}", task.label, line.trim_end());
                            }
                        }
                    }
                    Some(Kind::Result(r)) => result = Some(TaskResult::clone(r)),
                    _ => {
                        if let Some(notice) = dispatch_view::notice(&event) {
                            println!("[{}] {notice}", task.label);
                        }
                    }
                }
            }
            if !pending.trim().is_empty() {
                println!("[{}] │ {}", task.label, pending.trim_end());
            }
            let result = result.ok_or_else(|| {
                anyhow::anyhow!("[{}] the stream ended without a result", task.label)
            })?;
            println!(
                "[{}] done: {} on {} in {:.1}s",
                task.label,
                crate::contract::state_name(result.status),
                result.llm_used,
                result.duration_ms as f64 / 1000.0
            );
            Ok::<_, anyhow::Error>((task, result))
        }
    });
    futures::future::try_join_all(runs).await
}

/// Starts `pas llm-sim` on a free port; returns the child (killed on drop) and its base URL.
async fn start_sim(exe: &Path, log: &Path) -> anyhow::Result<(tokio::process::Child, String)> {
    let script = log.with_file_name("llm-sim-script.yaml");
    std::fs::write(&script, SIM_SCRIPT)?;
    let stderr = std::fs::File::create(log)?;
    let mut child = tokio::process::Command::new(exe)
        .args(["llm-sim", "--listen", "127.0.0.1:0", "--script"])
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true)
        .spawn()
        .context("cannot start pas llm-sim")?;
    let stdout = child.stdout.take().context("llm-sim stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("llm-sim did not start within 10 s")??
        .unwrap_or_default();
    let base = first
        .strip_prefix("llm-sim listening on ")
        .with_context(|| format!("unexpected llm-sim output {first:?}"))?
        .to_string();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, base))
}

/// Creates the sample repository with one commit.
async fn make_repo(repo: &Path) -> anyhow::Result<()> {
    for (rel, content) in SAMPLE_FILES {
        let path = repo.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, content)?;
    }
    let git = |args: &'static [&'static str]| {
        let repo = repo.to_path_buf();
        async move {
            let out = tokio::process::Command::new("git")
                .args([
                    "-c",
                    "user.name=demo",
                    "-c",
                    "user.email=demo@programmer-pool.local",
                ])
                .args(args)
                .current_dir(&repo)
                .stdin(Stdio::null())
                .output()
                .await
                .context("cannot run git")?;
            if !out.status.success() {
                bail!(
                    "git {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(())
        }
    };
    git(&["init", "-q", "-b", "main"]).await?;
    git(&["add", "-A"]).await?;
    git(&["commit", "-q", "-m", "sample project"]).await?;
    Ok(())
}
