#!/usr/bin/env bash
# Stops the kube-apiserver and etcd that start.sh started in DIR (by their
# pid files), waits for them to exit, and removes the pid files. DIR itself
# (logs, data) is left for the caller to inspect or delete.
#
# Usage: hack/controlplane/stop.sh DIR
# Environment: MPSYNC_STOP_TIMEOUT (seconds before SIGKILL; default 15).
set -euo pipefail

timeout=${MPSYNC_STOP_TIMEOUT:-15}

log() { printf 'controlplane/stop: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $# -eq 1 && -n $1 ]] || die "usage: $0 DIR"
[[ -d $1 ]] || die "no such directory: $1"
dir=$(cd "$1" && pwd)

# alive PID: running and not a zombie.
alive() {
  local state
  state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

# stop NAME: stop the process in DIR/NAME.pid, if it is still that program.
stop() {
  local name=$1 pidfile=$dir/$1.pid pid deadline
  if [[ ! -f $pidfile ]]; then
    log "$name: no pid file, nothing to stop"
    return
  fi
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || die "$pidfile does not hold a pid"
  if ! alive "$pid"; then
    log "$name (pid $pid) is not running"
    rm -f "$pidfile"
    return
  fi
  # Guard against a recycled pid: the command line must mention DIR.
  if ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$dir/"; then
    log "$name: pid $pid is not ours any more (command line does not mention $dir); leaving it"
    rm -f "$pidfile"
    return
  fi
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + timeout))
  while alive "$pid"; do
    if ((SECONDS >= deadline)); then
      log "$name (pid $pid) still running after ${timeout}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$((SECONDS + 5))
      while alive "$pid"; do
        ((SECONDS < deadline)) || die "$name (pid $pid) survived SIGKILL"
        sleep 0.1
      done
      break
    fi
    sleep 0.1
  done
  rm -f "$pidfile"
  log "$name stopped"
}

# The API server first, so it does not spend its last seconds retrying etcd.
stop kube-apiserver
stop etcd
