# Shared by hack/e2e/up.sh and down.sh: names, logging and process helpers.
# Sourced, not run. The caller sets dir (the node's state directory).

# The node's network: a bridge of its own (CNI's bridge plugin makes it),
# the pods' subnet, and the `kubernetes` Service's address, the first of
# start.sh's --service-cluster-ip-range.
bridge=mpsync-e2e0
pod_subnet=10.244.0.0/24
service_ip=10.0.0.1

log() { printf 'e2e: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# alive PID: running and not a zombie.
alive() {
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

# spawn NAME LOG CMD...: run CMD detached (own session, no stdin) with its
# output in LOG, its pid in $dir/NAME.pid.
spawn() {
  local name=$1 logfile=$2
  shift 2
  setsid "$@" </dev/null >"$logfile" 2>&1 &
  echo $! >"$dir/$name.pid"
}

# wait_for NAME LOG CHECK...: poll CHECK until it succeeds, failing if the
# process NAME (by pid file) dies or $timeout seconds pass.
wait_for() {
  local name=$1 logfile=$2 pid deadline=$((SECONDS + ${timeout:-120}))
  shift 2
  pid=$(<"$dir/$name.pid")
  until "$@" >/dev/null 2>&1; do
    if ! alive "$pid"; then
      tail -n 30 "$logfile" >&2 || true
      die "$name (pid $pid) exited before it was ready (log: $logfile)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$logfile" >&2 || true
      die "$name (pid $pid) not ready after ${timeout:-120}s (log: $logfile)"
    fi
    sleep 0.2
  done
  log "$name ready (pid $pid)"
}

# free_port: a port below the ephemeral range with no TCP socket on it.
free_port() {
  local p i hex
  for ((i = 0; i < 200; i++)); do
    p=$((10000 + (RANDOM * 32768 + RANDOM) % 22000))
    hex=$(printf ':%04X' "$p")
    awk -v p="$hex" 'FNR > 1 && substr($2, length($2) - 4) == p { found = 1 }
      END { exit !found }' /proc/net/tcp /proc/net/tcp6 2>/dev/null || { echo "$p"; return; }
  done
  die "no free port found"
}

# cannot_run: why the suite cannot run on this machine, or nothing.
cannot_run() {
  if ((EUID != 0)); then
    echo "not root (containerd, runc, mounts and a bridge need root)"
  elif [[ $(uname -s) != Linux ]]; then
    echo "not Linux"
  elif ! command -v apt-get >/dev/null && ! have_packages; then
    echo "containerd, runc, socat or the CNI plugins are missing and there is no apt-get to install them"
  elif ! command -v ip >/dev/null; then
    echo "no ip command (iproute2) to make the node's bridge"
  fi
}

have_packages() {
  command -v containerd >/dev/null && command -v ctr >/dev/null &&
    command -v runc >/dev/null && command -v socat >/dev/null &&
    [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]]
}

# install_packages: containerd, runc, socat and the CNI plugins, from Debian.
install_packages() {
  have_packages && return
  log "installing containerd, runc, socat and the CNI plugins (apt-get)"
  local pkgs=(containerd runc containernetworking-plugins socat)
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >&2 ||
    { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >&2; } ||
    die "apt-get install ${pkgs[*]} failed"
  have_packages || die "installed ${pkgs[*]}, but a command or /usr/lib/cni/{bridge,host-local} is still missing"
}
