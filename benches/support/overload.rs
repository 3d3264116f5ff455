//! Overload (issue 17): a burst of concurrent `Dispatch` calls against a freshly started pool of
//! ten programmers (the shipped shape and queue bounds: at most ~560 tasks can be admitted), its
//! model answering after 60 s, so that every call past the room must be refused at once.
//!
//! Per case — cold (the workspace never opened) or warm (one dry run first), 1,000 or 10,000
//! streams (100 per HTTP/2 connection, as `h2load -c N/100 -m 100` would), this build or an earlier
//! one (`PAS_BENCH_BASELINE=path/to/pas`; the allocator was chosen by earlier runs of this benchmark —
//! glibc, jemalloc and mimalloc preloaded, mimalloc linked in — BENCHMARKS.md):
//! - calls answered per second (first call sent → last answer, admitted or refused);
//! - refusal latency p50 / p99 at the client;
//! - grpc.health.v1 Check from an already-connected client every 20 ms during the burst (5 s
//!   deadline), on the main port and on the admin port (this build): p99 and failures;
//! - the manager's RSS idle, peak during the burst, and 30 s after it;
//! - the most zombie children of the manager seen at once, and how old the oldest one got (sampled
//!   every 20 ms: a zombie seen in samples spanning `s` ms was at most `s` + 20 ms old when last
//!   seen; the figure is that bound).

use super::{Dist, Section, mib, ms, table, verdict_le};
use crate::common::pool::{PoolOptions, TestPool, shipped_shape};
use crate::common::{Sim, pas_binary, zombie_children};
use anyhow::Context;
use pas::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use pas::contract::v1::{DispatchRequest, GetPoolStatusRequest};
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// How often the manager's RSS and zombie children are sampled during a burst.
const ZOMBIE_SAMPLING: Duration = Duration::from_millis(20);

/// Streams per HTTP/2 connection.
const STREAMS_PER_CONNECTION: usize = 100;

