#!/usr/bin/env bash
# Builds a pinned kube-apiserver and etcd from the Go module proxy into
#   ${MPSYNC_CACHE:-$HOME/.cache/mpsync}/bin/kube-apiserver-<version>
#   ${MPSYNC_CACHE:-$HOME/.cache/mpsync}/bin/etcd-<version>
# and with --node also the parts of a node, for the end-to-end suite
# (hack/e2e): kubelet, kubectl, kube-controller-manager and kube-scheduler
# of the same version, from the scratch module node/go.mod.
# A binary that is already there is not rebuilt, so a warm run takes well
# under a second. The pins live in the scratch modules apiserver/go.mod and
# etcd/go.mod beside this script (go.sum pins the hashes).
#
# Progress goes to stderr. stdout gets two shell-evaluable lines:
#   KUBE_APISERVER_BIN=/path
#   ETCD_BIN=/path
# and with --node four more: KUBELET_BIN, KUBECTL_BIN,
# KUBE_CONTROLLER_MANAGER_BIN, KUBE_SCHEDULER_BIN.
# Usage: hack/controlplane/build.sh [--node]
set -euo pipefail

node=false
case ${1:-} in
'') ;;
--node) node=true ;;
*) printf 'usage: %s [--node]\n' "$0" >&2; exit 2 ;;
esac

readonly KUBE_VERSION=v1.37.2
readonly ETCD_VERSION=v3.6.16

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${MPSYNC_CACHE:-$HOME/.cache/mpsync}
bindir=$cache/bin
goos=$(go env GOOS)
goarch=$(go env GOARCH)
apiserver_bin=$bindir/kube-apiserver-$KUBE_VERSION-$goos-$goarch
etcd_bin=$bindir/etcd-$ETCD_VERSION-$goos-$goarch

log() { printf 'controlplane/build: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v go >/dev/null || die "go is not on PATH"

# pinned GO_MOD MODULE VERSION: does GO_MOD require MODULE at VERSION?
pinned() {
  grep -Eq "^[[:space:]]*(require[[:space:]]+)?${2//./\\.} ${3//./\\.}([[:space:]]|\$)" "$1"
}

# The versions above must be the ones the scratch modules pin.
pinned "$here/apiserver/go.mod" k8s.io/kubernetes "$KUBE_VERSION" ||
  die "apiserver/go.mod does not require k8s.io/kubernetes $KUBE_VERSION"
pinned "$here/etcd/go.mod" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" ||
  die "etcd/go.mod does not require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
pinned "$here/node/go.mod" k8s.io/kubernetes "$KUBE_VERSION" ||
  die "node/go.mod does not require k8s.io/kubernetes $KUBE_VERSION"

mkdir -p "$bindir"

# Serialise concurrent runs (e.g. several test processes on a fresh machine).
if command -v flock >/dev/null; then
  exec 9>"$bindir/.build.lock"
  flock 9
fi

# build MODULE_DIR PACKAGE OUTPUT LDFLAGS
build() {
  local moddir=$1 pkg=$2 out=$3 ldflags=$4 start tmp
  if [[ -x $out ]]; then
    log "cached: $out"
    return
  fi
  log "building $pkg -> $out (cold: kube-apiserver and kubelet take minutes each)"
  start=$SECONDS
  tmp=$out.tmp.$$
  # Own module: no workspace, no stray GOFLAGS, go.mod/go.sum must already
  # be complete (-mod=readonly) so the pins cannot drift silently.
  (
    cd "$moddir"
    GOWORK=off GOFLAGS='' CGO_ENABLED=0 go build -mod=readonly -trimpath \
      -buildvcs=false -ldflags "-s -w $ldflags" -o "$tmp" "$pkg"
  ) || { rm -f "$tmp"; die "go build $pkg failed"; }
  mv -f "$tmp" "$out"
  log "built $out in $((SECONDS - start))s"
}

kv=k8s.io/component-base/version
minor=${KUBE_VERSION#v1.}
minor=${minor%%.*}
kube_ldflags="-X $kv.gitVersion=$KUBE_VERSION -X $kv.gitMajor=1 -X $kv.gitMinor=$minor -X $kv.gitTreeState=clean"
build "$here/apiserver" k8s.io/kubernetes/cmd/kube-apiserver "$apiserver_bin" "$kube_ldflags"
build "$here/etcd" go.etcd.io/etcd/server/v3 "$etcd_bin" \
  "-X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION"

printf 'KUBE_APISERVER_BIN=%q\n' "$apiserver_bin"
printf 'ETCD_BIN=%q\n' "$etcd_bin"

$node || exit 0
# VAR=command pairs, each built from node/go.mod into the cache.
for pair in KUBELET_BIN=kubelet KUBECTL_BIN=kubectl \
  KUBE_CONTROLLER_MANAGER_BIN=kube-controller-manager KUBE_SCHEDULER_BIN=kube-scheduler; do
  cmd=${pair#*=}
  out=$bindir/$cmd-$KUBE_VERSION-$goos-$goarch
  build "$here/node" "k8s.io/kubernetes/cmd/$cmd" "$out" "$kube_ldflags"
  printf '%s=%q\n' "${pair%%=*}" "$out"
done
