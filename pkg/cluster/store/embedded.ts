/*
 * EmbeddedStore: the Store contract in-process, for a one-machine control plane (the k3s/kine
 * idea). Same semantics as etcd where the control plane can tell the difference: one global
 * revision bumped once per write transaction, createRevision/modRevision/version per key, watch
 * history kept in memory, leases with TTLs.
 *
 *   write ──► [queue: one at a time] ──► evaluate compares ──► append record to wal.log
 *                                                              (length, crc32, json; fdatasync)
 *                                        ──► apply to memory ──► history ──► watchers
 *
 *   open(dir) ──► snapshot.json (state at revision S) ──► replay wal.log records
 *                 (a torn or corrupt tail is cut off: it was never acknowledged)
 *   every `snapshotEvery` records ──► write snapshot.json (tmp, fsync, rename) ──► truncate wal.log
 *
 * A write is acknowledged only after its record is on disk, and applied to memory only then, so
 * no reader ever sees state that a crash could take back. History survives a restart as far back
 * as the log goes; older watches get CompactedError and re-list, as they would against etcd.
 * Leases are persisted with their TTL and, as in etcd, come back after a restart with a full TTL.
 */
import { existsSync } from "node:fs";
import { chmod, mkdir, open, readFile, rename, rm, writeFile, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import { logger } from "../../log/index.js";
import { CompactedError, LeaseNotFoundError, StoreError, StoreUnavailableError } from "./errors.js";
import type {
  Compare,
  KeyValue,
  Op,
  Options,
  RangeOptions,
  RangeResult,
  Store,
  TxnResult,
  WatchBatch,
  WatchEvent,
  WatchOptions,
} from "./store.js";

const log = logger("embedded-store");

const WAL = "wal.log";
const SNAPSHOT = "snapshot.json";
const LOCK = "LOCK";
const HEADER = 8; // u32 payload length + u32 crc32 of the payload, little endian

export interface EmbeddedStoreOptions {
  /** Revisions of watch history kept in memory (default 10 000); older watches get CompactedError. */
  historyLimit?: number;
  /** Log records between snapshots (default 10 000). */
  snapshotEvery?: number;
  /** fdatasync every write before acknowledging it (default true). Off only for throwaway data. */
  sync?: boolean;
  /** How often expired leases are looked for, in ms (default 100). */
  leaseCheckMs?: number;
}

/** Opens (creating if needed) a store persisted in dir. Only one open store per directory. */
export async function openEmbeddedStore(dir: string, opts: EmbeddedStoreOptions = {}): Promise<EmbeddedStore> {
  const store = new EmbeddedStore(dir, opts);
  await store.load();
  return store;
}

interface Entry {
  value: Uint8Array;
  createRevision: number;
  modRevision: number;
  version: number;
  lease: string;
}

interface Lease {
  ttl: number;
  /** performance.now() deadline. */
  deadline: number;
  keys: Set<string>;
  expiring: boolean;
}

/** One change as logged: a put (value base64) or a delete. */
type Change = { k: string; v: string; l: string } | { k: string; d: 1 };

/** One log record. Every field is optional so that one record can carry what one write did. */
interface LogRecord {
  rev?: number;
  ch?: Change[];
  grant?: { id: string; ttl: number };
  revoke?: string[];
  compact?: number;
  nextLease?: number;
}

interface SnapshotFile {
  format: 1;
  revision: number;
  firstKept: number;
  nextLease: number;
  kvs: { k: string; v: string; c: number; m: number; ver: number; l: string }[];
  leases: { id: string; ttl: number }[];
}

interface Watcher {
  prefix: string;
  queue: WatchBatch[];
  wake: (() => void) | undefined;
}

/** Directories held by an open store in this process: a second open of one is a bug. */
const openDirs = new Set<string>();

export class EmbeddedStore implements Store {
  readonly kind = "embedded";

  private readonly kvs = new Map<string, Entry>();
  private readonly leases = new Map<string, Lease>();
  private rev = 0;
  /** Smallest revision a watch may start from. */
  private firstKept = 1;
  private nextLease = 1;
  /** One batch per revision, oldest first, revisions >= firstKept. */
  private history: WatchBatch[] = [];
  private readonly watchers = new Set<Watcher>();
  private wal: FileHandle | undefined;
  private walRecords = 0;
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly historyLimit: number;
  private readonly snapshotEvery: number;
  private readonly sync: boolean;
  private readonly leaseCheckMs: number;

  /** Use openEmbeddedStore: construction alone does not load the data. */
  constructor(
    readonly dir: string,
    opts: EmbeddedStoreOptions = {},
  ) {
    this.historyLimit = opts.historyLimit ?? 10_000;
    this.snapshotEvery = opts.snapshotEvery ?? 10_000;
    this.sync = opts.sync ?? true;
    this.leaseCheckMs = opts.leaseCheckMs ?? 100;
  }

  // ---- lifecycle --------------------------------------------------------------------------------

  /** @internal Loads snapshot and log; called once by openEmbeddedStore. */
  async load(): Promise<void> {
    // The store holds every secret the cluster has: readable by its owner only, even if an older
    // version or a umask made it wider.
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    await chmod(this.dir, 0o700);
    for (const f of [SNAPSHOT, WAL]) await chmod(join(this.dir, f), 0o600).catch(() => undefined);
    await this.lock();
    try {
      const snapRev = await this.loadSnapshot();
      await this.replayWal(snapRev);
      this.wal = await open(join(this.dir, WAL), "a", 0o600);
    } catch (e) {
      await this.unlock();
      throw e;
    }
    // Leases come back with a full TTL: the time the store was down does not count (as etcd).
    const now = performance.now();
    for (const l of this.leases.values()) l.deadline = now + l.ttl * 1000;
    this.timer = setInterval(() => this.expireLeases(), this.leaseCheckMs);
    this.timer.unref();
    log.debug({ dir: this.dir, revision: this.rev, keys: this.kvs.size, leases: this.leases.size }, "store opened");
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    // Let writes already queued finish (they were accepted), then release the file.
    await this.queue.catch(() => undefined);
    for (const w of this.watchers) w.wake?.();
    await this.wal?.close();
    this.wal = undefined;
    await this.unlock();
  }

  private async lock(): Promise<void> {
    if (openDirs.has(this.dir)) throw new StoreError(`store directory ${this.dir} is already open in this process`);
    const path = join(this.dir, LOCK);
    try {
      const pid = Number((await readFile(path, "utf8")).trim());
      // A lock left by this process (a store never closed) or by a dead one is stale.
      if (pid && pid !== process.pid && processAlive(pid)) {
        throw new StoreError(`store directory ${this.dir} is locked by running process ${pid}`);
      }
    } catch (e) {
      if (e instanceof StoreError) throw e;
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
    }
    await writeFile(path, `${process.pid}\n`, { mode: 0o600 });
    openDirs.add(this.dir);
  }

  private async unlock(): Promise<void> {
    openDirs.delete(this.dir);
    await rm(join(this.dir, LOCK), { force: true });
  }

  private async loadSnapshot(): Promise<number> {
    const path = join(this.dir, SNAPSHOT);
    if (!existsSync(path)) return 0;
    const snap = JSON.parse(await readFile(path, "utf8")) as SnapshotFile;
    if (snap.format !== 1) throw new StoreError(`unknown snapshot format ${String(snap.format)} in ${path}`);
    this.rev = snap.revision;
    // History before the snapshot is gone; the log after it is replayed into history.
    this.firstKept = Math.max(snap.firstKept, snap.revision + 1);
    this.nextLease = snap.nextLease;
    for (const l of snap.leases) this.leases.set(l.id, newLease(l.ttl));
    for (const kv of snap.kvs) {
      this.kvs.set(kv.k, {
        value: Buffer.from(kv.v, "base64"),
        createRevision: kv.c,
        modRevision: kv.m,
        version: kv.ver,
        lease: kv.l,
      });
      if (kv.l !== "0") this.leases.get(kv.l)?.keys.add(kv.k);
    }
    return snap.revision;
  }

  private async replayWal(snapRev: number): Promise<void> {
    const path = join(this.dir, WAL);
    if (!existsSync(path)) return;
    const buf = await readFile(path);
    let off = 0;
    while (off < buf.length) {
      const rec = decodeRecord(buf, off);
      if (!rec) break;
      // Records at or below the snapshot revision are already in it (a crash between writing the
      // snapshot and truncating the log); lease and compact records are idempotent.
      const r = rec.record;
      if (r.rev !== undefined && r.rev <= snapRev) delete r.ch;
      this.apply(r);
      this.walRecords++;
      off = rec.end;
    }
    if (off < buf.length) {
      // A record that was being written when the process died was never acknowledged: drop it.
      log.warn({ dir: this.dir, offset: off, droppedBytes: buf.length - off }, "truncating torn or corrupt log tail");
      const fh = await open(path, "r+");
      try {
        await fh.truncate(off);
        await fh.sync();
      } finally {
        await fh.close();
      }
    }
  }

  // ---- reads ------------------------------------------------------------------------------------

  async get(key: string, opts?: Options): Promise<KeyValue | undefined> {
    this.check(opts);
    const e = this.kvs.get(key);
    return e ? toKeyValue(key, e, false) : undefined;
  }

  async range(prefix: string, opts?: RangeOptions): Promise<RangeResult> {
    this.check(opts);
    const matched: string[] = [];
    for (const k of this.kvs.keys()) if (k.startsWith(prefix)) matched.push(k);
    matched.sort(compareKeys);
    const limit = opts?.limit && opts.limit > 0 ? opts.limit : matched.length;
    const kvs = matched.slice(0, limit).map((k) => toKeyValue(k, this.kvs.get(k)!, opts?.keysOnly ?? false));
    return { kvs, revision: this.rev };
  }

  async revision(opts?: Options): Promise<number> {
    this.check(opts);
    return this.rev;
  }

  async ping(opts?: Options): Promise<void> {
    this.check(opts);
  }

  // ---- writes -----------------------------------------------------------------------------------

  async put(key: string, value: Uint8Array, opts?: Options & { lease?: string }): Promise<number> {
    const op: Op = { type: "put", key, value };
    if (opts?.lease !== undefined) op.lease = opts.lease;
    return (await this.write(opts, () => this.plan([], [op], []))).revision;
  }

  async delete(key: string, opts?: Options): Promise<number> {
    return (await this.write(opts, () => this.plan([], [{ type: "delete", key }], []))).result;
  }

  async deletePrefix(prefix: string, opts?: Options): Promise<number> {
    return (await this.write(opts, () => this.plan([], [{ type: "deletePrefix", prefix }], []))).result;
  }

  async txn(compares: Compare[], success: Op[], failure: Op[] = [], opts?: Options): Promise<TxnResult> {
    const { result, revision } = await this.write(opts, () => {
      const p = this.plan(compares, success, failure);
      return { record: p.record, result: p.succeeded };
    });
    return { succeeded: result, revision };
  }

  async compact(revision: number, opts?: Options): Promise<void> {
    await this.write(opts, () => {
      if (revision > this.rev) throw new StoreError(`cannot compact to future revision ${revision} (current ${this.rev})`);
      if (revision <= this.firstKept) return { record: undefined, result: 0 };
      return { record: { compact: revision }, result: 0 };
    });
  }

  async grantLease(ttlSeconds: number, opts?: Options): Promise<string> {
    if (!Number.isFinite(ttlSeconds) || ttlSeconds <= 0) throw new StoreError(`invalid lease ttl ${ttlSeconds}`);
    const ttl = Math.ceil(ttlSeconds);
    let id = "";
    await this.write(opts, () => {
      id = String(this.nextLease);
      return { record: { grant: { id, ttl }, nextLease: this.nextLease + 1 }, result: id };
    });
    return id;
  }

  async keepAliveOnce(lease: string, opts?: Options): Promise<number> {
    this.check(opts);
    const l = this.liveLease(lease);
    if (!l) throw new LeaseNotFoundError(lease);
    // Refreshing a deadline is not persisted: after a restart every lease gets a full TTL anyway.
    l.deadline = performance.now() + l.ttl * 1000;
    return l.ttl;
  }

  async revokeLease(lease: string, opts?: Options): Promise<void> {
    await this.write(opts, () => this.planRevoke([lease]));
  }

  async leaseTimeToLive(lease: string, opts?: Options): Promise<number> {
    this.check(opts);
    const l = this.liveLease(lease);
    if (!l) return -1;
    return Math.max(0, Math.ceil((l.deadline - performance.now()) / 1000));
  }

  // ---- watch ------------------------------------------------------------------------------------

  watch(prefix: string, opts: WatchOptions = {}): AsyncIterable<WatchBatch> {
    return { [Symbol.asyncIterator]: () => this.watchLoop(prefix, opts) };
  }

  private async *watchLoop(prefix: string, opts: WatchOptions): AsyncGenerator<WatchBatch> {
    const { signal } = opts;
    if (this.closed) throw new StoreUnavailableError("store is closed");
    if (signal?.aborted) return;
    const from = opts.fromRevision ?? this.rev + 1;
    if (from < this.firstKept) throw new CompactedError(from, this.firstKept);
    // Replay and subscription happen in one synchronous step, so no batch falls in between.
    const w: Watcher = { prefix, queue: [], wake: undefined };
    for (const b of this.history) {
      if (b.revision < from) continue;
      const f = filterBatch(b, prefix);
      if (f) w.queue.push(f);
    }
    this.watchers.add(w);
    const onAbort = () => w.wake?.();
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      for (;;) {
        if (signal?.aborted) return;
        const next = w.queue.shift();
        if (next) {
          yield next;
          continue;
        }
        if (this.closed) throw new StoreUnavailableError("store is closed");
        await new Promise<void>((resolve) => (w.wake = resolve));
        w.wake = undefined;
      }
    } finally {
      signal?.removeEventListener("abort", onAbort);
      this.watchers.delete(w);
    }
  }

  // ---- internals --------------------------------------------------------------------------------

  private check(opts?: Options): void {
    opts?.signal?.throwIfAborted();
    if (this.closed) throw new StoreUnavailableError("store is closed");
  }

  /** The lease if it exists and has not expired; an expired one is queued for removal. */
  private liveLease(id: string): Lease | undefined {
    const l = this.leases.get(id);
    if (!l) return undefined;
    if (l.deadline > performance.now()) return l;
    this.expireLeases();
    return undefined;
  }

  private expireLeases(): void {
    if (this.closed) return;
    const now = performance.now();
    const expired: string[] = [];
    for (const [id, l] of this.leases) {
      if (l.deadline <= now && !l.expiring) {
        l.expiring = true;
        expired.push(id);
      }
    }
    if (expired.length === 0) return;
    // Keep-alives that arrive while the removal is queued do not save the lease: it is gone.
    this.write(undefined, () => this.planRevoke(expired)).then(
      () => log.debug({ leases: expired }, "leases expired"),
      (e: unknown) => {
        if (!(e instanceof StoreUnavailableError)) log.error({ err: e, leases: expired }, "lease expiry failed");
      },
    );
  }

  private planRevoke(ids: string[]): { record: LogRecord | undefined; result: number } {
    const live = ids.filter((id) => this.leases.has(id));
    if (live.length === 0) return { record: undefined, result: 0 };
    const ch: Change[] = [];
    for (const id of live) for (const k of [...this.leases.get(id)!.keys].sort(compareKeys)) ch.push({ k, d: 1 });
    const record: LogRecord = { revoke: live };
    if (ch.length > 0) {
      record.rev = this.rev + 1;
      record.ch = ch;
    }
    return { record, result: ch.length };
  }

  /** Evaluates a transaction against current state; returns the record it would write. */
  private plan(compares: Compare[], success: Op[], failure: Op[]): { record: LogRecord | undefined; result: number; succeeded: boolean } {
    checkOps(success);
    checkOps(failure);
    const succeeded = compares.every((c) => this.holds(c));
    const ops = succeeded ? success : failure;
    // Work on a scratch view so later ops in the txn see earlier ones (deletePrefix then put).
    const present = new Set<string>();
    const gone = new Set<string>();
    const exists = (k: string) => present.has(k) || (!gone.has(k) && this.kvs.has(k));
    const ch: Change[] = [];
    let deleted = 0;
    for (const op of ops) {
      switch (op.type) {
        case "put": {
          const lease = op.lease ?? "0";
          if (lease !== "0" && !this.liveLease(lease)) throw new LeaseNotFoundError(lease);
          ch.push({ k: op.key, v: Buffer.from(op.value).toString("base64"), l: lease });
          present.add(op.key);
          gone.delete(op.key);
          break;
        }
        case "delete":
          if (exists(op.key)) {
            ch.push({ k: op.key, d: 1 });
            present.delete(op.key);
            gone.add(op.key);
            deleted++;
          }
          break;
        case "deletePrefix": {
          const victims = new Set<string>();
          for (const k of this.kvs.keys()) if (k.startsWith(op.prefix) && exists(k)) victims.add(k);
          for (const k of present) if (k.startsWith(op.prefix)) victims.add(k);
          for (const k of [...victims].sort(compareKeys)) {
            ch.push({ k, d: 1 });
            present.delete(k);
            gone.add(k);
            deleted++;
          }
          break;
        }
      }
    }
    // As in etcd, a transaction that changes nothing does not bump the revision.
    const record = ch.length > 0 ? { rev: this.rev + 1, ch } : undefined;
    return { record, result: deleted, succeeded };
  }

  private holds(c: Compare): boolean {
    const e = this.kvs.get(c.key);
    const actual = !e ? 0 : c.target === "mod" ? e.modRevision : c.target === "create" ? e.createRevision : e.version;
    switch (c.result) {
      case "=":
        return actual === c.value;
      case "!=":
        return actual !== c.value;
      case "<":
        return actual < c.value;
      case ">":
        return actual > c.value;
    }
  }

  /**
   * Runs one write at a time: plan against current state, make the record durable, then apply it.
   * Returns the plan's result.
   */
  private async write<T>(
    opts: Options | undefined,
    planFn: () => { record: LogRecord | undefined; result: T },
  ): Promise<{ result: T; revision: number }> {
    this.check(opts);
    const signal = opts?.signal;
    const run = async (): Promise<{ result: T; revision: number }> => {
      // Checked again at our turn: the wait in the queue may have been long. Writes queued before
      // close() still run; the log goes away only after them.
      signal?.throwIfAborted();
      if (!this.wal) throw new StoreUnavailableError("store is closed");
      const p = planFn();
      if (p.record) {
        await this.append(p.record);
        this.apply(p.record);
        if (this.walRecords >= this.snapshotEvery) await this.snapshot();
      }
      return { result: p.result, revision: this.rev };
    };
    const result = this.queue.then(run, run);
    this.queue = result.catch(() => undefined);
    return result;
  }

  private async append(r: LogRecord): Promise<void> {
    const payload = Buffer.from(JSON.stringify(r));
    const rec = Buffer.alloc(HEADER + payload.length);
    rec.writeUInt32LE(payload.length, 0);
    rec.writeUInt32LE(crc32(payload), 4);
    payload.copy(rec, HEADER);
    try {
      await this.wal!.write(rec);
      if (this.sync) await this.wal!.datasync();
    } catch (e) {
      // The tail may now hold part of this record; the next open cuts it off. Refuse further
      // writes rather than append after garbage.
      log.error({ err: e, dir: this.dir }, "log write failed; closing store");
      void this.close();
      throw new StoreUnavailableError(`log write failed: ${(e as Error).message}`);
    }
    this.walRecords++;
  }

  /** Applies a durable record to memory and tells the watchers. Also used by replay. */
  private apply(r: LogRecord): void {
    if (r.nextLease !== undefined) this.nextLease = Math.max(this.nextLease, r.nextLease);
    if (r.grant) {
      this.leases.set(r.grant.id, newLease(r.grant.ttl));
      this.nextLease = Math.max(this.nextLease, Number(r.grant.id) + 1);
    }
    if (r.rev !== undefined && r.ch) {
      const rev = r.rev;
      const events: WatchEvent[] = [];
      for (const c of r.ch) {
        const old = this.kvs.get(c.k);
        if (old && old.lease !== "0") this.leases.get(old.lease)?.keys.delete(c.k);
        if ("d" in c) {
          this.kvs.delete(c.k);
          events.push({
            type: "delete",
            kv: { key: c.k, value: new Uint8Array(0), createRevision: 0, modRevision: rev, version: 0, lease: "0" },
          });
        } else {
          const e: Entry = {
            value: Buffer.from(c.v, "base64"),
            createRevision: old ? old.createRevision : rev,
            modRevision: rev,
            version: old ? old.version + 1 : 1,
            lease: c.l,
          };
          this.kvs.set(c.k, e);
          if (c.l !== "0") this.leases.get(c.l)?.keys.add(c.k);
          events.push({ type: "put", kv: toKeyValue(c.k, e, false) });
        }
      }
      this.rev = rev;
      const batch: WatchBatch = { revision: rev, events };
      this.history.push(batch);
      while (this.history.length > this.historyLimit) {
        const dropped = this.history.shift()!;
        this.firstKept = Math.max(this.firstKept, dropped.revision + 1);
      }
      for (const w of this.watchers) {
        const f = filterBatch(batch, w.prefix);
        if (f) {
          w.queue.push(f);
          w.wake?.();
        }
      }
    }
    if (r.revoke) for (const id of r.revoke) this.leases.delete(id);
    if (r.compact !== undefined && r.compact > this.firstKept) {
      this.firstKept = r.compact;
      let i = 0;
      while (i < this.history.length && this.history[i]!.revision < r.compact) i++;
      this.history = this.history.slice(i);
    }
  }

  /** Writes the whole state to snapshot.json atomically, then empties the log. */
  private async snapshot(): Promise<void> {
    const snap: SnapshotFile = {
      format: 1,
      revision: this.rev,
      firstKept: this.firstKept,
      nextLease: this.nextLease,
      kvs: [...this.kvs].map(([k, e]) => ({
        k,
        v: Buffer.from(e.value).toString("base64"),
        c: e.createRevision,
        m: e.modRevision,
        ver: e.version,
        l: e.lease,
      })),
      leases: [...this.leases].map(([id, l]) => ({ id, ttl: l.ttl })),
    };
    const tmp = join(this.dir, `${SNAPSHOT}.tmp`);
    const fh = await open(tmp, "w", 0o600);
    try {
      await fh.writeFile(JSON.stringify(snap));
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, join(this.dir, SNAPSHOT));
    await syncDir(this.dir);
    // Only now is the log redundant; a crash before this line replays it over the snapshot.
    await this.wal!.truncate(0);
    await this.wal!.sync();
    this.walRecords = 0;
    log.debug({ dir: this.dir, revision: this.rev, keys: this.kvs.size }, "snapshot written");
  }
}

