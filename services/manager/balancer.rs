//! The load balancer: a tower `Service` over a [`ReadyCache`] of programmer endpoints.
//!
//! Each programmer is a [`ProgrammerEndpoint`] (`Service<TaskRequest>`) wrapped in tower's
//! [`PeakEwma`] load estimate, whose completion is tracked until the task's *stream* ends (not the
//! response headers). An endpoint is ready while its programmer is available and has a free slot;
//! the [`ReadyCache`] keeps ready and pending endpoints apart and re-polls the pending ones, and
//! membership changes arrive as a tower discovery stream (`Change::Insert/Remove`).
//!
//! Routing is per request (capabilities, cost tiers, exclusions), so selection happens in `call`:
//! the ready endpoints of the best tier that has any are offered to the task's [`Strategy`](super::strategy::Strategy); a paid
//! pick must win a budget reservation first. When nothing fits, `call` answers
//! [`Routed::NoRoom`] at once and the [scheduler](super::waitqueue) keeps the task waiting.
//! Routing never falls back to a programmer outside the task's tiers.
//!
//! A decision does not look at every member: the balancer keeps one [`CandidateIndex`] per
//! distinct [`Tier`] (built when a route first names it) holding the members whose endpoint is
//! ready and who have room, with their outstanding tasks. Before each pick it re-reads only the
//! members the pool marked dirty ([`PoolView::take_dirty`]), so a decision costs
//! O(dirty · log n + log n), and the strategy compares the PeakEwma cost of the two members p2c
//! draws instead of ranking every candidate.
//!
//! For least_expected_wait the index also holds busy members (available, no room) and each
//! member's expected time per task: its current LLM's published duration estimate
//! ([`DurationEstimates`]) ÷ its slots. When an estimate is republished the members on that LLM
//! are marked dirty. A strategy that picks nobody while a member with room remains has *held*
//! the task for a busy member that would finish it sooner: the task waits (NoRoom) instead of
//! spilling into the next tier.

use crate::contract::v1::programmer_client::ProgrammerClient;
use crate::contract::v1::{TaskEvent, TaskRequest};
use crate::manager::budget::BudgetLedger;
use crate::manager::durations::DurationEstimates;
use crate::manager::membership::{InFlight, Member, MemberChange, PoolView};
use crate::manager::strategy::{CandidateIndex, Figures, StrategyKind, StrategySet, Tier};
use crate::money::Usd;
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use std::cmp::Ordering;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::Status;
use tower::Service;
use tower::discover::Change;
use tower::load::peak_ewma::Handle;
use tower::load::{Load, PeakEwma, TrackCompletion};
use tower::ready_cache::ReadyCache;

/// RTT assumed for a programmer before any task finished on it (a typical aider run).
const DEFAULT_RTT: Duration = Duration::from_secs(5);
/// PeakEwma decay window.
const DECAY: Duration = Duration::from_secs(60);

// ===== Endpoint =====

/// A task's live connection to its programmer: the event stream plus the guards that keep the
/// task counted (in-flight slot, load estimate) until the stream is dropped.
pub struct Upstream {
    pub stream: tonic::Streaming<TaskEvent>,
    _in_flight: InFlight,
    _load: Option<Handle>,
}

impl Upstream {
    /// Follows a task already placed on `member` (re-attached after a broken stream or a manager
    /// restart): counted in flight there like a task this process started.
    pub fn follow(
        pool: &Arc<PoolView>,
        member: &Arc<Member>,
        stream: tonic::Streaming<TaskEvent>,
    ) -> Self {
        Self {
            stream,
            _in_flight: pool.start_task(member),
            _load: None,
        }
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").finish_non_exhaustive()
    }
}

/// One programmer as a tower service: ready while it is available with a free slot; `call` starts
/// `Execute` and counts the task in flight until its stream is dropped.
#[derive(Debug, Clone)]
pub struct ProgrammerEndpoint {
    pool: Arc<PoolView>,
    member: Arc<Member>,
}

impl ProgrammerEndpoint {
    pub fn new(pool: Arc<PoolView>, member: Arc<Member>) -> Self {
        Self { pool, member }
    }
}

