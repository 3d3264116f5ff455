//! One task's life in the manager, as a state machine read top-down in [`run`]:
//!
//! ```text
//!   Wait ──placed──▶ Start ──taken──▶ Relay ──result──▶ Finished ──▶ Done
//!    ▲ ▲               │  └─refused─▶ Wait        │ ▲              │
//!    │ │               └─no answer─▶ Follow ◀─broken┘ │              │ escalates
//!    │ │                                 │  └─found─────┘              │ (free → paid, once)
//!    │ └──────────── Lost ◀──not there───┘   (or handed back)          │
//!    └──────────────────────────────────────────────────────────────────┘
//! ```
//!
//! - **Wait**: queued in the scheduler (Queued events) until it places the task.
//! - **Start**: first the task's record, if admission queued its insert without waiting for it
//!   (a made-up id; failed without one, nothing sent), and its placement (a dry run's two are
//!   committed with its first event or result instead); then the programmer's Execute answer:
//!   taken (Assigned, relayed), refused at admission (back to the front of the queue, hold
//!   released), a bad request (failed), or no clear answer.
//! - **Relay**: the programmer's events go into the task's log (journaled, with the programmer's
//!   seq) until its result. A caller's cancel is passed on with the programmer's StopTask and the
//!   relay goes on to the programmer's own result, so what it spent is known — across a stream
//!   that breaks after it too (followed again, [`OnProgrammer::stop_sent`]). A cancelled task is
//!   neither dispatched again when lost nor escalated.
//! - **Follow**: the stream broke (or a restarted manager resumes a placed task, or Execute had no
//!   clear answer): follow the task on the same programmer again with WatchTask from the last seq
//!   relayed. The task is lost there only when that programmer says so: it does not have the task
//!   (NOT_FOUND), its process is gone (connection refused; on the task's last attempt it is waited
//!   for instead, since restarted it can say whether it kept the edit), or it stayed unreachable
//!   for the task's lease (after which it stops the task itself). A broken connection alone never makes a
//!   task run twice. A stream that breaks again each time it is followed, carrying nothing, is
//!   followed after a growing pause, and after the task's lease the task is stopped there and
//!   lost ([`Breaks`]).
//! - **Lost**: settle what the attempt cost (known for a hand-back, else the whole hold; released
//!   only when it never started there: an attempt whose Execute had no clear answer and whose
//!   programmer never said otherwise may be spending, see [`Started::Maybe`]) and dispatch it
//!   again elsewhere (Rerouted), up to `max_dispatch_attempts` (per leg; an attempt the programmer
//!   never had does not count), after which the task is Finished as failed.
//! - **Finished**: a programmer's result, spend settled. An ALREADY_KEPT result (another attempt
//!   kept the task's edit) is replaced by that attempt's own result when an attempt lost with its
//!   programmer turns out to have kept it: the restarted programmer ends it with the kept edit
//!   ([`kept_by_a_lost_attempt`]). A task that asked to escalate and failed
//!   on a free programmer for a task-level reason goes once more to the paid tier when the budget
//!   allows ([`escalation`](crate::manager::escalation)): an Escalated event is journaled, then
//!   it waits for a paid programmer (a new leg, with dispatch attempts of its own).
//! - **Done**: record the result (an escalated task's with its free leg merged in) and publish
//!   it: exactly one per task.
//!
//! A stopping manager leaves its tasks as they are (running on programmers, holds open, queued
//! ones recorded): the next process resumes them ([`Start::Placed`], or queued again in order).
//!
//! Every dispatch attempt has its own programmer-side task id
//! ([`attempt_task_id`](crate::manager::balancer::attempt_task_id)), and a task's kept branch is
//! created only if absent, so even a task wrongly thought lost cannot keep two edits.

use crate::contract::v1::programmer_client::ProgrammerClient;
use crate::contract::v1::{
    Assigned, ErrorClass, Queued, Rerouted, StopTaskRequest, TaskEvent, TaskResult, TaskState,
    WatchTaskRequest, task_event::Kind,
};
use crate::manager::Manager;
use crate::manager::admission::TaskSlot;
use crate::manager::balancer::{Exclusion, Hold, Placement, Route, Upstream, attempt_task_id};
use crate::manager::escalation::{self, Decision, Escalation};
use crate::manager::membership::Member;
use crate::manager::store::Commit;
use crate::manager::waitqueue::{NotPlaced, Ticket};
use crate::money::Usd;
use crate::task_events::TaskEventSink;
use crate::telemetry;
use crate::telemetry::stages;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Everything the life of one task needs besides the manager.
pub struct TaskLife {
    pub task_id: String,
    pub route: Route,
    pub start: Start,
    pub sink: TaskEventSink,
    pub cancel: CancellationToken,
    pub accepted: Instant,
    /// The caller's task slot (`limits.per_caller_max_tasks`), given back when the life ends;
    /// none for a task a restarted manager resumed.
    pub slot: Option<TaskSlot>,
    /// Whether the task may still escalate to the paid tier, or already did.
    pub escalation: Escalation,
    /// The task's record, when its insert was queued but not awaited at admission (a task id the
    /// manager made up cannot be taken): awaited before the task is sent to a programmer (a dry
    /// run's after its result, with which it is committed: see the Start step).
    pub recorded: Option<Recorded>,
    /// How many attempts of its current leg were lost on programmers that never had them (see
    /// [`tried`]): none for a new task; for a resumed one, as its record says.
    pub unsent: u32,
}

