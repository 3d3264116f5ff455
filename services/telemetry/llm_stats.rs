//! Per-LLM task figures for `pas status`: p50/p95 task duration and success rate, computed by the
//! manager from the results of the tasks it finished (the same results that feed the
//! `pas_pool_task_duration_seconds` histogram).
//!
//! Counts are exact since the manager started; percentiles are exact (nearest rank) over each
//! LLM's most recent [`WINDOW`] tasks, so memory stays bounded however long the manager runs.

use crate::contract::v1::{ErrorClass, LlmStats as LlmStatsProto, TaskResult, TaskState};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

/// How many recent task durations per LLM the percentiles are computed over.
pub const WINDOW: usize = 1000;

#[derive(Debug, Default)]
struct Entry {
    tasks: u64,
    succeeded: u64,
    attempts: u64,
    attempts_failed: u64,
    recent_ms: VecDeque<u64>,
}

/// The figures of every LLM that finished a task. Shared by the manager's tasks (`Sync`).
#[derive(Debug, Default)]
pub struct LlmStats {
    by_llm: Mutex<BTreeMap<String, Entry>>,
}

impl LlmStats {
    /// Adds a finished task. Dry runs, cancelled tasks and tasks that never reached an LLM
    /// (queue timeouts, budget refusals) do not count towards a task figure; every attempt but a
    /// cancelled one counts towards its LLM's attempt figures.
    pub fn record(&self, result: &TaskResult) {
        let mut map = self.by_llm.lock().unwrap_or_else(|p| p.into_inner());
        if result.dry_run {
            return;
        }
        for a in &result.attempts {
            // A cancelled attempt says nothing about its LLM.
            if a.llm.is_empty() || a.error_class == ErrorClass::Cancelled as i32 {
                continue;
            }
            let e = map.entry(a.llm.clone()).or_default();
            e.attempts += 1;
            if a.error_class != ErrorClass::None as i32 {
                e.attempts_failed += 1;
            }
        }
        let state = TaskState::try_from(result.status).unwrap_or(TaskState::Unspecified);
        let counts = matches!(
            state,
            TaskState::Succeeded | TaskState::Failed | TaskState::TimedOut
        );
        if !counts || result.llm_used.is_empty() {
            return;
        }
        let e = map.entry(result.llm_used.clone()).or_default();
        e.tasks += 1;
        if state == TaskState::Succeeded {
            e.succeeded += 1;
        }
        if e.recent_ms.len() == WINDOW {
            e.recent_ms.pop_front();
        }
        e.recent_ms.push_back(result.duration_ms);
    }

    /// The figures now, sorted by LLM name.
    pub fn snapshot(&self) -> Vec<LlmStatsProto> {
        let map = self.by_llm.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(llm, e)| {
                let mut sorted: Vec<u64> = e.recent_ms.iter().copied().collect();
                sorted.sort_unstable();
                LlmStatsProto {
                    llm: llm.clone(),
                    tasks: e.tasks,
                    succeeded: e.succeeded,
                    success_rate: if e.tasks == 0 {
                        0.0
                    } else {
                        e.succeeded as f64 / e.tasks as f64
                    },
                    p50_duration_ms: percentile(&sorted, 50.0),
                    p95_duration_ms: percentile(&sorted, 95.0),
                    attempts: e.attempts,
                    attempts_failed: e.attempts_failed,
                }
            })
            .collect()
    }
}

/// Nearest-rank percentile of ascending `sorted` values (0 when empty).
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::v1::Attempt;

    fn task(llm: &str, state: TaskState, ms: u64, attempts: &[(&str, ErrorClass)]) -> TaskResult {
        TaskResult {
            status: state as i32,
            llm_used: llm.into(),
            duration_ms: ms,
            attempts: attempts
                .iter()
                .enumerate()
                .map(|(i, (llm, class))| Attempt {
                    number: i as u32 + 1,
                    llm: llm.to_string(),
                    error_class: *class as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 95.0), 95);
        assert_eq!(percentile(&[7], 95.0), 7);
        assert_eq!(percentile(&[1, 2], 50.0), 1);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn counts_tasks_by_final_llm_and_attempts_by_each_llm() {
        let stats = LlmStats::default();
        for ms in [1000, 2000, 3000, 4000] {
            stats.record(&task(
                "a",
                TaskState::Succeeded,
                ms,
                &[("a", ErrorClass::None)],
            ));
        }
        // Failed over from a to b, then succeeded on b.
        stats.record(&task(
            "b",
            TaskState::Succeeded,
            9000,
            &[("a", ErrorClass::RateLimit), ("b", ErrorClass::None)],
        ));
        stats.record(&task(
            "b",
            TaskState::Failed,
            5000,
            &[("b", ErrorClass::EditFailed)],
        ));
        // Not counted as tasks: a dry run, a cancellation, a queue timeout.
        let mut dry = task("a", TaskState::Succeeded, 1, &[]);
        dry.dry_run = true;
        stats.record(&dry);
        stats.record(&task(
            "a",
            TaskState::Cancelled,
            1,
            &[("a", ErrorClass::Cancelled)],
        ));
        stats.record(&task("", TaskState::Failed, 1, &[]));

        let s = stats.snapshot();
        assert_eq!(s.len(), 2);
        let a = &s[0];
        assert_eq!((a.llm.as_str(), a.tasks, a.succeeded), ("a", 4, 4));
        assert_eq!(a.success_rate, 1.0);
        assert_eq!((a.p50_duration_ms, a.p95_duration_ms), (2000, 4000));
        assert_eq!((a.attempts, a.attempts_failed), (5, 1));
        let b = &s[1];
        assert_eq!((b.tasks, b.succeeded, b.success_rate), (2, 1, 0.5));
        assert_eq!((b.p50_duration_ms, b.p95_duration_ms), (5000, 9000));
        assert_eq!((b.attempts, b.attempts_failed), (2, 1));
    }

    #[test]
    fn percentiles_cover_only_the_recent_window() {
        let stats = LlmStats::default();
        for _ in 0..WINDOW {
            stats.record(&task("a", TaskState::Succeeded, 100_000, &[]));
        }
        for _ in 0..WINDOW {
            stats.record(&task("a", TaskState::Succeeded, 10, &[]));
        }
        let s = &stats.snapshot()[0];
        assert_eq!(s.tasks, 2 * WINDOW as u64);
        assert_eq!(s.p95_duration_ms, 10);
    }
}
