#!/usr/bin/env bash
# Starts the local cluster (etcd, patched kube-apiserver, two nodes as
# network namespaces running kube-proxy in haproxy mode, pods, an outside
# client, demo Services) and prints how to use it. docs/local-cluster.md.
#
#   make local-up                 in the background; make local-down removes it
#   FOREGROUND=1 make local-up    in the foreground; Ctrl-C removes it
#   MODE=nftables make local-up   upstream's nftables mode, same kube-proxy
#   SCOPE=cluster make local-up   no kube-proxy on the nodes: two load balancers
#                                 (kube-proxy scope cluster, keepalived, lb-controller)
#   SCOPE=external make local-up  nodes in nftables mode, two external load balancers
#   KUBECTL=1 make local-up       also build _output/bin/kubectl (pinned upstream)
#
# The cluster is held by one process, _output/bin/local-cluster; its state
# (pid, generated files, logs) is in _output/local.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "${KH_ROOT}"

STATE="${LOCAL_DIR:-${KH_ROOT}/_output/local}"
BIN="${KH_ROOT}/_output/bin"
export KH_BIN_DIR="${BIN}"

if [ "$(id -u)" != 0 ]; then
  echo "local-up: needs root (network namespaces, routes, nftables)" >&2
  exit 1
fi
# A fresh machine: install what is missing (idempotent, needs root).
hack/install-deps.sh
for cmd in haproxy nft ip keepalived; do
  command -v "${cmd}" >/dev/null || { echo "local-up: ${cmd} not in PATH after hack/install-deps.sh" >&2; exit 1; }
done

go build -o "${BIN}/local-cluster" ./cmd/local-cluster
if "${BIN}/local-cluster" status -dir "${STATE}" >/dev/null 2>&1; then
  echo "local-up: already up (make local-down removes it)"
  cat "${STATE}/info.txt" 2>/dev/null || true
  exit 0
fi

missing=()
for b in kube-proxy kube-apiserver etcd lb-controller; do
  [ -x "${BIN}/${b}" ] || missing+=("${b}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "local-up: building ${missing[*]}"
  if [ ! -x hack/build.sh ]; then
    echo "local-up: hack/build.sh is missing: cannot build ${missing[*]}" >&2
    exit 1
  fi
  hack/build.sh "${missing[@]}"
fi

# What a crashed run left (namespaces, processes in them, files) goes first.
"${BIN}/local-cluster" down -dir "${STATE}"

# kubectl is optional: built from the same pinned tree on request.
if [ -n "${KUBECTL:-}" ] && [ ! -x "${BIN}/kubectl" ]; then
  echo "local-up: building kubectl"
  GOWORK="${KH_ROOT}/staging/go.work" go build -trimpath -buildvcs=false -o "${BIN}/kubectl" k8s.io/kubernetes/cmd/kubectl
fi

mode=(-scope "${SCOPE:-node}")
if [ -n "${MODE:-}" ]; then mode+=(-mode "${MODE}"); fi
if [ -n "${FOREGROUND:-}" ]; then
  exec "${BIN}/local-cluster" up -dir "${STATE}" "${mode[@]}"
fi

# `up` cleans what a crashed run left (namespaces, files), then holds the
# cluster; its output goes to a log beside the state directory, which `up`
# and `down` remove.
log="${STATE}.log"
setsid "${BIN}/local-cluster" up -dir "${STATE}" "${mode[@]}" >"${log}" 2>&1 </dev/null &
pid=$!
for _ in $(seq 1 600); do
  if [ -f "${STATE}/ready" ]; then
    cat "${STATE}/info.txt"
    echo "Cluster log: ${log}"
    exit 0
  fi
  if ! kill -0 "${pid}" 2>/dev/null; then
    echo "local-up: failed; the end of ${log}:" >&2
    tail -n 30 "${log}" >&2
    exit 1
  fi
  sleep 0.5
done
echo "local-up: not ready after 5 minutes; see ${log}; make local-down removes it" >&2
exit 1
