//! Failure detection: `kill -9` of a programmer that is running a task, then
//! - **removal**: time until the manager's `GetPoolStatus` shows it unavailable (polled every
//!   2 ms by a concurrent client; the same flag takes it out of routing), and
//! - **reroute**: time until the caller's `Dispatch` stream delivers the `Rerouted` event (the
//!   task was placed on another programmer).
//!
//! Real processes: llm-sim, three `pas programmer`, `pas manager`, real aider. The doomed
//! programmer's model hangs in the simulator, so its task is in flight (aider waiting on the LLM)
//! when it is killed; the task then runs to success on the next programmer. The health-check
//! poll interval is the shipped 30 s, so detection cannot come from the poll.

use super::live::{self, Run};
use super::{Dist, Section, alive, cmdline, descendants, ms, table, verdict_le};
use crate::common::Sim;
use crate::common::pool::{PoolOptions, TestPool, TestProgrammer};
use anyhow::{Context, bail, ensure};
use pas::contract::v1::task_event::Kind;
use pas::contract::v1::{DispatchRequest, GetPoolStatusRequest, ProgrammerState, TaskState};
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

const SCRIPT: &str = "rules:\n  - model: \"primary-001\"\n    fault: hang\n  - model: \"backup-001\"\n    fault: hang\n";

/// One trial's figures.
#[derive(Debug, serde::Serialize)]
struct Trial {
    removal_ms: f64,
    reroute_ms: f64,
    rerouted_to: String,
    result: String,
    /// Processes of the killed programmer (aider) still alive 1 s after the kill.
    orphans: Vec<String>,
}

/// Runs `trials` kill -9 trials.
pub fn run(trials: usize) -> anyhow::Result<Section> {
    let rt = tokio::runtime::Runtime::new()?;
    let results = rt.block_on(trials_on_a_pool(trials))?;
    let removal: Vec<f64> = results.iter().map(|t| t.removal_ms).collect();
    let reroute: Vec<f64> = results.iter().map(|t| t.reroute_ms).collect();
    let (rd, rr) = (Dist::of(&removal), Dist::of(&reroute));
    let orphans: usize = results.iter().map(|t| t.orphans.len()).sum();
    let mut t = table(&[
        "after kill -9 of a busy programmer",
        "trials",
        "p50 ms",
        "p95 ms",
        "max ms",
        "target ≤ 1000 ms (max)",
    ]);
    for (what, d) in [
        ("removed from routing (GetPoolStatus)", rd),
        ("in-flight task rerouted (Rerouted event at the caller)", rr),
    ] {
        t.add_row(vec![
            what.to_string(),
            d.n.to_string(),
            format!("{:.1}", d.p50),
            format!("{:.1}", d.p95),
            format!("{:.1}", d.max),
            verdict_le(d.max, 1000.0),
        ]);
    }
    let markdown = format!(
        "### Failure detection\n\n3 programmers + manager (real processes, real aider, llm-sim), \
         `health_check_interval_s: 30` (shipped value). Each trial: a task runs on programmer 001 \
         (its LLM hangs), 001 gets SIGKILL, a client polls `GetPoolStatus` every 2 ms; the task must \
         end `SUCCEEDED` on another programmer. Processes of the killed programmer still alive 1 s \
         later (orphaned aider runs): {orphans} over {} trials.\n\n{t}\n",
        results.len()
    );
    let json = json!({
        "trials": results,
        "removal_ms": rd,
        "reroute_ms": rr,
        "orphans_total": orphans,
        "health_check_interval_s": 30,
        "target": {"max_ms_le": 1000.0},
    });
    Ok(Section {
        name: "failure_detection",
        markdown,
        json,
    })
}

