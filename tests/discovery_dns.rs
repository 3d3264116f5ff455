//! DNS discovery and regions with real processes: a real DNS server (dnsmasq on 127.0.0.1), a
//! `pas manager` with `discovery.mode: dns` and an empty `programmers:` list, and `pas programmer`
//! processes described only by their flags, each on its own 127.0.X.N address and one shared port.
//!
//! - records added to DNS bring programmers into routing (the manager learns their id, LLMs,
//!   capabilities and region from GetStatus); records removed make them drain: a task running
//!   there finishes there, no new task goes there, and status drops them once drained;
//! - a task's region is preferred, and another region is used only when none of the task's
//!   region can take it (here: its only programmer died), and again the region once it is back;
//! - a programmer restarted at the same address with other flags is known as it now describes
//!   itself (described again after each lookup);
//! - one the file lists routes at its entry's place, before the unlisted ones.

use crate::common;

use common::dns::DnsPool;
use common::pool::{
    PoolOptions, assigned_ids, check_stream, dispatch_collect, manager_client, pool_status,
    sample_dispatch, state_of,
};
use pas::contract::v1::programmer_pool_client::ProgrammerPoolClient;
use pas::contract::v1::task_event::Kind;
use pas::contract::v1::{DispatchRequest, PoolStatus, ProgrammerState, TaskState};
use std::time::Duration;
use tonic::transport::Channel;

