//! Task start (issue 13): how long a task waits for aider to reach its LLM, cold (a new Python
//! per attempt) against warm (a worker forked from the programmer's pre-imported zygote), side by
//! side in one run; the same for a failover attempt; a 20-task batch on 10 programmers (makespan,
//! CPU seconds per task); the idle pool's PSS with and without warm workers.
//!
//! Start = Execute accepted (the programmer's response stream opened, at the client) → the task's
//! first request at llm-sim (`/_sim/requests`, `at_ms`: millisecond resolution). Failover start =
//! the primary's request (answered `http_500` at once) → the backup's first request: the retry
//! delay is 0, so this is the worktree reset plus the second aider start. Tasks alternate cold /
//! warm so drift on the shared machine hits both. CPU seconds: utime + stime of each programmer's
//! process tree, its reaped children included (cold aider processes are the programmer's children,
//! warm workers the zygote's), over the batch; the zygote's one-time import before it is not
//! counted (it is in the idle PSS instead).

use super::{Dist, Section, mib, table};
use crate::common::Sim;
use crate::common::pool::{ChildGuard, PoolOptions, TestPool, TestProgrammer};
use anyhow::{Context, ensure};
use pas::contract::v1::programmer_client::ProgrammerClient;
use pas::contract::v1::task_event::Kind;
use pas::contract::v1::{TaskRequest, TaskState};
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::transport::Channel;

/// Programmer 002's primary always fails at once: its tasks fail over.
const SCRIPT: &str = "rules:\n  - model: \"primary-002\"\n    fault: http_500\n";
/// The batch's fixed LLM latency.
const BATCH_SCRIPT: &str = "default:\n  latency_ms: 1000\n";
const MODES: [&str; 2] = ["cold", "warm"];
/// Linux reports process CPU times in clock ticks of 1/100 s (USER_HZ).
const TICKS_PER_S: f64 = 100.0;

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `rounds` measured tasks per mode and kind (after one warm-up each), then the batch.
pub fn run(rounds: usize, batch_tasks: usize) -> anyhow::Result<Section> {
    let rt = tokio::runtime::Runtime::new()?;
    let starts = rt.block_on(starts(rounds))?;
    // The batch's figures are reported even when they could not be measured (the starts stand).
    let batch = rt.block_on(batch(batch_tasks));
    let mut t = table(&[
        "start",
        "mode",
        "n",
        "p50 s",
        "p95 s",
        "min–max s",
        "cold p50 ÷ warm p50",
    ]);
    let mut summary = serde_json::Map::new();
    for kind in ["first attempt", "failover attempt"] {
        let dist = |mode: &str| {
            Dist::of(
                &starts
                    .iter()
                    .filter(|s| s.kind == kind && s.mode == mode)
                    .map(|s| s.seconds)
                    .collect::<Vec<_>>(),
            )
        };
        let (cold, warm) = (dist("cold"), dist("warm"));
        for (mode, d) in [("cold", cold), ("warm", warm)] {
            t.add_row(vec![
                kind.to_string(),
                mode.to_string(),
                d.n.to_string(),
                format!("{:.3}", d.p50),
                format!("{:.3}", d.p95),
                format!("{:.3}–{:.3}", d.min, d.max),
                if mode == "warm" {
                    format!("{:.1}×", cold.p50 / warm.p50)
                } else {
                    String::new()
                },
            ]);
        }
        summary.insert(kind.into(), json!({"cold": cold, "warm": warm}));
    }
    let mut b = table(&[
        "mode",
        "tasks",
        "makespan s",
        "CPU s / task",
        "idle PSS (10 programmers + workers) MiB",
        "processes",
    ]);
    let batch_note = match &batch {
        Ok(_) => String::new(),
        Err(e) => format!("\n\nBatch FAILED in this run: {e:#}\n"),
    };
    let batch = batch.unwrap_or_default();
    for r in &batch {
        b.add_row(vec![
            r.mode.to_string(),
            r.tasks.to_string(),
            format!("{:.1}", r.makespan_s),
            format!("{:.2}", r.cpu_s / r.tasks as f64),
            format!("{:.0}", mib(r.idle_pss_kib)),
            r.idle_processes.to_string(),
        ]);
    }
    let markdown = format!(
        "### Task start (cold vs warm aider)\n\nExecute accepted → the task's first request at \
         llm-sim, one programmer per mode, tasks alternating cold / warm ({rounds} each after a \
         warm-up); failover: the primary's immediate `http_500` → the backup's first request \
         (`retry_delay_s: 0`).\n\n{t}\n\nBatch: {batch_tasks} tasks at once on 10 programmers \
         (2 each, direct Execute, `max_concurrent_per_programmer: 1`, `warm_workers` default = 1), \
         llm-sim `latency_ms: 1000`. CPU = utime + stime of the programmers' process trees over \
         the batch (reaped children included). Idle PSS: the ten programmers and everything they \
         run, measured after the batch once the pool is idle again.\n\n{b}\n{batch_note}"
    );
    let json = json!({"starts": starts, "summary": summary, "batch": batch});
    Ok(Section {
        name: "task_start",
        markdown,
        json,
    })
}

