#!/usr/bin/env bash
# Starts virtlogd and libvirtd (no systemd here) when they are not running, and waits until
# libvirtd's socket answers. Prints the socket path. Pid files: /run/hypervisor-libvirt/*.pid, so
# scripts/stop-libvirtd.sh stops exactly what this script started.
set -euo pipefail

SOCK=/var/run/libvirt/libvirt-sock
STATE=/run/hypervisor-libvirt
mkdir -p "$STATE" /var/run/libvirt /var/log/libvirt

# The QEMU driver runs guests as libvirt-qemu:kvm (/etc/libvirt/qemu.conf). Debian creates them in
# libvirt-daemon-system, which needs systemd; without it libvirtd refuses to start the QEMU driver.
getent group kvm >/dev/null || groupadd --system kvm
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent group libvirt >/dev/null || groupadd --system libvirt
getent passwd libvirt-qemu >/dev/null ||
  useradd --system --gid kvm --groups libvirt-qemu --no-create-home --home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu

# A pid file of ours and a live process: already running (started by us earlier).
running() { [[ -f "$STATE/$1.pid" ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

if ! running virtlogd && ! pgrep -x virtlogd >/dev/null; then
  /usr/sbin/virtlogd -d -p "$STATE/virtlogd.pid"
fi
if ! running libvirtd && ! pgrep -x libvirtd >/dev/null; then
  # -d daemonizes; its pid file is written once the sockets are bound.
  /usr/sbin/libvirtd -d -p "$STATE/libvirtd.pid" 2>>"$STATE/libvirtd.log"
fi
for _ in $(seq 1 300); do
  if [[ -S "$SOCK" ]] && virsh -c qemu:///system version >/dev/null 2>&1; then
    echo "$SOCK"
    exit 0
  fi
  sleep 0.1
done
echo "libvirtd did not answer on $SOCK within 30 s; see $STATE/libvirtd.log and /var/log/libvirt" >&2
exit 1
