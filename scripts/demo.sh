#!/usr/bin/env bash
# The main job on a fresh machine: installs the pinned aider venv if missing, builds `pas`, and runs
# `pas demo` — llm-sim in place of the LLM providers (clearly labelled), the manager and the ten
# programmers of configs/pas/programmer_pool.yaml, the original example task plus concurrent tasks
# with other capabilities, live streams, the final pool status and the diffs.
# Extra arguments go to `pas demo` (e.g. --real to use the providers from the environment).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/install-aider.sh
export PAS_AIDER_PYTHON="$root/.aider-venv/bin/python"
cargo build --locked --bin pas
exec target/debug/pas --config configs/pas/programmer_pool.yaml demo "$@"
