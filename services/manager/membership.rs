//! Which programmers are up, and how busy they are.
//!
//! The members are the configured programmers (`discovery.mode: static`) or the programmers found
//! under a DNS name ([`discovery`](super::discovery)): those *join* while the manager runs and
//! *leave* when their address leaves DNS. A member's index (its key in the balancer, the strategy's
//! indexes and exclusions) is its position in an append-only list, never reused: a member that
//! leaves stays in the list, drains (no new tasks; its running tasks finish or are rerouted by the
//! dispatch rules) and is then left out of status and metrics ([`Member::is_gone`]).
//!
//! The routing order (capability_match's "first", round robin's cycle, every tie-break) is each
//! member's *rank* ([`Member::rank`]): its place in the configuration's `programmers` list, so a
//! programmer added, replaced or moved by a re-read file takes its place in the file's order
//! ([`PoolView::reconcile`]); members found by DNS rank at their entry's place when the file lists
//! them, the others after them in joining order. A change of ranks bumps
//! [`PoolView::order_epoch`], and the balancer rebuilds its indexes in the new order.
//!
//! Per member the manager keeps one lazily-connected tonic channel and two watchers:
//! - a grpc.health.v1 `Watch` stream (reconnected with backoff): a programmer that dies breaks the
//!   stream at once, so it stops receiving tasks within milliseconds, not at the next poll;
//! - a `GetStatus` poll every `health_check_interval_s` for queue depth and LLM/breaker state.
//!
//! Availability changes are published as tower discovery changes (`Change::Insert` / `Remove`)
//! for the [balancer](super::balancer), and every change of availability or load bumps a `watch`
//! generation that wakes the [scheduler](super::waitqueue).
//!
//! Every change of a member's routing figures (in flight, other callers' tasks, reported
//! capacity, availability, a refusal at admission, its endpoint becoming ready) also marks the
//! member *dirty* ([`PoolView::touch`]); before it decides, the balancer re-reads the dirty members
//! into its candidate indexes ([`PoolView::take_dirty`]), so no decision rescans the whole pool.

use crate::channel::Dialer;
use crate::config::{Config, ProgrammerSpec};
use crate::contract::v1::programmer_client::ProgrammerClient;
use crate::contract::v1::{GetStatusRequest, ProgrammerStatus};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Waker;
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::discover::Change;

/// The service name programmers report in grpc.health.v1.
pub const PROGRAMMER_HEALTH_SERVICE: &str = "pas.v1.Programmer";

/// How long a connection attempt to a programmer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Backoff between health-stream reconnects (doubling up to the max).
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a plain assignment, so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One programmer as the manager tracks it.
#[derive(Debug)]
pub struct Member {
    /// Position in the pool's member list (append-only: configuration order at start-up, then
    /// joining order). Its identity in the balancer; routing follows [`Member::rank`].
    pub index: usize,
    /// Its place in the routing order (see the module docs): the index until a re-read
    /// configuration places it.
    rank: AtomicUsize,
    pub spec: ProgrammerSpec,
    /// `host:port` the channel connects to.
    pub address: String,
    /// Its address left DNS: no new tasks; gone from status once none of ours runs there.
    left: AtomicBool,
    /// Stops its watchers when it leaves (a child of the manager's stop token).
    watch_stop: CancellationToken,
    /// Where its channels connect (they connect lazily and reconnect themselves).
    dialer: Dialer,
    /// Its channel on each of the manager's serving runtimes (see `runtimes`), every client on
    /// that runtime sharing it: slot 0's is made with the member, the others' on first use, on
    /// their runtime, which then runs their connection.
    channels: Box<[OnceLock<Channel>]>,
    available: AtomicBool,
    /// How many times it became available: a task rerouted away from it avoids it only until it
    /// comes back (see `balancer::Exclusion`).
    comebacks: AtomicU64,
    /// Tasks the manager has sent here whose streams have not ended.
    in_flight: AtomicU32,
    /// Tasks the programmer reported that are not ours (other callers), as of the last report.
    external: AtomicU32,
    reported: Mutex<Option<ProgrammerStatus>>,
    /// The programmer refused a task at admission (its queue was full) since its last report:
    /// it has no room until it reports again, whatever our counts say.
    refused: AtomicBool,
    /// Refusals at admission since a task was last admitted there.
    refusals: AtomicU32,
    /// The balancer's waker while this member's endpoint is not ready.
    waker: Mutex<Option<Waker>>,
    refresh: Notify,
    /// On the pool's dirty list (its figures changed since the balancer last read them).
    dirty: AtomicBool,
}

