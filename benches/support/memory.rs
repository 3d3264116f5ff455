//! Memory: resident set sizes from `/proc/PID/status` (`VmRSS`, `VmHWM`) and proportional set
//! sizes from `/proc/PID/smaps_rollup` (`Pss`), for
//! - a full 10 + 1 pool (ten `pas programmer`, one `pas manager`) idle;
//! - the same pool under dry-run dispatch load (many concurrent `Dispatch` calls with `dry_run`);
//! - one programmer running real tasks (real aider against llm-sim): the programmer process
//!   itself, and separately the aider processes it spawns.
//!
//! RSS counts shared pages (the `pas` binary's text, shared libraries) in every process, so the
//! pool's RSS sum counts the binary eleven times; the PSS sum splits shared pages between the
//! processes that map them and is the pool's real footprint. Both are reported.

use super::live;
use super::{Dist, Mem, Section, descendants, mem, mib, table, verdict_le};
use crate::common::pool::{ChildGuard, PoolOptions, TestPool, TestProgrammer};
use anyhow::{Context, ensure};
use pas::contract::v1::{DispatchRequest, TaskRequest, TaskState};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Idle pool target: 10 + 1 processes ≤ 60 MB.
const TARGET_MB: f64 = 60.0;

/// A memory sample of the whole pool.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
struct PoolMem {
    manager: Mem,
    programmers_rss_kib: u64,
    programmers_pss_kib: u64,
    programmers_anon_kib: u64,
    programmer_max_rss_kib: u64,
}

impl PoolMem {
    fn total_rss_kib(&self) -> u64 {
        self.manager.rss_kib + self.programmers_rss_kib
    }
    fn total_pss_kib(&self) -> u64 {
        self.manager.pss_kib + self.programmers_pss_kib
    }
}

fn sample(manager: &ChildGuard, programmers: &[ChildGuard]) -> anyhow::Result<PoolMem> {
    let manager = mem(manager.child.id()).context("the manager is gone")?;
    let mut out = PoolMem {
        manager,
        ..Default::default()
    };
    for p in programmers {
        let m = mem(p.child.id()).with_context(|| format!("{} is gone", p.name))?;
        out.programmers_rss_kib += m.rss_kib;
        out.programmers_pss_kib += m.pss_kib;
        out.programmers_anon_kib += m.anon_kib;
        out.programmer_max_rss_kib = out.programmer_max_rss_kib.max(m.rss_kib);
    }
    Ok(out)
}

/// Measures idle, dry-run load (`dry_runs` dispatches, `concurrency` at a time) and real tasks
/// (`real_tasks` sent at once to one programmer).
pub fn run(dry_runs: usize, concurrency: usize, real_tasks: usize) -> anyhow::Result<Section> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(measure(dry_runs, concurrency, real_tasks))
}

