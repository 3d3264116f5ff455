//! A restarted manager takes back every task the previous process left unfinished, instead of
//! failing it: a placed task is followed again on its programmer from the last event the previous
//! process relayed (its budget hold kept), a queued one goes back into the queue in its original
//! order. Their event logs are rebuilt from the journal, so callers re-attach with WatchTask (or
//! Dispatch with the same id) and see every event once. Holds whose tasks are not resumed are
//! booked as spent: nothing knows what they cost.

use crate::config::EscalationConfig;
use crate::contract::v1::{DispatchRequest, TaskEvent};
use crate::contract::v1::{ErrorClass, TaskState};
use crate::manager::Manager;
use crate::manager::balancer::{Hold, reservation_key};
use crate::manager::dispatch::{self, Resumed, Start, TaskLife, ended};
use crate::manager::escalation::Escalation;
use crate::manager::server::{TierChoice, route_on};
use crate::manager::store::{StoreError, TaskStore, Unfinished};
use crate::task_events::{MAX_RETAINED, MAX_RETAINED_BYTES, TaskEventSink, now_unix_ms};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Resumes the unfinished tasks of the store and books the holds nobody resumes.
pub fn unfinished_tasks(mgr: &Arc<Manager>) -> anyhow::Result<()> {
    let tasks = mgr.store.unfinished()?;
    let mut keep = HashSet::new();
    let mut queued = Vec::new();
    let (mut followed, mut failed) = (0usize, 0usize);
    for task in tasks {
        let Unfinished {
            task_id,
            request,
            created_ms,
            placed,
            lease_s,
            ..
        } = task;
        // What its log keeps in memory; its followers read older events back from the journal.
        let events = mgr
            .store
            .latest_events(&task_id, MAX_RETAINED, MAX_RETAINED_BYTES)?;
        let escalation = escalation_of(
            &mgr.store,
            &mgr.config().pool.escalation,
            &task_id,
            &request,
            &events,
        )?;
        let log = mgr.new_log(&task_id, events);
        let sink = TaskEventSink::new(log.clone());
        let cancel = mgr.register(&task_id, log);
        let age = Duration::from_millis(u64::try_from(now_unix_ms() - created_ms).unwrap_or(0));
        let accepted = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        // An escalated task resumes on its paid leg.
        let tiers = match escalation {
            Escalation::Escalated(_) => TierChoice::PaidOnly,
            _ => TierChoice::AsRequested,
        };
        let routed = route_on(mgr, &request, &task_id, tiers);
        let mut route = match routed {
            Ok(route) => route,
            Err(status) => {
                // The configuration changed under it: no programmer here can ever take it.
                failed += 1;
                let result = ended(
                    TaskState::Failed,
                    ErrorClass::Unavailable,
                    &format!(
                        "cannot resume after a manager restart: {}",
                        status.message()
                    ),
                    "",
                );
                let mgr = mgr.clone();
                tokio::spawn(async move { mgr.finish_task(&task_id, &sink, result).await });
                continue;
            }
        };
        // The lease it was accepted with (which its programmer holds it by), not this process's.
        if lease_s > 0 {
            route.request.lease_s = lease_s;
        }
        // A placement before the current leg (the free programmer of an escalated task) is over.
        let leg_start = escalation.leg_start();
        let placed = placed.filter(|p| p.dispatch_attempt >= leg_start);
        let member = placed
            .as_ref()
            .and_then(|p| mgr.pool.member(&p.programmer_id));
        // Attempts of this leg their programmers never had go on not counting as tried.
        let unsent_before = placed.as_ref().map_or(0, |p| p.unsent_before);
        // The attempt after the recorded placement (the first attempt when there is none) was
        // never sent: placements are recorded before their Execute is (a dry run's may not be,
        // which at worst runs it again: it changes nothing). A hold the previous process
        // reserved for it (it died between the reservation and the record) spent nothing, so it
        // is released, not booked as an orphan: booked, its key would be taken for good, and the
        // task's next attempt could never reserve it (it waited in the queue until it timed out).
        let unsent = placed
            .as_ref()
            .map_or(leg_start, |p| p.dispatch_attempt + 1);
        if mgr.budget.release(&reservation_key(&task_id, unsent))? {
            tracing::info!(%task_id, dispatch_attempt = unsent, "released the hold of a placement that was never sent");
        }
        let start = match (placed, member) {
            (Some(placed), Some(member)) => {
                route.request.dispatch_attempt = placed.dispatch_attempt;
                let key = reservation_key(&task_id, placed.dispatch_attempt);
                let hold = mgr.budget.held(&key)?.map(|amount| Hold {
                    key: key.clone(),
                    amount,
                });
                keep.insert(key);
                followed += 1;
                Some(Start::Placed(Resumed {
                    member,
                    hold,
                    upstream_seq: placed.upstream_seq,
                }))
            }
            _ => {
                // Never placed, or on a programmer no longer configured: the unsent attempt.
                route.request.dispatch_attempt = unsent;
                None
            }
        };
        let pending = Pending {
            task_id,
            route,
            sink,
            cancel,
            accepted,
            escalation,
            unsent: unsent_before,
        };
        match start {
            Some(start) => spawn(mgr, pending.life(start)),
            None => queued.push(pending),
        }
    }
    // Each goes to the front of the queue: newest first leaves the oldest at the front.
    let resumed_queued = queued.len();
    for pending in queued.into_iter().rev() {
        let ticket = mgr
            .scheduler
            .resubmit(pending.route.clone(), mgr.max_wait(&pending.route));
        spawn(mgr, pending.life(Start::Queued(ticket)));
    }
    if followed + resumed_queued + failed > 0 {
        tracing::warn!(
            followed,
            queued = resumed_queued,
            failed,
            "resumed the tasks a previous manager left unfinished"
        );
    }
    let booked = mgr.budget.book_orphans(&keep)?;
    if booked > 0 {
        tracing::warn!(
            holds = booked,
            "budget holds of tasks nobody resumes were booked as spent"
        );
    }
    // Those bookings may have crossed the alert threshold without any settlement.
    match mgr.budget.poll_alert() {
        Ok(true) => {
            if let Ok(s) = mgr.budget.snapshot() {
                tracing::warn!(day = %s.day, spent_usd = %s.spent, "{}", crate::manager::BUDGET_ALERT_LOG);
            }
        }
        Ok(false) => {}
        Err(e) => tracing::error!("budget ledger: {e}"),
    }
    Ok(())
}

