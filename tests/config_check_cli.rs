//! `pas config check`: the real binary on the seed fixture, the shipped file and a bad file.

use std::path::Path;
use std::process::{Command, Output};

const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");
const SECRET: &str = "sk-test-secret-value-0123456789";

/// Runs `pas <args>` in the repository root with a known environment (no PAS_* redirections, a
/// fake API key that must never be printed).
fn pas(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_pas"))
        .args(args)
        .current_dir(MANIFEST)
        .env_remove("PAS_CONFIG")
        .env_remove("PAS_WORKSPACE_ROOT")
        .env_remove("PAS_DATA_DIR")
        .env_remove("PAS_AIDER_PYTHON")
        .env("OPENAI_API_KEY", SECRET)
        .env("ANTHROPIC_API_KEY", SECRET)
        .output();
    match output {
        Ok(output) => output,
        Err(e) => panic!("cannot run pas: {e}"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn seed_fixture_checks_ok_with_a_summary() {
    let out = pas(&[
        "config",
        "check",
        "tests/fixtures/seed_programmer_pool.yaml",
    ]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        text(&out.stderr)
    );
    assert!(stdout.contains("Programmers (10)"), "{stdout}");
    for id in ["001", "005", "010"] {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(id)),
            "row for {id}:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("openai/gpt-4o -> openai/gpt-4o-mini"),
        "{stdout}"
    );
    assert!(stdout.contains("least_loaded"), "{stdout}");
    assert!(
        stdout.contains("3 failures in 10 min opens it for 5 min"),
        "{stdout}"
    );
    assert!(stdout.contains("alert at $40.00"), "{stdout}");
    assert!(
        stdout.contains(&Path::new(MANIFEST).join("workspaces").display().to_string()),
        "{stdout}"
    );
    assert!(!stdout.contains(SECRET), "API key values are never printed");
}

#[test]
fn shipped_config_is_the_default_file_and_checks_ok() {
    // No FILE argument: clap's default is configs/pas/programmer_pool.yaml.
    let out = pas(&["config", "check"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("configs/pas/programmer_pool.yaml is valid"),
        "{stdout}"
    );
    assert!(stdout.contains("127.0.0.1:6141"), "{stdout}");
    assert!(!stdout.contains(SECRET));
}

#[test]
fn bad_file_exits_1_listing_every_problem_with_file_and_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let seed = std::fs::read_to_string(
        Path::new(MANIFEST).join("tests/fixtures/seed_programmer_pool.yaml"),
    )
    .expect("seed fixture");
    let bad = seed
        .replacen("port: 6153", "port: 6152", 1)
        .replace("max_daily_spend_usd: 50.00", "max_daily_spend_usd: 30.00");
    let file = tmp.path().join("bad.yaml");
    std::fs::write(&file, &bad).expect("write");
    let port_line = bad
        .lines()
        .position(|l| l.contains("id: \"003\""))
        .expect("003")
        + 2;
    let alert_line = bad
        .lines()
        .position(|l| l.contains("alert_threshold_usd"))
        .expect("alert")
        + 1;

    let out = pas(&["config", "check", &file.display().to_string()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    let f = file.display();
    assert!(
        stderr.contains(&format!(
            "{f}:{port_line}:11: programmers[2].port: duplicate port 6152"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{f}:{alert_line}:24: cost_optimization.alert_threshold_usd: alert threshold"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("2 problems"), "{stderr}");
    assert!(!stderr.contains(SECRET) && !text(&out.stdout).contains(SECRET));
}

#[test]
fn unreadable_file_exits_1_naming_it() {
    let out = pas(&["config", "check", "does/not/exist.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("does/not/exist.yaml: cannot read"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn type_error_exits_1_with_file_line_and_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("typo.yaml");
    std::fs::write(&file, "pool_size: 1\nprogrammers:\n  - id: \"001\"\n    port: 6151\n    primary_llm: ollama/a\n    backup_llm: ollama/b\n    capabilites: [fast]\n")
        .expect("write");
    let out = pas(&["config", "check", &file.display().to_string()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:7:5: programmers[0].capabilites: unknown field `capabilites`",
            file.display()
        )),
        "{stderr}"
    );
}
