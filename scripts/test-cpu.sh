#!/usr/bin/env bash
# CPU and wall time of each integration test, run alone: what to cut when the suite is slow (it is
# CPU-bound on 2 cores; BENCHMARKS.md, "Test suite time"). Each test runs in a cgroup of its own,
# so the CPU of every process it starts — pas, aider, git, orphans — is counted.
#
#   scripts/test-cpu.sh [FILTER...]     # e.g. manager_budget:: ; none = every test (~25 min)
#
# Needs root (a cgroup per test) and a built suite (`cargo build --tests`). Writes
# target/test-cpu.tsv (test, wall s, CPU s, exit code) and prints the 20 costliest tests and the
# sum per file.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export PAS_AIDER_PYTHON="${PAS_AIDER_PYTHON:-$root/.aider-venv/bin/python}"
bin=$(cargo test --locked --test integration --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="integration" and m.get("executable"): print(m["executable"])' | tail -1)
[ -x "$bin" ] || { echo "test-cpu.sh: no integration test binary (cargo build --tests)" >&2; exit 1; }

# cgroup v1 cpuacct (nanoseconds) where mounted, else cgroup v2 (cpu.stat, microseconds).
if [ -d /sys/fs/cgroup/cpuacct ]; then
  base=/sys/fs/cgroup/cpuacct
  usage() { echo $(($(cat "$1/cpuacct.usage") / 1000000)); }
  procs=tasks
else
  base=/sys/fs/cgroup
  [ -f $base/cgroup.controllers ] || base=/sys/fs/cgroup/unified
  usage() { echo $(($(awk '/^usage_usec/{print $2}' "$1/cpu.stat") / 1000)); }
  procs=cgroup.procs
fi
cg="$base/pas-test-cpu-$$"

out=target/test-cpu.tsv
: >"$out"
"$bin" --list "$@" 2>/dev/null | sed -n 's/: test$//p' | while read -r t; do
  mkdir "$cg"
  start=$(date +%s%N)
  rc=0
  bash -c 'echo $$ >"$1/'"$procs"'"; shift; exec "$@"' _ "$cg" "$bin" --exact "$t" --test-threads=1 \
    >target/test-cpu-last.log 2>&1 || rc=$?
  wall_ms=$((($(date +%s%N) - start) / 1000000))
  cpu_ms=$(usage "$cg")
  # Anything the test left running is killed, so the next test starts clean.
  while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done <"$cg/$procs"
  until rmdir "$cg" 2>/dev/null; do sleep 0.2; done
  printf '%s\t%d.%03d\t%d.%03d\t%s\n' "$t" $((wall_ms / 1000)) $((wall_ms % 1000)) \
    $((cpu_ms / 1000)) $((cpu_ms % 1000)) "$rc" >>"$out"
done

echo "== costliest tests (CPU s, wall s): $out"
sort -t$'\t' -k3 -rn "$out" | head -20 | awk -F'\t' '{printf "%8.1f %8.1f  %s%s\n", $3, $2, $1, ($4 != 0 ? "  FAILED" : "")}'
echo "== per file (CPU s, wall s)"
awk -F'\t' '{split($1, a, "::"); w[a[1]] += $2; c[a[1]] += $3; tw += $2; tc += $3}
  END {for (m in w) printf "%8.1f %8.1f  %s\n", c[m], w[m], m; printf "%8.1f %8.1f  (all)\n", tc, tw}' "$out" |
  sort -rn
