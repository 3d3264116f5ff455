//! What the manager hop costs: latency of a task through the manager vs through a bare tonic relay
//! vs straight to a programmer (p50/p99), and dispatch throughput of `dry_run` tasks all three
//! ways, measured side by side in one run on real processes (`pas manager`, ten `pas
//! programmer`s, `pas llm-sim`) on 127.0.0.1.
//!
//! The bare tonic hop is [`BareRelay`]: a `pas.v1.ProgrammerPool` server in this process (on its
//! own runtime) whose `Dispatch` turns the request into a `TaskRequest`, sends it to the
//! programmer with the fewest open streams and relays that stream as it is. No validation, task
//! records, queue, budget, health or routing policy: what any gRPC hop costs, and the yardstick
//! for "manager hop ≤ 1.5× a bare tonic hop". The same relay is also served by the manager's
//! server stack (`pas::serve`: hyper with protocol detection, axum routing, the trace-context and
//! admission middlewares), so "what the stack costs" is measured apart from what the manager does.
//!
//! A second pool, identical but secured as issue 10 asks for exposure beyond loopback (TLS on
//! every port, mTLS from the manager to the programmers, a bearer token checked on every call:
//! `tests/common/secure.rs`), runs beside the first; its Dispatch is measured in the same
//! alternation and the same throughput run, so "what security costs" is a ratio from one run.
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
//! through the bare relay, then through the manager, each with the same number of concurrent
//! callers.

#[path = "../tests/common/mod.rs"]
mod common;

use common::pool::{PoolOptions, TestPool, TestProgrammer, wait_available};
use pas::contract::v1::programmer_client::ProgrammerClient;
use pas::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use pas::contract::v1::programmer_pool_server::{ProgrammerPool, ProgrammerPoolServer};
use pas::contract::v1::task_event::Kind;
use pas::contract::v1::{
    CancelTaskRequest, CancelTaskResponse, DispatchRequest, GetPoolStatusRequest, GetTaskRequest,
    PoolStatus, TaskEvent, TaskRecord, TaskRequest, TaskState,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Per-caller limits far above what one benchmark process can send.
const UNLIMITED_CALLER: &str = "limits:\n  per_caller_rate_per_s: 10000000\n  per_caller_burst: 10000000\n  per_caller_max_tasks: 100000\n";

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
            result = Some(*r);
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

/// The bare tonic hop (see the module docs).
struct BareRelay {
    programmers: Vec<ProgrammerClient<Channel>>,
    /// Open streams per programmer, so a programmer is never sent more than it admits.
    open: Vec<Arc<AtomicUsize>>,
}

/// Decrements a programmer's open-stream count when the relayed stream is dropped.
struct OpenStream(Arc<AtomicUsize>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tonic::async_trait]
impl ProgrammerPool for BareRelay {
    type DispatchStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<TaskEvent, tonic::Status>> + Send + 'static>,
    >;
    type WatchTaskStream = Self::DispatchStream;

    async fn dispatch(
        &self,
        request: tonic::Request<DispatchRequest>,
    ) -> Result<tonic::Response<Self::DispatchStream>, tonic::Status> {
        let req = request.into_inner();
        let i = (0..self.open.len())
            .min_by_key(|&i| self.open[i].load(Ordering::SeqCst))
            .expect("programmers");
        self.open[i].fetch_add(1, Ordering::SeqCst);
        let open = OpenStream(self.open[i].clone());
        let task = TaskRequest {
            task_id: req.task_id,
            task_description: req.task_description,
            files: req.files,
            workspace: req.workspace,
            run_id: req.run_id,
            dry_run: req.dry_run,
            ..Default::default()
        };
        let upstream = self.programmers[i]
            .clone()
            .execute(task)
            .await?
            .into_inner();
        let relayed = futures::StreamExt::map(upstream, move |event| {
            let _open = &open;
            event
        });
        Ok(tonic::Response::new(Box::pin(relayed)))
    }

    async fn get_pool_status(
        &self,
        _: tonic::Request<GetPoolStatusRequest>,
    ) -> Result<tonic::Response<PoolStatus>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare relay"))
    }

    async fn cancel_task(
        &self,
        _: tonic::Request<CancelTaskRequest>,
    ) -> Result<tonic::Response<CancelTaskResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare relay"))
    }

    async fn get_task(
        &self,
        _: tonic::Request<GetTaskRequest>,
    ) -> Result<tonic::Response<TaskRecord>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare relay"))
    }

    async fn watch_task(
        &self,
        _: tonic::Request<pas::contract::v1::WatchTaskRequest>,
    ) -> Result<tonic::Response<Self::WatchTaskStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare relay"))
    }

    async fn list_tasks(
        &self,
        _: tonic::Request<pas::contract::v1::ListTasksRequest>,
    ) -> Result<tonic::Response<pas::contract::v1::ListTasksResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare relay"))
    }
}

