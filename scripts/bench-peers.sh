#!/usr/bin/env bash
# bench-peers: the manager side by side with LiteLLM proxy and Portkey gateway (issue 18), each
# routing over 10 backends to a fixed-response upstream, one load generator (h2load) for all.
#
#   ours     pas manager (least_loaded) over 10 pas programmers answering dry runs (no aider), gRPC
#            over HTTP/2
#   portkey  @portkey-ai/gateway (Node.js), x-portkey-config loadbalance over 10 openai targets
#   litellm  litellm[proxy], 10 deployments of one model name, routing_strategy least-busy, no
#            database, no telemetry
#   the peers' backends: nginx, 10 server blocks answering a canned /v1/chat/completions JSON
# Direct baseline of each system: the same 10 backends without the router, the callers split
# evenly over them (1 caller: backend 1), one h2load per backend at once.
#
# Per system and per load (1 caller, 32 callers = h2load -c N -m 1: N connections, one request at
# a time each, for HTTP/1.1 and HTTP/2 alike): a warm-up of both sides, then ROUNDS rounds of the
# direct baseline and the same through the router. Every request is checked on the server side —
# h2load counts a gRPC error as a success (HTTP 200, the error in the trailers): for ours the
# programmers' and the manager's dry-run result counters (/metrics), for the peers the nginx
# access logs (one line per request, per backend, which also shows the spread over the 10
# backends). Exits 1 if a request was not confirmed there.
# Prints a markdown table; writes JSON to target/bench/peers.json (and the table beside it).
#
# Reproduce on a fresh Debian 12 machine, as root, from the repository:
#   cargo build --release && scripts/bench-peers.sh
# It installs what is missing: nginx-light, nghttp2-client (h2load), nodejs, npm, python3-venv
# from Debian; litellm[proxy] and @portkey-ai/gateway (pinned below) into the cache folder
# target/bench-peers-cache (PAS_BENCH_PEERS_CACHE), from PyPI and npm; grpcio-tools for the
# gRPC request body; the pinned aider venv (scripts/install-aider.sh: the programmers check it at
# start-up). `scripts/bench-peers.sh install` installs only.
#
# Knobs (environment): PAS_BIN (default target/release/pas), PAS_BENCH_PEERS_SECONDS (measured
# phase length, default 10), PAS_BENCH_PEERS_WARMUP_S (3), PAS_BENCH_PEERS_CALLERS ("1 32"),
# PAS_BENCH_PEERS_ROUNDS (3), PAS_BENCH_PEERS_SYSTEMS ("pas portkey litellm"), PAS_BENCH_PEERS_PORT (27000: ports +1..+40 on
# 127.0.0.1), PAS_BENCH_PEERS_JSON, PAS_BENCH_PEERS_NOTE (load note printed with the table),
# PAS_BENCH_PEERS_KEEP=1 (keep the work dir with every log and h2load output),
# PAS_BENCH_PEERS_DURABILITY (the pool's `durability`, default process_crash; power_loss measures
# a sync per commit and per result on the work dir's disk, under /tmp).
set -euo pipefail

LITELLM_VERSION="${LITELLM_VERSION:-1.108.7}"
PORTKEY_VERSION="${PORTKEY_VERSION:-1.15.2}"
GRPCIO_TOOLS_VERSION="1.85.1"   # protoc for the gRPC request body (same pins as scripts/install-interop.sh)
PROTOBUF_VERSION="7.36.2"

