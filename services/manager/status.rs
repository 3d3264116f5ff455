//! The pool as operators see it: `GetPoolStatus`, the original `/programmer_pool/status` and
//! `/health` JSON, and the three alerts of the original document (fewer than 5 programmers
//! available, more than 3 on their backup LLM, daily spend at the alert threshold), each logged
//! once per transition.

use crate::contract::circuit_name;
use crate::contract::v1::{
    Alert, Budget, CircuitState, PoolStatus, ProgrammerState, ProgrammerSummary,
};
use crate::manager::Manager;
use crate::manager::budget::BudgetSnapshot;
use crate::manager::membership::Member;
use crate::task_events::now_unix_ms;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// "Low availability" fires below this many available programmers (the original's `< 5`), or
/// below half the pool for pools smaller than ten.
fn low_availability_threshold(pool_size: usize) -> usize {
    if pool_size >= 10 {
        5
    } else {
        pool_size.div_ceil(2)
    }
}

/// "High backup usage" fires above this many programmers on their backup (the original's `> 3`),
/// scaled to 30% for smaller pools.
fn high_backup_threshold(pool_size: usize) -> usize {
    if pool_size >= 10 {
        3
    } else {
        (pool_size * 3) / 10
    }
}

/// Active alerts with the time each became active. Transitions are logged once.
#[derive(Debug, Default)]
pub struct Alerts {
    active: Mutex<BTreeMap<&'static str, (String, i64)>>,
}

impl Alerts {
    /// Sets `kind` active (with `message`) or inactive; logs transitions.
    fn set(&self, kind: &'static str, active: bool, message: String) {
        self.set_since(kind, active, message, now_unix_ms(), true);
    }

    /// Like [`set`](Self::set) with the time the alert became active, and whether becoming active
    /// here is news worth a log line (false for an alert restored from an earlier process).
    fn set_since(
        &self,
        kind: &'static str,
        active: bool,
        message: String,
        since_ms: i64,
        log_raise: bool,
    ) {
        let mut map = self.active.lock().unwrap_or_else(|p| p.into_inner());
        match (map.contains_key(kind), active) {
            (false, true) => {
                if log_raise {
                    tracing::warn!(alert = kind, %message, "alert raised");
                }
                map.insert(kind, (message, since_ms));
            }
            (true, false) => {
                tracing::info!(alert = kind, "alert cleared");
                map.remove(kind);
            }
            (true, true) => {
                if let Some(entry) = map.get_mut(kind) {
                    entry.0 = message;
                }
            }
            (false, false) => {}
        }
    }

    /// The active alerts.
    pub fn list(&self) -> Vec<Alert> {
        let map = self.active.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(kind, (message, since))| Alert {
                kind: kind.to_string(),
                message: message.clone(),
                since_ms: *since,
            })
            .collect()
    }
}

/// Re-evaluates the alerts from a status snapshot and the ledger's alert record.
fn evaluate(mgr: &Manager, s: &PoolStatus, ledger: Option<&BudgetSnapshot>) {
    let pool_size = s.pool_size as usize;
    let low = low_availability_threshold(pool_size);
    mgr.alerts.set(
        "low_availability",
        (s.available as usize) < low,
        format!(
            "only {} of {} programmers available (alert below {low})",
            s.available, s.pool_size
        ),
    );
    let high = high_backup_threshold(pool_size);
    mgr.alerts.set(
        "high_backup_usage",
        s.using_backup as usize > high,
        format!(
            "{} programmers are on their backup LLM (alert above {high}): primary LLMs failing?",
            s.using_backup
        ),
    );
    // The budget alert is the ledger's: it fires once per day, persisted, so a restarted
    // manager shows it as active since the original time and does not raise it again.
    if let Some(b) = ledger {
        let since_ms = b.alert_since_ms.unwrap_or_else(now_unix_ms);
        mgr.alerts.set_since(
            "budget_threshold",
            b.alert_active,
            format!(
                "daily spend ${:.2} reached the alert threshold ${:.2} (limit ${:.2})",
                b.spent.as_usd_f64(),
                b.alert_threshold.as_usd_f64(),
                b.limit.as_usd_f64()
            ),
            since_ms,
            since_ms >= mgr.started_ms,
        );
    }
}

