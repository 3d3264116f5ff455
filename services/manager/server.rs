//! The `pas.v1.ProgrammerPool` gRPC service: admission of a task (validation, eligibility,
//! idempotency, queue bound) and the three query/cancel calls.

use crate::contract::v1::programmer_pool_server::ProgrammerPool;
use crate::contract::v1::{
    CancelTaskRequest, CancelTaskResponse, DispatchRequest, GetPoolStatusRequest, GetTaskRequest,
    ListTasksRequest, ListTasksResponse, PoolStatus, TaskEvent, TaskRecord, TaskRequest, TaskState,
    WatchTaskRequest, task_event::Kind,
};
use crate::manager::Manager;
use crate::manager::admission;
use crate::manager::auth;
use crate::manager::balancer::Route;
use crate::manager::dispatch::{self, Start, TaskLife};
use crate::manager::eligibility::{self, EligibilityError, PaidBudget, TaskNeeds};
use crate::manager::escalation::Escalation;
use crate::manager::membership::Member;
use crate::manager::store::{InsertOutcome, NewTask};
use crate::manager::strategy::{StrategyKind, group_key};
use crate::manager::waitqueue::Submitted;
use crate::manager::{status, validate};
use crate::task_events::{EventStream, HEARTBEAT_EVERY, TaskEventSink};
use crate::telemetry::stages;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

/// ListTasks page size when the caller names none, and the largest it may ask for.
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 1000;

/// The gRPC face of the [`Manager`].
#[derive(Debug, Clone)]
pub struct PoolService {
    mgr: Arc<Manager>,
}

impl PoolService {
    pub fn new(mgr: Arc<Manager>) -> Self {
        Self { mgr }
    }

    /// The manager this service answers for (the HTTP face's streams read from it directly).
    pub fn manager(&self) -> &Arc<Manager> {
        &self.mgr
    }
}

/// Records a new task `task_id` for `req`, or, when the id is known for the same request, a
/// stream attached to it from its first event (ALREADY_EXISTS when the id names a different
/// request). `lease_s`: the lease a new one is accepted with.
async fn insert(
    mgr: &Arc<Manager>,
    req: &DispatchRequest,
    task_id: &str,
    caller: Option<&auth::Caller>,
    lease_s: u32,
) -> Result<Inserted, Status> {
    match mgr
        .store
        .insert(&new_task(req, task_id, caller, lease_s))
        .await
    {
        Ok(InsertOutcome::Inserted) => Ok(Inserted::New),
        Ok(InsertOutcome::AlreadyExists(record)) => {
            Ok(Inserted::Known(follow(mgr, &record, 0, None)?))
        }
        Err(crate::manager::store::StoreError::Conflict { task_id }) => {
            Err(Status::already_exists(format!(
                "task_id: {task_id:?} is already used by a different request"
            )))
        }
        Err(e) => Err(Status::internal(format!("task store: {e}"))),
    }
}

/// The record of a new task `task_id` for `req`, owned by its caller (empty without auth), with
/// the lease it is accepted with (`lease_s`).
fn new_task(
    req: &DispatchRequest,
    task_id: &str,
    caller: Option<&auth::Caller>,
    lease_s: u32,
) -> NewTask {
    NewTask {
        lease_s,
        ..NewTask::dispatched_by(task_id, req, caller.map_or("", |c| c.name.as_str()))
    }
}

/// What [`PoolService::insert`] found.
enum Inserted {
    New,
    Known(EventStream),
}

/// What a caller refused for a full queue is told to wait: tasks leave the queue as programmers
/// finish them, which takes seconds at the least.
const QUEUE_FULL_RETRY: Duration = Duration::from_secs(1);

/// How long a new task's response headers wait for its first event (Queued or Assigned).
/// Sent together, they leave in one write and the caller's client wakes once for both; a dry run,
/// whose events follow at once, then reaches its caller in a single write. A programmer slow to
/// answer only delays the headers this much.
const HEADERS_AWAIT_FIRST_EVENT: Duration = Duration::from_millis(20);