async fn trials_on_a_pool(trials: usize) -> anyhow::Result<Vec<Trial>> {
    let options = PoolOptions {
        programmers: vec![
            TestProgrammer::free("001"),
            TestProgrammer::free("002"),
            TestProgrammer::free("003"),
        ],
        // First in configuration order with room: the task goes to 001.
        strategy: "capability_match".into(),
        health_check_interval_s: 30,
        ..PoolOptions::default()
    };
    let pool = TestPool::with_sim(options, Sim::start_with_script(SCRIPT));
    pool.sample_repo();
    let mut doomed = pool.start_programmer("001");
    let _others = [pool.start_programmer("002"), pool.start_programmer("003")];
    let _manager = pool.start_manager();
    let mut c = live::manager(&pool).await?;
    let mut out = Vec::new();
    for trial in 1..=trials {
        live::wait_available(&mut c, 3, Duration::from_secs(30)).await?;
        let before = count_doomed(&pool).await?;
        let mut dc = c.clone();
        let req = DispatchRequest {
            task_id: format!("failure-{trial}-{}", std::process::id()),
            task_description: "Add docstrings to all functions".into(),
            files: vec!["src/module.py".into()],
            workspace: "sample".into(),
            run_id: "bench-failure".into(),
            ..Default::default()
        };
        let task = tokio::spawn(async move { live::dispatch(&mut dc, req).await });
        // In flight = aider's request reached the (hanging) simulated LLM.
        let deadline = Instant::now() + Duration::from_secs(60);
        while count_doomed(&pool).await? <= before {
            if Instant::now() > deadline || task.is_finished() {
                bail!(
                    "trial {trial}: the task never reached 001's LLM\n{}",
                    doomed.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pid = doomed.child.id();
        let children = descendants(pid);
        let poller = {
            let mut pc = c.clone();
            tokio::spawn(async move {
                loop {
                    if let Ok(s) = pc.get_pool_status(GetPoolStatusRequest {}).await {
                        let gone = s.into_inner().programmers.iter().any(|p| {
                            p.id == "001" && p.state != ProgrammerState::Available as i32
                        });
                        if gone {
                            return Instant::now();
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        };
        let killed_at = Instant::now();
        doomed.kill();
        let removed_at = tokio::time::timeout(Duration::from_secs(60), poller)
            .await
            .context("001 still available 60 s after kill -9")??;
        let run: Run = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .context("the rerouted task did not finish within 120 s")???;
        let rerouted_at = run
            .first(|k| matches!(k, Kind::Rerouted(_)))
            .context("no Rerouted event")?;
        let to = run
            .events
            .iter()
            .find_map(|(_, e)| match &e.kind {
                Some(Kind::Rerouted(r)) => Some(r.to_programmer.clone()),
                _ => None,
            })
            .unwrap_or_default();
        let state = TaskState::try_from(run.result.status).unwrap_or(TaskState::Unspecified);
        ensure!(
            state == TaskState::Succeeded && to != "001",
            "trial {trial}: expected success elsewhere, got {state:?} on {to}: {}",
            run.result.error_message
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let orphans: Vec<String> = children
            .into_iter()
            .filter(|&p| alive(p))
            .map(|p| format!("{p}: {}", cmdline(p)))
            .collect();
        for o in &orphans {
            // Our own grandchildren: end them by pid so the next trial starts clean.
            if let Some(p) = o.split(':').next().and_then(|p| p.parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let trial = Trial {
            removal_ms: ms(removed_at - killed_at),
            reroute_ms: ms(rerouted_at - killed_at),
            rerouted_to: to,
            result: state.as_str_name().to_string(),
            orphans,
        };
        eprintln!("failure trial: {trial:?}");
        out.push(trial);
        doomed = pool.start_programmer("001");
    }
    Ok(out)
}

/// Requests the simulator has seen for 001's models.
async fn count_doomed(pool: &TestPool) -> anyhow::Result<usize> {
    Ok(live::sim_requests(pool)
        .await?
        .iter()
        .filter(|m| m.contains("-001"))
        .count())
}
