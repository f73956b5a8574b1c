/** Typed errors of the store layer; callers branch on the class, never on the message. */

export class StoreError extends Error {
  override name = "StoreError";
}

/** The requested watch revision is older than the compacted history. Re-list and watch again. */
export class CompactedError extends StoreError {
  override name = "CompactedError";
  constructor(
    readonly requestedRevision: number,
    readonly compactRevision: number,
  ) {
    super(`revision ${requestedRevision} has been compacted (oldest kept is ${compactRevision})`);
  }
}

export class LeaseNotFoundError extends StoreError {
  override name = "LeaseNotFoundError";
  constructor(readonly lease: string) {
    super(`lease ${lease} not found`);
  }
}

/** The store cannot be reached or was closed. */
export class StoreUnavailableError extends StoreError {
  override name = "StoreUnavailableError";
}

/**
 * The store refused this client: its identity (an etcd client certificate's CN, or a user) may
 * not do this to this key, or its certificate itself was refused. Unlike StoreUnavailableError,
 * retrying changes nothing until an operator changes the identity's grants.
 */
export class PermissionDeniedError extends StoreError {
  override name = "PermissionDeniedError";
}
