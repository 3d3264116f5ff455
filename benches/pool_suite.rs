//! The pool's performance suite (issue 7, item 3): failure detection, memory, scheduling
//! quality, streaming, and the routing-cost ratio from criterion's results.
//!
//! Run: `cargo bench --bench pool_suite [-- SECTION… | --quick]` with SECTION among `machine`,
//! `scheduling`, `heterogeneous`, `failure`, `memory`, `streaming`, `routing`, `overload`, `task_start` (default: all; `routing` needs
//! `cargo bench --bench routing` first). `scripts/bench.sh` runs every benchmark and rebuilds the
//! tables of `BENCHMARKS.md`.
//!
//! Every section prints a markdown table, writes `target/bench/<section>.json`, and all sections
//! of the run go to `target/bench/pool_suite.md`. Real processes (`pas llm-sim`, `pas programmer`,
//! `pas manager`, aider from `.aider-venv`) are started with the shared test harness
//! (`tests/common`), from the binary cargo built for this bench (`target/release/pas`). Targets
//! are reported against, never asserted.

#![forbid(unsafe_code)]

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use anyhow::bail;
use support::Section;

const SECTIONS: [&str; 9] = [
    "machine",
    "scheduling",
    "heterogeneous",
    "failure",
    "memory",
    "streaming",
    "routing",
    "overload",
    "task_start",
];

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it, and a
    // test run must not start a 15-minute suite of real processes.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "pool_suite: a benchmark; run it with `cargo bench --bench pool_suite` or scripts/bench.sh"
        );
        return Ok(());
    }
    let quick = args.iter().any(|a| a == "--quick");
    let mut wanted: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    if let Some(bad) = wanted.iter().find(|w| !SECTIONS.contains(w)) {
        bail!("unknown section {bad:?}; expected any of {SECTIONS:?}");
    }
    if wanted.is_empty() {
        wanted = SECTIONS.to_vec();
    }
    let mut markdown = String::new();
    let mut failed = Vec::new();
    for name in wanted {
        eprintln!("== pool_suite: {name}");
        let section: anyhow::Result<Section> = match name {
            "machine" => support::machine::run(),
            "scheduling" => support::scheduling::run(1000, if quick { 3 } else { 20 }),
            "heterogeneous" => {
                support::scheduling::run_heterogeneous(1000, if quick { 3 } else { 20 })
            }
            "failure" => support::failure::run(if quick { 2 } else { 10 }),
            "memory" => {
                if quick {
                    support::memory::run(500, 32, 2)
                } else {
                    support::memory::run(5000, 64, 4)
                }
            }
            "streaming" => support::streaming::run(if quick { 1 } else { 5 }),
            "routing" => support::routing::run(),
            "overload" => {
                if quick {
                    support::overload::run(&[1000], std::time::Duration::from_secs(5))
                } else {
                    support::overload::run(&[1000, 10_000], std::time::Duration::from_secs(30))
                }
            }
            "task_start" => support::task_start::run(if quick { 3 } else { 8 }, 20),
            _ => unreachable!("checked above"),
        };
        match section {
            Ok(s) => {
                println!("{}", s.markdown);
                let path = support::write_json(&s)?;
                eprintln!("wrote {}", path.display());
                markdown.push_str(&s.markdown);
                markdown.push('\n');
            }
            Err(e) => {
                eprintln!("pool_suite: section {name} failed: {e:#}");
                markdown.push_str(&format!("### {name}\n\nFAILED in this run: {e:#}\n\n"));
                failed.push(name);
            }
        }
    }
    let dir = support::out_dir();
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("pool_suite.md"), &markdown)?;
    if !failed.is_empty() {
        bail!("sections failed: {failed:?}");
    }
    Ok(())
}