impl Service<TaskRequest> for ProgrammerEndpoint {
    type Response = Upstream;
    type Error = Status;
    type Future = BoxFuture<'static, Result<Upstream, Status>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        // Ready moves the endpoint into the ReadyCache's ready set (or keeps it there): the
        // balancer's indexes must re-read the member.
        let ready = || {
            self.pool.touch(&self.member);
            Poll::Ready(Ok(()))
        };
        if self.pool.has_room(&self.member) {
            return ready();
        }
        self.member.register_waker(cx.waker());
        // Re-check: the state may have changed between the test and the registration.
        if self.pool.has_room(&self.member) {
            ready()
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, request: TaskRequest) -> Self::Future {
        let in_flight = self.pool.start_task(&self.member);
        let member = self.member.clone();
        Box::pin(async move {
            // The channel of the runtime that polls the call (the task's own, see `runtimes`),
            // which need not be the one that placed it (the scheduler's, for a task that waited).
            let mut client = ProgrammerClient::new(member.channel());
            // Polled inside the task's route span: the programmer joins the caller's trace.
            let response = client
                .execute(crate::telemetry::propagation::outgoing(request))
                .await?;
            Ok(Upstream {
                stream: response.into_inner(),
                _in_flight: in_flight,
                _load: None,
            })
        })
    }
}

/// Counts a task towards the PeakEwma estimate until its stream is dropped (tower's default
/// would stop at the response headers, which for a streaming `Execute` is almost immediately).
#[derive(Debug, Clone, Copy, Default)]
pub struct UntilStreamEnd;

impl TrackCompletion<Handle, Upstream> for UntilStreamEnd {
    type Output = Upstream;
    fn track_completion(&self, handle: Handle, mut upstream: Upstream) -> Upstream {
        upstream._load = Some(handle);
        upstream
    }
}

type Balanced = PeakEwma<ProgrammerEndpoint, UntilStreamEnd>;

// ===== Balancer =====

/// What a task needs from routing.
#[derive(Debug, Clone)]
pub struct Route {
    /// The request to send to the chosen programmer.
    pub request: TaskRequest,
    /// The eligible members, best tier first (see `eligibility`), interned at admission so the
    /// balancer finds each tier's index by id.
    pub tiers: Vec<Tier>,
    pub strategy: StrategyKind,
    /// Round-robin group key (the task's capability set).
    pub group: String,
    /// Members to avoid (a reroute avoids the programmer that failed), each until it comes back
    /// and only while another member could take the task (see [`Balancer::route`]).
    pub exclude: Vec<Exclusion>,
    /// Tasks waiting in the manager's queue when this route is tried, this one included: the
    /// backlog least_expected_wait weighs (set by the scheduler before each try; 1 otherwise).
    pub waiting: u64,
    /// The caller's own bound on each wait in the manager's queue (`queue_timeout_s`), kept for
    /// every re-queue of the task; `None`: `manager.queue_timeout_s` as configured at that time.
    pub queue_timeout: Option<std::time::Duration>,
}

/// A member a rerouted task avoids: the programmer that lost it, as long as that programmer has not
/// become available again since. One that restarted (or whose health recovered) is a fresh
/// candidate, so a task whose only eligible programmer failed once waits for it instead of timing
/// out in the queue; and one that never went down is tried again when no other member could take
/// the task (the avoidance is soft: [`Balancer::route`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exclusion {
    /// The member's index.
    pub member: usize,
    /// Its [`Member::comebacks`] when the task left it.
    pub comebacks: u64,
}

impl Exclusion {
    /// Avoid `member` until it next becomes available.
    pub fn until_back(member: &Member) -> Self {
        Self {
            member: member.index,
            comebacks: member.comebacks(),
        }
    }
}

/// Budget held for one dispatch attempt on a paid programmer. It ends exactly once: settled to
/// what the attempt cost (or, when that is unknown, to the whole hold), or released when the
/// attempt never started. The manager's [`settle`](crate::manager::Manager::settle) and
/// [`release`](crate::manager::Manager::release) take it by value, so it cannot end twice. A hold
/// is never ended by being dropped: a stopping manager leaves its holds to the next process,
/// which resumes their tasks.
#[derive(Debug)]
pub struct Hold {
    /// The ledger key (see [`reservation_key`]).
    pub key: String,
    /// The amount held.
    pub amount: Usd,
}

