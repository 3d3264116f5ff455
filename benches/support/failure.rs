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
    /// From the manager's own clock: its "programmer unavailable" log line (µs resolution).
    manager_removal_ms: Option<f64>,
    /// From the manager's own clock: the Rerouted event's `timestamp_ms` (ms resolution).
    manager_reroute_ms: f64,
    rerouted_to: String,
    result: String,
    /// The rerouted task's error message, if it failed.
    error: String,
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
    let mrd = Dist::of(
        &results
            .iter()
            .filter_map(|t| t.manager_removal_ms)
            .collect::<Vec<_>>(),
    );
    let mrr = Dist::of(
        &results
            .iter()
            .map(|t| t.manager_reroute_ms)
            .collect::<Vec<_>>(),
    );
    let orphans: usize = results.iter().map(|t| t.orphans.len()).sum();
    let succeeded = results
        .iter()
        .filter(|t| t.result == "TASK_STATE_SUCCEEDED")
        .count();
    // One line per kind of error: the task ids differ, the message does not.
    let errors: std::collections::BTreeSet<String> = results
        .iter()
        .enumerate()
        .filter(|(_, t)| t.result != "TASK_STATE_SUCCEEDED")
        .map(|(i, t)| t.error.replace(&task_id(i + 1), "<task>"))
        .collect();
    let outcome = if errors.is_empty() {
        format!(
            "every rerouted task then succeeded ({succeeded} of {})",
            results.len()
        )
    } else {
        format!(
            "**only {succeeded} of {} rerouted tasks then succeeded**; errors: {}",
            results.len(),
            errors
                .iter()
                .map(|e| format!("`{e}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let mut t = table(&[
        "after kill -9 of a busy programmer",
        "trials",
        "p50 ms",
        "p95 ms",
        "max ms",
        "target ≤ 1000 ms (max)",
    ]);
    for (what, d) in [
        (
            "removed from routing: seen by a client polling GetPoolStatus",
            rd,
        ),
        ("removed from routing: manager's log line (its clock)", mrd),
        ("in-flight task rerouted: Rerouted event at the caller", rr),
        (
            "in-flight task rerouted: event's timestamp_ms (manager's clock, 1 ms resolution)",
            mrr,
        ),
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
         (its LLM hangs), 001 gets SIGKILL, a client polls `GetPoolStatus` every 2 ms and reads the \
         task's stream. Outcome: {outcome}. Processes of the killed programmer still alive 1 s \
         later (orphaned aider runs): {orphans} over {} trials.\n\n{t}\n",
        results.len()
    );
    let json = json!({
        "trials": results,
        "removal_ms": rd,
        "reroute_ms": rr,
        "manager_removal_ms": mrd,
        "manager_reroute_ms": mrr,
        "orphans_total": orphans,
        "rerouted_succeeded": succeeded,
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
    let manager = pool.start_manager();
    let mut c = live::manager(&pool).await?;
    let mut out = Vec::new();
    for trial in 1..=trials {
        live::wait_available(&mut c, 3, Duration::from_secs(30)).await?;
        let before = count_doomed(&pool).await?;
        let mut dc = c.clone();
        let req = DispatchRequest {
            task_id: task_id(trial),
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
                        let gone =
                            s.into_inner().programmers.iter().any(|p| {
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
        let killed_wall = std::time::SystemTime::now();
        let killed_at = Instant::now();
        // SIGKILL without waiting here: reaping blocks, and would stall this runtime thread (and
        // the poller with it) for as long as the kernel takes to tear the process down.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .context("kill -9 programmer 001")?;
        let removed_at = tokio::time::timeout(Duration::from_secs(60), poller)
            .await
            .context("001 still available 60 s after kill -9")??;
        tokio::task::block_in_place(|| doomed.kill()); // reap it
        let run: Run = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .context("the rerouted task did not finish within 120 s")???;
        let rerouted_at = run
            .first(|k| matches!(k, Kind::Rerouted(_)))
            .context("no Rerouted event")?;
        let rerouted_event_ms = run
            .events
            .iter()
            .find(|(_, e)| matches!(e.kind, Some(Kind::Rerouted(_))))
            .map(|(_, e)| e.timestamp_ms)
            .unwrap_or_default();
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
            to != "001" && !to.is_empty(),
            "trial {trial}: rerouted to {to:?}, not to another programmer"
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
        let kill_ms = killed_wall
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        let logged = unavailable_logged_ms(&manager.log_text(), "001", kill_ms);
        let trial = Trial {
            removal_ms: ms(removed_at - killed_at),
            reroute_ms: ms(rerouted_at - killed_at),
            manager_removal_ms: logged.map(|t| t - kill_ms),
            manager_reroute_ms: rerouted_event_ms as f64 - kill_ms,
            rerouted_to: to,
            result: state.as_str_name().to_string(),
            error: run.result.error_message.clone(),
            orphans,
        };
        eprintln!("failure trial: {trial:?}");
        out.push(trial);
        doomed = pool.start_programmer("001");
    }
    Ok(out)
}

/// The task id of trial `n` (unique per bench process, so reruns on a kept repo do not collide).
fn task_id(n: usize) -> String {
    format!("failure-{n}-{}", std::process::id())
}

/// Wall-clock time (ms since the epoch) of the first "programmer unavailable" line for `id` in
/// the manager's log at or after `after_ms` (1 ms of slack for clock rounding).
fn unavailable_logged_ms(log: &str, id: &str, after_ms: f64) -> Option<f64> {
    log.lines()
        .map(strip_ansi)
        .filter(|l| l.contains("programmer unavailable") && l.contains(&format!("programmer={id}")))
        .filter_map(|l| {
            let ts = l.split_whitespace().next()?;
            let t = chrono::DateTime::parse_from_rfc3339(ts).ok()?;
            Some(t.timestamp_micros() as f64 / 1000.0)
        })
        .find(|&t| t + 1.0 >= after_ms)
}

/// `text` without ANSI colour sequences (`ESC [ … m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Requests the simulator has seen for 001's models.
async fn count_doomed(pool: &TestPool) -> anyhow::Result<usize> {
    Ok(live::sim_requests(pool)
        .await?
        .iter()
        .filter(|m| m.contains("-001"))
        .count())
}
