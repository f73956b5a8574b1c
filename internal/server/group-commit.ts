/*
 * Group commit for creates: keys to create (if absent) that arrive while the store is busy with
 * earlier ones go to it together, in one txn: one round trip and one raft entry for many
 * CreateInstance calls instead of one each. At low load a create is sent at once, alone; batches
 * form only while MAX_IN_FLIGHT txns are already out, so batching adds no wait of its own.
 *
 *   create(k1) ─┐                  ┌─► txn [absent k1, absent k2, …] ─► put k1, put k2, …
 *   create(k2) ─┼─► queue ─(free)──┤        │ a compare failed (some key exists): nothing written
 *   create(k3) ─┘                  │        └─► each key again in its own txn, for its own answer
 *
 * A key already in the batch being formed waits for the next one (etcd refuses a txn that puts
 * one key twice), so of two creates of one name exactly one wins, as without batching.
 */
import { ifAbsent, type Store } from "../../pkg/cluster/store/index.js";

/** Creates per txn: a compare and a put each, well inside etcd's default --max-txn-ops of 128. */
const MAX_BATCH = 64;
/** Txns out at once before creates queue up into batches. */
const MAX_IN_FLIGHT = 4;

interface Pending {
  key: string;
  value: Uint8Array;
  resolve(r: CreateResult): void;
  reject(e: unknown): void;
  signal: AbortSignal | undefined;
  onAbort: () => void;
}

/** created: the key was absent and is now written (at revision); false: it already existed. */
export type CreateResult = { created: true; revision: number } | { created: false };

export class GroupCommit {
  private readonly queue: Pending[] = [];
  private inFlight = 0;

  constructor(
    private readonly store: Store,
    private readonly maxBatch = MAX_BATCH,
    private readonly maxInFlight = MAX_IN_FLIGHT,
  ) {}

  /** Writes value at key if the key is absent. A signal aborted while queued leaves nothing written. */
  create(key: string, value: Uint8Array, signal?: AbortSignal): Promise<CreateResult> {
    signal?.throwIfAborted();
    return new Promise<CreateResult>((resolve, reject) => {
      const p: Pending = {
        key,
        value,
        resolve,
        reject,
        signal,
        onAbort: () => {
          const at = this.queue.indexOf(p);
          if (at < 0) return; // already sent: its txn decides
          this.queue.splice(at, 1);
          const why: unknown = signal!.reason;
          reject(why instanceof Error ? why : new Error(String(why)));
        },
      };
      signal?.addEventListener("abort", p.onAbort, { once: true });
      this.queue.push(p);
      this.pump();
    });
  }

  private pump(): void {
    while (this.inFlight < this.maxInFlight && this.queue.length > 0) {
      const batch: Pending[] = [];
      const keys = new Set<string>();
      for (let i = 0; i < this.queue.length && batch.length < this.maxBatch; ) {
        const p = this.queue[i]!;
        if (keys.has(p.key)) {
          i++; // the same key twice: the later one waits for the next batch
          continue;
        }
        keys.add(p.key);
        batch.push(p);
        this.queue.splice(i, 1);
      }
      for (const p of batch) p.signal?.removeEventListener("abort", p.onAbort);
      this.inFlight++;
      void this.send(batch).finally(() => {
        this.inFlight--;
        this.pump();
      });
    }
  }

  private async send(batch: Pending[]): Promise<void> {
    try {
      const res = await this.store.txn(
        batch.map((p) => ifAbsent(p.key)),
        batch.map((p) => ({ type: "put" as const, key: p.key, value: p.value })),
      );
      if (res.succeeded) {
        for (const p of batch) p.resolve({ created: true, revision: res.revision });
        return;
      }
    } catch (e) {
      for (const p of batch) p.reject(e);
      return;
    }
    // Some key existed, so nothing was written: each on its own, for its own answer.
    await Promise.all(
      batch.map(async (p) => {
        try {
          const res = await this.store.txn([ifAbsent(p.key)], [{ type: "put", key: p.key, value: p.value }]);
          p.resolve(res.succeeded ? { created: true, revision: res.revision } : { created: false });
        } catch (e) {
          p.reject(e);
        }
      }),
    );
  }
}