/// A task placed on a programmer: the `Execute` call is under way.
pub struct Placement {
    pub member: Arc<Member>,
    /// Budget reserved for this attempt (paid programmers only).
    pub hold: Option<Hold>,
    pub response: BoxFuture<'static, Result<Upstream, Status>>,
    /// The tier the strategy chose from, and the members it was told to leave out (excluded
    /// by the route or refused during this decision): see [`Placement::candidate_ids`].
    pub tier: Tier,
    pub skipped: Vec<usize>,
}

impl Placement {
    /// Gives up a placement whose `Execute` was never polled (so never sent): the task did not
    /// start there, and its hold is released.
    pub fn abandon(self, budget: &BudgetLedger) {
        if let Some(hold) = self.hold
            && let Err(e) = budget.release(&hold.key)
        {
            tracing::error!(key = %hold.key, "budget ledger: {e}");
        }
    }

    /// Ids of the programmers the strategy chose from, in configuration order, for the
    /// routing-decision span: the tier's members minus the skipped ones. O(n), so it is built by
    /// the task, not inside the decision.
    pub fn candidate_ids(&self, pool: &PoolView) -> Vec<String> {
        let members = pool.members();
        self.tier
            .members
            .iter()
            .filter(|i| !self.skipped.contains(i))
            .map(|&i| members[i].spec.id.clone())
            .collect()
    }
}

impl std::fmt::Debug for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement")
            .field("member", &self.member.spec.id)
            .finish_non_exhaustive()
    }
}

/// The outcome of routing one task now.
#[derive(Debug)]
pub enum Routed {
    Placed(Placement),
    /// Nothing in the task's tiers can take it now. `budget_exhausted` when only paid members
    /// can serve it and today's settled spend alone leaves no room for their per-job reservation:
    /// waiting cannot help (unlike reservations of running tasks, spend never comes back today).
    NoRoom {
        route: Box<Route>,
        budget_exhausted: bool,
    },
}

/// Discovery stream type the balancer consumes.
pub type Discovery =
    Pin<Box<dyn Stream<Item = Result<MemberChange, std::convert::Infallible>> + Send>>;

/// The balancer. Owned by the scheduler task (one place decides, so picks never race).
pub struct Balancer {
    discover: Discovery,
    cache: ReadyCache<usize, Balanced, TaskRequest>,
    pool: Arc<PoolView>,
    strategies: StrategySet,
    budget: Arc<BudgetLedger>,
    /// One index per tier id (see [`Tier`]), built when a route first names the tier, in the
    /// routing order of `order_epoch`.
    indexes: Vec<Option<CandidateIndex>>,
    /// The pool's order epoch the indexes were built in ([`PoolView::order_epoch`]).
    order_epoch: u64,
    /// For each member, the ids of the tiers whose index holds it.
    member_tiers: Vec<Vec<usize>>,
    /// Reused buffer for [`PoolView::take_dirty`].
    dirty: Vec<usize>,
    /// Per-LLM task durations (least_expected_wait's `task_ms`).
    durations: Arc<DurationEstimates>,
    /// Reused buffer for [`DurationEstimates::take_changed`].
    changed_llms: Vec<String>,
}

impl Balancer {
    pub fn new(
        pool: Arc<PoolView>,
        discover: Discovery,
        strategies: StrategySet,
        budget: Arc<BudgetLedger>,
        durations: Arc<DurationEstimates>,
    ) -> Self {
        Self {
            durations,
            changed_llms: Vec::new(),
            discover,
            cache: ReadyCache::default(),
            member_tiers: Vec::new(),
            pool,
            strategies,
            budget,
            indexes: Vec::new(),
            order_epoch: 0,
            dirty: Vec::new(),
        }
    }

