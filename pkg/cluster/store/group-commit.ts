/*
 * Group commit: small independent transactions — each a few compares and writes of its own keys —
 * that arrive while the store is busy with earlier ones go to it together, as one txn: one round
 * trip and one raft entry for many. At low load a transaction is sent at once, alone; batches form
 * only while MAX_IN_FLIGHT txns are already out, so batching adds no wait of its own. Used for
 * CreateInstance (the server) and status writes (an agent).
 *
 *   commit(c1, w1) ─┐                  ┌─► txn [c1 + c2 + …] ─► w1 + w2 + …
 *   commit(c2, w2) ─┼─► queue ─(free)──┤        │ a compare failed: nothing written
 *   commit(c3, w3) ─┘                  │        └─► each again in its own txn, for its own answer
 *
 * Two transactions never share a batch if one writes a key the other writes or compares (etcd
 * refuses a txn that writes a key twice, and one txn's compares all see the state before any of
 * its writes): the later one waits for the next batch. So of two creates of one name exactly one
 * wins, as without batching, and a batch is always equivalent to its members run one by one.
 */
import type { Compare, Op, Store, TxnResult } from "./store.js";

/**
 * Compares and writes per txn: etcd refuses more than --max-txn-ops (128 by default) of either.
 */
const MAX_OPS = 128;
/**
 * Bytes (keys and values) per shared txn: etcd refuses a request above --max-request-bytes
 * (1.5 MiB by default), and one too big for it would fail every member with it.
 */
export const MAX_TXN_BYTES = 1024 * 1024;
/** Txns out at once before new ones queue up into batches. */
const MAX_IN_FLIGHT = 4;

interface Pending {
  compares: Compare[];
  ops: Op[];
  bytes: number;
  resolve(r: TxnResult): void;
  reject(e: unknown): void;
  signal: AbortSignal | undefined;
  onAbort: () => void;
}

export class GroupCommit {
  private readonly queue: Pending[] = [];
  private inFlight = 0;

  constructor(
    private readonly store: Store,
    private readonly maxInFlight = MAX_IN_FLIGHT,
    private readonly maxOps = MAX_OPS,
    private readonly maxBytes = MAX_TXN_BYTES,
  ) {}

  /**
   * Writes `ops` if every compare holds, and answers as store.txn(compares, ops) would (a batch
   * that succeeded answers each member with its revision). A signal aborted
   * while queued leaves nothing written; once sent, the txn decides.
   */
  commit(compares: Compare[], ops: Op[], signal?: AbortSignal): Promise<TxnResult> {
    signal?.throwIfAborted();
    const bytes = txnBytes(compares, ops);
    // Too big to share a txn, or a prefix delete (whose keys are unknown here): alone.
    if (compares.length > this.maxOps || ops.length > this.maxOps || bytes > this.maxBytes || ops.some((o) => o.type === "deletePrefix"))
      return this.store.txn(compares, ops, [], signal ? { signal } : {});
    return new Promise<TxnResult>((resolve, reject) => {
      const p: Pending = {
        compares,
        ops,
        bytes,
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
      const written = new Set<string>();
      const compared = new Set<string>();
      let compares = 0;
      let ops = 0;
      let bytes = 0;
      for (let i = 0; i < this.queue.length;) {
        const p = this.queue[i]!;
        if (compares + p.compares.length > this.maxOps || ops + p.ops.length > this.maxOps || bytes + p.bytes > this.maxBytes) break;
        const writes = p.ops.map(keyOf);
        if (writes.some((k) => written.has(k) || compared.has(k)) || p.compares.some((c) => written.has(c.key))) {
          i++; // touches a key another in this batch writes (or compares and we write): next batch
          continue;
        }
        for (const k of writes) written.add(k);
        for (const c of p.compares) compared.add(c.key);
        compares += p.compares.length;
        ops += p.ops.length;
        bytes += p.bytes;
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
      if (batch.length === 1) {
        batch[0]!.resolve(await this.store.txn(batch[0]!.compares, batch[0]!.ops));
        return;
      }
      const res = await this.store.txn(
        batch.flatMap((p) => p.compares),
        batch.flatMap((p) => p.ops),
      );
      if (res.succeeded) {
        for (const p of batch) p.resolve({ succeeded: true, revision: res.revision });
        return;
      }
    } catch (e) {
      for (const p of batch) p.reject(e);
      return;
    }
    // A compare failed, so nothing was written: each on its own, for its own answer.
    await Promise.all(
      batch.map(async (p) => {
        try {
          p.resolve(await this.store.txn(p.compares, p.ops));
        } catch (e) {
          p.reject(e);
        }
      }),
    );
  }
}

/** What a txn's compares and writes weigh in a request: their keys and values. */
export function txnBytes(compares: readonly Compare[], ops: readonly Op[]): number {
  let n = 0;
  for (const c of compares) n += c.key.length;
  for (const o of ops) n += o.type === "put" ? o.key.length + o.value.length : keyOf(o).length;
  return n;
}

function keyOf(o: Op): string {
  return o.type === "deletePrefix" ? o.prefix : o.key; // prefix deletes never reach a batch
}
