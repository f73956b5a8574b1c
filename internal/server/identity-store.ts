/*
 * Every store access of the identity feature, kept in one small file so the shared state layer
 * (issue 13 step 1) can absorb it whole: the keys, the codecs, and the compare-and-swap writes.
 *
 *   /hypervisor/v1/jointokens/<id>        JoinTokenRecord (the secret only as its sha256)
 *   /hypervisor/v1/nodebindings/<node>    NodeBinding     (the agent's node secret only as its sha256)
 *
 * Servers only: no node's etcd role reaches these prefixes. Every write compares what it read.
 */
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  type JoinTokenRecord,
  JoinTokenRecordSchema,
  type NodeBinding,
  NodeBindingSchema,
} from "../../api/gen/hypervisor/v1/identity_pb.js";
import { ifAbsent, ifModRevision, ROOT, type Compare, type Op, type Store } from "../../pkg/cluster/store/index.js";

export const identityKeys = {
  joinTokens: `${ROOT}jointokens/`,
  joinToken: (id: string) => `${ROOT}jointokens/${id}`,
  nodeBindings: `${ROOT}nodebindings/`,
  nodeBinding: (node: string) => `${ROOT}nodebindings/${node}`,
} as const;

/** A record and the mod revision it was read at: what a later write compares. */
export interface Read<T> {
  value: T;
  modRevision: number;
}

type Opts = { signal?: AbortSignal };

export async function readJoinToken(store: Store, id: string, opts: Opts = {}): Promise<Read<JoinTokenRecord> | undefined> {
  const kv = await store.get(identityKeys.joinToken(id), opts);
  return kv && { value: fromBinary(JoinTokenRecordSchema, kv.value), modRevision: kv.modRevision };
}

export async function readNodeBinding(store: Store, node: string, opts: Opts = {}): Promise<Read<NodeBinding> | undefined> {
  const kv = await store.get(identityKeys.nodeBinding(node), opts);
  return kv && { value: fromBinary(NodeBindingSchema, kv.value), modRevision: kv.modRevision };
}

export async function listJoinTokens(store: Store, opts: Opts = {}): Promise<JoinTokenRecord[]> {
  const { kvs } = await store.range(identityKeys.joinTokens, opts);
  return kvs.map((kv) => fromBinary(JoinTokenRecordSchema, kv.value));
}

/** Writes a new token; false if its id is taken (the caller draws another). */
export async function createJoinToken(store: Store, record: JoinTokenRecord, opts: Opts = {}): Promise<boolean> {
  const key = identityKeys.joinToken(record.id);
  const { succeeded } = await store.txn([ifAbsent(key)], [{ type: "put", key, value: toBinary(JoinTokenRecordSchema, record) }], [], opts);
  return succeeded;
}

/** Rewrites a token read at `read.modRevision`; false if it changed since (re-read and decide again). */
export async function updateJoinToken(store: Store, read: Read<JoinTokenRecord>, next: JoinTokenRecord, opts: Opts = {}): Promise<boolean> {
  const key = identityKeys.joinToken(next.id);
  const { succeeded } = await store.txn(
    [ifModRevision(key, read.modRevision)],
    [{ type: "put", key, value: toBinary(JoinTokenRecordSchema, next) }],
    [],
    opts,
  );
  return succeeded;
}

/**
 * A join in one transaction: the token's use counted and, on a name's first join, its binding
 * written; only if neither the token nor the binding changed since they were read. So two joins
 * racing for the last use of a token, or for the same new name, cannot both succeed.
 */
export async function commitJoin(
  store: Store,
  token: Read<JoinTokenRecord>,
  used: JoinTokenRecord,
  binding: { existing: Read<NodeBinding> } | { create: NodeBinding },
  opts: Opts = {},
): Promise<boolean> {
  const tokenKey = identityKeys.joinToken(used.id);
  const compares: Compare[] = [ifModRevision(tokenKey, token.modRevision)];
  const ops: Op[] = [{ type: "put", key: tokenKey, value: toBinary(JoinTokenRecordSchema, used) }];
  if ("existing" in binding) {
    compares.push(ifModRevision(identityKeys.nodeBinding(binding.existing.value.node), binding.existing.modRevision));
  } else {
    const key = identityKeys.nodeBinding(binding.create.node);
    compares.push(ifAbsent(key));
    ops.push({ type: "put", key, value: toBinary(NodeBindingSchema, binding.create) });
  }
  const { succeeded } = await store.txn(compares, ops, [], opts);
  return succeeded;
}
