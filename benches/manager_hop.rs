//! What the manager hop costs: latency of a task through the manager vs straight to a programmer
//! (p50/p99), and dispatch throughput of `dry_run` tasks both ways, measured side by side in one
//! run on real processes (`pas manager`, ten `pas programmer`s, `pas llm-sim`) on 127.0.0.1.
//!
//! Run: `cargo bench --bench manager_hop` (release build). Prints a table and writes
//! `target/bench/manager_hop.json`. Knobs: `PAS_BENCH_LATENCY_N` (sequential pairs, default 400),
//! `PAS_BENCH_THROUGHPUT_N` (tasks per side, default 2000), `PAS_BENCH_CONCURRENCY` (default 32).
//!
//! A dry run is validated (workspace and files checked with git) and routed by the manager, then
//! validated, queued and answered by the programmer; no aider runs. So the "hop" includes
//! everything the manager adds to a task: its own validation, the task record in SQLite
//! (insert, running, finished), scheduling, and relaying the stream. Latency pairs alternate
//! direct / via manager so both see the same machine load; throughput runs direct first, then
//! through the manager, each with the same number of concurrent callers.

#[path = "../tests/common/mod.rs"]
mod common;

use common::pool::{PoolOptions, TestPool, TestProgrammer, wait_available};
use pas::contract::v1::programmer_client::ProgrammerClient;
use pas::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use pas::contract::v1::task_event::Kind;
use pas::contract::v1::{DispatchRequest, TaskEvent, TaskRequest, TaskState};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Reads a task stream to its end; panics unless it ends with one succeeded result.
async fn drain(mut stream: tonic::Streaming<TaskEvent>) {
    let mut result = None;
    while let Some(ev) = stream.message().await.expect("stream") {
        if let Some(Kind::Result(r)) = ev.kind {
            result = Some(r);
        }
    }
    let r = result.expect("a result");
    assert_eq!(r.status, TaskState::Succeeded as i32, "{r:#?}");
}

fn direct_request() -> TaskRequest {
    TaskRequest {
        task_description: "bench".into(),
        files: vec!["src/module.py".into()],
        workspace: "sample".into(),
        run_id: "bench".into(),
        dry_run: true,
        ..Default::default()
    }
}

fn pool_request() -> DispatchRequest {
    DispatchRequest {
        task_description: "bench".into(),
        files: vec!["src/module.py".into()],
        workspace: "sample".into(),
        run_id: "bench".into(),
        dry_run: true,
        ..Default::default()
    }
}

async fn direct_once(c: &mut ProgrammerClient<Channel>) -> Duration {
    let t = Instant::now();
    let s = c.execute(direct_request()).await.expect("Execute");
    drain(s.into_inner()).await;
    t.elapsed()
}

async fn manager_once(c: &mut ProgrammerPoolClient<Channel>) -> Duration {
    let t = Instant::now();
    let s = c.dispatch(pool_request()).await.expect("Dispatch");
    drain(s.into_inner()).await;
    t.elapsed()
}

/// (p50, p90, p99, mean) in microseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64, f64, f64) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1e6
    };
    let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / samples.len() as f64;
    (at(0.50), at(0.90), at(0.99), mean * 1e6)
}

/// Runs `total` tasks with `concurrency` callers, each calling `one(caller number)` in turn;
/// returns (tasks per second, elapsed).
async fn throughput<F, Fut>(total: usize, concurrency: usize, one: F) -> (f64, Duration)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let one = Arc::new(one);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (next, one) = (next.clone(), one.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total {
                        return;
                    }
                    one(worker).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    let elapsed = started.elapsed();
    (total as f64 / elapsed.as_secs_f64(), elapsed)
}

fn main() {
    let latency_n = env_usize("PAS_BENCH_LATENCY_N", 400);
    let throughput_n = env_usize("PAS_BENCH_THROUGHPUT_N", 2000);
    let concurrency = env_usize("PAS_BENCH_CONCURRENCY", 32);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(latency_n, throughput_n, concurrency));
}

