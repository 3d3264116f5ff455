//! Admission control for one programmer: at most `max_running` tasks run at once and at most
//! `max_waiting` wait for a slot, in FIFO order. Beyond that a task is refused up-front
//! (RESOURCE_EXHAUSTED), so the manager's picture of "room" is exact.
//!
//! Every change of the queue bumps a `watch` generation; each waiter re-reads its position on a
//! change, which keeps the code small and is cheap for the queue sizes involved (`max_queue_per_programmer`).
//!
//! The bounds follow a re-read configuration ([`TaskQueue::set_limits`]): more slots start waiting
//! tasks at once; fewer let the running ones finish (no new one starts until fewer run than the
//! new bound), and a shorter line keeps the tasks already in it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// The queue is full: the task was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("programmer queue is full ({waiting} waiting, limit {limit})")]
pub struct QueueFull {
    pub waiting: usize,
    pub limit: usize,
}

/// Current occupancy, for status reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueDepth {
    /// Tasks waiting for a slot.
    pub waiting: usize,
    /// Tasks holding a slot.
    pub running: usize,
}

#[derive(Debug)]
struct State {
    running: usize,
    waiting: VecDeque<u64>,
    next_ticket: u64,
    max_running: usize,
    max_waiting: usize,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the counters half-updated (every update is a
        // single statement), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn bump(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }
}

/// One programmer's task queue. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TaskQueue {
    shared: Arc<Shared>,
}

impl TaskQueue {
    /// A queue running up to `max_running` tasks at once (at least 1) with up to `max_waiting` waiting.
    pub fn new(max_running: usize, max_waiting: usize) -> Self {
        let (changed, _) = watch::channel(0);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    running: 0,
                    waiting: VecDeque::new(),
                    next_ticket: 0,
                    max_running: max_running.max(1),
                    max_waiting,
                }),
                changed,
            }),
        }
    }

    /// Accepts a task or refuses it when every slot is taken and `max_waiting` tasks already wait.
    ///
    /// A task that can run at once takes its slot here, not when its driver first polls
    /// [`Waiting::acquire`]: otherwise it would briefly count as waiting, and a second task arriving
    /// in that gap could be refused (or reported as queued) although only one task was waiting.
    pub fn try_enter(&self) -> Result<Waiting, QueueFull> {
        let mut st = self.shared.lock();
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        let immediate = st.waiting.is_empty() && st.running < st.max_running;
        let place = if immediate {
            st.running += 1;
            Place::Holding
        } else if st.waiting.len() >= st.max_waiting {
            return Err(QueueFull {
                waiting: st.waiting.len(),
                limit: st.max_waiting,
            });
        } else {
            st.waiting.push_back(ticket);
            Place::Queued
        };
        drop(st);
        self.shared.bump();
        Ok(Waiting {
            shared: self.shared.clone(),
            ticket,
            place,
        })
    }

    /// Current occupancy.
    pub fn depth(&self) -> QueueDepth {
        let st = self.shared.lock();
        QueueDepth {
            waiting: st.waiting.len(),
            running: st.running,
        }
    }

    /// The limits in force `(max_running, max_waiting)`.
    pub fn limits(&self) -> (usize, usize) {
        let st = self.shared.lock();
        (st.max_running, st.max_waiting)
    }

    /// Puts new limits in force (`max_running` at least 1); returns whether they differ from
    /// the ones before. Waiting tasks that now fit start at once; nothing running or waiting
    /// is turned away.
    pub fn set_limits(&self, max_running: usize, max_waiting: usize) -> bool {
        let mut st = self.shared.lock();
        let limits = (max_running.max(1), max_waiting);
        if (st.max_running, st.max_waiting) == limits {
            return false;
        }
        (st.max_running, st.max_waiting) = limits;
        drop(st);
        self.shared.bump();
        true
    }
}

/// An accepted task that may not hold a slot yet. Dropping it leaves the queue (or frees the slot
/// it was given on entry).
#[derive(Debug)]
pub struct Waiting {
    shared: Arc<Shared>,
    ticket: u64,
    place: Place,
}

