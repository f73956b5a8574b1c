#!/usr/bin/env bash
# Stops the etcd that scripts/start-etcd.sh started, by its pid file only (never by name).
#   scripts/stop-etcd.sh [data-dir (/tmp/hypervisor-etcd)]
set -euo pipefail

DATA="${1:-/tmp/hypervisor-etcd}"
PIDFILE="$DATA/etcd.pid"

if [[ ! -f "$PIDFILE" ]]; then
  echo "no pid file at $PIDFILE; nothing to stop" >&2
  exit 0
fi
PID="$(cat "$PIDFILE")"
if kill -0 "$PID" 2>/dev/null; then
  kill -TERM "$PID"
  for _ in $(seq 1 100); do
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$PID" 2>/dev/null; then
    echo "etcd (pid $PID) ignored SIGTERM for 10 s; sending SIGKILL" >&2
    kill -KILL "$PID"
  fi
fi
rm -f "$PIDFILE"
echo "stopped etcd (pid $PID)"
