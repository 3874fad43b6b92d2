#!/usr/bin/env bash
# Pins k8s.io/kubernetes at the release named in hack/upstream-version and
# replaces every staging module upstream's go.mod lists with its published
# version. Never edit those replace lines by hand: run this script.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "${KH_ROOT}"

args=()
while read -r mod; do
  args+=("-replace=${mod}=${mod}@${KUBE_STAGING_VERSION}")
done < <(kh::staging_modules)
go mod edit "${args[@]}"
go mod edit -require="k8s.io/kubernetes@${KUBE_VERSION}"
go mod tidy
