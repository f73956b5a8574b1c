#!/usr/bin/env bash
# Stops the libvirtd and virtlogd that scripts/start-libvirtd.sh started, by their pid files only.
set -euo pipefail
STATE=/run/hypervisor-libvirt
for d in libvirtd virtlogd; do
  f="$STATE/$d.pid"
  [[ -f "$f" ]] || continue
  pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$f"
  echo "stopped $d (pid $pid)"
done
