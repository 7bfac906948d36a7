#!/usr/bin/env bash
# The end-to-end suite (`make e2e`; hack/test.sh runs it too): packs the
# elector, examples and pause images from this tree (test/e2e/cmd/pack, the
# Dockerfiles' own build), brings up a node (hack/e2e/up.sh), runs the
# scenarios in test/e2e against the shipped manifests, and takes the node
# down whatever happens (hack/e2e/down.sh, from a trap).
#
# Where it cannot run (not root, no apt-get for containerd and runc) it says
# so in one line and exits 0; with CI=true that is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
. hack/e2e/lib.sh

GO=${GO:-go}
export GOWORK=off GOFLAGS=

step() { printf '\n== %s\n' "$*" >&2; }

step "e2e: images match their Dockerfiles"
(cd test/e2e && $GO test -count=1 ./image/)

why=$(cannot_run)
if [[ -n $why ]]; then
  if [[ ${CI:-} == true ]]; then
    echo "e2e: FAILED: the end-to-end suite cannot run here: $why (CI=true)"
    exit 1
  fi
  echo "e2e: SKIPPED: the end-to-end suite cannot run here: $why"
  exit 0
fi

dir=$(mktemp -d /tmp/mpsync-e2e.XXXXXX)
down() {
  local rc=$?
  if [[ -d $dir/node ]]; then
    hack/e2e/down.sh "$dir/node" || rc=1
  fi
  # Logs are kept for a failure, and the rest (images, containerd's
  # store) removed with them after a pass.
  if ((rc == 0)); then
    rm -rf "$dir"
  else
    echo "e2e: logs in $dir/node" >&2
  fi
  exit "$rc"
}
trap down EXIT
trap 'exit 130' INT TERM

start=$SECONDS
step "e2e: images"
(cd test/e2e && $GO run ./cmd/pack -root ../.. -out "$dir/images")
step "e2e: node (state and logs in $dir/node)"
hack/e2e/up.sh "$dir/node" "$dir/images"
step "e2e: scenarios"
(cd test/e2e && MPSYNC_E2E_ENV=$dir/node/env $GO test -count=1 -v -timeout 30m ./...)
step "e2e: passed in $((SECONDS - start))s"
