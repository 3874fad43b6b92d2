#!/usr/bin/env bash
# Builds the kube-proxy container image (Dockerfile) with the first container
# engine found that answers: docker, podman or nerdctl (IMAGE_ENGINE to
# choose). Tag: IMAGE (default kube-haproxy/kube-proxy:<version of the build>).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "${KH_ROOT}"

engine=${IMAGE_ENGINE:-}
if [ -z "${engine}" ]; then
  for e in docker podman nerdctl; do
    if command -v "${e}" >/dev/null 2>&1 && timeout 20 "${e}" info >/dev/null 2>&1; then
      engine=${e}
      break
    fi
  done
fi
if [ -z "${engine}" ]; then
  echo "image: no container engine here (docker, podman or nerdctl, with a running daemon where it needs one);" >&2
  echo "image: nothing built. _output/bin/kube-proxy and the Dockerfile are ready for a machine that has one." >&2
  exit 1
fi

"${KH_ROOT}/hack/build.sh" kube-proxy
version=$("${KH_ROOT}/_output/bin/kube-proxy" --version | awk '{print $2}')
image=${IMAGE:-kube-haproxy/kube-proxy:${version}}
echo "image: ${engine} build -t ${image}"
"${engine}" build -t "${image}" -f Dockerfile .
