#!/usr/bin/env bash
# Where the manager's hop goes (BENCHMARKS.md, "Hot path"): runs benches/manager_hop.rs (release)
# with its state directories on tmpfs and, during its sequential phase, measures the plaintext
# manager: CPU and context switches per dispatch (perf stat; dispatches counted from its
# /metrics), then a call-graph profile (perf record, dwarf) and a syscall census (strace -c).
# Needs perf and strace (Debian: linux-perf, strace). Output: target/profile-hop/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/profile-hop
mkdir -p "$out"
cargo bench --bench manager_hop --no-run 2>/dev/null
bench=$(ls -t target/release/deps/manager_hop-* | grep -v '\.d$' | head -1)

# One manager_hop run per measurement; prints the plaintext manager's pid and /metrics port.
start() {
  TMPDIR=/dev/shm PAS_BENCH_LATENCY_N=12000 PAS_BENCH_THROUGHPUT_N=100 "$bench" >"$out/$1.bench.txt" 2>"$out/$1.bench.log" &
  bench_pid=$!
  manager=""
  for _ in $(seq 1 150); do
    for p in $(pgrep -P "$bench_pid" || true); do
      if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -q ' manager'; then manager=$p; break; fi
    done
    [ -n "$manager" ] && break
    sleep 0.2
  done
  [ -n "$manager" ] || { echo "no manager started" >&2; exit 1; }
  config=$(tr '\0' ' ' <"/proc/$manager/cmdline" | awk '{print $3}')
  port=$(grep -A3 '^manager:' "$config" | grep -o 'port: *[0-9]*' | grep -o '[0-9]*' | head -1)
  sleep 8 # the secured twin starts, then the sequential phase runs for tens of seconds
}
dispatches() { curl -s "http://127.0.0.1:$port/metrics" | awk '/^pas_pool_tasks_total/ {s += $2} END {print s + 0}'; }

start stat
n0=$(dispatches)
perf stat -e task-clock,context-switches,cpu-migrations -p "$manager" -o "$out/perf-stat.txt" -- sleep 4
n1=$(dispatches)
wait "$bench_pid" || true
echo "dispatches in the window: $((n1 - n0))" | tee -a "$out/perf-stat.txt"
grep -E 'task-clock|context-switches|migrations' "$out/perf-stat.txt"

start record
perf record -F 1999 --call-graph dwarf,16384 -p "$manager" -o "$out/perf.data" -- sleep 4 2>/dev/null
wait "$bench_pid" || true
perf report -i "$out/perf.data" --children --sort sym --stdio -g none 2>/dev/null | grep '%' | head -60 >"$out/perf-children.txt" || true
echo "call-graph profile: $out/perf-children.txt"

start strace
timeout 2 strace -f -c -p "$manager" -o "$out/strace-c.txt" || true
wait "$bench_pid" || true
echo "syscall census (2 s, strace -c): $out/strace-c.txt"
