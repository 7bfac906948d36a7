#!/usr/bin/env bash
# The long fault-injection soak, for outside CI: runs the fault harness of
# test/faults (TestFaults) for DURATION instead of its bounded round, then
# prints what it checked: acquisitions, faults injected by kind, violations,
# and the longest time with no holder after a fault. docs/RELIABILITY.md
# describes the harness and keeps the summary of the last long soak.
#
# Usage: hack/soak.sh DURATION        (Go syntax: 30m, 2h, 1h30m)
#
# It builds the elector (make elector) and the control plane
# (hack/controlplane/build.sh, cached after the first time). The harness
# starts a kube-apiserver and etcd of its own with hack/controlplane/start.sh
# and stops them at the end; $MPSYNC_CONTROLPLANE only tells it that a
# control plane can be started (make test sets it to its shared one's env
# file). Logs and histories are kept only if the soak fails (the test log
# names the directory), or with MPSYNC_FAULTS_KEEP=1.
#
# Exit status: that of go test (0: no violation).
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
die() { printf 'soak: %s\n' "$*" >&2; exit 2; }

[[ $# -eq 1 ]] || die "usage: $0 DURATION (such as 30m)"
duration=$1
[[ $duration =~ ^(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?$ && -n $duration ]] ||
  die "DURATION must look like 30m, 2h or 1h30m, not $duration"
secs=$(( ${BASH_REMATCH[2]:-0} * 3600 + ${BASH_REMATCH[4]:-0} * 60 + ${BASH_REMATCH[6]:-0} ))
((secs > 0)) || die "DURATION must be positive"
# The round runs DURATION, then a few seconds more; allow for a slow start
# and the final check.
timeout=$((secs + 900))s

make elector >&2
hack/controlplane/build.sh >/dev/null

summary=$(mktemp /tmp/mpsync-soak-summary.XXXXXX)
trap 'rm -f "$summary"' EXIT
export MPSYNC_CONTROLPLANE=${MPSYNC_CONTROLPLANE:-started-by-the-harness}
export MPSYNC_ELECTOR_BIN=$PWD/bin/elector
export MPSYNC_SOAK=$duration
export MPSYNC_SOAK_SUMMARY=$summary

printf 'soak: %s of faults, started %s\n' "$duration" "$(date -u +%FT%TZ)" >&2
status=0
(cd test && GOWORK=off $GO test -count=1 -run '^TestFaults$' -timeout "$timeout" -v ./faults/) >&2 || status=$?
printf '\n== soak summary (hack/soak.sh %s, finished %s)\n' "$duration" "$(date -u +%FT%TZ)"
if [[ -s $summary ]]; then
  cat "$summary"
else
  echo "no summary: the soak failed before checking its histories (see the test output above)"
fi
exit "$status"