/// A queued insert of a task's record (see [`TaskLife::recorded`]).
pub type Recorded = futures::future::BoxFuture<
    'static,
    Result<crate::manager::store::InsertOutcome, crate::manager::store::StoreError>,
>;

/// Where a task's life begins.
pub enum Start {
    /// Accepted (or resumed while queued): wait for a placement.
    Queued(Ticket),
    /// Accepted and placed at once (nothing was waiting).
    Routed(Placement),
    /// A restarted manager resuming a task the previous process had placed.
    Placed(Resumed),
}

/// A placed task taken over from a previous manager process.
pub struct Resumed {
    pub member: Arc<Member>,
    /// Its hold, still open in the ledger.
    pub hold: Option<Hold>,
    /// The last programmer event the previous process relayed.
    pub upstream_seq: u64,
}

/// The states of a task's life (see the module docs).
enum Step {
    Wait(Ticket),
    Start(Placement),
    /// The programmer's stream boxed: every step is kept in the task's future for its whole life,
    /// so the largest variant sizes every task, waiting ones included.
    Relay(OnProgrammer, Box<Upstream>),
    Follow(OnProgrammer),
    Lost(OnProgrammer, Loss),
    /// A result from (or, after the last loss, about) this programmer: escalate, or Done.
    Finished(Arc<Member>, Box<TaskResult>),
    Done(Box<TaskResult>),
    /// The manager is stopping: the task is left for the next process, not ended.
    Abandon,
}

/// A task on one programmer in one dispatch attempt.
struct OnProgrammer {
    member: Arc<Member>,
    hold: Option<Hold>,
    /// Its programmer-side id.
    attempt_id: String,
    /// The last programmer event relayed.
    after_seq: u64,
    /// Whether the programmer took it, as far as the manager knows.
    started: Started,
    /// Avoid this programmer on a reroute, until it comes back after the placement: taken when
    /// the task was placed, so a programmer that restarted since (and handed the task back from
    /// its journal) is a candidate again at once.
    exclusion: Exclusion,
    /// Its stream's breaks since it last carried anything.
    breaks: Breaks,
    /// The caller's cancel was passed on (StopTask): the programmer ends the task itself, with
    /// what it spent, so a stream that breaks after it is followed to that result rather than
    /// ended at once as cancelled with its spend unknown.
    stop_sent: bool,
    /// The task's lease, fixed as the manager accepted it and sent with every Execute
    /// (`TaskRequest.lease_s`): how long the programmer keeps running it unfollowed ([`lease`]).
    ///
    /// [`lease`]: OnProgrammer::lease
    accepted_lease: Duration,
}

impl OnProgrammer {
    /// How long this manager tries to reach the task's programmer before taking the task for
    /// stopped there: the lease it was accepted with, or the one in force when that is longer (a
    /// programmer of an earlier release ignores `TaskRequest.lease_s` and holds the task by its
    /// own file's lease; waiting longer only delays a reroute).
    fn lease(&self, mgr: &Manager) -> Duration {
        self.accepted_lease.max(mgr.task_lease())
    }
}

/// Whether a programmer took an attempt, as far as the manager knows: what the attempt's hold,
/// the count of attempts tried and the search for a kept edit go by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Started {
    /// It never started there: Execute not answered yet, refused at admission, or the programmer
    /// said it never had it (it journals every task it accepts). Its hold is released.
    No,
    /// Execute failed without a clear answer (the connection failed around the call): it may
    /// have, until the programmer says. Treated as started unless it says otherwise, so an
    /// attempt that may be spending keeps its hold and counts as tried.
    Maybe,
    /// It answered Execute, or a follow found the task there.
    Yes,
}

impl Started {
    /// Whether the attempt may have spent money there: anything but a known "no".
    fn maybe(self) -> bool {
        self != Self::No
    }
}

/// The breaks of a task's stream on one programmer since the stream last carried anything (an
/// event or a heartbeat). A connection that drops is followed again at once. A stream that breaks
/// every time it is followed (the programmer answers WatchTask, then fails the stream: a journal
/// it can no longer read back, an event the manager cannot decode) is followed again after a
/// growing pause, and given up as lost once it has carried nothing for the task's lease, instead
/// of being followed again without end, a log line each time.
#[derive(Default)]
struct Breaks {
    /// Breaks in a row with nothing carried between them.
    count: u32,
    /// When the first of them happened.
    since: Option<Instant>,
}

impl Breaks {
    /// The stream carried something: it works.
    fn heard(&mut self) {
        if self.count > 0 {
            *self = Breaks::default();
        }
    }

    /// Counts a break; true when the stream has carried nothing for `lease` since the first break
    /// of the run.
    fn broke(&mut self, lease: Duration) -> bool {
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);
        self.count += 1;
        now.duration_since(since) >= lease
    }

    /// The pause before following again: none after a first break, then from
    /// [`FIRST_RETRY_DELAY`] doubling up to [`MAX_RETRY_DELAY`].
    fn pause(&self) -> Duration {
        match self.count {
            0 | 1 => Duration::ZERO,
            n => FIRST_RETRY_DELAY
                .saturating_mul(1 << (n - 2).min(16))
                .min(MAX_RETRY_DELAY),
        }
    }
}

/// Why a task left a programmer unfinished.
struct Loss {
    reason: String,
    /// What it spent there, when the programmer said.
    spent: Option<Usd>,
}