impl Member {
    /// A member for `spec`, reached through `dialer` at `address` (over `channel` from the main
    /// runtime), at position `index`, with a channel slot for each of `runtimes` runtimes.
    fn new(
        index: usize,
        spec: ProgrammerSpec,
        address: String,
        link: (Dialer, Channel),
        runtimes: usize,
        stop: &CancellationToken,
    ) -> Self {
        let (dialer, channel) = link;
        let channels: Box<[OnceLock<Channel>]> =
            (0..runtimes.max(1)).map(|_| OnceLock::new()).collect();
        let _ = channels[0].set(channel);
        Self {
            index,
            rank: AtomicUsize::new(index),
            spec,
            address,
            left: AtomicBool::new(false),
            watch_stop: stop.child_token(),
            dialer,
            channels,
            available: AtomicBool::new(false),
            comebacks: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            external: AtomicU32::new(0),
            reported: Mutex::new(None),
            refused: AtomicBool::new(false),
            refusals: AtomicU32::new(0),
            waker: Mutex::new(None),
            refresh: Notify::new(),
            dirty: AtomicBool::new(false),
        }
    }

    /// The channel to this programmer for the calling thread: its serving runtime's own (made on
    /// first use there), the main runtime's on any other thread.
    pub fn channel(&self) -> Channel {
        let runtime = super::runtimes::current();
        let slot = self.channels.get(runtime).unwrap_or(&self.channels[0]);
        slot.get_or_init(|| {
            // Once per programmer and runtime.
            tracing::info!(programmer = %self.spec.id, runtime, "channel to the programmer opened by a serving runtime");
            self.dialer.connect_lazy()
        })
        .clone()
    }

    /// Its place in the routing order: capability_match takes the first with room, round robin
    /// cycles in it, and every tie goes to the lower rank.
    pub fn rank(&self) -> usize {
        self.rank.load(Ordering::Acquire)
    }

    /// Healthy (health stream says SERVING) and still a member.
    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::SeqCst)
    }

    /// Its address left DNS: it takes no new task (it may still be running ours).
    pub fn has_left(&self) -> bool {
        self.left.load(Ordering::SeqCst)
    }

    /// Left and drained: no task of ours runs there any more, so status and metrics omit it.
    pub fn is_gone(&self) -> bool {
        self.has_left() && self.in_flight() == 0
    }

    /// How many times it has become available so far.
    pub fn comebacks(&self) -> u64 {
        self.comebacks.load(Ordering::SeqCst)
    }

    /// The last GetStatus answer, if any.
    pub fn reported(&self) -> Option<ProgrammerStatus> {
        lock(&self.reported).clone()
    }

    /// Tasks the manager has in flight here.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Slots (running + waiting) the programmer offers: from its report, or the config before one.
    pub fn capacity(&self, default: u32) -> u32 {
        lock(&self.reported)
            .as_ref()
            .map_or(default, |s| s.max_concurrent + s.max_queue)
    }

    /// Tasks it runs at once: from its report, or `default` (the config) before one.
    pub fn slots(&self, default: u32) -> u32 {
        lock(&self.reported)
            .as_ref()
            .map_or(default, |s| s.max_concurrent)
            .max(1)
    }

    /// Calls `f` with the LLM a new task would use there now: as last reported (its backup while
    /// its breaker is open), the configured primary before any report.
    pub fn with_current_llm<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        let reported = lock(&self.reported);
        match reported
            .as_ref()
            .and_then(|s| s.llm.as_ref())
            .map(|l| l.current.as_str())
            .filter(|c| !c.is_empty())
        {
            Some(current) => f(current),
            None => f(&self.spec.primary.name),
        }
    }

    /// Tasks occupying the programmer now: ours in flight plus other callers' as last reported.
    pub fn occupied(&self) -> u32 {
        self.in_flight() + self.external.load(Ordering::SeqCst)
    }

    /// Tasks waiting on the programmer (its queue, not counting running), as the strategy sees it.
    pub fn queue_depth(&self) -> u32 {
        lock(&self.reported).as_ref().map_or(0, |s| s.queue_depth)
    }

    /// Asks the status poller for a fresh report now (e.g. after the programmer said its queue is full).
    pub fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    /// True while a refusal at admission has not been followed by a report.
    pub fn is_refusing(&self) -> bool {
        self.refused.load(Ordering::SeqCst)
    }

    /// Remembers the waker to call when this member may have become ready.
    pub fn register_waker(&self, waker: &Waker) {
        let mut slot = lock(&self.waker);
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }

    fn wake(&self) {
        if let Some(w) = lock(&self.waker).take() {
            w.wake();
        }
    }
}

