#!/usr/bin/env bash
# Removes everything local-up created: stops the local-cluster process
# (which deletes its namespaces, links, routes and processes), deletes the
# namespaces of a crashed run, and removes _output/local.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "${KH_ROOT}"

BIN="${KH_ROOT}/_output/bin"
if [ ! -x "${BIN}/local-cluster" ]; then
  go build -o "${BIN}/local-cluster" ./cmd/local-cluster
fi
STATE="${LOCAL_DIR:-${KH_ROOT}/_output/local}"
"${BIN}/local-cluster" down -dir "${STATE}"
rm -f "${STATE}.log"
echo "local-down: done"
