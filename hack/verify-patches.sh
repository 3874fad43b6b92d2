#!/usr/bin/env bash
# Verifies patches/series against a fresh copy of the pinned upstream:
#   1. every patch applies cleanly, in order (else: which patch, which hunk);
#   2. the generated files the patches carry are what the generators produce
#      from the patched sources (hack/update-generated.sh on the fresh tree
#      changes nothing). Skip this slower step with --apply-only.
# Works in a temporary directory; staging/ is left alone.
source "$(dirname "${BASH_SOURCE[0]}")/stage-lib.sh"
cd "${KH_ROOT}"

check_generated=true
case "${1:-}" in
  --apply-only) check_generated=false ;;
  "") ;;
  *) echo "usage: hack/verify-patches.sh [--apply-only]" >&2; exit 2 ;;
esac

work=$(mktemp -d "${TMPDIR:-/tmp}/kh-verify-patches.XXXXXX")
trap 'rm -rf "${work}"' EXIT

kh::assemble_tree "${KUBE_VERSION}" "${work}/kubernetes"
if ! kh::apply_series "${work}/kubernetes"; then
  echo "verify-patches: FAILED: the series does not apply to k8s.io/kubernetes ${KUBE_VERSION}" >&2
  exit 1
fi
echo "verify-patches: $(kh::series_patches | wc -l) patches apply cleanly to ${KUBE_VERSION}"

${check_generated} || exit 0
kh::write_gowork "${work}" kubernetes
# Reuse the checksums staging/ already gathered, if any.
if [ -f "${KH_ROOT}/staging/go.work.sum" ]; then cp "${KH_ROOT}/staging/go.work.sum" "${work}/"; fi
KH_GOWORK="${work}/go.work" "${KH_ROOT}/hack/update-generated.sh" "${work}/kubernetes" >/dev/null
if [ -n "$(git -C "${work}/kubernetes" status --porcelain)" ]; then
  echo "verify-patches: FAILED: generated files differ from their generators' output:" >&2
  git -C "${work}/kubernetes" status --short >&2
  git -C "${work}/kubernetes" diff --stat >&2
  echo "verify-patches: run hack/update-generated.sh in staging/, amend the patch, hack/export-patches.sh" >&2
  exit 1
fi
echo "verify-patches: generated files match deepcopy-gen, conversion-gen and defaulter-gen ${KUBE_STAGING_VERSION}"