root="$(cd "$(dirname "$0")/.." && pwd)"
AIDER_PYTHON="${PAS_AIDER_PYTHON:-${PAS_AIDER_VENV:-$root/.aider-venv}/bin/python}"
cache="${PAS_BENCH_PEERS_CACHE:-$root/target/bench-peers-cache}"
log() { printf '[bench-peers %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ----- what the machine needs (Debian, as root) -------------------------------------------------
install_debian() {
  local missing=()
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
  command -v h2load >/dev/null || missing+=(nghttp2-client)
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
  /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  command -v git >/dev/null || missing+=(git)
  command -v curl >/dev/null || missing+=(curl)
  command -v ps >/dev/null || missing+=(procps)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing Debian packages ${missing[*]}: run as root or install them"
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ----- the peers, pinned, into the cache ---------------------------------------------------------
pip_has() { # VENV NAME VERSION
  [ -x "$1/bin/python" ] && [ "$("$1/bin/python" -c "import importlib.metadata as m; print(m.version('$2'))" 2>/dev/null)" = "$3" ]
}
install_peers() {
  mkdir -p "$cache"
  printf '*\n' >"$cache/.gitignore"
  local venv="$cache/litellm-venv"
  if ! pip_has "$venv" litellm "$LITELLM_VERSION"; then
    log "installing litellm[proxy]==$LITELLM_VERSION into $venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "litellm[proxy]==$LITELLM_VERSION"
    pip_has "$venv" litellm "$LITELLM_VERSION" || die "litellm $LITELLM_VERSION did not install"
  fi
  local pb="$cache/proto-venv"
  if ! pip_has "$pb" grpcio-tools "$GRPCIO_TOOLS_VERSION"; then
    log "installing grpcio-tools==$GRPCIO_TOOLS_VERSION protobuf==$PROTOBUF_VERSION into $pb"
    /usr/bin/python3 -m venv "$pb"
    "$pb/bin/pip" install --quiet --disable-pip-version-check "grpcio-tools==$GRPCIO_TOOLS_VERSION" "protobuf==$PROTOBUF_VERSION"
  fi
  local pk="$cache/portkey"
  if [ "$(node -p "require('$pk/node_modules/@portkey-ai/gateway/package.json').version" 2>/dev/null)" != "$PORTKEY_VERSION" ]; then
    log "installing @portkey-ai/gateway@$PORTKEY_VERSION into $pk"
    mkdir -p "$pk"
    [ -f "$pk/package.json" ] || printf '{"name":"pas-bench-peers-portkey","private":true}\n' >"$pk/package.json"
    (cd "$pk" && npm install --no-audit --no-fund --loglevel=error --save-exact "@portkey-ai/gateway@$PORTKEY_VERSION")
  fi
}

# ----- settings ---------------------------------------------------------------------------------
PAS_BIN="${PAS_BIN:-$root/target/release/pas}"
PHASE_S="${PAS_BENCH_PEERS_SECONDS:-10}"   # target length of one measured phase
WARMUP_S="${PAS_BENCH_PEERS_WARMUP_S:-3}"  # warm-up before each phase (also sizes its request count)
CALLERS="${PAS_BENCH_PEERS_CALLERS:-1 32}"
ROUNDS="${PAS_BENCH_PEERS_ROUNDS:-3}"      # direct/router alternations per comparison
SYSTEMS="${PAS_BENCH_PEERS_SYSTEMS:-pas portkey litellm}"
BASE="${PAS_BENCH_PEERS_PORT:-27000}"      # ports BASE+1..BASE+40 on 127.0.0.1
OUT_JSON="${PAS_BENCH_PEERS_JSON:-$root/target/bench/peers.json}"
LOAD_NOTE="${PAS_BENCH_PEERS_NOTE:-}"
MODEL="bench-model"
LITELLM_PORT=$((BASE + 20)); PORTKEY_PORT=$((BASE + 21)); MANAGER_PORT=$((BASE + 30))
nginx_port() { echo $((BASE + $1)); }      # backend 1..10
prog_port() { echo $((BASE + 30 + $1)); }  # programmer 1..10

run="" pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$run" ] && [ -z "${PAS_BENCH_PEERS_KEEP:-}" ]; then rm -rf "$run"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits until `curl ARGS` succeeds (up to $1 seconds) while the last process started lives.
wait_http() {
  local secs="$1" pid="${pids[-1]}"; shift
  local deadline=$((SECONDS + secs))
  until curl -fsS -o /dev/null --max-time 2 "$@" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] && kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.2
  done
}
py() { /usr/bin/python3 "$root/scripts/bench-peers/$1" "${@:2}"; }

# ----- the fixed-response upstream: nginx, 10 backends (for the routers and the direct baseline) --
CANNED='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}'
start_nginx() {
  mkdir -p "$run/nginx/tmp"
  {
    echo "worker_processes auto; daemon off; pid $run/nginx/nginx.pid; error_log $run/nginx/error.log warn;"
    echo "events { worker_connections 4096; }"
    echo "http {"
    echo "  log_format status '\$status \$request_method \$uri \$msec \$request_length \"\$http_user_agent\"'; access_log off; keepalive_requests 1000000; keepalive_timeout 300s;"
    echo "  client_body_temp_path $run/nginx/tmp/body; proxy_temp_path $run/nginx/tmp/proxy;"
    echo "  fastcgi_temp_path $run/nginx/tmp/fcgi; uwsgi_temp_path $run/nginx/tmp/uwsgi; scgi_temp_path $run/nginx/tmp/scgi;"
    local i port
    for i in $(seq 1 10); do
      port=$(nginx_port "$i")
      echo "  server { listen 127.0.0.1:$port; access_log $run/nginx/backend-$i.log status;"
      echo "    location / { default_type application/json; return 200 '$CANNED'; } }"
    done
    echo "}"
  } >"$run/nginx/nginx.conf"
  nginx -t -q -c "$run/nginx/nginx.conf" -p "$run/nginx" || die "nginx config invalid"
  nginx -c "$run/nginx/nginx.conf" -p "$run/nginx" 2>>"$run/nginx/error.log" &
  pids+=($!); NGINX_PID=$!
  wait_http 20 -X POST "http://127.0.0.1:$(nginx_port 10)/v1/chat/completions" || die "nginx did not start"
  : >"$run/nginx/backend-10.log"
}
nginx_backend_logs() { local i; for i in $(seq 1 10); do echo "$run/nginx/backend-$i.log"; done; }

# ----- our manager over 10 programmers answering dry runs -------------------------------------------
start_pas() {
  local d="$run/pas" i
  mkdir -p "$d/ws/sample/src" "$d/data"
  printf 'def greet(name):\n    return "hello " + name\n' >"$d/ws/sample/src/module.py"
  git -C "$d/ws/sample" init -q -b main
  git -C "$d/ws/sample" add -A
  git -C "$d/ws/sample" -c user.name=bench -c user.email=bench@localhost commit -qm initial
  # Like manager_hop's pool, but a programmer admits 32 tasks at once: a dry run costs it nothing,
  # so it stands in for a fixed-response upstream (as nginx does for the peers) and the direct
  # baseline with 32 callers measures no queue in front of one slot. Per-caller limits are
  # lifted: h2load is one caller (one IP).
  {
    echo "pool_size: 10"
    echo "programmers:"
    for i in $(seq 1 10); do
      printf '  - id: "%03d"\n    port: %s\n    primary_llm: "ollama/qwen2.5-coder:7b-instruct"\n    backup_llm: "ollama/qwen2.5-coder:14b-instruct"\n    capabilities: ["fast", "local", "free"]\n' "$i" "$(prog_port "$i")"
    done
    cat <<YAML
load_balancing:
  strategy: least_loaded
  prefer_free_models: true
  max_queue_per_programmer: 32
  max_concurrent_per_programmer: 32
  health_check_interval_s: 30
manager:
  host: 127.0.0.1
  port: $MANAGER_PORT
  max_queue: 1000
limits:
  per_caller_rate_per_s: 1000000
  per_caller_burst: 1000000
  per_caller_max_tasks: 1000000
providers:
  ollama:
    api_base: "http://127.0.0.1:9"
aider:
  # Dry runs never start aider, but a programmer checks the pinned aider at start-up; no warm
  # workers (they would only take CPU from the measurement).
  python: "$AIDER_PYTHON"
  start: cold
workspace_root: "$d/ws"
data_dir: "$d/data"
durability: ${PAS_BENCH_PEERS_DURABILITY:-process_crash}
YAML
  } >"$d/pool.yaml"
  "$PAS_BIN" --config "$d/pool.yaml" config check >"$d/config-check.txt" 2>&1 || { cat "$d/config-check.txt" >&2; die "pas config invalid"; }
  for i in $(seq 1 10); do
    "$PAS_BIN" --config "$d/pool.yaml" programmer --id "$(printf %03d "$i")" >/dev/null 2>"$d/prog-$i.log" &
    pids+=($!)
  done
  for i in $(seq 1 10); do wait_http 30 "http://127.0.0.1:$(prog_port "$i")/health" || die "programmer $i did not start"; done
  "$PAS_BIN" --config "$d/pool.yaml" manager >/dev/null 2>"$d/manager.log" &
  pids+=($!); PAS_PID=$!
  local deadline=$((SECONDS + 30))
  until curl -fsS "http://127.0.0.1:$MANAGER_PORT/metrics" 2>/dev/null | grep -q '^pas_pool_programmers{state="available"} 10$'; do
    [ "$SECONDS" -lt "$deadline" ] || die "the manager does not see 10 available programmers"
    sleep 0.2
  done
  "$cache/proto-venv/bin/python" "$root/scripts/bench-peers/grpc_body.py" "$root/proto" "$d"
}
# Server-side success counts (JSON: ok, bad, per_backend) — h2load counts a gRPC error as a success.
pas_counts_backends() { # the 10 programmers' own task counters, and the manager's
  local urls=() i
  for i in $(seq 1 10); do urls+=("http://127.0.0.1:$(prog_port "$i")/metrics"); done
  py report.py metrics --router "http://127.0.0.1:$MANAGER_PORT/metrics" "${urls[@]}"
}
pas_counts_direct() { # the 10 programmers' own task counters
  local urls=() i
  for i in $(seq 1 10); do urls+=("http://127.0.0.1:$(prog_port "$i")/metrics"); done
  py report.py metrics "${urls[@]}"
}
nginx_counts_backends() { # shellcheck disable=SC2046
  py report.py nginx $(nginx_backend_logs)
}


# ----- LiteLLM proxy: 10 deployments of one model name, least-busy, no database, no telemetry ----
start_litellm() {
  local d="$run/litellm" i
  mkdir -p "$d"
  {
    echo "model_list:"
    for i in $(seq 1 10); do
      printf '  - model_name: %s\n    litellm_params:\n      model: openai/%s\n      api_base: http://127.0.0.1:%s/v1\n      api_key: sk-bench\n' \
        "$MODEL" "$MODEL" "$(nginx_port "$i")"
    done
    cat <<YAML
router_settings:
  routing_strategy: least-busy
litellm_settings:
  telemetry: false
general_settings:
  # No caller authentication, as for the manager and Portkey here (1.108 refuses to start
  # without a master key unless told so).
  dangerously_permit_weak_or_unset_master_key: true
YAML
  } >"$d/config.yaml"
  # No DATABASE_URL: no database. LITELLM_LOCAL_MODEL_COST_MAP: the bundled price map, no fetch.
  (cd "$d" && exec env -u DATABASE_URL LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_TELEMETRY=False \
    DISABLE_ADMIN_UI=True NO_DOCS=True NO_REDOC=True \
    "$cache/litellm-venv/bin/litellm" --config "$d/config.yaml" --host 127.0.0.1 --port "$LITELLM_PORT" \
    >"$d/litellm.log" 2>&1) &
  pids+=($!); LITELLM_PID=$!
  wait_http 180 "http://127.0.0.1:$LITELLM_PORT/health/liveliness" || { tail -30 "$d/litellm.log" >&2; die "LiteLLM did not start"; }
}

# ----- Portkey gateway: loadbalance over 10 targets (x-portkey-config) ---------------------------
start_portkey() {
  local d="$run/portkey"
  mkdir -p "$d"
  (cd "$d" && exec node "$cache/portkey/node_modules/@portkey-ai/gateway/build/start-server.js" \
    --port="$PORTKEY_PORT" --headless >"$d/portkey.log" 2>&1) &
  pids+=($!); PORTKEY_PID=$!
  wait_http 60 "http://127.0.0.1:$PORTKEY_PORT/" || { tail -30 "$d/portkey.log" >&2; die "Portkey did not start"; }
  PORTKEY_CONFIG=$(/usr/bin/python3 - "$BASE" <<'PY'
import json, sys
base = int(sys.argv[1])
print(json.dumps({"strategy": {"mode": "loadbalance"}, "targets": [
    {"provider": "openai", "api_key": "sk-bench", "custom_host": f"http://127.0.0.1:{base + i}/v1", "weight": 1}
    for i in range(1, 11)]}, separators=(",", ":")))
PY
)
}

# ----- one comparison: a system's direct baseline and its router, same load --------------------
# The target of each side is set by `targets SYSTEM`: URL, server-side count function, router pid
# ("-" for the direct side) and h2load arguments. Both sides are warmed up first (WARMUP_S seconds
# unmeasured, then WARMUP_S seconds whose rate sizes the request count: ≈ PHASE_S seconds in all
# at that rate); then ROUNDS rounds alternate direct and router, so drifting machine load hits
# both alike. Each run sends an exact number of requests, so every one can be matched with a
# server-side success. Router CPU is read around each measured run only.
targets() {
  local grpc=(-H 'content-type: application/grpc' -H 'te: trailers')
  local h1=(--h1 -d "$run/chat.json" -H 'content-type: application/json' -H 'authorization: Bearer sk-bench')
  case "$1" in
    pas)
      D_URL="http://127.0.0.1:PORT/pas.v1.Programmer/Execute" D_PORT=prog_port D_COUNTS=pas_counts_direct
      D_ARGS=(-d "$run/pas/execute.bin" "${grpc[@]}")
      R_URL="http://127.0.0.1:$MANAGER_PORT/pas.v1.ProgrammerPool/Dispatch" R_COUNTS=pas_counts_backends R_PID=$PAS_PID
      R_ARGS=(-d "$run/pas/dispatch.bin" "${grpc[@]}") ;;
    litellm|portkey)
      D_URL="http://127.0.0.1:PORT/v1/chat/completions" D_PORT=nginx_port D_COUNTS=nginx_counts_backends D_ARGS=("${h1[@]}")
      R_COUNTS=nginx_counts_backends R_ARGS=("${h1[@]}")
      if [ "$1" = litellm ]; then
        R_URL="http://127.0.0.1:$LITELLM_PORT/v1/chat/completions" R_PID=$LITELLM_PID
      else
        R_URL="http://127.0.0.1:$PORTKEY_PORT/v1/chat/completions" R_PID=$PORTKEY_PID
        R_ARGS+=(-H "x-portkey-config: $PORTKEY_CONFIG")
      fi ;;
  esac
}
compare() {
  local system="$1" callers="$2" nd nr r
  targets "$system"
  nd=$(warmup "$system" direct "$callers" "$D_URL" "${D_ARGS[@]}")
  nr=$(warmup "$system" router "$callers" "$R_URL" "${R_ARGS[@]}")
  for r in $(seq 1 "$ROUNDS"); do
    measure "$system" direct "$callers" "$r" "$nd" "$D_COUNTS" - "$D_URL" "${D_ARGS[@]}"
    measure "$system" router "$callers" "$r" "$nr" "$R_COUNTS" "$R_PID" "$R_URL" "${R_ARGS[@]}"
  done
}
# warmup SYSTEM KIND CALLERS URL [h2load args…] -> requests per measured round
warmup() {
  local system="$1" kind="$2" callers="$3" url="$4"; shift 4
  local out="$run/results/warmup-$system-$kind-c$callers.txt" rate
  log "$system $kind, $callers caller(s): warm-up 2 x ${WARMUP_S}s"
  if [ "$kind" = direct ]; then # split over the backends as in `measure`
    local i ci hp=()
    for i in $(seq 1 10); do
      ci=$(( callers / 10 + (i <= callers % 10 ? 1 : 0) ))
      [ "$ci" -gt 0 ] || continue
      h2load -c "$ci" -m 1 --warm-up-time="$WARMUP_S" -D "$WARMUP_S" "$@" "${url/PORT/$("$D_PORT" "$i")}" >"$out.$i" 2>&1 &
      hp+=($!)
    done
    wait "${hp[@]}" || true
    cat "$out".* >"$out"
  else
    h2load -c "$callers" -m 1 --warm-up-time="$WARMUP_S" -D "$WARMUP_S" "$@" "$url" >"$out" 2>&1 || true
  fi
  rate=$(sed -n 's/^finished in .* \([0-9.]*\) req\/s.*/\1/p' "$out" | awk '{s += $1} END {print s + 0}')
  /usr/bin/python3 -c "import sys; print(max(100, int(float(sys.argv[1] or 0) * $PHASE_S / $ROUNDS)))" "${rate:-0}"
}
# measure SYSTEM KIND CALLERS ROUND N COUNTS_FN ROUTER_PID URL [h2load args…]
phase_no=0
measure() {
  local system="$1" kind="$2" callers="$3" round="$4" n="$5" counts="$6" rpid="$7" url="$8"; shift 8
  phase_no=$((phase_no + 1))
  local p; p="$run/results/$(printf 'phase-%02d' "$phase_no")-$system-$kind-c$callers-r$round"
  settle "$counts" >"$p.before.json"
  local cpu0=0 cpu1=0
  [ "$rpid" != - ] && cpu0=$(py procs.py cpu "$rpid")
  log "$system $kind, $callers caller(s), round $round: $n requests"
  if [ "$kind" = direct ]; then
    # Straight to the same 10 backends the router uses, the callers split evenly over them
    # (1 caller: backend 1), one h2load per backend running at once.
    local i ci ni hp=() outs=() logs=() total=0
    for i in $(seq 1 10); do
      ci=$(( callers / 10 + (i <= callers % 10 ? 1 : 0) ))
      [ "$ci" -gt 0 ] || continue
      ni=$(( n * ci / callers )); total=$((total + ni))
      h2load -c "$ci" -m 1 -n "$ni" --log-file="$p.$i.log" "$@" "${url/PORT/$("$D_PORT" "$i")}" >"$p.$i.h2load.txt" 2>&1 &
      hp+=($!); outs+=("$p.$i.h2load.txt"); logs+=("$p.$i.log")
    done
    wait "${hp[@]}" || true
    cat "${logs[@]}" >"$p.log"
    n=$total
    ( IFS=,; echo "${outs[*]}" ) >"$p.h2load.list"
  else
    h2load -c "$callers" -m 1 -n "$n" --log-file="$p.log" "$@" "$url" >"$p.h2load.txt" 2>&1 || true
    echo "$p.h2load.txt" >"$p.h2load.list"
  fi
  if [ "$rpid" != - ]; then
    cpu1=$(py procs.py cpu "$rpid")
    py procs.py peak "$rpid" "$PEAK_FILE"
  fi
  settle "$counts" >"$p.after.json"
  py report.py phase "$p.json" system="$system" kind="$kind" callers="$callers" round="$round" requests="$n" \
    h2load_out="$(cat "$p.h2load.list")" log="$p.log" before="$p.before.json" after="$p.after.json" \
    cpu_before="$cpu0" cpu_after="$cpu1"
}
# Prints the counts once three readings 0.5 s apart agree (late responses, e.g. of requests the
# duration-bound warm-up abandoned, have landed).
settle() {
  local a b same=0
  a=$("$1")
  for _ in $(seq 1 60); do
    sleep 0.5
    b=$("$1")
    if [ "$a" = "$b" ]; then same=$((same + 1)); [ "$same" -ge 2 ] && break; else same=0; fi
    a="$b"
  done
  printf '%s\n' "$a"
}

