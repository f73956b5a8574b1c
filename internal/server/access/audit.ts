/*
 * The audit log: one event per mutating call, console ticket, log stream, login (WhoAmI with
 * credentials) and refused call, appended as a JSON line to this server's audit file (0600) and
 * rotated by size (audit.log, audit.log.1, ... audit.log.<max-files - 1>). Levels as Kubernetes'
 * audit policy: none, metadata (who, what, when, the decision and result), request (also the
 * request, secret environment values redacted).
 *
 *   call ──► decided ──deny──► event(deny, code) ──► refused
 *              └─allow─► read-only? ──► run (no event)
 *                        └─ audited ─► file unwritable? ──► unavailable (fail closed), no run
 *                                      └─► run ──► event(allow, result)
 *
 * Fail closed: while the file cannot be written, audited calls are refused (unavailable) rather
 * than run unrecorded; reads go on. Each refused call retries opening the file, so the log heals
 * as soon as the disk does.
 *
 * Events are appended as the call answers, not before: a write takes every event of the moment
 * (group commit), and the answer does not wait for it (Kubernetes' batch mode; waiting cost a
 * tenth of the creates a second, bench/access.ts). A server that dies within that moment can lose
 * its last events; a write that fails makes the next audited calls fail closed.
 */
import { randomUUID } from "node:crypto";
import { mkdir, open, rename, stat, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { fromJsonString } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { AuditEventSchema, type AuditEvent } from "../../../api/gen/hypervisor/v1/audit_pb.js";
import type { Logger } from "../../../pkg/log/index.js";

export const AUDIT_LEVELS = ["none", "metadata", "request"] as const;
export type AuditLevel = (typeof AUDIT_LEVELS)[number];
export const AUDIT_FILE = "audit.log";

export interface AuditOptions {
  dir: string;
  level: AuditLevel;
  /** Rotate when the file passes this size (default 64 MiB). */
  maxFileBytes?: number;
  /** Files kept, the current one included (default 5). */
  maxFiles?: number;
  log?: Logger;
}

/** An event's fields but its id and time (the log sets those). */
export interface AuditEventInit {
  user: string;
  groups?: string[];
  tokenId: string;
  sourceAddress: string;
  method: string;
  verb: string;
  resource: string;
  project?: string;
  decision: "allow" | "deny";
  result: string;
  message: string;
  requestJson?: string;
}

export class AuditLog {
  readonly level: AuditLevel;
  private file: FileHandle | undefined;
  private size = 0;
  /** The flush in progress (or the last one): list() and close() wait for it. */
  private tail: Promise<void> = Promise.resolve();
  /** The last write's failure; undefined while the file is writable. */
  failure: string | undefined;

  constructor(private readonly opts: AuditOptions) {
    this.level = opts.level;
  }

  get path(): string {
    return join(this.opts.dir, AUDIT_FILE);
  }

  /** Opens (or reopens) the file; false, with `failure` set, when it cannot be. */
  async ready(): Promise<boolean> {
    if (this.level === "none") return true;
    if (this.file && !this.failure) return true;
    try {
      await this.file?.close().catch(() => undefined);
      this.file = undefined;
      await mkdir(this.opts.dir, { recursive: true, mode: 0o700 });
      this.file = await open(this.path, "a", 0o600);
      this.size = (await this.file.stat()).size;
      this.failure = undefined;
      return true;
    } catch (e) {
      this.fail(e);
      return false;
    }
  }

  /** Appends the event (an id and the time added). Never throws: a failure is kept in `failure`. */
  write(init: AuditEventInit): Promise<void> {
    if (this.level === "none") return Promise.resolve();
    // The event in protobuf's JSON form (what list() parses back), built directly: the reflective
    // encoder would cost more than the rest of an audited call's bookkeeping.
    const fields: Record<string, unknown> = { id: randomUUID(), time: new Date().toISOString() };
    for (const [k, v] of Object.entries(init) as [string, unknown][]) {
      if (k === "requestJson" && this.level !== "request") continue;
      if (v === "" || v === undefined || (Array.isArray(v) && v.length === 0)) continue;
      fields[k] = v;
    }
    const line = `${JSON.stringify(fields)}\n`;
    return new Promise<void>((resolve) => {
      this.pending.push({ line, done: resolve });
      if (!this.flushing) this.tail = this.flush();
    });
  }

  /** Events waiting for the write in progress: the next write takes them all (group commit). */
  private pending: { line: string; done: () => void }[] = [];
  private flushing = false;

  /** Writes what is pending, one append per batch, until nothing is; each event's promise resolves once its batch is written (or failed). */
  private async flush(): Promise<void> {
    this.flushing = true;
    try {
      while (this.pending.length > 0) {
        const batch = this.pending;
        this.pending = [];
        const text = batch.map((b) => b.line).join("");
        try {
          if (!(await this.ready())) throw new Error(this.failure);
          if (this.size + text.length > (this.opts.maxFileBytes ?? 64 * 1024 * 1024) && this.size > 0) await this.rotate();
          await this.file!.appendFile(text, "utf8");
          this.size += Buffer.byteLength(text);
        } catch (e) {
          this.fail(e);
          // The events are not lost from sight: they go to the server's log instead.
          for (const b of batch)
            this.opts.log?.error({ audit: JSON.parse(b.line) as unknown }, "audit event not written to the audit file");
        }
        for (const b of batch) b.done();
      }
    } finally {
      this.flushing = false;
    }
  }

  private async rotate(): Promise<void> {
    await this.file?.close();
    this.file = undefined;
    const keep = this.opts.maxFiles ?? 5;
    for (let i = keep - 1; i >= 1; i--) {
      const from = i === 1 ? this.path : `${this.path}.${i - 1}`;
      await rename(from, `${this.path}.${i}`).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== "ENOENT") throw e;
      });
    }
    this.file = await open(this.path, "a", 0o600);
    this.size = 0;
  }

  private fail(e: unknown): void {
    const message = e instanceof Error ? e.message : String(e);
    if (this.failure === undefined)
      this.opts.log?.error({ err: message, file: this.path }, "audit file cannot be written: audited calls are refused");
    this.failure = message;
  }

  /** Events newest first, from every file kept, at most `limit`. */
  async list(f: { sinceMs?: number; user?: string; limit: number }): Promise<AuditEvent[]> {
    await this.tail;
    const out: AuditEvent[] = [];
    const keep = this.opts.maxFiles ?? 5;
    // Read from the newest event back, a chunk at a time, and only as far as the answer needs
    // (or MAX_SCAN_BYTES): a call never reads every file whole.
    let budget = MAX_SCAN_BYTES;
    for (let i = 0; i < keep && out.length < f.limit && budget > 0; i++) {
      const path = i === 0 ? this.path : `${this.path}.${i}`;
      for await (const line of linesBackward(
        path,
        () => budget,
        (n) => (budget -= n),
      )) {
        let e: AuditEvent;
        try {
          e = fromJsonString(AuditEventSchema, line, { ignoreUnknownFields: true });
        } catch {
          continue; // a torn last line after a crash
        }
        if (f.sinceMs !== undefined && e.time && timestampMs(e.time) < f.sinceMs) return out;
        if (f.user && e.user !== f.user) continue;
        out.push(e);
        if (out.length >= f.limit) return out;
      }
    }
    return out;
  }

  /** Resolves once every event written so far is in the file (or has failed). */
  async flushed(): Promise<void> {
    await this.tail;
  }

  async close(): Promise<void> {
    await this.tail;
    await this.file?.close().catch(() => undefined);
    this.file = undefined;
  }

  /** The file's size now (tests). */
  async fileSize(): Promise<number> {
    return (await stat(this.path).catch(() => ({ size: 0 }))).size;
  }
}

