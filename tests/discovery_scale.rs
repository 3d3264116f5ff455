//! The original's ceiling: 49 programmers on one machine, each on its own 127.0.74.N address and
//! one shared port, found by the manager in a real DNS server (dnsmasq) and described only by
//! their GetStatus. All join and are healthy, and round-robin dry-run tasks reach every one.

use crate::common;

use common::dns::DnsPool;
use common::pool::{
    PoolOptions, dispatch_collect, manager_client, pool_status, sample_dispatch, state_of,
};
use pas::contract::v1::{DispatchRequest, ProgrammerState, TaskState};
use std::collections::BTreeSet;
use std::time::Duration;

const MEMBERS: u8 = 49;

#[tokio::test]
async fn forty_nine_programmers_found_by_dns_are_all_healthy_and_all_take_tasks() {
    let options = PoolOptions {
        strategy: "round_robin".into(),
        runs_aider: false,
        ..PoolOptions::default()
    };
    let dns_pool = DnsPool::new(options, 74, 2);
    let pool = &dns_pool.pool;
    pool.sample_repo();
    let programmers: Vec<_> = (1..=MEMBERS)
        .map(|n| {
            let region = if n % 2 == 0 { "even" } else { "odd" };
            dns_pool.start_programmer(&format!("p{n:02}"), n, "fast,local,free", region)
        })
        .collect();
    dns_pool.publish(&(1..=MEMBERS).collect::<Vec<u8>>());
    let _manager = pool.start_manager();
    let c = manager_client(pool).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s = pool_status(&c).await;
        if s.available == u32::from(MEMBERS) {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all {MEMBERS} available: {} of {}",
            s.available,
            s.pool_size
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.pool_size, u32::from(MEMBERS));
    assert_eq!(status.unavailable, 0);
    assert!(
        status
            .programmers
            .iter()
            .all(|p| p.state == ProgrammerState::Available as i32),
        "{status:#?}"
    );
    // No alert about availability with every member up.
    assert!(
        status.alerts.iter().all(|a| a.kind != "low_availability"),
        "{:?}",
        status.alerts
    );

    // Round robin over the whole pool: 49 dry-run tasks reach 49 distinct programmers.
    let mut took = BTreeSet::new();
    for i in 0..MEMBERS {
        let req = DispatchRequest {
            dry_run: true,
            ..sample_dispatch(&format!("dry run {i}"))
        };
        let (events, result) = dispatch_collect(&c, req).await;
        assert_eq!(state_of(&result), TaskState::Succeeded, "{events:#?}");
        took.insert(result.programmer_id);
    }
    assert_eq!(took.len(), usize::from(MEMBERS), "{took:?}");
    // Region preference at this size: an "even" task lands on an even-numbered programmer.
    let (_, result) = dispatch_collect(
        &c,
        DispatchRequest {
            dry_run: true,
            region: "even".into(),
            ..sample_dispatch("even")
        },
    )
    .await;
    let n: u8 = result.programmer_id[1..].parse().expect("pNN");
    assert_eq!(n % 2, 0, "{}", result.programmer_id);
    drop(programmers);
}
