#!/usr/bin/env bash
# Builds the patched binaries into _output/bin:
#   kube-proxy      upstream's cmd/kube-proxy from staging/kubernetes (the
#                   pinned release with patches/series applied), which imports
#                   this repository's proxier;
#   kube-apiserver  upstream's cmd/kube-apiserver from the same tree;
#   etcd            go.etcd.io/etcd/server/v3 at the version upstream pins.
#
#   hack/build.sh [kube-proxy|kube-apiserver|etcd ...]   (default: all)
#
# Stages first (a no-op when staging/ is current). Go's build cache makes a
# rebuild of unchanged sources a link at most, and no work when the binary is
# current; -trimpath keeps that cache valid across checkouts in other places.
#
# Version: kube-proxy --version prints <pinned release>-haproxy.<N>, N the
# number of commits on the first-parent history of this checkout (main only
# moves forward, so N grows with every landed change); gitCommit is that
# commit, gitTreeState "dirty" when the work tree has changes, buildDate the
# commit's date (so a rebuild of the same commit is byte-identical).
source "$(dirname "${BASH_SOURCE[0]}")/stage-lib.sh"
cd "${KH_ROOT}"

"${KH_ROOT}/hack/stage.sh"

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(kube-proxy kube-apiserver etcd)

kh::version_ldflags() {
  local n commit tree_state date major minor
  if git -C "${KH_ROOT}" rev-parse --verify -q HEAD >/dev/null; then
    n=$(git -C "${KH_ROOT}" rev-list --count --first-parent HEAD)
    commit=$(git -C "${KH_ROOT}" rev-parse HEAD)
    date=$(TZ=UTC git -C "${KH_ROOT}" show -s --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ HEAD)
    tree_state=clean
    if [ -n "$(git -C "${KH_ROOT}" status --porcelain --untracked-files=no)" ]; then tree_state=dirty; fi
  else
    n=0 commit=unknown tree_state=dirty date=1970-01-01T00:00:00Z
  fi
  major=${KUBE_VERSION#v}; major=${major%%.*}
  minor=${KUBE_VERSION#v*.}; minor=${minor%%.*}
  local pkg flags=()
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=("-X ${pkg}.gitVersion=${KUBE_VERSION}-haproxy.${n}"
      "-X ${pkg}.gitMajor=${major}" "-X ${pkg}.gitMinor=${minor}"
      "-X ${pkg}.gitCommit=${commit}" "-X ${pkg}.gitTreeState=${tree_state}"
      "-X ${pkg}.buildDate=${date}")
  done
  echo "${flags[*]}"
}

ldflags=$(kh::version_ldflags)
mkdir -p "${KH_ROOT}/_output/bin"
export GOWORK="${KH_ROOT}/staging/go.work"
for t in "${targets[@]}"; do
  case "${t}" in
    kube-proxy | kube-apiserver) pkg="k8s.io/kubernetes/cmd/${t}" flags=(-ldflags "${ldflags}") ;;
    etcd)
      # etcd's main package needs modules (grpc-middleware v1, groupcache)
      # that no package of the workspace imports, so the workspace cannot
      # build it: build it in a throwaway module that requires the etcd
      # version upstream's go.mod pins, letting go resolve the rest.
      etcd_version=$(sed -n 's#^[[:space:]]*go\.etcd\.io/etcd/server/v3 \(v[^[:space:]]*\).*#\1#p' \
        "$(kh::module_dir k8s.io/kubernetes "${KUBE_VERSION}")/go.mod")
      echo "build: _output/bin/etcd <- go.etcd.io/etcd/server/v3@${etcd_version}"
      etcd_mod=$(mktemp -d "${TMPDIR:-/tmp}/kh-etcd-build.XXXXXX")
      (
        cd "${etcd_mod}"
        export GOWORK=off GOFLAGS=-mod=mod
        go mod init kh-etcd-build >/dev/null 2>&1
        go mod edit -require="go.etcd.io/etcd/server/v3@${etcd_version}"
        go build -trimpath -buildvcs=false -o "${KH_ROOT}/_output/bin/etcd" go.etcd.io/etcd/server/v3
      ) || { rm -rf "${etcd_mod}"; exit 1; }
      rm -rf "${etcd_mod}"
      continue
      ;;
    *) echo "build: unknown binary ${t} (kube-proxy, kube-apiserver, etcd)" >&2; exit 2 ;;
  esac
  echo "build: _output/bin/${t} <- ${pkg}"
  go build -trimpath -buildvcs=false "${flags[@]}" -o "${KH_ROOT}/_output/bin/${t}" "${pkg}"
done
