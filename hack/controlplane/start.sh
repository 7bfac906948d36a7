#!/usr/bin/env bash
# Starts a real etcd and kube-apiserver (RBAC on) on 127.0.0.1, in the
# background, with all state, logs and credentials in DIR. Builds them first
# with build.sh if they are not cached yet.
#
# Usage: hack/controlplane/start.sh [--pods] DIR
#   then: set -a; . DIR/env; set +a     and later: hack/controlplane/stop.sh DIR
#
# --pods starts the API server for a cluster with a node that runs Pods
# (hack/e2e): ServiceAccount admission on, --authorization-mode=Node,RBAC,
# NodeRestriction, kubelets reached by host name, and a credential for the
# node "localhost" (node.kubeconfig, MPSYNC_NODE_KUBECONFIG in env). Without
# it, ServiceAccount admission is off (the tests create no Pods).
#
# Writes into DIR:
#   env                  KEY=value lines (sourceable, trivially parseable):
#                        MPSYNC_KUBE_SERVER, MPSYNC_ADMIN_KUBECONFIG,
#                        MPSYNC_ELECTOR_KUBECONFIG, MPSYNC_APISERVER_PID,
#                        MPSYNC_ETCD_PID, MPSYNC_ETCD_ENDPOINT,
#                        MPSYNC_ADMIN_TOKEN, MPSYNC_ELECTOR_TOKEN, MPSYNC_KUBE_CA
#   admin.kubeconfig     user mpsync-admin, group system:masters
#   elector.kubeconfig   user mpsync-elector, no groups but system:authenticated
#   ca.crt               CA that signed the API server's serving certificate
#   etcd.pid, kube-apiserver.pid, etcd.log, kube-apiserver.log
#   etcd-data/, certs/, tokens.csv, sa.key, sa.pub
#
# Environment: MPSYNC_CACHE (see build.sh), MPSYNC_START_TIMEOUT (seconds to
# wait for each of etcd and the API server to be ready; default 120),
# MPSYNC_ETCD_FSYNC (1: etcd syncs its log to disk on every commit, as
# clusters run it; the benchmarks set it. Default 0: --unsafe-no-fsync,
# which the tests use because they measure nothing and a slow disk would
# only slow them down).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
timeout=${MPSYNC_START_TIMEOUT:-120}

fsync_flags=(--unsafe-no-fsync)
[[ ${MPSYNC_ETCD_FSYNC:-0} != 1 ]] || fsync_flags=()