/// Waits (up to 30 s) until the manager's status satisfies `ready`; returns it.
async fn wait_status(
    c: &ProgrammerPoolClient<Channel>,
    what: &str,
    ready: impl Fn(&PoolStatus) -> bool,
) -> PoolStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = pool_status(c).await;
        if ready(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last status: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ids of the programmers in `s` that are in `state`, sorted.
fn ids_in(s: &PoolStatus, state: ProgrammerState) -> Vec<String> {
    let mut ids: Vec<String> = s
        .programmers
        .iter()
        .filter(|p| p.state == state as i32)
        .map(|p| p.id.clone())
        .collect();
    ids.sort();
    ids
}

/// A dry-run dispatch (routing only) with `capabilities` and `region`; returns who took it.
async fn dry_run_on(
    c: &ProgrammerPoolClient<Channel>,
    capabilities: &[&str],
    region: &str,
) -> String {
    let req = DispatchRequest {
        dry_run: true,
        capabilities: capabilities.iter().map(|s| s.to_string()).collect(),
        region: region.into(),
        ..sample_dispatch("route only")
    };
    let (events, result) = dispatch_collect(c, req).await;
    assert_eq!(state_of(&result), TaskState::Succeeded, "{events:#?}");
    result.programmer_id
}

/// A DNS pool on `127.0.<net>.N` (1 s re-resolve, the sample repository) whose every LLM call
/// takes `latency_ms`, so a real task is still running when its programmer's record goes.
fn slow_dns_pool(net: u8, latency_ms: u64) -> DnsPool {
    let sim = common::Sim::start_with_script(&format!("default:\n  latency_ms: {latency_ms}\n"));
    let dns_pool = DnsPool::with_sim(PoolOptions::default(), net, 1, sim);
    dns_pool.pool.sample_repo();
    dns_pool
}

/// A DNS pool on `127.0.<net>.N` (1 s re-resolve, the sample repository) for tests of routing
/// only: no programmer runs aider.
fn dry_run_dns_pool(net: u8) -> DnsPool {
    let dns_pool = DnsPool::new(
        PoolOptions {
            runs_aider: false,
            ..PoolOptions::default()
        },
        net,
        1,
    );
    dns_pool.pool.sample_repo();
    dns_pool
}

/// Publishes programmer 1 (dns-a) alone, starts the manager and waits until dns-a joined: the
/// manager's process and a client of it.
async fn manager_once_dns_a_joined(
    dns_pool: &DnsPool,
) -> (common::pool::ChildGuard, ProgrammerPoolClient<Channel>) {
    dns_pool.publish(&[1]);
    let manager = dns_pool.pool.start_manager();
    let c = manager_client(&dns_pool.pool).await;
    wait_status(&c, "dns-a available", |s| {
        ids_in(s, ProgrammerState::Available) == ["dns-a"]
    })
    .await;
    (manager, c)
}

#[tokio::test]
async fn dns_records_bring_programmers_in_and_removing_one_drains_it() {
    let dns_pool = slow_dns_pool(71, 6000);
    let pool = &dns_pool.pool;
    // The real task below runs on dns-a or dns-b (most often dns-a: dns-b runs it cold).
    let _a = dns_pool.start_programmer("dns-a", 1, "fast,local,free", "eu");
    let cold = ["--aider-start", "cold"];
    let _b = dns_pool.start_programmer_with("dns-b", 2, "fast,local,free", "eu", &cold);
    let _c = dns_pool.start_programmer_with("dns-c", 3, "fast,gpu", "us", &cold);
    dns_pool.publish(&[1, 2]);
    let manager = pool.start_manager();
    let c = manager_client(pool).await;

    // The first answer's programmers joined, described by their own GetStatus.
    let s = wait_status(&c, "dns-a and dns-b available", |s| {
        ids_in(s, ProgrammerState::Available) == ["dns-a", "dns-b"]
    })
    .await;
    assert_eq!(s.pool_size, 2);
    let a = s
        .programmers
        .iter()
        .find(|p| p.id == "dns-a")
        .expect("dns-a");
    assert_eq!(a.region, "eu");
    assert_eq!(a.address, format!("{}:{}", dns_pool.ip(1), dns_pool.port));
    assert_eq!(a.primary_llm, "ollama/primary-dns");
    assert_eq!(a.backup_llm, "ollama/backup-dns");
    assert!(a.capabilities.contains(&"local".to_string()), "{a:?}");
    // Nobody holds "gpu" yet: admission says so.
    let refused = c
        .clone()
        .dispatch(DispatchRequest {
            dry_run: true,
            capabilities: vec!["gpu".into()],
            ..sample_dispatch("needs a gpu")
        })
        .await
        .expect_err("no member holds gpu yet");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );

    // A record added: dns-c joins at the next re-resolve and takes what only it can serve.
    dns_pool.publish(&[1, 2, 3]);
    wait_status(&c, "dns-c available", |s| {
        ids_in(s, ProgrammerState::Available) == ["dns-a", "dns-b", "dns-c"] && s.pool_size == 3
    })
    .await;
    assert_eq!(dry_run_on(&c, &["gpu"], "").await, "dns-c");
    // `--aider-start cold` wins over aider.start (the suite's mode).
    for (p, start) in [(&_a, common::aider_start()), (&_b, "cold"), (&_c, "cold")] {
        assert_eq!(p.started_aider(), start, "{}", p.name);
    }

    // A real task on dns-a or dns-b (the two that hold "free").
    let req = DispatchRequest {
        task_id: "drained-task".into(),
        capabilities: vec!["free".into()],
        ..sample_dispatch("Add a function multiply(a, b) that returns a * b")
    };
    let mut stream = c
        .clone()
        .dispatch(req)
        .await
        .expect("dispatch accepted")
        .into_inner();
    let mut events = Vec::new();
    let on = loop {
        let ev = stream.message().await.expect("stream").expect("an event");
        events.push(ev.clone());
        if let Some(Kind::Assigned(a)) = ev.kind {
            break a.programmer_id;
        }
    };
    let staying = if on == "dns-a" { 2 } else { 1 };
    // Its record goes while the task runs there: the member drains.
    dns_pool.publish(&[staying, 3]);
    let s = wait_status(&c, "the task's programmer draining", |s| {
        ids_in(s, ProgrammerState::Draining) == [on.clone()]
    })
    .await;
    assert_eq!(s.pool_size, 2, "a draining member is not counted: {s:#?}");
    // New tasks never go to it.
    for _ in 0..4 {
        let id = dry_run_on(&c, &["free"], "").await;
        assert_ne!(id, on, "a draining programmer got a new task");
    }
    // The running task finishes where it runs: nothing lost, nothing rerouted.
    while let Some(ev) = stream.message().await.expect("stream") {
        events.push(ev);
    }
    // Exactly one result, last, seq 1..n.
    let result = check_stream(&events);
    assert_eq!(state_of(&result), TaskState::Succeeded, "{events:#?}");
    assert_eq!(result.programmer_id, on);
    assert_eq!(assigned_ids(&events), vec![on.clone()]);
    // Drained: status and metrics forget it.
    let s = wait_status(&c, "the drained programmer gone from status", |s| {
        s.programmers.iter().all(|p| p.id != on)
    })
    .await;
    assert_eq!(s.pool_size, 2);
    assert_eq!(s.available, 2);
    let metrics = reqwest::get(format!("{}/metrics", pool.manager_url()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(metrics.contains("pas_pool_size 2"), "{metrics}");

    // `pas status` follows: the table lists the members by address, with regions.
    let out = pool.pas_command(&["status"]).output().expect("pas status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("REGION") && text.contains("ADDRESS"),
        "{text}"
    );
    assert!(
        text.contains("dns-c") && !text.contains(&format!("{on} ")),
        "{text}"
    );
    drop(manager);
}

#[tokio::test]
async fn a_task_prefers_its_region_and_fails_over_only_when_none_there_can_take_it() {
    let dns_pool = dry_run_dns_pool(72);
    let pool = &dns_pool.pool;
    let _eu1 = dns_pool.start_programmer("eu-1", 1, "fast", "eu-west");
    let _eu2 = dns_pool.start_programmer("eu-2", 2, "fast", "eu-west");
    let mut us1 = dns_pool.start_programmer("us-1", 3, "fast", "us-east");
    dns_pool.publish(&[1, 2, 3]);
    let _manager = pool.start_manager();
    let c = manager_client(pool).await;
    wait_status(&c, "three programmers available", |s| s.available == 3).await;

    // Preference: every task asking for a region lands there, whatever the strategy's spread.
    for _ in 0..6 {
        assert_eq!(dry_run_on(&c, &["fast"], "us-east").await, "us-1");
        let eu = dry_run_on(&c, &["fast"], "eu-west").await;
        assert!(eu == "eu-1" || eu == "eu-2", "{eu}");
    }
    // A region nobody has is no error: any programmer takes it.
    dry_run_on(&c, &["fast"], "ap-south").await;
    // A bad region is refused, naming the field.
    let bad = c
        .clone()
        .dispatch(DispatchRequest {
            region: "us east".into(),
            ..sample_dispatch("bad region")
        })
        .await
        .expect_err("bad region refused");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("region"), "{bad:?}");

    // The region's only programmer dies: tasks for it fail over to another region.
    us1.kill();
    wait_status(&c, "us-1 unavailable", |s| s.available == 2).await;
    for _ in 0..3 {
        let id = dry_run_on(&c, &["fast"], "us-east").await;
        assert!(id == "eu-1" || id == "eu-2", "{id}");
    }
    // Back (same address, so DNS is unchanged): the region is preferred again.
    let _us1 = dns_pool.start_programmer("us-1", 3, "fast", "us-east");
    wait_status(&c, "us-1 back", |s| s.available == 3).await;
    assert_eq!(dry_run_on(&c, &["fast"], "us-east").await, "us-1");
}

#[tokio::test]
async fn a_member_that_left_dns_and_then_died_has_its_running_task_rerouted() {
    let dns_pool = slow_dns_pool(73, 4000);
    let pool = &dns_pool.pool;
    let mut guards = std::collections::BTreeMap::from([
        ("dns-a", dns_pool.start_programmer("dns-a", 1, "fast", "")),
        ("dns-b", dns_pool.start_programmer("dns-b", 2, "fast", "")),
    ]);
    dns_pool.publish(&[1, 2]);
    let _manager = pool.start_manager();
    let c = manager_client(pool).await;
    wait_status(&c, "both available", |s| s.available == 2).await;

    let client = c.clone();
    let task = tokio::spawn(async move {
        dispatch_collect(
            &client,
            DispatchRequest {
                task_id: "rerouted-after-leaving".into(),
                ..sample_dispatch("Add a function multiply(a, b) that returns a * b")
            },
        )
        .await
    });
    let s = wait_status(&c, "the task in flight", |s| {
        s.programmers.iter().any(|p| p.in_flight == 1)
    })
    .await;
    let on = s
        .programmers
        .iter()
        .find(|p| p.in_flight == 1)
        .expect("busy")
        .id
        .clone();
    let (other, other_n) = if on == "dns-a" {
        ("dns-b", 2)
    } else {
        ("dns-a", 1)
    };
    // Its record goes (it drains), then its process dies mid-task: the dispatch rules reroute.
    dns_pool.publish(&[other_n]);
    wait_status(&c, "draining", |s| {
        ids_in(s, ProgrammerState::Draining) == [on.clone()]
    })
    .await;
    guards.get_mut(on.as_str()).expect("guard").kill();
    common::pool::expect_one_reroute(task, Duration::from_secs(180), (&on, other), || {
        pool.dir.path().display().to_string()
    })
    .await;
    let s = wait_status(&c, "the dead member gone", |s| {
        s.programmers.iter().all(|p| p.id != on)
    })
    .await;
    assert_eq!((s.pool_size, s.available), (1, 1));
}

#[tokio::test]
async fn a_programmer_restarted_with_other_capabilities_is_described_again() {
    let dns_pool = dry_run_dns_pool(76);
    let cold = ["--aider-start", "cold"];
    let mut first = dns_pool.start_programmer_with("dns-a", 1, "fast", "", &cold);
    let (_manager, c) = manager_once_dns_a_joined(&dns_pool).await;
    let gpu = || DispatchRequest {
        dry_run: true,
        capabilities: vec!["gpu".into()],
        ..sample_dispatch("needs a gpu")
    };
    let refused = c
        .clone()
        .dispatch(gpu())
        .await
        .expect_err("nobody holds gpu");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );

    // The same address, the same id, another description.
    first.kill();
    let _second = dns_pool.start_programmer_with("dns-a", 1, "fast,gpu", "", &cold);
    let s = wait_status(&c, "dns-a available with gpu", |s| {
        s.programmers.iter().any(|p| {
            p.id == "dns-a"
                && p.state == ProgrammerState::Available as i32
                && p.capabilities.iter().any(|c| c == "gpu")
        })
    })
    .await;
    assert_eq!(s.pool_size, 1, "{s:#?}");
    assert_eq!(dry_run_on(&c, &["gpu"], "").await, "dns-a");
}

