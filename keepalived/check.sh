#!/bin/bash
# keepalived's health check of a kube-haproxy load balancer (see package
# keepalived). Exits 0 only when
#   - an HAProxy worker accepts on the dispatch port (a connection made to
#     it directly finds no Service and is closed: accepting is the proof),
#   - and kube-proxy's /healthz answers 200 (its syncs are recent), or has
#     failed for less than the grace after having answered 200 once: a
#     restarted kube-proxy adopts the HAProxy, which serves its last state
#     meanwhile, so moving the address (and cutting every connection
#     through this host) waits. A kube-proxy never seen healthy gets no
#     grace: a broken new version must not take the address.
# Usage: check-kube-haproxy.sh <dispatch-port> <healthz host:port> [grace-seconds]
# The time kube-proxy was first seen failing is kept beside this script.
set -u
port=${1:-10400}
healthz=${2:-127.0.0.1:10256}
grace=${3:-0}
since_file="${0}.kube-proxy-failing-since"
seen_file="${0}.kube-proxy-seen-healthy"
# HAProxy listens on 127.0.0.1 (IPv4) and [::1] (IPv6): either will do.
if ! timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/${port}" 2>/dev/null &&
  ! timeout 1 bash -c "exec 3<>/dev/tcp/::1/${port}" 2>/dev/null; then
  echo "check-kube-haproxy: HAProxy does not accept on 127.0.0.1:${port} or [::1]:${port}" >&2
  exit 1
fi
status=$(timeout 1 bash -c "exec 3<>/dev/tcp/${healthz%:*}/${healthz##*:}
printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
head -n1 <&3" 2>/dev/null)
case "${status}" in
  *" 200 "*) rm -f "${since_file}"; touch "${seen_file}"; exit 0 ;;
esac
if [ ! -e "${seen_file}" ]; then
  echo "check-kube-haproxy: kube-proxy /healthz on ${healthz}: ${status:-no answer}, and never healthy yet" >&2
  exit 1
fi
now=$(date +%s)
[ -s "${since_file}" ] || echo "${now}" >"${since_file}"
since=$(cat "${since_file}")
if [ $((now - since)) -lt "${grace}" ]; then
  echo "check-kube-haproxy: kube-proxy /healthz on ${healthz}: ${status:-no answer} for $((now - since))s, within the grace of ${grace}s" >&2
  exit 0
fi
echo "check-kube-haproxy: kube-proxy /healthz on ${healthz}: ${status:-no answer} for $((now - since))s" >&2
exit 1
