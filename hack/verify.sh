#!/usr/bin/env bash
# Static checks: gofmt, go vet, staticcheck (run at a pinned release through
# `go run`, so nothing is installed), and that patches/series applies to the
# pinned upstream with its generated files current.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "${KH_ROOT}"

# A release of staticcheck that understands Go 1.26.
STATICCHECK_VERSION=v0.8.2

failed=0
echo "== gofmt"
unformatted=$(git ls-files -z '*.go' | xargs -0 -r gofmt -l)
if [ -n "${unformatted}" ]; then
  echo "gofmt: these files need gofmt -w:" >&2
  echo "${unformatted}" >&2
  failed=1
fi

echo "== go vet"
GOWORK=off go vet ./... || failed=1

echo "== staticcheck ${STATICCHECK_VERSION}"
GOWORK=off go run "honnef.co/go/tools/cmd/staticcheck@${STATICCHECK_VERSION}" ./... || failed=1

echo "== patch series"
hack/verify-patches.sh || failed=1

exit "${failed}"
