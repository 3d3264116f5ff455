//! The machine and build the figures come from: CPU, cores, memory, kernel, rustc, commit, date.

use super::{Section, table};
use serde_json::json;
use std::process::Command;

fn first_line_with(path: &str, key: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
        l.starts_with(key)
            .then(|| l.split_once(':').map(|x| x.1.trim().to_string()))
            .flatten()
    })
}

fn command(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Describes this machine.
pub fn run() -> anyhow::Result<Section> {
    let cpu = first_line_with("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = first_line_with("/proc/meminfo", "MemTotal").unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let rustc = command("rustc", &["-V"]).unwrap_or_default();
    let commit = command("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_default();
    let dirty = command("git", &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    let date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release (cargo bench)"
    };
    let pas_path = env!("CARGO_BIN_EXE_pas");
    let pas = pas_path
        .strip_prefix(concat!(env!("CARGO_MANIFEST_DIR"), "/"))
        .unwrap_or(pas_path);
    let mut t = table(&["", ""]);
    let commit_text = format!("{commit}{}", if dirty { " (+ local changes)" } else { "" });
    for (k, v) in [
        ("date", date.as_str()),
        ("CPU", cpu.as_str()),
        ("cores", &cores.to_string()),
        ("memory", mem.as_str()),
        ("kernel", kernel.as_str()),
        ("rustc", rustc.as_str()),
        ("commit", commit_text.as_str()),
        ("build", profile),
        ("binary", pas),
    ] {
        t.add_row(vec![k, v]);
    }
    Ok(Section {
        name: "machine",
        markdown: format!("### Machine\n\n{t}\n"),
        json: json!({
            "date": date, "cpu": cpu, "cores": cores, "memory": mem, "kernel": kernel,
            "rustc": rustc, "commit": commit, "dirty": dirty, "build": profile, "binary": pas,
        }),
    })
}
