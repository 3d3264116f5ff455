//! The manager's wait queue and the scheduler that owns the balancer.
//!
//! Every task is submitted here. One scheduler task owns the [`Balancer`]; on every change of the
//! pool while tasks wait (a slot frees, a programmer comes or goes, a report arrives) and on every
//! submission it walks the queue in FIFO order and places each task that now fits. A task whose
//! capability group is full does not block tasks of other groups behind it, and within a group the
//! older task is always offered a slot first. Waiting tasks see their position (Queued events). The
//! queue is bounded: past `capacity` a submission is refused (RESOURCE_EXHAUSTED), so memory stays
//! bounded.
//!
//! When nothing waits (no entry in the queue or on its way to it), a submission is routed at once
//! on the caller's task instead ([`QueuePlace::submit`]): FIFO order cannot be broken with nobody
//! ahead, and a lone task then costs no hand-off to the scheduler task and back. The balancer is
//! shared behind a lock for that; the caller only tries the lock, so it never waits for a pass.

use crate::manager::balancer::{Balancer, Placement, Route, Routed};
use crate::manager::membership::PoolView;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The manager's queue is full.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
#[error("the manager's queue is full ({capacity} tasks waiting)")]
pub struct QueueFull {
    pub capacity: usize,
}

/// Why a waiting task was not placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotPlaced {
    #[error("waited {0:?} in the manager's queue without a free programmer")]
    Timeout(std::time::Duration),
    #[error("the daily budget cannot cover a paid programmer and no free one can take the task")]
    BudgetExhausted,
    #[error("the manager is shutting down")]
    ShuttingDown,
}

struct Entry {
    route: Route,
    deadline: Instant,
    waited_since: Instant,
    position: watch::Sender<u32>,
    reply: oneshot::Sender<Result<Placement, NotPlaced>>,
    /// Counted in `waiting` (false for re-submissions after a reroute, which bypass the bound).
    counted: bool,
}

enum Submit {
    Back(Entry),
    Front(Entry),
    /// No new task: just make a pass (drops entries whose task went away).
    Nudge,
}

/// Handle to the scheduler. Cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    tx: mpsc::UnboundedSender<Submit>,
    /// Places taken in the bounded queue (admitted tasks not yet placed).
    waiting: Arc<AtomicUsize>,
    /// Re-submissions not yet answered (rerouted, re-queued, resumed or escalated tasks): they
    /// wait in the same queue, outside its bound.
    resubmitted: Arc<AtomicUsize>,
    /// Entries sent to the scheduler and not yet answered (placed, refused, or dropped), counted
    /// or not: while it is 0 nothing waits, and a submission may be routed at once.
    queued: Arc<AtomicUsize>,
    balancer: Arc<Mutex<Balancer>>,
    /// The queue's bound (`manager.max_queue`; a re-read configuration may change it).
    capacity: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("waiting", &self.waiting)
            .field("resubmitted", &self.resubmitted)
            .field("queued", &self.queued)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// What became of a submission.
pub enum Submitted<Q = Ticket> {
    /// Routed at once (nothing was waiting).
    Placed(Placement),
    /// For the queue: the ticket that follows it there (or, inside this module, the route to
    /// queue).
    Queued(Q),
}

/// A submitted task: its position while it waits, and the placement when it comes.
#[derive(Debug)]
pub struct Ticket {
    /// 1-based position while waiting; 0 while being placed.
    pub position: watch::Receiver<u32>,
    pub placement: oneshot::Receiver<Result<Placement, NotPlaced>>,
}

impl Scheduler {
    /// Starts the scheduler task owning `balancer`; it stops on `stop`.
    pub fn start(
        balancer: Balancer,
        pool: Arc<PoolView>,
        capacity: usize,
        stop: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let scheduler = Self {
            tx,
            waiting: Arc::default(),
            resubmitted: Arc::default(),
            queued: Arc::default(),
            balancer: Arc::new(Mutex::new(balancer)),
            capacity: Arc::new(AtomicUsize::new(capacity)),
        };
        tokio::spawn(run(scheduler.clone(), pool, rx, stop));
        scheduler
    }

    /// Sends `entry` to the scheduler task, counted in `queued` until it is answered.
    /// False when the scheduler is gone (the entry is dropped: its task learns it was not placed).
    fn send(&self, submit: Submit) -> bool {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let sent = self.tx.send(submit).is_ok();
        if !sent {
            self.queued.fetch_sub(1, Ordering::SeqCst);
        }
        sent
    }