/// `stream` once its first event is ready, or after [`HEADERS_AWAIT_FIRST_EVENT`].
async fn with_first_event(stream: EventStream) -> EventStream {
    let mut stream = futures::StreamExt::peekable(stream);
    let _ = tokio::time::timeout(
        HEADERS_AWAIT_FIRST_EVENT,
        std::pin::Pin::new(&mut stream).peek(),
    )
    .await;
    Box::pin(stream)
}

/// Which programmers a route may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierChoice {
    /// Every programmer the request allows (free first when it prefers free).
    AsRequested,
    /// Paid programmers only: an escalated task's second leg (see `escalation`).
    PaidOnly,
}

/// The programmers that may take `req`, best tier first, or why none ever can.
pub fn route_for(mgr: &Manager, req: &DispatchRequest, task_id: &str) -> Result<Route, Status> {
    route_on(mgr, req, task_id, TierChoice::AsRequested)
}

/// [`route_for`], restricted to the tiers `choice` allows.
pub fn route_on(
    mgr: &Manager,
    req: &DispatchRequest,
    task_id: &str,
    choice: TierChoice,
) -> Result<Route, Status> {
    // Only present members are eligible: one that left DNS takes no new task. `present[k]` is
    // the pool index of the k-th.
    let config = mgr.config();
    let all = mgr.pool.members();
    let present: Vec<&Arc<Member>> = all
        .iter()
        .filter(|m| !m.has_left() && (choice == TierChoice::AsRequested || m.spec.paid))
        .collect();
    let members: Vec<eligibility::Member> = present
        .iter()
        .map(|m| eligibility::Member {
            id: m.spec.id.clone(),
            capabilities: m.spec.capabilities.clone(),
            paid: m.spec.paid,
            max_cost_per_job_usd: m.spec.limits.max_cost_per_job_usd,
            available: true,
        })
        .collect();
    let prefer_free = req.prefer_free.unwrap_or(config.pool.prefer_free_default());
    let needs = TaskNeeds {
        capabilities: &req.capabilities,
        prefer_free,
        dry_run: req.dry_run,
    };
    // Up-front, only settled spend can rule paid programmers out: holds of running tasks come
    // back when they settle, so such a task waits instead.
    // A dry run spends nothing, so it needs no look at the ledger.
    let budget = match (!req.dry_run).then(|| mgr.budget.snapshot()) {
        Some(Ok(s)) if mgr.budget.policy().enabled => {
            PaidBudget::Remaining(s.limit.saturating_sub(s.spent))
        }
        _ => PaidBudget::Unlimited,
    };
    let tiers = eligibility::eligible(&members, &needs, budget).map_err(|e| match e {
        EligibilityError::NoneCanServe { .. } if choice == TierChoice::PaidOnly => {
            Status::failed_precondition(if req.capabilities.is_empty() {
                "no paid programmer is configured".to_string()
            } else {
                format!(
                    "no paid programmer has all of the capabilities [{}]",
                    req.capabilities.join(", ")
                )
            })
        }
        EligibilityError::NoneCanServe { .. } => {
            Status::failed_precondition(format!("capabilities: {e}"))
        }
        EligibilityError::BudgetExhausted { .. } => Status::resource_exhausted(e.to_string()),
    })?;
    let tiers: Vec<Vec<usize>> = tiers
        .tiers
        .into_iter()
        .map(|t| t.into_iter().map(|k| present[k].index).collect())
        .collect();
    let tiers = if req.region.is_empty() {
        tiers
    } else {
        eligibility::prefer_region(tiers, |i| all[i].spec.region == req.region)
    };
    let strategy =
        StrategyKind::from_proto(req.strategy).unwrap_or(config.pool.load_balancing.strategy);
    let request = TaskRequest {
        task_id: task_id.to_string(),
        task_description: req.task_description.clone(),
        files: req.files.clone(),
        workspace: req.workspace.clone(),
        run_id: req.run_id.clone(),
        dry_run: req.dry_run,
        timeout_s: req.timeout_s,
        capabilities: req.capabilities.clone(),
        base_ref: req.base_ref.clone(),
        max_cost_usd: 0.0,
        max_cost_nanousd: 0,
        dispatch_attempt: 1,
        // Stays the caller's id on every dispatch attempt (the balancer rewrites only task_id,
        // see `attempt_task_id`): the programmer keeps at most one result under it.
        origin_task_id: task_id.to_string(),
        repo_url: req.repo_url.clone(),
        // The lease this manager waits for the task by, fixed as it accepts the task: the
        // programmer holds the task as long, whatever a re-read file says meanwhile.
        lease_s: u32::try_from(mgr.task_lease().as_secs()).unwrap_or(u32::MAX),
    };
    Ok(Route {
        request,
        tiers: tiers.into_iter().map(|t| mgr.tiers.intern(t)).collect(),
        strategy,
        group: group_key(&req.capabilities),
        exclude: Vec::new(),
        waiting: 1,
        queue_timeout: (req.queue_timeout_s > 0)
            .then(|| Duration::from_secs(req.queue_timeout_s.into())),
    })
}

