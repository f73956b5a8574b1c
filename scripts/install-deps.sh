#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian machine, skipping whatever is already there.
#   --node-only   only the npm packages
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
if [[ "${1:-}" != "--node-only" ]]; then
  command -v etcd >/dev/null 2>&1 || need_apt+=(etcd-server)
  command -v etcdctl >/dev/null 2>&1 || need_apt+=(etcd-client)
  # libvirt + QEMU (the libvirt driver and its tests), and what builds the test guest's initramfs.
  [[ -x /usr/sbin/libvirtd ]] || need_apt+=(libvirt-daemon libvirt-daemon-driver-qemu)
  command -v virsh >/dev/null 2>&1 || need_apt+=(libvirt-clients)
  command -v qemu-system-x86_64 >/dev/null 2>&1 || need_apt+=(qemu-system-x86)
  command -v qemu-img >/dev/null 2>&1 || need_apt+=(qemu-utils)
  # containerd + runc (the containerd driver and its tests); busybox-static also fills their test image.
  command -v containerd >/dev/null 2>&1 || need_apt+=(containerd)
  command -v runc >/dev/null 2>&1 || need_apt+=(runc)
  [[ -x /bin/busybox ]] || need_apt+=(busybox-static)
  command -v cpio >/dev/null 2>&1 || need_apt+=(cpio)
  command -v curl >/dev/null 2>&1 || need_apt+=(curl)
  # The UI's browser tests (playwright-core drives Debian's Chromium) and the console benchmark's
  # reference proxy.
  [[ -x /usr/bin/chromium ]] || need_apt+=(chromium)
  command -v websockify >/dev/null 2>&1 || need_apt+=(websockify)
fi
if ((${#need_apt[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: missing ${need_apt[*]}; run as root or install them with apt-get" >&2
    exit 1
  fi
  echo "install-deps: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# npm ci when the lock changed since the last install (or nothing is installed yet).
if [[ ! -f node_modules/.package-lock.json ]] || [[ package-lock.json -nt node_modules/.package-lock.json ]] || [[ package.json -nt node_modules/.package-lock.json ]]; then
  echo "install-deps: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  touch node_modules/.package-lock.json
fi
