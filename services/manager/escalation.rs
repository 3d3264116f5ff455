//! Cost-aware escalation, the original design's "route expensive tasks to cheaper models first":
//! a task that failed on a free programmer for a reason of the task itself — the model's edit did
//! not apply, it proposed none, or every LLM attempt failed — is dispatched once more, to the paid
//! tier, when the task asks for it (`DispatchRequest.escalate`, else `escalation.enabled`) and the
//! daily budget can cover a paid job.
//!
//! This module decides; the task's life ([`dispatch`](crate::manager::dispatch)) carries the
//! decision out: it journals an [`Escalated`] event (which is also what a restarted manager reads
//! to know the task is on its paid leg), routes the task again on the paid tier only, with its own
//! dispatch attempts (programmer-side ids and budget holds of their own; the task's branch is
//! still created only if absent), and merges the free leg into the final result
//! ([`merge_into`]): its attempts, tokens and cost are part of the task's.
//!
//! Never escalated: a result from a paid programmer (there is no higher tier), a dry run, a
//! cancelled or timed-out task (the caller or its deadline ended it), and failures a paid model
//! would meet again (bad request, git, caps, memory, push, an edit already kept).

use crate::config::{EscalationConfig, EscalationTrigger};
use crate::contract::v1::{
    DispatchRequest, ErrorClass, Escalated, TaskEvent, TaskResult, TaskState, task_event::Kind,
};
use crate::manager::Manager;
use crate::manager::balancer::Route;
use crate::manager::server::{TierChoice, route_on};
use std::sync::Arc;

/// The tier of a programmer whose LLMs are free (local models).
pub const FREE: &str = "free";
/// The tier of a programmer whose LLMs cost money.
pub const PAID: &str = "paid";

/// The name of a programmer's tier, as results and events spell it.
pub fn tier_name(paid: bool) -> &'static str {
    if paid { PAID } else { FREE }
}

/// The task-level reason a failed result gives to escalate, if any (see the module docs).
pub fn trigger_of(result: &TaskResult) -> Option<EscalationTrigger> {
    if result.status != TaskState::Failed as i32 {
        return None;
    }
    match ErrorClass::try_from(result.error_class).ok()? {
        ErrorClass::EditFailed => Some(EscalationTrigger::EditFailed),
        ErrorClass::NoEdit => Some(EscalationTrigger::NoEdit),
        ErrorClass::Timeout
        | ErrorClass::ApiError
        | ErrorClass::RateLimit
        | ErrorClass::ModelUnavailable
        | ErrorClass::Unavailable => Some(EscalationTrigger::AttemptsExhausted),
        _ => None,
    }
}

/// Where a task stands with escalation, from acceptance to its result.
#[derive(Debug, Clone)]
pub enum Escalation {
    /// The task does not escalate (not asked for, or a dry run).
    Off,
    /// It may escalate once; the request is kept to route it again on the paid tier.
    Armed(Arc<DispatchRequest>),
    /// It escalated: the journaled event (the free leg's result, the leg's first attempt).
    Escalated(Box<Escalated>),
}

impl Escalation {
    /// A new task: armed when it asks for escalation, or says nothing and the configuration does.
    pub fn for_request(config: &EscalationConfig, req: DispatchRequest) -> Self {
        if req.escalate.unwrap_or(config.enabled) && !req.dry_run {
            Self::Armed(Arc::new(req))
        } else {
            Self::Off
        }
    }

    /// A task a restarted manager resumes: escalated when its journal says so.
    pub fn resumed(config: &EscalationConfig, req: DispatchRequest, events: &[TaskEvent]) -> Self {
        let escalated = events.iter().rev().find_map(|e| match &e.kind {
            Some(Kind::Escalated(x)) => Some(x.clone()),
            _ => None,
        });
        match escalated {
            Some(x) => Self::Escalated(x),
            None => Self::for_request(config, req),
        }
    }

    /// The first dispatch attempt of the current leg: `max_dispatch_attempts` counts from it.
    pub fn leg_start(&self) -> u32 {
        match self {
            Self::Escalated(x) => x.dispatch_attempt.max(1),
            _ => 1,
        }
    }
}

