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

use crate::contract::v1::programmer_client::ProgrammerClient;
use crate::contract::v1::{TaskEvent, TaskRequest};
use crate::manager::budget::BudgetLedger;
use crate::manager::membership::{InFlight, Member, MemberChange, PoolView};
use crate::manager::strategy::{Candidate, StrategyKind, StrategySet};
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::Status;
use tonic::transport::Channel;
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
    client: ProgrammerClient<Channel>,
}

impl ProgrammerEndpoint {
    pub fn new(pool: Arc<PoolView>, member: Arc<Member>) -> Self {
        let client = ProgrammerClient::new(member.channel.clone());
        Self {
            pool,
            member,
            client,
        }
    }
}

impl Service<TaskRequest> for ProgrammerEndpoint {
    type Response = Upstream;
    type Error = Status;
    type Future = BoxFuture<'static, Result<Upstream, Status>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        if self.pool.has_room(&self.member) {
            return Poll::Ready(Ok(()));
        }
        self.member.register_waker(cx.waker());
        // Re-check: the state may have changed between the test and the registration.
        if self.pool.has_room(&self.member) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, request: TaskRequest) -> Self::Future {
        let in_flight = self.pool.start_task(&self.member);
        let mut client = self.client.clone();
        Box::pin(async move {
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
    /// Member indices, best tier first (see `eligibility`).
    pub tiers: Vec<Vec<usize>>,
    pub strategy: StrategyKind,
    /// Round-robin group key (the task's capability set).
    pub group: String,
    /// Members not to use (a reroute avoids the programmer that failed).
    pub exclude: Vec<usize>,
}

/// A task placed on a programmer: the `Execute` call is under way.
pub struct Placement {
    pub member: Arc<Member>,
    /// Dollars reserved from the daily budget for this task (paid programmers only).
    pub reserved_usd: Option<f64>,
    pub response: BoxFuture<'static, Result<Upstream, Status>>,
    /// Ids of the programmers the strategy chose from (for the routing-decision span).
    pub candidates: Vec<String>,
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
}

impl Balancer {
    pub fn new(
        pool: Arc<PoolView>,
        discover: Discovery,
        strategies: StrategySet,
        budget: Arc<BudgetLedger>,
    ) -> Self {
        Self {
            discover,
            cache: ReadyCache::default(),
            pool,
            strategies,
            budget,
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
    pub fn route(&mut self, route: Route) -> Routed {
        let mut spend_blocked = false;
        for tier in &route.tiers {
            let mut refused: Vec<usize> = Vec::new();
            loop {
                let candidates = self.candidates(tier, &route.exclude, &refused);
                if candidates.is_empty() {
                    break;
                }
                let picked = match self
                    .strategies
                    .get(route.strategy)
                    .pick(&route.group, &candidates)
                {
                    Some(i) => candidates[i].index,
                    None => break,
                };
                let member = self.pool.members[picked].clone();
                // Re-poll the chosen endpoint: its state may have changed since it became ready.
                let Some((cache_index, _, _)) = self.cache.get_ready(&picked) else {
                    refused.push(picked);
                    continue;
                };
                let waker = futures::task::noop_waker();
                let mut cx = Context::from_waker(&waker);
                if !matches!(self.cache.check_ready_index(&mut cx, cache_index), Ok(true)) {
                    refused.push(picked);
                    continue;
                }
                let reserved_usd = match self.reserve(&member, &route.request) {
                    Ok(r) => r,
                    Err(exhausted) => {
                        spend_blocked |= exhausted;
                        refused.push(picked);
                        continue;
                    }
                };
                let Some((cache_index, _, _)) = self.cache.get_ready(&picked) else {
                    refused.push(picked);
                    continue;
                };
                let mut request = route.request.clone();
                // The programmer stops the task at the amount held for it.
                request.max_cost_usd = reserved_usd.unwrap_or(0.0);
                request.task_id = attempt_task_id(&request.task_id, request.dispatch_attempt);
                let response = self.cache.call_ready_index(cache_index, request);
                let candidates = candidates
                    .iter()
                    .map(|c| self.pool.members[c.index].spec.id.clone())
                    .collect();
                return Routed::Placed(Placement {
                    member,
                    reserved_usd,
                    response: Box::pin(response),
                    candidates,
                });
            }
        }
        let only_paid = route
            .tiers
            .iter()
            .flatten()
            .all(|&i| self.pool.members[i].spec.paid);
        Routed::NoRoom {
            budget_exhausted: spend_blocked && only_paid && !route.request.dry_run,
            route: Box::new(route),
        }
    }

    /// Reserves the member's per-job cap when it is paid and the task is real. A refusal says
    /// whether settled spend alone leaves no room (`true`) or running tasks' holds do (`false`).
    fn reserve(&self, member: &Member, request: &TaskRequest) -> Result<Option<f64>, bool> {
        if !member.spec.paid || request.dry_run {
            return Ok(None);
        }
        let amount = member.spec.limits.max_cost_per_job_usd;
        match self.budget.reserve(
            &reservation_key(&request.task_id, request.dispatch_attempt),
            amount,
        ) {
            Ok(_) => Ok(Some(amount)),
            Err(e) => {
                tracing::debug!(task_id = %request.task_id, programmer = %member.spec.id, "reservation refused: {e}");
                let spend_exhausted = self
                    .budget
                    .snapshot()
                    .map(|s| s.spent_usd + amount > s.limit_usd + 1e-9)
                    .unwrap_or(false);
                Err(spend_exhausted)
            }
        }
    }

    /// The ready members of `tier` as the strategies see them, in configuration order.
    fn candidates(&self, tier: &[usize], exclude: &[usize], refused: &[usize]) -> Vec<Candidate> {
        let mut out: Vec<(Candidate, Option<tower::load::peak_ewma::Cost>)> = tier
            .iter()
            .filter(|i| !exclude.contains(i) && !refused.contains(i))
            .filter_map(|&i| {
                let (_, _, svc) = self.cache.get_ready(&i)?;
                let member = &self.pool.members[i];
                let candidate = Candidate {
                    index: i,
                    // Other callers' tasks on it (its report minus ours); ours are `in_flight`.
                    queue_depth: member.occupied().saturating_sub(member.in_flight()),
                    in_flight: member.in_flight(),
                    has_room: self.pool.has_room(member),
                    load: 0.0,
                };
                Some((candidate, Some(svc.load())))
            })
            .collect();
        // tower's Cost is only comparable, so the strategies get its rank as the load figure.
        let mut order: Vec<usize> = (0..out.len()).collect();
        order.sort_by(|&a, &b| {
            out[a]
                .1
                .partial_cmp(&out[b].1)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        for (rank, &i) in order.iter().enumerate() {
            out[i].0.load = rank as f64;
        }
        out.sort_by_key(|(c, _)| c.index);
        out.into_iter().map(|(c, _)| c).collect()
    }
}

/// The ledger key of one dispatch attempt's hold (a re-routed task holds again for its new programmer).
pub fn reservation_key(task_id: &str, dispatch_attempt: u32) -> String {
    format!("{task_id}#{dispatch_attempt}")
}

/// The task id a programmer is given for one dispatch attempt: the caller's id on the first, a
/// distinct id (`<id>:attempt-<n>`) on each re-dispatch.
///
/// A programmer names the task's branch and worktree after this id, and one that is killed
/// mid-task leaves both behind in the shared repository (nothing runs to clean up). A re-dispatch
/// under the same id then failed wherever it landed with "branch `pas/<id>` already exists". Budget
/// holds and task records stay keyed by the caller's id; only the programmer sees this one.
pub fn attempt_task_id(task_id: &str, dispatch_attempt: u32) -> String {
    if dispatch_attempt <= 1 {
        return task_id.to_string();
    }
    let suffix = format!(":attempt-{dispatch_attempt}");
    // Ids are ASCII (validated), so any byte index is a char boundary; stay within the id limit.
    let keep = crate::workspace::MAX_ID_LEN.saturating_sub(suffix.len());
    let prefix = task_id.get(..task_id.len().min(keep)).unwrap_or(task_id);
    format!("{prefix}{suffix}")
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
    }
}
