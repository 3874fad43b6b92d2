#!/usr/bin/env bash
# Builds staging/: the pinned upstream Kubernetes with patches/series applied
# (staging/kubernetes, a git repository with one commit per patch) and
# staging/go.work, which builds this repository against it:
#
#   GOWORK=$PWD/staging/go.work go build k8s.io/kubernetes/cmd/kube-proxy
#
# Does nothing when staging/ is already built from the same upstream release,
# scripts and patches. Refuses to throw away local commits or edits in
# staging/kubernetes unless --force is given (export them first, see
# docs/patches.md).
#
# Environment: KH_STAGE_MODULES="k8s.io/foo ..." also stages these staging
# modules (for a patch in progress that will touch them).
source "$(dirname "${BASH_SOURCE[0]}")/stage-lib.sh"
cd "${KH_ROOT}"

force=false
case "${1:-}" in
  --force) force=true ;;
  "") ;;
  *) echo "usage: hack/stage.sh [--force]" >&2; exit 2 ;;
esac

staging="${KH_ROOT}/staging"
tree="${staging}/kubernetes"
stamp="${staging}/.stamp"
want=$(kh::series_hash)

if [ -d "${tree}/.git" ] && [ -f "${stamp}" ] && [ -f "${staging}/go.work" ]; then
  read -r have head <"${stamp}" || true
  dirty=$(git -C "${tree}" status --porcelain --untracked-files=no 2>/dev/null | head -1)
  current=$(git -C "${tree}" rev-parse HEAD 2>/dev/null || true)
  if [ "${have}" = "${want}" ] && [ "${current}" = "${head}" ] && [ -z "${dirty}" ]; then
    exit 0
  fi
  if ! ${force} && { [ "${current}" != "${head}" ] || [ -n "${dirty}" ]; }; then
    echo "stage: staging/kubernetes has commits or edits not in patches/; export them" >&2
    echo "stage: (docs/patches.md, \"Changing a patch\") or rerun with --force to discard them" >&2
    exit 1
  fi
fi

echo "stage: k8s.io/kubernetes ${KUBE_VERSION} + $(kh::series_patches | wc -l) patches -> staging/kubernetes"
rm -f "${stamp}"
kh::assemble_tree "${KUBE_VERSION}" "${tree}"
if ! kh::apply_series "${tree}"; then
  echo "stage: failed; staging/kubernetes holds upstream plus the patches before the failing one" >&2
  exit 1
fi
kh::write_gowork "${staging}" kubernetes
echo "${want} $(git -C "${tree}" rev-parse HEAD)" >"${stamp}"