/// Starts a [`BareRelay`] over `urls` on its own two-thread runtime (as a separate process would
/// have); returns its URL. The runtime lives until the bench exits.
/// How a relay is served: tonic's own server, or the manager's server stack (`pas::serve`: hyper
/// with HTTP/1.1 + HTTP/2 detection, axum routing, the trace-context and admission middlewares).
#[derive(Clone, Copy, PartialEq)]
enum RelayServer {
    Tonic,
    PasStack,
}

fn start_bare_relay(urls: Vec<String>, server: RelayServer) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            // Named, so a profile of the bench tells the relay's threads from the callers'.
            .thread_name(match server {
                RelayServer::Tonic => "bare-relay",
                RelayServer::PasStack => "relay-pas-stack",
            })
            .enable_all()
            .build()
            .expect("relay runtime");
        rt.block_on(async move {
            let mut programmers = Vec::new();
            for url in urls {
                programmers.push(ProgrammerClient::connect(url).await.expect("programmer"));
            }
            let open = programmers.iter().map(|_| Arc::default()).collect();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            tx.send(format!("http://{addr}")).expect("send url");
            let relay = ProgrammerPoolServer::new(BareRelay { programmers, open });
            if server == RelayServer::PasStack {
                // The manager's own stack around the same handler (see `manager::run`), so the
                // difference between the two relays is what the stack costs.
                // The pools' limits (`UNLIMITED_CALLER`): one caller makes every call here.
                let limits = pas::config::LimitsConfig {
                    per_caller_rate_per_s: 10_000_000,
                    per_caller_burst: 10_000_000,
                    per_caller_max_tasks: 100_000,
                    ..Default::default()
                };
                let router = tonic::service::Routes::new(relay).into_axum_router().layer(
                    axum::middleware::from_fn_with_state(
                        pas::manager::admission::Admission::new(&limits),
                        pas::manager::admission::middleware,
                    ),
                );
                let bound = pas::serve::Bound::new(listener, None).expect("plaintext listener");
                pas::serve::serve(bound, router, &limits, std::future::pending())
                    .await
                    .expect("relay serves");
                return;
            }
            // As the services do: small gRPC writes must not wait for delayed ACKs.
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            tonic::transport::Server::builder()
                .add_service(relay)
                .serve_with_incoming(incoming)
                .await
                .expect("relay serves");
        });
    });
    rx.recv().expect("relay url")
}

async fn direct_once(c: &mut ProgrammerClient<Channel>) -> Duration {
    let t = Instant::now();
    let s = c.execute(direct_request()).await.expect("Execute");
    drain(s.into_inner()).await;
    t.elapsed()
}

/// A Dispatch of [`pool_request`], with `authorization: Bearer <token>` when a token is given.
fn pool_call(token: Option<&str>) -> tonic::Request<DispatchRequest> {
    match token {
        Some(token) => common::secure::with_token(pool_request(), token),
        None => tonic::Request::new(pool_request()),
    }
}

async fn manager_once(c: &mut ProgrammerPoolClient<Channel>, token: Option<&str>) -> Duration {
    let t = Instant::now();
    let s = c.dispatch(pool_call(token)).await.expect("Dispatch");
    drain(s.into_inner()).await;
    t.elapsed()
}