/// Runs a task to its result (or, when the manager stops, leaves it for the next process).
///
/// Not an `async fn`: that would keep the whole `TaskLife` in its future beside the fields taken
/// out of it, for as long as the task lives. The future captures each field once, and the first
/// step is decided before it.
pub fn run(mgr: Arc<Manager>, life: TaskLife) -> impl Future<Output = ()> + Send {
    let TaskLife {
        task_id,
        mut route,
        start,
        sink,
        cancel,
        accepted,
        slot,
        mut escalation,
        mut recorded,
        mut unsent,
    } = life;
    // Placed at admission: its queue wait, in the trace as every task's is, was nil (the span is
    // made inside the future, under the task's span).
    let routed = matches!(start, Start::Routed(_));
    // A budget hold was made for the task (by this process, or by the one that placed a resumed
    // task): its settlement is made durable before the result is published
    // (`BudgetLedger::durable`).
    let mut held = matches!(&start, Start::Placed(resumed) if resumed.hold.is_some());
    // A dry run's record and placements, committed with its events rather than before its
    // Execute (see Start): awaited once its result is, to report a write that failed.
    let mut dry_run_writes: Option<futures::future::BoxFuture<'static, ()>> = None;
    let mut step = match start {
        Start::Queued(ticket) => Step::Wait(ticket),
        Start::Routed(placement) => Step::Start(placement),
        Start::Placed(resumed) => Step::Follow(OnProgrammer {
            attempt_id: attempt_task_id(&task_id, route.request.dispatch_attempt),
            exclusion: Exclusion::until_back(&resumed.member),
            member: resumed.member,
            hold: resumed.hold,
            after_seq: resumed.upstream_seq,
            started: Started::Yes,
            breaks: Breaks::default(),
            stop_sent: false,
            accepted_lease: lease_of(&route.request),
        }),
    };
    async move {
        let _slot = slot;
        stages::at(&task_id, "life");
        if routed {
            drop(telemetry::spans::queue_wait("manager"));
        }
        let strategy = route.strategy;
        let mut previous: Option<(String, String)> = None;
        // Attempts lost on programmers that had started them, for an ALREADY_KEPT result.
        let mut lost: Vec<LostAttempt> = Vec::new();
        // When the task's current wait for a programmer began: at admission, then at each
        // reroute or escalation. A refusal at a programmer's admission does not start a new one.
        let mut wait_began = accepted;
        let mut result = loop {
            let dispatch_attempt = route.request.dispatch_attempt;
            step = match step {
                Step::Wait(mut ticket) => {
                    // Boxed, like every other await of this loop: the task's future is as large as
                    // its largest state for as long as the task lives (thousands of tasks may wait
                    // or run at once), so each state's room is allocated only while it lasts.
                    let waiting = Box::pin(wait_for_placement(&mgr, &mut ticket, &sink, &cancel));
                    let placed = waiting
                        .instrument(telemetry::spans::queue_wait("manager"))
                        .await;
                    // Placed or not, it holds no place in the queue any more. A placed task's place
                    // was given back when it was placed; one that stopped waiting asks for a pass.
                    drop(ticket);
                    match placed {
                        Ok(placement) => Step::Start(placement),
                        Err(end) => {
                            mgr.scheduler.nudge();
                            end
                        }
                    }
                }

                // Boxed, like every passing state: its locals (the placement, the store's write,
                // the Execute call and its answer) would otherwise keep ~0.9 KiB of room in the
                // task's future for the task's whole life.
                Step::Start(placement) => Box::pin(async {
                    let candidates = placement.candidate_ids(&mgr.pool);
                    let Placement {
                        member,
                        hold,
                        response,
                        ..
                    } = placement;
                    let programmer = member.spec.id.clone();
                    // Write-ahead: the placement is durable before Execute is sent (the call goes out
                    // when `response` is first polled), so a manager that dies at any point after
                    // this knows where to look for the task; before it, nothing was sent and the
                    // next process releases the hold. A record queued at admission (a made-up id)
                    // is committed with it, in the same transaction, and checked first: without a
                    // record the task is not sent, its hold is released.
                    //
                    // A dry run is the exception: it changes nothing anywhere and holds no budget,
                    // so there is nothing a restarted manager would need to find. Its record and
                    // placement are queued, not committed, and go with the next commit: its first
                    // event's or its result's (a caller learns of the task only from an event, which
                    // is published once committed, so never of a task GetTask could miss). A lone
                    // dry run then costs one commit, not two; a manager that dies before it leaves
                    // no trace of the task, or a record that runs the dry run again.
                    let dry_run = route.request.dry_run && hold.is_none();
                    let running = mgr.store.set_running(
                        if dry_run { Commit::WithNext } else { Commit::Now },
                        &task_id,
                        &programmer,
                        dispatch_attempt,
                        unsent,
                    );
                    if dry_run {
                        let (record, earlier) = (recorded.take(), dry_run_writes.take());
                        let id = task_id.clone();
                        dry_run_writes = Some(Box::pin(async move {
                            if let Some(earlier) = earlier {
                                earlier.await;
                            }
                            if let Some(record) = record
                                && let Err(e) = record.await
                            {
                                tracing::error!(task_id = %id, "task store: the dry run was not recorded: {e}");
                            }
                            if let Err(e) = running.await {
                                tracing::warn!(task_id = %id, "task store: {e}");
                            }
                        }));
                    } else {
                        if let Some(record) = recorded.take()
                            && let Err(e) = record.await
                        {
                            tracing::error!(%task_id, "task store: the task was not recorded: {e}");
                            mgr.release(&task_id, hold);
                            return Step::Done(ended(
                                TaskState::Failed,
                                ErrorClass::Internal,
                                &format!("task store: the task was not recorded: {e}"),
                                &programmer,
                            ));
                        }
                        if let Err(e) = running.await {
                            tracing::warn!(%task_id, "task store: {e}");
                        }
                    }
                    // The hold too, before the programmer may spend it (with `power_loss` the
                    // ledger syncs off this thread; at once otherwise).
                    if hold.is_some() {
                        held = true;
                        if let Err(e) = mgr.budget.durable().await {
                            tracing::error!(%task_id, "{e}");
                            mgr.release(&task_id, hold);
                            return Step::Done(ended(
                                TaskState::Failed,
                                ErrorClass::Internal,
                                &e.to_string(),
                                &programmer,
                            ));
                        }
                    }
                    stages::at(&task_id, "recorded");
                    let leg_span = telemetry::spans::route(
                        strategy.name(),
                        &candidates,
                        &programmer,
                        dispatch_attempt,
                    );
                    tracing::debug!(%task_id, %programmer, strategy = strategy.name(), dispatch_attempt, "task assigned");
                    let on = OnProgrammer {
                        attempt_id: attempt_task_id(&task_id, dispatch_attempt),
                        exclusion: Exclusion::until_back(&member),
                        member: member.clone(),
                        hold,
                        after_seq: 0,
                        started: Started::No,
                        breaks: Breaks::default(),
                        stop_sent: false,
                        accepted_lease: lease_of(&route.request),
                    };
                    // Not raced with the caller's cancel: admission answers at once, and a task it
                    // took is then cancelled on the programmer, which reports what it spent.
                    let answered = response.instrument(leg_span).await;
                    stages::at(&task_id, "answered");
                    match answered {
                        Ok(upstream) => {
                            mgr.pool.admitted(&member);
                            Box::pin(taken(&programmer, &mut previous, &sink)).await;
                            Step::Relay(
                                OnProgrammer {
                                    started: Started::Yes,
                                    ..on
                                },
                                Box::new(upstream),
                            )
                        }
                        Err(status) if status.code() == tonic::Code::InvalidArgument => {
                            mgr.release(&task_id, on.hold);
                            Step::Done(ended(
                                TaskState::Failed,
                                ErrorClass::BadRequest,
                                status.message(),
                                &programmer,
                            ))
                        }
                        Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                            // Refused at admission: its queue filled since its last report. The task
                            // never started there, so it is neither lost nor a reason to avoid that
                            // programmer: back to the front of the queue, same attempt, hold
                            // released. The programmer counts as full until it reports again.
                            tracing::info!(%task_id, %programmer, reason = %status.message(), "programmer full at admission; task re-queued");
                            mgr.pool.refused_at_admission(&member);
                            mgr.release(&task_id, on.hold);
                            // The same wait goes on, with what is left of it: a programmer that
                            // keeps refusing while it reports room cannot hold the task for ever.
                            let left = mgr.max_wait(&route).saturating_sub(wait_began.elapsed());
                            Step::Wait(mgr.scheduler.resubmit(route.clone(), left))
                        }
                        Err(status) if is_connection_refused(&status) => {
                            // Nothing listens at its address: the call was never sent (a request
                            // goes out only on a connection made), so the task never started there
                            // and there is nothing to follow, on a last attempt either.
                            Step::Lost(
                                on,
                                Loss {
                                    reason: format!(
                                        "{programmer} is not running (connection refused): Execute never reached it"
                                    ),
                                    spent: None,
                                },
                            )
                        }
                        Err(status) => {
                            // No clear answer (the connection failed around the call): whether the
                            // programmer took the task, only it can say.
                            tracing::warn!(%task_id, %programmer, "Execute failed ({}: {}); asking whether the task started", status.code(), status.message());
                            Step::Follow(OnProgrammer {
                                started: Started::Maybe,
                                ..on
                            })
                        }
                    }
                })
                .await,

                Step::Relay(mut on, mut upstream) => {
                    // Boxed too: while a task waits in the queue (for most tasks of a deep
                    // queue, their longest state) its future would otherwise keep room for the
                    // relay's state as well.
                    let relayed = Box::pin(relay(
                        &mgr,
                        &mut upstream,
                        &mut on,
                        &sink,
                        &cancel,
                        strategy.name(),
                        dispatch_attempt,
                    ))
                    .await;
                    drop(upstream);
                    match relayed {
                        Relayed::Result(result)
                            if result.error_class == ErrorClass::HandedBack as i32 =>
                        {
                            let loss = Loss {
                                spent: result.cost(),
                                reason: result.error_message,
                            };
                            Step::Lost(on, loss)
                        }
                        Relayed::Result(result) => {
                            mgr.settle(&task_id, on.hold, result.cost());
                            Step::Finished(on.member, result)
                        }
                        Relayed::Broken(reason) if on.breaks.broke(on.lease(&mgr)) => {
                            // The programmer answers but its stream carries nothing: stopped
                            // there (best effort; else its lease stops it), the task is lost.
                            let reason = format!(
                                "its stream broke {} times in a row, carrying nothing for {} s; last: {reason}",
                                on.breaks.count,
                                on.lease(&mgr).as_secs()
                            );
                            Box::pin(cancel_on_programmer(&on.member, &on.attempt_id)).await;
                            Step::Lost(
                                on,
                                Loss {
                                    reason,
                                    spent: None,
                                },
                            )
                        }
                        Relayed::Broken(reason) => {
                            tracing::warn!(%task_id, programmer = %on.member.spec.id, %reason, after_seq = on.after_seq,
                                breaks = on.breaks.count, retry_in_ms = on.breaks.pause().as_millis() as u64,
                                "stream broke; following the task again");
                            Step::Follow(on)
                        }
                        Relayed::Stopping => Step::Abandon,
                    }
                }

                Step::Follow(on) => {
                    let last = tried(&mgr, dispatch_attempt, escalation.leg_start(), unsent)
                        >= mgr.max_dispatch_attempts();
                    match Box::pin(follow(&mgr, &on, &cancel, last)).await {
                    Ok(stream) => {
                        let programmer = on.member.spec.id.clone();
                        if on.started != Started::Yes {
                            Box::pin(taken(&programmer, &mut previous, &sink)).await;
                        }
                        tracing::info!(%task_id, %programmer, after_seq = on.after_seq, "following the task again");
                        let upstream = Upstream::follow(&mgr.pool, &on.member, stream);
                        Step::Relay(
                            OnProgrammer {
                                started: Started::Yes,
                                ..on
                            },
                            Box::new(upstream),
                        )
                    }
                    Err(Gone::NotThere { reason, never_had }) => Step::Lost(
                        // A programmer journals every task it accepts: one that does not have the
                        // task never started it, and spent nothing on it.
                        OnProgrammer {
                            started: if never_had { Started::No } else { on.started },
                            ..on
                        },
                        Loss {
                            reason,
                            spent: None,
                        },
                    ),
                    Err(Gone::Cancelled) => {
                        // Cancelled while its programmer cannot be reached: what it spent there is
                        // unknown (kept as the whole hold); that programmer stops it when the lease
                        // runs out.
                        let programmer = on.member.spec.id.clone();
                        if on.started.maybe() {
                            mgr.settle(&task_id, on.hold, None);
                        } else {
                            mgr.release(&task_id, on.hold);
                        }
                        Step::Done(ended(
                            TaskState::Cancelled,
                            ErrorClass::Cancelled,
                            "cancelled",
                            &programmer,
                        ))
                    }
                    Err(Gone::Stopping) => Step::Abandon,
                    }
                }

                Step::Lost(on, loss) => {
                    let programmer = on.member.spec.id.clone();
                    let Loss { reason, spent } = loss;
                    // Known spend (a hand-back) settles exactly; a task that never started there
                    // releases its hold; otherwise (started, or maybe) nobody knows what it spent:
                    // the whole hold.
                    match (on.started.maybe(), spent) {
                        (_, Some(cost)) => mgr.settle(&task_id, on.hold, Some(cost)),
                        (false, None) => mgr.release(&task_id, on.hold),
                        (true, None) => mgr.settle(&task_id, on.hold, None),
                    }
                    tracing::warn!(%task_id, %programmer, %reason, "programmer lost the task");
                    if on.started.maybe() {
                        lost.push(LostAttempt {
                            member: on.member.clone(),
                            attempt_id: on.attempt_id.clone(),
                            after_seq: on.after_seq,
                            lease: on.accepted_lease,
                        });
                    } else {
                        unsent += 1;
                    }
                    let tried = tried(&mgr, dispatch_attempt, escalation.leg_start(), unsent);
                    if cancel.is_cancelled() {
                        // Lost after the caller cancelled (the programmer went away while it was
                        // followed to its own result): not dispatched again.
                        Step::Done(ended(
                            TaskState::Cancelled,
                            ErrorClass::Cancelled,
                            &format!("cancelled; then {reason}"),
                            &programmer,
                        ))
                    } else if tried >= mgr.max_dispatch_attempts() {
                        let msg = format!(
                            "gave up after {tried} programmer(s); last: {programmer}: {reason}"
                        );
                        let result = ended(
                            TaskState::Failed,
                            ErrorClass::Unavailable,
                            &msg,
                            &programmer,
                        );
                        Step::Finished(on.member, result)
                    } else {
                        // Before re-submitting: the scheduler routes (and reserves budget for) its
                        // own copy of the route, so it must carry the new attempt number.
                        route.request.dispatch_attempt = dispatch_attempt + 1;
                        route.exclude.push(on.exclusion);
                        previous = Some((programmer, reason));
                        wait_began = Instant::now();
                        Step::Wait(mgr.scheduler.resubmit(route.clone(), mgr.max_wait(&route)))
                    }
                }

                Step::Finished(member, result) => {
                    // Another attempt kept the task's edit: one lost with its programmer, which
                    // (restarted) ends it with the kept edit as its result. That is the task's.
                    let kept = if result.error_class == ErrorClass::AlreadyKept as i32 {
                        Box::pin(kept_by_a_lost_attempt(&mgr, &lost, &result, &cancel)).await
                    } else {
                        None
                    };
                    let (member, mut result) = kept.unwrap_or((member, result));
                    result.tier = escalation::tier_name(member.spec.paid).to_string();
                    for attempt in &mut result.attempts {
                        if attempt.programmer_id.is_empty() {
                            attempt.programmer_id.clone_from(&member.spec.id);
                        }
                    }
                    let from = (member.spec.id.as_str(), member.spec.paid);
                    let next_attempt = dispatch_attempt + 1;
                    // A task its caller cancelled goes nowhere else, whatever its result.
                    let decision = if cancel.is_cancelled() {
                        Decision::No
                    } else {
                        escalation::decide(&mgr, &escalation, &task_id, from, &result, next_attempt)
                    };
                    match decision {
                        Decision::Escalate(escalated) => {
                            // Unboxed only after the await: held across it, the route and the
                            // event would size every task's future.
                            let event = &escalated.1;
                            tracing::warn!(%task_id, from = %member.spec.id, reason = %event.reason,
                            dispatch_attempt = next_attempt, "task escalated to the paid tier");
                            Box::pin(sink.send(Kind::Escalated(Box::new(event.clone())))).await;
                            let (mut paid_route, event) = *escalated;
                            // The paid leg keeps the lease the task was accepted with.
                            paid_route.request.lease_s = route.request.lease_s;
                            escalation = Escalation::Escalated(Box::new(event));
                            route = paid_route;
                            previous = None;
                            unsent = 0;
                            wait_began = Instant::now();
                            Step::Wait(mgr.scheduler.resubmit(route.clone(), mgr.max_wait(&route)))
                        }
                        Decision::Refused(why) => {
                            tracing::info!(%task_id, from = %member.spec.id, %why, "task not escalated");
                            result.escalation = why;
                            Step::Done(result)
                        }
                        Decision::No => Step::Done(result),
                    }
                }

                Step::Done(result) => break result,
                Step::Abandon => {
                    tracing::info!(%task_id, "manager stopping: the task is left to the next manager");
                    return;
                }
            };
        };
        if let Escalation::Escalated(escalated) = &escalation {
            result = Box::new(escalation::merge_into(escalated, *result));
        }
        // The caller's view: from acceptance by the manager to the result.
        result.duration_ms = accepted.elapsed().as_millis() as u64;
        stages::at(&task_id, "result");
        if held && let Err(e) = mgr.budget.durable().await {
            // The settlement is in the ledger's WAL (it survives a process crash); a host that
            // loses power now books the hold as spent on restart, never less.
            tracing::error!(%task_id, "{e}");
        }
        Box::pin(mgr.finish_task(&task_id, &sink, result)).await;
        // Committed with the result (or earlier): their outcome, for the log.
        if let Some(writes) = dry_run_writes {
            writes.await;
        }
        stages::at(&task_id, "finished");
    }
}

