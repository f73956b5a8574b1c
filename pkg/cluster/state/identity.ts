/*
 * The records of cluster identity: join tokens and node bindings, and the transactions that
 * read and write them.
 *
 *   /hypervisor/v1/jointokens/<id>        JoinTokenRecord (the secret only as its sha256)
 *   /hypervisor/v1/nodebindings/<node>    NodeBinding     (the agent's node secret only as its sha256)
 *
 * Servers only: no node's etcd role reaches these prefixes. Every write compares what it read.
 */
import type { JoinTokenRecord, NodeBinding } from "../../../api/gen/hypervisor/v1/identity_pb.js";
import { ifAbsent, ifModRevision, type Compare, type Op, type Store } from "../store/index.js";
import { codecs } from "./codecs.js";
import { keys } from "./keys.js";
import type { Read } from "./placement.js";

type Opts = { signal?: AbortSignal };

export async function readJoinToken(store: Store, id: string, opts: Opts = {}): Promise<Read<JoinTokenRecord> | undefined> {
  const kv = await store.get(keys.joinToken(id), opts);
  return kv && { value: codecs.joinToken.decode(kv.value), modRevision: kv.modRevision };
}

export async function readNodeBinding(store: Store, node: string, opts: Opts = {}): Promise<Read<NodeBinding> | undefined> {
  const kv = await store.get(keys.nodeBinding(node), opts);
  return kv && { value: codecs.nodeBinding.decode(kv.value), modRevision: kv.modRevision };
}

export async function listJoinTokens(store: Store, opts: Opts = {}): Promise<JoinTokenRecord[]> {
  const { kvs } = await store.range(keys.joinTokens, opts);
  return kvs.map((kv) => codecs.joinToken.decode(kv.value));
}

/** Writes a new token; false if its id is taken (the caller draws another). */
export async function createJoinToken(store: Store, record: JoinTokenRecord, opts: Opts = {}): Promise<boolean> {
  const key = keys.joinToken(record.id);
  const { succeeded } = await store.txn([ifAbsent(key)], [{ type: "put", key, value: codecs.joinToken.encode(record) }], [], opts);
  return succeeded;
}

/** Rewrites a token read at `read.modRevision`; false if it changed since (re-read and decide again). */
export async function updateJoinToken(store: Store, read: Read<JoinTokenRecord>, next: JoinTokenRecord, opts: Opts = {}): Promise<boolean> {
  const key = keys.joinToken(next.id);
  const { succeeded } = await store.txn(
    [ifModRevision(key, read.modRevision)],
    [{ type: "put", key, value: codecs.joinToken.encode(next) }],
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
  binding: { read: Read<NodeBinding> | undefined; next: NodeBinding },
  opts: Opts = {},
): Promise<boolean> {
  const tokenKey = keys.joinToken(used.id);
  const key = keys.nodeBinding(binding.next.node);
  const compares: Compare[] = [
    ifModRevision(tokenKey, token.modRevision),
    binding.read ? ifModRevision(key, binding.read.modRevision) : ifAbsent(key),
  ];
  const ops: Op[] = [
    { type: "put", key: tokenKey, value: codecs.joinToken.encode(used) },
    // Always written: it records the serial of the certificate this join issues.
    { type: "put", key, value: codecs.nodeBinding.encode(binding.next) },
  ];
  const { succeeded } = await store.txn(compares, ops, [], opts);
  return succeeded;
}
