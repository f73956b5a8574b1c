#!/usr/bin/env bash
# `make run`: a one-machine cluster (hypervisor-server --dev: server and agent in one process,
# embedded store in .data/server) with one demo VM on the libvirt driver, and containerd with a
# busybox image imported for containers.
#
#   libvirtd up (scripts/start-libvirtd.sh) ─► test guest built (scripts/build-test-guest.sh)
#   ─► kernel + initrd in .data/server/images ─► containerd up (scripts/start-containerd.sh)
#   ─► server --dev ─► demo-vm created (once), busybox image imported ─► wait
#
# A runtime that does not start leaves its driver unhealthy; the cluster runs with the others.
# Ctrl-C stops the server; the VM keeps running and the next `make run` adopts it.
set -euo pipefail
cd "$(dirname "$0")/.."

# The server reads HYPERVISOR_* from the environment too (over configs/server.yaml): follow it.
DATA="${HYPERVISOR_DATA_DIR:-.data/server}"
IMAGES="${HYPERVISOR_LIBVIRT_IMAGE_DIR:-$DATA/images}"
# TLS with a certificate of the cluster CA the server makes in $DATA/pki at its first start; the
# server also writes ctl's context "dev" (ctl's config file), so a plain `hypervisor-ctl` works.
SERVER="https://${HYPERVISOR_LISTEN:-127.0.0.1:7070}"
CA="${HYPERVISOR_PKI_DIR:-$DATA/pki}/ca.crt"
DEMO="${DEMO_VM:-demo-vm}"
# The cluster's bootstrap admin token, written beside the CA at the first start.
TOKEN_FILE="$(dirname "$CA")/admin-token"
ctl() { HYPERVISOR_TOKEN="$(cat "$TOKEN_FILE")" node dist/cmd/hypervisor-ctl/main.js --server "$SERVER" --ca-file "$CA" "$@"; }

mkdir -p "$IMAGES"
vm=0
if bash scripts/start-libvirtd.sh >/dev/null; then
  guest=$(bash scripts/build-test-guest.sh)
  # QEMU runs as libvirt-qemu: it must be able to reach and read these.
  install -m 0644 "$guest/vmlinuz" "$IMAGES/vmlinuz"
  install -m 0644 "$guest/initrd.img" "$IMAGES/initrd.img"
  chmod o+rx "$DATA" "$IMAGES"
  if [[ -d .data ]]; then chmod o+rx .data; fi
  vm=1
else
  echo "run: libvirtd did not start; the cluster runs without VMs (mock driver only)" >&2
fi

ctr=0
if sock=$(bash scripts/start-containerd.sh); then
  export HYPERVISOR_CONTAINERD_SOCKET="${HYPERVISOR_CONTAINERD_SOCKET:-$sock}"
  busybox=$(bash scripts/build-busybox-image.sh)
  ctr=1
else
  echo "run: containerd did not start; the cluster runs without containers" >&2
fi

node dist/cmd/hypervisor-server/main.js --dev --store embedded --config configs/server.yaml &
server=$!
trap 'kill -TERM "$server" 2>/dev/null || true; wait "$server"; exit $?' INT TERM

for _ in $(seq 1 300); do
  [[ -f "$CA" && -f "$TOKEN_FILE" ]] && ctl node list >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { wait "$server"; exit $?; }
  sleep 0.2
done
if [[ ! -s "$TOKEN_FILE" ]]; then
  # Only the cluster's first start writes it (the store records that it did): nothing makes another.
  echo "run: no admin token in $TOKEN_FILE; the cluster made it at its first start (to begin afresh, stop and remove $DATA)" >&2
fi

if ((ctr)); then
  # Imports are idempotent: the same tarball gives the same image again. The node may still be
  # registering its drivers, so a refusal is retried for a while.
  for _ in $(seq 1 60); do
    if out=$(ctl image import "$busybox" --all 2>&1); then break; fi
    sleep 0.5
  done
  [[ "$out" == *imported* ]] || echo "run: importing the busybox image failed: $out" >&2
  cat <<EOF

containerd is ready with a busybox image (hypervisor.dev/busybox:test). A container:
  npx hypervisor-ctl instance create hello --driver containerd --image hypervisor.dev/busybox:test \\
      --vcpus 1 --memory 64 --command sh -- -c 'while true; do date; sleep 2; done' --wait
  npx hypervisor-ctl instance logs hello -f
EOF
fi

if ((vm)); then
  if ! ctl instance get "$DEMO" >/dev/null 2>&1; then
    # The node registers libvirt as healthy once it has fingerprinted it; the scheduler waits for that.
    ctl instance create "$DEMO" --driver libvirt --vcpus 1 --memory 256 \
      --kernel vmlinuz --initrd initrd.img --cmdline "console=ttyS0 panic=-1" \
      --label app=demo --wait --timeout 5m >/dev/null
  fi
  cat <<EOF

A demo VM is running on the libvirt driver: $DEMO (QEMU, a Debian kernel and a busybox initramfs).
  its console log   npx hypervisor-ctl instance logs $DEMO -f
  its status        npx hypervisor-ctl instance get $DEMO
  virsh's view      virsh -c qemu:///system dominfo hv-$DEMO
  remove it         npx hypervisor-ctl instance delete $DEMO

EOF
fi
wait "$server"
