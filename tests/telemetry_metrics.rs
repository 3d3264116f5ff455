//! `GET /metrics` on the real manager and programmer, scraped before and after real tasks: a
//! success on the primary, a failover that opens the breaker (threshold 1), a task on the backup
//! while the breaker is open, then the programmer going away. Every scrape must be valid
//! Prometheus text; counters and gauges must move exactly as the task results say. Also checks
//! the per-LLM figures in `GetPoolStatus` and `pas status`.

use crate::common;
use crate::telemetry_support as support;

use common::pool::{PoolOptions, TestPool, TestProgrammer, wait_available};
use pas::contract::error_class_name;
use pas::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use pas::contract::v1::task_event::Kind;
use pas::contract::v1::{DispatchRequest, GetPoolStatusRequest, TaskResult, TaskState};
use std::time::Duration;
use support::{Scrape, scrape};
use tonic::transport::Channel;

const PRIMARY: &str = "openai/gpt-4o";
const BACKUP: &str = "openai/gpt-4o-mini";

async fn run_task(c: &mut ProgrammerPoolClient<Channel>, id: &str) -> TaskResult {
    let mut stream = c
        .dispatch(DispatchRequest {
            task_id: id.into(),
            run_id: "run-metrics".into(),
            task_description: format!("Add docstrings to all functions ({id})"),
            files: vec!["src/module.py".into()],
            workspace: "sample".into(),
            ..Default::default()
        })
        .await
        .expect("Dispatch accepted")
        .into_inner();
    let mut result = None;
    while let Some(ev) = stream.message().await.expect("stream") {
        if let Some(Kind::Result(r)) = ev.kind {
            result = Some(*r);
        }
    }
    let result = result.expect("a result");
    assert_eq!(
        TaskState::try_from(result.status),
        Ok(TaskState::Succeeded),
        "{id}: {result:#?}"
    );
    result
}

