/*
 * The persisted handle of one mock instance: a small versioned JSON file per instance, written
 * atomically (temp file + rename), so an agent killed with -9 and started again finds every
 * instance (Nomad's RecoverTask). Nothing runs: whether an instance is "running" or has "exited"
 * is computed from its timestamps and its run_for, which is why it survives the agent's death.
 *
 *   create ──► created ──start──► running ──(run_for elapses)──► exited(exit_code)
 *                 │                  │
 *                 │ start_error      └──stop──► stopped ──start──► running ...
 *                 ▼
 *              failed
 */
import { randomBytes } from "node:crypto";
import { mkdir, readdir, readFile, rename, unlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { DriverInstance, DriverInstanceSpec, DriverState } from "../driver/index.js";
import { parseBehaviour } from "./config.js";

/** Bump when the file's shape changes; older versions are migrated or rejected on load. */
export const HANDLE_VERSION = 1;

export interface MockHandle {
  version: number;
  spec: DriverInstanceSpec;
  createdAt: number;
  /** Last start; absent until the first start. */
  startedAt?: number;
  /** Set by stop (after startedAt); cleared by start. */
  stoppedAt?: number;
  /** Set when a start failed (start_error); cleared by a successful start. */
  failedMessage?: string;
  failedAt?: number;
  /** Successful starts over the instance's life: evidence of adoption vs re-start in tests. */
  startCount: number;
  /** The cluster id of the ownership mark (absent: marked before marks had one). */
  cluster?: string;
}

/** The instance as the runtime sees it at `now`. */
export function describeHandle(h: MockHandle, now: number): DriverInstance {
  const b = parseBehaviour(h.spec.name, h.spec.config);
  const inst: DriverInstance = {
    name: h.spec.name,
    uid: h.spec.uid,
    state: "created",
    addresses: [syntheticAddress(h.spec.uid)],
    details: { start_count: String(h.startCount) },
  };
  if (h.cluster) inst.cluster = h.cluster;
  if (b.localDisk) inst.localDisk = true;
  if (h.startedAt !== undefined) inst.startedAt = h.startedAt;
  let state: DriverState = "created";
  if (h.failedMessage !== undefined) {
    state = "failed";
    inst.message = h.failedMessage;
    if (h.failedAt !== undefined) inst.finishedAt = h.failedAt;
  } else if (h.startedAt !== undefined) {
    const exitAt = b.runForMs !== undefined ? h.startedAt + b.runForMs : undefined;
    if (h.stoppedAt !== undefined && (exitAt === undefined || h.stoppedAt < exitAt)) {
      state = "stopped";
      inst.finishedAt = h.stoppedAt;
    } else if (exitAt !== undefined && now >= exitAt) {
      state = "exited";
      inst.exitCode = b.exitCode;
      inst.finishedAt = exitAt;
    } else {
      state = "running";
    }
  }
  inst.state = state;
  return inst;
}

/** When a running instance will exit on its own, or undefined. */
export function exitTime(h: MockHandle): number | undefined {
  if (h.startedAt === undefined || h.stoppedAt !== undefined || h.failedMessage !== undefined) return undefined;
  const b = parseBehaviour(h.spec.name, h.spec.config);
  return b.runForMs !== undefined ? h.startedAt + b.runForMs : undefined;
}

export const handlePath = (dir: string, name: string) => join(dir, `${name}.json`);

export async function readHandle(dir: string, name: string): Promise<MockHandle | undefined> {
  let text: string;
  try {
    text = await readFile(handlePath(dir, name), "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw e;
  }
  const h = JSON.parse(text) as MockHandle;
  if (h.version !== HANDLE_VERSION) throw new Error(`mock handle ${name} has version ${h.version}; this driver reads ${HANDLE_VERSION}`);
  return h;
}

/**
 * Temp file + rename: a reader (or an agent started after a kill -9) sees the old or the new
 * file, never half of one. No fsync: kill -9 keeps the page cache, and this is a test driver.
 */
export async function writeHandle(dir: string, h: MockHandle): Promise<void> {
  const tmp = join(dir, `.${h.spec.name}.${randomBytes(4).toString("hex")}.tmp`);
  await writeFile(tmp, JSON.stringify(h));
  try {
    await rename(tmp, handlePath(dir, h.spec.name));
  } catch (e) {
    await unlink(tmp).catch(() => undefined);
    throw e;
  }
}

export async function removeHandle(dir: string, name: string): Promise<void> {
  await unlink(handlePath(dir, name)).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== "ENOENT") throw e;
  });
}

/** Where a mock driver keeps its handles. */
export interface HandleStore {
  /** Prepares the store (creates the directory). */
  open(): Promise<void>;
  read(name: string): Promise<MockHandle | undefined>;
  write(h: MockHandle): Promise<void>;
  remove(name: string): Promise<void>;
  names(): Promise<string[]>;
}

/** One JSON file per instance in `dir`: survives the agent's death (adoption). */
export function fileHandles(dir: string): HandleStore {
  return {
    open: async () => void (await mkdir(dir, { recursive: true })),
    read: (name) => readHandle(dir, name),
    write: (h) => writeHandle(dir, h),
    remove: (name) => removeHandle(dir, name),
    names: async () => (await readdir(dir)).filter((f) => f.endsWith(".json") && !f.startsWith(".")).map((f) => f.slice(0, -5)),
  };
}

/**
 * Handles in memory, gone with the driver object: for the scale bench's simulated nodes, whose
 * files would be on their own machines' disks, not on the control plane's. Copies in and out, as
 * a file would, so a caller changing a handle changes nothing until it writes it; shallow copies,
 * as the driver changes only a handle's own fields (times, counts), never its spec after create.
 */
export function memoryHandles(): HandleStore {
  const m = new Map<string, MockHandle>();
  return {
    open: () => Promise.resolve(),
    read: (name) => {
      const h = m.get(name);
      return Promise.resolve(h ? { ...h } : undefined);
    },
    write: (h) => Promise.resolve(void m.set(h.spec.name, { ...h })),
    remove: (name) => Promise.resolve(void m.delete(name)),
    names: () => Promise.resolve([...m.keys()]),
  };
}

/** A stable fake address in 10.88.0.0/16 derived from the uid, so status has something to show. */
function syntheticAddress(uid: string): string {
  let h = 0;
  for (const c of uid) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return `10.88.${(h >>> 8) & 0xff}.${(h & 0xfe) + 1}`;
}