#[tokio::test]
async fn a_listed_dns_programmer_routes_at_its_entry_s_place_before_unlisted_ones() {
    let dns_pool = dry_run_dns_pool(77);
    let pool = &dns_pool.pool;
    // The file lists dns-b (its entry gives what its status does not say); dns-a is unlisted.
    let port = dns_pool.port;
    pool.edit_config(|text| {
        text.replacen(
            "programmers: []\n",
            &format!(
                "programmers:\n  - id: \"dns-b\"\n    port: {port}\n    primary_llm: \"ollama/primary-dns\"\n    backup_llm: \"ollama/backup-dns\"\n"
            ),
            1,
        )
        .replacen("pool_size: 0\n", "pool_size: 1\n", 1)
    });
    let cold = ["--aider-start", "cold"];
    let _a = dns_pool.start_programmer_with("dns-a", 1, "fast", "", &cold);
    let _b = dns_pool.start_programmer_with("dns-b", 2, "fast", "", &cold);
    // dns-a joins first.
    let (_manager, c) = manager_once_dns_a_joined(&dns_pool).await;
    dns_pool.publish(&[1, 2]);
    let s = wait_status(&c, "both available", |s| {
        ids_in(s, ProgrammerState::Available) == ["dns-a", "dns-b"]
    })
    .await;
    let listed: Vec<&str> = s.programmers.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(listed, ["dns-b", "dns-a"], "the listed one first: {s:#?}");
    let (_, result) = dispatch_collect(
        &c,
        DispatchRequest {
            dry_run: true,
            capabilities: vec!["fast".into()],
            strategy: pas::contract::v1::Strategy::CapabilityMatch as i32,
            ..sample_dispatch("the first in the file's order")
        },
    )
    .await;
    assert_eq!(state_of(&result), TaskState::Succeeded, "{result:#?}");
    assert_eq!(result.programmer_id, "dns-b");
}
