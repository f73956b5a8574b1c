#!/usr/bin/env bash
# Starts a local single-member etcd in the background for development, on 127.0.0.1 only.
#   scripts/start-etcd.sh [client-port (2379)] [data-dir (/tmp/hypervisor-etcd)]
# The peer port is client-port + 1. Writes <data-dir>/etcd.pid and <data-dir>/etcd.log, prints the
# endpoint. Stop it with scripts/stop-etcd.sh [data-dir].
set -euo pipefail

PORT="${1:-2379}"
DATA="${2:-/tmp/hypervisor-etcd}"
PEER=$((PORT + 1))
ETCD="${ETCD_BIN:-$(command -v etcd || echo /usr/bin/etcd)}"
PIDFILE="$DATA/etcd.pid"
ENDPOINT="http://127.0.0.1:$PORT"

mkdir -p "$DATA"
if [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
  echo "etcd already running (pid $(cat "$PIDFILE")) at $ENDPOINT" >&2
  echo "$ENDPOINT"
  exit 0
fi

nohup "$ETCD" \
  --name=hypervisor-dev \
  --data-dir="$DATA/data" \
  --listen-client-urls="$ENDPOINT" \
  --advertise-client-urls="$ENDPOINT" \
  --listen-peer-urls="http://127.0.0.1:$PEER" \
  --initial-advertise-peer-urls="http://127.0.0.1:$PEER" \
  --initial-cluster="hypervisor-dev=http://127.0.0.1:$PEER" \
  --initial-cluster-state=new \
  >>"$DATA/etcd.log" 2>&1 &
echo $! >"$PIDFILE"

# Wait until it answers, so the next command can use it (30 s at most).
for _ in $(seq 1 300); do
  if curl -fsS "$ENDPOINT/health" 2>/dev/null | grep -q '"health":"true"'; then
    echo "$ENDPOINT"
    exit 0
  fi
  if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "etcd exited; see $DATA/etcd.log:" >&2
    tail -n 20 "$DATA/etcd.log" >&2
    rm -f "$PIDFILE"
    exit 1
  fi
  sleep 0.1
done
echo "etcd at $ENDPOINT not healthy after 30 s; see $DATA/etcd.log" >&2
exit 1