#[derive(Debug, Clone)]
struct Case {
    build: &'static str,
    binary: PathBuf,
    allocator: &'static str,
    /// Whether the build serves its probes on an admin port too (`--admin-port`, this build).
    admin_port: bool,
    streams: usize,
    warm: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
struct Outcome {
    build: &'static str,
    allocator: &'static str,
    streams: usize,
    warm: bool,
    admitted: usize,
    refused: usize,
    other_errors: usize,
    answered_per_s: f64,
    refusal_p50_ms: f64,
    refusal_p99_ms: f64,
    health_checks: usize,
    health_p99_ms: f64,
    health_failures: usize,
    /// The same on the admin port (p99 ms, checks, failures), when the build has one.
    admin_health: Option<(f64, usize, usize)>,
    rss_idle_mib: f64,
    rss_peak_mib: f64,
    rss_after_mib: f64,
    zombies_peak: usize,
    /// The oldest zombie's age bound in ms (0: none seen).
    zombie_oldest_ms: f64,
}

/// Runs the cases: this build cold/warm at each size; the baseline likewise when given; the
/// other allocators for the largest cold burst.
pub fn run(sizes: &[usize], after: Duration) -> anyhow::Result<Section> {
    let this = pas_binary();
    // The baseline with its allocator and whether it has the admin port, read once.
    let baseline = std::env::var_os("PAS_BENCH_BASELINE")
        .map(PathBuf::from)
        .map(|base| (allocator_of(&base), has_admin_port(&base), base));
    let sizes: Vec<usize> = match std::env::var("PAS_BENCH_OVERLOAD_SIZES") {
        Ok(list) => list
            .split(',')
            .map(|n| n.trim().parse())
            .collect::<Result<_, _>>()
            .context("PAS_BENCH_OVERLOAD_SIZES: comma-separated stream counts")?,
        Err(_) => sizes.to_vec(),
    };
    let warmth: &[bool] = match std::env::var("PAS_BENCH_OVERLOAD_WARM").as_deref() {
        Ok("0") => &[false],
        _ => &[false, true],
    };
    let mut cases = Vec::new();
    for &streams in &sizes {
        for &warm in warmth {
            if let Some((allocator, admin_port, base)) = &baseline {
                cases.push(Case {
                    build: "before",
                    binary: base.clone(),
                    allocator,
                    admin_port: *admin_port,
                    streams,
                    warm,
                });
            }
            cases.push(Case {
                build: "this",
                binary: this.clone(),
                // services/main.rs links jemalloc in on Linux.
                allocator: if cfg!(target_os = "linux") {
                    "jemalloc"
                } else {
                    "system"
                },
                admin_port: true,
                streams,
                warm,
            });
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut outcomes = Vec::new();
    for case in &cases {
        eprintln!("overload: {case:?}");
        let outcome = rt
            .block_on(measure(case, after))
            .with_context(|| format!("case {case:?}"))?;
        eprintln!("overload: {outcome:?}");
        outcomes.push(outcome);
    }
    Ok(report(&outcomes, after))
}

/// The allocator a `pas` binary was linked with: jemalloc's prefixed symbols are in the binary
/// when it was (releases before `64c2293` used the system allocator).
fn allocator_of(binary: &std::path::Path) -> &'static str {
    let linked = std::fs::read(binary)
        .map(|bytes| bytes.windows(6).any(|w| w == b"_rjem_"))
        .unwrap_or(false);
    if linked { "jemalloc" } else { "system" }
}

/// Whether a `pas` binary's manager has `--admin-port` (releases before it had only the main
/// port).
fn has_admin_port(binary: &std::path::Path) -> bool {
    std::process::Command::new(binary)
        .args(["manager", "--help"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("--admin-port"))
}

async fn measure(case: &Case, after: Duration) -> anyhow::Result<Outcome> {
    let sim = Sim::start_with_script("default:\n  latency_ms: 60000\n");
    let pool = TestPool::with_sim(
        PoolOptions {
            programmers: shipped_shape(),
            max_concurrent_per_programmer: 1,
            max_queue_per_programmer: 5,
            manager_max_queue: 500,
            queue_timeout_s: 600,
            request_timeout_s: 600,
            task_timeout_s: 600,
            health_check_interval_s: 30,
            ..PoolOptions::default()
        },
        sim,
    );
    pool.append_config(crate::common::pool::SHIPPED_CAPABILITY_ROUTING);
    pool.sample_repo();
    // The programmers and the manager run the case's build.
    let mut pool = pool;
    pool.binary = case.binary.clone();
    let _programmers = pool.start_all_programmers();
    let admin_port = crate::common::pool::free_port();
    let admin_port_arg = admin_port.to_string();
    let args: &[&str] = if case.admin_port {
        &["--admin-port", &admin_port_arg]
    } else {
        &[]
    };
    let manager = pool.start_manager_with_args(args);
    let pid = manager.pid();
    let mut c = ProgrammerPoolClient::connect(pool.manager_url()).await?;
    super::live::wait_available(&mut c, 10, Duration::from_secs(60)).await?;
    if case.warm {
        let req = DispatchRequest {
            dry_run: true,
            ..crate::common::pool::sample_dispatch("open the workspace")
        };
        let mut stream = c.clone().dispatch(req).await?.into_inner();
        while stream.message().await?.is_some() {}
    }
    let _ = c.get_pool_status(GetPoolStatusRequest {}).await?;
    let rss_idle = super::mem(pid).map_or(0, |m| m.rss_kib);

    // Every connection made before the burst starts, like a load generator's.
    let connections = case.streams.div_ceil(STREAMS_PER_CONNECTION);
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = Endpoint::from_shared(pool.manager_url())?
            .connect()
            .await
            .context("connect")?;
        clients.push(ProgrammerPoolClient::new(channel));
    }
    let done = Arc::new(AtomicBool::new(false));
    let prober = probe_health(pool.manager_url(), done.clone()).await?;
    let admin_prober = if case.admin_port {
        Some(probe_health(format!("http://127.0.0.1:{admin_port}"), done.clone()).await?)
    } else {
        None
    };

    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let (mut peak, mut zombies, mut oldest) = (0u64, 0usize, Duration::ZERO);
            // Each zombie's first sighting (a pid gone from the zombies is forgotten: pids recur).
            let mut seen: HashMap<u32, Instant> = HashMap::new();
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(super::mem(pid).map_or(0, |m| m.rss_kib));
                let now_zombies = zombie_children(pid);
                zombies = zombies.max(now_zombies.len());
                let now = Instant::now();
                seen.retain(|z, _| now_zombies.contains(z));
                for z in now_zombies {
                    let first = *seen.entry(z).or_insert(now);
                    oldest = oldest.max(now - first + ZOMBIE_SAMPLING);
                }
                tokio::time::sleep(ZOMBIE_SAMPLING).await;
            }
            (peak, zombies, oldest)
        })
    };
    let started = Instant::now();
    let calls: Vec<_> = (0..case.streams)
        .map(|i| {
            let mut client = clients[i % connections].clone();
            tokio::spawn(async move {
                let req = DispatchRequest {
                    task_id: format!("burst-{i}"),
                    ..crate::common::pool::sample_dispatch(&format!("Add docstrings ({i})"))
                };
                let t = Instant::now();
                let answer = client.dispatch(req).await;
                let at = Instant::now();
                // An admitted task's stream is dropped: the task runs on (it outlives streams).
                (answer.map(drop).map_err(|s| s.code()), ms(at - t), at)
            })
        })
        .collect();
    let (mut admitted, mut other_errors) = (0, 0);
    let mut refusals = Vec::new();
    let mut last = started;
    for call in calls {
        let (answer, latency, at) = call.await?;
        last = last.max(at);
        match answer {
            Ok(()) => admitted += 1,
            Err(Code::ResourceExhausted) => refusals.push(latency),
            Err(_) => other_errors += 1,
        }
    }
    let elapsed = last - started;
    // Health and memory are watched a moment past the last answer (the tail of the work).
    tokio::time::sleep(Duration::from_millis(500)).await;
    done.store(true, Ordering::Relaxed);
    let (rss_peak, zombies_peak, zombie_oldest) = sampler.await?;
    let (health_latencies, health_failures) = prober.await?;
    let admin = match admin_prober {
        Some(p) => Some(p.await?),
        None => None,
    };
    drop(clients);
    tokio::time::sleep(after).await;
    let rss_after = super::mem(pid).map_or(0, |m| m.rss_kib);
    let refusal = Dist::of(&refusals);
    Ok(Outcome {
        build: case.build,
        allocator: case.allocator,
        streams: case.streams,
        warm: case.warm,
        admitted,
        refused: refusals.len(),
        other_errors,
        answered_per_s: case.streams as f64 / elapsed.as_secs_f64(),
        refusal_p50_ms: refusal.p50,
        refusal_p99_ms: super::percentile(&refusals, 99.0),
        health_checks: health_latencies.len(),
        health_p99_ms: super::percentile(&health_latencies, 99.0),
        health_failures,
        admin_health: admin.map(|(latencies, failures)| {
            (
                super::percentile(&latencies, 99.0),
                latencies.len(),
                failures,
            )
        }),
        rss_idle_mib: mib(rss_idle),
        rss_peak_mib: mib(rss_peak.max(rss_idle)),
        rss_after_mib: mib(rss_after),
        zombies_peak,
        zombie_oldest_ms: ms(zombie_oldest),
    })
}

