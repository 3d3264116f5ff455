#!/usr/bin/env bash
# Installs the pinned Aider CLI into a project-local virtualenv (idempotent).
# Usage: scripts/install-aider.sh [VENV_DIR]   (default: .aider-venv beside this script's repo)
set -euo pipefail
AIDER_VERSION="0.86.2"
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-${PAS_AIDER_VENV:-$root/.aider-venv}}"
if [ -x "$venv/bin/aider" ] && "$venv/bin/python" -c "import importlib.metadata as m,sys; sys.exit(m.version('aider-chat')!='$AIDER_VERSION')" 2>/dev/null; then
  exit 0
fi
echo "installing aider-chat==$AIDER_VERSION into $venv (one time, ~1 min)" >&2
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "aider-chat==$AIDER_VERSION"
