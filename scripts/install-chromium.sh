#!/usr/bin/env bash
# Installs Chromium (Debian package `chromium`), the real browser the dashboard test drives
# headless (tests/dashboard_chromium.rs). Idempotent: nothing to do when `chromium` is on PATH.
# Needs root (apt-get) the first time; without it the dashboard test says it was skipped.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-chromium.sh: not root, cannot apt-get install chromium (the dashboard test will be skipped)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium || echo "install-chromium.sh: chromium could not be installed (the dashboard test will be skipped)" >&2
