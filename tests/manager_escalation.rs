//! Free → paid escalation through the real manager, real programmers and real aider against
//! `pas llm-sim`: a task whose free model's edit does not apply (scripted `no_match`), or whose
//! free models both fail, is dispatched once more to the paid programmer, which edits; its spend is
//! booked; the stream shows the escalation and the result says which tier did the work. With the
//! budget unable to cover a paid job the task is not escalated and its result says why. A manager
//! killed during the paid leg resumes it there, not on the free programmer.

use crate::common;

use common::Sim;
use common::pool::{
    ChildGuard, PoolOptions, TestPool, TestProgrammer, assigned_ids, check_stream, collect_events,
    dispatch_collect, escalated, manager_client, pool_status, sample_dispatch, sim_requests,
    state_of, wait_available, wait_until,
};
use pas::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use pas::contract::v1::task_event::Kind;
use pas::contract::v1::{
    DispatchRequest, ErrorClass, GetTaskRequest, TaskEvent, TaskResult, TaskState, WatchTaskRequest,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::Channel;

/// The free programmer's two models answer with a SEARCH block that matches nothing.
const FREE_NO_MATCH: &str = "rules:\n  - model: '*-001'\n    fault: no_match\n";
/// The free programmer's two models fail at the HTTP level.
const FREE_DOWN: &str = "rules:\n  - model: '*-001'\n    fault: http_500\n";

/// Requests llm-sim received for an OpenAI (paid) model.
async fn paid_requests(sim: &Sim) -> usize {
    sim_requests(sim)
        .await
        .iter()
        .filter(|(model, _, _)| model.contains("gpt-4o"))
        .count()
}

/// One free programmer (001, ollama models) and one paid (002, OpenAI models), free preferred.
fn free_and_paid(options: PoolOptions, escalation_enabled: bool) -> TestPool {
    let pool = TestPool::with_sim(
        PoolOptions {
            programmers: vec![TestProgrammer::free("001"), TestProgrammer::paid("002")],
            ..options
        },
        Sim::start(),
    );
    pool.append_config(&format!("escalation:\n  enabled: {escalation_enabled}\n"));
    pool
}

/// The pool's processes, running with every programmer available, and the sim on `script`.
struct Running {
    repo: PathBuf,
    _programmers: BTreeMap<String, ChildGuard>,
    manager: ChildGuard,
    client: ProgrammerPoolClient<Channel>,
}

async fn start(pool: &TestPool, script: &str) -> Running {
    let repo = pool.sample_repo();
    let programmers = pool.start_all_programmers();
    let manager = pool.start_manager();
    let client = manager_client(pool).await;
    wait_available(&client, 2).await;
    pool.sim.set_script(script).await;
    Running {
        repo,
        _programmers: programmers,
        manager,
        client,
    }
}

/// Dispatches the sample task with `escalate` and reads its stream to the end.
async fn dispatch_asking(
    c: &ProgrammerPoolClient<Channel>,
    escalate: Option<bool>,
) -> (Vec<TaskEvent>, TaskResult) {
    let req = DispatchRequest {
        escalate,
        ..sample_dispatch("Add docstrings to all functions")
    };
    dispatch_collect(c, req).await
}

#[track_caller]
fn assert_failed_on_the_free_tier(result: &TaskResult) {
    assert_eq!(state_of(result), TaskState::Failed, "{result:#?}");
    assert_eq!(result.error_class, ErrorClass::EditFailed as i32);
    assert_eq!(result.tier, "free");
}

/// The paid programmer 002 produced `result`, escalated from 001 for `trigger`.
#[track_caller]
fn assert_done_by_the_paid_tier(result: &TaskResult, trigger: &str) {
    assert_eq!(state_of(result), TaskState::Succeeded, "{result:#?}");
    assert_eq!(
        (result.programmer_id.as_str(), result.tier.as_str()),
        ("002", "paid")
    );
    let from = format!("escalated from free programmer 001 ({trigger}: ");
    assert!(result.escalation.starts_with(&from), "{result:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_failing_on_the_free_tier_is_done_by_the_paid_tier_and_booked() {
    let pool = free_and_paid(PoolOptions::default(), true);
    let running = start(&pool, FREE_NO_MATCH).await;
    let (repo, c) = (&running.repo, running.client.clone());

    // A caller that says no: the free failure stands, nothing paid runs.
    let (events, result) = dispatch_asking(&c, Some(false)).await;
    assert_failed_on_the_free_tier(&result);
    assert_eq!(result.escalation, "");
    assert!(escalated(&events).is_empty(), "{events:#?}");
    assert_eq!(paid_requests(&pool.sim).await, 0);

    // The configuration's default (enabled): escalated once, done by the paid programmer.
    let task_id = "escalated-edit".to_string();
    let (events, result) = dispatch_collect(
        &c,
        DispatchRequest {
            task_id: task_id.clone(),
            ..sample_dispatch("Add docstrings to all functions")
        },
    )
    .await;
    assert_eq!(state_of(&result), TaskState::Succeeded, "{result:#?}");
    assert_eq!(assigned_ids(&events), ["001", "002"], "{events:#?}");
    let esc = escalated(&events);
    assert_eq!(esc.len(), 1, "{events:#?}");
    assert_eq!(
        (
            esc[0].from_programmer.as_str(),
            esc[0].from_tier.as_str(),
            esc[0].to_tier.as_str()
        ),
        ("001", "free", "paid")
    );
    assert!(
        esc[0].reason.starts_with("edit_failed: "),
        "{:?}",
        esc[0].reason
    );
    let failed = esc[0].failed.clone().expect("the free leg's result");
    assert_eq!(failed.error_class, ErrorClass::EditFailed as i32);
    // The escalation comes between the free leg's and the paid leg's assignments.
    let position = |pred: &dyn Fn(&TaskEvent) -> bool| events.iter().position(pred).unwrap();
    let esc_at = position(&|e| matches!(e.kind, Some(Kind::Escalated(_))));
    let paid_at =
        position(&|e| matches!(&e.kind, Some(Kind::Assigned(a)) if a.programmer_id == "002"));
    assert!(esc_at < paid_at, "{events:#?}");

    // The result: the paid tier did the work, both legs' attempts are in it, and its cost is
    // what the ledger booked.
    assert_done_by_the_paid_tier(&result, "edit_failed");
    let by: Vec<&str> = result
        .attempts
        .iter()
        .map(|a| a.programmer_id.as_str())
        .collect();
    assert_eq!(by.first(), Some(&"001"), "{result:#?}");
    assert_eq!(by.last(), Some(&"002"), "{result:#?}");
    let numbers: Vec<u32> = result.attempts.iter().map(|a| a.number).collect();
    assert_eq!(numbers, (1..=numbers.len() as u32).collect::<Vec<_>>());
    assert!(
        result.cost_nanousd > 0,
        "the paid model costs money: {result:#?}"
    );
    assert_eq!(
        result.cost_nanousd,
        result.attempts.iter().map(|a| a.cost_nanousd).sum::<u64>()
    );
    let budget = pool_status(&c).await.budget.expect("budget");
    assert_eq!(budget.spent_nanousd, result.cost_nanousd, "{budget:?}");
    assert_eq!(budget.reserved_nanousd, 0, "{budget:?}");
    assert!(paid_requests(&pool.sim).await > 0);
    // The edit is kept on the task's branch, as for any task.
    let log = std::process::Command::new("git")
        .args([
            "-C",
            &repo.display().to_string(),
            "log",
            "--format=%H",
            "-1",
            &result.branch,
        ])
        .output()
        .expect("git log");
    assert_eq!(String::from_utf8_lossy(&log.stdout).trim(), result.commit);
    // The record holds the same result; a replay shows the same stream.
    let record = c
        .clone()
        .get_task(GetTaskRequest {
            task_id: task_id.clone(),
        })
        .await
        .expect("GetTask")
        .into_inner();
    assert_eq!(record.result.as_ref(), Some(&result));
    let replay = c
        .clone()
        .watch_task(WatchTaskRequest {
            task_id,
            after_seq: 0,
        })
        .await
        .expect("WatchTask")
        .into_inner();
    assert_eq!(collect_events(replay).await.0, events);

    // Every LLM attempt failing on the free tier escalates too (attempts_exhausted).
    pool.sim.set_script(FREE_DOWN).await;
    let (events, result) = dispatch_asking(&c, Some(true)).await;
    assert_done_by_the_paid_tier(&result, "attempts_exhausted");
    assert_eq!(escalated(&events).len(), 1, "{events:#?}");
    let metrics = reqwest::get(format!("{}/metrics", pool.manager_url()))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    for trigger in ["edit_failed", "attempts_exhausted"] {
        let line =
            format!("pas_escalations_total{{outcome=\"escalated\",trigger=\"{trigger}\"}} 1");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_budget_unable_to_cover_a_paid_job_the_task_is_not_escalated_and_says_why() {
    // A $1 day cannot hold one $2.50 paid job.
    let pool = free_and_paid(
        PoolOptions {
            max_daily_spend_usd: 1.0,
            alert_threshold_usd: 0.5,
            ..PoolOptions::default()
        },
        false,
    );
    let running = start(&pool, FREE_NO_MATCH).await;
    let c = running.client.clone();

    let (events, result) = dispatch_asking(&c, Some(true)).await;
    assert_failed_on_the_free_tier(&result);
    assert!(
        result
            .escalation
            .starts_with("not escalated (edit_failed): daily budget exhausted"),
        "{:?}",
        result.escalation
    );
    assert!(escalated(&events).is_empty(), "{events:#?}");
    assert_eq!(assigned_ids(&events), ["001"]);
    assert_eq!(paid_requests(&pool.sim).await, 0);
    let budget = pool_status(&c).await.budget.expect("budget");
    assert_eq!((budget.spent_nanousd, budget.reserved_nanousd), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_killed_during_the_paid_leg_resumes_the_task_there() {
    let pool = free_and_paid(
        PoolOptions {
            request_timeout_s: 120,
            task_timeout_s: 300,
            task_lease_s: 120,
            ..PoolOptions::default()
        },
        true,
    );
    // The paid model streams slowly, so the paid leg is still running when the manager dies.
    let mut running = start(
        &pool,
        "rules:\n  - model: '*-001'\n    fault: no_match\n  - model: 'gpt-4o*'\n    chunk_delay_ms: 150\n    chunk_chars: 8\n",
    )
    .await;
    let c = running.client.clone();
    let task_id = "escalated-then-killed".to_string();
    let mut stream = c
        .clone()
        .dispatch(DispatchRequest {
            task_id: task_id.clone(),
            ..sample_dispatch("Add docstrings to all functions")
        })
        .await
        .expect("Dispatch accepted")
        .into_inner();
    let mut before = Vec::new();
    // Until the paid programmer has the task and its model is answering.
    while let Ok(Some(event)) = stream.message().await {
        let paid_output = matches!(&event.kind, Some(Kind::Output(_)))
            && assigned_ids(&before).last().is_some_and(|p| p == "002");
        before.push(event);
        if paid_output {
            break;
        }
    }
    assert_eq!(escalated(&before).len(), 1, "{before:#?}");
    wait_until(
        Duration::from_secs(60),
        "the paid model answering",
        || async { paid_requests(&pool.sim).await > 0 },
    )
    .await;
    running.manager.kill();
    drop(stream);

    let restarted = pool.start_manager();
    let c = manager_client(&pool).await;
    let after_seq = before.last().map_or(0, |e| e.seq);
    let rest = c
        .clone()
        .watch_task(WatchTaskRequest {
            task_id: task_id.clone(),
            after_seq,
        })
        .await
        .expect("WatchTask after the restart")
        .into_inner();
    let mut stitched = before;
    let mut rest = rest;
    loop {
        match tokio::time::timeout(Duration::from_secs(240), rest.message()).await {
            Ok(Ok(Some(ev))) if matches!(ev.kind, Some(Kind::Heartbeat(_))) => {}
            Ok(Ok(Some(ev))) => stitched.push(ev),
            Ok(Ok(None)) => break,
            other => panic!("watch ended badly: {other:?}\nso far: {stitched:#?}"),
        }
    }
    let result = check_stream(&stitched);
    assert_eq!(state_of(&result), TaskState::Succeeded, "{result:#?}");
    // Followed on the paid programmer: never back on the free one, escalated once.
    assert_eq!(assigned_ids(&stitched), ["001", "002"], "{stitched:#?}");
    assert_eq!(escalated(&stitched).len(), 1);
    assert_done_by_the_paid_tier(&result, "edit_failed");
    assert_eq!(
        result.attempts.first().map(|a| a.programmer_id.as_str()),
        Some("001")
    );
    let budget = pool_status(&c).await.budget.expect("budget");
    assert_eq!(budget.spent_nanousd, result.cost_nanousd, "{budget:?}");
    assert_eq!(budget.reserved_nanousd, 0, "{budget:?}");
    // The restarted manager followed the running paid leg (it did not queue the task again).
    let log = restarted.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("resumed the tasks") && l.contains("followed=1")),
        "{log}"
    );
}