/// `after - before` of one series.
fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.value(name, labels) - before.value(name, labels)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_success_failover_breaker_and_availability() {
    let pool = TestPool::new(PoolOptions {
        programmers: vec![TestProgrammer::paid("001")],
        failure_threshold: 1,
        ..Default::default()
    });
    pool.sample_repo();
    let mut prog = pool.start_programmer("001");
    let _mgr = pool.start_manager();
    let (prog_url, mgr_url) = (pool.programmer_url("001"), pool.manager_url());
    let mut c = ProgrammerPoolClient::connect(mgr_url.clone())
        .await
        .expect("connect to the manager");
    wait_available(&c, 1).await;

    let p0 = scrape(&prog_url).await;
    let m0 = scrape(&mgr_url).await;
    // Before any task: state gauges exist and say "healthy, idle".
    assert_eq!(
        p0.get(
            "pas_breaker_state",
            &[("programmer_id", "001"), ("llm", PRIMARY)]
        ),
        Some(0.0)
    );
    assert_eq!(
        p0.get("pas_programmer_using_backup", &[("programmer_id", "001")]),
        Some(0.0)
    );
    assert_eq!(
        m0.get("pas_pool_programmers", &[("state", "available")]),
        Some(1.0)
    );
    assert_eq!(
        m0.get("pas_pool_programmers", &[("state", "unavailable")]),
        Some(0.0)
    );
    assert_eq!(m0.get("pas_pool_programmers_on_backup", &[]), Some(0.0));
    assert_eq!(m0.get("pas_budget_daily_spend_usd", &[]), Some(0.0));
    assert_eq!(m0.get("pas_budget_limit_usd", &[]), Some(50.0));
    for alert in ["low_availability", "high_backup_usage", "budget_threshold"] {
        assert_eq!(
            m0.get("pas_alert_active", &[("alert", alert)]),
            Some(0.0),
            "{alert}"
        );
    }

    // 1: success on the primary.
    let a = run_task(&mut c, "metrics-a").await;
    assert_eq!((a.llm_used.as_str(), a.attempts.len()), (PRIMARY, 1));
    // 2: the primary answers 503 once: failover to the backup; threshold 1 opens the breaker.
    pool.sim
        .set_script(&format!(
            "rules:\n  - model: \"{PRIMARY}\"\n    fault: http_503\n    times: 1\n"
        ))
        .await;
    let b = run_task(&mut c, "metrics-b").await;
    assert_eq!((b.llm_used.as_str(), b.attempts.len()), (BACKUP, 2));
    let class = error_class_name(b.attempts[0].error_class);
    // 3: the breaker is open: straight to the backup.
    let d = run_task(&mut c, "metrics-c").await;
    assert_eq!((d.llm_used.as_str(), d.attempts.len()), (BACKUP, 1));
    assert!(d.used_backup);
    let results = [&a, &b, &d];

    // ----- the programmer -----
    let p1 = scrape(&prog_url).await;
    let tasks = "pas_programmer_tasks_total";
    let on = |llm| {
        [
            ("programmer_id", "001"),
            ("llm", llm),
            ("outcome", "succeeded"),
        ]
    };
    assert_eq!(delta(&p0, &p1, tasks, &on(PRIMARY)), 1.0);
    assert_eq!(delta(&p0, &p1, tasks, &on(BACKUP)), 2.0);
    let hist = "pas_programmer_task_duration_seconds";
    assert_eq!(delta(&p0, &p1, &format!("{hist}_count"), &on(BACKUP)), 2.0);
    let backup_secs: f64 = [&b, &d].iter().map(|r| r.duration_ms as f64 / 1000.0).sum();
    // The programmer's own duration (acceptance there to result) is inside the caller's view.
    let prog_secs = p1.value(&format!("{hist}_sum"), &on(BACKUP));
    assert!(
        prog_secs > 1.0 && prog_secs <= backup_secs,
        "{prog_secs} vs {backup_secs}"
    );
    assert_eq!(
        p1.value(
            &format!("{hist}_bucket"),
            &[on(BACKUP).as_slice(), &[("le", "+Inf")]].concat()
        ),
        2.0,
        "a real histogram with buckets"
    );
    let attempts = "pas_llm_attempts_total";
    let attempt = |llm, outcome| [("programmer_id", "001"), ("llm", llm), ("outcome", outcome)];
    assert_eq!(delta(&p0, &p1, attempts, &attempt(PRIMARY, "none")), 1.0);
    assert_eq!(delta(&p0, &p1, attempts, &attempt(PRIMARY, &class)), 1.0);
    assert_eq!(delta(&p0, &p1, attempts, &attempt(BACKUP, "none")), 2.0);
    let failover = [
        ("programmer_id", "001"),
        ("from_llm", PRIMARY),
        ("to_llm", BACKUP),
        ("reason", class.as_str()),
    ];
    assert_eq!(delta(&p0, &p1, "pas_failovers_total", &failover), 1.0);
    let transition = |from, to| {
        [
            ("programmer_id", "001"),
            ("llm", PRIMARY),
            ("from", from),
            ("to", to),
        ]
    };
    assert_eq!(
        delta(
            &p0,
            &p1,
            "pas_breaker_transitions_total",
            &transition("closed", "open")
        ),
        1.0
    );
    assert_eq!(
        p1.sum("pas_breaker_transitions_total", &[]),
        1.0,
        "exactly one transition"
    );
    let id = [("programmer_id", "001")];
    assert_eq!(
        p1.value("pas_breaker_state", &[id[0], ("llm", PRIMARY)]),
        1.0,
        "open"
    );
    assert_eq!(
        p1.value("pas_breaker_failures_in_window", &[id[0], ("llm", PRIMARY)]),
        1.0
    );
    assert_eq!(p1.value("pas_programmer_using_backup", &id), 1.0);
    assert_eq!(p1.value("pas_programmer_queue_depth", &id), 0.0);
    assert_eq!(p1.value("pas_programmer_running", &id), 0.0);
    let backup_sent: u64 = results
        .iter()
        .flat_map(|r| r.attempts.iter())
        .filter(|a| a.llm == BACKUP)
        .map(|a| a.tokens_sent)
        .sum();
    assert!(backup_sent > 0);
    assert_eq!(
        delta(
            &p0,
            &p1,
            "pas_llm_tokens_total",
            &[("llm", BACKUP), ("direction", "sent")]
        ),
        backup_sent as f64
    );
    let spent: f64 = results.iter().map(|r| r.cost_usd).sum();
    assert!(spent > 0.0, "paid models cost money");
    assert!(close(
        p1.value("pas_llm_spend_usd", &[("llm", PRIMARY)])
            + p1.value("pas_llm_spend_usd", &[("llm", BACKUP)]),
        spent
    ));

    // ----- the manager -----
    // Its picture of the programmer comes from health polls (every second): wait for the backup.
    let mut m1 = scrape(&mgr_url).await;
    for _ in 0..100 {
        if m1.value("pas_pool_programmers_on_backup", &[]) == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        m1 = scrape(&mgr_url).await;
    }
    let pool_tasks = "pas_pool_tasks_total";
    assert_eq!(delta(&m0, &m1, pool_tasks, &on(PRIMARY)), 1.0);
    assert_eq!(delta(&m0, &m1, pool_tasks, &on(BACKUP)), 2.0);
    let by_llm = [("llm", BACKUP), ("outcome", "succeeded")];
    assert_eq!(
        delta(&m0, &m1, "pas_pool_task_duration_seconds_count", &by_llm),
        2.0
    );
    assert!(close(
        m1.value("pas_pool_task_duration_seconds_sum", &by_llm),
        backup_secs
    ));
    assert_eq!(
        delta(
            &m0,
            &m1,
            "pas_pool_failovers_total",
            &[("from_llm", PRIMARY), ("to_llm", BACKUP)]
        ),
        1.0
    );
    assert_eq!(
        delta(
            &m0,
            &m1,
            "pas_routing_decisions_total",
            &[("strategy", "least_loaded"), ("programmer_id", "001")]
        ),
        3.0
    );
    // Each of the three tasks, run one after another, commits its placement and its result.
    let commits = delta(&m0, &m1, "pas_task_store_commits_total", &[]);
    assert!(commits >= 6.0, "task store commits: {commits}");
    // Those commits make the store's checkpoint thread start the WAL over at its next tick
    // (once a second when no commit comes during its copy, as here once the tasks are done;
    // every third under steady writes), holding the store's writes meanwhile: the hold is
    // measured.
    let holds = "pas_task_store_checkpoint_hold_seconds_count";
    let mut m2 = scrape(&mgr_url).await;
    for _ in 0..300 {
        if delta(&m0, &m2, holds, &[]) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        m2 = scrape(&mgr_url).await;
    }
    assert!(
        delta(&m0, &m2, holds, &[]) >= 1.0,
        "no checkpoint hold measured"
    );
    assert!(
        m2.get(
            "pas_task_store_checkpoint_hold_seconds_bucket",
            &[("le", "0.0005")]
        )
        .is_some(),
        "the hold's own buckets (from half a millisecond), not the task durations'"
    );
    // The ledger keeps micro-dollars: each of the three settlements rounds by up to 0.5 µ$.
    let ledger = m1.value("pas_budget_daily_spend_usd", &[]);
    assert!(
        (ledger - spent).abs() <= 2e-6,
        "spend {ledger} = the results' cost {spent}"
    );
    assert!(close(m1.value("pas_budget_reserved_usd", &[]), 0.0));
    assert!(close(
        m1.value("pas_budget_remaining_usd", &[]),
        50.0 - ledger
    ));
    assert_eq!(m1.value("pas_pool_programmers_on_backup", &[]), 1.0);
    assert_eq!(m1.value("pas_pool_programmer_on_backup", &id), 1.0);
    assert_eq!(
        m1.value("pas_alert_active", &[("alert", "high_backup_usage")]),
        1.0
    );
    assert_eq!(
        m1.value("pas_alert_active", &[("alert", "low_availability")]),
        0.0
    );
    assert_eq!(
        m1.value("pas_alert_active", &[("alert", "budget_threshold")]),
        0.0
    );
    assert_eq!(m1.value("pas_queue_depth_total", &[]), 0.0);

    // The per-LLM figures in GetPoolStatus and `pas status`.
    let status = c
        .get_pool_status(GetPoolStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let stats = |llm: &str| {
        status
            .llm_stats
            .iter()
            .find(|s| s.llm == llm)
            .unwrap_or_else(|| panic!("{llm} in {:#?}", status.llm_stats))
            .clone()
    };
    let (p, k) = (stats(PRIMARY), stats(BACKUP));
    assert_eq!(
        (p.tasks, p.succeeded, p.attempts, p.attempts_failed),
        (1, 1, 2, 1)
    );
    assert_eq!(
        (k.tasks, k.succeeded, k.attempts, k.attempts_failed),
        (2, 2, 2, 0)
    );
    assert_eq!((p.success_rate, k.success_rate), (1.0, 1.0));
    assert_eq!(p.p50_duration_ms, a.duration_ms);
    let (lo, hi) = (
        b.duration_ms.min(d.duration_ms),
        b.duration_ms.max(d.duration_ms),
    );
    assert_eq!((k.p50_duration_ms, k.p95_duration_ms), (lo, hi));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pas"))
        .args([
            "status",
            "--manager",
            &format!("127.0.0.1:{}", pool.manager_port),
        ])
        .env("PAS_CONFIG", &pool.config_path)
        .output()
        .expect("run pas status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pas status: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let llm_table = text
        .split_once("LLMs (")
        .unwrap_or_else(|| panic!("an LLM table in:\n{text}"))
        .1;
    let row = llm_table
        .lines()
        .find(|l| l.contains(BACKUP))
        .unwrap_or_else(|| panic!("{BACKUP} row in:\n{text}"));
    assert!(row.contains("100%") && row.contains("2 (0)"), "{row}");
    assert!(text.contains("P50") && text.contains("P95"), "{text}");

    // ----- the programmer goes away -----
    prog.kill();
    let mut m2 = scrape(&mgr_url).await;
    for _ in 0..150 {
        if m2.value("pas_pool_programmers", &[("state", "unavailable")]) == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        m2 = scrape(&mgr_url).await;
    }
    assert_eq!(
        m2.value("pas_pool_programmers", &[("state", "unavailable")]),
        1.0
    );
    assert_eq!(
        m2.value("pas_pool_programmers", &[("state", "available")]),
        0.0
    );
    assert_eq!(m2.value("pas_pool_programmer_available", &id), 0.0);
    assert_eq!(
        m2.value("pas_alert_active", &[("alert", "low_availability")]),
        1.0
    );
    // Counters never go back.
    assert_eq!(delta(&m0, &m2, pool_tasks, &on(BACKUP)), 2.0);
}
