//! Criterion's results as `cargo bench --bench routing` left them in `target/criterion/`: read by
//! that bench (to print the 1,000 ÷ 10 ratios after its run) and by pool_suite's routing section.
//! Included by both with `#[path]`, so it uses nothing but std, anyhow and serde_json.

use anyhow::Context;
use serde_json::Value;
use std::path::PathBuf;

/// Criterion's output directory: `target/criterion` of this crate (or of `$CARGO_TARGET_DIR`).
pub fn criterion_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("criterion")
}

/// Point estimate and 95% interval of the mean of benchmark `group/param`, in nanoseconds, from
/// criterion's latest run (it stores group `a/b` under `a_b`).
pub fn mean_ns(group: &str, param: &str) -> anyhow::Result<(f64, f64, f64)> {
    let dir = criterion_dir();
    let path = [dir.join(group.replace('/', "_")), dir.join(group)]
        .iter()
        .map(|d| d.join(param).join("new/estimates.json"))
        .find(|p| p.exists())
        .with_context(|| {
            format!(
                "no criterion result for {group}/{param} under {} — run `cargo bench --bench routing` first",
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
