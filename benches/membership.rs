//! Manager memory and routing cost at 10, 49 and 1,000 members (issue 12).
//!
//! Run: `cargo bench --bench membership` (or `scripts/bench.sh membership`). For each size a
//! fresh child process (this binary again) builds a real [`Manager`] (`discovery.mode: dns`, its
//! SQLite store and ledger, scheduler, balancer, membership watchers), and N members join it.
//! Every member is a real programmer connection: one `pas programmer` listens on
//! `0.0.0.0:PORT`, and member *i* reaches it at its own loopback address `127.1.x.y:PORT`, so the
//! manager holds N channels, N health streams and N status pollers, as with N pods. (Members are
//! joined directly, not through DNS: one process answers one programmer id, and discovery
//! refuses duplicate ids. `tests/discovery_scale.rs` covers 49 real processes found by DNS.)
//!
//! Per size it reports, once every member is available:
//! - the manager process's VmRSS and RssAnon before any member joined and after, and the
//!   difference per member;
//! - admission routing cost: mean time of `route_for` (eligibility over the live members, region
//!   split, tier interning: the O(n) part per task) for a task without and with a region;
//! - a dry-run Dispatch end to end (admission, queue, balancer pick, Execute on the programmer,
//!   relay): mean over sequential calls.
//!
//! The balancer's per-decision cost at these sizes is `benches/routing.rs` (`decision/*`).

#![forbid(unsafe_code)]

#[path = "../tests/common/mod.rs"]
mod common;

use pas::config::Config;
use pas::contract::v1::programmer_pool_server::ProgrammerPool;
use pas::contract::v1::{DispatchRequest, TaskState, task_event::Kind};
use pas::manager::Manager;
use pas::manager::server::{PoolService, route_for};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHILD_FLAG: &str = "--membership-child";

fn kib_field(text: &str, field: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// (VmRSS, RssAnon) of this process, KiB.
fn own_memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    (kib_field(&status, "VmRSS:"), kib_field(&status, "RssAnon:"))
}

fn member_addr(i: usize, port: u16) -> String {
    format!("127.1.{}.{}:{port}", i / 250, i % 250 + 1)
}

/// The child: one size, one JSON line on stdout.
async fn child(n: usize, config_path: &str, port: u16) {
    let config = Arc::new(Config::load(std::path::Path::new(config_path)).expect("config"));
    let mgr = Manager::start(config.clone(), 0, None)
        .await
        .expect("manager");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss0, anon0) = own_memory();
    let started = Instant::now();
    for i in 0..n {
        let address = member_addr(i, port);
        let link = mgr.pool.link(&address).expect("channel");
        let spec = pas::config::ProgrammerSpec {
            id: format!("m{i:04}"),
            agent: format!("Prog-m{i:04}"),
            host: address.rsplit_once(':').expect("host").0.to_string(),
            port,
            primary: pas::config::LlmSpec::named("ollama/primary-bench", true),
            backup: pas::config::LlmSpec::named("ollama/backup-bench", true),
            tags: vec!["fast".into()],
            capabilities: ["fast".to_string()].into_iter().collect(),
            limits: config.default_limits(),
            paid: false,
            region: if i % 2 == 0 { "even" } else { "odd" }.to_string(),
            aider_start: pas::config::AiderStart::Cold,
        };
        mgr.pool.join(spec, address, link);
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while mgr.pool.available_count() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} available",
            mgr.pool.available_count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_available_ms = started.elapsed().as_millis();
    // Let the first status polls land before measuring memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss1, anon1) = own_memory();

    let request = |region: &str| DispatchRequest {
        task_description: "bench".into(),
        files: vec!["src/module.py".into()],
        workspace: "sample".into(),
        capabilities: vec!["fast".into()],
        dry_run: true,
        region: region.into(),
        ..Default::default()
    };
    let mut route_ns = Vec::new();
    for region in ["", "even"] {
        let req = request(region);
        let iterations = 20_000 / n.max(1) + 50;
        let t = Instant::now();
        for k in 0..iterations {
            std::hint::black_box(route_for(&mgr, &req, &format!("t{k}")).expect("route"));
        }
        route_ns.push(t.elapsed().as_nanos() as f64 / iterations as f64);
    }

    let service = PoolService::new(mgr.clone());
    let dispatches = 200;
    let t = Instant::now();
    for k in 0..dispatches {
        let mut req = request("");
        req.task_id = format!("bench-{n}-{k}");
        let mut stream = service
            .dispatch(tonic::Request::new(req))
            .await
            .expect("dispatch")
            .into_inner();
        let mut ok = false;
        while let Some(Ok(ev)) = futures::StreamExt::next(&mut stream).await {
            if let Some(Kind::Result(r)) = ev.kind {
                ok = r.status == TaskState::Succeeded as i32;
            }
        }
        assert!(ok, "dry run {k} did not succeed");
    }
    let dispatch_us = t.elapsed().as_micros() as f64 / dispatches as f64;
    println!(
        "{}",
        serde_json::json!({
            "members": n,
            "all_available_ms": all_available_ms,
            "rss_before_kib": rss0, "rss_after_kib": rss1,
            "anon_before_kib": anon0, "anon_after_kib": anon1,
            "route_for_ns": route_ns[0], "route_for_region_ns": route_ns[1],
            "dispatch_us": dispatch_us,
        })
    );
    mgr.stop.cancel();
}

fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    raise_nofile();
    if let Some(pos) = args.iter().position(|a| a == CHILD_FLAG) {
        let n: usize = args[pos + 1].parse().expect("size");
        let port: u16 = args[pos + 3].parse().expect("port");
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(child(n, &args[pos + 2], port));
        return;
    }
    // `cargo test --all-targets` runs bench binaries without `--bench`: one small size.
    let sizes: &[usize] = if args.iter().any(|a| a == "--bench") {
        &[10, 49, 1000]
    } else {
        &[10]
    };
    let options = common::pool::PoolOptions {
        health_check_interval_s: 10,
        manager_max_queue: 1000,
        ..Default::default()
    };
    let dns_pool = common::dns::DnsPool::new(options, 75, 60);
    let pool = &dns_pool.pool;
    pool.sample_repo();
    let port = dns_pool.port.to_string();
    let _programmer = pool.start_programmer_with_args(
        "bench",
        &[
            "--host",
            "0.0.0.0",
            "--insecure",
            "--port",
            &port,
            "--primary-llm",
            "ollama/primary-bench",
            "--backup-llm",
            "ollama/backup-bench",
            "--capabilities",
            "fast",
        ],
    );
    println!(
        "\nmanager memory and routing cost by pool size (one child process per size)\n{:>8} {:>12} {:>12} {:>14} {:>14} {:>14} {:>12} {:>12}",
        "members",
        "RSS before",
        "RSS after",
        "RSS/member",
        "anon/member",
        "route_for",
        "+region",
        "dry-run"
    );
    for &n in sizes {
        let out = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([CHILD_FLAG, &n.to_string()])
            .arg(&pool.config_path)
            .arg(&port)
            .env("RUST_LOG", "warn")
            .stderr(std::process::Stdio::null())
            .output()
            .expect("child");
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(line) = text.lines().find(|l| l.starts_with('{')) else {
            panic!("size {n} failed: {text}");
        };
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
        println!(
            "{:>8} {:>9.1} MiB {:>8.1} MiB {:>10.1} KiB {:>10.1} KiB {:>11.1} µs {:>9.1} µs {:>9.0} µs",
            n,
            f("rss_before_kib") / 1024.0,
            f("rss_after_kib") / 1024.0,
            (f("rss_after_kib") - f("rss_before_kib")) / n as f64,
            (f("anon_after_kib") - f("anon_before_kib")) / n as f64,
            f("route_for_ns") / 1000.0,
            f("route_for_region_ns") / 1000.0,
            f("dispatch_us"),
        );
        println!("  raw: {line}");
    }
}