/// What to do with a failed result.
pub enum Decision {
    /// Route the task again on the paid tier (its route; the event to journal first).
    Escalate(Box<(Route, Escalated)>),
    /// The task qualified but cannot escalate: why, for the result's `escalation`.
    Refused(String),
    /// Escalation does not apply: the result stands as it is.
    No,
}

/// Decides whether `result`, produced by programmer `programmer` (paid or not), escalates, and
/// counts what it decided (`pas_escalations_total`).
/// `next_attempt` is the dispatch attempt number the paid leg would start with.
pub fn decide(
    mgr: &Manager,
    escalation: &Escalation,
    task_id: &str,
    programmer: (&str, bool),
    result: &TaskResult,
    next_attempt: u32,
) -> Decision {
    let Escalation::Armed(req) = escalation else {
        return Decision::No;
    };
    let (programmer, paid) = programmer;
    if paid {
        return Decision::No;
    }
    let Some(trigger) = trigger_of(result).filter(|t| mgr.config().pool.escalation.on.contains(t))
    else {
        return Decision::No;
    };
    let routed = route_on(mgr, req, task_id, TierChoice::PaidOnly);
    let outcome = if routed.is_ok() {
        "escalated"
    } else {
        "refused"
    };
    crate::telemetry::metrics::escalation(outcome, trigger.as_str());
    match routed {
        Ok(mut route) => {
            route.request.dispatch_attempt = next_attempt;
            let event = Escalated {
                from_programmer: programmer.to_string(),
                from_tier: FREE.into(),
                to_tier: PAID.into(),
                reason: format!("{}: {}", trigger.as_str(), result.error_message),
                dispatch_attempt: next_attempt,
                failed: Some(result.clone()),
            };
            Decision::Escalate(Box::new((route, event)))
        }
        Err(status) => Decision::Refused(format!(
            "not escalated ({}): {}",
            trigger.as_str(),
            status.message()
        )),
    }
}

