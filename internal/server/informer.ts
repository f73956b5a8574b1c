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
import { CompactedError, type KeyValue, type Store } from "../../pkg/cluster/store/index.js";

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

export class Informer<T> {
  readonly items = new Map<string, Item<T>>();
  /** Store revision the local copy reflects. */
  revision = 0;
  private readonly listeners = new Set<Listener<T>>();
  private readonly revWaiters: { rev: number; resolve: () => void }[] = [];
  private synced!: Promise<void>;

  constructor(
    private readonly store: Store,
    readonly prefix: string,
    private readonly decode: (kv: KeyValue) => T,
    private readonly log: Logger,
  ) {}

  /** Starts the list/watch loop; resolves once the first list is in. */
  start(signal: AbortSignal): Promise<void> {
    let markSynced!: () => void;
    let failSync!: (e: unknown) => void;
    this.synced = new Promise((res, rej) => ((markSynced = res), (failSync = rej)));
    void this.run(signal, markSynced).catch((e: unknown) => {
      failSync(e);
      if (!signal.aborted) this.log.error({ err: e, prefix: this.prefix }, "informer stopped");
    });
    return this.synced;
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

  private async run(signal: AbortSignal, markSynced: () => void): Promise<void> {
    let backoff = 100;
    while (!signal.aborted) {
      try {
        await this.relist(signal);
        markSynced();
        backoff = 100;
        for await (const batch of this.store.watch(this.prefix, { fromRevision: this.revision + 1, signal })) {
          for (const ev of batch.events) {
            const key = ev.kv.key;
            const prev = this.items.get(key)?.value;
            if (ev.type === "put") {
              const value = this.decodeSafe(ev.kv);
              if (value === undefined) continue;
              this.items.set(key, { value, modRevision: ev.kv.modRevision });
              this.emit({ type: "put", key, value, prev, revision: batch.revision });
            } else if (this.items.delete(key)) {
              this.emit({ type: "delete", key, prev, revision: batch.revision });
            }
          }
          this.advance(batch.revision);
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

  private async relist(signal: AbortSignal): Promise<void> {
    const res = await this.store.range(this.prefix, { signal });
    const seen = new Set<string>();
    for (const kv of res.kvs) {
      seen.add(kv.key);
      const old = this.items.get(kv.key);
      if (old && old.modRevision === kv.modRevision) continue;
      const value = this.decodeSafe(kv);
      if (value === undefined) continue;
      this.items.set(kv.key, { value, modRevision: kv.modRevision });
      this.emit({ type: "put", key: kv.key, value, prev: old?.value, revision: res.revision });
    }
    for (const [key, old] of this.items) {
      if (!seen.has(key)) {
        this.items.delete(key);
        this.emit({ type: "delete", key, prev: old.value, revision: res.revision });
      }
    }
    this.advance(res.revision);
  }

  private decodeSafe(kv: KeyValue): T | undefined {
    try {
      return this.decode(kv);
    } catch (e) {
      this.log.error({ err: e, key: kv.key }, "undecodable value in store; ignored");
      return undefined;
    }
  }

  private advance(rev: number): void {
    if (rev > this.revision) this.revision = rev;
    for (let i = this.revWaiters.length - 1; i >= 0; i--) {
      const w = this.revWaiters[i]!;
      if (w.rev <= this.revision) {
        this.revWaiters.splice(i, 1);
        w.resolve();
      }
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
