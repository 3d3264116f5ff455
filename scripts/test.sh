#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs the pinned aider venv if missing,
# then builds and runs the Rust test suite (unit tests, and whole-system tests that start the real
# `pas` binaries, real aider and real git on 127.0.0.1).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/install-aider.sh
export PAS_AIDER_PYTHON="$root/.aider-venv/bin/python"
cargo build --all-targets --locked
cargo test --all-targets --locked --no-fail-fast -- --test-threads="${PAS_TEST_THREADS:-2}"
