#!/usr/bin/env bash
# Builds the small OCI image the containerd tests run: Debian's busybox-static with every applet
# as a symlink, a minimal /etc/passwd and /etc/group, and /tmp. Usage:
#
#   scripts/build-busybox-image.sh [OUT_FILE]   (default /var/cache/hypervisor/images/busybox-oci.tar)
#
# OUT_FILE is an OCI image layout as a tar (oci-layout, index.json, blobs/sha256/*) that
# `ctr images import` and the Images/Content API accept; the image is named hypervisor.dev/busybox:test.
#
#   busybox + etc ──tar (fixed mtime/owner/order)──► layer.tar ──gzip -n──► layer blob
#                                    │ sha256 = diff_id          │ sha256 = layer digest
#                                    ▼                           ▼
#                                 config ───────────────────► manifest ──► index.json (ref names)
#
# Reproducible: fixed mtimes, owners and ordering and gzip -n, so the same busybox gives the same
# digests on every machine. Prints exactly one line on stdout, the output path. A stamp (hash of
# this script and of /bin/busybox) marks a finished build; a rerun with the same stamp does nothing.
set -euo pipefail

OUT=${1:-/var/cache/hypervisor/images/busybox-oci.tar}
REF=hypervisor.dev/busybox:test
BUSYBOX=/bin/busybox

log() { echo "build-busybox-image: $*" >&2; }
die() { log "error: $*"; exit 1; }

# /bin/busybox may be the dynamically linked `busybox` package, which would not run in an image
# without libc.
[[ "$(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null)" == "install ok installed" && -x "$BUSYBOX" ]] ||
  die "busybox-static is not installed; run scripts/install-deps.sh"

case "$(dpkg --print-architecture)" in
  amd64) ARCH=amd64 ;;
  arm64) ARCH=arm64 ;;
  *) die "no OCI architecture name for Debian architecture $(dpkg --print-architecture)" ;;
esac

STAMP=$({
  sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1
  sha256sum "$BUSYBOX" | cut -d' ' -f1
} | sha256sum | cut -d' ' -f1)

mkdir -p "$(dirname "$OUT")"
OUT="$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")"
built() { [[ -f "$OUT" && "$(cat "$OUT.stamp" 2>/dev/null)" == "$STAMP" ]]; }
if built; then echo "$OUT"; exit 0; fi

# One builder at a time (parallel test processes); the loser finds the build done.
exec 9>"$OUT.lock"
flock 9
if built; then echo "$OUT"; exit 0; fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# A tar whose bytes depend only on the tree's names, contents and modes; entries without "./".
det_tar() { # dir, output file
  (cd "$1" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort) |
    tar -C "$1" --no-recursion --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu -cf "$2" -T -
}
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
blob() { # file -> moves it into the layout as blobs/sha256/<digest>, prints the digest
  local d
  d=$(sha "$1")
  mv "$1" "$WORK/layout/blobs/sha256/$d"
  echo "$d"
}

# --- the layer ----------------------------------------------------------------------------------
ROOT="$WORK/rootfs"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root}
install -m 0755 "$BUSYBOX" "$ROOT/bin/busybox"
while read -r applet; do
  [[ -z "$applet" || "$applet" == bin/busybox || -e "$ROOT/$applet" ]] && continue
  ln -s /bin/busybox "$ROOT/$applet"
done < <("$BUSYBOX" --list-full)
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$ROOT/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$ROOT/etc/group"
# The umask must not leak into the layer.
find "$ROOT" -type d -exec chmod 0755 {} +
chmod 0644 "$ROOT/etc/passwd" "$ROOT/etc/group"
chmod 0700 "$ROOT/root"
chmod 1777 "$ROOT/tmp"

mkdir -p "$WORK/layout/blobs/sha256"
det_tar "$ROOT" "$WORK/layer.tar"
DIFF_ID=$(sha "$WORK/layer.tar")
gzip -9n "$WORK/layer.tar"
LAYER_SIZE=$(size "$WORK/layer.tar.gz")
LAYER=$(blob "$WORK/layer.tar.gz")

# --- config, manifest, index (written by hand: byte-stable, and no jq needed) -------------------
printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"scripts/build-busybox-image.sh"}]}' \
  "$ARCH" "$DIFF_ID" >"$WORK/config.json"
CONFIG_SIZE=$(size "$WORK/config.json")
CONFIG=$(blob "$WORK/config.json")

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d}]}' \
  "$CONFIG" "$CONFIG_SIZE" "$LAYER" "$LAYER_SIZE" >"$WORK/manifest.json"
MANIFEST_SIZE=$(size "$WORK/manifest.json")
MANIFEST=$(blob "$WORK/manifest.json")

# containerd names the imported image from io.containerd.image.name; other tools read the OCI one.
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "$MANIFEST" "$MANIFEST_SIZE" "$ARCH" "$REF" "$REF" >"$WORK/layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$WORK/layout/oci-layout"
find "$WORK/layout" -type d -exec chmod 0755 {} +
find "$WORK/layout" -type f -exec chmod 0644 {} +

det_tar "$WORK/layout" "$WORK/image.tar"
mv -f "$WORK/image.tar" "$OUT"
echo "$STAMP" >"$OUT.stamp"
log "built $OUT ($(du -h "$OUT" | cut -f1)), manifest sha256:$MANIFEST"
echo "$OUT"
