#!/usr/bin/env bash
# Builds the patched binaries into _output/bin:
#   kube-proxy      upstream's cmd/kube-proxy from staging/kubernetes (the
#                   pinned release with patches/series applied), which imports
#                   this repository's proxier;
#   kube-apiserver  upstream's cmd/kube-apiserver from the same tree;
#   etcd            go.etcd.io/etcd/server/v3 at the version upstream pins.
#   lb-controller   ./cmd/lb-controller: LoadBalancer ingress IPs for scopes
#                   cluster and external (package lbcontroller);
#   keepalived-config  ./cmd/keepalived-config: the VRRP pair's configuration.
#
#   hack/build.sh [kube-proxy|kube-apiserver|etcd|lb-controller|keepalived-config ...]   (default: all)
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
[ ${#targets[@]} -gt 0 ] || targets=(kube-proxy kube-apiserver etcd lb-controller keepalived-config)

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

# kh::build_etcd builds etcd at the version upstream's go.mod pins, with
# etcd's own dependency versions: in a module of its own under _output whose
# only requirement is go.etcd.io/etcd/server/v3 (its go.mod has relative
# replaces, so `go install module@version` cannot build it).
kh::build_etcd() {
  local version dir
  version=$(sed -n 's#^[[:space:]]*go\.etcd\.io/etcd/server/v3 \(v[^ ]*\).*#\1#p' "${KH_ROOT}/staging/kubernetes/go.mod")
  if [ -z "${version}" ]; then
    echo "build: upstream's go.mod does not pin go.etcd.io/etcd/server/v3" >&2
    return 1
  fi
  dir="${KH_ROOT}/_output/etcd-${version}"
  if [ ! -f "${dir}/go.sum" ]; then
    rm -rf "${dir}"
    mkdir -p "${dir}"
    printf 'module kube-haproxy.io/build/etcd\n\ngo 1.26.0\n' >"${dir}/go.mod"
    (cd "${dir}" && GOWORK=off GOFLAGS=-mod=mod go get "go.etcd.io/etcd/server/v3@${version}")
  fi
  echo "build: _output/bin/etcd <- go.etcd.io/etcd/server/v3@${version}"
  (cd "${dir}" && GOWORK=off go build -trimpath -buildvcs=false -o "${KH_ROOT}/_output/bin/etcd" go.etcd.io/etcd/server/v3)
}

ldflags=$(kh::version_ldflags)
mkdir -p "${KH_ROOT}/_output/bin"
for t in "${targets[@]}"; do
  case "${t}" in
    kube-proxy | kube-apiserver)
      echo "build: _output/bin/${t} <- k8s.io/kubernetes/cmd/${t}"
      GOWORK="${KH_ROOT}/staging/go.work" go build -trimpath -buildvcs=false -ldflags "${ldflags}" \
        -o "${KH_ROOT}/_output/bin/${t}" "k8s.io/kubernetes/cmd/${t}"
      ;;
    etcd) kh::build_etcd ;;
    lb-controller | keepalived-config)
      echo "build: _output/bin/${t} <- ./cmd/${t}"
      go build -trimpath -buildvcs=false -o "${KH_ROOT}/_output/bin/${t}" "./cmd/${t}"
      ;;
    *) echo "build: unknown binary ${t} (kube-proxy, kube-apiserver, etcd, lb-controller, keepalived-config)" >&2; exit 2 ;;
  esac
done