/// Evaluates the alerts every second so transitions are logged even when nobody asks for status.
pub async fn watch_alerts(mgr: Arc<Manager>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => { pool_status(&mgr); }
            _ = mgr.stop.cancelled() => return,
        }
    }
}

/// The pool's status now (also re-evaluates the alerts).
pub fn pool_status(mgr: &Manager) -> PoolStatus {
    let mut programmers = Vec::new();
    let (mut available, mut using_backup, mut queue_total) = (0u32, 0u32, 0u32);
    let members = mgr.pool.members();
    let mut pool_size = 0u32;
    // A member that left DNS is listed (draining) until none of our tasks runs there; in routing
    // order (the configuration's), the draining ones last.
    let mut listed: Vec<&Arc<Member>> = members.iter().filter(|m| !m.is_gone()).collect();
    listed.sort_by_key(|m| (m.rank(), m.index));
    for m in listed {
        let draining = m.has_left();
        pool_size += u32::from(!draining);
        let up = m.is_available() && !draining;
        let reported = m.reported();
        let llm = reported
            .as_ref()
            .and_then(|r| r.llm.clone())
            .unwrap_or_default();
        let on_backup = up && llm.using_backup;
        available += up as u32;
        using_backup += on_backup as u32;
        let queue_depth = reported.as_ref().map_or(0, |r| r.queue_depth);
        queue_total += queue_depth;
        programmers.push(ProgrammerSummary {
            id: m.spec.id.clone(),
            port: u32::from(m.spec.port),
            primary_llm: m.spec.primary.name.clone(),
            backup_llm: m.spec.backup.name.clone(),
            capabilities: m.spec.capabilities.iter().cloned().collect(),
            state: if draining {
                ProgrammerState::Draining
            } else if up {
                ProgrammerState::Available
            } else {
                ProgrammerState::Unavailable
            } as i32,
            queue_depth,
            in_flight: m.in_flight(),
            circuit_state: if reported.is_some() {
                llm.circuit_state
            } else {
                CircuitState::Unspecified as i32
            },
            using_backup: on_backup,
            current_llm: if llm.current.is_empty() {
                m.spec.primary.name.clone()
            } else {
                llm.current
            },
            completed: reported.as_ref().map_or(0, |r| r.completed),
            failed: reported.as_ref().map_or(0, |r| r.failed),
            paid: m.spec.paid,
            region: m.spec.region.clone(),
            address: m.address.clone(),
        });
    }
    let ledger = mgr.budget.snapshot().ok();
    let budget = ledger.as_ref().map(|b| Budget {
        day: b.day.clone(),
        spent_usd: b.spent.as_usd_f64(),
        reserved_usd: b.reserved.as_usd_f64(),
        earlier_holds_usd: b.earlier_holds.as_usd_f64(),
        limit_usd: b.limit.as_usd_f64(),
        remaining_usd: b.remaining.as_usd_f64(),
        alert_threshold_usd: b.alert_threshold.as_usd_f64(),
        spent_nanousd: b.spent.to_contract(),
        reserved_nanousd: b.reserved.to_contract(),
        earlier_holds_nanousd: b.earlier_holds.to_contract(),
        limit_nanousd: b.limit.to_contract(),
        remaining_nanousd: b.remaining.to_contract(),
        alert_threshold_nanousd: b.alert_threshold.to_contract(),
    });
    let manager_queue = mgr.scheduler.depth() as u32;
    let mut status = PoolStatus {
        pool_size,
        available,
        unavailable: pool_size - available,
        using_backup,
        total_queue_depth: queue_total + manager_queue,
        programmers,
        budget,
        alerts: Vec::new(),
        manager_queue_depth: manager_queue,
        manager_queue_capacity: mgr.scheduler.capacity() as u32,
        strategy: mgr.default_strategy().name().to_string(),
        llm_stats: mgr.llm_stats.snapshot(),
    };
    evaluate(mgr, &status, ledger.as_ref());
    status.alerts = mgr.alerts.list();
    status
}

