#!/usr/bin/env bash
# Regenerates, in staging/kubernetes, the generated files of every package the
# patches change, with upstream's own generators invoked the way upstream's
# hack/update-codegen.sh invokes them: deepcopy-gen, conversion-gen and
# defaulter-gen at the pinned code-generator release, and openapi-gen (the
# OpenAPI definitions in pkg/generated/openapi, the OpenAPIModelName methods
# in zz_generated.model_name.go, the known API rule violations in
# api/api-rules/violation_exceptions.list) at the kube-openapi release
# upstream's go.mod pins. Never hand-edit a generated file: change the types,
# run this, commit, export the patch.
#
# Which packages: those with a .go file changed since the "upstream" tag of
# the staged tree (committed or not), plus the packages whose generator tags
# name one of them (a conversion package naming changed external types).
# openapi-gen runs when one of them is tagged +k8s:openapi-gen or
# +k8s:openapi-model-package, over every tagged package of the release at
# once, as upstream does: pkg/generated/openapi is one file for all of them.
# The output says which generators ran on which packages, and which packages
# openapi-gen was considered for when none of them is tagged.
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

# openapi-gen, built from the workspace: at the kube-openapi (and gengo)
# release the staged tree's go.mod pins, as upstream's hack/update-codegen.sh
# builds it.
openapi_tagged=$(tagged '^// *\+k8s:openapi-(gen=true|model-package=)' | paste -sd' ')
if [ -z "${openapi_tagged}" ]; then
  echo "update-generated: openapi-gen not needed: none of ${pkgs[*]} is tagged +k8s:openapi-gen=true or +k8s:openapi-model-package"
  exit 0
fi

# openapi_tag_dirs DIR prints the directories under DIR (relative, "." for
# DIR itself) that upstream's hack/update-codegen.sh hands openapi-gen: a .go
# file with a +k8s: tag that mentions +k8s:openapi, outside vendor/,
# testdata/ and _codegenignore/.
openapi_tag_dirs() {
  (cd "$1" && { grep -rlE --include='*.go' --exclude-dir=vendor --exclude-dir=testdata \
    --exclude-dir=_codegenignore --exclude-dir=_output '^// *\+k8s:' . || true; } |
    xargs -r grep -l '+k8s:openapi' | xargs -r -n1 dirname | sed 's#^\./##' | sort -u)
}

# openapi_pkgs prints "IMPORT-PATH DIR" of every package openapi-gen reads:
# those of the tree, and those of the staging modules other than
# code-generator and the samples that the tree's build list holds (the
# others, e.g. sample-cli-plugin, cannot be loaded beside it, and upstream's
# own output names none of them). Staging modules the patches do not touch
# are not in the tree: their copies in the module cache are read.
openapi_pkgs() {
  local staging mod dir base
  while read -r dir; do
    echo "$(pkg_of "${dir}") ${tree}/${dir}"
  done < <(openapi_tag_dirs "${tree}")
  staging=$(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*#\1#p' "${tree}/go.mod")
  while read -r mod; do
    case "${mod}" in
      k8s.io/code-generator | k8s.io/sample-apiserver | k8s.io/sample-controller) continue ;;
    esac
    if ! grep -qx "${mod}" <<<"${staging}" || [ -d "${tree}/staging/src/${mod}" ]; then continue; fi
    base=$(kh::module_dir "${mod}" "${KUBE_STAGING_VERSION}") || return 1
    while read -r dir; do
      if [ "${dir}" = . ]; then echo "${mod} ${base}"; else echo "${mod}/${dir} ${base}/${dir}"; fi
    done < <(openapi_tag_dirs "${base}")
  done < <(GOWORK="${gowork}" go list -m -f '{{.Path}}' all)
}

GOWORK="${gowork}" go build -o "${tools}/openapi-gen" k8s.io/kube-openapi/cmd/openapi-gen
openapi_pkgs=$(openapi_pkgs | sort)
mapfile -t openapi_pkgs <<<"${openapi_pkgs}"
readonly_args=()
for line in "${openapi_pkgs[@]}"; do
  case "${line#* }" in
    "${tree}"/*) ;;
    *) readonly_args+=(--readonly-pkg "${line%% *}") ;;
  esac
done
echo "update-generated: openapi-gen for ${openapi_tagged}: all ${#openapi_pkgs[@]} tagged packages of the release ($((${#readonly_args[@]} / 2)) of them outside the tree, read-only)"
rm -f "${tree}/pkg/generated/openapi/zz_generated.openapi.go"
# The report of API rule violations is written to the list of known ones, as
# upstream's UPDATE_API_KNOWN_VIOLATIONS=true does: the patch shows any new one.
GOWORK="${gowork}" "${tools}/openapi-gen" \
  --go-header-file "${header}" \
  --output-file zz_generated.openapi.go \
  --output-dir "${tree}/pkg/generated/openapi" \
  --output-pkg k8s.io/kubernetes/pkg/generated/openapi \
  --report-filename "${tree}/api/api-rules/violation_exceptions.list" \
  --output-model-name-file zz_generated.model_name.go \
  "${readonly_args[@]}" \
  "${openapi_pkgs[@]%% *}"
