//! One task's life in the manager: wait for a programmer (Queued events), start it there
//! (Assigned), relay its events in order, re-route it when its programmer dies, its stream
//! breaks or a shutting-down programmer hands it back unfinished (Rerouted), settle its budget
//! reservation, record it, and end with exactly one result.
//!
//! Re-dispatching is safe because every attempt runs in its own worktree and branch on the
//! programmer side: each dispatch attempt gets its own programmer-side task id
//! ([`attempt_task_id`](crate::manager::balancer::attempt_task_id)), so a branch left behind by a
//! programmer killed mid-task is never in the way, and a broken stream makes a live programmer
//! kill its aider and discard the worktree. A programmer that refuses a task at admission (queue
//! full) did not lose it: the task goes back to the front of the queue without a reroute.

use crate::contract::v1::{
    Assigned, ErrorClass, Queued, Rerouted, TaskResult, TaskState, task_event::Kind,
};
use crate::manager::Manager;
use crate::manager::balancer::{Exclusion, Placement, Route, Upstream};
use crate::manager::waitqueue::{NotPlaced, Ticket};
use crate::money::Usd;
use crate::task_events::TaskEventSink;
use crate::telemetry;
use std::sync::Arc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Everything the life of one task needs besides the manager.
pub struct TaskLife {
    pub task_id: String,
    pub route: Route,
    pub ticket: Ticket,
    pub sink: TaskEventSink,
    pub cancel: CancellationToken,
    pub accepted: Instant,
}

enum Leg {
    /// The programmer sent the result.
    Finished(Box<TaskResult>),
    /// The programmer went away before a result.
    Broken(String),
    /// The programmer stopped the task unfinished (shutting down) and handed it back.
    HandedBack(Box<TaskResult>),
    Cancelled,
}

/// Runs a task from queue to result. Always sends exactly one result and records it.
pub async fn run(mgr: Arc<Manager>, life: TaskLife) {
    let TaskLife {
        task_id,
        mut route,
        mut ticket,
        sink,
        cancel,
        accepted,
    } = life;
    let strategy = route.strategy;
    let mut previous: Option<(String, String)> = None;
    let mut dispatch_attempt = 1u32;
    route.request.dispatch_attempt = dispatch_attempt;
    let mut result = loop {
        let waiting = wait_for_placement(&mut ticket, &sink, &cancel);
        let placement = match waiting
            .instrument(telemetry::spans::queue_wait("manager"))
            .await
        {
            Ok(p) => p,
            Err(result) => break result,
        };
        let candidates = placement.candidate_ids(&mgr.pool);
        let Placement {
            member,
            reserved_usd,
            response,
            ..
        } = placement;
        let programmer = member.spec.id.clone();
        let leg_span =
            telemetry::spans::route(strategy.name(), &candidates, &programmer, dispatch_attempt);
        tracing::info!(%task_id, %programmer, strategy = strategy.name(), dispatch_attempt, "task assigned");
        let upstream = tokio::select! {
            r = response.instrument(leg_span.clone()) => r,
            _ = cancel.cancelled() => {
                mgr.settle(&task_id, dispatch_attempt, reserved_usd, None);
                break ended(TaskState::Cancelled, ErrorClass::Cancelled, "cancelled", &programmer);
            }
        };
        let leg = match upstream {
            Ok(upstream) => {
                // The programmer took the task: only now is it running there. Recorded without
                // waiting for the commit: the store applies writes in call order, so the result
                // recorded later still lands after it.
                let recorded = mgr.store.set_running(&task_id, &programmer);
                let id = task_id.clone();
                tokio::spawn(async move {
                    if let Err(e) = recorded.await {
                        tracing::warn!(task_id = %id, "task store: {e}");
                    }
                });
                if let Some((from, reason)) = previous.take() {
                    let rerouted = Rerouted {
                        from_programmer: from,
                        to_programmer: programmer.clone(),
                        reason,
                    };
                    sink.send(Kind::Rerouted(rerouted)).await;
                }
                relay(upstream, &sink, &cancel, strategy.name(), dispatch_attempt)
                    .instrument(leg_span)
                    .await
            }
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                mgr.settle(&task_id, dispatch_attempt, reserved_usd, Some(Usd::ZERO));
                break ended(
                    TaskState::Failed,
                    ErrorClass::BadRequest,
                    status.message(),
                    &programmer,
                );
            }
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                // Refused at admission: its queue filled since its last report (other callers'
                // tasks, or slots it has not freed yet after our cancelled ones). The task never
                // started there, so it is neither lost nor a reason to avoid that programmer:
                // back to the front of the queue, same attempt, hold released. The programmer
                // counts as full until it reports again, so the task is not thrown straight back.
                tracing::info!(%task_id, %programmer, reason = %status.message(), "programmer full at admission; task re-queued");
                mgr.pool.refused_at_admission(&member);
                mgr.release(&task_id, dispatch_attempt, reserved_usd);
                ticket = mgr.scheduler.resubmit(route.clone(), mgr.queue_timeout);
                continue;
            }
            Err(status) => Leg::Broken(format!("{}: {}", status.code(), status.message())),
        };
        // Money a handed-back task spent is known; a broken stream's is not: keep the hold.
        let (reason, spent) = match leg {
            Leg::Finished(result) => {
                mgr.settle(&task_id, dispatch_attempt, reserved_usd, result.cost());
                break *result;
            }
            Leg::Cancelled => {
                // The programmer may have spent money before it saw the cancellation: keep the hold.
                mgr.settle(&task_id, dispatch_attempt, reserved_usd, None);
                break ended(
                    TaskState::Cancelled,
                    ErrorClass::Cancelled,
                    "cancelled",
                    &programmer,
                );
            }
            Leg::HandedBack(result) => (result.error_message.clone(), result.cost()),
            Leg::Broken(reason) => (reason, None),
        };
        // The task is lost there: re-route it.
        mgr.settle(&task_id, dispatch_attempt, reserved_usd, spent);
        tracing::warn!(%task_id, %programmer, %reason, "programmer lost the task");
        if dispatch_attempt >= mgr.max_dispatch_attempts {
            let msg = format!(
                "gave up after {dispatch_attempt} programmer(s); last: {programmer}: {reason}"
            );
            break ended(
                TaskState::Failed,
                ErrorClass::Unavailable,
                &msg,
                &programmer,
            );
        }
        dispatch_attempt += 1;
        // Before re-submitting: the scheduler routes (and reserves budget for) its own
        // copy of the route, so it must carry the new attempt number.
        route.request.dispatch_attempt = dispatch_attempt;
        route.exclude.push(Exclusion::until_back(&member));
        previous = Some((programmer, reason));
        ticket = mgr.scheduler.resubmit(route.clone(), mgr.queue_timeout);
    };
    // A task that ended while waiting gives its place in the queue back now.
    drop(ticket);
    mgr.scheduler.nudge();
    // The caller's view: from acceptance by the manager to the result.
    result.duration_ms = accepted.elapsed().as_millis() as u64;
    mgr.finish_task(&task_id, &sink, result).await;
    // Ends the disconnect watcher, which holds a clone of the sink: the stream closes only when
    // every clone is gone.
    cancel.cancel();
}