/// A task in flight on a member; dropping it (when the task's stream ends) frees the slot.
#[derive(Debug)]
pub struct InFlight {
    member: Arc<Member>,
    pool: Arc<PoolView>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.member.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.pool.touch(&self.member);
        self.member.wake();
        self.pool.bump();
    }
}

/// The manager's view of every programmer, in configuration order then joining order.
#[derive(Debug)]
pub struct PoolView {
    /// Every member that ever joined, by index (append-only, copied on join: readers take a
    /// snapshot with [`PoolView::members`] and never hold the lock).
    members: Mutex<Arc<Vec<Arc<Member>>>>,
    /// Slots per programmer before it reports (`max_concurrent + max_queue` from the config in
    /// force: [`PoolView::set_queue_defaults`]).
    default_capacity: AtomicU32,
    /// Tasks a programmer runs at once before it reports (`max_concurrent_per_programmer`).
    default_concurrent: AtomicU32,
    generation: watch::Sender<u64>,
    /// Indices of the members whose routing figures changed since the balancer last read them.
    dirty: Mutex<Vec<usize>>,
    /// Counts the changes of the members' ranks (see [`PoolView::order_epoch`]).
    order_epoch: AtomicU64,
    /// Where a joining member's watchers report (set by [`start`]).
    watchers: OnceLock<Watchers>,
    /// Asks DNS discovery to re-resolve now (a member's connection broke).
    resolve_now: Notify,
    /// Client TLS for channels to members (kept current with its files: a new connection
    /// uses the settings of its time).
    tls: Option<crate::tls::ClientTls>,
    /// The manager's serving runtimes: each member keeps a channel for each.
    runtimes: usize,
    /// The manager's stop: every member's watchers stop on it (or when the member leaves).
    stop: CancellationToken,
}

/// What a member's watchers need, kept so members that join later get theirs.
#[derive(Debug)]
struct Watchers {
    tx: ChangeTx,
    /// `load_balancing.health_check_interval_s` in force, in ms ([`PoolView::set_poll_interval`]):
    /// each poller reads it before each wait.
    poll_interval_ms: AtomicU64,
}

/// What [`PoolView::reconcile`] changed, by programmer id.
#[derive(Debug, Default, PartialEq)]
pub struct Reconciled {
    pub joined: Vec<String>,
    pub left: Vec<String>,
    pub changed: Vec<String>,
}

