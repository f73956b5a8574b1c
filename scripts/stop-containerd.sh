#!/usr/bin/env bash
# Stops the containerd that scripts/start-containerd.sh started, by its pid file only (never by
# name). Usage:
#
#   scripts/stop-containerd.sh [DATA_DIR]       (default /var/lib/hypervisor/containerd)
#
# Containers keep running: each task lives under its own containerd-shim-runc-v2, which by design
# outlives containerd, and a restarted containerd re-attaches to the shims through the state
# directory. Stop the containers first (through the API) when they should go too.
set -euo pipefail

DATA=${1:-/var/lib/hypervisor/containerd}
# Absolute, as start-containerd.sh wrote it into the daemon's command line.
[[ -d "$DATA" ]] && DATA=$(cd "$DATA" && pwd)
PIDFILE=$DATA/containerd.pid

if [[ ! -f "$PIDFILE" ]]; then
  echo "no pid file at $PIDFILE; nothing to stop" >&2
  exit 0
fi
PID=$(cat "$PIDFILE")
# Gone or a zombie (PID 1 here reaps late, and kill -0 succeeds on zombies).
alive() { [[ "$(awk '{print $3}' "/proc/$PID/stat" 2>/dev/null)" =~ ^[^ZX]$ ]]; }
# Only a process started with this data dir's config: the pid may have been reused since.
if [[ "$PID" =~ ^[0-9]+$ ]] && alive && tr '\0' '\n' <"/proc/$PID/cmdline" 2>/dev/null | grep -qxF "$DATA/config.toml"; then
  kill -TERM "$PID"
  for _ in $(seq 1 100); do
    alive || break
    sleep 0.1
  done
  if alive; then
    echo "containerd (pid $PID) ignored SIGTERM for 10 s; sending SIGKILL" >&2
    kill -KILL "$PID"
  fi
  echo "stopped containerd (pid $PID)"
else
  echo "pid $PID from $PIDFILE is not our containerd (anymore); removing the pid file" >&2
fi
rm -f "$PIDFILE"