    /// Routes `route` now if nothing waits and the balancer is free (not in a pass); otherwise
    /// gives the route back.
    fn route_now(&self, mut route: Route) -> Submitted<Route> {
        let Ok(mut balancer) = self.balancer.try_lock() else {
            return Submitted::Queued(route);
        };
        // Checked under the lock: an entry sent after this gets a pass of its own after us.
        if self.queued.load(Ordering::SeqCst) != 0 {
            return Submitted::Queued(route);
        }
        // Brings the balancer up to date as a pass would (discovery, endpoints ready again). No
        // waker is left with it that the scheduler would need: nothing waits, and the next entry's
        // pass polls it again with the scheduler's own.
        let waker = futures::task::noop_waker();
        let _ = balancer.poll_changes(&mut std::task::Context::from_waker(&waker));
        route.waiting = 1;
        match balancer.route(route) {
            Routed::Placed(placement) => Submitted::Placed(placement),
            // The queue decides again (and says why, e.g. the budget).
            Routed::NoRoom { route, .. } => Submitted::Queued(*route),
        }
    }

    /// Tasks waiting now (not yet placed): admitted ones, and re-submitted ones, which wait
    /// outside the bound.
    pub fn depth(&self) -> usize {
        self.waiting.load(Ordering::SeqCst) + self.resubmitted.load(Ordering::SeqCst)
    }

