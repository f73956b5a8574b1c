#!/usr/bin/env bash
# Starts a local single-member etcd in the background for development, on 127.0.0.1 only.
#   scripts/start-etcd.sh [client-port (2379)] [data-dir (/tmp/hypervisor-etcd)] [pki-dir]
# The peer port is client-port + 1. Writes <data-dir>/etcd.pid and <data-dir>/etcd.log, prints the
# endpoint. Stop it with scripts/stop-etcd.sh [data-dir].
#
# TLS mode: a pki-dir (third argument, or ETCD_PKI_DIR) holding
#   ca.crt                          the cluster CA: etcd trusts client certificates it signed
#   etcd-server.crt, etcd-server.key  etcd's certificate (SAN IP:127.0.0.1; extended key usage
#                                   serverAuth and clientAuth: etcd's gateway dials itself with it)
#   etcd-healthcheck.crt/.key       optional: the client certificate of the health check below
#                                   (default: etcd's own)
# serves https://127.0.0.1:<port> with --client-cert-auth: every client must present a
# certificate from the CA, and once auth is on (the server turns it on) its CN is the etcd user.
# The peer URL stays plaintext: one member, on loopback.
set -euo pipefail

PORT="${1:-2379}"
DATA="${2:-/tmp/hypervisor-etcd}"
PKI="${3:-${ETCD_PKI_DIR:-}}"
PEER=$((PORT + 1))
ETCD="${ETCD_BIN:-$(command -v etcd || echo /usr/bin/etcd)}"
PIDFILE="$DATA/etcd.pid"

TLS_ARGS=()
HEALTH_ARGS=()
SCHEME=http
if [[ -n "$PKI" ]]; then
  SCHEME=https
  for f in ca.crt etcd-server.crt etcd-server.key; do
    if [[ ! -r "$PKI/$f" ]]; then
      echo "start-etcd: $PKI/$f is missing or unreadable (TLS mode needs ca.crt, etcd-server.crt, etcd-server.key)" >&2
      exit 2
    fi
  done
  TLS_ARGS=(
    --cert-file="$PKI/etcd-server.crt"
    --key-file="$PKI/etcd-server.key"
    --trusted-ca-file="$PKI/ca.crt"
    --client-cert-auth
  )
  HEALTH_CERT="$PKI/etcd-server.crt"
  HEALTH_KEY="$PKI/etcd-server.key"
  if [[ -r "$PKI/etcd-healthcheck.crt" && -r "$PKI/etcd-healthcheck.key" ]]; then
    HEALTH_CERT="$PKI/etcd-healthcheck.crt"
    HEALTH_KEY="$PKI/etcd-healthcheck.key"
  fi
  HEALTH_ARGS=(--cacert "$PKI/ca.crt" --cert "$HEALTH_CERT" --key "$HEALTH_KEY")
fi
ENDPOINT="$SCHEME://127.0.0.1:$PORT"

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
  "${TLS_ARGS[@]}" \
  >>"$DATA/etcd.log" 2>&1 &
echo $! >"$PIDFILE"

# Wait until it answers, so the next command can use it (30 s at most).
for _ in $(seq 1 300); do
  if curl -fsS "${HEALTH_ARGS[@]}" "$ENDPOINT/health" 2>/dev/null | grep -q '"health":"true"'; then
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
