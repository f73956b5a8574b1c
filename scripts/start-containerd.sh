#!/usr/bin/env bash
# Starts the project's own containerd (no systemd here) with a config this script writes, and waits
# until its socket answers. Usage:
#
#   scripts/start-containerd.sh [DATA_DIR]      (default /var/lib/hypervisor/containerd)
#
# Prints exactly one line on stdout, the gRPC socket path; everything else goes to stderr.
# Its paths are apart from a Debian-default containerd's (/var/lib/containerd, /run/containerd):
#
#   DATA_DIR/config.toml      written on every start (the running daemon keeps the one it read)
#   DATA_DIR/root             content store, snapshots, metadata (persistent)
#   DATA_DIR/containerd.pid   scripts/stop-containerd.sh [DATA_DIR] stops exactly this process
#   DATA_DIR/containerd.log   the daemon's stdout and stderr
#   /run/hypervisor-containerd[-HASH]/   state (task bundles; tmpfs on a normal host) and
#                                        containerd.sock, containerd.sock.ttrpc
#
# Two paths are hard-coded in containerd 1.6's runc shim and stay under /run/containerd: the shims'
# sockets (s/<sha256 of our socket, namespace, id>: no clash) and runc's state (runc/<namespace>/
# <id>: a clash only with the same id in the same namespace; the runc option Root moves it).
# The state directory is per DATA_DIR (-HASH for a non-default one), so two data dirs never share a
# socket. Idempotent: when our process is alive and its socket answers, it only prints the path.
# The namespace `hypervisor` is created with the defaults its clients should use as labels
# (containerd.io/defaults/snapshotter, containerd.io/defaults/runtime): containerd 1.6 has no
# daemon-wide default for either outside CRI, and ctr and the Go client read these labels.
set -euo pipefail

DEFAULT_DATA=/var/lib/hypervisor/containerd
NAMESPACE=hypervisor
RUNTIME=io.containerd.runc.v2

log() { echo "start-containerd: $*" >&2; }
die() { log "error: $*"; exit 1; }

command -v containerd >/dev/null 2>&1 || die "containerd is not installed; run scripts/install-deps.sh"
command -v runc >/dev/null 2>&1 || die "runc is not installed; run scripts/install-deps.sh"

DATA=${1:-$DEFAULT_DATA}
mkdir -p "$DATA"
DATA=$(cd "$DATA" && pwd)
if [[ "$DATA" == "$DEFAULT_DATA" ]]; then
  STATE=/run/hypervisor-containerd
else
  STATE=/run/hypervisor-containerd-$(echo -n "$DATA" | sha256sum | cut -c1-8)
fi
SOCK=$STATE/containerd.sock
CONFIG=$DATA/config.toml
PIDFILE=$DATA/containerd.pid
LOGFILE=$DATA/containerd.log
mkdir -p "$STATE" "$DATA/root"

# The pid file's process is alive: not gone and not a zombie (PID 1 here reaps late).
alive() {
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" =~ ^[^ZX]$ ]]
}
# ... and it is our daemon, started with our config (a reused pid belongs to something else).
ours() { alive && tr '\0' '\n' <"/proc/$(cat "$PIDFILE")/cmdline" 2>/dev/null | grep -qxF "$CONFIG"; }
answers() { [[ -S "$SOCK" ]] && ctr --address "$SOCK" --connect-timeout 1s --timeout 3s version >/dev/null 2>&1; }
wait_answer() {
  local _
  for _ in $(seq 1 300); do
    answers && return 0
    alive || return 1
    sleep 0.1
  done
  return 1
}

# One starter at a time (parallel test processes); the loser finds ours running.
exec 9>"$DATA/.lock"
flock 9

if ours; then
  wait_answer || die "containerd (pid $(cat "$PIDFILE")) does not answer on $SOCK; see $LOGFILE"
  log "already running (pid $(cat "$PIDFILE"))"
  echo "$SOCK"
  exit 0
