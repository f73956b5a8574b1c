/*
 * Node records in nodes/<name>. The agent owns the record (what the node is and has) and the
 * server owns one field of it, `cordoned`. Both write with a compare on the record's
 * mod_revision and retry on conflict, so neither can overwrite the other's change:
 *
 *   agent:  get ──► copy cordoned from the stored record ──► txn[mod = rev] put ──► retry on conflict
 *   server: get ──► set cordoned ──────────────────────────► txn[mod = rev] put ──► retry on conflict
 */
import { clone, fromBinary, toBinary } from "@bufbuild/protobuf";
import { type Node, NodeSchema } from "../../../api/gen/hypervisor/v1/node_pb.js";
import { baseName, ifAbsent, ifModRevision, keys, type KeyValue, type Options, type Store } from "../store/index.js";
import { listWatch } from "./list-watch.js";

export class RegistryError extends Error {
  override name = "RegistryError";
}

export class NodeNotFoundError extends RegistryError {
  override name = "NodeNotFoundError";
  constructor(readonly node: string) {
    super(`node ${node} not found`);
  }
}

/** The record kept changing under us for every attempt. */
export class ConflictError extends RegistryError {
  override name = "ConflictError";
}

export interface NodeRecord {
  node: Node;
  modRevision: number;
}

export type NodeChange =
  | { type: "sync"; nodes: NodeRecord[]; revision: number }
  | { type: "put"; record: NodeRecord; revision: number }
  | { type: "delete"; name: string; revision: number };

const MAX_ATTEMPTS = 20;

export const encodeNode = (n: Node): Uint8Array => toBinary(NodeSchema, n);
export const decodeNode = (kv: KeyValue): NodeRecord => ({ node: fromBinary(NodeSchema, kv.value), modRevision: kv.modRevision });

/**
 * Creates or replaces the node's record with `node`, keeping the flags the server set (cordoned,
 * draining).
 * Returns what was written.
 */
export async function registerNode(store: Store, node: Node, opts: Options = {}): Promise<NodeRecord> {
  if (node.name === "") throw new RegistryError("node name is required");
  const key = keys.node(node.name);
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const kv = await store.get(key, opts);
    const next = clone(NodeSchema, node);
    const prev = kv ? fromBinary(NodeSchema, kv.value) : undefined;
    next.cordoned = prev?.cordoned ?? false;
    next.draining = prev?.draining ?? false;
    const res = await store.txn(
      [kv ? ifModRevision(key, kv.modRevision) : ifAbsent(key)],
      [{ type: "put", key, value: encodeNode(next) }],
      [],
      opts,
    );
    if (res.succeeded) return { node: next, modRevision: res.revision };
  }
  throw new ConflictError(`node ${node.name} changed on every one of ${MAX_ATTEMPTS} attempts to register it`);
}

export async function getNode(store: Store, name: string, opts: Options = {}): Promise<NodeRecord | undefined> {
  const kv = await store.get(keys.node(name), opts);
  return kv ? decodeNode(kv) : undefined;
}

export async function listNodes(store: Store, opts: Options = {}): Promise<{ nodes: NodeRecord[]; revision: number }> {
  const res = await store.range(keys.nodes, opts);
  return { nodes: res.kvs.map(decodeNode), revision: res.revision };
}

/** Sets the server-owned cordoned flag (compare-and-swap); a no-op if it already has that value. */
export function setCordoned(store: Store, name: string, cordoned: boolean, opts: Options = {}): Promise<NodeRecord> {
  return setNodeFlags(store, name, { cordoned }, opts);
}

/**
 * Sets the server-owned flags given (compare-and-swap); a no-op if they already have those values.
 */
export async function setNodeFlags(
  store: Store,
  name: string,
  flags: { cordoned?: boolean; draining?: boolean },
  opts: Options = {},
): Promise<NodeRecord> {
  const key = keys.node(name);
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    const kv = await store.get(key, opts);
    if (!kv) throw new NodeNotFoundError(name);
    const rec = decodeNode(kv);
    const next = clone(NodeSchema, rec.node);
    if (flags.cordoned !== undefined) next.cordoned = flags.cordoned;
    if (flags.draining !== undefined) next.draining = flags.draining;
    if (next.cordoned === rec.node.cordoned && next.draining === rec.node.draining) return rec;
    const res = await store.txn([ifModRevision(key, kv.modRevision)], [{ type: "put", key, value: encodeNode(next) }], [], opts);
    if (res.succeeded) return { node: next, modRevision: res.revision };
  }
  throw new ConflictError(`node ${name} changed on every one of ${MAX_ATTEMPTS} attempts to set ${JSON.stringify(flags)}`);
}

/**
 * Node records as they change: a "sync" with every node first (and again after the watch had to
 * be re-established; nodes absent from it are gone), then puts and deletes.
 */
export async function* watchNodes(store: Store, opts: { signal: AbortSignal; onError?: (e: unknown) => void }): AsyncGenerator<NodeChange> {
  for await (const ev of listWatch(store, keys.nodes, opts)) {
    if (ev.type === "snapshot") {
      yield { type: "sync", nodes: ev.kvs.map(decodeNode), revision: ev.revision };
      continue;
    }
    for (const e of ev.batch.events) {
      if (e.type === "put") yield { type: "put", record: decodeNode(e.kv), revision: ev.batch.revision };
      else yield { type: "delete", name: baseName(e.kv.key), revision: ev.batch.revision };
    }
  }
}
