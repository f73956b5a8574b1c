/*
 * The one compare-and-swap over a record: read it, let `change` decide on a copy, write with a
 * compare on the revision read, and go round again when someone wrote in between.
 *
 *   get(key) @ rev ──► change(copy, rev) ──► undefined: no write, return what is there
 *        ▲                     │
 *        │                     └──► txn[mod(key) = rev, ...extra compares] put key (+ extra ops)
 *        └───── compare failed (a concurrent writer) ──────┘           └──► written: return it
 *
 * Nothing is written without a compare; what a change throws ends the update unchanged.
 */
import { type Compare, ifAbsent, ifModRevision, type Op, type Store } from "../store/index.js";
import type { Codec } from "./codecs.js";

/** The record changed under us on every attempt. */
export class ConflictError extends Error {
  override name = "ConflictError";
  constructor(
    readonly key: string,
    readonly attempts: number,
  ) {
    super(`${key} changed on every one of ${attempts} attempts to update it`);
  }
}

export const MAX_ATTEMPTS = 20;

export interface Current<T> {
  /** The stored value (decoded), or undefined when the key is absent. */
  value: T | undefined;
  /** Its mod revision; 0 when absent. */
  modRevision: number;
}

/** What a change asks to write: the new value (or null to delete the key), and anything else. */
export interface Change<T> {
  value: T | null;
  /** More compares and ops for the same transaction (an assignment refreshed with the record). */
  compares?: Compare[];
  ops?: Op[];
}

export interface Updated<T> {
  value: T | undefined;
  /** The revision of the write, or the record's mod revision when nothing was written. */
  revision: number;
  written: boolean;
}

/**
 * Updates `key` with `change`, which sees the current record and returns what to write, or
 * undefined to leave it as it is. It may run more than once (once per conflict), so it must be
 * a function of what it is given (and what it reads afresh).
 */
export async function update<T>(
  store: Store,
  key: string,
  codec: Codec<T>,
  change: (current: Current<T>) => Change<T> | undefined | Promise<Change<T> | undefined>,
  opts: { signal?: AbortSignal; attempts?: number } = {},
): Promise<Updated<T>> {
  const o = opts.signal ? { signal: opts.signal } : {};
  const attempts = opts.attempts ?? MAX_ATTEMPTS;
  for (let attempt = 0; attempt < attempts; attempt++) {
    const kv = await store.get(key, o);
    const current: Current<T> = { value: kv ? codec.decode(kv.value) : undefined, modRevision: kv?.modRevision ?? 0 };
    const next = await change(current);
    if (!next) return { value: current.value, revision: current.modRevision, written: false };
    const own: Op = next.value === null ? { type: "delete", key } : { type: "put", key, value: codec.encode(next.value) };
    const res = await store.txn(
      [kv ? ifModRevision(key, kv.modRevision) : ifAbsent(key), ...(next.compares ?? [])],
      [own, ...(next.ops ?? [])],
      [],
      o,
    );
    if (res.succeeded) return { value: next.value ?? undefined, revision: res.revision, written: true };
  }
  throw new ConflictError(key, attempts);
}
