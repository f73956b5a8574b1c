/*
 * An informer keeps a local copy of one key prefix, list-then-watch, as client-go does:
 *
 *   range(prefix) ──► items @rev ──► watch(prefix, rev+1) ──► apply events ──► notify
 *        ▲                                   │
 *        └────── CompactedError / store error (after backoff) ───────┘
 *
 * After a relist the difference to the old copy is delivered as events, so subscribers never
 * miss a change and never need to know a relist happened.
 */
import type { Logger } from "../../pkg/log/index.js";
import { CompactedError, type KeyValue, type Store, type WatchEvent } from "../../pkg/cluster/store/index.js";

export interface Item<T> {
  value: T;
  modRevision: number;
}

export interface InformerEvent<T> {
  type: "put" | "delete";
  key: string;
  value?: T;
  prev?: T;
  revision: number;
}

export type Listener<T> = (ev: InformerEvent<T>) => void;

/** Where an informer's keys come from: its own list/watch of its prefix, or a shared Feed's. */
export interface InformerOptions {
  /** Only keys it accepts are this informer's (several informers can share one prefix's feed). */
  match?: (key: string) => boolean;
}

/** What a Feed delivers to: a full listing, single events, and the revision reached. */
export interface Sink {
  relisted(kvs: readonly KeyValue[], revision: number): void;
  applied(ev: WatchEvent, revision: number): void;
  advance(revision: number): void;
}

export class Informer<T> implements Sink {
  readonly items = new Map<string, Item<T>>();
  /** Store revision the local copy reflects. */
  revision = 0;
  private readonly listeners = new Set<Listener<T>>();
  private readonly revWaiters: { rev: number; resolve: () => void }[] = [];
  readonly match: (key: string) => boolean;

  constructor(
    private readonly store: Store | undefined,
    readonly prefix: string,
    private readonly decode: (kv: KeyValue) => T,
    private readonly log: Logger,
    opts: InformerOptions = {},
  ) {
    this.match = opts.match ?? ((key) => key.startsWith(prefix));
  }

  /** Starts its own list/watch loop; resolves once the first list is in. */
  start(signal: AbortSignal): Promise<void> {
    if (!this.store) throw new Error(`informer of ${this.prefix} is fed by a shared feed; start the feed`);
    return new Feed(this.store, this.prefix, [this], this.log).start(signal);
  }

  subscribe(fn: Listener<T>): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  get(key: string): Item<T> | undefined {
    return this.items.get(key);
  }

  /** Resolves once the local copy has caught up with revision `rev` (e.g. after our own write). */
  waitForRevision(rev: number, signal?: AbortSignal): Promise<void> {
    if (this.revision >= rev) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const w = { rev, resolve };
      this.revWaiters.push(w);
      signal?.addEventListener("abort", () => reject(signal.reason as Error), { once: true });
    });
  }

  /** A full listing of the prefix at `revision`: what is absent from it is gone. */
  relisted(kvs: readonly KeyValue[], revision: number): void {
    const seen = new Set<string>();
    for (const kv of kvs) {
      if (!this.match(kv.key)) continue;
      seen.add(kv.key);
      const old = this.items.get(kv.key);
      if (old && old.modRevision === kv.modRevision) continue;
      this.put(kv, revision);
    }
    for (const [key, old] of this.items) {
      if (!seen.has(key)) {
        this.items.delete(key);
        this.emit({ type: "delete", key, prev: old.value, revision });
      }
    }
  }

  /** One event of a watch batch at `revision` (ignored when not this informer's key). */
  applied(ev: WatchEvent, revision: number): void {
    const key = ev.kv.key;
    if (!this.match(key)) return;
    if (ev.type === "put") this.put(ev.kv, revision);
    else this.remove(key, revision);
  }

  /** Sets a key's value directly (an informer derived from others, with no store of its own). */
  set(key: string, value: T, modRevision: number, revision: number): void {
    const prev = this.items.get(key)?.value;
    this.items.set(key, { value, modRevision });
    this.emit({ type: "put", key, value, prev, revision });
  }

  remove(key: string, revision: number): void {
    const prev = this.items.get(key)?.value;
    if (this.items.delete(key)) this.emit({ type: "delete", key, prev, revision });
  }

  advance(rev: number): void {
    if (rev > this.revision) this.revision = rev;
    for (let i = this.revWaiters.length - 1; i >= 0; i--) {
      const w = this.revWaiters[i]!;
      if (w.rev <= this.revision) {
        this.revWaiters.splice(i, 1);
        w.resolve();
      }
    }
  }

  private put(kv: KeyValue, revision: number): void {
    const value = this.decodeSafe(kv);
    if (value !== undefined) this.set(kv.key, value, kv.modRevision, revision);
  }

  private decodeSafe(kv: KeyValue): T | undefined {
    try {
      return this.decode(kv);
    } catch (e) {
      this.log.error({ err: e, key: kv.key }, "undecodable value in store; ignored");
      return undefined;
    }
  }

  private emit(ev: InformerEvent<T>): void {
    for (const fn of this.listeners) {
      try {
        fn(ev);
      } catch (e) {
        this.log.error({ err: e }, "informer listener threw");
      }
    }
  }
}

/**
 * One list/watch of a prefix feeding several informers, each taking the keys it matches: the
 * keys of every node live under nodes/, and one watch there (not one per kind of key) keeps the
 * store's fan-out and the server's decoding to one pass per change.
 */
export class Feed {
  constructor(
    private readonly store: Store,
    readonly prefix: string,
    private readonly sinks: Sink[],
    private readonly log: Logger,
  ) {}

  /** Starts the list/watch loop; resolves once the first list is in. */
  start(signal: AbortSignal): Promise<void> {
    let markSynced!: () => void;
    let failSync!: (e: unknown) => void;
    const synced = new Promise<void>((res, rej) => ((markSynced = res), (failSync = rej)));
    void this.run(signal, markSynced).catch((e: unknown) => {
      failSync(e);
      if (!signal.aborted) this.log.error({ err: e, prefix: this.prefix }, "informer stopped");
    });
    return synced;
  }

  private async run(signal: AbortSignal, markSynced: () => void): Promise<void> {
    let backoff = 100;
    let revision = 0;
    while (!signal.aborted) {
      try {
        const res = await this.store.range(this.prefix, { signal });
        for (const s of this.sinks) s.relisted(res.kvs, res.revision);
        revision = res.revision;
        this.advance(revision);
        markSynced();
        backoff = 100;
        for await (const batch of this.store.watch(this.prefix, { fromRevision: revision + 1, signal })) {
          for (const ev of batch.events) for (const s of this.sinks) s.applied(ev, batch.revision);
          revision = batch.revision;
          this.advance(revision);
        }
      } catch (e) {
        if (signal.aborted) return;
        if (e instanceof CompactedError) {
          this.log.info({ prefix: this.prefix, compacted: e.compactRevision }, "watch compacted; relisting");
          continue;
        }
        this.log.warn({ err: e, prefix: this.prefix, backoffMs: backoff }, "watch failed; retrying");
        await sleep(backoff, signal);
        backoff = Math.min(backoff * 2, 5000);
      }
    }
  }

  private advance(rev: number): void {
    for (const s of this.sinks) s.advance(rev);
  }
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** Sleeps until woken through `setWake`, the timeout, or the signal; whichever comes first. */
export function sleepUntilWoken(ms: number, signal: AbortSignal, setWake: (wake: (() => void) | undefined) => void): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      setWake(undefined);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    setWake(done);
  });
}
