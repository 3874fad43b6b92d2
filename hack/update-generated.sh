#!/usr/bin/env bash
# Regenerates, in staging/kubernetes, the generated files of every package the
# patches change, with upstream's own generators at the pinned code-generator
# release (deepcopy-gen, conversion-gen, defaulter-gen), invoked the way
# upstream's hack/update-codegen.sh invokes them. Never hand-edit a
# zz_generated.* file: change the types, run this, commit, export the patch.
#
# Which packages: those with a .go file changed since the "upstream" tag of
# the staged tree (committed or not), plus the packages whose generator tags
# name one of them (a conversion package naming changed external types).
#
# hack/update-generated.sh [TREE]   (default staging/kubernetes)
source "$(dirname "${BASH_SOURCE[0]}")/stage-lib.sh"
cd "${KH_ROOT}"

tree=$(realpath "${1:-${KH_ROOT}/staging/kubernetes}")
gowork=${KH_GOWORK:-${KH_ROOT}/staging/go.work}
tools="${KH_ROOT}/_output/tools"

# Generators from k8s.io/code-generator at the staging version of the pinned
# upstream, installed once into _output/tools.
for gen in deepcopy-gen conversion-gen defaulter-gen; do
  if [ ! -x "${tools}/${gen}" ] || [ "$(cat "${tools}/.${gen}.version" 2>/dev/null)" != "${KUBE_STAGING_VERSION}" ]; then
    GOWORK=off GOBIN="${tools}" go install "k8s.io/code-generator/cmd/${gen}@${KUBE_STAGING_VERSION}"
    echo "${KUBE_STAGING_VERSION}" >"${tools}/.${gen}.version"
  fi
done

# import path of a directory of the tree
pkg_of() {
  case "$1" in
    staging/src/*) echo "${1#staging/src/}" ;;
    *) echo "k8s.io/kubernetes/$1" ;;
  esac
}
# directory of an import path in the tree
dir_of() {
  case "$1" in
    k8s.io/kubernetes/*) echo "${1#k8s.io/kubernetes/}" ;;
    *) echo "staging/src/$1" ;;
  esac
}

mapfile -t changed < <(git -C "${tree}" diff --name-only upstream -- '*.go' |
  grep -v '/zz_generated\.' | xargs -r -n1 dirname | sort -u)
if [ ${#changed[@]} -eq 0 ]; then
  echo "update-generated: no package changed since upstream"
  exit 0
fi
pkgs=()
for d in "${changed[@]}"; do pkgs+=("$(pkg_of "${d}")"); done
# Packages whose tags point at a changed package.
alt=$(printf '%s\n' "${pkgs[@]}" | sed 's/[.]/\\./g' | paste -sd'|')
while read -r f; do
  pkgs+=("$(pkg_of "$(dirname "${f#"${tree}"/}")")")
done < <(grep -rlE --include='*.go' "^// ?\+k8s:(conversion-gen|conversion-gen-external-types|defaulter-gen-input)=(${alt})\$" \
  "${tree}/pkg" "${tree}/cmd" "${tree}/staging/src" 2>/dev/null || true)
mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)

# tagged PATTERN prints the packages among pkgs with a file matching PATTERN.
tagged() {
  local p
  for p in "${pkgs[@]}"; do
    if grep -qlE "$1" "${tree}/$(dir_of "${p}")"/*.go 2>/dev/null; then echo "${p}"; fi
  done
}

header="${tree}/hack/boilerplate/boilerplate.generatego.txt"
run() {
  local gen=$1 out=$2 pattern=$3 p
  shift 3
  mapfile -t targets < <(tagged "${pattern}")
  [ ${#targets[@]} -gt 0 ] || return 0
  echo "update-generated: ${gen} ${targets[*]}"
  for p in "${targets[@]}"; do rm -f "${tree}/$(dir_of "${p}")/${out}"; done
  GOWORK="${gowork}" "${tools}/${gen}" --go-header-file "${header}" --output-file "${out}" "$@" "${targets[@]}"
}

# Upstream runs conversion-gen over every tagged package at once, so it sees
# the hand-written conversions of the packages it depends on (e.g.
# component-base's ClientConnectionConfiguration). Running it on a few
# packages, name those dependencies as peers.
conversion_peers() {
  local targets
  mapfile -t targets < <(tagged '^// *\+k8s:conversion-gen=')
  [ ${#targets[@]} -gt 0 ] || return 0
  GOWORK="${gowork}" go list -deps -f '{{.ImportPath}} {{.Dir}}' "${targets[@]}" |
    while read -r p d; do
      if grep -qlE '^// *\+k8s:conversion-gen=' "${d}"/*.go 2>/dev/null; then
        echo "--extra-peer-dirs=${p}"
      fi
    done
}
mapfile -t peers < <(conversion_peers)

run deepcopy-gen zz_generated.deepcopy.go '\+k8s:deepcopy-gen='
run conversion-gen zz_generated.conversion.go '^// *\+k8s:conversion-gen=' \
  --extra-peer-dirs k8s.io/kubernetes/pkg/apis/core \
  --extra-peer-dirs k8s.io/kubernetes/pkg/apis/core/v1 \
  --extra-peer-dirs k8s.io/api/core/v1 \
  "${peers[@]}"
run defaulter-gen zz_generated.defaults.go '\+k8s:defaulter-gen='