/// Whether a resumed task escalated, from `kept`, its latest events. A task that may escalate
/// and has older events than those is looked up among the events the manager journaled itself
/// (its Escalated event is one): only those are decoded, not the programmers' output.
fn escalation_of(
    store: &TaskStore,
    config: &EscalationConfig,
    task_id: &str,
    request: &DispatchRequest,
    kept: &[TaskEvent],
) -> Result<Escalation, StoreError> {
    Ok(match Escalation::resumed(config, request.clone(), kept) {
        Escalation::Armed(_) if kept.first().is_some_and(|e| e.seq > 1) => {
            Escalation::resumed(config, request.clone(), &store.own_events(task_id)?)
        }
        escalation => escalation,
    })
}

/// A resumed task, before it knows where its life starts.
struct Pending {
    task_id: String,
    route: crate::manager::balancer::Route,
    sink: TaskEventSink,
    cancel: tokio_util::sync::CancellationToken,
    accepted: Instant,
    escalation: Escalation,
    unsent: u32,
}

impl Pending {
    fn life(self, start: Start) -> TaskLife {
        TaskLife {
            task_id: self.task_id,
            route: self.route,
            start,
            sink: self.sink,
            cancel: self.cancel,
            accepted: self.accepted,
            slot: None,
            escalation: self.escalation,
            recorded: None,
            unsent: self.unsent,
        }
    }
}

fn spawn(mgr: &Arc<Manager>, life: TaskLife) {
    let span = crate::telemetry::spans::manager_task(
        &life.task_id,
        &life.route.request.run_id,
        life.route.strategy.name(),
        life.route.request.dry_run,
    );
    tokio::spawn(tracing::Instrument::instrument(
        dispatch::run(mgr.clone(), life),
        span,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::v1::task_event::Kind;
    use crate::contract::v1::{Escalated, Output};
    use crate::manager::store::NewTask;

    #[tokio::test]
    async fn an_escalation_older_than_the_kept_events_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = TaskStore::open(dir.path().join("tasks.sqlite3")).unwrap();
        let on = EscalationConfig {
            enabled: true,
            ..EscalationConfig::default()
        };
        let request = DispatchRequest::default();
        let event = |task: &str, seq, kind| TaskEvent {
            task_id: task.into(),
            seq,
            kind: Some(kind),
            ..Default::default()
        };
        // "paid": escalated first, then more output on its paid leg than a log keeps;
        // "free": the same output, never escalated.
        let output = || {
            Kind::Output(Output {
                text: "line\n".into(),
                ..Default::default()
            })
        };
        let total = MAX_RETAINED as u64 + 5;
        let mut writes = Vec::new();
        for task in ["paid", "free"] {
            store
                .insert(&NewTask::from_request(task, &request))
                .await
                .unwrap();
            // The manager's own event (upstream seq 0), or the programmer's first.
            let (first, upstream) = match task {
                "paid" => {
                    let escalated = Escalated {
                        dispatch_attempt: 4,
                        ..Default::default()
                    };
                    (Kind::Escalated(Box::new(escalated)), 0)
                }
                _ => (output(), 1),
            };
            writes.push(store.append_event_soon(task, &event(task, 1, first), upstream));
            for seq in 2..=total {
                writes.push(store.append_event_soon(task, &event(task, seq, output()), seq));
            }
        }
        for write in writes {
            write.await.unwrap();
        }
        let kept = store
            .latest_events("paid", MAX_RETAINED, usize::MAX)
            .unwrap();
        assert_eq!(kept.len(), MAX_RETAINED);
        assert_eq!(
            kept.first().map(|e| e.seq),
            Some(total + 1 - MAX_RETAINED as u64)
        );
        assert_eq!(kept.last().map(|e| e.seq), Some(total));
        let paid = escalation_of(&store, &on, "paid", &request, &kept).unwrap();
        assert!(matches!(paid, Escalation::Escalated(_)));
        assert_eq!(paid.leg_start(), 4);
        let kept = store
            .latest_events("free", MAX_RETAINED, usize::MAX)
            .unwrap();
        let free = escalation_of(&store, &on, "free", &request, &kept).unwrap();
        assert!(matches!(free, Escalation::Armed(_)));
        assert_eq!(store.own_events("free").unwrap().len(), 0);
        assert_eq!(store.own_events("paid").unwrap().len(), 1);
    }
}