impl PoolView {
    /// Builds the view from the configuration; channels connect lazily.
    /// With `discovery.mode: static` the members are the configured programmers; with `dns`
    /// the view starts empty and members [join](Self::join) as DNS finds them.
    /// Members' watchers stop on `stop`.
    pub fn new(
        config: &Config,
        tls: Option<&crate::tls::TlsFiles>,
        stop: &CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let lb = &config.pool.load_balancing;
        let (generation, _) = watch::channel(0);
        let pool = Arc::new(Self {
            members: Mutex::new(Arc::new(Vec::new())),
            default_capacity: AtomicU32::new(0),
            default_concurrent: AtomicU32::new(0),
            generation,
            dirty: Mutex::new(Vec::new()),
            order_epoch: AtomicU64::new(0),
            watchers: OnceLock::new(),
            resolve_now: Notify::new(),
            tls: tls.map(crate::tls::reloading_client_config).transpose()?,
            runtimes: super::runtimes::count(config.pool.manager.runtimes),
            stop: stop.clone(),
        });
        pool.set_queue_defaults(lb);
        if config.pool.discovery.mode == crate::config::DiscoveryMode::Static {
            let mut members = Vec::new();
            for (index, spec) in config.programmers().iter().enumerate() {
                let address = crate::channel::connect_addr(&spec.host, spec.port);
                let link = pool.link(&address)?;
                members.push(Arc::new(Member::new(
                    index,
                    spec.clone(),
                    address,
                    link,
                    pool.runtimes,
                    stop,
                )));
            }
            *lock(&pool.members) = Arc::new(members);
        }
        Ok(pool)
    }

    /// Where a programmer at `address` (`host:port`) is reached, and a lazily-connecting channel
    /// there (made on the calling thread's runtime).
    pub fn link(&self, address: &str) -> anyhow::Result<(Dialer, Channel)> {
        let dialer = Dialer::new(address, self.tls.as_ref())?
            .with_endpoint(|e| e.connect_timeout(CONNECT_TIMEOUT));
        let channel = dialer.connect_lazy();
        Ok((dialer, channel))
    }

    /// Every member that ever joined, by index (left ones included: check
    /// [`Member::has_left`]). A snapshot: members joining later are not in it.
    pub fn members(&self) -> Arc<Vec<Arc<Member>>> {
        lock(&self.members).clone()
    }

    /// How often each member's status is polled (`load_balancing.health_check_interval_s`).
    pub fn poll_interval(&self) -> Duration {
        self.watchers.get().map_or(Duration::from_secs(1), |w| {
            Duration::from_millis(w.poll_interval_ms.load(Ordering::Relaxed))
        })
    }

    /// Puts a re-read `health_check_interval_s` in force: every member is polled at once, then
    /// at the new interval. Returns whether it changed.
    pub fn set_poll_interval(&self, interval: Duration) -> bool {
        let Some(w) = self.watchers.get() else {
            return false;
        };
        let ms = millis(interval);
        if w.poll_interval_ms.swap(ms, Ordering::Relaxed) == ms {
            return false;
        }
        for member in self.members().iter() {
            member.refresh.notify_one();
        }
        true
    }

    /// The member at `index` (indices come from this view, so it exists).
    pub fn at(&self, index: usize) -> Arc<Member> {
        lock(&self.members)[index].clone()
    }

    /// Adds a member found by discovery, reached over `link` (see [`PoolView::link`]), and starts
    /// its watchers. The caller checked its id is not a present member's.
    pub fn join(
        self: &Arc<Self>,
        spec: ProgrammerSpec,
        address: String,
        link: (Dialer, Channel),
    ) -> Arc<Member> {
        let stop = &self.stop;
        let member = {
            let mut members = lock(&self.members);
            let member = Arc::new(Member::new(
                members.len(),
                spec,
                address,
                link,
                self.runtimes,
                stop,
            ));
            let mut grown = Vec::with_capacity(members.len() + 1);
            grown.extend(members.iter().cloned());
            grown.push(member.clone());
            *members = Arc::new(grown);
            member
        };
        tracing::info!(programmer = %member.spec.id, address = %member.address,
            region = %member.spec.region, "programmer joined");
        if let Some(w) = self.watchers.get() {
            spawn_watchers(self.clone(), &member, w);
        }
        self.bump();
        member
    }

    /// The member's address left DNS: it takes no new task, its watchers stop, and it is left out
    /// of status once no task of ours runs there (its running tasks finish, or are rerouted by
    /// the dispatch rules if its process goes away).
    pub fn leave(&self, member: &Arc<Member>) {
        if member.left.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::info!(programmer = %member.spec.id, address = %member.address,
            in_flight = member.in_flight(), "programmer left: draining");
        member.watch_stop.cancel();
        if let Some(w) = self.watchers.get() {
            publish(self, member, false, &w.tx);
        }
        self.touch(member);
        member.wake();
        self.bump();
    }

