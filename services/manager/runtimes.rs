//! The manager's serving runtimes (`manager.runtimes`): one current-thread tokio runtime per
//! serving thread, each accepting its own share of the port's connections and holding its own
//! connections to the programmers.
//!
//! Why: on one thread, a task's steps (accept, record, Execute, relay, result) follow each other
//! with no wake-up of another thread, which gives the lowest latency to a lone caller; but dozens
//! of callers then queue on that one thread while the other cores idle. A multi-threaded runtime
//! spreads them, at the price of hand-offs between threads on every task's path. Here each
//! connection is served start to end by the runtime that accepted it, and a task it starts talks
//! to its programmer over that runtime's own channel (a tonic channel's connection task lives on
//! the runtime that made it), so a task never changes threads, and many connections still spread
//! over the cores. Shared state (the store, the pool view, the queue) is the same `Arc<Manager>`
//! on every runtime.
//!
//! This module only knows which runtime a thread is: the main one (0, also every thread that is
//! not a serving runtime: the store's, the probes') or one of the others (1..).

use std::cell::Cell;

thread_local! {
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as serving runtime `slot` (called first on each extra serving thread).
pub fn enter(slot: usize) {
    SLOT.with(|s| s.set(slot));
}

/// The serving runtime the calling thread runs: 0 for the main one and for any other thread.
pub fn current() -> usize {
    SLOT.with(Cell::get)
}

/// How many serving runtimes `configured` (`manager.runtimes`) asks for: 0 is one per core.
pub fn count(configured: u32) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_is_the_main_runtime_until_it_enters_another() {
        assert_eq!(current(), 0);
        std::thread::spawn(|| {
            assert_eq!(current(), 0);
            enter(3);
            assert_eq!(current(), 3);
        })
        .join()
        .unwrap();
        // Marks are per thread.
        assert_eq!(current(), 0);
    }

    #[test]
    fn zero_is_one_per_core() {
        assert!(count(0) >= 1);
        assert_eq!(
            count(0),
            std::thread::available_parallelism().map_or(1, usize::from)
        );
        assert_eq!(count(1), 1);
        assert_eq!(count(4), 4);
    }
}