#[derive(Debug, serde::Serialize)]
struct Start {
    kind: &'static str,
    mode: &'static str,
    seconds: f64,
}

struct Pool {
    mode: &'static str,
    pool: TestPool,
    procs: Vec<ChildGuard>,
}

fn pool(mode: &'static str, programmers: usize, script: &str) -> Pool {
    let options = PoolOptions {
        programmers: (1..=programmers)
            .map(|i| TestProgrammer::free(&format!("{i:03}")))
            .collect(),
        retry_delay_s: 0.0,
        max_retries: 1,
        // Every failover task must try its primary first: the breaker never opens.
        failure_threshold: 1_000_000,
        // A busy 2-core machine can take long to start ten cold interpreters at once.
        task_timeout_s: 900,
        request_timeout_s: 300,
        ..PoolOptions::default()
    };
    let pool = TestPool::with_sim(options, Sim::start_with_script(script)).with_aider_start(mode);
    pool.sample_repo();
    let procs = pool.start_all_programmers().into_values().collect();
    Pool { mode, pool, procs }
}

fn task(id: String) -> TaskRequest {
    TaskRequest {
        task_id: id,
        task_description: "Add docstrings to all functions".into(),
        files: vec!["src/module.py".into()],
        workspace: "sample".into(),
        ..Default::default()
    }
}

/// Runs one task on `id` to its end; when the call was accepted (Unix seconds) and its state.
async fn execute(
    c: &mut ProgrammerClient<Channel>,
    req: TaskRequest,
) -> anyhow::Result<(f64, TaskState)> {
    let mut stream = c.execute(req).await.context("Execute")?.into_inner();
    let accepted = now_s();
    let mut state = TaskState::Unspecified;
    while let Some(ev) = stream.message().await.context("task stream")? {
        if let Some(Kind::Result(r)) = ev.kind {
            state = TaskState::try_from(r.status).unwrap_or(TaskState::Unspecified);
        }
    }
    Ok((accepted, state))
}

/// Times (Unix seconds) of the simulator's requests for `model` (as sent: no provider prefix) at or
/// after `since`.
async fn request_times(pool: &TestPool, model: &str, since: f64) -> anyhow::Result<Vec<f64>> {
    let v = pool.sim.requests().await;
    let list = v
        .as_array()
        .or_else(|| v["requests"].as_array())
        .context("GET /_sim/requests: not a list")?;
    let mut times: Vec<f64> = list
        .iter()
        .filter(|r| r["model"].as_str() == Some(model))
        .filter_map(|r| r["at_ms"].as_f64().map(|ms| ms / 1000.0))
        .filter(|&t| t >= since - 0.001)
        .collect();
    times.sort_by(f64::total_cmp);
    Ok(times)
}