/// How many programmers the task has been tried on in its current leg, up to and including
/// `dispatch_attempt`: attempts are numbered per placement, but an attempt the programmer never
/// had (`unsent`: a manager that recorded the placement died before sending it, or Execute got no
/// answer and the programmer says it has no such task) tried nothing there. Those are not counted,
/// up to `max_dispatch_attempts` of them, so a task is placed at most twice that often.
fn tried(mgr: &Manager, dispatch_attempt: u32, leg_start: u32, unsent: u32) -> u32 {
    (dispatch_attempt + 1 - leg_start).saturating_sub(unsent.min(mgr.max_dispatch_attempts()))
}

/// The lease a task was accepted with (`TaskRequest.lease_s`, at least a second).
fn lease_of(request: &crate::contract::v1::TaskRequest) -> Duration {
    Duration::from_secs(request.lease_s.max(1).into())
}

/// A dispatch attempt lost on a programmer that had started it.
struct LostAttempt {
    member: Arc<Member>,
    attempt_id: String,
    /// The last of its events relayed.
    after_seq: u64,
    /// The task's lease as accepted ([`OnProgrammer::lease`]).
    lease: Duration,
}

/// The result of the lost attempt that kept the task's edit, `already_kept` naming that edit's
/// branch and commit: each lost attempt's programmer is asked (newest first), waited for up to the
/// lease if its process is gone ([`follow`] as on a last attempt). A programmer killed after it
/// kept the edit and before it journaled the result ends the attempt, on restart, with the result
/// it recorded before keeping (see `programmer::runs`): Succeeded, on that branch and commit.
async fn kept_by_a_lost_attempt(
    mgr: &Manager,
    lost: &[LostAttempt],
    already_kept: &TaskResult,
    cancel: &CancellationToken,
) -> Option<(Arc<Member>, Box<TaskResult>)> {
    for attempt in lost.iter().rev() {
        let on = OnProgrammer {
            member: attempt.member.clone(),
            hold: None,
            attempt_id: attempt.attempt_id.clone(),
            after_seq: attempt.after_seq,
            started: Started::Yes,
            exclusion: Exclusion::until_back(&attempt.member),
            breaks: Breaks::default(),
            stop_sent: false,
            accepted_lease: attempt.lease,
        };
        let Ok(mut stream) = follow(mgr, &on, cancel, true).await else {
            continue;
        };
        let ended = tokio::time::timeout(on.lease(mgr), async {
            while let Ok(Some(event)) = stream.message().await {
                if let Some(Kind::Result(result)) = event.kind {
                    return Some(result);
                }
            }
            None
        });
        let Ok(Some(result)) = ended.await else {
            continue;
        };
        if result.status == TaskState::Succeeded as i32
            && result.branch == already_kept.branch
            && result.commit == already_kept.commit
        {
            tracing::warn!(task_id = %attempt.attempt_id, programmer = %attempt.member.spec.id,
                branch = %result.branch, "an attempt lost with its programmer had kept the task's edit: its result is the task's");
            return Some((attempt.member.clone(), result));
        }
    }
    None
}