/// A Dispatch the pool refuses now (its workspace or base ref gone, its `repo_url` no longer
/// allowed, the budget spent, no programmer left with its capabilities) may repeat a task
/// recorded under its id: that one is replayed, as any repeat is, instead of the refusal — a
/// caller whose stream broke re-attaches whatever the pool can take today. Only a refusal reads
/// the store here.
fn replay_or(
    mgr: &Arc<Manager>,
    req: &DispatchRequest,
    caller: Option<&auth::Caller>,
    refused: Status,
) -> Result<Response<EventStream>, Status> {
    if req.task_id.is_empty() || req.task_id.len() > crate::workspace::MAX_ID_LEN {
        return Err(refused);
    }
    let owner = caller.map_or("", |c| c.name.as_str());
    let fingerprint = crate::manager::store::fingerprint(req, owner);
    match mgr.store.get_same(&req.task_id, &fingerprint) {
        Ok(Some(record)) => Ok(Response::new(follow(mgr, &record, 0, None)?)),
        _ => Err(refused),
    }
}

/// The steps of a Dispatch from its record on: the record (awaited for a caller-chosen id, queued
/// with the next commit for a made-up one), the queue or a placement, the task's log and its life
/// spawned. Returns the caller's stream from the first event.
#[allow(clippy::too_many_arguments)]
async fn set_up(
    mgr: Arc<Manager>,
    req: DispatchRequest,
    task_id: String,
    route: Route,
    place: crate::manager::waitqueue::QueuePlace,
    slot: admission::TaskSlot,
    caller: Option<Arc<auth::Caller>>,
    mut stages: stages::Marks,
    accepted: Instant,
) -> Result<EventStream, Status> {
    let made_up_id = req.task_id.is_empty();
    let recorded = if made_up_id {
        // A fresh id cannot be taken, so the record is queued without waiting for the disk,
        // to be committed with the next write: the caller learns the id from the first
        // event, which is journaled after it, and the task's life awaits it (with its
        // placement's write) before sending the task to a programmer (a dry run's goes
        // with its events: see `dispatch`'s Start step).
        let write = mgr.store.insert_with_next(&new_task(
            &req,
            &task_id,
            caller.as_deref(),
            route.request.lease_s,
        ));
        Some(Box::pin(write) as dispatch::Recorded)
    } else {
        let inserted = insert(
            &mgr,
            &req,
            &task_id,
            caller.as_deref(),
            route.request.lease_s,
        );
        if let Inserted::Known(stream) = inserted.await? {
            // The same id arrived twice at once: the first one runs it, this one follows.
            return Ok(stream);
        }
        None
    };
    let start = match place.submit(route.clone(), mgr.max_wait(&route)) {
        Submitted::Placed(placement) => Start::Routed(placement),
        Submitted::Queued(ticket) => Start::Queued(ticket),
    };
    // The caller follows the task's log: a broken stream leaves the task running (the caller
    // re-attaches; CancelTask stops it).
    stages.at("submitted");
    let log = mgr.new_log(&task_id, Vec::new());
    let stream = stages::on_result(log.follow(0, None)?, &task_id);
    let sink = TaskEventSink::new(log.clone());
    let cancel = mgr.register(&task_id, log);
    // One info line per task, when it finishes (manager::finish_task); the steps before it
    // are debug lines: three lines per dry run cost ~5 % of the manager's CPU under load.
    tracing::debug!(%task_id, run_id = %req.run_id, capabilities = ?req.capabilities, dry_run = req.dry_run,
        strategy = route.strategy.name(), "task accepted");
    let span = crate::telemetry::spans::manager_task(
        &task_id,
        &req.run_id,
        route.strategy.name(),
        req.dry_run,
    );
    let escalation = Escalation::for_request(&mgr.config().pool.escalation, req);
    stages.at("spawned");
    stages.attach(&task_id);
    let life = TaskLife {
        task_id,
        route,
        start,
        sink,
        cancel,
        accepted,
        slot: Some(slot),
        escalation,
        recorded,
        unsent: 0,
    };
    tokio::spawn(tracing::Instrument::instrument(
        dispatch::run(mgr, life),
        span,
    ));
    Ok(stream)
}

