//! Restart delays for supervised children: exponential, capped, and forgiven after a good run.
//!
//! A child that crashes right after starting (bad port, bad config) must not be restarted in a
//! tight loop, but one that ran fine for a long time and then crashed once should come back fast.

use std::time::Duration;

/// Exponential restart backoff: `initial`, doubling up to `max`; a run of at least `reset_after`
/// starts the sequence over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    reset_after: Duration,
    next: Duration,
}

impl Default for Backoff {
    /// 0.5 s doubling to 30 s, reset after 60 s of running.
    fn default() -> Self {
        Self::new(
            Duration::from_millis(500),
            Duration::from_secs(30),
            Duration::from_secs(60),
        )
    }
}

impl Backoff {
    /// A backoff starting at `initial` (at least 1 ms), capped at `max`.
    pub fn new(initial: Duration, max: Duration, reset_after: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Self {
            initial,
            max: max.max(initial),
            reset_after,
            next: initial,
        }
    }

    /// The delay before restarting a child whose last run lasted `ran_for`.
    pub fn after_exit(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.reset_after {
            self.next = self.initial;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..9)
            .map(|_| b.after_exit(ms(10)).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
    }

    #[test]
    fn a_long_run_resets_the_sequence() {
        let mut b = Backoff::new(ms(100), ms(1000), Duration::from_secs(60));
        assert_eq!(b.after_exit(ms(1)), ms(100));
        assert_eq!(b.after_exit(ms(1)), ms(200));
        assert_eq!(b.after_exit(ms(1)), ms(400));
        assert_eq!(b.after_exit(Duration::from_secs(59)), ms(800));
        assert_eq!(b.after_exit(Duration::from_secs(60)), ms(100));
        assert_eq!(b.after_exit(ms(1)), ms(200));
    }

    #[test]
    fn degenerate_settings_are_clamped() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO, Duration::ZERO);
        assert_eq!(b.after_exit(Duration::ZERO), ms(1));
        assert_eq!(b.after_exit(Duration::ZERO), ms(1));
    }
}
