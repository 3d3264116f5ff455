//! What a programmer adds around aider, per task.
//!
//! Compares, on the same llm-sim and the same repository:
//! - (a) **Execute**: wall time of a task sent to a real `pas programmer` process over gRPC, from
//!   the call to the result (validation, queue, worktree create/finish/remove, aider, classify,
//!   event streaming);
//! - (b) **aider alone**: the same aider attempt run directly through the same runner
//!   ([`pas::programmer::aider::run_aider`], same invocation as the programmer builds) in a
//!   prepared worktree, reset between runs outside the timing;
//! - (c) **dry_run Execute**: validate, queue and report the LLM, no aider and no git writes.
//!
//! (a) and (b) alternate, so a change in machine load affects both alike. Prints a table and writes
//! `target/bench/programmer_overhead.json` (under `$CARGO_TARGET_DIR` when set).
//!
//! Reproduce:
//! ```text
//! cargo bench --bench programmer_overhead                 # 10 runs of (a) and (b), 50 of (c)
//! PAS_BENCH_RUNS=20 PAS_BENCH_DRY_RUNS=200 cargo bench --bench programmer_overhead
//! ```
//! Needs the aider venv (`scripts/install-aider.sh`, or `PAS_AIDER_PYTHON`). Not part of
//! `cargo test`: run without `--bench` (as `cargo test --all-targets` does) it only says so.

#[path = "../tests/common/mod.rs"]
mod common;

use common::pool::{self, PoolOptions, TestPool};
use pas::config::Config;
use pas::contract::v1::{TaskRequest, TaskState};
use pas::programmer::aider::{AiderInvocation, run_aider};
use pas::programmer::attempt::endpoint_for;
use std::path::Path;
use std::time::{Duration, Instant};

const TASK: &str = "Add docstrings to all functions";
const FILE: &str = "src/module.py";

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// Nearest-rank percentile of sorted samples, in milliseconds.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

#[derive(serde::Serialize)]
struct Summary {
    runs: usize,
    p50_ms: f64,
    p95_ms: f64,
    mean_ms: f64,
    min_ms: f64,
    max_ms: f64,
    samples_ms: Vec<f64>,
}

fn summarize(samples: &[Duration]) -> Summary {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    let samples_ms = ms.clone();
    ms.sort_by(f64::total_cmp);
    Summary {
        runs: ms.len(),
        p50_ms: percentile(&ms, 50.0),
        p95_ms: percentile(&ms, 95.0),
        mean_ms: ms.iter().sum::<f64>() / ms.len().max(1) as f64,
        min_ms: ms.first().copied().unwrap_or(f64::NAN),
        max_ms: ms.last().copied().unwrap_or(f64::NAN),
        samples_ms,
    }
}

fn git(dir: &Path, args: &[&str]) {
    common::git(dir, args);
}

fn request(dry_run: bool) -> TaskRequest {
    TaskRequest {
        dry_run,
        ..pool::task_request("sample", TASK, &[FILE])
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "programmer_overhead: a benchmark; run it with `cargo bench --bench programmer_overhead`"
        );
        return;
    }
    let runs = env_count("PAS_BENCH_RUNS", 10);
    let dry_runs = env_count("PAS_BENCH_DRY_RUNS", 50);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(bench(runs, dry_runs));
}

