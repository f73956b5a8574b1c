#!/usr/bin/env bash
# `make run-agent`: hypervisor-agent with configs/agent.yaml, joined to the cluster of
# `make run-server` on this machine (https://127.0.0.1:7070, etcd on TLS with node roles).
#   make run-agent [AGENT_ARGS="--node-name n2 --data-dir .data/n2"]
# At its first start (no node certificate in its pki dir yet) it gets a one-use join token from
# the local server (ctl with the bootstrap admin token beside the CA), scoped to --node-name when
# one is given, kept 0600 in the data dir, and joins with it. Later starts use the certificate.
set -euo pipefail
cd "$(dirname "$0")/.."

SERVER="${HYPERVISOR_SERVER_URL:-https://127.0.0.1:7070}"
CA="${HYPERVISOR_CA_FILE:-.data/server/pki/ca.crt}"
# The cluster's bootstrap admin token (beside the CA): it may mint join tokens.
ADMIN_TOKEN_FILE="${HYPERVISOR_ADMIN_TOKEN_FILE:-$(dirname "$CA")/admin-token}"
DATA="${HYPERVISOR_DATA_DIR:-.data/agent}"
NODE="${HYPERVISOR_NODE_NAME:-}"
PKI="${HYPERVISOR_PKI_DIR:-}"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --data-dir) DATA="${args[i + 1]:-}" ;;
    --data-dir=*) DATA="${args[i]#*=}" ;;
    --node-name) NODE="${args[i + 1]:-}" ;;
    --node-name=*) NODE="${args[i]#*=}" ;;
    --pki-dir) PKI="${args[i + 1]:-}" ;;
    --pki-dir=*) PKI="${args[i]#*=}" ;;
  esac
done
PKI="${PKI:-$DATA/pki}"

join=()
if [[ ! -s "$PKI/node.crt" ]]; then
  if [[ ! -r "$CA" ]]; then
    echo "run-agent: $CA is missing: start the server first (make run-server)" >&2
    exit 2
  fi
  if [[ ! -r "$ADMIN_TOKEN_FILE" ]]; then
    echo "run-agent: $ADMIN_TOKEN_FILE is missing or unreadable: the server writes it at the cluster's first start (make run-server)" >&2
    exit 2
  fi
  scope=()
  if [[ -n "$NODE" ]]; then scope=(--node "$NODE"); fi
  mkdir -p "$DATA"
  umask 077
  if ! token=$(HYPERVISOR_TOKEN="$(cat "$ADMIN_TOKEN_FILE")" node dist/cmd/hypervisor-ctl/main.js --server "$SERVER" --ca-file "$CA" \
    join-token create "${scope[@]}" --uses 1 --ttl 10m --description "make run-agent"); then
    echo "run-agent: no join token from $SERVER (is make run-server running?)" >&2
    exit 2
  fi
  printf '%s\n' "$token" >"$DATA/join-token"
  join=(--join-token-file "$DATA/join-token")
fi

exec node dist/cmd/hypervisor-agent/main.js --config configs/agent.yaml --server "$SERVER" "${join[@]}" "$@"
