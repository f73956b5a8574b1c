/*
 * Read-your-writes for what the API serves from its informers: the store this server writes
 * through remembers, per watched prefix, the revision of the last write it made there, and a
 * reader waits until the informer has caught up with it. A client that created an instance
 * through this server finds it in the next list; writes by others (agents, other replicas) show
 * up as soon as their watch events arrive, as with any cached read.
 */
import type { Op, Store, TxnResult } from "../../pkg/cluster/store/index.js";

export interface WriteTracker {
  /** The store to write through: txn and put are recorded, everything else passes as is. */
  store: Store;
  /** Revision of this server's last write under `prefix` (0: none yet). */
  writtenAt: (prefix: string) => number;
}

export function trackWrites(inner: Store, prefixes: readonly string[]): WriteTracker {
  const last = new Map<string, number>();
  const note = (key: string, revision: number) => {
    for (const p of prefixes) if (key.startsWith(p) && revision > (last.get(p) ?? 0)) last.set(p, revision);
  };
  const txn: Store["txn"] = async (compares, success, failure, opts) => {
    const res: TxnResult = await inner.txn(compares, success, failure, opts);
    // Puts only: a delete of a key that is not there makes no event, and a reader would wait
    // for an informer revision that never comes.
    for (const op of (res.succeeded ? success : failure) ?? ([] as Op[])) if (op.type === "put") note(op.key, res.revision);
    return res;
  };
  const put: Store["put"] = async (key, value, opts) => {
    const revision = await inner.put(key, value, opts);
    note(key, revision);
    return revision;
  };
  const store = new Proxy(inner, {
    get(target, prop) {
      if (prop === "txn") return txn;
      if (prop === "put") return put;
      const v: unknown = Reflect.get(target, prop, target);
      return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return { store, writtenAt: (prefix) => last.get(prefix) ?? 0 };
}
