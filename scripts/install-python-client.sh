#!/usr/bin/env bash
# The Python client (clients/python) for its tests: a wheelhouse of the pinned wheels it needs to
# build and run (.python-client-wheels/, filled once from the package index: the dependencies and
# test extra of clients/python/pyproject.toml and its build requirements), and, with --venv DIR, a
# FRESH venv in DIR with the package installed from the repository path (`pip install
# ./clients/python[test]`, offline from the wheelhouse: its build generates the gRPC stubs from
# proto/ with grpcio-tools).
# Usage: scripts/install-python-client.sh [--venv DIR]   (wheelhouse: $PAS_PY_WHEELHOUSE or
#        .python-client-wheels in the repo)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
package="$root/clients/python"
wheels="${PAS_PY_WHEELHOUSE:-$root/.python-client-wheels}"
venv=""
if [ "${1:-}" = "--venv" ]; then
  venv="${2:?--venv needs a directory}"
elif [ $# -gt 0 ]; then
  echo "usage: $0 [--venv DIR]" >&2
  exit 2
fi
python="${PYTHON:-python3}"

# A venv to run pip from: the one asked for (made fresh), else a throwaway one.
if [ -n "$venv" ]; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
  pip_venv="$venv"
else
  pip_venv="$(mktemp -d)"
  trap 'rm -rf "$pip_venv"' EXIT
  "$python" -m venv "$pip_venv"
fi
pip=("$pip_venv/bin/python" -m pip --disable-pip-version-check)

# --- wheelhouse: refilled when pyproject.toml (the pins) changes ---------------------------------
stamp="$wheels/.pyproject-sha256"
want="$(sha256sum "$package/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "filling $wheels with the pinned wheels of clients/python" >&2
  rm -rf "$wheels"
  mkdir -p "$wheels"
  printf '*\n' >"$wheels/.gitignore"
  mapfile -t build_requires < <("$pip_venv/bin/python" - "$package/pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))
PY
)
  "${pip[@]}" download --quiet --dest "$wheels" "${build_requires[@]}"
  "${pip[@]}" download --quiet --dest "$wheels" "$package[test]"
  rm -f "$wheels"/pas_client-* "$wheels"/pas-client-*
  printf '%s\n' "$want" >"$stamp"
fi

# --- the fresh venv -----------------------------------------------------------------------------
if [ -n "$venv" ]; then
  "${pip[@]}" install --quiet --no-index --find-links "$wheels" "$package[test]"
  "$venv/bin/python" -c 'import pas_client, pas.v1.pool_pb2_grpc'
  echo "installed pas-client into $venv" >&2
fi
