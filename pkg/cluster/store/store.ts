/*
 * The Store contract: the subset of etcd's v3 model the control plane relies on. Two
 * implementations satisfy it (pkg/cluster/etcd, and the embedded one here) and both run the same
 * conformance suite, so code above this line never knows which one it has.
 *
 *   revision ──► every successful write bumps one cluster-wide counter
 *   key ──► { value, createRevision, modRevision, version, lease }
 *   watch(prefix, from) ──► batches of events at increasing revisions; throws CompactedError when
 *                          `from` is older than what the store still remembers (caller re-lists)
 *   lease(ttl) ──► keys put under it vanish when it is revoked or not kept alive within ttl
 */

export interface KeyValue {
  key: string;
  value: Uint8Array;
  /** Revision of the write that created the key (since its last deletion). */
  createRevision: number;
  /** Revision of the last write to the key. */
  modRevision: number;
  /** Number of writes since creation (1 after create). */
  version: number;
  /** Lease the key is attached to, "0" for none. Decimal string: etcd ids are int64. */
  lease: string;
}

export interface RangeResult {
  kvs: KeyValue[];
  /** Store revision at which the range was read: watch from revision + 1 to miss nothing. */
  revision: number;
}

export interface Compare {
  key: string;
  /** What to compare: "mod" = modRevision, "create" = createRevision, "version". Absent key = 0. */
  target: "mod" | "create" | "version";
  result: "=" | "!=" | "<" | ">";
  value: number;
}

export type Op =
  | { type: "put"; key: string; value: Uint8Array; lease?: string }
  | { type: "delete"; key: string }
  | { type: "deletePrefix"; prefix: string };

export interface TxnResult {
  succeeded: boolean;
  /** Store revision after the transaction (unchanged if nothing was written). */
  revision: number;
}

export interface WatchEvent {
  type: "put" | "delete";
  /** For deletes: key set, value empty, modRevision = revision of the delete. */
  kv: KeyValue;
}

export interface WatchBatch {
  /** Revision of the events in this batch (all events of one transaction share it). */
  revision: number;
  events: WatchEvent[];
}

export interface Options {
  signal?: AbortSignal;
}

export interface RangeOptions extends Options {
  limit?: number;
  /** Only keys, values left empty. */
  keysOnly?: boolean;
}

export interface WatchOptions extends Options {
  /** First revision to deliver. Omitted: only changes after the watch is established. */
  fromRevision?: number;
}

export interface Store {
  /** "etcd" or "embedded". */
  readonly kind: string;
  get(key: string, opts?: Options): Promise<KeyValue | undefined>;
  /** All keys starting with prefix, sorted by key. */
  range(prefix: string, opts?: RangeOptions): Promise<RangeResult>;
  /** Returns the revision of the write. */
  put(key: string, value: Uint8Array, opts?: Options & { lease?: string }): Promise<number>;
  /** Returns the number of keys deleted. */
  delete(key: string, opts?: Options): Promise<number>;
  deletePrefix(prefix: string, opts?: Options): Promise<number>;
  /** If every compare holds, apply success ops; otherwise failure ops. Atomic. */
  txn(compares: Compare[], success: Op[], failure?: Op[], opts?: Options): Promise<TxnResult>;
  /**
   * Events for keys under prefix until the signal aborts (the iterator then ends normally).
   * Throws CompactedError if fromRevision was compacted, StoreUnavailableError if the store goes.
   */
  watch(prefix: string, opts?: WatchOptions): AsyncIterable<WatchBatch>;
  /** Current store revision. */
  revision(opts?: Options): Promise<number>;
  /** Forget history older than revision (watches from before it get CompactedError). */
  compact(revision: number, opts?: Options): Promise<void>;
  /** Returns the lease id (decimal string). */
  grantLease(ttlSeconds: number, opts?: Options): Promise<string>;
  /** Refreshes the lease; returns the new TTL. Throws LeaseNotFoundError if it already expired. */
  keepAliveOnce(lease: string, opts?: Options): Promise<number>;
  /** Deletes the lease and every key attached to it. No error if it is already gone. */
  revokeLease(lease: string, opts?: Options): Promise<void>;
  /** Remaining TTL in seconds, or -1 if the lease does not exist. */
  leaseTimeToLive(lease: string, opts?: Options): Promise<number>;
  /** Health probe: resolves if the store answers. */
  ping(opts?: Options): Promise<void>;
  close(): Promise<void>;
}

/** Helpers for the common compares. */
export const ifAbsent = (key: string): Compare => ({ key, target: "create", result: "=", value: 0 });
export const ifPresent = (key: string): Compare => ({ key, target: "create", result: ">", value: 0 });
export const ifModRevision = (key: string, rev: number): Compare => ({ key, target: "mod", result: "=", value: rev });
