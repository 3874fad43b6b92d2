#!/usr/bin/env bash
# Installs the Debian packages the tests and the local cluster need.
# Idempotent: does nothing when every package is already there.
set -euo pipefail
pkgs=(haproxy nftables iptables iproute2 socat wrk curl keepalived)
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