    /// Static discovery with a re-read `programmers:` list: a listed id that is not a present
    /// member joins; a present member no longer listed leaves (draining: it takes no new task,
    /// its running ones finish there); a member whose entry changed (address, LLMs, limits,
    /// capabilities, region) leaves and joins again as its new entry. Every address is checked
    /// before anything changes, so a list that cannot be used changes nothing. Every listed
    /// member then ranks at its place in the list (members that left rank after them), so
    /// routing follows the file's order ([`PoolView::order_epoch`]).
    pub fn reconcile(self: &Arc<Self>, specs: &[ProgrammerSpec]) -> anyhow::Result<Reconciled> {
        let present: Vec<Arc<Member>> = self
            .members()
            .iter()
            .filter(|m| !m.has_left())
            .cloned()
            .collect();
        let mut joining = Vec::new();
        let mut done = Reconciled::default();
        for spec in specs {
            let address = crate::channel::connect_addr(&spec.host, spec.port);
            match present.iter().find(|m| m.spec.id == spec.id) {
                Some(m) if m.spec == *spec && m.address == address => {}
                found => {
                    let link = self.link(&address)?;
                    joining.push((spec.clone(), address, link, found.cloned()));
                }
            }
        }
        for member in &present {
            if !specs.iter().any(|s| s.id == member.spec.id) {
                self.leave(member);
                done.left.push(member.spec.id.clone());
            }
        }
        for (spec, address, link, replaced) in joining {
            match replaced {
                Some(old) => {
                    self.leave(&old);
                    done.changed.push(spec.id.clone());
                }
                None => done.joined.push(spec.id.clone()),
            }
            self.join(spec, address, link);
        }
        self.rank_as_listed(specs);
        Ok(done)
    }

    /// Ranks each present member at its place in `specs` and every other member after them in
    /// joining order (those that left, and under DNS those the file does not list); bumps the
    /// order epoch (and wakes the scheduler) when a rank changed.
    pub fn rank_as_listed(&self, specs: &[ProgrammerSpec]) {
        let places: std::collections::HashMap<&str, usize> = specs
            .iter()
            .enumerate()
            .map(|(place, s)| (s.id.as_str(), place))
            .collect();
        let members = self.members();
        let mut moved = false;
        for member in members.iter() {
            let listed = (!member.has_left())
                .then(|| places.get(member.spec.id.as_str()).copied())
                .flatten();
            let rank = listed.unwrap_or(specs.len() + member.index);
            moved |= member.rank.swap(rank, Ordering::AcqRel) != rank;
        }
        if moved {
            self.order_epoch.fetch_add(1, Ordering::AcqRel);
            self.bump();
        }
    }

    /// Changes whenever members' ranks change: an index built in the order of an older epoch
    /// must be built again. Read it *before* reading ranks, so a change racing with the read is
    /// seen at the next look.
    pub fn order_epoch(&self) -> u64 {
        self.order_epoch.load(Ordering::Acquire)
    }

    /// Wakes DNS discovery to re-resolve now (no-op in static mode).
    pub fn request_resolve(&self) {
        self.resolve_now.notify_one();
    }

    /// Resolves when someone asked for a re-resolve.
    pub async fn resolve_requested(&self) {
        self.resolve_now.notified().await;
    }

    /// A receiver that changes whenever availability or load changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Marks `member`'s routing figures as changed: call it *after* changing them. O(1); a member
    /// already on the list is not added twice.
    pub fn touch(&self, member: &Member) {
        if !member.dirty.swap(true, Ordering::SeqCst) {
            lock(&self.dirty).push(member.index);
        }
    }

