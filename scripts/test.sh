#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs the pinned aider venv if missing,
# then builds every target (benchmarks included) and runs the Rust test suite (aider warm; a
# representative set again with PAS_TEST_AIDER_START=cold) (unit tests, and whole-system tests that start the real
# `pas` binaries, real aider and real git on 127.0.0.1). The deploy/ manifests are rendered and
# validated offline with the pinned kubectl, helm and kubernetes-validate (scripts/install-deploy-tools.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/install-aider.sh
scripts/install-interop.sh
scripts/install-python-client.sh
scripts/install-deploy-tools.sh
scripts/install-dns.sh
scripts/install-chromium.sh
export PAS_AIDER_PYTHON="$root/.aider-venv/bin/python"
cargo build --all-targets --locked
cargo test --lib --bins --tests --locked --no-fail-fast -- --test-threads="${PAS_TEST_THREADS:-2}"
# The suites above start aider warm (aider.start: warm, the default); a representative set runs
# again on the cold path (the fallback, and the comparison).
# (Every integration test is a module of one binary, tests/main.rs: a module's name filters it.)
# Skipped there: the three tests of the warm workers themselves, which make their own warm pools
# whatever the suite's mode (they would only run a second time, the same).
PAS_TEST_AIDER_START=cold cargo test --locked --no-fail-fast --test integration \
  -- --test-threads="${PAS_TEST_THREADS:-2}" \
  aider_real:: security_hostile_tasks:: programmer_execute:: programmer_restart:: \
  --skip aider_real::a_task_ends_alike_cold_and_warm \
  --skip aider_real::a_crashed_worker_or_zygote_is_replaced_and_tasks_still_run \
  --skip aider_real::warm_workers_import_and_run_at_the_configured_niceness
