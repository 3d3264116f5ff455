//! The operator CLI against a real pool: `pas up --detach` starts the real manager and
//! programmers (aider against the LLM simulator, real git repositories), then `pas status`,
//! `pas dispatch` (success with failover, dry run, bad input, Ctrl-C) and `pas down`.
//! Needs the aider venv: the harness FAILS with a clear message when it is missing.

use crate::common;

use common::pool::{PoolOptions, TestPool, TestProgrammer};
use std::io::BufRead;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const PAS: &str = env!("CARGO_BIN_EXE_pas");

fn pas(pool: &TestPool, args: &[&str]) -> Command {
    let mut cmd = Command::new(PAS);
    cmd.arg("--config")
        .arg(&pool.config_path)
        .args(args)
        .env("PAS_TEST_OPENAI_KEY", "sk-test-openai-secret")
        .env("PAS_TEST_ANTHROPIC_KEY", "sk-ant-test-secret")
        .env_remove("PAS_WORKSPACE_ROOT")
        .env_remove("PAS_DATA_DIR")
        .env_remove("PAS_CONFIG")
        .stdin(Stdio::null());
    cmd
}

fn run(pool: &TestPool, args: &[&str]) -> (i32, String, String) {
    let out: Output = pas(pool, args).output().expect("run pas");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!("$ pas {}\n{stdout}{stderr}", args.join(" "));
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// Stops the pool when the test ends, passed or not.
struct Down<'a>(&'a TestPool);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = pas(self.0, &["down", "--timeout-s", "30"]).output();
    }
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn state(pool: &TestPool) -> serde_json::Value {
    let text = std::fs::read_to_string(pool.data_dir.join("pas-up.json")).expect("state file");
    serde_json::from_str(&text).expect("state JSON")
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_cli_drives_a_real_pool() {
    // 001 alone has capability "first", so tasks asking for it land there; its primary fails
    // once with HTTP 500, so the first such task fails over to the backup.
    let sim = common::Sim::start_with_script(
        "rules:\n  - model: \"primary-001\"\n    fault: http_500\n    times: 1\n",
    );
    let mut first = TestProgrammer::free("001");
    first.capabilities.push("first".into());
    let options = PoolOptions {
        programmers: vec![first, TestProgrammer::free("002")],
        ..PoolOptions::default()
    };
    let pool = TestPool::with_sim(options, sim);
    pool.sample_repo();

    let (code, stdout, _) = run(&pool, &["up", "--detach"]);
    let _down = Down(&pool);
    assert_eq!(code, 0);
    assert_eq!(stdout.matches("healthy").count(), 3, "{stdout}");

    // The manager sees both programmers once its health watch has run.
    wait_until(
        "both programmers available",
        Duration::from_secs(30),
        || {
            let (code, stdout, _) = run(&pool, &["status", "--json"]);
            code == 0
                && serde_json::from_str::<serde_json::Value>(&stdout)
                    .is_ok_and(|v| v["available"] == 2 && v["pool_size"] == 2)
        },
    );
    let (code, table, _) = run(&pool, &["status"]);
    assert_eq!(code, 0);
    assert!(
        table.starts_with("Pool: 2 of 2 programmers available"),
        "{table}"
    );
    for id in ["001", "002"] {
        let row = table
            .lines()
            .find(|l| l.contains(&format!(" {id} ")))
            .unwrap_or_else(|| panic!("{table}"));
        assert!(
            row.contains("available") && row.contains(&format!("ollama/primary-{id} (primary)")),
            "{row}"
        );
    }
    assert!(
        table.contains("Budget ") && table.contains("Alerts"),
        "{table}"
    );
    assert!(table.contains("Supervisor: pas up pid"), "{table}");

    // A real task: failover on 001, then success with a diff on a task branch.
    let (code, stdout, stderr) = run(
        &pool,
        &[
            "dispatch",
            "Add docstrings to all functions",
            "--files",
            "src/module.py",
            "--workspace",
            "sample",
            "--capability",
            "first",
            "--run-id",
            "run-cli",
        ],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    for piece in [
        "==> assigned to programmer 001: ollama/primary-001",
        "==> failover: ollama/primary-001 → ollama/backup-001",
        "status     succeeded",
        "programmer 001",
        "model      ollama/backup-001 (backup)",
        "files      src/module.py",
        "branch     pas/",
        "── diff ──",
        "+++ b/src/module.py",
    ] {
        assert!(stdout.contains(piece), "missing {piece:?} in\n{stdout}");
    }

    // Dry run, as JSON lines.
    let (code, stdout, _) = run(
        &pool,
        &[
            "dispatch",
            "Add docstrings",
            "--files",
            "src/module.py",
            "--workspace",
            "sample",
            "--dry-run",
            "--json",
        ],
    );
    assert_eq!(code, 0);
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "result");
    assert_eq!(last["status"], "succeeded");
    assert_eq!(last["dry_run"], true);

    // Bad input: exit 2 with the manager's message.
    let (code, _, stderr) = run(
        &pool,
        &[
            "dispatch",
            "x",
            "--files",
            "../escape.py",
            "--workspace",
            "sample",
        ],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("INVALID_ARGUMENT") && stderr.contains("files"),
        "{stderr}"
    );
    let (code, _, stderr) = run(
        &pool,
        &[
            "dispatch",
            "x",
            "--files",
            "a.py",
            "--workspace",
            "sample",
            "--capability",
            "gpu",
        ],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("FAILED_PRECONDITION"), "{stderr}");

    // Ctrl-C while aider runs (the LLM answers slowly): the task is cancelled on the server.
    pool.sim
        .set_script("default:\n  latency_ms: 1500\n  chunk_delay_ms: 300\n")
        .await;
    let mut child = pas(
        &pool,
        &[
            "dispatch",
            "Add docstrings to all functions",
            "--files",
            "src/module.py",
            "--workspace",
            "sample",
            "--task-id",
            "cancel-me",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("==> assigned") {
            break;
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    for line in lines {
        seen.push_str(&line.unwrap());
        seen.push('\n');
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(seen.contains("status     cancelled"), "{seen}");
    pool.sim.set_script("default: {}\n").await;

    // kill -9 a programmer: pas up brings it back and the manager sees it again.
    let victim = state(&pool)["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == "002")
        .unwrap()["pid"]
        .as_u64()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("002 restarted", Duration::from_secs(30), || {
        state(&pool)["children"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["key"] == "002" && c["restarts"] == 1 && c["state"] == "healthy")
    });
    wait_until("002 available again", Duration::from_secs(30), || {
        let (_, table, _) = run(&pool, &["status"]);
        table.starts_with("Pool: 2 of 2") && table.contains("Prog-002 ×1: killed by SIGKILL")
    });

    let (code, _, _) = run(&pool, &["down"]);
    assert_eq!(code, 0);
    for port in pool.ports.values().copied().chain([pool.manager_port]) {
        assert!(
            !listening(port),
            "port {port} still listening after pas down"
        );
    }
}