/// `/proc/loadavg`'s first three fields: the figures are only comparable on a quiet machine.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn bench(runs: usize, dry_runs: usize) {
    let load_before = load_average();
    let pool = TestPool::new(PoolOptions {
        task_timeout_s: 600,
        request_timeout_s: 120,
        ..PoolOptions::default()
    });
    let repo = pool.sample_repo();
    let base = common::git_head(&repo);
    let _prog = pool.start_programmer("001");
    let mut client = pool.programmer_client("001").await;

    // The invocation the programmer builds for attempt 1 of this task (see programmer::attempt).
    let config = Config::load(&pool.config_path).expect("load the pool config");
    let spec = config.programmer("001").expect("programmer 001").clone();
    let direct_dir = pool.dir.path().join("direct");
    git(
        &repo,
        &[
            "worktree",
            "add",
            "--quiet",
            "-b",
            "bench-direct",
            direct_dir.to_str().expect("utf-8 path"),
            &base,
        ],
    );
    let invocation = AiderInvocation {
        python: config.aider_python(),
        workdir: direct_dir.clone(),
        model: endpoint_for(&spec.primary),
        message: TASK.into(),
        files: vec![FILE.into()],
        auto_commit: spec.limits.auto_commit,
        extra_flags: config.pool.aider.extra_flags.clone(),
        request_timeout_s: config.pool.aider.request_timeout_s,
        launch_prefix: Vec::new(),
        extra_env: Vec::new(),
        usage_cap: None,
        nice: 0,
        max_memory_mib: 0,
        max_reflections: 3,
        warm: None,
    };

    let execute = |client: &mut pool::ProgrammerClient, dry_run: bool| {
        let mut client = client.clone();
        async move {
            let started = Instant::now();
            let (_, result) = pool::execute_task(&mut client, request(dry_run)).await;
            let elapsed = started.elapsed();
            assert_eq!(
                TaskState::try_from(result.status),
                Ok(TaskState::Succeeded),
                "{result:#?}"
            );
            (elapsed, result)
        }
    };
    let direct = || {
        let inv = invocation.clone();
        let dir = direct_dir.clone();
        let base = base.clone();
        async move {
            git(&dir, &["reset", "--quiet", "--hard", &base]);
            git(&dir, &["clean", "-ffdxq"]);
            let (tx, mut rx) = tokio::sync::mpsc::channel(256);
            let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
            let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
            let started = Instant::now();
            let run = run_aider(
                inv,
                tx,
                tokio_util::sync::CancellationToken::new(),
                deadline,
            )
            .await
            .expect("aider runs");
            let elapsed = started.elapsed();
            let _ = drain.await;
            assert!(
                run.output.text().contains("Applied edit to"),
                "the direct run applied its edit:\n{}",
                run.output
            );
            elapsed
        }
    };

    // Warm-up (not measured): python bytecode and file caches for both paths.
    eprintln!("warming up…");
    execute(&mut client, false).await;
    direct().await;

    let mut through_programmer = Vec::new();
    let mut server_side = Vec::new();
    let mut attempt_side = Vec::new();
    let mut aider_alone = Vec::new();
    for i in 0..runs {
        eprintln!("run {}/{runs}", i + 1);
        let (elapsed, result) = execute(&mut client, false).await;
        through_programmer.push(elapsed);
        server_side.push(Duration::from_millis(result.duration_ms));
        attempt_side.push(Duration::from_millis(
            result.attempts.first().map_or(0, |a| a.duration_ms),
        ));
        aider_alone.push(direct().await);
    }
    let mut dry = Vec::new();
    for _ in 0..dry_runs {
        dry.push(execute(&mut client, true).await.0);
    }

    let a = summarize(&through_programmer);
    let b = summarize(&aider_alone);
    let server = summarize(&server_side);
    let attempt = summarize(&attempt_side);
    let c = summarize(&dry);
    // Per-run parts of the overhead that do not depend on aider's own (noisy) run time.
    let outside_attempt = summarize(
        &server_side
            .iter()
            .zip(&attempt_side)
            .map(|(task, attempt)| task.saturating_sub(*attempt))
            .collect::<Vec<_>>(),
    );
    let transport = summarize(
        &through_programmer
            .iter()
            .zip(&server_side)
            .map(|(client, task)| client.saturating_sub(*task))
            .collect::<Vec<_>>(),
    );
    let overhead_p50 = a.p50_ms - b.p50_ms;
    let overhead_p95 = a.p95_ms - b.p95_ms;
    // Per-run pairs: each Execute minus the aider-alone run right after it.
    let mut paired_ms: Vec<f64> = through_programmer
        .iter()
        .zip(&aider_alone)
        .map(|(x, y)| (x.as_secs_f64() - y.as_secs_f64()) * 1000.0)
        .collect();
    paired_ms.sort_by(f64::total_cmp);

    let mut table = comfy_table::Table::new();
    table.set_header([
        "measure", "runs", "p50 ms", "p95 ms", "mean ms", "min ms", "max ms",
    ]);
    for (name, s) in [
        ("(a) Execute through pas programmer", &a),
        ("(b) aider alone (run_aider)", &b),
        ("    programmer-side task time", &server),
        ("    programmer-side attempt time", &attempt),
        (
            "    task minus attempt (worktree add/remove)",
            &outside_attempt,
        ),
        ("    client minus task (gRPC, validation)", &transport),
        ("(c) dry_run Execute", &c),
    ] {
        table.add_row([
            name.to_string(),
            s.runs.to_string(),
            format!("{:.1}", s.p50_ms),
            format!("{:.1}", s.p95_ms),
            format!("{:.1}", s.mean_ms),
            format!("{:.1}", s.min_ms),
            format!("{:.1}", s.max_ms),
        ]);
    }
    println!("{table}");
    println!(
        "load average before/after: {load_before} / {}",
        load_average()
    );
    println!(
        "overhead (a)-(b): p50 {overhead_p50:+.1} ms, p95 {overhead_p95:+.1} ms; \
         paired per run: p50 {:+.1} ms, p95 {:+.1} ms",
        percentile(&paired_ms, 50.0),
        percentile(&paired_ms, 95.0)
    );

    let json = serde_json::json!({
        "benchmark": "programmer_overhead",
        "task": TASK,
        "model": spec.primary.name,
        "runs": runs,
        "dry_runs": dry_runs,
        "execute_through_programmer": a,
        "aider_alone": b,
        "programmer_side_task": server,
        "programmer_side_attempt": attempt,
        "dry_run_execute": c,
        "task_minus_attempt": outside_attempt,
        "client_minus_task": transport,
        "overhead_ms": {
            "p50_difference": overhead_p50,
            "p95_difference": overhead_p95,
            "paired_p50": percentile(&paired_ms, 50.0),
            "paired_p95": percentile(&paired_ms, 95.0),
            "paired_samples": paired_ms,
        },
        "machine": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "load_average_before": load_before,
            "load_average_after": load_average(),
        },
    });
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let out_dir = target.join("bench");
    std::fs::create_dir_all(&out_dir).expect("create target/bench");
    let out = out_dir.join("programmer_overhead.json");
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&json).expect("JSON") + "\n",
    )
    .expect("write the JSON report");
    println!("wrote {}", out.display());
}
