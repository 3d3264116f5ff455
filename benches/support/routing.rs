//! Routing decision cost: reads what `cargo bench --bench routing` (criterion) left in
//! `target/criterion/pick_<strategy>/<n>/new/estimates.json` and computes, per strategy, the
//! ratio of the cost of one pick at 1,000 candidates to the cost at 10 (target ≤ 2×).
//!
//! It does not run criterion itself: `scripts/bench.sh` runs `benches/routing.rs` first.

use super::{Section, table, verdict_le};
use anyhow::Context;
use pas::manager::strategy::StrategyKind;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

const SIZES: [usize; 3] = [10, 100, 1000];

fn criterion_dir() -> PathBuf {
    super::out_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
        .join("criterion")
}

/// Point estimate and 95% interval of the mean, in nanoseconds.
fn estimate(kind: StrategyKind, n: usize) -> anyhow::Result<(f64, f64, f64)> {
    let dir = criterion_dir();
    let candidates = [
        dir.join(format!("pick_{kind}")).join(n.to_string()),
        dir.join("pick").join(kind.name()).join(n.to_string()),
    ];
    let path = candidates
        .iter()
        .map(|d| d.join("new/estimates.json"))
        .find(|p| p.exists())
        .with_context(|| {
            format!(
                "no criterion result for pick/{kind}/{n} under {} — run `cargo bench --bench routing` first",
                dir.display()
            )
        })?;
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?,
    )
    .with_context(|| format!("parse {}", path.display()))?;
    let mean = &v["mean"];
    let f = |x: &Value| x.as_f64().context("estimate not a number");
    Ok((
        f(&mean["point_estimate"])?,
        f(&mean["confidence_interval"]["lower_bound"])?,
        f(&mean["confidence_interval"]["upper_bound"])?,
    ))
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
    ]);
    let mut rows = Vec::new();
    for kind in StrategyKind::ALL {
        let est: Vec<(f64, f64, f64)> = SIZES
            .iter()
            .map(|&n| estimate(kind, n))
            .collect::<anyhow::Result<_>>()?;
        let ratio = est[2].0 / est[0].0;
        t.add_row(vec![
            kind.name().to_string(),
            format!("{:.1}", est[0].0),
            format!("{:.1}", est[1].0),
            format!("{:.1}", est[2].0),
            format!("{ratio:.1}×"),
            verdict_le(ratio, 2.0),
        ]);
        rows.push(json!({
            "strategy": kind.name(),
            "mean_ns": SIZES.iter().zip(&est).map(|(n, e)| json!({"n": n, "mean": e.0, "ci95": [e.1, e.2]})).collect::<Vec<_>>(),
            "ratio_1000_over_10": ratio,
        }));
    }
    let markdown = format!(
        "### Routing decision cost (criterion, `benches/routing.rs`)\n\nMean time of one \
         `Strategy::pick` over 10, 100 and 1,000 candidates (one in seven without room, so each \
         strategy scans fully), from criterion's latest run.\n\n{t}\n"
    );
    Ok(Section {
        name: "routing",
        markdown,
        json: json!({"rows": rows, "target": {"ratio_1000_over_10_le": 2.0}}),
    })
}