/// [p50, p90, p99, mean] in microseconds.
fn percentiles(samples: &mut [Duration]) -> [f64; 4] {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1e6
    };
    let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / samples.len() as f64;
    [at(0.50), at(0.90), at(0.99), mean * 1e6]
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
    let options = || PoolOptions {
        programmers: ids.iter().map(|id| TestProgrammer::free(id)).collect(),
        max_concurrent_per_programmer: 1,
        max_queue_per_programmer: 5,
        health_check_interval_s: 30,
        manager_max_queue: 1000,
        ..PoolOptions::default()
    };
    // Dry runs never start aider: cold, so no warm zygotes import aider on both cores while the
    // hop is measured (twelve of them made every figure several times slower).
    let pool = TestPool::new(options()).with_aider_start("cold");
    // One load generator is one caller: the per-caller rate limit (500/s, bursts of 2,000) would
    // refuse a longer throughput run. The hop is measured, not the limiter (see `overload`).
    pool.append_config(UNLIMITED_CALLER);
    pool.sample_repo();
    let _programmers = pool.start_all_programmers();
    let _manager = pool.start_manager();
    let mut mgr = ProgrammerPoolClient::connect(pool.manager_url())
        .await
        .expect("manager");
    wait_available(&mgr, 10).await;

    // The secured twin: TLS everywhere, mTLS to the programmers, a dispatch token per call.
    let secure_pool = TestPool::new(options()).with_aider_start("cold");
    secure_pool.append_config(UNLIMITED_CALLER);
    secure_pool.sample_repo();
    let secured = common::secure::secure(&secure_pool, "[status]");
    let _secure_programmers = secure_pool.start_all_programmers();
    let _secure_manager = secure_pool.start_manager();
    let mut smgr = ProgrammerPoolClient::new(
        common::secure::tls_channel(secure_pool.manager_port, &secured.files("client"), false)
            .await
            .expect("TLS to the secured manager"),
    );
    wait_available(&smgr, 10).await;
    let token = secured.dispatch.clone();
    let token = Some(token.as_str());
    // least_loaded with nothing in flight always picks 001: the direct calls go there too.
    let mut direct = ProgrammerClient::connect(pool.programmer_url("001"))
        .await
        .expect("programmer 001");

    let urls: Vec<String> = ids.iter().map(|id| pool.programmer_url(id)).collect();
    let relay_url = start_bare_relay(urls.clone(), RelayServer::Tonic);
    let mut relay = ProgrammerPoolClient::connect(relay_url)
        .await
        .expect("bare relay");
    let stacked_url = start_bare_relay(urls, RelayServer::PasStack);
    let mut stacked = ProgrammerPoolClient::connect(stacked_url)
        .await
        .expect("bare relay in pas's server stack");

    // ----- latency: alternating triples -----
    for _ in 0..50 {
        direct_once(&mut direct).await;
        manager_once(&mut relay, None).await;
        manager_once(&mut stacked, None).await;
        manager_once(&mut mgr, None).await;
        manager_once(&mut smgr, token).await;
    }
    let mut d = Vec::with_capacity(latency_n);
    let mut r = Vec::with_capacity(latency_n);
    let mut rs = Vec::with_capacity(latency_n);
    let mut m = Vec::with_capacity(latency_n);
    let mut sm = Vec::with_capacity(latency_n);
    for _ in 0..latency_n {
        d.push(direct_once(&mut direct).await);
        r.push(manager_once(&mut relay, None).await);
        rs.push(manager_once(&mut stacked, None).await);
        m.push(manager_once(&mut mgr, None).await);
        sm.push(manager_once(&mut smgr, token).await);
    }
    let d = percentiles(&mut d);
    let r = percentiles(&mut r);
    let rs = percentiles(&mut rs);
    let m = percentiles(&mut m);
    let sm = percentiles(&mut sm);

    // ----- throughput: same callers, direct (spread over the ten), bare relay, manager -----
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
    let via = |client: &ProgrammerPoolClient<Channel>, token: Option<&str>| {
        let client = client.clone();
        let token = token.map(str::to_string);
        move |_| {
            let mut c = client.clone();
            let call = pool_call(token.as_deref());
            async move {
                let s = c.dispatch(call).await.expect("Dispatch");
                drain(s.into_inner()).await;
            }
        }
    };
    let (relay_tps, relay_elapsed) = throughput(throughput_n, concurrency, via(&relay, None)).await;
    let (stacked_tps, stacked_elapsed) =
        throughput(throughput_n, concurrency, via(&stacked, None)).await;
    let (mgr_tps, mgr_elapsed) = throughput(throughput_n, concurrency, via(&mgr, None)).await;
    let (secure_tps, secure_elapsed) =
        throughput(throughput_n, concurrency, via(&smgr, token)).await;

    println!();
    println!("manager hop — dry_run tasks, 10 programmers (1 running + 5 waiting each), 127.0.0.1");
    let row = |name: &str, v: [f64; 4], decimals: usize| {
        println!(
            "{name:<36} {:>10.decimals$} {:>10.decimals$} {:>10.decimals$} {:>10.decimals$}",
            v[0], v[1], v[2], v[3]
        );
    };
    println!(
        "{:<36} {:>10} {:>10} {:>10} {:>10}",
        "latency (sequential, µs)", "p50", "p90", "p99", "mean"
    );
    let diff = |a: [f64; 4], b: [f64; 4]| std::array::from_fn::<f64, 4, _>(|i| a[i] - b[i]);
    let ratio = |a: [f64; 4], b: [f64; 4]| std::array::from_fn::<f64, 4, _>(|i| a[i] / b[i]);
    row("direct Execute (programmer 001)", d, 0);
    row("via a bare tonic relay", r, 0);
    row("via the bare relay, pas server stack", rs, 0);
    row("Dispatch via manager", m, 0);
    row("Dispatch via manager, TLS + token", sm, 0);
    row("added by the bare relay", diff(r, d), 0);
    row("added by the manager", diff(m, d), 0);
    row("added by pas's server stack", diff(rs, r), 0);
    row("ratio manager / bare relay", ratio(m, r), 2);
    row("ratio manager / direct", ratio(m, d), 2);
    row("ratio TLS + token / plaintext", ratio(sm, m), 2);
    println!();
    println!(
        "{:<36} {:>10} {:>10} {:>10}",
        format!("throughput ({concurrency} callers)"),
        "tasks",
        "seconds",
        "tasks/s"
    );
    for (name, elapsed, tps) in [
        (
            "direct Execute (spread over 10)",
            direct_elapsed,
            direct_tps,
        ),
        ("via a bare tonic relay", relay_elapsed, relay_tps),
        (
            "via the bare relay, pas server stack",
            stacked_elapsed,
            stacked_tps,
        ),
        ("Dispatch via manager", mgr_elapsed, mgr_tps),
        (
            "Dispatch via manager, TLS + token",
            secure_elapsed,
            secure_tps,
        ),
    ] {
        println!(
            "{name:<36} {throughput_n:>10} {:>10.2} {tps:>10.1}",
            elapsed.as_secs_f64()
        );
    }
    println!(
        "{:<36} {:>32.2}",
        "ratio manager / bare relay",
        mgr_tps / relay_tps
    );
    println!(
        "{:<36} {:>32.2}",
        "ratio manager / direct",
        mgr_tps / direct_tps
    );
    println!(
        "{:<36} {:>32.2}",
        "ratio TLS + token / plaintext",
        secure_tps / mgr_tps
    );

    let stats =
        |v: [f64; 4]| serde_json::json!({"p50": v[0], "p90": v[1], "p99": v[2], "mean": v[3]});
    let json = serde_json::json!({
        "bench": "manager_hop",
        "unit_latency": "microseconds",
        "programmers": 10,
        "latency": {
            "samples": latency_n,
            "direct": stats(d),
            "bare_relay": stats(r),
            "bare_relay_pas_server_stack": stats(rs),
            "manager": stats(m),
            "manager_tls_token": stats(sm),
            "ratio_tls_token_to_plaintext": stats(ratio(sm, m)),
            "added": stats(diff(m, d)),
            "added_by_bare_relay": stats(diff(r, d)),
            "ratio": stats(ratio(m, d)),
            "ratio_to_bare_relay": stats(ratio(m, r)),
        },
        "throughput": {
            "tasks": throughput_n,
            "concurrency": concurrency,
            "direct_tasks_per_s": direct_tps,
            "bare_relay_tasks_per_s": relay_tps,
            "bare_relay_pas_server_stack_tasks_per_s": stacked_tps,
            "manager_tasks_per_s": mgr_tps,
            "manager_tls_token_tasks_per_s": secure_tps,
            "ratio_tls_token_to_plaintext": secure_tps / mgr_tps,
            "ratio": mgr_tps / direct_tps,
            "ratio_to_bare_relay": mgr_tps / relay_tps,
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
