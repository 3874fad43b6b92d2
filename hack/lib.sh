#!/usr/bin/env bash
# Shared helpers for hack/ scripts: where the repo is, which upstream release
# is pinned, and where Go keeps that release's module.
set -euo pipefail

KH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=/dev/null
source "${KH_ROOT}/hack/upstream-version"
# Staging modules (k8s.io/api, ...) are published as v0.<minor>.<patch>.
KUBE_STAGING_VERSION="v0.${KUBE_VERSION#v1.}"
export KH_ROOT KUBE_VERSION KUBE_STAGING_VERSION

# kh::upstream_dir prints the module-cache directory of the pinned
# k8s.io/kubernetes, downloading it first if needed.
kh::upstream_dir() {
  (cd "${KH_ROOT}" && go mod download -json "k8s.io/kubernetes@${KUBE_VERSION}" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
}

# kh::staging_modules lists the k8s.io/* modules that upstream's go.mod
# replaces with ./staging/src paths (absent from the module zip).
kh::staging_modules() {
  local dir
  dir=$(kh::upstream_dir)
  sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*#\1#p' "${dir}/go.mod"
}
