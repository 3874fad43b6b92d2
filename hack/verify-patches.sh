#!/usr/bin/env bash
# Verifies the patch set:
#   1. patches/ itself, no upstream tree needed: every series entry exists,
#      every *.patch file is in patches/series, the numbers grow along the
#      series, every patch's header has the fields docs/patches.md names
#      (--headers-only stops here; hack's Go tests run it);
#   2. on a fresh copy of the pinned upstream: every patch applies cleanly,
#      in order (else: which patch, which hunk);
#   3. the generated files the patches carry are what the generators produce
#      from the patched sources (hack/update-generated.sh on the fresh tree
#      changes nothing): deepcopy, conversion and defaults, and the OpenAPI
#      definitions, model names and API rule violations when a patch touches
#      an OpenAPI-tagged package. Skip this slower step with --apply-only.
# Works in a temporary directory; staging/ is left alone.
#
#   hack/verify-patches.sh [--apply-only]
#   hack/verify-patches.sh --headers-only [PATCHES-DIR]   (default patches/)
source "$(dirname "${BASH_SOURCE[0]}")/stage-lib.sh"
cd "${KH_ROOT}"

usage() {
  echo "usage: hack/verify-patches.sh [--apply-only] | --headers-only [PATCHES-DIR]" >&2
  exit 2
}
check_generated=true
headers_only=false
dir=${KH_PATCHES_DIR}
case "${1:-}" in
  --apply-only) check_generated=false; [ $# -eq 1 ] || usage ;;
  --headers-only) headers_only=true; [ $# -le 2 ] || usage; dir=${2:-${dir}} ;;
  "") ;;
  *) usage ;;
esac

if ! problems=$(kh::check_patch_set "${dir}"); then
  echo "verify-patches: FAILED: the patch set in ${dir#"${KH_ROOT}"/} has problems:" >&2
  sed 's/^/  /' <<<"${problems}" >&2
  exit 1
fi
echo "verify-patches: ${dir#"${KH_ROOT}"/}: every patch is in the series and has the header fields ${KH_PATCH_FIELDS[*]}"
${headers_only} && exit 0

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
# update-generated says which generators it ran on which packages, and which
# packages it found no OpenAPI tag in.
KH_GOWORK="${work}/go.work" "${KH_ROOT}/hack/update-generated.sh" "${work}/kubernetes" |
  sed 's/^update-generated: /verify-patches: checked: /'
if [ -n "$(git -C "${work}/kubernetes" status --porcelain)" ]; then
  echo "verify-patches: FAILED: generated files differ from their generators' output:" >&2
  git -C "${work}/kubernetes" status --short >&2
  git -C "${work}/kubernetes" diff --stat >&2
  echo "verify-patches: run hack/update-generated.sh in staging/, amend the patch, hack/export-patches.sh" >&2
  exit 1
fi
openapi=$(sed -n 's#^[[:space:]]*k8s\.io/kube-openapi \(v[^ ]*\).*#\1#p' "${work}/kubernetes/go.mod")
echo "verify-patches: generated files are current (code-generator ${KUBE_STAGING_VERSION}, kube-openapi ${openapi})"