/// Where an accepted task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// In the waiting line.
    Queued,
    /// Holds a slot that has not been handed out as a [`RunSlot`] yet.
    Holding,
    /// Its slot now belongs to a [`RunSlot`].
    HandedOver,
}

impl Waiting {
    /// 1-based position among the waiting tasks (1 = next to run); 0 when it already holds a slot.
    pub fn position(&self) -> usize {
        let st = self.shared.lock();
        st.waiting
            .iter()
            .position(|t| *t == self.ticket)
            .map_or(0, |p| p + 1)
    }

    /// Waits for a slot. `on_position` is called with the 1-based position whenever it changes
    /// while waiting (never for a task that got a slot on entry).
    pub async fn acquire(mut self, mut on_position: impl FnMut(usize)) -> RunSlot {
        if self.place == Place::Holding {
            self.place = Place::HandedOver;
            return RunSlot {
                shared: self.shared.clone(),
            };
        }
        let mut rx = self.shared.changed.subscribe();
        let mut last_reported = 0;
        loop {
            {
                let mut st = self.shared.lock();
                let pos = st
                    .waiting
                    .iter()
                    .position(|t| *t == self.ticket)
                    .map_or(0, |p| p + 1);
                if pos == 1 && st.running < st.max_running {
                    st.waiting.pop_front();
                    st.running += 1;
                    drop(st);
                    self.place = Place::HandedOver;
                    self.shared.bump();
                    return RunSlot {
                        shared: self.shared.clone(),
                    };
                }
                if pos != last_reported {
                    last_reported = pos;
                    drop(st);
                    on_position(pos);
                }
            }
            // The sender lives in `shared`, which we hold, so `changed` cannot fail.
            let _ = rx.changed().await;
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        match self.place {
            Place::HandedOver => return,
            Place::Holding => st.running = st.running.saturating_sub(1),
            Place::Queued => st.waiting.retain(|t| *t != self.ticket),
        }
        drop(st);
        self.shared.bump();
    }
}

/// A running task's slot; dropping it lets the next waiting task run.
#[derive(Debug)]
pub struct RunSlot {
    shared: Arc<Shared>,
}

impl Drop for RunSlot {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.running = st.running.saturating_sub(1);
        drop(st);
        self.shared.bump();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn first_task_runs_at_once() {
        let q = TaskQueue::new(1, 2);
        let w = q.try_enter().unwrap();
        assert_eq!(w.position(), 0, "holds a slot, not waiting");
        let mut reported = Vec::new();
        let slot = w.acquire(|p| reported.push(p)).await;
        assert!(
            reported.is_empty(),
            "no Queued event for a task that runs at once"
        );
        assert_eq!(
            q.depth(),
            QueueDepth {
                waiting: 0,
                running: 1
            }
        );
        drop(slot);
        assert_eq!(
            q.depth(),
            QueueDepth {
                waiting: 0,
                running: 0
            }
        );
    }

    #[tokio::test]
    async fn refuses_beyond_max_waiting() {
        let q = TaskQueue::new(1, 2);
        let _running = q.try_enter().unwrap().acquire(|_| {}).await;
        let _w1 = q.try_enter().unwrap();
        let _w2 = q.try_enter().unwrap();
        assert_eq!(
            q.try_enter().unwrap_err(),
            QueueFull {
                waiting: 2,
                limit: 2
            }
        );
        assert_eq!(
            q.depth(),
            QueueDepth {
                waiting: 2,
                running: 1
            }
        );
    }