/// The programmer took the task: after a reroute, say where it went.
async fn taken(programmer: &str, previous: &mut Option<(String, String)>, sink: &TaskEventSink) {
    if let Some((from, reason)) = previous.take() {
        let rerouted = Rerouted {
            from_programmer: from,
            to_programmer: programmer.to_owned(),
            reason,
        };
        sink.send(Kind::Rerouted(rerouted)).await;
    }
}

/// Waits for the scheduler to place the task, relaying queue positions. Otherwise: the step
/// that ends the task (or abandons it when the manager stops).
async fn wait_for_placement(
    mgr: &Manager,
    ticket: &mut Ticket,
    sink: &TaskEventSink,
    cancel: &CancellationToken,
) -> Result<Placement, Step> {
    let failed = |class, message: &str| Step::Done(ended(TaskState::Failed, class, message, ""));
    let mut first = true;
    loop {
        tokio::select! {
            placed = &mut ticket.placement => {
                return match placed {
                    Ok(Ok(p)) => Ok(p),
                    Ok(Err(NotPlaced::BudgetExhausted)) => Err(failed(ErrorClass::BudgetExhausted,
                        &NotPlaced::BudgetExhausted.to_string())),
                    Ok(Err(e @ NotPlaced::Timeout(_))) => Err(failed(ErrorClass::QueueTimeout, &e.to_string())),
                    Ok(Err(NotPlaced::ShuttingDown)) | Err(_) => Err(Step::Abandon),
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
                // The scheduler may have placed the task a moment ago: close the channel (a
                // later placement bounces back to the scheduler, which releases it) and give up
                // one already sent, so no hold outlives the task.
                ticket.placement.close();
                if let Ok(Ok(placement)) = ticket.placement.try_recv() {
                    placement.abandon(&mgr.budget);
                }
                return Err(Step::Done(ended(TaskState::Cancelled, ErrorClass::Cancelled, "cancelled while queued", "")));
            }
        }
    }
}

/// How a relay ended.
enum Relayed {
    Result(Box<TaskResult>),
    Broken(String),
    Stopping,
}

/// Relays the programmer's events into the task's log until its result, a break, or the manager
/// stopping. A caller's cancel is passed on once; the relay then waits for the programmer's
/// result (a cancelled one, or the real one if the task had just finished).
async fn relay(
    mgr: &Manager,
    upstream: &mut Upstream,
    on: &mut OnProgrammer,
    sink: &TaskEventSink,
    cancel: &CancellationToken,
    strategy: &str,
    dispatch_attempt: u32,
) -> Relayed {
    loop {
        let next = tokio::select! {
            m = upstream.stream.message() => m,
            _ = cancel.cancelled(), if !on.stop_sent => {
                on.stop_sent = true;
                Box::pin(cancel_on_programmer(&on.member, &on.attempt_id)).await;
                continue;
            }
            _ = mgr.stop.cancelled() => return Relayed::Stopping,
        };
        let event: TaskEvent = match next {
            Ok(Some(event)) => event,
            Ok(None) => {
                return Relayed::Broken("the programmer's stream ended without a result".into());
            }
            Err(status) => {
                return Relayed::Broken(format!(
                    "stream broke: {}: {}",
                    status.code(),
                    status.message()
                ));
            }
        };
        on.breaks.heard();
        // Heartbeats carry seq 0; anything at or before the cursor was relayed already.
        if event.seq <= on.after_seq {
            continue;
        }
        let seq = event.seq;
        match event.kind {
            Some(Kind::Result(result)) => {
                on.after_seq = seq;
                return Relayed::Result(result);
            }
            Some(Kind::Assigned(assigned)) => {
                let assigned = Assigned {
                    strategy: strategy.to_string(),
                    dispatch_attempt,
                    ..assigned
                };
                // Boxed: a journal write is a passing state, the relay's wait the lasting one.
                Box::pin(sink.send_relayed(Kind::Assigned(assigned), seq)).await;
                stages::at(sink.task_id(), "relayed");
            }
            Some(Kind::Heartbeat(_)) | None => {}
            Some(kind) => {
                Box::pin(sink.send_relayed(kind, seq)).await;
            }
        }
        on.after_seq = seq;
    }
}

/// Asks the programmer to stop the task (best effort: when it cannot be reached, the relay or the
/// follow-up decides, and the programmer's lease stops an orphan).
async fn cancel_on_programmer(member: &Member, attempt_id: &str) {
    let mut client = ProgrammerClient::new(member.channel());
    let request = StopTaskRequest {
        task_id: attempt_id.to_owned(),
    };
    let call = client.stop_task(telemetry::propagation::outgoing(request));
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(_)) => {}
        Ok(Err(status)) => {
            tracing::warn!(task_id = %attempt_id, programmer = %member.spec.id, "StopTask failed: {}", status.message());
        }
        Err(_) => {
            tracing::warn!(task_id = %attempt_id, programmer = %member.spec.id, "StopTask timed out");
        }
    }
}