    /// Moves the dirty members' indices into `out` (cleared first) and clears their marks; the
    /// caller reads their figures afterwards, so a change racing with this is either read now or
    /// marks the member again.
    pub fn take_dirty(&self, out: &mut Vec<usize>) {
        out.clear();
        std::mem::swap(&mut *lock(&self.dirty), out);
        let members = self.members();
        for &i in out.iter() {
            members[i].dirty.store(false, Ordering::SeqCst);
        }
    }

    /// The programmer refused a task because its queue is full: treat it as full until its next
    /// report. A first refusal asks for that report now (its last one was just out of date); a
    /// second in a row, with no task admitted between, waits for the next scheduled one: its
    /// reports and its admission disagree, and asking again at once would only have the task
    /// refused again, hundreds of times a second.
    pub fn refused_at_admission(&self, member: &Member) {
        member.refused.store(true, Ordering::SeqCst);
        self.touch(member);
        if member.refusals.fetch_add(1, Ordering::SeqCst) == 0 {
            member.request_refresh();
        }
    }

    /// The programmer admitted a task: a later refusal is a first one again.
    pub fn admitted(&self, member: &Member) {
        if member.refusals.load(Ordering::Relaxed) != 0 {
            member.refusals.store(0, Ordering::SeqCst);
        }
    }

    /// Marks a task in flight on `member` until the returned guard is dropped.
    pub fn start_task(self: &Arc<Self>, member: &Arc<Member>) -> InFlight {
        member.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch(member);
        self.bump();
        InFlight {
            member: member.clone(),
            pool: self.clone(),
        }
    }

    /// True when `member` is available, still a member, and has a free slot.
    pub fn has_room(&self, member: &Member) -> bool {
        member.is_available()
            && !member.has_left()
            && !member.is_refusing()
            && member.occupied() < member.capacity(self.default_capacity.load(Ordering::Relaxed))
    }

    /// Tasks `member` runs at once: as it last reported, else as the configuration says.
    pub fn slots(&self, member: &Member) -> u32 {
        member.slots(self.default_concurrent.load(Ordering::Relaxed))
    }

    /// Takes the programmers' queue bounds of `lb` (a re-read file's too) as what a programmer
    /// that has not reported yet is assumed to hold; one that reported is taken at its word.
    pub fn set_queue_defaults(&self, lb: &crate::config::LoadBalancing) {
        let concurrent = lb.max_concurrent_per_programmer;
        self.default_concurrent.store(concurrent, Ordering::Relaxed);
        self.default_capacity
            .store(concurrent + lb.max_queue_per_programmer, Ordering::Relaxed);
    }

    /// Number of available members.
    pub fn available_count(&self) -> usize {
        self.members()
            .iter()
            .filter(|m| m.is_available() && !m.has_left())
            .count()
    }

    /// Looks a member up by programmer id: the present one, else the latest that left.
    pub fn member(&self, id: &str) -> Option<Arc<Member>> {
        let members = self.members();
        let mut with_id = members.iter().rev().filter(|m| m.spec.id == id);
        let latest = with_id.next()?;
        if !latest.has_left() {
            return Some(latest.clone());
        }
        Some(with_id.find(|m| !m.has_left()).unwrap_or(latest).clone())
    }

    fn set_available(&self, member: &Member, up: bool) -> bool {
        let was = member.available.swap(up, Ordering::SeqCst);
        if up && !was {
            member.comebacks.fetch_add(1, Ordering::SeqCst);
        }
        if was != up {
            self.touch(member);
            member.wake();
            self.bump();
        }
        was != up
    }

    fn set_reported(&self, member: &Member, status: ProgrammerStatus) {
        let occupied = status.running + status.queue_depth;
        // What the programmer carries beyond the tasks we sent it belongs to other callers.
        member.external.store(
            occupied.saturating_sub(member.in_flight()),
            Ordering::SeqCst,
        );
        *lock(&member.reported) = Some(status);
        member.refused.store(false, Ordering::SeqCst);
        self.touch(member);
        member.wake();
        self.bump();
    }
}

/// A discovery change for the balancer: the member's key and the member itself.
pub type MemberChange = Change<usize, Arc<Member>>;

