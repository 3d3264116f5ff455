#!/usr/bin/env bash
# Debian packages the multi-host test (tests/multi_host.rs) needs: `ip` (iproute2) for network
# namespaces, veth pairs and a bridge, `nft` (nftables) to partition a host, and `dnsmasq`
# (dnsmasq-base) to serve the hosts' names. Idempotent:
# installs only what is missing; needs root (the test itself does).
set -euo pipefail
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || missing+=(dnsmasq-base)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-netns-tools: need root to install ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
  apt-get update -qq >/dev/null
  apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
}
echo "install-netns-tools: installed ${missing[*]}"