/// The original `/programmer_pool/status` JSON (`pool_size, available, unavailable, using_backup,
/// total_queue_depth, programmers[…]`), plus budget and alerts.
pub fn pool_status_json(s: &PoolStatus) -> serde_json::Value {
    let programmers: Vec<serde_json::Value> = s
        .programmers
        .iter()
        .map(|p| {
            let circuit =
                CircuitState::try_from(p.circuit_state).unwrap_or(CircuitState::Unspecified);
            serde_json::json!({
                "id": p.id,
                "port": p.port,
                "primary_llm": p.primary_llm,
                "backup_llm": p.backup_llm,
                "current_llm": p.current_llm,
                "capabilities": p.capabilities,
                "state": match ProgrammerState::try_from(p.state) {
                    Ok(ProgrammerState::Available) => "available",
                    Ok(ProgrammerState::Draining) => "draining",
                    _ => "unavailable",
                },
                "queue_depth": p.queue_depth,
                "in_flight": p.in_flight,
                "circuit_state": circuit_name(circuit),
                "using_backup": p.using_backup,
                "completed": p.completed,
                "failed": p.failed,
                "paid": p.paid,
                "region": p.region,
                "address": p.address,
            })
        })
        .collect();
    let budget = s.budget.clone().unwrap_or_default();
    serde_json::json!({
        "pool_size": s.pool_size,
        "available": s.available,
        "unavailable": s.unavailable,
        "using_backup": s.using_backup,
        "total_queue_depth": s.total_queue_depth,
        "programmers": programmers,
        "manager_queue_depth": s.manager_queue_depth,
        "manager_queue_capacity": s.manager_queue_capacity,
        "strategy": s.strategy,
        "budget": {
            "day": budget.day,
            "daily_spend_usd": budget.spent_usd,
            "reserved_usd": budget.reserved_usd,
            "earlier_holds_usd": budget.earlier_holds_usd,
            "limit_usd": budget.limit_usd,
            "remaining_usd": budget.remaining_usd,
            "alert_threshold_usd": budget.alert_threshold_usd,
            "daily_spend_nanousd": budget.spent_nanousd,
            "reserved_nanousd": budget.reserved_nanousd,
            "earlier_holds_nanousd": budget.earlier_holds_nanousd,
            "limit_nanousd": budget.limit_nanousd,
            "remaining_nanousd": budget.remaining_nanousd,
            "alert_threshold_nanousd": budget.alert_threshold_nanousd,
        },
        "alerts": s.alerts.iter().map(|a| serde_json::json!({"kind": a.kind, "message": a.message, "since_ms": a.since_ms})).collect::<Vec<_>>(),
        "llm_stats": s.llm_stats.iter().map(|l| serde_json::json!({"llm": l.llm, "tasks": l.tasks, "succeeded": l.succeeded, "success_rate": l.success_rate, "p50_duration_ms": l.p50_duration_ms, "p95_duration_ms": l.p95_duration_ms, "attempts": l.attempts, "attempts_failed": l.attempts_failed})).collect::<Vec<_>>(),
    })
}

/// The manager's `/health` JSON: process status with a pool summary.
pub fn health_json(mgr: &Manager) -> serde_json::Value {
    let s = pool_status(mgr);
    serde_json::json!({
        "status": if mgr.stop.is_cancelled() { "draining" } else { "ok" },
        "agent": "Manager-Code",
        "port": mgr.port,
        "pool": {
            "pool_size": s.pool_size,
            "available": s.available,
            "unavailable": s.unavailable,
            "using_backup": s.using_backup,
            "total_queue_depth": s.total_queue_depth,
        },
        "active_tasks": mgr.active_count(),
        "alerts": s.alerts.iter().map(|a| a.kind.clone()).collect::<Vec<_>>(),
    })
}
