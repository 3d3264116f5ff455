#!/usr/bin/env bash
# The original habit, kept as a thin wrapper over the `pas` CLI:
#
#   scripts/start_programmers.sh start   [pas up options]   # pas up --detach (manager + all programmers)
#   scripts/start_programmers.sh status  [pas status options]
#   scripts/start_programmers.sh stop    [pas down options]
#   scripts/start_programmers.sh restart [pas up options]   # pas restart
#
# Environment: PAS_BIN (the pas binary; default: `pas` on PATH, else target/release/pas or
# target/debug/pas of this repository, else `cargo run --release --bin pas`), PAS_CONFIG (default:
# configs/pas/programmer_pool.yaml of this repository). Everything else (OLLAMA_API_BASE, API keys,
# PAS_DATA_DIR, ...) reaches the programmers unchanged.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
config="${PAS_CONFIG:-$root/configs/pas/programmer_pool.yaml}"

if [ -n "${PAS_BIN:-}" ]; then
  pas=("$PAS_BIN")
elif command -v pas >/dev/null 2>&1; then
  pas=(pas)
elif [ -x "$root/target/release/pas" ]; then
  pas=("$root/target/release/pas")
elif [ -x "$root/target/debug/pas" ]; then
  pas=("$root/target/debug/pas")
else
  pas=(cargo run --quiet --release --manifest-path "$root/Cargo.toml" --bin pas --)
fi

usage() {
  echo "usage: $0 start|status|stop|restart [options for pas up/status/down/restart]" >&2
  exit 2
}

[ $# -ge 1 ] || usage
command="$1"
shift
case "$command" in
  start) exec "${pas[@]}" --config "$config" up --detach "$@" ;;
  status) exec "${pas[@]}" --config "$config" status "$@" ;;
  stop) exec "${pas[@]}" --config "$config" down "$@" ;;
  restart) exec "${pas[@]}" --config "$config" restart "$@" ;;
  -h | --help | help) usage ;;
  *) echo "unknown command: $command" >&2; usage ;;
esac
