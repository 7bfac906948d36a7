#!/usr/bin/env bash
# Runs every test: builds and starts a real kube-apiserver and etcd on
# loopback for the Kubernetes tests, runs the Go tests (race detector on),
# runs each fuzz target for a short fixed time, and stops the control plane
# whatever happens. `make test` runs this after lint and the builds.
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
FUZZTIME=${FUZZTIME:-15s}
CP_DIR=${CP_DIR:-$(mktemp -d /tmp/mpsync-cp.XXXXXX)}

step() { printf '\n== %s\n' "$*" >&2; }

# need_runtimes installs, from Debian, the runtimes that run the
# Metaparticle clients' test programs (test/kube/testdata/legacy) where
# they are missing: node, python3, a JDK, Mono with System.Net.Http.
need_runtimes() {
  local pkgs=()
  command -v node >/dev/null || pkgs+=(nodejs)
  command -v python3 >/dev/null || pkgs+=(python3)
  command -v javac >/dev/null || pkgs+=(default-jdk-headless)
  command -v mcs >/dev/null || pkgs+=(mono-mcs)
  command -v mono >/dev/null || pkgs+=(mono-runtime)
  [ -e /usr/lib/mono/4.5/System.Net.Http.dll ] || pkgs+=(libmono-system-net-http4.0-cil)
  [ ${#pkgs[@]} -eq 0 ] && return
  echo "installing ${pkgs[*]} (apt-get)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >&2 ||
    { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >&2; }
}

step "the Metaparticle clients' runtimes"
need_runtimes
step "control plane: build (cached after the first run)"
hack/controlplane/build.sh
step "control plane: start in $CP_DIR"
trap 'hack/controlplane/stop.sh "$CP_DIR" || true' EXIT
hack/controlplane/start.sh "$CP_DIR"
# The Kubernetes tests read MPSYNC_CONTROLPLANE; with it set, they fail
# rather than skip when something is missing.
export MPSYNC_CONTROLPLANE="$CP_DIR/env"
export MPSYNC_ELECTOR_BIN="$PWD/bin/elector"

# Every module is tested in its own directory with GOWORK=off, as CI and a
# user's build see it; test/e2e is hack/e2e.sh's, below.
modules=$(git ls-files '*go.mod' | xargs -n1 dirname | grep -v '^hack/' | grep -vx 'test/e2e')
export GOWORK=off
for m in $modules; do
  step "go test: module $m"
  (cd "$m" && $GO test -race -count=1 -timeout 30m ./...)
done

step "fuzz ($FUZZTIME each)"
# Each fuzz target runs alone (go test -fuzz takes one package, one target).
for m in $modules; do
  (cd "$m" && $GO list -f '{{.ImportPath}} {{.Dir}}' ./...) | while read -r pkg dir; do
    for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
      step "fuzz $pkg $target"
      (cd "$m" && $GO test -run='^$' -fuzz="^${target}\$" -fuzztime="$FUZZTIME" "$pkg")
    done
  done
done
step "end-to-end: the shipped manifests on a real node (hack/e2e.sh)"
hack/e2e.sh

step "all tests passed"