/// grpc.health.v1 Check every 20 ms on `url` from a connection made now, until `done`: the
/// latencies of the answers and the number of failures (5 s deadline). The prober runs on a thread
/// and runtime of its own, like a kubelet or a monitoring agent in a process of its own: on the
/// bench's runtime its answers would wait behind the burst's 10,000 client tasks, and that wait
/// (not the manager's) is what an earlier version of this benchmark measured.
async fn probe_health(
    url: String,
    done: Arc<AtomicBool>,
) -> anyhow::Result<tokio::task::JoinHandle<(Vec<f64>, usize)>> {
    let (connected_tx, connected) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("prober runtime");
        rt.block_on(async move {
            let channel = match Channel::from_shared(url) {
                Ok(endpoint) => endpoint.connect().await,
                Err(e) => {
                    let _ = connected_tx.send(Err(anyhow::anyhow!("{e}")));
                    return (Vec::new(), 0);
                }
            };
            let mut health = match channel {
                Ok(channel) => {
                    let _ = connected_tx.send(Ok(()));
                    HealthClient::new(channel)
                }
                Err(e) => {
                    let _ = connected_tx.send(Err(e.into()));
                    return (Vec::new(), 0);
                }
            };
            let (mut latencies, mut failures) = (Vec::new(), 0usize);
            while !done.load(Ordering::Relaxed) {
                let t = Instant::now();
                let mut req = tonic::Request::new(HealthCheckRequest {
                    service: "pas.v1.ProgrammerPool".into(),
                });
                req.set_timeout(Duration::from_secs(5));
                match health.check(req).await {
                    Ok(_) => latencies.push(ms(t.elapsed())),
                    Err(_) => failures += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (latencies, failures)
        })
    });
    connected.await??;
    Ok(tokio::task::spawn_blocking(move || {
        thread.join().expect("prober thread")
    }))
}

