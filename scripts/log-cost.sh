#!/usr/bin/env bash
# What the servers' per-task log lines and spans cost (BENCHMARKS.md, "Hot path, part 9"): runs
# benches/manager_hop.rs in alternating pairs with every server at RUST_LOG=info (the shipped
# default) and at RUST_LOG=warn, samples /proc/PID/stat of each server every 200 ms, and prints
# the CPU per dispatch of the plaintext manager and of its ten programmers, and the throughput
# through the manager, per run. CPU per dispatch moves by a few percent between runs, throughput
# by about fifteen, so the CPU columns are the measure.
# Knobs: PAIRS (default 3), PAS_BENCH_THROUGHPUT_N (20000), PAS_BENCH_LATENCY_N (1500).
# Needs the aider venv only for the bench's config check: PAS_AIDER_PYTHON or .aider-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
export PAS_AIDER_PYTHON="${PAS_AIDER_PYTHON:-$PWD/.aider-venv/bin/python}"
n="${PAS_BENCH_THROUGHPUT_N:-20000}"
lat="${PAS_BENCH_LATENCY_N:-1500}"
cargo bench --bench manager_hop --no-run 2>/dev/null
bench=$(ls -t target/release/deps/manager_hop-* | grep -v '\.d$' | head -1)
out=target/log-cost
mkdir -p "$out"

# One run at RUST_LOG=$1; prints "level manager_us programmers_us tasks_per_s".
run() {
  local level=$1
  RUST_LOG=$level TMPDIR=/dev/shm PAS_BENCH_LATENCY_N=$lat PAS_BENCH_THROUGHPUT_N=$n \
    setsid "$bench" >"$out/bench-$level.txt" 2>"$out/bench-$level.log" &
  local bench_pid=$!
  declare -A ticks=() role=()
  while kill -0 "$bench_pid" 2>/dev/null; do
    for pid in $(pgrep -P "$bench_pid" || true); do
      if [ -z "${role[$pid]:-}" ]; then
        local cmd config
        cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
        config=$(awk '{for (i = 1; i < NF; i++) if ($i == "--config") print $(i + 1)}' <<<"$cmd")
        [ -n "$config" ] || continue
        # The bench's secured twin pool (TLS) is left out: its config names its certificates.
        if grep -qi tls "$config" 2>/dev/null; then role[$pid]=other
        elif [[ $cmd == *" manager"* ]]; then role[$pid]=manager
        else role[$pid]=programmer; fi
      fi
      local t
      t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null) || continue
      [ -n "$t" ] && ticks[$pid]=$t
    done
    sleep 0.2
  done
  local manager=0 programmers=0
  for pid in "${!ticks[@]}"; do
    case "${role[$pid]}" in
      manager) manager=$((manager + ticks[$pid])) ;;
      programmer) programmers=$((programmers + ticks[$pid])) ;;
    esac
  done
  local tps
  tps=$(awk '/^Dispatch via manager  /{v = $NF} END {print v}' "$out/bench-$level.txt")
  # The manager serves the latency and throughput phases of its own; the programmers serve four
  # (direct, the bare relay, the relay on pas's server stack, the manager).
  awk -v l="$level" -v m="$manager" -v p="$programmers" -v n="$n" -v lat="$lat" -v t="$tps" \
    -v hz="$(getconf CLK_TCK)" 'BEGIN {
      printf "%-6s %10.1f %14.1f %12.0f\n", l, m * 1e6 / hz / (n + lat), p * 1e6 / hz / (4 * (n + lat)), t
    }'
}

printf "%-6s %10s %14s %12s\n" RUST_LOG "manager µs" "programmers µs" "tasks/s"
for _ in $(seq 1 "${PAIRS:-3}"); do
  run info
  run warn
done