async fn measure(
    dry_runs: usize,
    concurrency: usize,
    real_tasks: usize,
) -> anyhow::Result<Section> {
    let ids: Vec<String> = (1..=10).map(|i| format!("{i:03}")).collect();
    let options = PoolOptions {
        programmers: ids.iter().map(|id| TestProgrammer::free(id)).collect(),
        max_queue_per_programmer: 5,
        ..PoolOptions::default()
    };
    let pool = TestPool::new(options);
    pool.sample_repo();
    let programmers: Vec<ChildGuard> = ids.iter().map(|id| pool.start_programmer(id)).collect();
    let manager = pool.start_manager();
    let mut c = live::manager(&pool).await?;
    live::wait_available(&mut c, 10, Duration::from_secs(60)).await?;
    // Let the health watches, status polls and allocators settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = sample(&manager, &programmers)?;
    let idle_prog: Vec<f64> = programmers
        .iter()
        .filter_map(|p| mem(p.child.id()))
        .map(|m| mib(m.rss_kib))
        .collect();
    let idle_prog = Dist::of(&idle_prog);

    // --- Dry-run dispatch load through the manager.
    let stop = Arc::new(AtomicBool::new(false));
    let peaks = {
        let stop = stop.clone();
        let (mpid, ppids): (u32, Vec<u32>) = (
            manager.child.id(),
            programmers.iter().map(|p| p.child.id()).collect(),
        );
        tokio::spawn(async move {
            let mut peak = PoolMem::default();
            while !stop.load(Ordering::SeqCst) {
                if let Some(m) = mem(mpid) {
                    let mut s = PoolMem {
                        manager: m,
                        ..Default::default()
                    };
                    for &p in &ppids {
                        if let Some(pm) = mem(p) {
                            s.programmers_rss_kib += pm.rss_kib;
                            s.programmers_pss_kib += pm.pss_kib;
                            s.programmer_max_rss_kib = s.programmer_max_rss_kib.max(pm.rss_kib);
                        }
                    }
                    if s.manager.rss_kib > peak.manager.rss_kib {
                        peak.manager = s.manager;
                    }
                    peak.programmers_rss_kib = peak.programmers_rss_kib.max(s.programmers_rss_kib);
                    peak.programmers_pss_kib = peak.programmers_pss_kib.max(s.programmers_pss_kib);
                    peak.programmer_max_rss_kib =
                        peak.programmer_max_rss_kib.max(s.programmer_max_rss_kib);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        })
    };
    let load_started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (mut c, next) = (c.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut ok = 0usize;
            while next.fetch_add(1, Ordering::SeqCst) < dry_runs {
                let run = live::dispatch(
                    &mut c,
                    DispatchRequest {
                        task_description: "dry run".into(),
                        files: vec!["src/module.py".into()],
                        workspace: "sample".into(),
                        run_id: "bench-memory".into(),
                        dry_run: true,
                        ..Default::default()
                    },
                )
                .await?;
                if run.result.status == TaskState::Succeeded as i32 {
                    ok += 1;
                }
            }
            anyhow::Ok(ok)
        }));
    }
    let mut succeeded = 0;
    for w in workers {
        succeeded += w.await??;
    }
    let load_secs = load_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let dry_peak = peaks.await?;
    ensure!(
        succeeded == dry_runs,
        "only {succeeded} of {dry_runs} dry runs succeeded"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_dry = sample(&manager, &programmers)?;

    // --- Real tasks on programmer 001 (one runs, the others queue there).
    let target = &programmers[0];
    let (ppid, stop) = (target.child.id(), Arc::new(AtomicBool::new(false)));
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut prog_peak, mut aider_peak, mut aider_procs) = (0u64, 0u64, 0usize);
            while !stop.load(Ordering::SeqCst) {
                if let Some(m) = mem(ppid) {
                    prog_peak = prog_peak.max(m.rss_kib);
                }
                let kids = descendants(ppid);
                aider_procs = aider_procs.max(kids.len());
                let kids_rss: u64 = kids.iter().filter_map(|&k| mem(k)).map(|m| m.rss_kib).sum();
                aider_peak = aider_peak.max(kids_rss);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (prog_peak, aider_peak, aider_procs)
        })
    };
    let mut tasks = Vec::new();
    for i in 0..real_tasks {
        let mut pc = live::programmer(&pool, "001").await?;
        tasks.push(tokio::spawn(async move {
            live::execute(
                &mut pc,
                TaskRequest {
                    task_id: format!("memory-{i}-{}", std::process::id()),
                    task_description: "Add docstrings to all functions".into(),
                    files: vec!["src/module.py".into()],
                    workspace: "sample".into(),
                    run_id: "bench-memory".into(),
                    ..Default::default()
                },
            )
            .await
        }));
    }
    let mut real_ok = 0;
    for t in tasks {
        let run = t.await??;
        if run.result.status == TaskState::Succeeded as i32 {
            real_ok += 1;
        } else {
            eprintln!("memory: real task failed: {}", run.result.error_message);
        }
    }
    stop.store(true, Ordering::SeqCst);
    let (prog_peak, aider_peak, aider_procs) = sampler.await?;
    let after_real = mem(ppid).context("programmer 001 is gone")?;
    drop(manager);
    drop(programmers);

    let mut t = table(&["process(es)", "state", "RSS MiB", "PSS MiB", "note"]);
    let row = |t: &mut comfy_table::Table,
               what: &str,
               state: &str,
               rss: f64,
               pss: String,
               note: String| {
        t.add_row(vec![
            what.to_string(),
            state.to_string(),
            format!("{rss:.1}"),
            pss,
            note,
        ]);
    };
    row(
        &mut t,
        "manager",
        "idle (10 programmers watched)",
        mib(idle.manager.rss_kib),
        format!("{:.1}", mib(idle.manager.pss_kib)),
        String::new(),
    );
    row(
        &mut t,
        "manager",
        &format!("peak under dry-run load ({dry_runs} dispatches, {concurrency} concurrent)"),
        mib(dry_peak.manager.rss_kib),
        format!("{:.1}", mib(dry_peak.manager.pss_kib)),
        format!(
            "{:.0} dispatches/s during the sample",
            dry_runs as f64 / load_secs
        ),
    );
    row(
        &mut t,
        "manager",
        "2 s after the load",
        mib(after_dry.manager.rss_kib),
        format!("{:.1}", mib(after_dry.manager.pss_kib)),
        format!("VmHWM {:.1}", mib(after_dry.manager.hwm_kib)),
    );
    row(
        &mut t,
        "one programmer",
        "idle (p50 of 10)",
        idle_prog.p50,
        "".into(),
        format!("max {:.1}", idle_prog.max),
    );
    row(
        &mut t,
        "one programmer",
        "peak under dry-run load (max of 10)",
        mib(dry_peak.programmer_max_rss_kib),
        "".into(),
        String::new(),
    );
    row(
        &mut t,
        "one programmer (own process)",
        &format!("peak running real tasks ({real_tasks} sent, {real_ok} succeeded)"),
        mib(prog_peak),
        "".into(),
        format!(
            "after: {:.1} (VmHWM {:.1})",
            mib(after_real.rss_kib),
            mib(after_real.hwm_kib)
        ),
    );
    row(
        &mut t,
        "its aider children",
        "peak while running",
        mib(aider_peak),
        "".into(),
        format!("up to {aider_procs} processes (python); not part of the pool target"),
    );
    row(
        &mut t,
        "pool 10 + 1",
        "idle",
        mib(idle.total_rss_kib()),
        format!("{:.1}", mib(idle.total_pss_kib())),
        format!(
            "target ≤ {TARGET_MB} MB: RSS {}, PSS {}; private (RssAnon) {:.1} MiB",
            verdict_le(mib(idle.total_rss_kib()), TARGET_MB),
            verdict_le(mib(idle.total_pss_kib()), TARGET_MB),
            mib(idle.manager.anon_kib + idle.programmers_anon_kib)
        ),
    );
    row(
        &mut t,
        "pool 10 + 1",
        "peak under dry-run load",
        mib(dry_peak.manager.rss_kib + dry_peak.programmers_rss_kib),
        format!(
            "{:.1}",
            mib(dry_peak.manager.pss_kib + dry_peak.programmers_pss_kib)
        ),
        String::new(),
    );
    let markdown = format!(
        "### Memory\n\nReal `pas` processes (the build under test), RSS from `/proc/PID/status`, PSS \
         from `/proc/PID/smaps_rollup` (shared pages split between the processes mapping them). \
         Targets compare MiB with MB as written in the issue (1 MiB = 1.05 MB, the stricter reading).\n\n{t}\n"
    );
    let json = json!({
        "idle": idle,
        "idle_total_rss_mib": mib(idle.total_rss_kib()),
        "idle_total_pss_mib": mib(idle.total_pss_kib()),
        "idle_programmer_rss_mib": idle_prog,
        "dry_run_load": {"dispatches": dry_runs, "concurrency": concurrency, "seconds": load_secs, "peak": dry_peak},
        "after_dry_run_load": after_dry,
        "real_tasks": {"sent": real_tasks, "succeeded": real_ok, "programmer_peak_rss_kib": prog_peak,
                        "programmer_after": after_real, "aider_peak_rss_kib": aider_peak, "aider_max_processes": aider_procs},
        "target": {"idle_pool_mb_le": TARGET_MB},
    });
    Ok(Section {
        name: "memory",
        markdown,
        json,
    })
}