/** A request as JSON with every secretEnv map's values redacted, for level "request". */
export function redactedJson(json: unknown): string {
  const walk = (v: unknown): unknown => {
    if (Array.isArray(v)) return (v as unknown[]).map(walk);
    if (v && typeof v === "object") {
      const o: Record<string, unknown> = {};
      for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
        o[k] = k === "secretEnv" && x && typeof x === "object" ? Object.fromEntries(Object.keys(x).map((n) => [n, "<redacted>"])) : walk(x);
      }
      return o;
    }
    return v;
  };
  return JSON.stringify(walk(json));
}

/** The most bytes of events one list reads (the newest; older ones are in the files). */
export const MAX_SCAN_BYTES = 64 * 1024 * 1024;
const CHUNK = 256 * 1024;

/**
 * The lines of `path`, last first, read backwards in chunks while `left()` is positive (each
 * chunk read is reported to `spent`). A missing file has none.
 */
export async function* linesBackward(path: string, left: () => number, spent: (n: number) => void): AsyncGenerator<string> {
  let fh;
  try {
    fh = await open(path, "r");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
    throw e;
  }
  try {
    let pos = (await fh.stat()).size;
    let rest = Buffer.alloc(0);
    while (pos > 0 && left() > 0) {
      const n = Math.min(CHUNK, pos);
      pos -= n;
      const buf = Buffer.alloc(n);
      await fh.read(buf, 0, n, pos);
      spent(n);
      const joined = Buffer.concat([buf, rest]);
      let end = joined.length;
      for (let i = joined.length - 1; i >= 0; i--) {
        if (joined[i] !== 0x0a) continue;
        if (i + 1 < end) yield joined.subarray(i + 1, end).toString("utf8");
        end = i;
      }
      rest = joined.subarray(0, end);
    }
    if (pos === 0 && rest.length > 0) yield rest.toString("utf8");
  } finally {
    await fh.close();
  }
}
