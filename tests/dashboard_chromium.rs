//! The web dashboard in a real headless Chromium against a real pool: the page at `/` follows the
//! pool and a running task over the `/v1` server-sent-event routes, and the test asserts on the
//! DOM while things happen — a task's live output appears while it runs, a breaker opened for
//! real (llm-sim answers HTTP 500 to the paid programmer's primary) shows as open, the budget
//! gauge moves after real (simulated) spend, the per-LLM chart gets its bars, and the diff of a
//! finished task is shown. PNG screenshots are kept under `target/dashboard-screenshots/`.
//!
//! Needs the Debian package `chromium` (scripts/install-chromium.sh, run by scripts/test.sh); the
//! test is skipped, saying so, only when it is not installed. Needs the aider venv.

use crate::common;

use common::browser::{Browser, screenshot_dir};
use common::pool::{PoolOptions, TestPool, TestProgrammer, manager_client, wait_available};
use serde_json::json;
use std::time::Duration;

/// How long the page may take to show what a real task does on a loaded 2-core machine.
const TASK_LIMIT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_live_output_an_open_breaker_and_the_budget_moving() {
    let Some(mut browser) = Browser::launch().await else {
        eprintln!(
            "SKIPPED: chromium is not installed (scripts/install-chromium.sh installs the Debian \
             package `chromium`); the dashboard test needs a real browser"
        );
        return;
    };
    // 001 (free): its primary never answers, so its task runs until cancelled.
    // 002 (paid): its primary answers HTTP 500 — one failure opens the breaker — and its backup
    // works and costs money; any spend crosses the alert threshold.
    let sim = common::Sim::start_with_script(
        "rules:\n  - model: \"gpt-4o-mini\"\n    fault: http_500\n  - model: \"primary-001\"\n    fault: hang\ndefault:\n  fault: none\n",
    );
    let paid = TestProgrammer {
        primary: "openai/gpt-4o-mini".into(),
        backup: "openai/gpt-4o".into(),
        ..TestProgrammer::paid("002")
    };
    let pool = TestPool::with_sim(
        PoolOptions {
            programmers: vec![TestProgrammer::free("001"), paid],
            failure_threshold: 1,
            max_retries: 1,
            alert_threshold_usd: 0.001,
            request_timeout_s: 300,
            task_timeout_s: 300,
            ..PoolOptions::default()
        },
        sim,
    );
    pool.sample_repo();
    let _p = pool.start_all_programmers();
    let _m = pool.start_manager();
    let c = manager_client(&pool).await;
    wait_available(&c, 2).await;
    let shots = screenshot_dir();
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", pool.manager_url());

    browser.open(&url("/")).await;
    browser
        .wait_for(
            "document.querySelectorAll('#programmers tr[data-state=available]').length === 2 \
             && document.getElementById('connection').dataset.state === 'live'",
            Duration::from_secs(60),
            "the pool table with both programmers available",
            "document.getElementById('programmers').outerHTML",
        )
        .await;
    assert_eq!(
        browser
            .eval("document.getElementById('budget-spent').dataset.nanousd")
            .await,
        "0",
        "nothing spent yet"
    );
    assert_eq!(
        browser
            .eval("document.getElementById('mode').dataset.mode")
            .await,
        "read-only",
        "no token: read-only"
    );
    assert_eq!(
        browser
            .eval("getComputedStyle(document.getElementById('dispatch-form')).display")
            .await,
        "none",
        "no token: no dispatch form"
    );
    browser.screenshot(&shots.join("01-pool.png")).await;

    // A task on 001: its live output appears while it runs.
    let task = |id: &str, capability: &str| {
        json!({
            "taskId": id,
            "taskDescription": "Add docstrings to all functions",
            "files": ["src/module.py"],
            "workspace": "sample",
            "capabilities": [capability],
            "runId": "dashboard-test",
        })
    };
    let live = http
        .post(url("/v1/tasks"))
        .json(&task("dash-live", "free"))
        .send()
        .await
        .expect("POST /v1/tasks");
    assert!(live.status().is_success(), "{live:?}");
    drop(live); // the task outlives this connection
    browser
        .wait_for(
            "document.getElementById('task-id').textContent === 'dash-live' \
             && document.getElementById('task-state').dataset.state === 'running' \
             && document.getElementById('output').textContent.includes('Added src/module.py to the chat.')",
            TASK_LIMIT,
            "dash-live's live output while it runs",
            "document.getElementById('task-section').innerText",
        )
        .await;
    browser.screenshot(&shots.join("02-live-output.png")).await;

    // A task on 002: its breaker opens, money is spent, the per-LLM chart gets a bar.
    let paid = http
        .post(url("/v1/tasks"))
        .json(&task("dash-paid", "premium"))
        .send()
        .await
        .expect("POST /v1/tasks");
    assert!(paid.status().is_success(), "{paid:?}");
    drop(paid);
    browser
        .wait_for(
            "document.querySelector('#programmers tr[data-id=\"002\"]').dataset.breaker === 'open' \
             && Number(document.getElementById('budget-spent').dataset.nanousd) > 0 \
             && Number(document.getElementById('budget-gauge').dataset.fraction) > 0 \
             && !!document.querySelector('#alerts li[data-kind=budget_threshold]') \
             && !!document.querySelector('#llm-chart g[data-llm=\"openai/gpt-4o\"]')",
            TASK_LIMIT,
            "002's open breaker, the budget gauge moved, the alert, the LLM chart",
            "[document.getElementById('pool-section').innerText, document.getElementById('budget-section').innerText, document.getElementById('llm-chart').outerHTML]",
        )
        .await;
    // The live task is still shown, still running, and the gauge bar has a width.
    assert_eq!(
        browser
            .eval("document.getElementById('task-state').dataset.state")
            .await,
        "running"
    );
    assert_ne!(
        browser
            .eval("document.getElementById('gauge-spent').getAttribute('width')")
            .await,
        "0.00"
    );
    browser
        .screenshot(&shots.join("03-breaker-budget.png"))
        .await;

    // Picking the finished task shows its diff.
    browser
        .wait_for(
            "!!document.querySelector('#tasks tr[data-task=\"dash-paid\"][data-state=succeeded]')",
            TASK_LIMIT,
            "dash-paid listed as succeeded",
            "document.getElementById('tasks').innerText",
        )
        .await;
    browser
        .eval("document.querySelector('#tasks tr[data-task=\"dash-paid\"]').click()")
        .await;
    browser
        .wait_for(
            "document.getElementById('task-id').textContent === 'dash-paid' \
             && document.getElementById('task-state').dataset.state === 'succeeded' \
             && document.getElementById('diff').textContent.includes('+++ b/src/module.py')",
            Duration::from_secs(60),
            "dash-paid's diff",
            "document.getElementById('task-section').innerText",
        )
        .await;
    browser.screenshot(&shots.join("04-diff.png")).await;

    // Everything the page loaded came from the manager (no CDN).
    assert_eq!(
        browser
            .eval("performance.getEntriesByType('resource').every(r => r.name.startsWith(location.origin))")
            .await,
        true
    );

    // With a token typed in (this pool runs without `auth:`, so any token is accepted), the page
    // offers dispatch and cancel; its cancel button stops the running task.
    browser
        .eval(
            "document.getElementById('token').value = 'pas_dashboard_test'; \
             document.getElementById('token-form').requestSubmit(); \
             document.querySelector('#tasks tr[data-task=\"dash-live\"]').click()",
        )
        .await;
    browser
        .wait_for(
            "document.getElementById('mode').dataset.mode === 'dispatch' \
             && getComputedStyle(document.getElementById('dispatch-form')).display !== 'none' \
             && document.getElementById('task-id').textContent === 'dash-live' \
             && document.getElementById('task-state').dataset.state === 'running' \
             && !document.getElementById('cancel-task').hidden",
            Duration::from_secs(60),
            "dispatch mode with a cancel button for the running task",
            "[document.querySelector('header').innerText, document.getElementById('task-section').innerText]",
        )
        .await;
    assert_eq!(
        browser.eval("sessionStorage.getItem('pas.token')").await,
        "pas_dashboard_test",
        "the token is kept in the tab's sessionStorage"
    );
    browser
        .eval("document.getElementById('cancel-task').click()")
        .await;
    browser
        .wait_for(
            "document.getElementById('task-state').dataset.state === 'cancelled' \
             && !!document.querySelector('#tasks tr[data-task=\"dash-live\"][data-state=cancelled]')",
            TASK_LIMIT,
            "dash-live cancelled from the page",
            "document.getElementById('task-section').innerText",
        )
        .await;
    browser.screenshot(&shots.join("05-cancelled.png")).await;
    let record: serde_json::Value = http
        .get(url("/v1/tasks/dash-live"))
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
    assert_eq!(record["state"], "TASK_STATE_CANCELLED", "{record}");
}
