//! Streaming: Output events per second relayed end to end, manager → programmer → aider →
//! llm-sim, against the same programmer called directly, side by side in one run.
//!
//! The simulator streams a long reply (docstrings for every function of a 150-function file,
//! in 4-character chunks with no delay between them); aider prints each delta as it arrives
//! (`--stream --no-pretty`), the programmer turns each pipe read into one Output event. Rate =
//! Output events ÷ (last Output − first Output) at the client. Runs alternate direct / via the
//! manager so drift on the shared machine hits both.

use super::live::{self, Run};
use super::{Dist, Section, table};
use crate::common::Sim;
use crate::common::pool::{PoolOptions, TestPool};
use anyhow::ensure;
use pas::contract::v1::{DispatchRequest, TaskRequest, TaskState};
use serde_json::json;
use std::time::Duration;

const SCRIPT: &str = "default:\n  chunk_chars: 4\n  chunk_delay_ms: 0\n";
const FUNCTIONS: usize = 60;

/// Figures of one run.
#[derive(Debug, Clone, serde::Serialize)]
struct Rate {
    path: &'static str,
    outputs: usize,
    bytes: usize,
    window_s: f64,
    events_per_s: f64,
    bytes_per_s: f64,
    task_s: f64,
}

fn rate(path: &'static str, run: &Run) -> anyhow::Result<Rate> {
    let state = TaskState::try_from(run.result.status).unwrap_or(TaskState::Unspecified);
    ensure!(
        state == TaskState::Succeeded,
        "{path}: task ended {state:?}: {}",
        run.result.error_message
    );
    let outs = run.outputs();
    ensure!(outs.len() >= 2, "{path}: only {} Output events", outs.len());
    let window = (outs[outs.len() - 1].0 - outs[0].0).as_secs_f64();
    let bytes: usize = outs.iter().map(|o| o.1).sum();
    let last = run.events.last().map_or(run.started, |e| e.0);
    Ok(Rate {
        path,
        outputs: outs.len(),
        bytes,
        window_s: window,
        events_per_s: outs.len() as f64 / window,
        bytes_per_s: bytes as f64 / window,
        task_s: (last - run.started).as_secs_f64(),
    })
}

fn big_module() -> String {
    (0..FUNCTIONS)
        .map(|i| format!("def function_{i}(a, b):\n    return a * {i} + b\n\n\n"))
        .collect()
}

/// `rounds` rounds of (direct, via manager), after one warm-up run of each.
pub fn run(rounds: usize) -> anyhow::Result<Section> {
    let rt = tokio::runtime::Runtime::new()?;
    let rates = rt.block_on(measure(rounds))?;
    let direct: Vec<&Rate> = rates.iter().filter(|r| r.path == "direct").collect();
    let via: Vec<&Rate> = rates.iter().filter(|r| r.path == "via manager").collect();
    let ratios: Vec<f64> = direct
        .iter()
        .zip(&via)
        .map(|(d, v)| v.events_per_s / d.events_per_s)
        .collect();
    let mut t = table(&[
        "path",
        "runs",
        "Output events/run (p50)",
        "bytes/run (p50)",
        "events/s p50",
        "events/s min–max",
        "KiB/s p50",
        "task s p50",
    ]);
    for (name, rs) in [("direct Execute", &direct), ("via manager Dispatch", &via)] {
        let ev = Dist::of(&rs.iter().map(|r| r.events_per_s).collect::<Vec<_>>());
        t.add_row(vec![
            name.to_string(),
            rs.len().to_string(),
            format!(
                "{:.0}",
                Dist::of(&rs.iter().map(|r| r.outputs as f64).collect::<Vec<_>>()).p50
            ),
            format!(
                "{:.0}",
                Dist::of(&rs.iter().map(|r| r.bytes as f64).collect::<Vec<_>>()).p50
            ),
            format!("{:.0}", ev.p50),
            format!("{:.0}–{:.0}", ev.min, ev.max),
            format!(
                "{:.1}",
                Dist::of(
                    &rs.iter()
                        .map(|r| r.bytes_per_s / 1024.0)
                        .collect::<Vec<_>>()
                )
                .p50
            ),
            format!(
                "{:.2}",
                Dist::of(&rs.iter().map(|r| r.task_s).collect::<Vec<_>>()).p50
            ),
        ]);
    }
    let rd = Dist::of(&ratios);
    let markdown = format!(
        "### Streaming\n\nOne programmer + manager, real aider against llm-sim (`chunk_chars: 4`, \
         `chunk_delay_ms: 0`, a reply of ~{FUNCTIONS} SEARCH/REPLACE or whole-file edits). Output \
         events per second at the client, via the manager ÷ direct, per round: p50 **{:.2}×** \
         (min {:.2}×, max {:.2}×, {} rounds). The event rate is bounded by aider (one Python \
         process printing each delta) and by how the programmer's pipe reads coalesce deltas, not \
         by the relay.\n\n{t}\n",
        rd.p50, rd.min, rd.max, rd.n
    );
    let json = json!({
        "runs": rates,
        "via_manager_over_direct_events_per_s": rd,
        "script": {"chunk_chars": 4, "chunk_delay_ms": 0},
        "functions": FUNCTIONS,
    });
    Ok(Section {
        name: "streaming",
        markdown,
        json,
    })
}

async fn measure(rounds: usize) -> anyhow::Result<Vec<Rate>> {
    let pool = TestPool::with_sim(PoolOptions::default(), Sim::start_with_script(SCRIPT));
    let module = big_module();
    pool.repo("big", &[("src/big.py", module.as_str())]);
    let _programmer = pool.start_programmer("001");
    let _manager = pool.start_manager();
    let mut mc = live::manager(&pool).await?;
    let mut pc = live::programmer(&pool, "001").await?;
    live::wait_available(&mut mc, 1, Duration::from_secs(30)).await?;
    let task = |n: usize| TaskRequest {
        task_id: format!("stream-direct-{n}-{}", std::process::id()),
        task_description: "Add docstrings to all functions".into(),
        files: vec!["src/big.py".into()],
        workspace: "big".into(),
        run_id: "bench-streaming".into(),
        ..Default::default()
    };
    let dispatch = |n: usize| DispatchRequest {
        task_id: format!("stream-manager-{n}-{}", std::process::id()),
        task_description: "Add docstrings to all functions".into(),
        files: vec!["src/big.py".into()],
        workspace: "big".into(),
        run_id: "bench-streaming".into(),
        ..Default::default()
    };
    // Warm-up (page cache, aider's imports): not counted.
    rate("direct", &live::execute(&mut pc, task(0)).await?)?;
    rate("via manager", &live::dispatch(&mut mc, dispatch(0)).await?)?;
    let mut out = Vec::new();
    for round in 1..=rounds {
        let mut pair = Vec::new();
        for direct_first in [round % 2 == 1, round % 2 == 0] {
            if direct_first {
                pair.push(rate("direct", &live::execute(&mut pc, task(round)).await?)?);
            } else {
                pair.push(rate(
                    "via manager",
                    &live::dispatch(&mut mc, dispatch(round)).await?,
                )?);
            }
        }
        eprintln!("streaming round {round}: {pair:?}");
        out.extend(pair);
    }
    Ok(out)
}
