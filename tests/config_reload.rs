//! The configuration file re-read while the processes run (`services/manager/reconfigure.rs`),
//! with real processes: on SIGHUP the manager takes up a programmer added to the file, holds
//! callers to a lowered per-caller task limit and the budget to a new daily limit at once, and
//! names the changed settings it reads only at start-up; a file that does not load is logged
//! with its file, line and key while the manager keeps serving on the configuration in force,
//! and a programmer removed from a fixed file leaves the pool; routing (capability_match's
//! first choice, round robin's cycle, the status list) follows the re-read file's order of
//! programmers, joined, replaced and moved ones included; under DNS discovery the members are
//! described again with the re-read entries and a changed `discovery` key resolves at once; a
//! programmer names its own changed settings as waiting for its restart; the manager and a
//! programmer follow a re-read `repositories:` allow list alike, neither restarting, and a task
//! waiting for its slot keeps the `repositories:` settings it was accepted under.

use crate::common;
use crate::telemetry_support as support;

use common::Sim;
use common::pool::{
    ChildGuard, PoolOptions, TestPool, TestProgrammer, admit, dispatch_collect, manager_client,
    pool_status, sample_dispatch, state_of, wait_available, wait_until,
};
use pas::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use pas::contract::v1::{DispatchRequest, ProgrammerState, Strategy, TaskRequest, TaskState};
use std::time::Duration;
use tonic::Code;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(60);

/// The manager's log lines holding `text`.
fn lines_with(child: &ChildGuard, text: &str) -> Vec<String> {
    child
        .log_text()
        .lines()
        .filter(|l| l.contains(text))
        .map(str::to_string)
        .collect()
}

/// The value of `name{labels}` in the manager's /metrics.
async fn metric(pool: &TestPool, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    support::scrape(&pool.manager_url()).await.get(name, labels)
}

/// The config text with only the programmers `ids`, in that order (entries as they are), and
/// `pool_size` to match.
fn with_programmers(text: &str, ids: &[&str]) -> String {
    let head_end =
        text.find("programmers:\n").expect("a programmers section") + "programmers:\n".len();
    let tail_start = text
        .find("load_balancing:")
        .expect("a load_balancing section");
    // Each entry runs from its "  - id:" line to the next one.
    let mut entries: Vec<String> = Vec::new();
    for line in text[head_end..tail_start].split_inclusive('\n') {
        match entries.last_mut() {
            Some(entry) if !line.starts_with("  - id: ") => entry.push_str(line),
            _ => entries.push(line.to_string()),
        }
    }
    let entry = |id: &str| {
        entries
            .iter()
            .find(|e| e.starts_with(&format!("  - id: \"{id}\"\n")))
            .unwrap_or_else(|| panic!("no programmer {id} in the config"))
    };
    let listed: String = ids.iter().map(|id| entry(id).as_str()).collect();
    let head = &text[..head_end];
    let pool_size = head
        .lines()
        .find(|l| l.starts_with("pool_size: "))
        .expect("pool_size");
    format!("{head}{listed}{}", &text[tail_start..]).replacen(
        pool_size,
        &format!("pool_size: {}", ids.len()),
        1,
    )
}

/// `text` with the first `key: value` line (any indentation) set to `value`.
fn set_key(text: &str, key: &str, value: &str) -> String {
    let mut done = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let indent = line.len() - line.trim_start().len();
            if !done && line.trim_start().starts_with(&format!("{key}:")) {
                done = true;
                format!("{}{key}: {value}", &line[..indent])
            } else {
                line.to_string()
            }
        })
        .collect();
    assert!(done, "no {key:?} in the config");
    lines.join("\n") + "\n"
}

/// Programmers whose model never answers: a dispatched task stays running, holding its
/// caller's task slot.
fn hanging_pool(ids: &[&str]) -> TestPool {
    let sim = Sim::start_with_script("default:\n  fault: hang\n");
    TestPool::with_sim(
        PoolOptions {
            programmers: ids.iter().map(|id| TestProgrammer::free(id)).collect(),
            request_timeout_s: 600,
            task_timeout_s: 600,
            ..PoolOptions::default()
        },
        sim,
    )
}

