#!/usr/bin/env bash
# Builds the small test guest for QEMU/libvirt tests: a Debian kernel (vmlinuz) and a busybox
# initramfs (initrd.img) whose /init is scripts/guest/init. Usage:
#
#   scripts/build-test-guest.sh [CACHE_DIR]     (default /var/cache/hypervisor/guest)
#
# Prints exactly one line on stdout, the cache directory; everything else goes to stderr.
# Idempotent: a stamp (hash of this script and scripts/guest/*) marks a finished build, and a rerun
# with the same stamp does nothing. The kernel .deb stays in the cache, so a rebuild after an edit
# of the init script downloads nothing. QEMU runs as libvirt-qemu, so the cache is world-readable.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GUEST_SRC="$HERE/guest"
CACHE=${1:-/var/cache/hypervisor/guest}
# Modules the guest loads (with their dependency closure), when the kernel has them as modules:
# the balloon and the NIC over virtio-pci, and evdev + button for the ACPI power button.
WANTED_MODULES=(virtio_pci virtio_balloon virtio_net evdev button)

log() { echo "build-test-guest: $*" >&2; }
die() { log "error: $*"; exit 1; }

stamp() {
  local f
  {
    sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1
    for f in "$GUEST_SRC"/*; do
      [[ -f "$f" ]] && echo "$(basename "$f") $(sha256sum "$f" | cut -d' ' -f1)"
    done
  } | sha256sum | cut -d' ' -f1
}

built() { [[ -f "$CACHE/vmlinuz" && -f "$CACHE/initrd.img" && "$(cat "$CACHE/stamp" 2>/dev/null)" == "$STAMP" ]]; }

STAMP=$(stamp)
# The directories we create get o+rx at the end (existing ones are left as they are).
NEW_DIRS=()
d=$CACHE
while [[ ! -e "$d" ]]; do NEW_DIRS+=("$d"); d=$(dirname "$d"); done
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
if built; then echo "$CACHE"; exit 0; fi

# One builder at a time (parallel test processes); the loser finds the build done.
exec 9>"$CACHE/.lock"
flock 9
if built; then echo "$CACHE"; exit 0; fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# apt-get wants its lock for update; another apt-get may be installing. Retry for a while.
apt_update() {
  local i
  for i in $(seq 1 60); do
    if apt-get update -qq >&2; then return 0; fi
    log "apt-get update failed (lock held?), retry $i"
    sleep 5
  done
  return 1
}

# The newest linux-image-6.1.0-N-amd64 with an install candidate (not the linux-image-amd64
# metapackage: it only depends on one of these).
pick_kernel() {
  local name names policy
  names=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' 2>/dev/null | cut -d' ' -f1 | sort -t- -k4,4nr)
  for name in $names; do
    policy=$(apt-cache policy "$name" 2>/dev/null)
    if [[ "$policy" =~ Candidate:\ [0-9] ]]; then echo "$name"; return; fi
  done
}

apt_download() { # package, destination dir
  local as=()
  # apt-get download as root drops to _apt, which cannot write into a root-only directory.
  [[ $(id -u) == 0 ]] && as=(-o APT::Sandbox::User=root)
  (cd "$2" && apt-get download -q "${as[@]}" "$1" >&2)
}

# --- kernel ------------------------------------------------------------------------------------
DEB=$(find "$CACHE" -maxdepth 1 -name 'linux-image-6.1.0-*-amd64_*.deb' | sort -V | tail -n1)
if [[ -z "$DEB" ]]; then
  PKG=$(pick_kernel)
  if [[ -z "$PKG" ]]; then
    log "no linux-image-6.1.0-N-amd64 candidate, running apt-get update"
    apt_update || die "apt-get update failed"
    PKG=$(pick_kernel)
  fi
  [[ -n "$PKG" ]] || die "no linux-image-6.1.0-N-amd64 package available"
  log "downloading $PKG"
  apt_download "$PKG" "$WORK"
  DEB=$(find "$WORK" -maxdepth 1 -name "${PKG}_*.deb" | head -n1)
  [[ -n "$DEB" ]] || die "apt-get download $PKG produced no .deb"
  mv "$DEB" "$CACHE/"
  DEB="$CACHE/$(basename "$DEB")"
fi
log "kernel package: $(basename "$DEB")"
dpkg -x "$DEB" "$WORK/kernel"
VMLINUZ=$(find "$WORK/kernel/boot" -name 'vmlinuz-*' | head -n1)
[[ -n "$VMLINUZ" ]] || die "no boot/vmlinuz-* in $DEB"
KVER=${VMLINUZ##*/vmlinuz-}
MODDIR="$WORK/kernel/lib/modules/$KVER"
[[ -d "$MODDIR/kernel" ]] || die "no lib/modules/$KVER/kernel in $DEB"

# --- initramfs tree ----------------------------------------------------------------------------
ROOT="$WORK/root"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,lib/modules}

