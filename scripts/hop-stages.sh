#!/usr/bin/env bash
# Where a lone dispatch's time goes in the manager (BENCHMARKS.md, "Hot path, part 5"): builds
# benches/manager_hop.rs and `pas` with the `hop-probe` feature (services/telemetry/stages.rs) in a
# target directory of their own, runs the bench's sequential phase with PAS_HOP_STAGES set, and
# prints, per stage of the dispatch path, when it was reached (µs after the request entered the
# manager's first middleware) and how long the step to it took, p50 and p90 over the run (the
# first 200 tasks of each manager left out as warm-up). Output: target/hop-probe/.
# Knob: PAS_BENCH_LATENCY_N (sequential dispatches per manager, default 2000).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=target/hop-probe
cargo bench --bench manager_hop --features hop-probe --no-run
bench=$(ls -t "$CARGO_TARGET_DIR"/release/deps/manager_hop-* | grep -v '\.d$' | head -1)
stages="$PWD/$CARGO_TARGET_DIR/stages.txt"
rm -f "$stages"
PAS_HOP_STAGES="$stages" TMPDIR=/dev/shm PAS_BENCH_LATENCY_N="${PAS_BENCH_LATENCY_N:-2000}" \
  PAS_BENCH_THROUGHPUT_N=100 "$bench" >"$CARGO_TARGET_DIR/bench.txt" 2>"$CARGO_TARGET_DIR/bench.log"
grep -E '^(direct Execute|via a bare tonic relay|Dispatch via manager|ratio manager / bare relay)' \
  "$CARGO_TARGET_DIR/bench.txt" | head -5
python3 - "$stages" <<'PY'
import sys
rows = {"none": [], "token": []}
for line in open(sys.argv[1]):
    fields = dict(kv.split("=", 1) for kv in line.split())
    caller = fields.pop("caller")
    rows[caller].append({k: int(v) for k, v in fields.items()})
def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]
for caller, label in (("none", "plaintext manager"), ("token", "TLS + token manager")):
    tasks = rows[caller][200:]
    if not tasks:
        continue
    stages = []
    for t in tasks:
        for s in t:
            if s not in stages:
                stages.append(s)
    print(f"\n{label}: {len(tasks)} dispatches")
    print(f"{'stage':<11} {'reached p50':>12} {'step p50':>9} {'step p90':>9}")
    previous = None
    for s in stages:
        reached = [t[s] for t in tasks if s in t]
        step = [t[s] - t[previous] for t in tasks if s in t and previous in t] if previous else reached
        print(f"{s:<11} {pct(reached, .5):>12} {pct(step, .5):>9} {pct(step, .9):>9}")
        previous = s
PY