/// How long one call to re-attach or cancel may take before it counts as no answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// First pause between attempts to follow a task again.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
/// Longest pause between attempts to follow a task again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Why following a task on its programmer again failed.
enum Gone {
    /// The programmer does not run the task (any more): it is lost there. `never_had`: it says
    /// it has no such task (NOT_FOUND), rather than being gone or unreachable.
    NotThere { reason: String, never_had: bool },
    /// The caller cancelled meanwhile.
    Cancelled,
    /// The manager is stopping.
    Stopping,
}

/// Follows the task on its programmer again with WatchTask from the last seq relayed (after the
/// pause its stream's breaks call for), retrying while the programmer cannot be reached, for up
/// to the task's lease.
///
/// A programmer whose process is gone (connection refused) has lost the task, and the task is
/// dispatched elsewhere at once — except on its `last_attempt`, when no other attempt can follow:
/// then the programmer is waited for like an unreachable one, up to the lease. Restarted, it tells
/// how the attempt ended, and only it can: it may have kept the task's edit before it died.
async fn follow(
    mgr: &Manager,
    on: &OnProgrammer,
    cancel: &CancellationToken,
    last_attempt: bool,
) -> Result<tonic::Streaming<TaskEvent>, Gone> {
    let programmer = &on.member.spec.id;
    let pause = on.breaks.pause();
    if !pause.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = cancel.cancelled(), if !on.stop_sent => return Err(Gone::Cancelled),
            _ = mgr.stop.cancelled() => return Err(Gone::Stopping),
        }
    }
    let deadline = Instant::now() + on.lease(mgr);
    let mut delay = FIRST_RETRY_DELAY;
    let mut client = ProgrammerClient::new(on.member.channel());
    loop {
        let request = WatchTaskRequest {
            task_id: on.attempt_id.clone(),
            after_seq: on.after_seq,
        };
        let call = tokio::time::timeout(
            CALL_TIMEOUT,
            client.watch_task(telemetry::propagation::outgoing(request)),
        );
        let answer = tokio::select! {
            a = call => a,
            _ = cancel.cancelled(), if !on.stop_sent => return Err(Gone::Cancelled),
            _ = mgr.stop.cancelled() => return Err(Gone::Stopping),
        };
        let error = match answer {
            Ok(Ok(response)) => return Ok(response.into_inner()),
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
                return Err(Gone::NotThere {
                    reason: format!("{programmer} does not have the task: {}", status.message()),
                    never_had: true,
                });
            }
            Ok(Err(status)) if is_connection_refused(&status) && !last_attempt => {
                return Err(Gone::NotThere {
                    reason: format!(
                        "{programmer} is not running (connection refused): the task stopped with its process"
                    ),
                    never_had: false,
                });
            }
            Ok(Err(status)) => format!("{}: {}", status.code(), status.message()),
            Err(_) => format!("no answer within {} s", CALL_TIMEOUT.as_secs()),
        };
        if Instant::now() >= deadline {
            return Err(Gone::NotThere {
                reason: format!(
                    "{programmer} unreachable for the task's lease ({} s), so it has stopped the task; last error: {error}",
                    on.lease(mgr).as_secs()
                ),
                never_had: false,
            });
        }
        tracing::info!(task_id = %on.attempt_id, %programmer, %error, retry_in_ms = delay.as_millis() as u64,
            "cannot follow the task yet");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled(), if !on.stop_sent => return Err(Gone::Cancelled),
            _ = mgr.stop.cancelled() => return Err(Gone::Stopping),
        }
        delay = (delay * 2).min(MAX_RETRY_DELAY);
    }
}

