// The cluster store contract (an etcd v3 subset), its typed errors, the embedded
// single-machine implementation, and the conformance suite both implementations must pass.
export type {
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
export { ifAbsent, ifModRevision, ifPresent } from "./store.js";
export { CompactedError, LeaseNotFoundError, PermissionDeniedError, StoreError, StoreUnavailableError } from "./errors.js";
export { EmbeddedStore, openEmbeddedStore, type EmbeddedStoreOptions } from "./embedded.js";
export { GroupCommit, MAX_TXN_BYTES, txnBytes } from "./group-commit.js";