#[tonic::async_trait]
impl ProgrammerPool for PoolService {
    type DispatchStream = EventStream;
    type WatchTaskStream = EventStream;

    async fn dispatch(
        &self,
        request: Request<DispatchRequest>,
    ) -> Result<Response<Self::DispatchStream>, Status> {
        let accepted = Instant::now();
        let mgr = self.mgr.clone();
        let caller = auth::caller_of(&request);
        let caller_key = admission::caller_key(request.extensions());
        let mut stages = stages::Marks::begin(request.extensions(), caller.is_some());
        let req = request.into_inner();
        // Admission, cheapest first: nothing below the queue place touches a disk or starts a
        // process, so a refused call costs neither (see `admission`).
        let sources = mgr.sources();
        if let Err(refused) = validate::check_fields(&req, sources.repo_allow()) {
            return replay_or(&mgr, &req, caller.as_deref(), refused);
        }
        if !req.task_id.is_empty() && mgr.active_log(&req.task_id).is_some() {
            // The id of a task running here adds no work: it attaches (or is told it names
            // another request), whatever the limits say. (A finished task's id is looked up in
            // the store only once admitted: a refusal reads nothing, and its retry replays.)
            // (An id already recorded: the lease is the record's.)
            return match insert(&mgr, &req, &req.task_id, caller.as_deref(), 0).await? {
                Inserted::New => Err(Status::internal(format!(
                    "task store: {:?} vanished while being attached to",
                    req.task_id
                ))),
                Inserted::Known(stream) => Ok(Response::new(stream)),
            };
        }
        let slot = mgr.admission.task_slot(caller_key)?;
        let place = mgr
            .scheduler
            .reserve()
            .map_err(|full| admission::refusal("manager.max_queue", full, QUEUE_FULL_RETRY))?;
        if let Err(refused) = validate::check_workspace(&req, &sources.workspaces).await {
            return replay_or(&mgr, &req, caller.as_deref(), refused);
        }
        stages.at("workspace");
        let made_up_id = req.task_id.is_empty();
        let task_id = if made_up_id {
            // Time-ordered (UUID v7): the task store's keys on the id then grow at their end, so
            // a commit of many new tasks writes a few index pages, not one page per task.
            uuid::Uuid::now_v7().to_string()
        } else {
            req.task_id.clone()
        };
        let route = match route_for(&mgr, &req, &task_id) {
            Ok(route) => route,
            Err(refused) => return replay_or(&mgr, &req, caller.as_deref(), refused),
        };
        stages.at("routed");
        let set_up = set_up(
            mgr, req, task_id, route, place, slot, caller, stages, accepted,
        );
        let stream = if made_up_id {
            // Nothing to await before the task is registered and running.
            set_up.await?
        } else {
            // Its record's commit is awaited before the task is registered: on a task of its
            // own, so a caller that goes away meanwhile (a reset stream) cannot leave a record
            // without its task. The task is set up and runs; the caller re-attaches by its id.
            // In the request's trace context: the task's span continues the caller's trace.
            tokio::spawn(opentelemetry::context::FutureExt::with_current_context(
                set_up,
            ))
            .await
            .map_err(|e| Status::internal(format!("setting the task up: {e}")))??
        };
        Ok(Response::new(with_first_event(stream).await))
    }

