//! Routing decision cost: reads what `cargo bench --bench routing` (criterion) left in
//! `target/criterion/` and computes, per strategy, the ratio of the cost of one routing decision
//! at 1,000 candidates to the cost at 10 (target ≤ 2×): the indexed decision the balancer makes
//! (`decision/<strategy>`), with the linear `pick/<strategy>` (the former path) for reference.
//!
//! It does not run criterion itself: `scripts/bench.sh` runs `benches/routing.rs` first.

use super::criterion_estimates::mean_ns;
use super::{Section, table, verdict_le};
use pas::manager::strategy::StrategyKind;
use serde_json::json;

const SIZES: [usize; 3] = [10, 100, 1000];

/// Mean and 95% interval (ns) of `group` at each of [`SIZES`].
fn estimates(group: &str) -> anyhow::Result<Vec<(f64, f64, f64)>> {
    SIZES
        .iter()
        .map(|&n| mean_ns(group, &n.to_string()))
        .collect()
}

/// The routing table from criterion's latest results.
pub fn run() -> anyhow::Result<Section> {
    let mut t = table(&[
        "strategy",
        "10 (ns)",
        "100 (ns)",
        "1,000 (ns)",
        "1,000 ÷ 10",
        "target ≤ 2×",
        "linear pick 1,000 ÷ 10",
    ]);
    let mut rows = Vec::new();
    for kind in StrategyKind::ALL {
        let est = estimates(&format!("decision/{kind}"))?;
        let linear = estimates(&format!("pick/{kind}"))?;
        let ratio = est[2].0 / est[0].0;
        let linear_ratio = linear[2].0 / linear[0].0;
        t.add_row(vec![
            kind.name().to_string(),
            format!("{:.1}", est[0].0),
            format!("{:.1}", est[1].0),
            format!("{:.1}", est[2].0),
            format!("{ratio:.2}×"),
            verdict_le(ratio, 2.0),
            format!("{linear_ratio:.1}×"),
        ]);
        let means = |e: &[(f64, f64, f64)]| {
            SIZES
                .iter()
                .zip(e)
                .map(|(n, e)| json!({"n": n, "mean": e.0, "ci95": [e.1, e.2]}))
                .collect::<Vec<_>>()
        };
        rows.push(json!({
            "strategy": kind.name(),
            "mean_ns": means(&est),
            "ratio_1000_over_10": ratio,
            "linear_pick_mean_ns": means(&linear),
            "linear_pick_ratio_1000_over_10": linear_ratio,
        }));
    }
    let markdown = format!(
        "### Routing decision cost (criterion, `benches/routing.rs`)\n\nMean time of one \
         routing decision over 10, 100 and 1,000 candidates (one in seven without room), from \
         criterion's latest run: a pick from the tier's candidate index plus the index updates \
         of the dispatch and of the stream's end (`decision/<strategy>`). The last column is the \
         linear `Strategy::pick` over a slice (`pick/<strategy>`, the former path).\n\n{t}\n"
    );
    Ok(Section {
        name: "routing",
        markdown,
        json: json!({"rows": rows, "target": {"ratio_1000_over_10_le": 2.0}}),
    })
}
