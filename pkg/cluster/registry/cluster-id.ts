/*
 * The cluster's identity: a random id made by whichever server or agent first finds none in the
 * store, in a txn that writes it only if the key is absent, so every member reads the same one.
 * Agents mark the instances they create with it: a second cluster on the same machine (another
 * store, the same node name), or this cluster after its store was wiped, never takes them for its
 * own.
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { randomUUID } from "node:crypto";
import { ClusterIdentitySchema } from "../../../api/gen/hypervisor/v1/store_pb.js";
import { ifAbsent, keys, type Store } from "../store/index.js";

/** The cluster id in the store, made and stored first if there is none. */
export async function clusterId(store: Store, opts: { signal?: AbortSignal } = {}): Promise<string> {
  const o = opts.signal ? { signal: opts.signal } : {};
  const kv = await store.get(keys.cluster, o);
  if (kv) return fromBinary(ClusterIdentitySchema, kv.value).id;
  const mine = create(ClusterIdentitySchema, { id: randomUUID(), createTime: timestampNow() });
  const res = await store.txn(
    [ifAbsent(keys.cluster)],
    [{ type: "put", key: keys.cluster, value: toBinary(ClusterIdentitySchema, mine) }],
    [],
    o,
  );
  if (res.succeeded) return mine.id;
  const won = await store.get(keys.cluster, o); // lost the race: the winner's id
  if (!won) throw new Error("cluster id vanished from the store");
  return fromBinary(ClusterIdentitySchema, won.value).id;
}
