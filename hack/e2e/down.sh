#!/usr/bin/env bash
# Takes down what hack/e2e/up.sh DIR brought up, in whatever state it is
# (also after a failed or interrupted up.sh), and leaves no process, mount,
# bridge or cgroup of it behind: the pods first (while the kubelet can
# still tear down their volumes and sandboxes), then the kubelet,
# controller-manager, scheduler and socat, what containerd still runs,
# containerd and its shims, the control plane, every mount under DIR, the
# bridge and the empty cgroups. DIR (logs) is left for the caller.
#
# Usage: hack/e2e/down.sh DIR
# Exit status 1 if something could not be removed (it says what).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/lib.sh"

[[ $# -eq 1 && -d $1 ]] || die "usage: $0 DIR"
dir=$(cd "$1" && pwd)
sock=$dir/containerd/containerd.sock
failed=0

# stop NAME: TERM the process in DIR/NAME.pid (if it still mentions DIR on
# its command line: pids are recycled), KILL it after 15 s.
stop() {
  local name=$1 pid deadline
  [[ -f $dir/$name.pid ]] || return 0
  pid=$(<"$dir/$name.pid")
  rm -f "$dir/$name.pid"
  alive "$pid" || return 0
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$dir/" || [[ $name == socat ]] ||
    { log "$name: pid $pid is not ours any more; leaving it"; return 0; }
  # socat forks a child per connection: those go too.
  [[ $name == socat ]] && pkill -TERM -P "$pid" 2>/dev/null
  kill -TERM "$pid" 2>/dev/null
  deadline=$((SECONDS + 15))
  while alive "$pid"; do
    if ((SECONDS >= deadline)); then
      log "$name (pid $pid) ignored SIGTERM for 15s; SIGKILL"
      kill -KILL "$pid" 2>/dev/null
      sleep 0.5
      break
    fi
    sleep 0.1
  done
  log "stopped $name"
}

# 1. The pods, through the API, while the kubelet runs.
if [[ -f $dir/env && -f $dir/kubelet.pid ]] && alive "$(<"$dir/kubelet.pid")"; then
  set -a
  . "$dir/env"
  set +a
  "$MPSYNC_E2E_KUBECTL" --kubeconfig="$MPSYNC_E2E_KUBECONFIG" delete pods --all --all-namespaces \
    --grace-period=2 --wait --timeout=90s >/dev/null 2>&1 || log "pods not all deleted in 90s; killing their containers"
fi
for name in kubelet kube-scheduler kube-controller-manager socat; do
  stop "$name"
done

# 2. Whatever containerd still runs: kill and delete every task and
# container, then containerd itself and any shim of it.
if [[ -S $sock ]] && [[ -f $dir/containerd.pid ]] && alive "$(<"$dir/containerd.pid")"; then
  for id in $(ctr -a "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
    ctr -a "$sock" -n k8s.io tasks kill -s KILL "$id" >/dev/null 2>&1
    ctr -a "$sock" -n k8s.io tasks delete -f "$id" >/dev/null 2>&1
  done
  for id in $(ctr -a "$sock" -n k8s.io containers ls -q 2>/dev/null); do
    ctr -a "$sock" -n k8s.io containers delete "$id" >/dev/null 2>&1
  done
fi
stop containerd
for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $sock( |$)"); do
  log "killing leftover shim $pid and its container processes"
  for child in $(pgrep -P "$pid"); do kill -KILL "$child" 2>/dev/null; done
  kill -KILL "$pid" 2>/dev/null
done

# 3. The control plane.
[[ -d $dir/cp ]] && "$here/../controlplane/stop.sh" "$dir/cp" || true

# 4. Mounts under DIR (overlay rootfs, volumes, network namespaces), the
# deepest first.
mounts() { awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r; }
for m in $(mounts); do
  umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "cannot unmount $m"
done
if [[ -n $(mounts) ]]; then
  log "still mounted: $(mounts | tr '\n' ' ')"
  failed=1
fi

# 5. The bridge (its addresses go with it), the Service address on lo and
# the kubelet's log links.
if ip link show "$bridge" >/dev/null 2>&1; then
  ip link del "$bridge" || { log "cannot delete bridge $bridge"; failed=1; }
fi
if [[ -f $dir/added-service-ip ]]; then
  ip addr del "$service_ip/32" dev lo 2>/dev/null
  rm -f "$dir/added-service-ip"
fi
for link in /var/log/containers/*.log; do
  [[ -L $link && $(readlink "$link") == "$dir/"* ]] && rm -f "$link"
done
[[ -f $dir/made-var-log-containers ]] && rmdir /var/log/containers 2>/dev/null

# 6. The cgroups the kubelet and runc made, if empty (a process still in
# one keeps it, and is reported).
for c in /sys/fs/cgroup/*/; do
  for top in kubepods kubepods.slice k8s.io; do
    [[ -d $c$top ]] || continue
    find "$c$top" -depth -type d -exec rmdir {} \; 2>/dev/null
    if [[ -d $c$top ]]; then
      log "cgroup $c$top still in use: $(find "$c$top" -name cgroup.procs -exec cat {} + | tr '\n' ' ')"
      failed=1
    fi
  done
done

if ((failed)); then
  log "down: something was left behind (see above)"
  exit 1
fi
log "down: nothing left running from $dir"