/// A task of the one caller (the test's address) with id `id`.
fn task(id: &str) -> DispatchRequest {
    DispatchRequest {
        task_id: id.into(),
        ..sample_dispatch(&format!("Add docstrings ({id})"))
    }
}

#[tokio::test]
async fn a_re_read_file_adds_a_programmer_and_applies_limits_and_budget_at_once() {
    let pool = hanging_pool(&["001", "002", "003"]);
    pool.sample_repo();
    let full = std::fs::read_to_string(&pool.config_path).unwrap();
    let _programmers = pool.start_all_programmers();
    // The manager starts on a file without 003 (its process runs already).
    pool.edit_config(|text| with_programmers(&text, &["001", "002"]));
    let manager = pool.start_manager();
    let c = manager_client(&pool).await;
    wait_available(&c, 2).await;
    assert_eq!(pool_status(&c).await.programmers.len(), 2);
    let limit_before = pool_status(&c).await.budget.unwrap().limit_nanousd;

    // Two tasks of one caller are admitted under the default per-caller limit.
    admit(&c, task("first")).await.expect("first task");
    admit(&c, task("second")).await.expect("second task");

    // 003 back, one task per caller, a new daily limit and queue bound, and a setting read
    // only at start-up.
    pool.edit_config(|_| {
        let text = set_key(&full, "max_daily_spend_usd", "123.5");
        // 001's entry changes (its first key of that name): the manager replaces its member.
        let text = set_key(&text, "capabilities", "[\"fast\", \"reloaded\"]");
        set_key(&text, "max_queue", "7")
            + "limits:\n  per_caller_max_tasks: 1\n  http2_max_concurrent_streams: 100\n"
    });
    manager.hang_up();
    // The applied keys' line, then the warning naming the others (two lines of one reload).
    manager.wait_log("applied=", 1).await;
    manager.wait_log("read only at start-up", 1).await;
    let applied = lines_with(&manager, "applied=").join("\n");
    for key in [
        "joined [003]",
        "replaced [001]",
        "limits.per_caller_max_tasks",
        "cost_optimization.max_daily_spend_usd",
        "manager.max_queue",
    ] {
        assert!(applied.contains(key), "{key:?} not in {applied}");
    }
    assert!(
        !applied.contains("http2_max_concurrent_streams"),
        "{applied}"
    );
    let later = lines_with(&manager, "read only at start-up").join("\n");
    assert!(
        later.contains("keys=limits.http2_max_concurrent_streams"),
        "{later}"
    );

    // 003 joined and takes tasks; the caller, holding two tasks, is refused a third.
    wait_available(&c, 3).await;
    let refused = admit(&c, task("third"))
        .await
        .expect_err("past the lowered per-caller limit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .starts_with("limits.per_caller_max_tasks: address 127.0.0.1 already has 1"),
        "{refused:?}"
    );
    let status = pool_status(&c).await;
    // The replaced 001 takes new tasks with its new entry; its old member is listed as draining
    // while one of the tasks placed before runs there.
    let with_id = |state: ProgrammerState| {
        status
            .programmers
            .iter()
            .filter(|p| p.id == "001" && p.state == state as i32)
            .collect::<Vec<_>>()
    };
    let available = with_id(ProgrammerState::Available);
    assert_eq!(available.len(), 1, "{:?}", status.programmers);
    assert_eq!(available[0].capabilities, ["fast", "reloaded"]);
    for old in with_id(ProgrammerState::Draining) {
        assert_eq!(old.capabilities, ["fast", "free", "local"]);
        assert!(old.in_flight > 0, "{old:?}");
    }
    assert_eq!(status.pool_size, 3);
    assert_ne!(limit_before, 123_500_000_000);
    assert_eq!(status.budget.unwrap().limit_nanousd, 123_500_000_000);
    assert_eq!(status.manager_queue_capacity, 7);
    assert_eq!(
        metric(
            &pool,
            "pas_reloads_total",
            &[("what", "configuration"), ("outcome", "reloaded")]
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_file_that_does_not_load_changes_nothing_and_a_fixed_one_removes_a_programmer() {
    let pool = hanging_pool(&["001", "002"]);
    pool.sample_repo();
    let programmers = pool.start_all_programmers();
    let manager = pool.start_manager();
    let c = manager_client(&pool).await;
    wait_available(&c, 2).await;
    let good = std::fs::read_to_string(&pool.config_path).unwrap();

    pool.edit_config(|text| text + "limits:\n  per_caller_max_tasks: many\n");
    manager.hang_up();
    manager.wait_log("configuration not reloaded", 1).await;
    let error = lines_with(&manager, "configuration not reloaded").join("\n");
    let file = pool.config_path.display().to_string();
    assert!(
        error.contains(&file) && error.contains("per_caller_max_tasks"),
        "the error names the file and the key: {error}"
    );
    assert!(
        error.contains(&format!("{}:", good.lines().count() + 2)),
        "the error names the line: {error}"
    );
    assert_eq!(
        metric(&pool, "pas_reload_failing", &[("what", "configuration")]).await,
        Some(1.0)
    );
    // Still serving on the configuration in force.
    assert_eq!(pool_status(&c).await.programmers.len(), 2);
    admit(&c, task("while-broken"))
        .await
        .expect("a task is admitted");

    // Fixed, without 002.
    pool.edit_config(|_| with_programmers(&good, &["001"]));
    manager.hang_up();
    manager.wait_log("applied=", 1).await;
    assert!(
        lines_with(&manager, "applied=")
            .join("\n")
            .contains("left [002]"),
        "{}",
        manager.log_text()
    );
    assert_eq!(
        metric(&pool, "pas_reload_failing", &[("what", "configuration")]).await,
        Some(0.0)
    );
    // 002 takes no new task: draining while a task of ours runs there, then out of the status.
    wait_until(WAIT, "002 draining or gone", || async {
        pool_status(&c)
            .await
            .programmers
            .iter()
            .all(|p| p.id != "002" || p.state == ProgrammerState::Draining as i32)
    })
    .await;

    // A programmer applies its live settings and names the others as waiting for its restart;
    // both processes say a restart is due while the file changes a setting read at start-up.
    let programmer = &programmers["001"];
    let pending = |url: String| async move {
        support::scrape(&url)
            .await
            .get("pas_config_restart_pending", &[])
    };
    let programmer_url = pool.programmer_url("001");
    assert_eq!(pending(programmer_url.clone()).await, Some(0.0));
    assert_eq!(pending(pool.manager_url()).await, Some(0.0));
    pool.edit_config(|text| {
        let text = set_key(&text, "max_retries", "7");
        let text = set_key(&text, "max_queue_per_programmer", "9");
        format!("{text}durability: power_loss\n")
    });
    programmer.hang_up();
    programmer.wait_log("read only at start-up", 1).await;
    let applied = lines_with(programmer, "applied=").join("\n");
    assert!(
        applied.contains("failover.max_retries")
            && applied.contains("load_balancing.max_queue_per_programmer"),
        "{applied}"
    );
    let later = lines_with(programmer, "read only at start-up").join("\n");
    assert!(
        later.contains("durability")
            && !later.contains("failover.max_retries")
            && !later.contains("max_queue_per_programmer"),
        "{later}"
    );
    assert_eq!(pending(programmer_url.clone()).await, Some(1.0));
    manager.hang_up();
    wait_until(WAIT, "the manager's restart due", || async {
        pending(pool.manager_url()).await == Some(1.0)
    })
    .await;
    // Durability as it was: no restart due any more.
    pool.edit_config(|text| text.replace("durability: power_loss\n", ""));
    programmer.hang_up();
    manager.hang_up();
    for url in [programmer_url.clone(), pool.manager_url()] {
        wait_until(WAIT, "no restart due", || async {
            pending(url.clone()).await == Some(0.0)
        })
        .await;
    }
    // A new data dir, which only a restart applies (and the rollout leaves to `pas restart`):
    // named, and a restart due in both.
    let data_dir = pool.data_dir.display().to_string();
    let moved = format!("{data_dir}-moved");
    pool.edit_config(|text| text.replace(&data_dir, &moved));
    programmer.hang_up();
    manager.hang_up();
    programmer.wait_log("read only at start-up", 2).await;
    let later = lines_with(programmer, "read only at start-up");
    assert!(later[1].contains("data_dir"), "{later:?}");
    for url in [programmer_url, pool.manager_url()] {
        wait_until(WAIT, "a restart due for the data dir", || async {
            pending(url.clone()).await == Some(1.0)
        })
        .await;
    }
}

/// Programmer 001 alone (with `options`) on a simulator that runs `script`, the sample
/// repository ready: the pool, its process and a client of it.
async fn lone_programmer(
    script: &str,
    options: PoolOptions,
) -> (TestPool, ChildGuard, common::pool::ProgrammerClient) {
    let pool = TestPool::with_sim(options, Sim::start_with_script(script));
    pool.sample_repo();
    let programmer = pool.start_programmer("001");
    let c = pool.programmer_client("001").await;
    (pool, programmer, c)
}

/// A real task on the sample repository.
fn docstrings() -> pas::contract::v1::TaskRequest {
    common::pool::task_request(
        "sample",
        "Add docstrings to all functions",
        &["src/module.py"],
    )
}

/// The programmer's LLM and breaker state, as GetStatus reports it.
async fn llm_state(c: &mut common::pool::ProgrammerClient) -> pas::contract::v1::LlmState {
    c.get_status(pas::contract::v1::GetStatusRequest {})
        .await
        .expect("GetStatus")
        .into_inner()
        .llm
        .expect("llm state")
}

#[tokio::test]
async fn a_programmer_runs_its_next_task_under_the_re_read_failover_and_breaker_settings() {
    // Every model answers 500: each attempt fails and fails over, until the attempts run out.
    let (pool, programmer, mut c) = lone_programmer(
        "default:\n  fault: http_500\n",
        PoolOptions {
            max_retries: 1,
            ..PoolOptions::default()
        },
    )
    .await;
    let task = docstrings;
    let attempts = |r: &pas::contract::v1::TaskResult| r.attempts.len();
    let (_, before) = common::pool::execute_task(&mut c, task()).await;
    assert_eq!(state_of(&before), TaskState::Failed, "{before:#?}");
    assert_eq!(attempts(&before), 2, "1 + max_retries: {before:#?}");

    assert!(!before.attempts[0].backup, "closed breaker: primary first");

    // More retries, and a breaker that opens on one failure: the one the first task's primary
    // attempt recorded (still in the window) opens it at once.
    pool.edit_config(|text| {
        let text = set_key(&text, "max_retries", "3");
        set_key(&text, "failure_threshold", "1")
    });
    programmer.hang_up();
    programmer.wait_log("applied=", 1).await;
    let applied = lines_with(&programmer, "applied=").join("\n");
    for key in [
        "failover.max_retries",
        "failover.circuit_breaker.failure_threshold",
    ] {
        assert!(applied.contains(key), "{key:?} not in {applied}");
    }
    let llm = llm_state(&mut c).await;
    assert!(llm.circuit_open && llm.using_backup, "{llm:?}");
    let (_, after) = common::pool::execute_task(&mut c, task()).await;
    assert_eq!(state_of(&after), TaskState::Failed, "{after:#?}");
    assert_eq!(
        attempts(&after),
        4,
        "1 + the re-read max_retries: {after:#?}"
    );
    assert!(
        after.attempts.iter().all(|a| a.backup),
        "an open breaker: the backup only: {after:#?}"
    );
}

#[tokio::test]
async fn a_programmer_takes_a_re_read_primary_llm_for_its_next_task_with_a_closed_breaker() {
    // The primary fails, and one failure opens the breaker.
    let (pool, programmer, mut c) = lone_programmer(
        "rules:\n  - model: \"primary-001\"\n    fault: http_500\n",
        PoolOptions {
            failure_threshold: 1,
            ..PoolOptions::default()
        },
    )
    .await;
    let task = docstrings;
    let (_, before) = common::pool::execute_task(&mut c, task()).await;
    assert_eq!(state_of(&before), TaskState::Succeeded, "{before:#?}");
    assert!(before.used_backup, "the primary failed over: {before:#?}");
    assert!(llm_state(&mut c).await.circuit_open);

    // The file names another primary for 001.
    pool.edit_config(|text| {
        text.replacen(
            "primary_llm: \"ollama/primary-001\"",
            "primary_llm: \"ollama/fresh-001\"",
            1,
        )
    });
    programmer.hang_up();
    programmer.wait_log("applied=", 1).await;
    assert!(
        lines_with(&programmer, "applied=")
            .join("\n")
            .contains("programmers"),
        "{}",
        programmer.log_text()
    );
    let llm = llm_state(&mut c).await;
    assert_eq!(llm.primary, "ollama/fresh-001", "{llm:?}");
    assert!(!llm.circuit_open && !llm.using_backup, "{llm:?}");
    let (_, after) = common::pool::execute_task(&mut c, task()).await;
    assert_eq!(state_of(&after), TaskState::Succeeded, "{after:#?}");
    assert_eq!(after.llm_used, "ollama/fresh-001", "{after:#?}");
    assert_eq!(after.attempts.len(), 1, "{after:#?}");
    assert!(common::pool::sim_edit_requests(&pool.sim, "fresh-001").await > 0);
}

/// A dry run routed by `strategy`; returns the programmer it went to.
async fn routed(c: &ProgrammerPoolClient<Channel>, strategy: Strategy) -> String {
    let (_, result) = dispatch_collect(
        c,
        DispatchRequest {
            dry_run: true,
            capabilities: vec!["fast".into()],
            strategy: strategy as i32,
            ..sample_dispatch("route me")
        },
    )
    .await;
    assert_eq!(state_of(&result), TaskState::Succeeded, "{result:#?}");
    result.programmer_id
}

/// The ids GetPoolStatus lists that take tasks, in its order.
async fn listed(c: &ProgrammerPoolClient<Channel>) -> Vec<String> {
    pool_status(c)
        .await
        .programmers
        .into_iter()
        .filter(|p| p.state == ProgrammerState::Available as i32)
        .map(|p| p.id)
        .collect()
}

#[tokio::test]
async fn routing_follows_the_re_read_order_of_programmers() {
    let pool = TestPool::new(PoolOptions {
        programmers: ["001", "002", "003"]
            .iter()
            .map(|id| TestProgrammer::free(id).without_aider())
            .collect(),
        runs_aider: false,
        ..PoolOptions::default()
    });
    pool.sample_repo();
    let full = std::fs::read_to_string(&pool.config_path).unwrap();
    let _programmers = pool.start_all_programmers();
    pool.edit_config(|_| with_programmers(&full, &["002", "003"]));
    let manager = pool.start_manager();
    let c = manager_client(&pool).await;
    wait_available(&c, 2).await;
    assert_eq!(routed(&c, Strategy::CapabilityMatch).await, "002");

    // 003 moved to the front and 001 added between: the file's order, not the joining order.
    pool.edit_config(|_| with_programmers(&full, &["003", "001", "002"]));
    manager.hang_up();
    manager.wait_log("applied=", 1).await;
    wait_available(&c, 3).await;
    assert_eq!(listed(&c).await, ["003", "001", "002"]);
    for _ in 0..2 {
        assert_eq!(routed(&c, Strategy::CapabilityMatch).await, "003");
    }
    let cycle = [
        routed(&c, Strategy::RoundRobin).await,
        routed(&c, Strategy::RoundRobin).await,
        routed(&c, Strategy::RoundRobin).await,
    ];
    let at = ["003", "001", "002"]
        .iter()
        .position(|id| *id == cycle[0])
        .expect("a listed programmer");
    let expected: Vec<&str> = (0..3)
        .map(|k| ["003", "001", "002"][(at + k) % 3])
        .collect();
    assert_eq!(
        cycle,
        expected.as_slice(),
        "round robin cycles in the file's order"
    );

    // 002 replaced (a changed entry) and moved to the front, 003 gone: the new 002 is first.
    pool.edit_config(|_| {
        let text = with_programmers(&full, &["002", "001"]);
        text.replacen(
            "backup_llm: \"ollama/backup-002\"",
            "backup_llm: \"ollama/backup-001\"",
            1,
        )
    });
    manager.hang_up();
    manager.wait_log("applied=", 2).await;
    let applied = lines_with(&manager, "applied=").join("\n");
    assert!(
        applied.contains("replaced [002]") && applied.contains("left [003]"),
        "{applied}"
    );
    wait_until(WAIT, "002 and 001 listed, in that order", || async {
        listed(&c).await == ["002", "001"]
    })
    .await;
    assert_eq!(routed(&c, Strategy::CapabilityMatch).await, "002");
}

#[tokio::test]
async fn dns_discovery_follows_the_re_read_entries_and_discovery_keys() {
    // A re-resolve period far beyond the test: only the reload's own lookup can find dns-b.
    let dns_pool = common::dns::DnsPool::new(
        PoolOptions {
            runs_aider: false,
            ..PoolOptions::default()
        },
        75,
        3600,
    );
    let pool = &dns_pool.pool;
    pool.sample_repo();
    let cold = ["--aider-start", "cold"];
    let _a = dns_pool.start_programmer_with("dns-a", 1, "fast", "", &cold);
    let _b = dns_pool.start_programmer_with("dns-b", 2, "fast", "", &cold);
    dns_pool.publish(&[1]);
    let manager = pool.start_manager();
    let c = manager_client(pool).await;
    wait_available(&c, 1).await;
    let gpu = || DispatchRequest {
        dry_run: true,
        capabilities: vec!["gpu-group".into()],
        ..sample_dispatch("needs the gpu group")
    };
    let refused = admit(&c, gpu())
        .await
        .expect_err("no member is in gpu-group");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    // dns-b's record comes; the file lists dns-a (entries give DNS members what their status
    // does not say) in a routing group, and a shorter period.
    dns_pool.publish(&[1, 2]);
    let port = dns_pool.port;
    pool.edit_config(|text| {
        let entry = format!(
            "programmers:\n  - id: \"dns-a\"\n    port: {port}\n    primary_llm: \"ollama/primary-dns\"\n    backup_llm: \"ollama/backup-dns\"\n"
        );
        let text = text
            .replacen("programmers: []\n", &entry, 1)
            .replacen("pool_size: 0\n", "pool_size: 1\n", 1);
        set_key(&text, "refresh_s", "3599") + "capability_routing:\n  gpu-group: [\"dns-a\"]\n"
    });
    manager.hang_up();
    manager.wait_log("applied=", 1).await;
    let applied = lines_with(&manager, "applied=").join("\n");
    for key in ["capability_routing", "discovery.refresh_s"] {
        assert!(applied.contains(key), "{key:?} not in {applied}");
    }
    assert!(
        lines_with(&manager, "read only at start-up").is_empty(),
        "{}",
        manager.log_text()
    );
    manager.wait_log("described again", 1).await;
    assert!(
        lines_with(&manager, "described again")
            .join("\n")
            .contains("replaced=dns-a"),
        "{}",
        manager.log_text()
    );
    // The lookup the reload made found dns-b; dns-a, described again, serves the group.
    wait_available(&c, 2).await;
    let (_, result) = dispatch_collect(&c, gpu()).await;
    assert_eq!(state_of(&result), TaskState::Succeeded, "{result:#?}");
    assert_eq!(result.programmer_id, "dns-a");
    let status = pool_status(&c).await;
    let a = status
        .programmers
        .iter()
        .find(|p| p.id == "dns-a" && p.state == ProgrammerState::Available as i32)
        .expect("dns-a available");
    assert!(a.capabilities.contains(&"gpu-group".to_string()), "{a:?}");
}

/// A re-read `repositories:` section (here an allow list with one more pattern) is followed by the
/// manager and by the programmer alike, neither restarting: a `repo_url` both refused is then
/// taken by both.
#[tokio::test]
async fn a_re_read_allow_list_is_followed_by_the_manager_and_the_programmer() {
    let pool = TestPool::new(PoolOptions {
        programmers: vec![TestProgrammer::free("001")],
        ..PoolOptions::default()
    });
    let served = pool.dir.path().join("served");
    std::fs::create_dir_all(&served).expect("served dir");
    let module = [("src/module.py", common::pool::SAMPLE_MODULE)];
    let bare = common::gitserver::bare_repo(&served, "sample", &module);
    let url = format!("file://{}", bare.display());
    let allow = "allow: [\"git://nowhere.test/*\"]";
    pool.append_config(&format!("repositories:\n  {allow}\n"));
    let manager = pool.start_manager();
    let programmer = pool.start_programmer("001");
    let c = manager_client(&pool).await;
    wait_available(&c, 1).await;
    let mut direct = pool.programmer_client("001").await;
    let execute = |id: &str| TaskRequest {
        task_id: id.into(),
        workspace: String::new(),
        repo_url: url.clone(),
        dry_run: true,
        ..docstrings()
    };
    // The same task through the manager.
    let dispatch = |id: &str| {
        let t = execute(id);
        DispatchRequest {
            task_id: t.task_id,
            task_description: t.task_description,
            files: t.files,
            repo_url: t.repo_url,
            dry_run: t.dry_run,
            ..Default::default()
        }
    };
    let refusal = format!("repo_url: {url:?} is not in repositories.allow");
    let s = c
        .clone()
        .dispatch(dispatch("m-1"))
        .await
        .expect_err("refused");
    assert_eq!((s.code(), s.message()), (Code::InvalidArgument, &*refusal));
    let s = direct.execute(execute("p-1")).await.expect_err("refused");
    assert_eq!((s.code(), s.message()), (Code::InvalidArgument, &*refusal));

    let widened = format!(
        "allow: [\"git://nowhere.test/*\", \"file://{}/*\"]",
        served.display()
    );
    pool.edit_config(|text| text.replacen(allow, &widened, 1));
    manager.hang_up();
    programmer.hang_up();
    manager.wait_log("applied=", 1).await;
    programmer.wait_log("applied=", 1).await;

    let (_, result) = dispatch_collect(&c, dispatch("m-2")).await;
    assert_eq!(state_of(&result), TaskState::Succeeded, "{result:#?}");
    let (_, result) = common::pool::execute_task(&mut direct, execute("p-2")).await;
    assert_eq!(state_of(&result), TaskState::Succeeded, "{result:#?}");
    for child in [&manager, &programmer] {
        let log = child.log_text();
        assert!(
            !log.lines()
                .any(|l| l.contains("read only at start-up") && l.contains("repositories")),
            "{}: {log}",
            child.name
        );
    }
}

/// A task keeps the `repositories:` settings it was validated under: one waiting for the
/// programmer's slot when the file drops the section still fetches, runs and pushes its result
/// (before, it read the settings again as it started and failed: "no repositories: section").
#[tokio::test]
async fn a_waiting_repo_url_task_keeps_the_repositories_it_was_accepted_under() {
    let script = "rules:\n  - model: \"*\"\n    fault: hang\n    times: 1\n";
    let options = PoolOptions {
        request_timeout_s: 600,
        task_timeout_s: 600,
        ..PoolOptions::default()
    };
    let pool = TestPool::with_sim(options, Sim::start_with_script(script));
    pool.sample_repo();
    let served = pool.dir.path().join("served");
    std::fs::create_dir_all(&served).expect("served dir");
    let module = [("src/module.py", common::pool::SAMPLE_MODULE)];
    let bare = common::gitserver::bare_repo(&served, "sample", &module);
    let section = format!(
        "repositories:\n  allow: [\"file://{}/*\"]\n",
        served.display()
    );
    pool.append_config(&section);
    let programmer = pool.start_programmer("001");
    let mut c = pool.programmer_client("001").await;

    // The one slot: a task whose model never answers.
    let first = TaskRequest {
        task_id: "holds-the-slot".into(),
        ..docstrings()
    };
    let held = c.execute(first).await.expect("accepted").into_inner();
    let held = tokio::spawn(common::pool::collect_task(held));
    // Its model call taken (the one that hangs), so the next task's is answered.
    common::pool::wait_for_model_call(&pool.sim, "primary-001").await;
    // The repo_url task waits behind it.
    let remote = TaskRequest {
        task_id: "waits".into(),
        workspace: String::new(),
        repo_url: format!("file://{}", bare.display()),
        ..docstrings()
    };
    let waiting = c.execute(remote).await.expect("accepted").into_inner();
    let waiting = tokio::spawn(common::pool::collect_task(waiting));
    programmer.wait_log("task accepted task_id=waits ", 1).await;

    pool.edit_config(|text| text.replacen(&section, "", 1));
    programmer.hang_up();
    programmer.wait_log("task sources changed", 1).await;
    c.stop_task(pas::contract::v1::StopTaskRequest {
        task_id: "holds-the-slot".into(),
    })
    .await
    .expect("stopped");
    let (_, stopped) = held.await.expect("first task");
    assert_eq!(state_of(&stopped), TaskState::Cancelled, "{stopped:#?}");
    let (_, result) = waiting.await.expect("waiting task");
    assert_eq!(state_of(&result), TaskState::Succeeded, "{result:#?}");
    assert_eq!(result.pushed_ref, "refs/heads/pas/waits");
}

/// A re-read `health_check_interval_s` is in force at once: the manager polls every programmer
/// then and at the new interval, so what a programmer did since its last report shows in the
/// pool's status without waiting out the old interval (here an hour).
#[tokio::test]
async fn a_re_read_status_poll_interval_applies_at_once() {
    let pool = TestPool::new(PoolOptions {
        programmers: vec![TestProgrammer::free("001")],
        health_check_interval_s: 3600,
        ..PoolOptions::default()
    });
    pool.sample_repo();
    let manager = pool.start_manager();
    let _programmer = pool.start_programmer("001");
    let c = manager_client(&pool).await;
    wait_available(&c, 1).await;
    // A task the manager did not place: it learns of it only from a status report.
    let mut direct = pool.programmer_client("001").await;
    let task = TaskRequest {
        dry_run: true,
        ..docstrings()
    };
    let (_, result) = common::pool::execute_task(&mut direct, task).await;
    assert_eq!(state_of(&result), TaskState::Succeeded, "{result:#?}");

    pool.edit_config(|text| set_key(&text, "health_check_interval_s", "1"));
    manager.hang_up();
    manager.wait_log("status polls changed", 1).await;
    wait_until(
        WAIT,
        "the manager's status shows the direct task",
        || async { pool_status(&c).await.programmers[0].completed == 1 },
    )
    .await;
}