fn report(outcomes: &[Outcome], after: Duration) -> Section {
    let mut t = table(&[
        "build",
        "allocator",
        "burst",
        "admitted / refused / other",
        "answers/s",
        "refusal p50 / p99 ms",
        "health p99 ms (checks, failures): main port",
        "admin port",
        "manager RSS idle / peak / after MiB",
        "zombies: peak / oldest ms",
    ]);
    for o in outcomes {
        t.add_row(vec![
            o.build.to_string(),
            o.allocator.to_string(),
            format!("{} {}", if o.warm { "warm" } else { "cold" }, o.streams),
            format!("{} / {} / {}", o.admitted, o.refused, o.other_errors),
            format!("{:.0}", o.answered_per_s),
            format!("{:.1} / {:.1}", o.refusal_p50_ms, o.refusal_p99_ms),
            format!(
                "{:.1} ({}, {})",
                o.health_p99_ms, o.health_checks, o.health_failures
            ),
            o.admin_health.map_or("–".to_string(), |(p99, n, failed)| {
                format!("{p99:.1} ({n}, {failed})")
            }),
            format!(
                "{:.1} / {:.1} / {:.1}",
                o.rss_idle_mib, o.rss_peak_mib, o.rss_after_mib
            ),
            format!("{} / {:.0}", o.zombies_peak, o.zombie_oldest_ms),
        ]);
    }
    let mut md = String::from("### Overload (`pool_suite overload`)\n\n");
    md.push_str(&format!("{t}\n\n"));
    md.push_str(&format!(
        "Ten programmers of the shipped shape and bounds, model latency 60 s; each burst is one \
         `Dispatch` per stream, {STREAMS_PER_CONNECTION} streams per HTTP/2 connection, all sent at \
         once from this process; `after` is {} s after the last answer. Targets for the cold \
         10,000 burst of this build: ≥ 10,000 answers/s, health p99 ≤ 100 ms with no failure, \
         peak RSS ≤ idle + 64 MiB, after ≤ 1.5 × idle, no zombie older than a second.\n\n",
        after.as_secs()
    ));
    if let Some(o) = outcomes
        .iter()
        .filter(|o| o.build == "this" && !o.warm)
        .max_by_key(|o| o.streams)
    {
        let health = |(p99, _, failures): (f64, usize, usize)| {
            format!(
                "p99 {p99:.1} ms, {failures} failures ({})",
                if failures == 0 {
                    verdict_le(p99, 100.0)
                } else {
                    "missed: failures".to_string()
                }
            )
        };
        md.push_str(&format!(
            "- cold {}: {:.0} answers/s ({}); health on the admin port {}, on the main port {}; \
             peak RSS idle + {:.1} MiB ({}); after {:.2} × idle ({}); oldest zombie ≤ {:.0} ms ({}).\n\n",
            o.streams,
            o.answered_per_s,
            if o.answered_per_s >= 10_000.0 {
                "met".to_string()
            } else {
                format!("missed by {:.2}×", 10_000.0 / o.answered_per_s.max(1.0))
            },
            o.admin_health.map_or("not served".to_string(), health),
            health((o.health_p99_ms, o.health_checks, o.health_failures)),
            o.rss_peak_mib - o.rss_idle_mib,
            verdict_le(o.rss_peak_mib - o.rss_idle_mib, 64.0),
            o.rss_after_mib / o.rss_idle_mib.max(0.1),
            verdict_le(o.rss_after_mib / o.rss_idle_mib.max(0.1), 1.5),
            o.zombie_oldest_ms,
            verdict_le(o.zombie_oldest_ms, 1000.0),
        ));
    }
    Section {
        name: "overload",
        markdown: md,
        json: json!({ "after_s": after.as_secs(), "cases": outcomes }),
    }
}
