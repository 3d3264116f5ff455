//! One trace across the mesh: a caller-supplied W3C `traceparent` on `Dispatch` is continued by the
//! real `pas manager` and `pas programmer` processes, which export their spans over OTLP/gRPC to a
//! collector running inside this test. The task fails over (the primary answers 503 once), so the
//! trace shows both attempts, their aider runs and the failover.

use crate::common;
use crate::telemetry_support as support;

use common::Sim;
use common::pool::{PoolOptions, TestPool, TestProgrammer, wait_pool};
use pas::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use pas::contract::v1::task_event::Kind;
use pas::contract::v1::{DispatchRequest, ErrorClass, TaskResult, TaskState};
use std::time::Duration;
use support::{Collected, Collector};
use tonic::transport::Channel;

const PRIMARY: &str = "openai/gpt-4o";
const BACKUP: &str = "openai/gpt-4o-mini";
const DESCRIPTION: &str = "Add docstrings to all functions";

/// Dispatches `req` (with `traceparent` when given) and returns the result.
async fn dispatch(
    c: &mut ProgrammerPoolClient<Channel>,
    req: DispatchRequest,
    traceparent: Option<&str>,
) -> TaskResult {
    let mut request = tonic::Request::new(req);
    if let Some(tp) = traceparent {
        request
            .metadata_mut()
            .insert("traceparent", tp.parse().expect("metadata value"));
    }
    let mut stream = c
        .dispatch(request)
        .await
        .expect("Dispatch accepted")
        .into_inner();
    let mut result = None;
    while let Some(ev) = stream.message().await.expect("stream") {
        if let Some(Kind::Result(r)) = ev.kind {
            result = Some(*r);
        }
    }
    result.expect("a result")
}