/**
 * etcd refuses a transaction branch that puts one key twice, or puts a key that a delete in the
 * same branch covers ("duplicate key given in txn request"). The embedded store refuses the same,
 * so code tested here does not break on etcd.
 */
function checkOps(ops: Op[]): void {
  const puts = new Set<string>();
  for (const op of ops) {
    if (op.type !== "put") continue;
    if (puts.has(op.key)) throw new StoreError(`duplicate key given in txn request: ${op.key}`);
    puts.add(op.key);
  }
  for (const op of ops) {
    if (op.type === "delete" && puts.has(op.key)) {
      throw new StoreError(`duplicate key given in txn request: ${op.key}`);
    }
    if (op.type === "deletePrefix") {
      for (const k of puts) {
        if (k.startsWith(op.prefix)) throw new StoreError(`duplicate key given in txn request: ${k}`);
      }
    }
  }
}

function newLease(ttl: number): Lease {
  return { ttl, deadline: performance.now() + ttl * 1000, keys: new Set(), expiring: false };
}

function toKeyValue(key: string, e: Entry, keysOnly: boolean): KeyValue {
  return {
    key,
    // A copy: callers must not be able to change stored state through a returned value.
    value: keysOnly ? new Uint8Array(0) : new Uint8Array(e.value),
    createRevision: e.createRevision,
    modRevision: e.modRevision,
    version: e.version,
    lease: e.lease,
  };
}

function filterBatch(b: WatchBatch, prefix: string): WatchBatch | undefined {
  if (prefix === "") return b;
  const events = b.events.filter((e) => e.kv.key.startsWith(prefix));
  return events.length > 0 ? { revision: b.revision, events } : undefined;
}

/**
 * Key order. etcd sorts by UTF-8 bytes; UTF-16 code-unit order differs from it only between
 * astral characters and U+E000..U+FFFF, which our keyspace never contains.
 */
function compareKeys(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The record at off, or undefined if it is torn or corrupt. */
function decodeRecord(buf: Buffer, off: number): { record: LogRecord; end: number } | undefined {
  if (off + HEADER > buf.length) return undefined;
  const len = buf.readUInt32LE(off);
  const sum = buf.readUInt32LE(off + 4);
  const end = off + HEADER + len;
  if (end > buf.length) return undefined;
  const payload = buf.subarray(off + HEADER, end);
  if (crc32(payload) !== sum) return undefined;
  try {
    return { record: JSON.parse(payload.toString("utf8")) as LogRecord, end };
  } catch {
    return undefined;
  }
}

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}