    /// Applies discovery changes and re-polls pending endpoints. Ready when something changed
    /// (a member came or went, or an endpoint became ready); Pending otherwise, with wakers set.
    pub fn poll_changes(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut changed = false;
        while let Poll::Ready(Some(Ok(change))) = self.discover.poll_next_unpin(cx) {
            changed = true;
            match change {
                Change::Insert(key, member) => {
                    self.pool.touch(&member);
                    let endpoint = ProgrammerEndpoint::new(self.pool.clone(), member);
                    let balanced = PeakEwma::new(
                        endpoint,
                        DEFAULT_RTT,
                        DECAY.as_nanos() as f64,
                        UntilStreamEnd,
                    );
                    self.cache.push(key, balanced);
                }
                Change::Remove(key) => {
                    self.cache.evict(&key);
                    if let Some(member) = self.pool.members().get(key) {
                        self.pool.touch(member);
                    }
                }
            }
        }
        let ready_before = self.cache.ready_len();
        // Endpoints never fail (an unavailable one is simply not ready), so errors cannot occur.
        let _ = self.cache.poll_pending(cx);
        if changed || self.cache.ready_len() > ready_before {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Programmers ready to take a task now.
    pub fn ready_len(&self) -> usize {
        self.cache.ready_len()
    }

    /// Tries to place `route` now.
    ///
    /// The route's exclusions are soft: when nothing else can take the task — every other
    /// member of its tiers is down, gone, or refused for today's budget — an avoided member that
    /// is up gets it again (bounded by `max_dispatch_attempts` like any reroute), instead of the
    /// task waiting out the queue timeout for a comeback that a programmer which never went down
    /// will not make. A busy member that is up still holds the task away from the avoided one.
    pub fn route(&mut self, route: Route) -> Routed {
        self.follow_order();
        let members = self.pool.members();
        let avoided: Vec<usize> = route
            .exclude
            .iter()
            .filter(|e| members[e.member].comebacks() == e.comebacks)
            .map(|e| e.member)
            .collect();
        let mut spend_refused = Vec::new();
        // A first pass that found the budget exhausted did not try the avoided members, whose
        // per-job caps may still fit: they get their second pass too.
        match self.route_avoiding(&members, route, &avoided, &mut spend_refused) {
            Routed::NoRoom { route, .. }
                if !avoided.is_empty()
                    && !Self::another_can_take(&members, &route, &avoided, &spend_refused) =>
            {
                self.route_avoiding(&members, *route, &[], &mut spend_refused)
            }
            routed => routed,
        }
    }

    /// Whether a member of `route`'s tiers outside `avoided` could take it now or once it has
    /// room: up, not gone, and not refused for the budget in this decision. O(n), and only for a
    /// rerouted task nothing took.
    fn another_can_take(
        members: &[Arc<Member>],
        route: &Route,
        avoided: &[usize],
        spend_refused: &[usize],
    ) -> bool {
        route
            .tiers
            .iter()
            .flat_map(|t| t.members.iter())
            .filter(|i| !avoided.contains(i) && !spend_refused.contains(i))
            .any(|&i| members[i].is_available() && !members[i].has_left())
    }

    /// One pass over `route`'s tiers, best first, never offering a member in `avoided`; members
    /// refused for the budget are added to `spend_refused`.
    /// `members` is the pool's snapshot: every member the route's tiers name is in it (they
    /// joined before admission).
    fn route_avoiding(
        &mut self,
        members: &[Arc<Member>],
        route: Route,
        avoided: &[usize],
        spend_refused: &mut Vec<usize>,
    ) -> Routed {
        let mut spend_blocked = false;
        // Members not to offer: those avoided, then those refused in this tier.
        let mut skip = avoided.to_vec();
        let excluded = skip.len();
        for tier in &route.tiers {
            skip.truncate(excluded);
            self.build_index(tier);
            loop {
                self.reindex_dirty();
                let Some(index) = self.indexes[tier.id].as_ref() else {
                    break;
                };
                let cache = &self.cache;
                let cost = |i: usize| cache.get_ready(&i).map(|(_, _, svc)| svc.load());
                // tower's Cost is only comparable: p2c compares the two it draws.
                let load =
                    |a: usize, b: usize| cost(a).partial_cmp(&cost(b)).unwrap_or(Ordering::Equal);
                let Some(picked) = self.strategies.get(route.strategy).pick_indexed(
                    &route.group,
                    index,
                    &skip,
                    &load,
                    route.waiting,
                ) else {
                    if index.any_with_room(&skip) {
                        // Held for a busy member that finishes it sooner: wait, do not spill
                        // into the next tier.
                        return Routed::NoRoom {
                            budget_exhausted: false,
                            route: Box::new(route),
                        };
                    }
                    break;
                };
                let member = members[picked].clone();
                // Re-poll the chosen endpoint: its state may have changed since it became ready.
                let Some((cache_index, _, _)) = self.cache.get_ready(&picked) else {
                    self.pool.touch(&member);
                    skip.push(picked);
                    continue;
                };
                let waker = futures::task::noop_waker();
                let mut cx = Context::from_waker(&waker);
                if !matches!(self.cache.check_ready_index(&mut cx, cache_index), Ok(true)) {
                    // Back to pending: the index must drop it.
                    self.pool.touch(&member);
                    skip.push(picked);
                    continue;
                }
                let reserved_usd = match self.reserve(&member, &route.request) {
                    Ok(r) => r,
                    Err(exhausted) => {
                        spend_blocked |= exhausted;
                        spend_refused.push(picked);
                        skip.push(picked);
                        continue;
                    }
                };
                let Some((cache_index, _, _)) = self.cache.get_ready(&picked) else {
                    self.pool.touch(&member);
                    skip.push(picked);
                    continue;
                };
                let mut request = route.request.clone();
                // The programmer stops the task at the amount held for it.
                let cap = reserved_usd.unwrap_or(Usd::ZERO);
                (request.max_cost_nanousd, request.max_cost_usd) =
                    (cap.to_contract(), cap.as_usd_f64());
                let hold = reserved_usd.map(|amount| Hold {
                    key: reservation_key(&request.task_id, request.dispatch_attempt),
                    amount,
                });
                // Only the programmer-side id changes per attempt; the caller's id goes along
                // unchanged, so every attempt competes for the same kept branch.
                if request.origin_task_id.is_empty() {
                    request.origin_task_id = request.task_id.clone();
                }
                request.task_id = attempt_task_id(&request.task_id, request.dispatch_attempt);
                // Starts the task: in flight +1 and the endpoint back to pending, both of which
                // mark the member dirty for the next decision.
                let response = self.cache.call_ready_index(cache_index, request);
                return Routed::Placed(Placement {
                    member,
                    hold,
                    response: Box::pin(response),
                    tier: tier.clone(),
                    skipped: skip,
                });
            }
        }
        // Evaluated only after a refused paid reservation (O(n), once for a task it then fails).
        let budget_exhausted = spend_blocked
            && !route.request.dry_run
            && route
                .tiers
                .iter()
                .flat_map(|t| t.members.iter())
                .all(|&i| members[i].spec.paid);
        Routed::NoRoom {
            budget_exhausted,
            route: Box::new(route),
        }
    }

    /// Member `i` as the indexes hold it: `None` when it is down or left; else its outstanding
    /// tasks (ours in flight plus other callers' as last reported, i.e. `queue_depth + in_flight`
    /// of the strategies), whether it has room (its endpoint is in the ready set and it has a
    /// free slot), and its expected time per task.
    fn figures(&self, member: &Member) -> Option<Figures> {
        if !member.is_available() || member.has_left() {
            return None;
        }
        let i = member.index;
        let estimate = member.with_current_llm(|llm| self.durations.estimate_ms(llm));
        let slots = self.pool.slots(member);
        Some(Figures {
            outstanding: u64::from(member.occupied()),
            has_room: self.cache.get_ready(&i).is_some() && self.pool.has_room(member),
            task_ms: estimate.div_ceil(u64::from(slots)),
            slots,
        })
    }

    /// Drops every index when the members' routing order changed (a re-read configuration):
    /// each is built again, in the new order, when a route next names its tier.
    fn follow_order(&mut self) {
        let epoch = self.pool.order_epoch();
        if epoch != self.order_epoch {
            self.order_epoch = epoch;
            self.indexes.clear();
            self.member_tiers.clear();
        }
    }

    /// Builds `tier`'s index the first time a route names it (members in their routing order):
    /// O(n log n) once per distinct tier and routing order.
    fn build_index(&mut self, tier: &Tier) {
        if self.indexes.len() <= tier.id {
            self.indexes.resize_with(tier.id + 1, || None);
        }
        if self.indexes[tier.id].is_some() {
            return;
        }
        let members = self.pool.members();
        let mut index = CandidateIndex::new(tier, |i| members[i].rank());
        if let Some(&last) = tier.members.last()
            && self.member_tiers.len() <= last
        {
            self.member_tiers.resize_with(last + 1, Vec::new);
        }
        for &i in tier.members.iter() {
            index.update(i, self.figures(&members[i]));
            self.member_tiers[i].push(tier.id);
        }
        self.indexes[tier.id] = Some(index);
    }

    /// Re-reads the members whose figures changed into every index that holds them:
    /// O(dirty · tiers per member · log n).
    /// An LLM whose duration estimate was republished first marks its members dirty (O(n), only
    /// when an estimate moved by more than `durations::PUBLISH_CHANGE`).
    fn reindex_dirty(&mut self) {
        let members = self.pool.members();
        self.durations.take_changed(&mut self.changed_llms);
        if !self.changed_llms.is_empty() {
            for member in members.iter() {
                if member.with_current_llm(|llm| self.changed_llms.iter().any(|c| c == llm)) {
                    self.pool.touch(member);
                }
            }
        }
        let mut dirty = std::mem::take(&mut self.dirty);
        self.pool.take_dirty(&mut dirty);
        for &i in &dirty {
            // A member no tier names yet (it joined after every index was built) has nothing to
            // update: an index built later reads it then.
            let Some(tiers) = self.member_tiers.get(i) else {
                continue;
            };
            let figures = self.figures(&members[i]);
            for &t in tiers {
                if let Some(index) = self.indexes[t].as_mut() {
                    index.update(i, figures);
                }
            }
        }
        self.dirty = dirty;
    }

    /// The ledger holds are reserved in.
    pub fn budget(&self) -> &Arc<BudgetLedger> {
        &self.budget
    }

    /// Reserves the member's per-job cap when it is paid and the task is real. A refusal says
    /// whether settled spend alone leaves no room (`true`) or running tasks' holds do (`false`).
    fn reserve(&self, member: &Member, request: &TaskRequest) -> Result<Option<Usd>, bool> {
        if !member.spec.paid || request.dry_run {
            return Ok(None);
        }
        // Validated positive and finite when the configuration was loaded.
        let amount = Usd::from_usd(member.spec.limits.max_cost_per_job_usd).map_err(|e| {
            tracing::error!(programmer = %member.spec.id, "max_cost_per_job_usd: {e}");
            false
        })?;
        match self.budget.reserve(
            &reservation_key(&request.task_id, request.dispatch_attempt),
            amount,
        ) {
            Ok(_) => Ok(Some(amount)),
            Err(e @ crate::manager::budget::BudgetError::Duplicate { .. }) => {
                // Each attempt reserves under its own key once: a key already taken means a
                // hold was left behind by a path that should have released it. The task cannot be
                // placed on a paid programmer under this attempt; say so loudly.
                tracing::error!(task_id = %request.task_id, programmer = %member.spec.id, "reservation refused: {e}");
                Err(false)
            }
            Err(crate::manager::budget::BudgetError::Exhausted { spent, limit, .. }) => {
                tracing::debug!(task_id = %request.task_id, programmer = %member.spec.id, "reservation refused: the budget cannot cover it");
                // The refusal's own figures, no second read of the ledger: this runs for every
                // paid task waiting in the queue at every change of the pool.
                Err(spent.saturating_add(amount) > limit)
            }
            Err(e) => {
                tracing::debug!(task_id = %request.task_id, programmer = %member.spec.id, "reservation refused: {e}");
                Err(false)
            }
        }
    }
}

/// The ledger key of one dispatch attempt's hold (a re-routed task holds again for its new programmer).
pub fn reservation_key(task_id: &str, dispatch_attempt: u32) -> String {
    format!("{task_id}#{dispatch_attempt}")
}

/// The task id a programmer is given for one dispatch attempt: the caller's id on the first, a
/// distinct id (`<id>:attempt-<n>`) on each re-dispatch.
///
/// A programmer names the attempt's scratch branch and worktree after this id, and one that is
/// killed mid-task leaves both behind in the shared repository (nothing runs to clean up). A
/// re-dispatch under the same id would fail wherever it landed with "branch already exists".
/// The branch a result is kept on is named after the caller's id instead
/// (`TaskRequest.origin_task_id`, unchanged by this function), so only one attempt can keep one.
/// Budget holds and task records stay keyed by the caller's id; only the programmer sees this one.
///
/// No two tasks' attempts share one: a programmer attaches a re-sent id to the task it already
/// has, so a shared id would hand one task's run to another. A caller's id never ends in the
/// suffix ([`ATTEMPT_SUFFIX`] is refused at Dispatch), and an id too long for the suffix keeps a
/// hash of the whole id in place of its tail.
pub fn attempt_task_id(task_id: &str, dispatch_attempt: u32) -> String {
    use sha2::{Digest, Sha256};
    if dispatch_attempt <= 1 {
        return task_id.to_string();
    }
    let suffix = format!("{ATTEMPT_SUFFIX}{dispatch_attempt}");
    let max = crate::workspace::MAX_ID_LEN;
    // Short forms stay under the limit and cut ones are exactly at it, so a caller cannot choose
    // an id whose short form is another id's cut one.
    if task_id.len() + suffix.len() < max {
        return format!("{task_id}{suffix}");
    }
    let digest = Sha256::digest(task_id.as_bytes());
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    // Ids are ASCII (validated), so any byte index is a char boundary; stay within the id limit.
    let keep = max.saturating_sub(suffix.len() + hash.len() + 1);
    let prefix = task_id.get(..task_id.len().min(keep)).unwrap_or(task_id);
    format!("{prefix}-{hash}{suffix}")
}

/// What [`attempt_task_id`] appends (then the attempt's number): reserved for the manager.
pub const ATTEMPT_SUFFIX: &str = ":attempt-";

/// True for an id ending in [`ATTEMPT_SUFFIX`] and a number: one only the manager makes.
pub fn is_attempt_task_id(task_id: &str) -> bool {
    task_id
        .rsplit_once(ATTEMPT_SUFFIX)
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// `Service` face of the balancer: readiness processes discovery and pending endpoints (it never
/// waits: per-request routing decides in `call`), and `call` routes at once.
impl Service<Route> for Balancer {
    type Response = Routed;
    type Error = std::convert::Infallible;
    type Future = futures::future::Ready<Result<Routed, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let _ = self.poll_changes(cx);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, route: Route) -> Self::Future {
        futures::future::ready(Ok(self.route(route)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workspace::{MAX_ID_LEN, check_id};

    #[test]
    fn each_redispatch_gets_its_own_valid_programmer_task_id() {
        assert_eq!(attempt_task_id("t-1", 1), "t-1");
        assert_eq!(attempt_task_id("t-1", 0), "t-1");
        let second = attempt_task_id("t-1", 2);
        let third = attempt_task_id("t-1", 3);
        assert_eq!(second, "t-1:attempt-2");
        assert_ne!(second, third);
        // The longest id a caller may use still yields a valid, distinct id.
        let long = "a".repeat(MAX_ID_LEN);
        let ids: Vec<String> = (1..=3).map(|n| attempt_task_id(&long, n)).collect();
        for id in &ids {
            assert!(check_id("task_id", id, false).is_ok(), "{id}");
        }
        assert_ne!(ids[1], ids[0]);
        assert_ne!(ids[2], ids[1]);
        // Two long ids alike but for their tails stay apart.
        let other = format!("{}b", "a".repeat(MAX_ID_LEN - 1));
        assert_ne!(attempt_task_id(&other, 2), ids[1]);
        assert!(ids[1..].iter().all(|id| is_attempt_task_id(id)));
        // An id a caller builds from another's cut form (its prefix and hash) stays apart.
        let cut = ids[1]
            .strip_suffix(":attempt-2")
            .expect("suffix")
            .to_string();
        assert!(check_id("task_id", &cut, false).is_ok());
        assert_ne!(attempt_task_id(&cut, 2), ids[1]);
        // And an id exactly at the length where the suffix would fill the limit is cut.
        let edge = "b".repeat(MAX_ID_LEN - ":attempt-2".len());
        assert_eq!(attempt_task_id(&edge, 2).len(), MAX_ID_LEN);
        assert!(!is_attempt_task_id("t-1") && !is_attempt_task_id("t:attempt-x"));
    }
}
