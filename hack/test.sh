#!/usr/bin/env bash
# The test command of README.md and CI: unit tests, then the tests that need
# the patched binaries, real HAProxy and network namespaces.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "${KH_ROOT}"

echo "== system packages (idempotent; installs what is missing, as root)"
hack/install-deps.sh

echo "== unit tests"
go test ./proxier/... ./hack/...

echo "== patch series: applies to a fresh upstream ${KUBE_VERSION}, generated files current"
hack/verify-patches.sh

echo "== build: patched kube-proxy and kube-apiserver, etcd (cached under _output)"
hack/build.sh

echo "== patched upstream: tests of the packages the kube-proxy patches touch"
mapfile -t kube_proxy_pkgs < <(source hack/stage-lib.sh && kh::patched_packages '000*')
GOWORK="${KH_ROOT}/staging/go.work" go test "${kube_proxy_pkgs[@]}"

echo "== patched upstream: Service IP allocation, storage and repair (kube-apiserver patches)"
GOWORK="${KH_ROOT}/staging/go.work" go test k8s.io/kubernetes/pkg/registry/core/service/...

echo "== integration tests (network namespaces, real HAProxy; root)"
go test ./internal/... ./cmd/... ./test/... ./examples/...

echo "== end-to-end: the local cluster in haproxy and nftables mode, side by side (root; make build)"
KH_E2E=1 go test -count=1 -v -timeout 30m ./test/e2e/

echo "== benchmark smoke run: 100 Services in both modes, every pass and figure (root; make build); make bench is the full run"
make --no-print-directory bench-smoke-built
