#!/usr/bin/env bash
# Memory of an idle pool for one `pas` binary: starts the manager and the ten programmers of the
# shipped config (its ports, temporary data and workspace dirs), waits 8 s, prints the sums of
# RSS, PSS and RssAnon over the 11 processes, and stops them. Run it on two binaries one after
# the other to compare build profiles side by side (see BENCHMARKS.md, "Idle pool RSS").
#
#   scripts/idle-pool-rss.sh target/release/pas
set -euo pipefail
bin=${1:?usage: $0 PAS_BINARY}
root=$(cd "$(dirname "$0")/.." && pwd)
config=$root/configs/pas/programmer_pool.yaml
tmp=$(mktemp -d)
mkdir -p "$tmp/ws" "$tmp/data"
export PAS_DATA_DIR=$tmp/data PAS_WORKSPACE_ROOT=$tmp/ws
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$tmp"' EXIT
"$bin" --config "$config" manager > "$tmp/m.log" 2>&1 & pids+=($!)
for i in 001 002 003 004 005 006 007 008 009 010; do
  "$bin" --config "$config" programmer --id $i > "$tmp/p$i.log" 2>&1 & pids+=($!)
done
sleep 8
rss=0; pss=0; anon=0
for p in "${pids[@]}"; do
  r=$(awk '/^VmRSS/{print $2}' /proc/$p/status); a=$(awk '/^RssAnon/{print $2}' /proc/$p/status)
  s=$(awk '/^Pss:/{print $2}' /proc/$p/smaps_rollup)
  rss=$((rss+r)); pss=$((pss+s)); anon=$((anon+a))
done
echo "$bin: processes ${#pids[@]} RSS sum $((rss/1024)) MiB ($rss kB), PSS sum $((pss/1024)) MiB, RssAnon sum $((anon/1024)) MiB; binary $(stat -c %s "$bin") bytes"
trap - EXIT
kill "${pids[@]}"; wait 2>/dev/null || true
rm -rf "$tmp"
