#!/usr/bin/env bash
# Installs the Debian packages the tests and the local cluster need, and
# loads br_netfilter (the tests of pods on a node's bridge turn it on).
# Idempotent: does nothing when everything is already there.
set -euo pipefail

# br_netfilter: built in, or a module to load (root). Without it the tests
# that need it fail and say so.
if [ ! -d /proc/sys/net/bridge ]; then
  if [ "$(id -u)" -eq 0 ] && command -v modprobe >/dev/null; then
    modprobe br_netfilter || echo "install-deps: cannot load br_netfilter" >&2
  else
    echo "install-deps: br_netfilter is not loaded (as root: modprobe br_netfilter)" >&2
  fi
fi

pkgs=(haproxy nftables iptables iproute2 socat wrk nghttp2-client curl keepalived)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: need root to install: ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}"