fi
rm -f "$PIDFILE"
answers && die "something other than our pid file's process serves $SOCK"
rm -f "$SOCK" "$SOCK.ttrpc"

# overlayfs is the default, but overlay on overlay (a container in a container) or on some
# filesystems fails at mount time, while the plugin still loads "ok". So mount one on the same
# filesystem as the snapshots; native (full copies, slower, no kernel support needed) otherwise.
probe_overlay() {
  local p=$DATA/root/.overlay-probe ok=1
  rm -rf "$p"
  mkdir -p "$p"/{lower,upper,work,merged}
  echo lower >"$p/lower/f"
  if mount -t overlay overlay -o "lowerdir=$p/lower,upperdir=$p/upper,workdir=$p/work" "$p/merged" 2>/dev/null; then
    echo upper >"$p/merged/f" 2>/dev/null && [[ "$(cat "$p/lower/f")" == lower && "$(cat "$p/upper/f")" == upper ]] && ok=0
    umount "$p/merged"
  fi
  rm -rf "$p"
  return "$ok"
}
if probe_overlay; then SNAPSHOTTER=overlayfs; else SNAPSHOTTER=native; fi
log "snapshotter: $SNAPSHOTTER"

# CRI wants CNI and a pause image, and the other snapshotters cannot work here and only log errors.
# (The v1 runtime stays: containerd 1.6's tasks service fails to load without it, though ours is
# io.containerd.runc.v2, a per-container choice of the client.) required_plugins makes a broken
# service fail the start instead of the first call. imports = [] keeps /etc/containerd/config.toml out.
cat >"$CONFIG.tmp" <<EOF
# Written by scripts/start-containerd.sh on every start; edit the script, not this file.
version = 2
root = "$DATA/root"
state = "$STATE"
imports = []
required_plugins = [
  "io.containerd.grpc.v1.containers",
  "io.containerd.grpc.v1.content",
  "io.containerd.grpc.v1.diff",
  "io.containerd.grpc.v1.events",
  "io.containerd.grpc.v1.images",
  "io.containerd.grpc.v1.leases",
  "io.containerd.grpc.v1.namespaces",
  "io.containerd.grpc.v1.snapshots",
  "io.containerd.grpc.v1.tasks",
  "io.containerd.runtime.v2.task",
  "io.containerd.snapshotter.v1.$SNAPSHOTTER",
]
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "$SOCK"

[ttrpc]
  address = "$SOCK.ttrpc"

[debug]
  level = "info"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$DATA/opt"
EOF
mv -f "$CONFIG.tmp" "$CONFIG"

# setsid: the daemon outlives the caller's process group (a test runner's timeout kills that).
# It keeps no descriptor of ours: with our stdout it would hold up a caller that reads it to the
# end, with fd 9 it would hold the lock above for as long as it runs.
echo "--- $(date -u +%FT%TZ) start-containerd.sh" >>"$LOGFILE"
(
  for fd in /proc/self/fd/*; do
    fd=${fd##*/}
    if ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
  done
  exec setsid containerd --config "$CONFIG" </dev/null >>"$LOGFILE" 2>&1
) &
echo $! >"$PIDFILE"

if ! wait_answer; then
  if alive; then
    log "containerd (pid $(cat "$PIDFILE")) did not answer on $SOCK within 30 s; see $LOGFILE"
  else
    log "containerd exited; the end of $LOGFILE:"
    tail -n 20 "$LOGFILE" >&2
    rm -f "$PIDFILE"
  fi
  exit 1
fi

ctr --address "$SOCK" namespaces create "$NAMESPACE" >/dev/null 2>&1 || true
ctr --address "$SOCK" namespaces label "$NAMESPACE" \
  containerd.io/defaults/snapshotter="$SNAPSHOTTER" containerd.io/defaults/runtime="$RUNTIME"
log "started containerd (pid $(cat "$PIDFILE")), log $LOGFILE"
echo "$SOCK"
