/*
 * The cluster's identity: a random id made by whichever server first finds none in the store, in
 * a txn that writes it only if the key is absent, so every member reads the same one. Nodes only
 * read it (their etcd role cannot write it): an agent that comes up before any server waits.
 * Agents mark the instances they create with it: a second cluster on the same machine (another
 * store, the same node name), or this cluster after its store was wiped, never takes them for its
 * own.
 */
import { create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { ClusterIdentitySchema } from "../../../api/gen/hypervisor/v1/store_pb.js";
import { ifAbsent, type Store } from "../store/index.js";
import { codecs } from "./codecs.js";
import { keys } from "./keys.js";

/** The cluster id in the store, made and stored first if there is none (servers). */
export async function clusterId(store: Store, opts: { signal?: AbortSignal } = {}): Promise<string> {
  const o = opts.signal ? { signal: opts.signal } : {};
  const kv = await store.get(keys.cluster, o);
  if (kv) return codecs.cluster.decode(kv.value).id;
  const mine = create(ClusterIdentitySchema, { id: randomUUID(), createTime: timestampNow() });
  const res = await store.txn([ifAbsent(keys.cluster)], [{ type: "put", key: keys.cluster, value: codecs.cluster.encode(mine) }], [], o);
  if (res.succeeded) return mine.id;
  const won = await store.get(keys.cluster, o); // lost the race: the winner's id
  if (!won) throw new Error("cluster id vanished from the store");
  return codecs.cluster.decode(won.value).id;
}

/**
 * The cluster id, once a server has made it (agents): read, and until it is there, watched for.
 * `onWait` is told once that the agent is waiting, so the wait shows in its log.
 */
export async function awaitClusterId(store: Store, opts: { signal: AbortSignal; onWait?: () => void }): Promise<string> {
  const { signal } = opts;
  let told = false;
  while (!signal.aborted) {
    const kv = await store.get(keys.cluster, { signal });
    if (kv) return codecs.cluster.decode(kv.value).id;
    if (!told) opts.onWait?.();
    told = true;
    // A watch from the revision read would be exact; a short poll is enough for a once-only wait
    // and needs no watch permission on a key the node can only read.
    await sleep(200, undefined, { signal }).catch(() => undefined);
  }
  throw signal.reason ?? new Error("aborted");
}
