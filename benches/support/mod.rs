//! Shared pieces of the pool suite: where results go, markdown tables, distributions, and what
//! `/proc` says about a process.
//!
//! Every section of `benches/pool_suite.rs` produces a [`Section`]: markdown (tables plus a few
//! lines of notes) for `BENCHMARKS.md`, and a JSON document written to `target/bench/NAME.json`.

#![allow(dead_code)]

pub mod criterion_estimates;
pub mod failure;
pub mod live;
pub mod machine;
pub mod memory;
pub mod overload;
pub mod routing;
pub mod scheduling;
pub mod streaming;
pub mod task_start;

use anyhow::Context;
use comfy_table::{Table, presets::ASCII_MARKDOWN};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

// ===== Results =====

/// What one benchmark section produced.
#[derive(Debug)]
pub struct Section {
    /// File stem under `target/bench/` (`failure_detection` → `failure_detection.json`).
    pub name: &'static str,
    /// Markdown: a `###` heading, tables and notes.
    pub markdown: String,
    /// The figures as JSON.
    pub json: Value,
}

/// `target/bench` of this crate (or of `$CARGO_TARGET_DIR`).
pub fn out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench")
}

/// Writes `section.json` to `target/bench/NAME.json` and returns the path.
pub fn write_json(section: &Section) -> anyhow::Result<PathBuf> {
    let dir = out_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join(format!("{}.json", section.name));
    let text = serde_json::to_string_pretty(&section.json)?;
    std::fs::write(&path, text + "\n").with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// A markdown table with `header`, rows added by the caller.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(ASCII_MARKDOWN);
    t.set_header(header.iter().copied());
    t
}

// ===== Numbers =====

/// Nearest-rank percentile (`p` in 0..=100) of `values`; `NaN` when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Summary of a sample: count, min, p50, p95, max, mean.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Dist {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
    pub mean: f64,
}

impl Dist {
    /// Summarises `values` (all `NaN` when empty).
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        let mean = if n == 0 {
            f64::NAN
        } else {
            values.iter().sum::<f64>() / n as f64
        };
        Self {
            n,
            min: values.iter().copied().fold(f64::NAN, f64::min),
            p50: percentile(values, 50.0),
            p95: percentile(values, 95.0),
            max: values.iter().copied().fold(f64::NAN, f64::max),
            mean,
        }
    }
}

/// Milliseconds of a duration, as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// "1.23× (met)" / "4.56× (missed by 2.28×)": a measured ratio against a `≤ target` ratio.
pub fn verdict_le(measured: f64, target: f64) -> String {
    if measured <= target {
        "met".to_string()
    } else {
        format!("missed by {:.2}×", measured / target)
    }
}

// ===== /proc =====

/// Memory figures of one process, in KiB, from `/proc/PID/status` and `/proc/PID/smaps_rollup`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Mem {
    /// Resident set size now (`VmRSS`): counts shared pages (the binary's text) in full.
    pub rss_kib: u64,
    /// Peak resident set size (`VmHWM`).
    pub hwm_kib: u64,
    /// Anonymous resident memory (`RssAnon`): what this process alone holds on the heap/stacks.
    pub anon_kib: u64,
    /// Proportional set size (`Pss` from `smaps_rollup`): shared pages split between sharers,
    /// so summing it over a pool does not count the shared binary ten times.
    pub pss_kib: u64,
}

/// Reads `KEY:   123 kB` from a `/proc` status-like text.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Memory of process `pid`; `None` when it is gone.
pub fn mem(pid: u32) -> Option<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    Some(Mem {
        rss_kib: kib_field(&status, "VmRSS")?,
        hwm_kib: kib_field(&status, "VmHWM").unwrap_or(0),
        anon_kib: kib_field(&status, "RssAnon").unwrap_or(0),
        pss_kib: kib_field(&rollup, "Pss").unwrap_or(0),
    })
}

/// MiB from KiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `(pid, ppid)` of every live (non-zombie) process.
fn process_parents() -> Vec<(u32, u32)> {
    crate::common::processes()
        .into_iter()
        .filter(|&(_, state, _)| state != 'Z')
        .map(|(pid, _, ppid)| (pid, ppid))
        .collect()
}

/// Every live descendant of `pid` (children, grandchildren, …).
pub fn descendants(pid: u32) -> Vec<u32> {
    let all = process_parents();
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for &(child, parent) in &all {
            if parent == p && !found.contains(&child) {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found
}

/// True when `pid` is a live (non-zombie) process.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// The command line of `pid`, NULs as spaces.
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}