# busybox-static: the installed one, or its .deb (kept in the cache like the kernel).
if [[ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null)" == "install ok installed" && -x /bin/busybox ]]; then
  BUSYBOX=/bin/busybox
else
  BBDEB=$(find "$CACHE" -maxdepth 1 -name 'busybox-static_*.deb' | head -n1)
  if [[ -z "$BBDEB" ]]; then
    log "downloading busybox-static"
    apt_download busybox-static "$WORK"
    BBDEB=$(find "$WORK" -maxdepth 1 -name 'busybox-static_*.deb' | head -n1)
    [[ -n "$BBDEB" ]] || die "apt-get download busybox-static produced no .deb"
    mv "$BBDEB" "$CACHE/"
    BBDEB="$CACHE/$(basename "$BBDEB")"
  fi
  dpkg -x "$BBDEB" "$WORK/busybox"
  BUSYBOX="$WORK/busybox/bin/busybox"
fi
install -m 0755 "$BUSYBOX" "$ROOT/bin/busybox"
while read -r applet; do
  [[ -z "$applet" || "$applet" == bin/busybox || -e "$ROOT/$applet" ]] && continue
  ln -s /bin/busybox "$ROOT/$applet"
done < <("$ROOT/bin/busybox" --list-full)

# Modules: the wanted ones that are modules (not built in), with their dependency closure from
# each module's own "depends=" (the .deb ships no modules.dep: depmod runs at install time),
# dependencies first. Compressed modules (.ko.xz/.zst) are stored decompressed.
declare -A VISITED=()
ORDER=()
mod_file() { # module name -> path of its .ko* in the extracted tree, empty if none
  find "$MODDIR/kernel" \( -name "$1.ko*" -o -name "${1//_/-}.ko*" \) | head -n1
}
ko_plain() { # path -> uncompressed module on stdout
  case "$1" in
    *.ko.xz) xz -dc "$1" ;;
    *.ko.zst) zstd -dcq "$1" ;;
    *.ko.gz) gzip -dc "$1" ;;
    *) cat "$1" ;;
  esac
}
builtin_module() { grep -qE "/${1}\.ko\$|/${1//_/-}\.ko\$" "$MODDIR/modules.builtin" 2>/dev/null; }
add_module() {
  local n=$1 f deps d
  [[ -n "${VISITED[$n]:-}" ]] && return 0
  VISITED[$n]=1
  if builtin_module "$n"; then log "module $n: built in"; return 0; fi
  f=$(mod_file "$n")
  if [[ -z "$f" ]]; then log "module $n: not in this kernel, skipped"; return 0; fi
  deps=$(ko_plain "$f" | tr '\0' '\n' | grep -a '^depends=' | head -n1 | cut -d= -f2)
  for d in ${deps//,/ }; do add_module "$d"; done
  ko_plain "$f" >"$ROOT/lib/modules/$n.ko"
  ORDER+=("$n")
}
for m in "${WANTED_MODULES[@]}"; do add_module "$m"; done
# net_failover/failover come in via virtio_net's depends; insmod order = this file.
printf '%s\n' "${ORDER[@]}" >"$ROOT/lib/modules/load-order"
log "modules (load order): ${ORDER[*]:-none}"

install -m 0755 "$GUEST_SRC/init" "$ROOT/init"
echo "$KVER" >"$ROOT/etc/kernel-release"

# --- outputs -----------------------------------------------------------------------------------
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | gzip -9n >"$WORK/initrd.img"
cp "$VMLINUZ" "$WORK/vmlinuz"
chmod 0644 "$WORK/vmlinuz" "$WORK/initrd.img"
mv -f "$WORK/vmlinuz" "$CACHE/vmlinuz"
mv -f "$WORK/initrd.img" "$CACHE/initrd.img"
echo "$KVER" >"$CACHE/kernel-release"
echo "$STAMP" >"$CACHE/stamp"
# QEMU (user libvirt-qemu) must reach the files: o+rx on the cache and the parents we created.
chmod -R o+rX "$CACHE"
for d in "${NEW_DIRS[@]}"; do chmod o+rx "$d"; done
log "built $CACHE/vmlinuz ($KVER) and $CACHE/initrd.img ($(du -h "$CACHE/initrd.img" | cut -f1))"
echo "$CACHE"
