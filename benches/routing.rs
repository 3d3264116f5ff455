//! Cost of one routing decision per strategy, over 10, 49 (the original's ceiling), 100 and 1000
//! candidates.
//!
//! Run: `cargo bench --bench routing`; after criterion's report it prints the 1,000 ÷ 10 ratio
//! per strategy (issue 7's target: ≤ 2×). Two groups per strategy:
//!
//! - `decision/<strategy>`: what the balancer's routing path does per task: a pick from the tier's
//!   [`CandidateIndex`] with [`Strategy::pick_indexed`], then the index maintenance that task
//!   causes, as `Balancer::reindex_dirty` does for a dirty member: the dispatch takes the member
//!   out (its endpoint goes back to pending), it comes back with one more task in flight when
//!   the endpoint is ready again, and back to its count when the task's stream ends (three
//!   [`CandidateIndex::set`]). p2c compares the loads of the two members it draws (the balancer
//!   reads their PeakEwma costs).
//! - `pick/<strategy>`: the linear [`Strategy::pick`] over a prepared slice, the former routing
//!   path and the reference the index is tested against.
//!
//! Candidates have varied outstanding counts, loads and expected times per task (three LLM
//! speeds), and one in seven has no room (busy: least_expected_wait may hold a task for it).

#![forbid(unsafe_code)]

#[path = "support/criterion_estimates.rs"]
mod criterion_estimates;

use criterion::{BenchmarkId, Criterion, criterion_group};
use pas::manager::strategy::{
    Candidate, CandidateIndex, Figures, StrategyKind, StrategySet, Tier, TierRegistry,
};
use std::hint::black_box;

const SIZES: [usize; 4] = [10, 49, 100, 1000];

fn candidates(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            index: i,
            queue_depth: ((i * 7919) % 6) as u32,
            in_flight: ((i * 104_729) % 3) as u32,
            has_room: i % 7 != 3,
            load: ((i * 31) % 97) as f64 / 10.0,
            available: true,
            // Three LLM speeds (least_expected_wait's expected time per task); the busy members
            // are on a much slower one, so least_expected_wait places the task instead of
            // holding it for them (a hold decides nothing and changes no figure).
            task_ms: if i % 7 != 3 {
                [20_000, 45_000, 120_000][(i * 13) % 3]
            } else {
                10_000_000
            },
            slots: 1,
        })
        .collect()
}

/// The candidates' tier and its index, as the balancer holds them.
fn indexed(cands: &[Candidate]) -> (Tier, CandidateIndex) {
    let tier = TierRegistry::default().intern(cands.iter().map(|c| c.index).collect());
    let mut index = CandidateIndex::new(&tier, |i| i);
    for c in cands {
        index.update(
            c.index,
            Some(Figures {
                outstanding: c.outstanding(),
                has_room: c.has_room,
                task_ms: c.task_ms,
                slots: c.slots,
            }),
        );
    }
    (tier, index)
}

fn decision(c: &mut Criterion) {
    let set = StrategySet::with_seed(1);
    for kind in StrategyKind::ALL {
        let mut group = c.benchmark_group(format!("decision/{kind}"));
        for n in SIZES {
            let cands = candidates(n);
            let (_tier, mut index) = indexed(&cands);
            let load = |a: usize, b: usize| cands[a].load.total_cmp(&cands[b].load);
            let strategy = set.get(kind);
            group.bench_function(BenchmarkId::from_parameter(n), |b| {
                b.iter(|| {
                    let picked = strategy
                        .pick_indexed(black_box("fast,free"), &index, black_box(&[]), &load, 1)
                        .expect("candidates with room");
                    let outstanding = cands[picked].outstanding();
                    let task_ms = cands[picked].task_ms;
                    let figures = |outstanding, has_room| {
                        Some(Figures {
                            outstanding,
                            has_room,
                            task_ms,
                            slots: 1,
                        })
                    };
                    // Dispatched: one more in flight, its endpoint pending (busy).
                    index.update(picked, figures(outstanding + 1, false));
                    index.update(picked, figures(outstanding + 1, true)); // ready again
                    index.update(picked, figures(outstanding, true)); // the task's stream ended
                    picked
                })
            });
        }
        group.finish();
    }
}

fn pick(c: &mut Criterion) {
    let set = StrategySet::with_seed(1);
    for kind in StrategyKind::ALL {
        let mut group = c.benchmark_group(format!("pick/{kind}"));
        for n in SIZES {
            let cands = candidates(n);
            group.bench_with_input(BenchmarkId::from_parameter(n), &cands, |b, cands| {
                let strategy = set.get(kind);
                b.iter(|| strategy.pick(black_box("fast,free"), black_box(cands), 1))
            });
        }
        group.finish();
    }
}

/// Mean per decision at 10, 49, 100, 1,000 and the ratio 1,000 ÷ 10, per group and strategy, from
/// the results criterion just wrote (a filtered run prints what it has).
fn print_ratios() {
    println!("\nrouting cost, mean per decision (ns); target: 1,000 ÷ 10 ≤ 2×");
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "benchmark", "10", "49", "100", "1,000", "1,000÷10"
    );
    for prefix in ["decision", "pick"] {
        for kind in StrategyKind::ALL {
            let group = format!("{prefix}/{kind}");
            let means: Option<Vec<f64>> = SIZES
                .iter()
                .map(|n| criterion_estimates::mean_ns(&group, &n.to_string()).ok())
                .map(|e| e.map(|(mean, _, _)| mean))
                .collect();
            if let Some(m) = means {
                println!(
                    "{group:<28} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.2}×",
                    m[0],
                    m[1],
                    m[2],
                    m[3],
                    m[3] / m[0]
                );
            }
        }
    }
}

criterion_group!(benches, decision, pick);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo test --all-targets` runs this binary without `--bench` (one pass, no estimates).
    if std::env::args().any(|a| a == "--bench") {
        print_ratios();
    }
}