log() { printf 'controlplane/start: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

pods=false
if [[ ${1:-} == --pods ]]; then
  pods=true
  shift
fi
[[ $# -eq 1 && -n $1 ]] || die "usage: $0 [--pods] DIR"
for tool in curl openssl base64 awk; do
  command -v "$tool" >/dev/null || die "$tool is required (Debian: apt-get install -y $tool)"
done

[[ $1 = /* ]] && dir=$1 || dir=$PWD/$1
# Paths go unquoted into env and kubeconfig files: keep them plain.
[[ $dir =~ ^[A-Za-z0-9._/+@:,=-]+$ ]] || die "DIR must not contain spaces or special characters: $dir"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

# alive PID: running and not a zombie.
alive() {
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

for name in etcd kube-apiserver; do
  if [[ -f $dir/$name.pid ]] && alive "$(cat "$dir/$name.pid")"; then
    die "$name is already running from $dir (pid $(cat "$dir/$name.pid")); run stop.sh $dir first"
  fi
done

start_all=$SECONDS
eval "$("$here/build.sh")"
[[ -x ${KUBE_APISERVER_BIN:-} && -x ${ETCD_BIN:-} ]] || die "build.sh did not report binaries"

# tail_log FILE: the end of a log, for error messages.
tail_log() {
  log "---- last lines of $1 ----"
  tail -n 40 "$1" >&2 || true
  log "---- end of $1 ----"
}

# port_in_use PORT: is any local TCP socket (v4 or v6) on PORT?
port_in_use() {
  local hex
  hex=$(printf ':%04X' "$1")
  awk -v p="$hex" 'FNR > 1 && substr($2, length($2) - 4) == p { found = 1 }
    END { exit !found }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# free_port: a port below the Linux ephemeral range with no socket on it.
free_port() {
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((10000 + (RANDOM * 32768 + RANDOM) % 22000))
    port_in_use "$p" || { echo "$p"; return; }
  done
  die "no free port found"
}

# spawn LOG CMD...: run CMD detached (own session, no stdin), print its pid.
spawn() {
  local logfile=$1
  shift
  setsid "$@" </dev/null >"$logfile" 2>&1 &
  echo $!
}

# wait_ready NAME PID LOG CHECK...: poll CHECK until it succeeds; returns 2
# if the process died with "address already in use", 1 on other failure.
wait_ready() {
  local name=$1 pid=$2 logfile=$3 deadline=$((SECONDS + timeout))
  shift 3
  while ! "$@" >/dev/null 2>&1; do
    if ! alive "$pid"; then
      grep -q 'address already in use' "$logfile" && return 2
      log "$name (pid $pid) exited before becoming ready"
      tail_log "$logfile"
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log "$name (pid $pid) not ready after ${timeout}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      tail_log "$logfile"
      return 1
    fi
    sleep 0.2
  done
}

# ---------------------------------------------------------------- etcd
etcd_healthy() {
  curl -fsS --max-time 2 "$etcd_endpoint/health" | grep -q '"health":"true"'
}

# Every start is a fresh cluster: no data or env left from an earlier run.
rm -rf "$dir/etcd-data" "$dir/env"
mkdir -m 700 "$dir/etcd-data"
for attempt in 1 2 3; do
  client_port=$(free_port)
  peer_port=$(free_port)
  [[ $client_port != "$peer_port" ]] || continue
  etcd_endpoint=http://127.0.0.1:$client_port
  peer_url=http://127.0.0.1:$peer_port
  log "starting etcd on $etcd_endpoint (attempt $attempt)"
  etcd_pid=$(spawn "$dir/etcd.log" "$ETCD_BIN" \
    --name=mpsync \
    --data-dir="$dir/etcd-data" \
    --listen-client-urls="$etcd_endpoint" \
    --advertise-client-urls="$etcd_endpoint" \
    --listen-peer-urls="$peer_url" \
    --initial-advertise-peer-urls="$peer_url" \
    --initial-cluster="mpsync=$peer_url" \
    --initial-cluster-state=new \
    "${fsync_flags[@]}" \
    --log-level=warn)
  echo "$etcd_pid" >"$dir/etcd.pid"
  rc=0
  wait_ready etcd "$etcd_pid" "$dir/etcd.log" etcd_healthy || rc=$?
  ((rc == 0)) && break
  ((rc == 2 && attempt < 3)) || die "etcd failed to start (log: $dir/etcd.log)"
  log "etcd port was taken; retrying with other ports"
  rm -rf "$dir/etcd-data" && mkdir -m 700 "$dir/etcd-data"
done
log "etcd ready (pid $etcd_pid) after $((SECONDS - start_all))s"

# If anything below fails, do not leave etcd behind.
cleanup_etcd() { kill -TERM "$etcd_pid" 2>/dev/null || true; }
trap cleanup_etcd EXIT

# ------------------------------------------------- credentials and keys
token() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
admin_token=$(token)
elector_token=$(token)
node_token=$(token)
umask 077
cat >"$dir/tokens.csv" <<EOF
$admin_token,mpsync-admin,mpsync-admin,"system:masters"
$elector_token,mpsync-elector,mpsync-elector
EOF
# The flags that differ between the two modes (see the usage above).
if $pods; then
  echo "$node_token,system:node:localhost,system:node:localhost,\"system:nodes\"" >>"$dir/tokens.csv"
  mode_flags=(--authorization-mode=Node,RBAC
    --enable-admission-plugins=NodeRestriction
    --kubelet-preferred-address-types=Hostname)
else
  mode_flags=(--authorization-mode=RBAC --disable-admission-plugins=ServiceAccount)
fi
if [[ ! -f $dir/sa.key ]]; then
  openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null || die "openssl genrsa failed"
fi
openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null || die "openssl rsa -pubout failed"
mkdir -p "$dir/certs"

# ---------------------------------------------------------- kube-apiserver
apiserver_ready() {
  curl -fsS --max-time 2 --cacert "$dir/certs/apiserver.crt" \
    -H "Authorization: Bearer $admin_token" "$server/readyz" | grep -qx ok
}

for attempt in 1 2 3; do
  secure_port=$(free_port)
  server=https://127.0.0.1:$secure_port
  log "starting kube-apiserver on $server (attempt $attempt)"
  # A fresh self-signed serving certificate each time (it names no port,
  # but keep it from a previous run from confusing anyone).
  rm -f "$dir/certs/apiserver.crt" "$dir/certs/apiserver.key"
  apiserver_pid=$(spawn "$dir/kube-apiserver.log" "$KUBE_APISERVER_BIN" \
    --etcd-servers="$etcd_endpoint" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="$secure_port" \
    --endpoint-reconciler-type=none \
    --cert-dir="$dir/certs" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$dir/sa.pub" \
    --service-account-signing-key-file="$dir/sa.key" \
    --token-auth-file="$dir/tokens.csv" \
    --service-cluster-ip-range=10.0.0.0/24 \
    "${mode_flags[@]}" \
    --profiling=false)
  echo "$apiserver_pid" >"$dir/kube-apiserver.pid"
  rc=0
  wait_ready kube-apiserver "$apiserver_pid" "$dir/kube-apiserver.log" apiserver_ready || rc=$?
  ((rc == 0)) && break
  ((rc == 2 && attempt < 3)) || die "kube-apiserver failed to start (log: $dir/kube-apiserver.log)"
  log "kube-apiserver port was taken; retrying with another port"
done
log "kube-apiserver ready (pid $apiserver_pid) after $((SECONDS - start_all))s"

# The self-signed serving certificate file holds the leaf and the CA that
# signed it; trust the CA (the last certificate in the file).
awk '/-----BEGIN CERTIFICATE-----/ { buf = "" } { buf = buf $0 "\n" }
  /-----END CERTIFICATE-----/ { last = buf } END { printf "%s", last }' \
  "$dir/certs/apiserver.crt" >"$dir/ca.crt"
ca_data=$(base64 -w0 <"$dir/ca.crt")

# kubeconfig FILE USER TOKEN
kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mpsync
  cluster:
    server: $server
    certificate-authority-data: $ca_data
users:
- name: $2
  user:
    token: $3
contexts:
- name: $2
  context:
    cluster: mpsync
    user: $2
current-context: $2
EOF
}
kubeconfig "$dir/admin.kubeconfig" mpsync-admin "$admin_token"
kubeconfig "$dir/elector.kubeconfig" mpsync-elector "$elector_token"
if $pods; then
  kubeconfig "$dir/node.kubeconfig" system:node:localhost "$node_token"
fi

# Check that the CA and the elector's token work, as client-go will use them.
curl -fsS --max-time 5 --cacert "$dir/ca.crt" -H "Authorization: Bearer $elector_token" \
  "$server/version" >/dev/null || die "cannot reach $server/version with ca.crt and the elector token"

cat >"$dir/env" <<EOF
MPSYNC_KUBE_SERVER=$server
MPSYNC_ADMIN_KUBECONFIG=$dir/admin.kubeconfig
MPSYNC_ELECTOR_KUBECONFIG=$dir/elector.kubeconfig
MPSYNC_APISERVER_PID=$apiserver_pid
MPSYNC_ETCD_PID=$etcd_pid
MPSYNC_ETCD_ENDPOINT=$etcd_endpoint
MPSYNC_ADMIN_TOKEN=$admin_token
MPSYNC_ELECTOR_TOKEN=$elector_token
MPSYNC_KUBE_CA=$dir/ca.crt
EOF
if $pods; then
  echo "MPSYNC_NODE_KUBECONFIG=$dir/node.kubeconfig" >>"$dir/env"
fi
trap - EXIT
log "control plane up in $((SECONDS - start_all))s: $server (env: $dir/env)"