    async fn watch_task(
        &self,
        request: Request<WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        let caller = auth::caller_of(&request);
        let WatchTaskRequest { task_id, after_seq } = request.into_inner();
        if task_id.is_empty() {
            return Err(Status::invalid_argument("task_id: must not be empty"));
        }
        let record = self.get_record(&task_id, caller.as_deref())?;
        Ok(Response::new(follow(
            &self.mgr,
            &record,
            after_seq,
            Some(HEARTBEAT_EVERY),
        )?))
    }

    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let caller = auth::caller_of(&request);
        let req = request.into_inner();
        let page_size = match req.page_size {
            0 => DEFAULT_PAGE,
            n if n > MAX_PAGE => {
                return Err(Status::invalid_argument(format!(
                    "page_size: at most {MAX_PAGE}, got {n}"
                )));
            }
            n => n,
        };
        if let Some(bad) = req
            .states
            .iter()
            .find(|s| TaskState::try_from(**s).is_err())
        {
            return Err(Status::invalid_argument(format!(
                "states: {bad} is not a TaskState"
            )));
        }
        // Callers see their own tasks; admins (and everyone without authentication) see all.
        let owner = caller
            .as_deref()
            .filter(|c| !c.may_access(""))
            .map(|c| c.name.as_str());
        let listed = self
            .mgr
            .store
            .list(
                owner.map(str::to_owned),
                req.run_id,
                req.states,
                page_size as usize,
                req.page_token,
            )
            .await;
        let (tasks, next_page_token) = listed.map_err(|e| match e {
            crate::manager::store::StoreError::BadPageToken(_) => {
                Status::invalid_argument(e.to_string())
            }
            e => Status::internal(format!("task store: {e}")),
        })?;
        Ok(Response::new(ListTasksResponse {
            tasks,
            next_page_token,
        }))
    }

    async fn get_pool_status(
        &self,
        _: Request<GetPoolStatusRequest>,
    ) -> Result<Response<PoolStatus>, Status> {
        Ok(Response::new(status::pool_status(&self.mgr)))
    }

    async fn cancel_task(
        &self,
        request: Request<CancelTaskRequest>,
    ) -> Result<Response<CancelTaskResponse>, Status> {
        let caller = auth::caller_of(&request);
        let task_id = request.into_inner().task_id;
        if task_id.is_empty() {
            return Err(Status::invalid_argument("task_id: must not be empty"));
        }
        let record = self.get_record(&task_id, caller.as_deref())?;
        let previous = TaskState::try_from(record.state).unwrap_or(TaskState::Unspecified);
        let cancelled = self.mgr.cancel(&task_id);
        let message = if cancelled {
            format!("task {task_id} is being cancelled")
        } else {
            format!(
                "task {task_id} already finished ({})",
                previous.as_str_name()
            )
        };
        Ok(Response::new(CancelTaskResponse {
            task_id,
            cancelled,
            previous_state: previous as i32,
            message,
        }))
    }

    async fn get_task(
        &self,
        request: Request<GetTaskRequest>,
    ) -> Result<Response<TaskRecord>, Status> {
        let caller = auth::caller_of(&request);
        let task_id = request.into_inner().task_id;
        if task_id.is_empty() {
            return Err(Status::invalid_argument("task_id: must not be empty"));
        }
        Ok(Response::new(self.get_record(&task_id, caller.as_deref())?))
    }
}