# ----- main -------------------------------------------------------------------------------------
main() {
  install_debian
  install_peers
  "$root/scripts/install-aider.sh" >&2
  [ -x "$PAS_BIN" ] || die "no pas binary at $PAS_BIN: run 'cargo build --release' or set PAS_BIN"
  run=$(mktemp -d "${TMPDIR:-/tmp}/pas-bench-peers.XXXXXX")
  mkdir -p "$run/results"
  log "work dir $run (PAS_BENCH_PEERS_KEEP=1 keeps it)"

  start_nginx
  local s
  for s in $SYSTEMS; do "start_$s"; done
  local chat='{"model":"bench-model","messages":[{"role":"user","content":"Say ok."}],"max_tokens":1}'
  printf '%s' "$chat" >"$run/chat.json"

  # Idle memory of each router: started, nothing sent yet.
  declare -A idle peak_file
  for s in $SYSTEMS; do
    local pid_var; pid_var="$(echo "$s" | tr a-z A-Z)_PID"
    idle[$s]=$(py procs.py mem "${!pid_var}")
    py procs.py reset-peak "${!pid_var}"
  done

  local c pid
  for s in $SYSTEMS; do
    local pid_var; pid_var="$(echo "$s" | tr a-z A-Z)_PID"; pid=${!pid_var}
    peak_file[$s]="$run/results/peak-$s.txt"
    # Read after each of its router phases, not while one runs (see procs.py's `peak`).
    PEAK_FILE="${peak_file[$s]}"
    for c in $CALLERS; do compare "$s" "$c"; done
  done

  # Versions and settings, then the table.
  local pas_version node_version nginx_version h2load_version
  pas_version=$("$PAS_BIN" --version | awk '{print $2}')
  node_version=$(node --version)
  nginx_version=$(nginx -v 2>&1 | sed 's/.*nginx\///')
  h2load_version=$(h2load --version | head -1 | sed 's/.*nghttp2\///')
  SYSTEMS="$SYSTEMS" IDLE="$(for s in $SYSTEMS; do echo "$s ${idle[$s]}"; done)" \
  PEAK="$(for s in $SYSTEMS; do echo "$s $(cat "${peak_file[$s]}" 2>/dev/null || echo '0 0')"; done)" \
  /usr/bin/python3 - "$run/results/meta.json" <<PY
import json, os, platform, sys, datetime
idle = {l.split()[0]: [int(x) for x in l.split()[1:3]] for l in os.environ["IDLE"].splitlines() if l.strip()}
peak = {l.split()[0]: [int(x) for x in l.split()[1:3]] for l in os.environ["PEAK"].splitlines() if l.strip()}
for s in peak:  # the peak is at least the idle figure
    peak[s] = [max(a, b) for a, b in zip(peak[s], idle[s])]
what = {
  "pas": "pas manager $pas_version (release binary $PAS_BIN, least_loaded) over 10 pas programmers answering dry runs; "
         "gRPC over HTTP/2; direct = Execute on the same programmers; success = the programmers' and the manager's "
         "dry-run result counters (/metrics); router CPU and memory = the manager process",
  "portkey": "@portkey-ai/gateway $PORTKEY_VERSION on Node.js $node_version (one process), x-portkey-config loadbalance "
             "over 10 openai targets (custom_host = the 10 nginx backends); direct = the same nginx backends; success = nginx access-log 200s",
  "litellm": "litellm[proxy] $LITELLM_VERSION (uvicorn, default 1 worker), 10 deployments of one model name, "
             "routing_strategy least-busy, no database, no telemetry; direct = the same nginx backends; success = nginx access-log 200s",
}
versions = {"pas": "$pas_version", "portkey": "$PORTKEY_VERSION", "litellm": "$LITELLM_VERSION"}
meta = {
  "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
  "host": platform.node(), "cpus": os.cpu_count(), "loadavg_at_end": open("/proc/loadavg").read().split()[:3],
  "load_note": "$LOAD_NOTE" or "no note on machine load",
  "h2load": "$h2load_version", "nginx": "$nginx_version", "node": "$node_version",
  "per_phase_s": $PHASE_S, "warmup_s": $WARMUP_S, "rounds": $ROUNDS,
  "pressure_avg300": {k: open(f"/proc/pressure/{k}").read().split()[3] for k in ("cpu", "io") if os.path.exists(f"/proc/pressure/{k}")}, "callers": [int(c) for c in "$CALLERS".split()],
  "systems": "$SYSTEMS".split(),
  "system_info": {s: {"version": versions[s], "what": what[s], "idle_kib": idle[s], "peak_kib": peak[s]} for s in "$SYSTEMS".split()},
}
json.dump(meta, open(sys.argv[1], "w"), indent=1)
PY
  mkdir -p "$(dirname "$OUT_JSON")"
  local status=0
  py report.py final "$run/results" "$OUT_JSON" >"$run/results/table.md" || status=$?
  cat "$run/results/table.md"
  cp "$run/results/table.md" "${OUT_JSON%.json}.md"
  [ "$status" = 0 ] || die "some requests were not verified on the server side (see the table)"
}

case "${1:-}" in
  install) install_debian; install_peers; "$root/scripts/install-aider.sh" >&2 ;;
  "") main ;;
  *) die "usage: $0 [install]" ;;
esac