/// Starts the health watcher and status poller of every member. Changes of availability are sent
/// on the returned receiver (the balancer's discovery stream). Members that join later get theirs
/// when they join. Everything stops on the stop token given to [`PoolView::new`], a member's
/// watchers also when it leaves.
pub fn start(
    pool: Arc<PoolView>,
    poll_interval: Duration,
) -> mpsc::UnboundedReceiver<Result<MemberChange, std::convert::Infallible>> {
    let (tx, rx) = mpsc::unbounded_channel();
    let watchers = pool.watchers.get_or_init(|| Watchers {
        tx,
        poll_interval_ms: AtomicU64::new(millis(poll_interval)),
    });
    for member in pool.members().iter() {
        spawn_watchers(pool.clone(), member, watchers);
    }
    rx
}

fn spawn_watchers(pool: Arc<PoolView>, member: &Arc<Member>, w: &Watchers) {
    let stop = member.watch_stop.clone();
    tokio::spawn(watch_health(
        pool.clone(),
        member.clone(),
        w.tx.clone(),
        stop.clone(),
    ));
    tokio::spawn(poll_status(pool, member.clone(), stop));
}

type ChangeTx = mpsc::UnboundedSender<Result<MemberChange, std::convert::Infallible>>;

fn publish(pool: &PoolView, member: &Arc<Member>, up: bool, tx: &ChangeTx) {
    if pool.set_available(member, up) {
        let change = if up {
            Change::Insert(member.index, member.clone())
        } else {
            Change::Remove(member.index)
        };
        let _ = tx.send(Ok(change));
        if up {
            tracing::info!(programmer = %member.spec.id, "programmer available");
            member.request_refresh();
        } else {
            tracing::warn!(programmer = %member.spec.id, "programmer unavailable");
        }
    }
}

/// Follows the programmer's health stream; any break marks it unavailable and reconnects.
async fn watch_health(
    pool: Arc<PoolView>,
    member: Arc<Member>,
    tx: ChangeTx,
    stop: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut client = HealthClient::new(member.channel());
        let request = HealthCheckRequest {
            service: PROGRAMMER_HEALTH_SERVICE.into(),
        };
        let watched = tokio::select! {
            r = client.watch(request) => r,
            _ = stop.cancelled() => return,
        };
        match watched {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    let next = tokio::select! {
                        m = stream.message() => m,
                        _ = stop.cancelled() => return,
                    };
                    match next {
                        Ok(Some(msg)) if msg.status == ServingStatus::Serving as i32 => {
                            backoff = BACKOFF_MIN;
                            publish(&pool, &member, true, &tx);
                        }
                        // Draining or stopping: let go of its connection (a Watch that stays
                        // open would hold a stopping programmer's server) and watch again later.
                        Ok(Some(_)) => break,
                        Ok(None) | Err(_) => break,
                    }
                }
                publish(&pool, &member, false, &tx);
                // Its address may have changed or left: DNS discovery looks again now.
                pool.request_resolve();
            }
            Err(_) => publish(&pool, &member, false, &tx),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The longest a status poll waits for its answer (less when the interval is shorter).
const STATUS_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// An interval in milliseconds, saturating (the file bounds it from below only).
fn millis(interval: Duration) -> u64 {
    u64::try_from(interval.as_millis()).unwrap_or(u64::MAX)
}

/// Polls GetStatus every poll interval in force, or at once when asked for a refresh.
async fn poll_status(pool: Arc<PoolView>, member: Arc<Member>, stop: CancellationToken) {
    let mut client = ProgrammerClient::new(member.channel());
    loop {
        let interval = pool.poll_interval();
        if member.is_available() {
            // Bounded apart from the interval too: a long interval must not let one hung call
            // hold back the poll a re-read interval asks for at once (`set_poll_interval`).
            let call = tokio::time::timeout(
                interval.clamp(Duration::from_secs(1), STATUS_CALL_TIMEOUT),
                client.get_status(GetStatusRequest {}),
            );
            if let Ok(Ok(response)) = call.await {
                pool.set_reported(&member, response.into_inner());
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = member.refresh.notified() => {}
            _ = stop.cancelled() => return,
        }
    }
}
