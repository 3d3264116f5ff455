//! Overhead of trace export on dispatch throughput: the same pool (real `pas manager` and two
//! `pas programmer` processes) dispatches the same dry-run tasks with OTLP export off and on
//! (to a collector inside this benchmark), and the ratio is printed.
//!
//! Dry runs are routed, relayed and recorded like real tasks but run no aider, so the mesh's own
//! cost — where the telemetry is — dominates; with aider (4–5 s per run) the overhead would be
//! invisible. "Off" still creates `tracing` spans for the logs and records metrics (both always
//! on); "on" adds the OpenTelemetry layer, the batch exporter and its gRPC exports.
//!
//! Rounds alternate off/on so machine noise hits both; the median round of each is compared.
//! `PAS_BENCH_TASKS` (default 300) tasks per round, `PAS_BENCH_CONCURRENCY` (default 8) in flight,
//! `PAS_BENCH_ROUNDS` (default 3) rounds of each. Run: `cargo bench --bench telemetry_overhead`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/telemetry/support.rs"]
mod support;

use common::pool::{ChildGuard, PoolOptions, TestPool, TestProgrammer};
use pas::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use pas::contract::v1::task_event::Kind;
use pas::contract::v1::{DispatchRequest, GetPoolStatusRequest, TaskState};
use std::time::{Duration, Instant};
use support::Collector;
use tonic::transport::Channel;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A running pool with or without export.
struct Running {
    _procs: Vec<ChildGuard>,
    _pool: TestPool,
    client: ProgrammerPoolClient<Channel>,
}

async fn start(env: &[(String, String)]) -> Running {
    let pool = TestPool::new(PoolOptions {
        programmers: vec![TestProgrammer::free("001"), TestProgrammer::free("002")],
        max_concurrent_per_programmer: 8,
        max_queue_per_programmer: 50,
        manager_max_queue: 1000,
        ..Default::default()
    })
    // Dry runs never start aider: no warm zygotes competing for the cores.
    .with_aider_start("cold");
    pool.sample_repo();
    let mut procs = vec![
        support::start_programmer(&pool, "001", env),
        support::start_programmer(&pool, "002", env),
    ];
    procs.push(support::start_manager(&pool, env));
    let mut client = ProgrammerPoolClient::connect(pool.manager_url())
        .await
        .expect("connect to the manager");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let available = client
            .get_pool_status(GetPoolStatusRequest {})
            .await
            .map(|s| s.into_inner().available)
            .unwrap_or(0);
        if available == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "pool did not become available");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Running {
        _procs: procs,
        _pool: pool,
        client,
    }
}

/// One dry-run dispatch with a caller traceparent, to its result.
async fn dispatch(mut client: ProgrammerPoolClient<Channel>, i: usize) {
    let mut request = tonic::Request::new(DispatchRequest {
        task_description: format!("bench task {i}"),
        files: vec!["src/module.py".into()],
        workspace: "sample".into(),
        run_id: "bench".into(),
        dry_run: true,
        ..Default::default()
    });
    let traceparent = format!(
        "00-{:032x}-{:016x}-01",
        rand::random::<u128>(),
        rand::random::<u64>() | 1
    );
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().expect("traceparent"));
    let mut stream = client
        .dispatch(request)
        .await
        .expect("dispatch accepted")
        .into_inner();
    let mut ok = false;
    while let Some(ev) = stream.message().await.expect("stream") {
        if let Some(Kind::Result(r)) = ev.kind {
            ok = r.status == TaskState::Succeeded as i32;
        }
    }
    assert!(ok, "dry run succeeded");
}

/// Dispatches `tasks` dry runs, `concurrency` at a time; returns tasks per second.
async fn round(running: &Running, tasks: usize, concurrency: usize) -> f64 {
    let started = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = running.client.clone();
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= tasks {
                        return;
                    }
                    dispatch(client.clone(), i).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    tasks as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let tasks = env_or("PAS_BENCH_TASKS", 300);
        let concurrency = env_or("PAS_BENCH_CONCURRENCY", 8);
        let rounds = env_or("PAS_BENCH_ROUNDS", 3).max(1);
        let collector = Collector::start().await;
        let off = start(&[]).await;
        let on = start(&collector.env()).await;
        // Warm up both (connections, caches, lazy initialisation).
        round(&off, 20, concurrency).await;
        round(&on, 20, concurrency).await;
        let (mut off_rates, mut on_rates) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            let off_rate = round(&off, tasks, concurrency).await;
            let on_rate = round(&on, tasks, concurrency).await;
            println!(
                "round {}: export off {off_rate:.1} tasks/s, export on {on_rate:.1} tasks/s",
                r + 1
            );
            off_rates.push(off_rate);
            on_rates.push(on_rate);
        }
        // Let the last batch arrive, so the span count is complete.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (off_rate, on_rate) = (median(off_rates), median(on_rates));
        println!(
            "telemetry_overhead: {tasks} dry-run dispatches x {rounds} rounds, {concurrency} in flight, 1 manager + 2 programmers"
        );
        println!("  export off: {off_rate:.1} tasks/s (median round)");
        println!(
            "  export on:  {on_rate:.1} tasks/s (median round; collector received {} spans in {} exports)",
            collector.spans().len(),
            collector.exports()
        );
        println!(
            "  ratio on/off: {:.3} (overhead {:.1}%)",
            on_rate / off_rate,
            (1.0 - on_rate / off_rate) * 100.0
        );
    });
}
