#!/usr/bin/env bash
# The benchmarks that `make bench` runs, after `make elector examples` has
# built bin/elector. It builds the benchmark programs (bench/cmd/...) into
# bin/bench/, builds (cached after the first time) and starts a real
# kube-apiserver and etcd on loopback, and runs bin/bench/bench, which
# creates a namespace, applies examples/kubernetes/rbac.yaml in it, measures
# client-go's leader election, mpsync's through electors and mpsync's
# in-process (kube.NewTransport) side by side, prints the table
# and writes it into docs/BENCHMARKS.md. The control plane is stopped
# whatever happens. Takes about 37 minutes on 2 cores; not part of
# `make test`.
#
# Extra arguments go to bin/bench/bench (e.g. `hack/bench.sh -trials 3
# -window 20s -out=` for a quick look; `bin/bench/bench -help` lists them).
# BENCH_FLAGS, split on spaces, is put before them: `BENCH_FLAGS='-trials 3'
# make bench`.
# Environment: GO (default go), CP_DIR (the control plane's directory,
# default a fresh temporary one), MPSYNC_CACHE (see hack/controlplane).
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
CP_DIR=${CP_DIR:-$(mktemp -d /tmp/mpsync-bench-cp.XXXXXX)}
START=$SECONDS

step() { printf '\n== %s\n' "$*" >&2; }

if [[ ! -x bin/elector ]]; then
	echo "bench: bin/elector is missing; run \`make bench\` (it builds it first)" >&2
	exit 1
fi

# What produced the numbers, for docs/BENCHMARKS.md.
if [[ -n ${MAKELEVEL:-} ]]; then
	COMMAND="make bench"
else
	COMMAND="hack/bench.sh${*:+ $*}"
fi
# shellcheck disable=SC2206 # BENCH_FLAGS is split on purpose
FLAGS=(${BENCH_FLAGS:-})
[[ -z ${BENCH_FLAGS:-} ]] || COMMAND="BENCH_FLAGS='$BENCH_FLAGS' $COMMAND"

step "build the benchmark programs into bin/bench/"
(cd bench && GOWORK=off $GO build -o ../bin/bench/ ./cmd/bench ./cmd/clientgo-candidate ./cmd/mpsync-candidate ./cmd/inproc-candidate ./cmd/mpsync-locker)

step "control plane: build (cached after the first run)"
hack/controlplane/build.sh >/dev/null
step "control plane: start in $CP_DIR (etcd with fsync on, as clusters run it)"
trap 'hack/controlplane/stop.sh "$CP_DIR" || true' EXIT
MPSYNC_ETCD_FSYNC=1 hack/controlplane/start.sh "$CP_DIR"

step "benchmarks"
bin/bench/bench -controlplane "$CP_DIR/env" -elector bin/elector -bin bin/bench \
	-command "$COMMAND" ${FLAGS[@]+"${FLAGS[@]}"} "$@"
step "bench done in $((SECONDS - START))s"
