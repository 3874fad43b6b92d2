#!/usr/bin/env bash
# Applies patches/series to another upstream release, e.g. the next patch
# release, and reports the first patch and hunk that no longer applies.
#
#   hack/rebase-patches.sh v1.36.4           # check only
#   hack/rebase-patches.sh --write v1.36.4   # also refresh patches/ against it
#
# The rebased tree is left in staging/rebase-<version> (git repository, one
# commit per patch) to fix a failing patch by hand: apply the rest with
# `git am`, then rerun with --write. Moving the pin itself is then:
# KUBE_VERSION in hack/upstream-version, hack/update-gomod.sh,
# hack/stage.sh --force, hack/update-generated.sh (see docs/patches.md).
source "$(dirname "${BASH_SOURCE[0]}")/stage-lib.sh"
cd "${KH_ROOT}"

write=false
if [ "${1:-}" = "--write" ]; then write=true; shift; fi
version=${1:-}
if ! [[ "${version}" =~ ^v1\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]]; then
  echo "usage: hack/rebase-patches.sh [--write] v1.X.Y" >&2
  exit 2
fi

tree="${KH_ROOT}/staging/rebase-${version}"
kh::assemble_tree "${version}" "${tree}"
if ! kh::apply_series "${tree}"; then
  echo "rebase-patches: the series does not apply to ${version}; fix it in staging/rebase-${version}" >&2
  exit 1
fi
echo "rebase-patches: all $(kh::series_patches | wc -l) patches apply to k8s.io/kubernetes ${version}"
if ${write}; then
  mapfile -t names < <(kh::series_patches)
  mapfile -t commits < <(git -C "${tree}" rev-list --reverse upstream..HEAD)
  for i in "${!commits[@]}"; do
    git -C "${tree}" format-patch -q --zero-commit --no-signature --no-numbered \
      --stdout -1 "${commits[$i]}" >"${KH_PATCHES_DIR}/${names[$i]}"
  done
  echo "rebase-patches: refreshed patches/ against ${version}; regenerate generated files after moving the pin"
fi