fn one<'a>(spans: &'a [Collected], name: &str) -> &'a Collected {
    let found: Vec<&Collected> = spans.iter().filter(|s| s.name() == name).collect();
    assert_eq!(
        found.len(),
        1,
        "exactly one {name} span, got {}: {found:#?}",
        found.len()
    );
    found[0]
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_traceparent_is_continued_by_manager_programmer_and_aider() {
    let collector = Collector::start().await;
    // The primary fails once with 503: attempt 1 fails, attempt 2 runs on the backup.
    let script = format!("rules:\n  - model: \"{PRIMARY}\"\n    fault: http_503\n    times: 1\n");
    let sim = Sim::start_with_script(&script);
    let pool = TestPool::with_sim(
        PoolOptions {
            programmers: vec![TestProgrammer::paid("001")],
            ..Default::default()
        },
        sim,
    );
    pool.sample_repo();
    let env = collector.env();
    let _prog = support::start_programmer(&pool, "001", &env);
    let _mgr = support::start_manager(&pool, &env);
    let mut c = ProgrammerPoolClient::connect(pool.manager_url())
        .await
        .expect("connect to the manager");
    wait_pool(&c, Duration::from_secs(60), "programmer available", |s| {
        s.available == 1
    })
    .await;

    let trace_id = random_hex(16);
    let caller_span = random_hex(8);
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let result = dispatch(
        &mut c,
        DispatchRequest {
            task_id: "traced-1".into(),
            run_id: "run-traced".into(),
            task_description: DESCRIPTION.into(),
            files: vec!["src/module.py".into()],
            workspace: "sample".into(),
            ..Default::default()
        },
        Some(&traceparent),
    )
    .await;
    assert_eq!(
        TaskState::try_from(result.status),
        Ok(TaskState::Succeeded),
        "{result:#?}"
    );
    assert_eq!(result.attempts.len(), 2, "primary failed, backup succeeded");
    assert_eq!(result.llm_used, BACKUP);
    let first_class = pas::contract::error_class_name(result.attempts[0].error_class);
    assert_ne!(result.attempts[0].error_class, ErrorClass::None as i32);

    // Both processes export; wait for the spans of the whole task.
    let spans = collector
        .wait_for(Duration::from_secs(60), "the task's spans", |spans| {
            let in_trace: Vec<&Collected> =
                spans.iter().filter(|s| s.trace_id() == trace_id).collect();
            let count = |n: &str| in_trace.iter().filter(|s| s.name() == n).count();
            count("manager.task") == 1
                && count("manager.route") == 1
                && count("programmer.task") == 1
                && count("programmer.attempt") == 2
                && count("aider") == 2
        })
        .await;
    let trace: Vec<Collected> = spans
        .iter()
        .filter(|s| s.trace_id() == trace_id)
        .cloned()
        .collect();

    // Manager: its task span continues the caller's span.
    let m_task = one(&trace, "manager.task");
    assert_eq!(m_task.service, "pas-manager");
    assert_eq!(
        m_task.parent_span_id(),
        caller_span,
        "manager.task's parent is the caller's span"
    );
    assert_eq!(m_task.span.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(m_task.attr("task_id").as_deref(), Some("traced-1"));
    assert_eq!(m_task.attr("run_id").as_deref(), Some("run-traced"));
    assert_eq!(m_task.attr("strategy").as_deref(), Some("least_loaded"));
    assert_eq!(m_task.attr("outcome").as_deref(), Some("succeeded"));
    assert_eq!(m_task.attr("programmer_id").as_deref(), Some("001"));
    assert_eq!(m_task.attr("llm").as_deref(), Some(BACKUP));
    assert_eq!(m_task.attr("used_backup").as_deref(), Some("true"));

    let queue_wait = one(&trace, "manager.queue_wait");
    assert_eq!(queue_wait.parent_span_id(), m_task.span_id());

    // The routing decision names the strategy, the candidates and the pick.
    let route = one(&trace, "manager.route");
    assert_eq!(route.parent_span_id(), m_task.span_id());
    assert_eq!(route.span.kind, 3, "SPAN_KIND_CLIENT");
    assert_eq!(route.attr("strategy").as_deref(), Some("least_loaded"));
    assert_eq!(route.attr("candidates").as_deref(), Some("001"));
    assert_eq!(route.attr("programmer_id").as_deref(), Some("001"));
    assert_eq!(route.attr("dispatch_attempt").as_deref(), Some("1"));

    // Programmer (another process): its task span is a child of the manager's route span.
    let p_task = one(&trace, "programmer.task");
    assert_eq!(p_task.service, "pas-programmer");
    assert_eq!(p_task.instance.as_deref(), Some("001"));
    assert_eq!(
        p_task.parent_span_id(),
        route.span_id(),
        "programmer.task's parent is the manager's route span"
    );
    assert_eq!(p_task.span.kind, 2, "SPAN_KIND_SERVER");
    for (key, want) in [
        ("task_id", "traced-1"),
        ("run_id", "run-traced"),
        ("programmer_id", "001"),
        ("outcome", "succeeded"),
        ("llm", BACKUP),
        ("used_backup", "true"),
        ("attempts", "2"),
    ] {
        assert_eq!(
            p_task.attr(key).as_deref(),
            Some(want),
            "programmer.task {key}"
        );
    }
    for name in ["programmer.queue_wait", "programmer.worktree"] {
        assert_eq!(
            one(&trace, name).parent_span_id(),
            p_task.span_id(),
            "{name}"
        );
    }

    // Each attempt names its model and outcome; the failover is an event on the task span.
    let mut attempts: Vec<&Collected> = trace
        .iter()
        .filter(|s| s.name() == "programmer.attempt")
        .collect();
    attempts.sort_by_key(|s| s.attr("attempt"));
    for a in &attempts {
        assert_eq!(a.parent_span_id(), p_task.span_id());
    }
    assert_eq!(attempts[0].attr("attempt").as_deref(), Some("1"));
    assert_eq!(attempts[0].attr("llm").as_deref(), Some(PRIMARY));
    assert_eq!(attempts[0].attr("backup").as_deref(), Some("false"));
    assert_eq!(attempts[0].attr("outcome").as_deref(), Some("failed"));
    assert_eq!(
        attempts[0].attr("error_class").as_deref(),
        Some(first_class.as_str())
    );
    assert_eq!(attempts[1].attr("attempt").as_deref(), Some("2"));
    assert_eq!(attempts[1].attr("llm").as_deref(), Some(BACKUP));
    assert_eq!(attempts[1].attr("backup").as_deref(), Some("true"));
    assert_eq!(attempts[1].attr("outcome").as_deref(), Some("succeeded"));
    let failover = p_task
        .span
        .events
        .iter()
        .find(|e| e.name == "failover")
        .unwrap_or_else(|| {
            panic!(
                "a failover event on programmer.task: {:#?}",
                p_task.span.events
            )
        });
    assert_eq!(
        support::attr(&failover.attributes, "from").as_deref(),
        Some(PRIMARY)
    );
    assert_eq!(
        support::attr(&failover.attributes, "to").as_deref(),
        Some(BACKUP)
    );

    // The aider process of each attempt: duration, tokens, cost.
    for (attempt, succeeded) in [(attempts[0], false), (attempts[1], true)] {
        let aider: Vec<&Collected> = trace
            .iter()
            .filter(|s| s.name() == "aider" && s.parent_span_id() == attempt.span_id())
            .collect();
        assert_eq!(
            aider.len(),
            1,
            "one aider span under attempt {:?}",
            attempt.attr("attempt")
        );
        let aider = aider[0];
        assert_eq!(aider.attr("llm"), attempt.attr("llm"));
        assert!(aider.span.end_time_unix_nano > aider.span.start_time_unix_nano);
        assert!(aider.attr("exit_code").is_some());
        let sent: u64 = aider.attr("tokens_sent").unwrap().parse().unwrap();
        let cost: f64 = aider.attr("cost_usd").unwrap().parse().unwrap();
        if succeeded {
            assert!(sent > 0, "tokens of the successful run");
            assert!(cost > 0.0, "the backup is priced in the catalog");
        }
    }
    let backup_aider_sent: u64 = result.attempts[1].tokens_sent;
    assert!(trace.iter().any(
        |s| s.name() == "aider" && s.attr("tokens_sent") == Some(backup_aider_sent.to_string())
    ));

    // Nothing sensitive in any span of the trace: no API key, no task text, no file contents.
    for span in &trace {
        for text in span.all_text() {
            for secret in ["sk-test-openai-secret", DESCRIPTION, "return a + b"] {
                assert!(
                    !text.contains(secret),
                    "{} carries {secret:?}: {text}",
                    span.name()
                );
            }
        }
    }

    // Without a caller traceparent the manager starts a new trace, still continued by the
    // programmer.
    let dry = dispatch(
        &mut c,
        DispatchRequest {
            task_id: "untraced-1".into(),
            task_description: "dry".into(),
            files: vec!["src/module.py".into()],
            workspace: "sample".into(),
            dry_run: true,
            ..Default::default()
        },
        None,
    )
    .await;
    assert_eq!(TaskState::try_from(dry.status), Ok(TaskState::Succeeded));
    let spans = collector
        .wait_for(Duration::from_secs(60), "the dry run's spans", |spans| {
            let root = spans.iter().find(|s| {
                s.name() == "manager.task" && s.attr("task_id").as_deref() == Some("untraced-1")
            });
            root.is_some_and(|r| {
                spans
                    .iter()
                    .any(|s| s.name() == "programmer.task" && s.trace_id() == r.trace_id())
            })
        })
        .await;
    let root = spans
        .iter()
        .find(|s| s.name() == "manager.task" && s.attr("task_id").as_deref() == Some("untraced-1"))
        .unwrap();
    assert_eq!(
        root.parent_span_id(),
        "",
        "a new trace starts at the manager"
    );
    assert_ne!(root.trace_id(), trace_id);
    assert_eq!(root.attr("outcome").as_deref(), Some("succeeded"));
    let p = spans
        .iter()
        .find(|s| s.name() == "programmer.task" && s.trace_id() == root.trace_id())
        .unwrap();
    assert_eq!(p.attr("dry_run").as_deref(), Some("true"));

    // Health checks and status polls (no traceparent, no task) create no spans.
    assert!(
        !collector
            .spans()
            .iter()
            .any(|s| s.name().contains("Check") || s.name().contains("GetStatus")),
        "no spans for polls"
    );
}

/// Runs the dry-run task `task_id` on the programmer to the end of its stream.
async fn dry_run(
    client: &mut pas::contract::v1::programmer_client::ProgrammerClient<Channel>,
    task_id: &str,
) {
    dry_run_traced(client, task_id, None).await
}

/// [`dry_run`] with the caller's `traceparent`, when given.
async fn dry_run_traced(
    client: &mut pas::contract::v1::programmer_client::ProgrammerClient<Channel>,
    task_id: &str,
    traceparent: Option<&str>,
) {
    let mut request = tonic::Request::new(pas::contract::v1::TaskRequest {
        task_id: task_id.into(),
        task_description: "dry".into(),
        files: vec!["src/module.py".into()],
        workspace: "sample".into(),
        dry_run: true,
        ..Default::default()
    });
    if let Some(tp) = traceparent {
        request
            .metadata_mut()
            .insert("traceparent", tp.parse().expect("metadata value"));
    }
    let mut stream = client
        .execute(request)
        .await
        .expect("Execute accepted")
        .into_inner();
    while stream.message().await.expect("stream").is_some() {}
}

/// Stops the programmer with SIGTERM (which flushes what it recorded) and returns the spans the
/// collector has.
fn stop_and_collect(prog: &mut common::pool::ChildGuard, collector: &Collector) -> Vec<Collected> {
    prog.terminate();
    let exit = prog
        .wait_exit(Duration::from_secs(60))
        .expect("the programmer exits on SIGTERM");
    assert!(exit.success(), "{exit:?}\n{}", prog.log_text());
    collector.spans()
}

/// The `programmer.task` span of `task_id` among `spans`.
fn programmer_task<'a>(spans: &'a [Collected], task_id: &str) -> Option<&'a Collected> {
    spans
        .iter()
        .find(|s| s.name() == "programmer.task" && s.attr("task_id").as_deref() == Some(task_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_buffered_spans_and_a_dead_collector_does_not_hold_up_exit() {
    use pas::contract::v1::programmer_client::ProgrammerClient;

    let collector = Collector::start().await;
    let pool = TestPool::new(PoolOptions {
        runs_aider: false,
        ..PoolOptions::default()
    });
    pool.sample_repo();
    // A batch delay far longer than the test: only the exit can send the spans.
    let env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            collector.endpoint(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "600000".to_string()),
    ];
    let mut prog = support::start_programmer(&pool, "001", &env);
    let mut client = ProgrammerClient::connect(pool.programmer_url("001"))
        .await
        .expect("connect to the programmer");
    dry_run(&mut client, "flush-1").await;
    // A second task, started once the first one's stream has ended: if spans went out as they
    // ended (or on a timer), the two tasks' spans would not share one export call. They must
    // arrive together, in the one call the exit makes.
    dry_run(&mut client, "flush-marker").await;
    assert_eq!(collector.exports(), 0, "nothing exported before the exit");
    let spans = stop_and_collect(&mut prog, &collector);
    let buffered = |task_id: &str| {
        programmer_task(&spans, task_id).unwrap_or_else(|| {
            panic!(
                "the buffered span of {task_id} was flushed at exit; log:\n{}",
                prog.log_text()
            )
        })
    };
    let (first, marker) = (buffered("flush-1"), buffered("flush-marker"));
    assert_eq!(
        (first.export, marker.export, collector.exports()),
        (1, 1, 1),
        "both tasks' spans were held until the exit flushed them in one export"
    );

    // The collector is gone: the programmer still exits (the flush at exit is bounded; how long
    // it takes is for the telemetry benchmark to measure).
    drop(collector);
    let mut prog = support::start_programmer(&pool, "001", &env);
    let mut client = ProgrammerClient::connect(pool.programmer_url("001"))
        .await
        .expect("connect to the programmer");
    dry_run(&mut client, "flush-2").await;
    prog.terminate();
    let exit = prog
        .wait_exit(Duration::from_secs(60))
        .expect("the programmer exits on SIGTERM with an unreachable collector");
    assert!(exit.success(), "{exit:?}\n{}", prog.log_text());
    assert!(
        prog.log_text().contains("programmer stopped"),
        "{}",
        prog.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_ratio_zero_drops_new_traces_but_follows_a_callers_sampled_one_until_a_re_read_raises_it()
 {
    use pas::contract::v1::programmer_client::ProgrammerClient;

    let collector = Collector::start().await;
    let pool = TestPool::new(PoolOptions {
        runs_aider: false,
        ..PoolOptions::default()
    });
    pool.append_config("telemetry:\n  sample_ratio: 0.0\n");
    pool.sample_repo();
    let env = vec![(
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
        collector.endpoint(),
    )];
    let mut prog = support::start_programmer(&pool, "001", &env);
    let mut client = ProgrammerClient::connect(pool.programmer_url("001"))
        .await
        .expect("connect to the programmer");
    for i in 0..5 {
        dry_run(&mut client, &format!("unsampled-{i}")).await;
    }
    let trace_id = random_hex(16);
    let traceparent = format!("00-{trace_id}-{}-01", random_hex(8));
    dry_run_traced(&mut client, "sampled-by-caller", Some(&traceparent)).await;
    // A re-read file samples every new trace: the next task is recorded, no restart.
    pool.edit_config(|text| text.replace("sample_ratio: 0.0", "sample_ratio: 1.0"));
    prog.hang_up();
    prog.wait_log("trace sampling changed", 1).await;
    dry_run(&mut client, "sampled-after-re-read").await;
    // SIGTERM flushes whatever was recorded.
    let spans = stop_and_collect(&mut prog, &collector);
    let after = programmer_task(&spans, "sampled-after-re-read").unwrap_or_else(|| {
        panic!(
            "a new trace is sampled at the re-read ratio: {spans:#?}\n{}",
            prog.log_text()
        )
    });
    let after_id = after.trace_id();
    assert_ne!(after_id, trace_id, "a trace of its own");
    let kept = programmer_task(&spans, "sampled-by-caller").unwrap_or_else(|| {
        panic!(
            "the caller's sampled trace is kept: {spans:#?}\n{}",
            prog.log_text()
        )
    });
    assert_eq!(kept.trace_id(), trace_id);
    for i in 0..5 {
        let id = format!("unsampled-{i}");
        assert!(programmer_task(&spans, &id).is_none(), "{id} was sampled");
    }
    assert!(
        spans
            .iter()
            .all(|s| s.trace_id() == trace_id || s.trace_id() == after_id),
        "only the caller's trace and the one after the re-read were recorded: {spans:#?}"
    );
}