/// The final result of an escalated task: the paid leg's, with the free leg's attempts before its
/// own (numbered on through both legs, each naming its programmer), tokens and cost summed over
/// both (what the ledger booked for the task), and `escalation` saying where it came from.
pub fn merge_into(escalated: &Escalated, mut result: TaskResult) -> TaskResult {
    let failed = escalated.failed.clone().unwrap_or_default();
    let free_leg = failed.cost().unwrap_or(crate::money::Usd::ZERO);
    let mut attempts = failed.attempts;
    attempts.append(&mut result.attempts);
    for (n, a) in attempts.iter_mut().enumerate() {
        a.number = n as u32 + 1;
    }
    result.attempts = attempts;
    result.tokens_sent += failed.tokens_sent;
    result.tokens_received += failed.tokens_received;
    let paid_leg = result.cost().unwrap_or(crate::money::Usd::ZERO);
    result.set_cost(paid_leg.saturating_add(free_leg));
    result.escalation = format!(
        "escalated from {} programmer {} ({})",
        escalated.from_tier, escalated.from_programmer, escalated.reason
    );
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::v1::Attempt;

    fn failed(class: ErrorClass) -> TaskResult {
        TaskResult {
            status: TaskState::Failed as i32,
            error_class: class as i32,
            ..Default::default()
        }
    }

    #[test]
    fn task_level_failures_trigger_and_the_rest_do_not() {
        use EscalationTrigger::*;
        assert_eq!(
            trigger_of(&failed(ErrorClass::EditFailed)),
            Some(EditFailed)
        );
        assert_eq!(trigger_of(&failed(ErrorClass::NoEdit)), Some(NoEdit));
        for class in [
            ErrorClass::Timeout,
            ErrorClass::ApiError,
            ErrorClass::RateLimit,
            ErrorClass::ModelUnavailable,
            ErrorClass::Unavailable,
        ] {
            assert_eq!(
                trigger_of(&failed(class)),
                Some(AttemptsExhausted),
                "{class:?}"
            );
        }
        for class in [
            ErrorClass::BadRequest,
            ErrorClass::GitError,
            ErrorClass::JobLimit,
            ErrorClass::Deadline,
            ErrorClass::Cancelled,
            ErrorClass::Internal,
            ErrorClass::BudgetExhausted,
            ErrorClass::QueueTimeout,
            ErrorClass::AlreadyKept,
            ErrorClass::ResourceLimit,
            ErrorClass::PushFailed,
        ] {
            assert_eq!(trigger_of(&failed(class)), None, "{class:?}");
        }
        // Only a failure escalates: not a success, a cancel or a timeout with the same class.
        for status in [
            TaskState::Succeeded,
            TaskState::Cancelled,
            TaskState::TimedOut,
        ] {
            let r = TaskResult {
                status: status as i32,
                ..failed(ErrorClass::EditFailed)
            };
            assert_eq!(trigger_of(&r), None, "{status:?}");
        }
    }

    #[test]
    fn only_an_asking_task_that_is_not_a_dry_run_is_armed() {
        let on = EscalationConfig {
            enabled: true,
            ..EscalationConfig::default()
        };
        let off = EscalationConfig::default();
        let req = |escalate: Option<bool>, dry_run| DispatchRequest {
            escalate,
            dry_run,
            ..Default::default()
        };
        let armed =
            |c: &EscalationConfig, r| matches!(Escalation::for_request(c, r), Escalation::Armed(_));
        assert!(armed(&on, req(None, false)));
        assert!(!armed(&off, req(None, false)));
        assert!(armed(&off, req(Some(true), false)));
        assert!(!armed(&on, req(Some(false), false)));
        assert!(!armed(&on, req(Some(true), true)));
    }

    #[test]
    fn a_resumed_task_is_on_its_paid_leg_when_its_journal_says_so() {
        let on = EscalationConfig {
            enabled: true,
            ..EscalationConfig::default()
        };
        let event = |kind| TaskEvent {
            kind: Some(kind),
            ..Default::default()
        };
        let escalated = Escalated {
            dispatch_attempt: 3,
            ..Default::default()
        };
        let events = vec![
            event(Kind::Escalated(Box::new(escalated))),
            event(Kind::Output(Default::default())),
        ];
        let e = Escalation::resumed(&on, DispatchRequest::default(), &events);
        assert!(matches!(e, Escalation::Escalated(_)));
        assert_eq!(e.leg_start(), 3);
        let e = Escalation::resumed(&on, DispatchRequest::default(), &events[1..]);
        assert!(matches!(e, Escalation::Armed(_)));
        assert_eq!(e.leg_start(), 1);
    }

    #[test]
    fn the_final_result_carries_both_legs() {
        let attempt = |llm: &str, programmer: &str, cost: u64, tokens: u64| Attempt {
            number: 1,
            llm: llm.into(),
            programmer_id: programmer.into(),
            cost_nanousd: cost,
            tokens_sent: tokens,
            ..Default::default()
        };
        let free = TaskResult {
            attempts: vec![attempt("ollama/a", "001", 0, 100)],
            tokens_sent: 100,
            ..failed(ErrorClass::EditFailed)
        };
        let escalated = Escalated {
            from_programmer: "001".into(),
            from_tier: FREE.into(),
            to_tier: PAID.into(),
            reason: "edit_failed: no match".into(),
            dispatch_attempt: 2,
            failed: Some(free),
        };
        let paid = TaskResult {
            status: TaskState::Succeeded as i32,
            attempts: vec![attempt("openai/gpt-4o", "006", 12_000_000, 50)],
            tokens_sent: 50,
            cost_nanousd: 12_000_000,
            tier: PAID.into(),
            ..Default::default()
        };
        let r = merge_into(&escalated, paid);
        let numbers: Vec<(u32, &str)> = r
            .attempts
            .iter()
            .map(|a| (a.number, a.programmer_id.as_str()))
            .collect();
        assert_eq!(numbers, [(1, "001"), (2, "006")]);
        assert_eq!(r.tokens_sent, 150);
        assert_eq!(r.cost_nanousd, 12_000_000);
        assert_eq!(
            r.cost_nanousd,
            r.attempts.iter().map(|a| a.cost_nanousd).sum::<u64>()
        );
        assert_eq!(r.tier, PAID);
        assert_eq!(
            r.escalation,
            "escalated from free programmer 001 (edit_failed: no match)"
        );
    }
}
