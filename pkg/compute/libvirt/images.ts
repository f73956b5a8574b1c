/*
 * The node's image directory and instance disks. A spec names images (base disks, kernels,
 * initrds) relative to the image directory; whatever the name, the file it resolves to (after
 * symlinks) must lie inside that directory: `../../etc/shadow` or a symlink out are refused.
 * Instance disks are qcow2 overlays on a base image, made with qemu-img (no shell: arguments are
 * passed as a vector), and removed with the instance.
 */
import { execFile } from "node:child_process";
import { constants } from "node:fs";
import { access, mkdir, realpath, stat, unlink } from "node:fs/promises";
import { dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import { promisify } from "node:util";
import { DriverError, InvalidSpecError } from "../driver/index.js";

const run = promisify(execFile);

/** Resolves `ref` (field names the spec field, for messages) to a regular file inside imageDir. */
export async function resolveImage(imageDir: string, field: string, ref: string): Promise<string> {
  if (ref.includes("\0")) throw new InvalidSpecError(`${field}: ${JSON.stringify(ref)} holds a NUL byte`);
  let root: string;
  try {
    root = await realpath(imageDir);
  } catch {
    throw new InvalidSpecError(`${field}: image directory ${imageDir} does not exist on this node`);
  }
  const candidate = isAbsolute(ref) ? ref : resolve(root, ref);
  let real: string;
  try {
    real = await realpath(candidate);
  } catch {
    throw new InvalidSpecError(`${field}: ${JSON.stringify(ref)} not found in ${imageDir}`);
  }
  const rel = relative(root, real);
  if (rel === "" || rel.startsWith(`..${sep}`) || rel === ".." || isAbsolute(rel))
    throw new InvalidSpecError(`${field}: ${JSON.stringify(ref)} is outside the image directory ${imageDir}`);
  const st = await stat(real);
  if (!st.isFile()) throw new InvalidSpecError(`${field}: ${JSON.stringify(ref)} is not a file`);
  return real;
}

/** The format qemu-img sees in a base image (qcow2, raw, ...). */
export async function imageFormat(path: string): Promise<{ format: string; virtualSize: number }> {
  const { stdout } = await run("qemu-img", ["info", "--output=json", "-U", "--", path]);
  const info = JSON.parse(stdout) as { format?: string; "virtual-size"?: number };
  if (!info.format) throw new DriverError(`qemu-img could not tell the format of ${path}`);
  return { format: info.format, virtualSize: info["virtual-size"] ?? 0 };
}

/**
 * Creates `overlay` on top of `base` (copy-on-write; the base is never written). diskGiB > 0
 * grows the overlay's virtual size; smaller than the base is refused.
 */
export async function createOverlay(base: string, overlay: string, diskGiB: number): Promise<void> {
  const { format, virtualSize } = await imageFormat(base);
  const size = diskGiB > 0 ? diskGiB * 1024 ** 3 : 0;
  if (size > 0 && size < virtualSize)
    throw new InvalidSpecError(`disk_gib: ${diskGiB} is smaller than the image (${Math.ceil(virtualSize / 1024 ** 3)} GiB)`);
  await mkdir(dirname(overlay), { recursive: true, mode: 0o755 });
  const args = ["create", "-q", "-f", "qcow2", "-F", format, "-b", base, "--", overlay];
  if (size > 0) args.push(String(size));
  try {
    await run("qemu-img", args);
  } catch (e) {
    await unlink(overlay).catch(() => undefined);
    throw new DriverError(`qemu-img create ${overlay}: ${(e as { stderr?: string }).stderr?.trim() || (e as Error).message}`);
  }
}

export async function removeFile(path: string | undefined): Promise<void> {
  if (!path) return;
  await unlink(path).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== "ENOENT") throw e;
  });
}

/**
 * QEMU runs as an unprivileged user (libvirt-qemu): every directory above a disk must let others
 * through. Checked up front so the failure names the directory instead of a QEMU permission error.
 */
export async function checkTraversable(dir: string): Promise<void> {
  for (let d = resolve(dir); ; d = dirname(d)) {
    const st = await stat(d);
    if ((st.mode & 0o001) === 0)
      throw new DriverError(`QEMU (user libvirt-qemu) cannot reach ${dir}: ${d} is not searchable by others (chmod o+x ${d})`);
    if (dirname(d) === d) return;
  }
}

export async function isReadable(path: string): Promise<boolean> {
  return access(path, constants.R_OK).then(
    () => true,
    () => false,
  );
}

export const overlayPath = (stateDir: string, name: string, uid: string) => join(stateDir, "disks", `${name}-${uid}.qcow2`);
