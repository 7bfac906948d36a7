#!/usr/bin/env bash
# Brings up a single-node Kubernetes cluster that runs real Pods, all of it
# on this machine and all of its state in DIR: etcd and kube-apiserver
# (hack/controlplane/start.sh --pods), kube-controller-manager,
# kube-scheduler, containerd + runc (Debian's, installed if missing) and a
# kubelet for the node "localhost"; then imports the images in IMAGES (the
# tarballs test/e2e/cmd/pack wrote) into containerd. hack/e2e/down.sh DIR
# takes all of it down again; run it whatever happens (a trap), also after
# a failed up.sh.
#
# Usage: hack/e2e/up.sh DIR IMAGES
#   then: set -a; . DIR/env; set +a    (MPSYNC_E2E_KUBECONFIG, ...)
#
# The Pods reach the API server the way in-cluster clients do: at the
# `kubernetes` Service's address (10.0.0.1:443, the first address of
# start.sh's service range). With no kube-proxy here, that address is put
# on lo and socat forwards it to the API server's loopback
# port.
#
# Requires root (containerd, runc, mounts, a bridge). Environment:
# MPSYNC_CACHE (see hack/controlplane/build.sh), MPSYNC_START_TIMEOUT
# (seconds to wait for each part; default 120).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"
timeout=${MPSYNC_START_TIMEOUT:-120}

[[ $# -eq 2 && -d $2 ]] || die "usage: $0 DIR IMAGES"
mkdir -p "$1"
dir=$(cd "$1" && pwd)
images=$(cd "$2" && pwd)
# The sandbox image: the one pack named .../pause:TAG.
pause_image=$(awk '$2 ~ /\/pause:/ { print $2 }' "$images/index")
[[ -n $pause_image ]] || die "no pause image in $images/index (run test/e2e/cmd/pack)"
[[ $dir =~ ^[A-Za-z0-9._/+@:,=-]+$ ]] || die "DIR must not contain spaces or special characters: $dir"
((${#dir} <= 60)) || die "DIR is too long for a unix socket path: $dir"

start_all=$SECONDS

# ------------------------------------------------------- binaries, packages
eval "$("$here/../controlplane/build.sh" --node)"
install_packages

# ------------------------------------------------------------ control plane
"$here/../controlplane/start.sh" --pods "$dir/cp"
set -a
. "$dir/cp/env"
set +a
ln -sf "$dir/cp/kube-apiserver.pid" "$dir/kube-apiserver.pid"
ln -sf "$dir/cp/etcd.pid" "$dir/etcd.pid"
admin=$MPSYNC_ADMIN_KUBECONFIG
apiserver_port=${MPSYNC_KUBE_SERVER##*:}

# ------------------------------------------- network: bridge and Service IP
# The Service address goes on lo (the host delivers what pods send it to
# any local address); CNI's bridge plugin makes the bridge, with the pods'
# gateway address, at the first pod.
ip addr add "$service_ip/32" dev lo
touch "$dir/added-service-ip"
spawn socat "$dir/socat.log" socat \
  "TCP-LISTEN:443,bind=$service_ip,fork,reuseaddr" "TCP:127.0.0.1:$apiserver_port"
mkdir -p "$dir/cni"
cat >"$dir/cni/10-mpsync-e2e.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "mpsync-e2e",
  "plugins": [{
    "type": "bridge",
    "bridge": "$bridge",
    "isGateway": true,
    "ipMasq": false,
    "hairpinMode": true,
    "ipam": {
      "type": "host-local",
      "dataDir": "$dir/cni-ipam",
      "ranges": [[{"subnet": "$pod_subnet"}]],
      "routes": [{"dst": "0.0.0.0/0"}]
    }
  }]
}
EOF

# --------------------------------------------------------------- containerd
sock=$dir/containerd/containerd.sock
mkdir -p "$dir/containerd"
cat >"$dir/containerd/config.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  # Root here lacks CAP_SYS_RESOURCE: runc cannot set the -998 oom_score_adj
  # the kubelet asks for the sandbox, and every pod would fail to start.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni"
EOF
spawn containerd "$dir/containerd.log" containerd --config "$dir/containerd/config.toml"
wait_for containerd "$dir/containerd.log" ctr -a "$sock" version
while read -r tarball ref; do
  ctr -a "$sock" -n k8s.io images import "$tarball" >/dev/null || die "ctr images import $tarball ($ref) failed"
done <"$images/index"
log "images: $(ctr -a "$sock" -n k8s.io images ls -q | grep -v '^sha256:' | tr '\n' ' ')"

# ------------------------------------------ controller-manager and scheduler
spawn kube-controller-manager "$dir/kube-controller-manager.log" "$KUBE_CONTROLLER_MANAGER_BIN" \
  --kubeconfig="$admin" \
  --controllers='*,-node-ipam-controller' \
  --service-account-private-key-file="$dir/cp/sa.key" \
  --root-ca-file="$MPSYNC_KUBE_CA" \
  --leader-elect=false \
  --secure-port=0 \
  --bind-address=127.0.0.1
spawn kube-scheduler "$dir/kube-scheduler.log" "$KUBE_SCHEDULER_BIN" \
  --kubeconfig="$admin" \
  --leader-elect=false \
  --secure-port=0 \
  --bind-address=127.0.0.1

# ------------------------------------------------------------------ kubelet
mkdir -p "$dir/kubelet"
# The kubelet links container logs in /var/log/containers; down.sh removes
# the links, and the directory if it made it.
[[ -d /var/log/containers ]] || touch "$dir/made-var-log-containers"
cat >"$dir/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: unix://$sock
address: 127.0.0.1
port: $(free_port)
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
podLogsDir: $dir/kubelet/logs
resolvConf: /etc/resolv.conf
serializeImagePulls: false
EOF
spawn kubelet "$dir/kubelet.log" "$KUBELET_BIN" \
  --config="$dir/kubelet/config.yaml" \
  --kubeconfig="$MPSYNC_NODE_KUBECONFIG" \
  --root-dir="$dir/kubelet/root" \
  --cert-dir="$dir/kubelet/pki" \
  --hostname-override=localhost
node_ready() {
  "$KUBECTL_BIN" --kubeconfig="$admin" get node localhost \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -qx True
}
wait_for kubelet "$dir/kubelet.log" node_ready
wait_for kube-controller-manager "$dir/kube-controller-manager.log" \
  "$KUBECTL_BIN" --kubeconfig="$admin" get serviceaccount default -n default

cat >"$dir/env" <<EOF
MPSYNC_E2E_KUBECONFIG=$admin
MPSYNC_E2E_KUBECTL=$KUBECTL_BIN
MPSYNC_E2E_CONTAINERD=$sock
MPSYNC_E2E_POD_LOGS=$dir/kubelet/logs
MPSYNC_E2E_DIR=$dir
EOF
log "node up in $((SECONDS - start_all))s (env: $dir/env)"
