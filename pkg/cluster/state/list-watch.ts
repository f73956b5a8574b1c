/*
 * List-then-watch over a key prefix, the informer pattern every watcher of the store needs:
 *
 *   range(prefix) @ rev ──► snapshot ──► watch(prefix, from rev+1) ──► batch, batch, ...
 *         ▲                                      │
 *         └──── CompactedError / store error ────┘  (after a pause; a new snapshot follows)
 *
 * A consumer treats each snapshot as the whole truth (things absent from it are gone) and each
 * batch as changes after it, so nothing is missed and nothing is seen out of order.
 */
import { setTimeout as sleep } from "node:timers/promises";
import { CompactedError, type KeyValue, type Store, type WatchBatch } from "../store/index.js";

export type ListWatchEvent = { type: "snapshot"; kvs: KeyValue[]; revision: number } | { type: "batch"; batch: WatchBatch };

export interface ListWatchOptions {
  signal: AbortSignal;
  /** Pause before re-listing after a store error (default 1000 ms; compaction re-lists at once). */
  retryMs?: number;
  /** Told about store errors that cause a re-list (not about compaction, which is routine). */
  onError?: (e: unknown) => void;
}

export async function* listWatch(store: Store, prefix: string, opts: ListWatchOptions): AsyncGenerator<ListWatchEvent> {
  const { signal } = opts;
  const pause = async () => {
    await sleep(opts.retryMs ?? 1000, undefined, { signal }).catch(() => undefined);
  };
  while (!signal.aborted) {
    let listed: { kvs: KeyValue[]; revision: number };
    try {
      listed = await store.range(prefix, { signal });
    } catch (e) {
      if (signal.aborted) return;
      opts.onError?.(e);
      await pause();
      continue;
    }
    yield { type: "snapshot", kvs: listed.kvs, revision: listed.revision };
    try {
      for await (const batch of store.watch(prefix, { signal, fromRevision: listed.revision + 1 })) yield { type: "batch", batch };
      if (signal.aborted) return;
    } catch (e) {
      if (signal.aborted) return;
      if (e instanceof CompactedError) continue;
      opts.onError?.(e);
    }
    // The watch ended without our asking (store restarted, stream dropped): list again.
    await pause();
  }
}
