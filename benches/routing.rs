//! Cost of one routing decision per strategy, over 10, 100 and 1000 candidates.
//!
//! Run: `cargo bench --bench routing`. Candidates have varied queue depths and loads, and one in
//! seven has no room, so every strategy does its full scan.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use pas::manager::strategy::{Candidate, StrategyKind, StrategySet};
use std::hint::black_box;

fn candidates(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| Candidate {
            index: i,
            queue_depth: ((i * 7919) % 6) as u32,
            in_flight: ((i * 104_729) % 3) as u32,
            has_room: i % 7 != 3,
            load: ((i * 31) % 97) as f64 / 10.0,
        })
        .collect()
}

fn pick(c: &mut Criterion) {
    let set = StrategySet::with_seed(1);
    for kind in StrategyKind::ALL {
        let mut group = c.benchmark_group(format!("pick/{kind}"));
        for n in [10usize, 100, 1000] {
            let cands = candidates(n);
            group.bench_with_input(BenchmarkId::from_parameter(n), &cands, |b, cands| {
                let strategy = set.get(kind);
                b.iter(|| strategy.pick(black_box("fast,free"), black_box(cands)))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, pick);
criterion_main!(benches);
