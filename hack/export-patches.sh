#!/usr/bin/env bash
# Writes the commits of staging/kubernetes after the "upstream" tag back to
# patches/: the n-th commit replaces the n-th patch of patches/series; commits
# past the end of the series become new patches numbered after the highest
# number in use and are appended to the series. So changing a patch is:
# edit in staging/kubernetes, `git commit --amend` (or rebase -i), run this.
#
# Patches are written with `git format-patch --zero-commit`, so the same
# change always gives the same patch text, whatever the commit ids.
source "$(dirname "${BASH_SOURCE[0]}")/stage-lib.sh"
cd "${KH_ROOT}"

tree="${KH_ROOT}/staging/kubernetes"
if [ -n "$(git -C "${tree}" status --porcelain --untracked-files=normal)" ]; then
  echo "export-patches: staging/kubernetes has uncommitted changes; commit them first" >&2
  exit 1
fi

mapfile -t names < <(kh::series_patches)
mapfile -t commits < <(git -C "${tree}" rev-list --reverse upstream..HEAD)
if [ ${#commits[@]} -lt ${#names[@]} ]; then
  echo "export-patches: staging/kubernetes has ${#commits[@]} commits but the series ${#names[@]} patches;" >&2
  echo "export-patches: remove dropped patches from patches/series by hand first" >&2
  exit 1
fi

highest=0
for n in "${names[@]}"; do
  num=$((10#$(basename "${n}" | cut -c1-4)))
  [ "${num}" -gt "${highest}" ] && highest=${num}
done

tmp=$(mktemp -d)
trap 'rm -rf "${tmp}"' EXIT
for i in "${!commits[@]}"; do
  git -C "${tree}" format-patch -q --zero-commit --no-signature --no-numbered \
    -o "${tmp}" -1 "${commits[$i]}"
  out=$(ls "${tmp}"/*.patch)
  if [ "${i}" -lt ${#names[@]} ]; then
    name=${names[$i]}
  else
    highest=$((highest + 1))
    name=$(printf '%04d-%s' "${highest}" "$(basename "${out}" | cut -d- -f2-)")
    echo "${name}" >>"${KH_SERIES}"
    echo "export-patches: new patch ${name}"
  fi
  mv "${out}" "${KH_PATCHES_DIR}/${name}"
done
# The tree now matches the series: record it so hack/stage.sh keeps it.
echo "$(kh::series_hash) $(git -C "${tree}" rev-parse HEAD)" >"${KH_ROOT}/staging/.stamp"