    /// More slots start the waiting tasks at once, in order; fewer (and a shorter line) turn away
    /// nothing already in, and start nothing new until fewer run than the new bound.
    #[tokio::test(start_paused = true)]
    async fn new_limits_start_waiting_tasks_and_turn_away_nobody_already_in() {
        let q = TaskQueue::new(1, 3);
        let running = q.try_enter().unwrap().acquire(|_| {}).await;
        let waiters: Vec<_> = (0..3).map(|_| q.try_enter().unwrap()).collect();
        let started: Vec<_> = waiters
            .into_iter()
            .map(|w| tokio::spawn(w.acquire(|_| {})))
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(
            q.depth(),
            QueueDepth {
                waiting: 3,
                running: 1
            }
        );

        assert!(q.set_limits(3, 3));
        assert!(!q.set_limits(3, 3), "the same limits again change nothing");
        let mut started = started.into_iter();
        let second = started.next().unwrap().await.unwrap();
        let third = started.next().unwrap().await.unwrap();
        assert_eq!(
            q.depth(),
            QueueDepth {
                waiting: 1,
                running: 3
            }
        );

        // Fewer slots and a shorter line: the one waiting stays, a new task is refused.
        assert!(q.set_limits(1, 0));
        assert_eq!(q.limits(), (1, 0));
        assert_eq!(
            q.try_enter().unwrap_err(),
            QueueFull {
                waiting: 1,
                limit: 0
            }
        );
        let mut last = started.next().unwrap();
        drop(second);
        drop(third);
        tokio::task::yield_now().await;
        assert!(
            tokio::time::timeout(Duration::from_millis(1), &mut last)
                .await
                .is_err(),
            "one still runs: the bound is 1"
        );
        drop(running);
        let _fourth = last.await.unwrap();
        assert_eq!(
            q.depth(),
            QueueDepth {
                waiting: 0,
                running: 1
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_run_in_fifo_order_and_see_positions() {
        let q = TaskQueue::new(1, 5);
        let first = q.try_enter().unwrap().acquire(|_| {}).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut handles = Vec::new();
        for i in 0..3 {
            let w = q.try_enter().unwrap();
            assert_eq!(w.position(), i + 1);
            let order = order.clone();
            handles.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                let slot = w.acquire(|p| seen.push(p)).await;
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(slot);
                seen
            }));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        drop(first);
        let mut seen = Vec::new();
        for h in handles {
            seen.push(h.await.unwrap());
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        assert_eq!(seen[0], vec![1]);
        assert_eq!(seen[1], vec![2, 1]);
        assert_eq!(seen[2], vec![3, 2, 1]);
        assert_eq!(q.depth(), QueueDepth::default());
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_waiter_leaves_the_queue() {
        let q = TaskQueue::new(1, 5);
        let running = q.try_enter().unwrap().acquire(|_| {}).await;
        let w1 = q.try_enter().unwrap();
        let w2 = q.try_enter().unwrap();
        assert_eq!(w2.position(), 2);
        drop(w1);
        assert_eq!(w2.position(), 1);
        let next = tokio::spawn(w2.acquire(|_| {}));
        drop(running);
        let _slot = next.await.unwrap();
        assert_eq!(
            q.depth(),
            QueueDepth {
                waiting: 0,
                running: 1
            }
        );
    }

    /// The race the manager would see: a second task arriving before the first task's driver ran
    /// must be allowed to wait (the first one is running, not waiting).
    #[tokio::test]
    async fn a_task_that_runs_at_once_never_counts_as_waiting() {
        let q = TaskQueue::new(1, 1);
        let first = q.try_enter().unwrap();
        assert_eq!(
            q.depth(),
            QueueDepth {
                waiting: 0,
                running: 1
            },
            "the slot is taken on entry"
        );
        let second = q.try_enter().expect("room to wait behind the running task");
        assert_eq!(second.position(), 1);
        assert!(q.try_enter().is_err(), "the one waiting place is taken");
        // A task dropped before its driver ran gives its slot back.
        drop(first);
        assert_eq!(q.depth().running, 0);
        let _slot = second.acquire(|_| {}).await;
        assert_eq!(
            q.depth(),
            QueueDepth {
                waiting: 0,
                running: 1
            }
        );
    }

    #[tokio::test]
    async fn several_slots_run_concurrently() {
        let q = TaskQueue::new(2, 0);
        let a = q.try_enter().unwrap().acquire(|_| {}).await;
        let _b = q.try_enter().unwrap().acquire(|_| {}).await;
        assert!(q.try_enter().is_err(), "no waiting room");
        drop(a);
        assert!(q.try_enter().is_ok());
    }
}
