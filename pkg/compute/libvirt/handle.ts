/*
 * The persisted handle of one libvirt instance: what libvirt does not remember for us. The
 * domain itself (persistent definition, metadata with the uid) is the source of truth for
 * existence and state; the handle adds our side of the story, written atomically:
 *
 *   startedAt       when we last started it (adoption must not look like a restart)
 *   stopRequested   whether a shutoff was our stop() or the guest's own poweroff (exited)
 *   finishedAt      when it was first seen shut off
 *   disk            the qcow2 overlay we created, removed with the instance
 */
import { randomBytes } from "node:crypto";
import { mkdir, open, readFile, rename, unlink } from "node:fs/promises";
import { join } from "node:path";

export const HANDLE_VERSION = 1;

export interface LibvirtHandle {
  version: number;
  name: string;
  uid: string;
  createdAt: number;
  startedAt?: number;
  finishedAt?: number;
  stopRequested: boolean;
  disk?: string;
  serialLog: string;
}

const path = (dir: string, name: string) => join(dir, `${name}.json`);

export async function readHandle(dir: string, name: string): Promise<LibvirtHandle | undefined> {
  let text: string;
  try {
    text = await readFile(path(dir, name), "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw e;
  }
  const h = JSON.parse(text) as LibvirtHandle;
  if (h.version !== HANDLE_VERSION) throw new Error(`libvirt handle ${name} has version ${h.version}; this driver reads ${HANDLE_VERSION}`);
  return h;
}

/** Temp file, fsync, rename: after a crash the old or the new handle, never half of one. */
export async function writeHandle(dir: string, h: LibvirtHandle): Promise<void> {
  await mkdir(dir, { recursive: true });
  const tmp = join(dir, `.${h.name}.${randomBytes(4).toString("hex")}.tmp`);
  const f = await open(tmp, "w", 0o600);
  try {
    await f.writeFile(JSON.stringify(h));
    await f.sync();
  } finally {
    await f.close();
  }
  try {
    await rename(tmp, path(dir, h.name));
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
}

export async function removeHandle(dir: string, name: string): Promise<void> {
  await unlink(path(dir, name)).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== "ENOENT") throw e;
  });
}
