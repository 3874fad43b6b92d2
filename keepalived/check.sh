#!/bin/bash
# keepalived's health check of a kube-haproxy load balancer (see package
# keepalived): exits 0 only when
#   - an HAProxy worker accepts on the dispatch port (a connection made to
#     it directly finds no Service and is closed: accepting is the proof),
#   - kube-proxy's /healthz answers 200 (its syncs are recent).
# Usage: check-kube-haproxy.sh <dispatch-port> <healthz host:port>
set -u
port=${1:-10400}
healthz=${2:-127.0.0.1:10256}
if ! timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/${port}" 2>/dev/null; then
  echo "check-kube-haproxy: HAProxy does not accept on 127.0.0.1:${port}" >&2
  exit 1
fi
status=$(timeout 1 bash -c "exec 3<>/dev/tcp/${healthz%:*}/${healthz##*:}
printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
head -n1 <&3" 2>/dev/null)
case "${status}" in
  *" 200 "*) exit 0 ;;
  *) echo "check-kube-haproxy: kube-proxy /healthz on ${healthz}: ${status:-no answer}" >&2; exit 1 ;;
esac
