//! How long a task takes on each LLM, as `least_expected_wait` needs it: a time-decayed mean of
//! the tasks finished here, on tokio's clock.
//!
//! One figure per LLM (not per programmer): a programmer's expected time per task is the figure
//! of the LLM it would use now — its backup's while its breaker is open (`GetStatus` says which,
//! see [`Member::with_current_llm`](super::membership::Member::with_current_llm)). An LLM not seen
//! yet has the prior.
//!
//! The mean weighs each sample by `2^(-age / half_life)`, so a model that became slower (or a
//! provider that recovered) moves the figure within a few half-lives, however many old samples
//! there were. The prior counts as a tenth of a sample taken when the LLM was first asked about:
//! the first finished task nearly replaces it, and it fades the same way.
//!
//! Routing reads the *published* figure, which changes only when the estimate moved by more than
//! [`PUBLISH_CHANGE`] since it was last published: the balancer then re-reads the members on that
//! LLM ([`take_changed`](DurationEstimates::take_changed)). A steady pool therefore costs no
//! re-indexing per finished task.

use crate::contract::v1::{ErrorClass, TaskResult, TaskState};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Expected task duration of an LLM no task has finished on yet (a typical aider run on a local
/// model).
pub const PRIOR: Duration = Duration::from_secs(60);
/// Age at which a sample counts half.
pub const HALF_LIFE: Duration = Duration::from_secs(600);
/// Relative change of the estimate that is published to routing.
pub const PUBLISH_CHANGE: f64 = 0.10;
/// How many samples the prior counts for: a tenth, so the first finished task nearly replaces it.
const PRIOR_WEIGHT: f64 = 0.1;

#[derive(Debug)]
struct Entry {
    /// Decayed sum of sample durations, ms.
    sum_ms: f64,
    /// Decayed number of samples.
    weight: f64,
    /// When `sum_ms` and `weight` were last decayed.
    at: Instant,
    /// The figure routing reads.
    published_ms: u64,
}

impl Entry {
    fn mean_ms(&self) -> f64 {
        self.sum_ms / self.weight
    }
}

/// Per-LLM decayed task durations. Shared by the manager (records results) and the balancer
/// (reads figures), `Sync`.
#[derive(Debug)]
pub struct DurationEstimates {
    prior_ms: u64,
    half_life: Duration,
    by_llm: Mutex<HashMap<String, Entry>>,
    /// LLMs whose published figure changed since the balancer last asked.
    changed: Mutex<Vec<String>>,
}

impl Default for DurationEstimates {
    fn default() -> Self {
        Self::new(PRIOR, HALF_LIFE)
    }
}

impl DurationEstimates {
    /// Estimates starting at `prior` for every LLM, samples halving in weight every `half_life`.
    pub fn new(prior: Duration, half_life: Duration) -> Self {
        Self {
            prior_ms: (prior.as_millis() as u64).max(1),
            half_life: half_life.max(Duration::from_millis(1)),
            by_llm: Mutex::new(HashMap::new()),
            changed: Mutex::new(Vec::new()),
        }
    }

    fn entry<'a>(&self, map: &'a mut HashMap<String, Entry>, llm: &str) -> &'a mut Entry {
        if !map.contains_key(llm) {
            map.insert(
                llm.to_owned(),
                Entry {
                    sum_ms: self.prior_ms as f64 * PRIOR_WEIGHT,
                    weight: PRIOR_WEIGHT,
                    at: Instant::now(),
                    published_ms: self.prior_ms,
                },
            );
        }
        map.get_mut(llm).expect("inserted above")
    }

    /// Adds one task that took `ms` on `llm`.
    pub fn record_sample(&self, llm: &str, ms: u64) {
        let mut map = self.by_llm.lock().unwrap_or_else(|p| p.into_inner());
        let half_life = self.half_life.as_secs_f64();
        let e = self.entry(&mut map, llm);
        let now = Instant::now();
        let decay = 0.5f64.powf(now.duration_since(e.at).as_secs_f64() / half_life);
        e.sum_ms = e.sum_ms * decay + ms as f64;
        e.weight = e.weight * decay + 1.0;
        e.at = now;
        let mean = e.mean_ms();
        let published = e.published_ms as f64;
        if (mean - published).abs() > published * PUBLISH_CHANGE {
            e.published_ms = (mean.round() as u64).max(1);
            drop(map);
            let mut changed = self.changed.lock().unwrap_or_else(|p| p.into_inner());
            if !changed.iter().any(|c| c == llm) {
                changed.push(llm.to_owned());
            }
        }
    }

    /// Adds a finished task: the time its attempts took (failovers included: a failing primary
    /// makes its programmer slower), booked to the LLM its first attempt used — the one routing
    /// saw when it placed the task. Dry runs, cancelled tasks and tasks that never ran are left
    /// out.
    pub fn record(&self, result: &TaskResult) {
        let state = TaskState::try_from(result.status).unwrap_or(TaskState::Unspecified);
        if result.dry_run
            || !matches!(
                state,
                TaskState::Succeeded | TaskState::Failed | TaskState::TimedOut
            )
        {
            return;
        }
        let Some(first) = result.attempts.first() else {
            return;
        };
        if first.llm.is_empty()
            || result
                .attempts
                .iter()
                .any(|a| a.error_class == ErrorClass::Cancelled as i32)
        {
            return;
        }
        let ms: u64 = result.attempts.iter().map(|a| a.duration_ms).sum();
        self.record_sample(&first.llm, ms);
    }

    /// The published expected duration of a task on `llm`, ms (the prior when none finished).
    pub fn estimate_ms(&self, llm: &str) -> u64 {
        let map = self.by_llm.lock().unwrap_or_else(|p| p.into_inner());
        map.get(llm).map_or(self.prior_ms, |e| e.published_ms)
    }

    /// Moves the LLMs whose published figure changed since the last call into `out` (cleared
    /// first).
    pub fn take_changed(&self, out: &mut Vec<String>) {
        out.clear();
        std::mem::swap(
            &mut *self.changed.lock().unwrap_or_else(|p| p.into_inner()),
            out,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::v1::Attempt;

    fn result(state: TaskState, attempts: &[(&str, u64, ErrorClass)]) -> TaskResult {
        TaskResult {
            status: state as i32,
            attempts: attempts
                .iter()
                .enumerate()
                .map(|(i, (llm, ms, class))| Attempt {
                    number: i as u32 + 1,
                    llm: llm.to_string(),
                    duration_ms: *ms,
                    error_class: *class as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unseen_llms_have_the_prior_and_samples_move_it() {
        let d = DurationEstimates::new(Duration::from_secs(60), Duration::from_secs(600));
        assert_eq!(d.estimate_ms("a"), 60_000);
        // One sample of 20 s next to the prior (a tenth of a sample): (6 + 20) / 1.1 s.
        d.record_sample("a", 20_000);
        assert_eq!(d.estimate_ms("a"), 23_636);
        let mut changed = Vec::new();
        d.take_changed(&mut changed);
        assert_eq!(changed, vec!["a".to_string()]);
        d.take_changed(&mut changed);
        assert!(changed.is_empty());
        assert_eq!(d.estimate_ms("b"), 60_000);
    }

    #[tokio::test(start_paused = true)]
    async fn old_samples_fade_with_the_half_life() {
        let d = DurationEstimates::new(Duration::from_secs(10), Duration::from_secs(100));
        for _ in 0..9 {
            d.record_sample("m", 10_000);
        }
        assert_eq!(d.estimate_ms("m"), 10_000);
        // The model becomes four times slower. Right away, one slow sample among ten moves the
        // mean by 30 % (published: more than 10 %).
        d.record_sample("m", 40_000);
        assert_eq!(d.estimate_ms("m"), 12_970);
        // Ten half-lives later the old samples weigh ~1/1024: the next slow sample dominates.
        tokio::time::advance(Duration::from_secs(1000)).await;
        d.record_sample("m", 40_000);
        let est = d.estimate_ms("m");
        assert!((39_000..=40_000).contains(&est), "{est}");
    }

    #[tokio::test(start_paused = true)]
    async fn small_changes_are_not_published() {
        let d = DurationEstimates::new(Duration::from_secs(10), Duration::from_secs(600));
        let mut changed = Vec::new();
        for _ in 0..20 {
            d.record_sample("m", 10_000);
        }
        d.take_changed(&mut changed);
        // 5 % slower samples never cross the 10 % threshold.
        for _ in 0..50 {
            d.record_sample("m", 10_500);
        }
        d.take_changed(&mut changed);
        assert!(changed.is_empty(), "{changed:?}");
        assert_eq!(d.estimate_ms("m"), 10_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_result_books_its_attempts_to_the_first_llm() {
        let d = DurationEstimates::new(Duration::from_secs(1), Duration::from_secs(600));
        // Primary failed after 3 s, backup took 7 s: 10 s booked to the primary, next to the
        // prior of 1 s (a tenth of a sample).
        d.record(&result(
            TaskState::Succeeded,
            &[
                ("p", 3_000, ErrorClass::RateLimit),
                ("b", 7_000, ErrorClass::None),
            ],
        ));
        assert_eq!(d.estimate_ms("p"), 9_182);
        assert_eq!(d.estimate_ms("b"), 1_000);
        // Cancelled, dry or attempt-less tasks say nothing.
        d.record(&result(
            TaskState::Cancelled,
            &[("b", 99_000, ErrorClass::Cancelled)],
        ));
        let mut dry = result(TaskState::Succeeded, &[("b", 99_000, ErrorClass::None)]);
        dry.dry_run = true;
        d.record(&dry);
        d.record(&result(TaskState::Failed, &[]));
        assert_eq!(d.estimate_ms("b"), 1_000);
    }
}