/// Waits for the scheduler to place the task, relaying queue positions. On failure returns the
/// task's final result.
async fn wait_for_placement(
    ticket: &mut Ticket,
    sink: &TaskEventSink,
    cancel: &CancellationToken,
) -> Result<Placement, TaskResult> {
    let mut first = true;
    loop {
        tokio::select! {
            placed = &mut ticket.placement => {
                return match placed {
                    Ok(Ok(p)) => Ok(p),
                    Ok(Err(NotPlaced::BudgetExhausted)) => Err(ended(TaskState::Failed, ErrorClass::BudgetExhausted,
                        &NotPlaced::BudgetExhausted.to_string(), "")),
                    Ok(Err(e @ NotPlaced::Timeout(_))) => Err(ended(TaskState::Failed, ErrorClass::QueueTimeout, &e.to_string(), "")),
                    Ok(Err(e @ NotPlaced::ShuttingDown)) => Err(ended(TaskState::Failed, ErrorClass::Unavailable, &e.to_string(), "")),
                    Err(_) => Err(ended(TaskState::Failed, ErrorClass::Unavailable, "the scheduler stopped", "")),
                };
            }
            changed = ticket.position.changed() => {
                let position = *ticket.position.borrow_and_update();
                if changed.is_ok() && position > 0 {
                    telemetry::task_queued("manager", position as usize, std::mem::take(&mut first));
                    let queued = Queued {
                        position,
                        queue: "manager".into(),
                        reason: "every eligible programmer is busy or unavailable".into(),
                    };
                    sink.send(Kind::Queued(queued)).await;
                }
            }
            _ = cancel.cancelled() => {
                return Err(ended(TaskState::Cancelled, ErrorClass::Cancelled, "cancelled while queued", ""));
            }
        }
    }
}

/// Relays the programmer's events to the caller until the result, a break, or cancellation.
async fn relay(
    mut upstream: Upstream,
    sink: &TaskEventSink,
    cancel: &CancellationToken,
    strategy: &str,
    dispatch_attempt: u32,
) -> Leg {
    loop {
        let next = tokio::select! {
            m = upstream.stream.message() => m,
            _ = cancel.cancelled() => return Leg::Cancelled,
        };
        match next {
            Ok(Some(event)) => match event.kind {
                Some(Kind::Result(result))
                    if result.error_class == ErrorClass::HandedBack as i32 =>
                {
                    return Leg::HandedBack(Box::new(result));
                }
                Some(Kind::Result(result)) => return Leg::Finished(Box::new(result)),
                Some(Kind::Assigned(assigned)) => {
                    let assigned = Assigned {
                        strategy: strategy.to_string(),
                        dispatch_attempt,
                        ..assigned
                    };
                    sink.send(Kind::Assigned(assigned)).await;
                }
                Some(kind) => {
                    sink.send(kind).await;
                }
                None => {}
            },
            Ok(None) => {
                return Leg::Broken("the programmer's stream ended without a result".into());
            }
            Err(status) => {
                return Leg::Broken(format!(
                    "stream broke: {}: {}",
                    status.code(),
                    status.message()
                ));
            }
        }
    }
}

/// A result the manager makes itself (the task never reached or lost its programmer).
pub fn ended(status: TaskState, class: ErrorClass, message: &str, programmer: &str) -> TaskResult {
    TaskResult {
        status: status as i32,
        programmer_id: programmer.to_string(),
        error_class: class as i32,
        error_message: message.to_string(),
        ..Default::default()
    }
}
