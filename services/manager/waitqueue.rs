//! The manager's wait queue and the scheduler that owns the balancer.
//!
//! Every task is submitted here. One scheduler task owns the [`Balancer`]; on every change of the
//! pool while tasks wait (a slot frees, a programmer comes or goes, a report arrives) and on every
//! submission it walks the queue in FIFO order and places each task that now fits. A task whose
//! capability group is full does not block tasks of other groups behind it, and within a group the
//! older task is always offered a slot first. Waiting tasks see their position (Queued events). The
//! queue is bounded: past `capacity` a submission is refused (RESOURCE_EXHAUSTED), so memory stays
//! bounded.

use crate::manager::balancer::{Balancer, Placement, Route, Routed};
use crate::manager::membership::PoolView;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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
#[derive(Debug, Clone)]
pub struct Scheduler {
    tx: mpsc::UnboundedSender<Submit>,
    waiting: Arc<AtomicUsize>,
    capacity: usize,
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
        let waiting = Arc::new(AtomicUsize::new(0));
        tokio::spawn(run(balancer, pool, rx, waiting.clone(), stop));
        Self {
            tx,
            waiting,
            capacity,
        }
    }

    /// Tasks waiting now (not yet placed).
    pub fn depth(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// The queue's bound.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Reserves a place at the back of the queue, refused when `capacity` tasks already wait (or
    /// hold a reservation). Admission takes the place before it records or checks anything
    /// costly, so a refusal costs no I/O; a reservation dropped unused gives the place back.
    pub fn reserve(&self) -> Result<QueuePlace, QueueFull> {
        let reserved = self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.capacity).then_some(n + 1)
            });
        if reserved.is_err() {
            return Err(QueueFull {
                capacity: self.capacity,
            });
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

    /// Re-submits a task that lost its programmer at the front of the queue (it has waited
    /// already); never refused.
    pub fn resubmit(&self, route: Route, max_wait: std::time::Duration) -> Ticket {
        let (entry, ticket) = entry(route, max_wait, false);
        let _ = self.tx.send(Submit::Front(entry));
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
    /// Submits a task at the back of the queue into this place.
    pub fn submit(mut self, route: Route, max_wait: std::time::Duration) -> Ticket {
        let scheduler = self.scheduler.take().expect("a place is submitted once");
        let (entry, ticket) = entry(route, max_wait, true);
        if scheduler.tx.send(Submit::Back(entry)).is_err() {
            // The scheduler is gone (shutting down): the ticket's reply is dropped with the
            // entry, so the task learns it was not placed.
            scheduler.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        ticket
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
    mut balancer: Balancer,
    pool: Arc<PoolView>,
    mut rx: mpsc::UnboundedReceiver<Submit>,
    waiting: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    let mut queue: VecDeque<Entry> = VecDeque::new();
    let mut pool_changes = pool.subscribe();
    let uncount_flag = |counted: bool| {
        if counted {
            waiting.fetch_sub(1, Ordering::SeqCst);
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
            _ = poll_fn(|cx| match balancer.poll_changes(cx) { Poll::Ready(()) => Poll::Ready(()), Poll::Pending => Poll::Pending }) => {}
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
        // Bring the balancer up to date (discovery, pending endpoints) before the pass.
        poll_fn(|cx| {
            let _ = balancer.poll_changes(cx);
            Poll::Ready(())
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
        queue = kept;
    }
}