impl PoolService {
    /// The record of `task_id`, when `caller` (None = authentication off) may see it.
    fn get_record(
        &self,
        task_id: &str,
        caller: Option<&auth::Caller>,
    ) -> Result<TaskRecord, Status> {
        let shown = crate::workspace::shortened(task_id);
        match self.mgr.store.get(task_id) {
            Ok(Some(r)) if caller.is_none_or(|c| c.may_access(&r.owner)) => Ok(r),
            Ok(Some(_)) => Err(Status::permission_denied(format!(
                "task_id: task {shown:?} was dispatched by another caller"
            ))),
            Ok(None) => Err(Status::not_found(format!("task_id: no task {shown:?}"))),
            Err(e) => Err(Status::internal(format!("task store: {e}"))),
        }
    }
}

/// Follows a task's events after `after_seq`: live from its log while it is active, replayed from
/// the journal once it has finished.
fn follow(
    mgr: &Manager,
    record: &TaskRecord,
    after_seq: u64,
    heartbeat: Option<std::time::Duration>,
) -> Result<EventStream, Status> {
    if let Some(log) = mgr.active_log(&record.task_id) {
        return log.follow(after_seq, heartbeat);
    }
    let Some(result) = &record.result else {
        // Accepted a moment ago and not registered yet, or being resumed by a starting manager.
        return Err(Status::unavailable(format!(
            "task_id: task {:?} is being set up; retry in a moment",
            record.task_id
        )));
    };
    // Only the last event is read here; the follower reads the others back from the journal, a
    // page at a time on the blocking pool, so a task of tens of thousands of events neither
    // holds the runtime's thread nor sits in memory whole.
    let last = mgr
        .store
        .last_event(&record.task_id)
        .map_err(|e| Status::internal(format!("task store: {e}")))?;
    let last = match last {
        Some(event) if matches!(event.kind, Some(Kind::Result(_))) => event,
        // A task finished before its result was journaled with it (a store written by an older
        // version) gets its recorded result as the event after the last one journaled.
        other => TaskEvent {
            task_id: record.task_id.clone(),
            seq: other.map_or(0, |e| e.seq) + 1,
            timestamp_ms: record.finished_ms,
            kind: Some(Kind::Result(Box::new(result.clone()))),
        },
    };
    mgr.new_log(&record.task_id, vec![last])
        .follow(after_seq, heartbeat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::v1::TaskEvent;
    use futures::StreamExt;

    fn event(seq: u64) -> crate::task_events::EventItem {
        Ok(TaskEvent {
            seq,
            ..Default::default()
        })
    }

    /// A first event that is ready goes out with the headers: no time passes.
    #[tokio::test(start_paused = true)]
    async fn headers_leave_with_a_first_event_that_is_ready() {
        let started = Instant::now();
        let stream: EventStream = Box::pin(futures::stream::iter([event(1), event(2)]));
        let mut stream = with_first_event(stream).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        let seqs: Vec<u64> = (&mut stream).map(|e| e.unwrap().seq).collect().await;
        assert_eq!(
            seqs,
            vec![1, 2],
            "the peeked event is still delivered, first"
        );
    }

    /// A first event that is late (a programmer slow to answer) holds the headers for
    /// [`HEADERS_AWAIT_FIRST_EVENT`] only; the stream still delivers it when it comes.
    #[tokio::test(start_paused = true)]
    async fn a_late_first_event_holds_the_headers_only_briefly() {
        let started = Instant::now();
        let late = futures::stream::once(async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            event(1)
        });
        let mut stream = with_first_event(Box::pin(late)).await;
        assert_eq!(started.elapsed(), HEADERS_AWAIT_FIRST_EVENT);
        assert_eq!(stream.next().await.unwrap().unwrap().seq, 1);
        assert_eq!(started.elapsed(), Duration::from_secs(3600));
        assert!(stream.next().await.is_none());
    }
}
