#!/usr/bin/env bash
# Functions shared by the scripts that assemble patched upstream trees:
# hack/stage.sh, hack/verify-patches.sh and hack/rebase-patches.sh.
#
# A patched tree is the k8s.io/kubernetes module of one upstream release,
# copied from the Go module cache, plus copies of the staging modules
# (k8s.io/kube-proxy, ...) that the patch series touches, laid out where
# upstream's monorepo keeps them (staging/src/k8s.io/<module>). So the
# patches are ordinary upstream patches: `git am` applies them to a
# kubernetes/kubernetes checkout as well.
#
# The tree is a git repository: one commit holding the pristine upstream
# release (tagged "upstream"), then one commit per patch. Editing a patch
# is editing that history and running `git format-patch` (docs/patches.md).

# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KH_PATCHES_DIR="${KH_ROOT}/patches"
KH_SERIES="${KH_PATCHES_DIR}/series"

# Commits in patched trees carry a fixed identity and date, so that the same
# upstream release and series give the same commits on every machine.
export GIT_COMMITTER_NAME="kube-haproxy stage"
export GIT_COMMITTER_EMAIL="stage@kube-haproxy.io"
export GIT_COMMITTER_DATE="2000-01-01T00:00:00Z"

# kh::module_dir MODULE VERSION prints the module-cache directory of
# MODULE@VERSION, downloading it through the module proxy first if needed.
kh::module_dir() {
  local dir
  dir=$(cd "${KH_ROOT}" && GOWORK=off GOFLAGS=-mod=mod go mod download -json "$1@$2" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  if [ -z "${dir}" ] || [ ! -d "${dir}" ]; then
    echo "cannot download $1@$2 through the Go module proxy" >&2
    return 1
  fi
  echo "${dir}"
}

# kh::series_patches prints the patch files of patches/series, in order,
# as paths relative to patches/. Blank lines and # comments are skipped.
kh::series_patches() {
  [ -f "${KH_SERIES}" ] || return 0
  sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "${KH_SERIES}"
}

# The header fields of every patch's message (docs/patches.md, "Layout").
KH_PATCH_FIELDS=(Description Why Upstream-Version Forwarded Generated Tests)

# kh::check_patch_set [DIR] checks the patch set in DIR (default patches/)
# without any upstream tree: every series entry exists and is listed once,
# every *.patch file is in the series, the four-digit numbers of the file
# names grow along the series, and every patch's message (before its "---"
# line) has each field of KH_PATCH_FIELDS, not empty. It prints one line per
# problem, naming the patch, and returns 1 if there is any.
kh::check_patch_set() {
  local dir=${1:-${KH_PATCHES_DIR}} label p f num prev=-1 rc=0 missing=false
  local -a entries
  local -A listed=()
  label=${dir#"${KH_ROOT}"/}
  if [ ! -f "${dir}/series" ]; then
    echo "${label}/series: missing"
    return 1
  fi
  mapfile -t entries < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "${dir}/series")
  for p in "${entries[@]}"; do
    if [ -n "${listed[${p}]:-}" ]; then
      echo "${label}/series: ${p} is listed twice"
      rc=1
    fi
    listed[${p}]=1
    if [ ! -f "${dir}/${p}" ]; then
      echo "${label}/series: ${p} is listed but does not exist"
      rc=1
      continue
    fi
    if ! [[ "${p}" =~ ^([0-9]{4})-[^/]+\.patch$ ]]; then
      echo "${label}/${p}: the name is not NNNN-<what>.patch"
      rc=1
    else
      num=$((10#${BASH_REMATCH[1]}))
      if [ "${num}" -le "${prev}" ]; then
        echo "${label}/${p}: its number is not above the previous patch's in the series; number the patches in the order they apply"
        rc=1
      fi
      prev=${num}
    fi
    for f in "${KH_PATCH_FIELDS[@]}"; do
      if ! sed -n '1,/^---$/p' "${dir}/${p}" | grep -q "^${f}:[[:space:]]*[^[:space:]]"; then
        echo "${label}/${p}: the header has no ${f}: field"
        rc=1
        missing=true
      fi
    done
  done
  for f in "${dir}"/*.patch; do
    [ -e "${f}" ] || continue
    p=$(basename "${f}")
    if [ -z "${listed[${p}]:-}" ]; then
      echo "${label}/${p}: not listed in ${label}/series; add it there or delete it"
      rc=1
    fi
  done
  if ${missing}; then
    echo "(every patch's header has the fields ${KH_PATCH_FIELDS[*]}: see docs/patches.md, \"Layout\")"
  fi
  return "${rc}"
}

# kh::series_hash prints a hash of everything a staged tree is made from:
# the upstream version, the staging scripts, the series and each patch.
kh::series_hash() {
  local p
  {
    echo "${KUBE_VERSION} ${KH_STAGE_MODULES:-}"
    cat "${KH_ROOT}/hack/stage-lib.sh" "${KH_ROOT}/hack/stage.sh"
    if [ -f "${KH_SERIES}" ]; then cat "${KH_SERIES}"; fi
    while read -r p; do cat "${KH_PATCHES_DIR}/${p}"; done < <(kh::series_patches)
  } | sha256sum | cut -d' ' -f1
}

# kh::patched_staging_modules prints the staging modules (k8s.io/<name>) that
# the series touches, plus any listed in KH_STAGE_MODULES (space-separated,
# for a patch in progress that is not in the series yet). The list is read
# from the patches themselves, never written down by hand.
kh::patched_staging_modules() {
  local p
  {
    while read -r p; do
      sed -n 's#^\(---\|+++\) [ab]/staging/src/\(k8s\.io/[a-z0-9-]*\)/.*#\2#p' "${KH_PATCHES_DIR}/${p}"
    done < <(kh::series_patches)
    for p in ${KH_STAGE_MODULES:-}; do echo "${p}"; done
  } | sort -u
}

# kh::assemble_tree KUBE_VERSION DEST copies upstream k8s.io/kubernetes at
# KUBE_VERSION and the staging modules the series touches (at the matching
# v0.x.y) into DEST, makes it writable and commits it as the "upstream" base.
kh::assemble_tree() {
  local version=$1 dest=$2 staging_version mod upstream known
  staging_version="v0.${version#v1.}"
  upstream=$(kh::module_dir k8s.io/kubernetes "${version}")
  # Staging modules upstream's own go.mod replaces with ./staging/src paths.
  known=$(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*#\1#p' "${upstream}/go.mod")

  rm -rf "${dest}"
  mkdir -p "$(dirname "${dest}")"
  cp -R "${upstream}" "${dest}"
  while read -r mod; do
    [ -n "${mod}" ] || continue
    if ! grep -qx "${mod}" <<<"${known}"; then
      echo "patches touch staging/src/${mod}, which is not a staging module of k8s.io/kubernetes@${version}" >&2
      return 1
    fi
    mkdir -p "${dest}/staging/src/k8s.io"
    cp -R "$(kh::module_dir "${mod}" "${staging_version}")" "${dest}/staging/src/${mod}"
  done < <(kh::patched_staging_modules)
  # The module cache is read-only; the staged tree is meant to be edited.
  chmod -R u+w "${dest}"

  (
    cd "${dest}"
    git init -q -b upstream-base .
    git config user.name "${GIT_COMMITTER_NAME}"
    git config user.email "${GIT_COMMITTER_EMAIL}"
    # -f: upstream's .gitignore would hide files the module zip ships.
    git add -A -f .
    GIT_AUTHOR_DATE="${GIT_COMMITTER_DATE}" git commit -q --no-verify \
      -m "k8s.io/kubernetes ${version} from the Go module cache" \
      -m "Staging modules at ${staging_version}: $(kh::patched_staging_modules | tr '\n' ' ')"
    git tag upstream
    git checkout -q -b patched
  )
}

# kh::apply_series DEST applies patches/series to the assembled tree in DEST,
# one commit per patch. On the first patch that does not apply it names the
# patch, the file and the failing hunks, and returns 1.
kh::apply_series() {
  local dest=$1 p
  while read -r p; do
    if [ ! -f "${KH_PATCHES_DIR}/${p}" ]; then
      echo "patches/series names ${p}, which does not exist" >&2
      return 1
    fi
    if ! git -C "${dest}" am -q --whitespace=nowarn "${KH_PATCHES_DIR}/${p}" >/dev/null 2>&1; then
      git -C "${dest}" am --abort >/dev/null 2>&1 || true
      echo "patch ${p} does not apply to $(git -C "${dest}" log -1 --format=%s upstream):" >&2
      # patch(1) without fuzz, as strict as git: name each failing hunk
      # under the file it belongs to.
      (cd "${dest}" && patch -p1 --dry-run --force --fuzz=0 <"${KH_PATCHES_DIR}/${p}" 2>&1 |
        awk '/^checking file/ {file=$0; next}
             /FAILED|can.t find file|No file to patch|malformed/ {if (file) print "  " file; file=""; print "    " $0}') >&2 || true
      (cd "${dest}" && git apply --check "${KH_PATCHES_DIR}/${p}" 2>&1 | sed 's/^/  /') >&2 || true
      return 1
    fi
  done < <(kh::series_patches)
}

# kh::write_gowork DIR TREE writes DIR/go.work: the repository's own module
# plus replaces of k8s.io/kubernetes and each patched staging module with
# their copies in TREE (a path relative to DIR).
kh::write_gowork() {
  local dir=$1 tree=$2 goversion mod rel
  goversion=$(sed -n 's/^go \(.*\)/\1/p' "${KH_ROOT}/go.mod")
  rel=$(realpath --relative-to="${dir}" "${KH_ROOT}")
  {
    echo "// Generated by hack/stage.sh from patches/series. Do not edit."
    echo
    echo "go ${goversion}"
    echo
    echo "use ${rel}"
    echo
    echo "replace k8s.io/kubernetes => ./${tree}"
    while read -r mod; do
      [ -n "${mod}" ] && echo "replace ${mod} => ./${tree}/staging/src/${mod}"
    done < <(kh::patched_staging_modules)
  } >"${dir}/go.work"
}

# kh::patched_packages [GLOB] prints the import paths of the Go packages that
# the patches of the series matching GLOB (a file-name pattern, default all)
# add or change, testdata counting for the package that holds it.
kh::patched_packages() {
  local glob=${1:-*} p
  while read -r p; do
    # shellcheck disable=SC2254
    case "${p}" in ${glob}) ;; *) continue ;; esac
    sed -n 's#^+++ b/\(.*\)#\1#p' "${KH_PATCHES_DIR}/${p}"
  done < <(kh::series_patches) |
    sed -e 's#/testdata/.*#/x.go#' | grep '\.go$' | xargs -r -n1 dirname |
    sed -e 's#^staging/src/##' -e 't' -e 's#^#k8s.io/kubernetes/#' | sort -u
}