async fn starts(rounds: usize) -> anyhow::Result<Vec<Start>> {
    let pools: Vec<Pool> = MODES.iter().map(|m| pool(m, 2, SCRIPT)).collect();
    let mut clients = Vec::new();
    for p in &pools {
        let a = super::live::programmer(&p.pool, "001").await?;
        let b = super::live::programmer(&p.pool, "002").await?;
        clients.push((a, b));
    }
    let mut out = Vec::new();
    for round in 0..=rounds {
        for (p, (a, b)) in pools.iter().zip(clients.iter_mut()) {
            let id = |k: &str| format!("start-{k}-{}-{round}-{}", p.mode, std::process::id());
            let (accepted, state) = execute(a, task(id("plain"))).await?;
            ensure!(
                state == TaskState::Succeeded,
                "{}: plain task {state:?}",
                p.mode
            );
            let first = request_times(&p.pool, "primary-001", accepted).await?;
            let (accepted2, state) = execute(b, task(id("failover"))).await?;
            ensure!(
                state == TaskState::Succeeded,
                "{}: failover {state:?}",
                p.mode
            );
            let primary = request_times(&p.pool, "primary-002", accepted2).await?;
            let backup = request_times(&p.pool, "backup-002", accepted2).await?;
            eprintln!("task_start: round {round} {} done", p.mode);
            if round == 0 {
                continue; // warm-up: the zygote may still have been importing
            }
            let first = first.first().context("no request for primary-001")?;
            out.push(Start {
                kind: "first attempt",
                mode: p.mode,
                seconds: first - accepted,
            });
            let (p0, b0) = (
                primary.last().context("no primary-002 request")?,
                backup.first().context("no backup-002 request")?,
            );
            out.push(Start {
                kind: "failover attempt",
                mode: p.mode,
                seconds: b0 - p0,
            });
        }
    }
    Ok(out)
}

#[derive(Debug, serde::Serialize)]
struct Batch {
    mode: &'static str,
    tasks: usize,
    makespan_s: f64,
    cpu_s: f64,
    idle_pss_kib: u64,
    idle_processes: usize,
}

/// CPU seconds (utime + stime + reaped children's) of `pid` and its live descendants.
fn tree_cpu_s(pid: u32) -> f64 {
    let ticks = |p: u32| -> u64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            return 0;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return 0;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14-17 of stat (utime stime cutime cstime); `rest` starts at field 3.
        (11..=14)
            .filter_map(|i| f.get(i).and_then(|v| v.parse::<u64>().ok()))
            .sum()
    };
    let all: u64 = std::iter::once(pid)
        .chain(super::descendants(pid))
        .map(ticks)
        .sum();
    all as f64 / TICKS_PER_S
}

/// PSS (KiB) and count of `pid` and its live descendants.
fn tree_pss(pid: u32) -> (u64, usize) {
    let pids: Vec<u32> = std::iter::once(pid)
        .chain(super::descendants(pid))
        .collect();
    let pss = pids
        .iter()
        .filter_map(|&p| super::mem(p))
        .map(|m| m.pss_kib)
        .sum();
    (pss, pids.len())
}

async fn batch(tasks: usize) -> anyhow::Result<Vec<Batch>> {
    let mut out = Vec::new();
    for mode in MODES {
        let p = pool(mode, 10, BATCH_SCRIPT);
        let ids = p.pool.ids();
        let mut clients = Vec::new();
        for id in &ids {
            clients.push(super::live::programmer(&p.pool, id).await?);
        }
        // One warm-up task per programmer (warm: the zygotes are ready after it).
        let warmups = clients.iter().cloned().zip(&ids).map(|(mut c, id)| {
            let req = task(format!("batch-warmup-{mode}-{id}-{}", std::process::id()));
            async move { execute(&mut c, req).await }
        });
        for r in futures::future::join_all(warmups).await {
            ensure!(r?.1 == TaskState::Succeeded, "{mode}: warm-up task failed");
        }
        let pids: Vec<u32> = p.procs.iter().map(ChildGuard::pid).collect();
        let cpu0: f64 = pids.iter().map(|&pid| tree_cpu_s(pid)).sum();
        let started = std::time::Instant::now();
        let runs = (0..tasks).map(|n| {
            let mut c = clients[n % clients.len()].clone();
            let req = task(format!("batch-{mode}-{n}-{}", std::process::id()));
            async move { execute(&mut c, req).await }
        });
        for r in futures::future::join_all(runs).await {
            ensure!(r?.1 == TaskState::Succeeded, "{mode}: batch task failed");
        }
        let makespan_s = started.elapsed().as_secs_f64();
        let cpu1: f64 = pids.iter().map(|&pid| tree_cpu_s(pid)).sum();
        // Idle again: give the zygotes time to fork their replacements.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (idle_pss_kib, idle_processes) = pids
            .iter()
            .map(|&pid| tree_pss(pid))
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
        out.push(Batch {
            mode,
            tasks,
            makespan_s,
            cpu_s: cpu1 - cpu0,
            idle_pss_kib,
            idle_processes,
        });
    }
    Ok(out)
}
