#!/usr/bin/env bash
# Installs dnsmasq (Debian `dnsmasq-base`), the real DNS server the discovery tests run on
# loopback (tests/discovery_dns.rs, tests/discovery_scale.rs). Idempotent: nothing to do when
# `dnsmasq` is on PATH. Needs root (apt-get) the first time.
set -euo pipefail
if command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ]; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq dnsmasq-base