    /// The queue's bound.
    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    /// Bounds the queue to `capacity` from the next reservation on. Tasks already waiting keep
    /// their places when it is lowered below their number; new ones are refused until fewer wait.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity, Ordering::Relaxed);
    }

    /// Reserves a place at the back of the queue, refused when `capacity` tasks already wait (or
    /// hold a reservation). Admission takes the place before it records or checks anything
    /// costly, so a refusal costs no I/O; a reservation dropped unused gives the place back.
    pub fn reserve(&self) -> Result<QueuePlace, QueueFull> {
        let capacity = self.capacity();
        let reserved = self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < capacity).then_some(n + 1)
            });
        if reserved.is_err() {
            return Err(QueueFull { capacity });
        }
        Ok(QueuePlace {
            scheduler: Some(self.clone()),
        })
    }

    /// Asks for a pass over the queue now. A task that stops waiting (cancelled, caller gone)
    /// calls this after dropping its [`Ticket`], so its place, which counts towards the queue's
    /// bound, is given back at once rather than at the next change of the pool (which in a quiet
    /// pool is the next status poll, up to `health_check_interval_s` away).
    pub fn nudge(&self) {
        let _ = self.tx.send(Submit::Nudge);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Balancer> {
        self.balancer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-submits a task that lost its programmer at the front of the queue (it has waited
    /// already); never refused.
    pub fn resubmit(&self, route: Route, max_wait: std::time::Duration) -> Ticket {
        let (entry, ticket) = entry(route, max_wait, false);
        self.resubmitted.fetch_add(1, Ordering::SeqCst);
        if !self.send(Submit::Front(entry)) {
            self.resubmitted.fetch_sub(1, Ordering::SeqCst);
        }
        ticket
    }
}

/// A reserved place in the queue (see [`Scheduler::reserve`]): submit a task into it, or drop
/// it to give the place back.
#[derive(Debug)]
pub struct QueuePlace {
    scheduler: Option<Scheduler>,
}

impl QueuePlace {
    /// Submits a task into this place: routed at once when nothing waits (the place is given
    /// back), else queued at the back.
    pub fn submit(mut self, route: Route, max_wait: std::time::Duration) -> Submitted {
        let scheduler = self.scheduler.take().expect("a place is submitted once");
        let route = match scheduler.route_now(route) {
            Submitted::Placed(placement) => {
                scheduler.waiting.fetch_sub(1, Ordering::SeqCst);
                return Submitted::Placed(placement);
            }
            Submitted::Queued(route) => route,
        };
        let (entry, ticket) = entry(route, max_wait, true);
        if !scheduler.send(Submit::Back(entry)) {
            // The scheduler is gone (shutting down): the ticket's reply is dropped with the
            // entry, so the task learns it was not placed.
            scheduler.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        Submitted::Queued(ticket)
    }
}

impl Drop for QueuePlace {
    fn drop(&mut self) {
        if let Some(scheduler) = self.scheduler.take() {
            scheduler.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn entry(route: Route, max_wait: std::time::Duration, counted: bool) -> (Entry, Ticket) {
    let (position, position_rx) = watch::channel(0);
    let (reply, placement) = oneshot::channel();
    let now = Instant::now();
    let entry = Entry {
        route,
        deadline: now + max_wait,
        waited_since: now,
        position,
        reply,
        counted,
    };
    (
        entry,
        Ticket {
            position: position_rx,
            placement,
        },
    )
}

async fn run(
    scheduler: Scheduler,
    pool: Arc<PoolView>,
    mut rx: mpsc::UnboundedReceiver<Submit>,
    stop: CancellationToken,
) {
    let mut queue: VecDeque<Entry> = VecDeque::new();
    let mut pool_changes = pool.subscribe();
    // Every entry leaves the queue through here (answered or dropped).
    let uncount_flag = |counted: bool| {
        scheduler.queued.fetch_sub(1, Ordering::SeqCst);
        if counted {
            scheduler.waiting.fetch_sub(1, Ordering::SeqCst);
        } else {
            scheduler.resubmitted.fetch_sub(1, Ordering::SeqCst);
        }
    };
    let uncount = |e: &Entry| uncount_flag(e.counted);
    loop {
        let next_deadline = queue.iter().map(|e| e.deadline).min();
        tokio::select! {
            submitted = rx.recv() => match submitted {
                Some(Submit::Back(e)) => queue.push_back(e),
                Some(Submit::Front(e)) => queue.push_front(e),
                Some(Submit::Nudge) => {}
                None => return,
            },
            // With nothing waiting, a change of the pool concerns no one here: the next
            // submission's pass reads the pool as it is then (and the scheduler is not woken
            // twice per dispatch, for its placement and its end).
            _ = pool_changes.changed(), if !queue.is_empty() => {}
            _ = poll_fn(|cx| scheduler.lock().poll_changes(cx)) => {}
            _ = async { match next_deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {}
            _ = stop.cancelled() => {
                for e in queue.drain(..) {
                    uncount(&e);
                    let _ = e.reply.send(Err(NotPlaced::ShuttingDown));
                }
                return;
            }
        }
        // Take every submission that arrived meanwhile, so one pass sees them all in order.
        while let Ok(s) = rx.try_recv() {
            match s {
                Submit::Back(e) => queue.push_back(e),
                Submit::Front(e) => queue.push_front(e),
                Submit::Nudge => {}
            }
        }
        // The pass holds the balancer (a submission meanwhile goes to the queue), brought up to
        // date first (discovery, pending endpoints).
        let mut balancer = poll_fn(|cx| {
            let mut balancer = scheduler.lock();
            let _ = balancer.poll_changes(cx);
            Poll::Ready(balancer)
        })
        .await;

        let now = Instant::now();
        let mut kept = VecDeque::with_capacity(queue.len());
        let mut pass = queue.drain(..);
        while let Some(mut e) = pass.next() {
            if e.reply.is_closed() {
                uncount(&e);
                continue;
            }
            let counted = e.counted;
            // The backlog as the pass reaches this task: those held so far, it, and the rest.
            e.route.waiting = (kept.len() + 1 + pass.len()) as u64;
            match balancer.route(e.route) {
                Routed::Placed(placement) => {
                    uncount_flag(counted);
                    let _ = e.position.send(0);
                    if let Err(Ok(placement)) = e.reply.send(Ok(placement)) {
                        // The task went away at the last moment: its Execute never starts
                        // (the call is sent when first polled), so its hold is released and the
                        // dropped placement frees the slot.
                        placement.abandon(balancer.budget());
                    }
                }
                Routed::NoRoom {
                    route,
                    budget_exhausted,
                } => {
                    if budget_exhausted {
                        uncount_flag(counted);
                        let _ = e.reply.send(Err(NotPlaced::BudgetExhausted));
                        continue;
                    }
                    if now >= e.deadline {
                        uncount_flag(counted);
                        let _ = e.reply.send(Err(NotPlaced::Timeout(now - e.waited_since)));
                        continue;
                    }
                    e.route = *route;
                    kept.push_back(e);
                }
            }
        }
        drop(pass);
        for (i, e) in kept.iter().enumerate() {
            let position = i as u32 + 1;
            if *e.position.borrow() != position {
                let _ = e.position.send(position);
            }
        }
        drop(balancer);
        queue = kept;
    }
}