/// True when the call failed because nothing listens at the programmer's address: its process
/// is gone, and with it every task it ran.
fn is_connection_refused(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = e.source();
    }
    status.message().contains("Connection refused")
}

/// A result the manager makes itself (the task never reached or lost its programmer); boxed, as
/// a result travels from its source to the task's log.
pub fn ended(
    status: TaskState,
    class: ErrorClass,
    message: &str,
    programmer: &str,
) -> Box<TaskResult> {
    Box::new(TaskResult {
        status: status as i32,
        programmer_id: programmer.to_string(),
        error_class: class as i32,
        error_message: message.to_string(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_keeps_breaking_is_followed_ever_more_slowly_then_given_up() {
        let lease = Duration::from_secs(60);
        let ms = Duration::from_millis;
        let mut breaks = Breaks::default();
        let first = Instant::now();
        let mut pauses = Vec::new();
        while !breaks.broke(lease) {
            let pause = breaks.pause();
            pauses.push(pause);
            // The follow, then the next break, a moment after the pause.
            tokio::time::advance(pause + ms(1)).await;
            assert!(pauses.len() < 1000, "never given up");
        }
        // A first break (a dropped connection) is followed again at once.
        assert_eq!(
            pauses[..8],
            [
                ms(0),
                ms(50),
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(2000)
            ]
        );
        assert!(pauses[8..].iter().all(|p| *p == MAX_RETRY_DELAY));
        // Given up at the first break after the lease: no earlier, and not a pause later.
        let given_up = first.elapsed();
        assert!(given_up >= lease, "{given_up:?}");
        assert!(given_up <= lease + MAX_RETRY_DELAY + ms(1), "{given_up:?}");
        assert_eq!(breaks.count as usize, pauses.len() + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_carries_something_between_breaks_is_never_given_up() {
        let lease = Duration::from_secs(60);
        let mut breaks = Breaks::default();
        // 2,500 s of breaks, far past the lease, each after a heartbeat.
        for _ in 0..500 {
            assert!(!breaks.broke(lease));
            assert_eq!(breaks.pause(), Duration::ZERO);
            tokio::time::advance(Duration::from_secs(5)).await;
            breaks.heard();
        }
        // Once it carries nothing, the pauses start over.
        assert!(!breaks.broke(lease));
        assert!(!breaks.broke(lease));
        assert_eq!(breaks.pause(), FIRST_RETRY_DELAY);
    }
}