async fn run(latency_n: usize, throughput_n: usize, concurrency: usize) {
    // The shipped shape's numbers: ten programmers, one task at a time each, five waiting.
    let ids: Vec<String> = (1..=10).map(|i| format!("{i:03}")).collect();
    let pool = TestPool::new(PoolOptions {
        programmers: ids.iter().map(|id| TestProgrammer::free(id)).collect(),
        max_concurrent_per_programmer: 1,
        max_queue_per_programmer: 5,
        health_check_interval_s: 30,
        manager_max_queue: 1000,
        ..PoolOptions::default()
    });
    pool.sample_repo();
    let _programmers = pool.start_all_programmers();
    let _manager = pool.start_manager();
    let mut mgr = ProgrammerPoolClient::connect(pool.manager_url())
        .await
        .expect("manager");
    wait_available(&mgr, 10).await;
    // least_loaded with nothing in flight always picks 001: the direct calls go there too.
    let mut direct = ProgrammerClient::connect(pool.programmer_url("001"))
        .await
        .expect("programmer 001");

    // ----- latency: alternating pairs -----
    for _ in 0..50 {
        direct_once(&mut direct).await;
        manager_once(&mut mgr).await;
    }
    let mut d = Vec::with_capacity(latency_n);
    let mut m = Vec::with_capacity(latency_n);
    for _ in 0..latency_n {
        d.push(direct_once(&mut direct).await);
        m.push(manager_once(&mut mgr).await);
    }
    let (d50, d90, d99, dmean) = percentiles(&mut d);
    let (m50, m90, m99, mmean) = percentiles(&mut m);

    // ----- throughput: same callers, direct (spread over the ten) then via the manager -----
    let clients: Vec<ProgrammerClient<Channel>> = {
        let mut v = Vec::new();
        for id in &ids {
            v.push(
                ProgrammerClient::connect(pool.programmer_url(id))
                    .await
                    .expect("programmer"),
            );
        }
        v
    };
    let clients = Arc::new(clients);
    // Caller `w` always uses programmer `w % 10`: at most ceil(callers / 10) tasks are on one
    // programmer at a time, within its 1 running + 5 queued (spreading by task number instead
    // can pile more on one programmer than it admits).
    let (direct_tps, direct_elapsed) = throughput(throughput_n, concurrency, move |worker| {
        let mut c = clients[worker % clients.len()].clone();
        async move {
            let s = c.execute(direct_request()).await.expect("Execute");
            drain(s.into_inner()).await;
        }
    })
    .await;
    let mgr_for_tp = mgr.clone();
    let (mgr_tps, mgr_elapsed) = throughput(throughput_n, concurrency, move |_| {
        let mut c = mgr_for_tp.clone();
        async move {
            let s = c.dispatch(pool_request()).await.expect("Dispatch");
            drain(s.into_inner()).await;
        }
    })
    .await;

    println!();
    println!("manager hop — dry_run tasks, 10 programmers (1 running + 5 waiting each), 127.0.0.1");
    println!(
        "{:<34} {:>12} {:>12} {:>12} {:>12}",
        "latency (sequential, µs)", "p50", "p90", "p99", "mean"
    );
    println!(
        "{:<34} {:>12.0} {:>12.0} {:>12.0} {:>12.0}",
        "direct Execute (programmer 001)", d50, d90, d99, dmean
    );
    println!(
        "{:<34} {:>12.0} {:>12.0} {:>12.0} {:>12.0}",
        "Dispatch via manager", m50, m90, m99, mmean
    );
    println!(
        "{:<34} {:>12.0} {:>12.0} {:>12.0} {:>12.0}",
        "added by the hop",
        m50 - d50,
        m90 - d90,
        m99 - d99,
        mmean - dmean
    );
    println!(
        "{:<34} {:>12.2} {:>12.2} {:>12.2} {:>12.2}",
        "ratio manager / direct",
        m50 / d50,
        m90 / d90,
        m99 / d99,
        mmean / dmean
    );
    println!();
    println!(
        "{:<34} {:>12} {:>12} {:>12}",
        format!("throughput ({concurrency} callers)"),
        "tasks",
        "seconds",
        "tasks/s"
    );
    println!(
        "{:<34} {:>12} {:>12.2} {:>12.1}",
        "direct Execute (spread over 10)",
        throughput_n,
        direct_elapsed.as_secs_f64(),
        direct_tps
    );
    println!(
        "{:<34} {:>12} {:>12.2} {:>12.1}",
        "Dispatch via manager",
        throughput_n,
        mgr_elapsed.as_secs_f64(),
        mgr_tps
    );
    println!(
        "{:<34} {:>12} {:>12} {:>12.2}",
        "ratio manager / direct",
        "",
        "",
        mgr_tps / direct_tps
    );

    let json = serde_json::json!({
        "bench": "manager_hop",
        "unit_latency": "microseconds",
        "programmers": 10,
        "latency": {
            "samples": latency_n,
            "direct": {"p50": d50, "p90": d90, "p99": d99, "mean": dmean},
            "manager": {"p50": m50, "p90": m90, "p99": m99, "mean": mmean},
            "added": {"p50": m50 - d50, "p90": m90 - d90, "p99": m99 - d99, "mean": mmean - dmean},
            "ratio": {"p50": m50 / d50, "p90": m90 / d90, "p99": m99 / d99, "mean": mmean / dmean},
        },
        "throughput": {
            "tasks": throughput_n,
            "concurrency": concurrency,
            "direct_tasks_per_s": direct_tps,
            "manager_tasks_per_s": mgr_tps,
            "ratio": mgr_tps / direct_tps,
        },
        "load_average": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    });
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("bench");
    std::fs::create_dir_all(&dir).expect("target/bench");
    let path = dir.join("manager_hop.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json).expect("json") + "\n",
    )
    .expect("write the JSON");
    println!("\nwritten: {}", path.display());
}
