//! The Python client package (`clients/python`, `pas-client`) installed into a fresh venv from the
//! repository path (`scripts/install-python-client.sh --venv`: `pip install ./clients/python`,
//! whose build generates the gRPC stubs from `proto/`), then its pytest suite run against real
//! pools (llm-sim, manager, programmers, real aider, real git):
//!
//! - `tests/test_plain.py` on a plaintext pool of four programmers (two free "fast", one "slow"
//!   whose models never answer, one paid) with `limits.per_caller_max_tasks: 2`: the original
//!   `await pool.dispatch_task(...)` result dict with a real edit (diff, branch, commit, cost),
//!   the sync variant with a paid model's exact cost, streaming in order to one result,
//!   re-attaching with WatchTask after leaving the stream, GetTask and paged ListTasks, the
//!   automatic re-attach after a broken connection (a TCP proxy the test cuts), cancelling
//!   a running task, the pool status, typed errors (INVALID_ARGUMENT, NOT_FOUND, and
//!   RESOURCE_EXHAUSTED with RetryInfo's delay);
//! - `tests/test_secured.py` on a pool with TLS and bearer tokens: a wrong or missing token is
//!   UNAUTHENTICATED, a read token reads the status and may not dispatch, the dispatch token runs
//!   a real task over TLS.
//!
//! First `tests/test_units.py`: what needs no pool (connection options, re-attach bookkeeping,
//! money).
//!
//! Needs python3 with venv and the wheelhouse the script fills (from the package index on its first
//! run), and the aider venv; fails, never skips, without them.

use crate::common;
use crate::interop_support as support;

use common::pool::TestProgrammer;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::RunningPool;

/// llm-sim never answers programmer 003's models, so its tasks run until cancelled.
const HANGING_MODELS: &str = "rules:\n  - model: \"*slow-coder*\"\n    fault: hang\n";

/// Installing may download the wheelhouse on a fresh machine.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(900);
/// A whole pytest file: a handful of real aider runs on two cores.
const PYTEST_TIMEOUT: Duration = Duration::from_secs(600);

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh venv in `dir` with `clients/python[test]` installed from the repository path.
fn install_package(dir: &Path) -> PathBuf {
    let venv = dir.join("venv");
    let mut install = Command::new(crate_dir().join("scripts/install-python-client.sh"));
    install.arg("--venv").arg(&venv);
    support::run_client(install, INSTALL_TIMEOUT)
        .assert_success("scripts/install-python-client.sh --venv");
    venv.join("bin/python")
}

/// Runs pytest on `clients/python/tests/<file>` with `env`, and checks that it passed and ran
/// exactly `tests` tests (none skipped or deselected).
fn pytest(
    python: &Path,
    file: &str,
    env: &[(&str, String)],
    tests: usize,
    mesh: Option<&RunningPool>,
) {
    let package = crate_dir().join("clients/python");
    let mut cmd = Command::new(python);
    cmd.current_dir(&package)
        .args(["-m", "pytest", "-v", "-p", "no:cacheprovider"])
        .arg(format!("tests/{file}"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PAS_TOKEN");
    for (key, value) in env {
        cmd.env(key, value);
    }
    let out = support::run_client(cmd, PYTEST_TIMEOUT);
    let context = format!(
        "pytest {file} ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr,
        mesh.map(RunningPool::logs).unwrap_or_default()
    );
    assert!(out.status.success(), "{context}");
    let summary = out.stdout.lines().last().unwrap_or_default();
    assert!(
        summary.contains(&format!(" {tests} passed"))
            && !summary.contains("skipped")
            && !summary.contains("deselected"),
        "expected exactly {tests} passed tests: {summary:?}\n{context}"
    );
}

fn pool_env(mesh: &RunningPool) -> Vec<(&'static str, String)> {
    vec![
        ("PAS_TEST_ADDRESS", mesh.manager_target()),
        ("PAS_TEST_SAMPLE", mesh.sample().display().to_string()),
    ]
}

#[test]
fn python_package_from_a_fresh_venv_drives_a_real_pool() {
    let dir = tempfile::tempdir().expect("temp dir");
    let python = install_package(dir.path());

    // What needs no pool: connection options, re-attach bookkeeping, money.
    pytest(&python, "test_units.py", &[], 5, None);

    // The plaintext pool.
    let slow = TestProgrammer {
        primary: "ollama/slow-coder:7b".into(),
        backup: "ollama/slow-coder:14b".into(),
        capabilities: vec!["slow".into(), "local".into(), "free".into()],
        ..TestProgrammer::free("003")
    };
    let mesh = RunningPool::start_with_config(
        vec![
            TestProgrammer::free("001"),
            // The real tasks go to 001, 003 and 004 (002 would run one cold).
            TestProgrammer::free("002").without_aider(),
            slow,
            TestProgrammer::paid("004"),
        ],
        Some(HANGING_MODELS),
        "limits:\n  per_caller_max_tasks: 2\n",
    );
    pytest(&python, "test_plain.py", &pool_env(&mesh), 9, Some(&mesh));
    drop(mesh);

    // The pool with TLS and tokens.
    let mesh = RunningPool::start_secured(vec![TestProgrammer::free("001")], None);
    let secured = mesh.secured();
    let mut env = pool_env(&mesh);
    env.extend([
        ("PAS_TEST_CERTS", secured.certs.display().to_string()),
        ("PAS_TEST_TOKEN_READ", secured.read.clone()),
        ("PAS_TEST_TOKEN_DISPATCH", secured.dispatch.clone()),
    ]);
    pytest(&python, "test_secured.py", &env, 3, Some(&mesh));
}
