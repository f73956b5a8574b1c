/*
 * Stores written before projects keyed instances by name alone. At start a server moves them into
 * the default project, each move one txn comparing what it read (two servers moving at once: one
 * wins, the other finds nothing left to move):
 *
 *   instances/<name>               ──► instances/default/<name>
 *   assignments/<node>/<name>      ──► assignments/<node>/default/<name>
 *   nodes/<node>/status|orphans/<name>  deleted: the agent writes them again under the new keys
 *
 * Names on the node do not change (hostName of a default-project instance is its name), so agents
 * find their domains and containers as before: nothing is recreated or orphaned.
 */
import { create } from "@bufbuild/protobuf";
import { AssignmentSchema } from "../../../api/gen/hypervisor/v1/store_pb.js";
import { ifModRevision, type Store } from "../store/index.js";
import { codecs } from "./codecs.js";
import { DEFAULT_PROJECT, instanceRef, keys } from "./keys.js";

/** Moves keys of the old shape; returns how many it moved or dropped. */
export async function migrateToProjects(store: Store, signal?: AbortSignal): Promise<number> {
  const o = signal ? { signal } : {};
  let moved = 0;
  const { kvs: instances } = await store.range(keys.instances, o);
  for (const kv of instances) {
    const name = kv.key.slice(keys.instances.length);
    if (name.includes("/")) continue;
    const i = codecs.instance.decode(kv.value);
    i.project = DEFAULT_PROJECT;
    const res = await store.txn(
      [ifModRevision(kv.key, kv.modRevision)],
      [
        { type: "put", key: keys.instance(instanceRef(DEFAULT_PROJECT, name)), value: codecs.instance.encode(i) },
        { type: "delete", key: kv.key },
      ],
      [],
      o,
    );
    if (res.succeeded) moved++;
  }
  const { kvs: assignments } = await store.range(keys.assignments, o);
  for (const kv of assignments) {
    const [node, name, ...rest] = kv.key.slice(keys.assignments.length).split("/");
    if (!node || !name || rest.length > 0) continue;
    const a = codecs.assignment.decode(kv.value);
    if (a.instance) a.instance.project = DEFAULT_PROJECT;
    const res = await store.txn(
      [ifModRevision(kv.key, kv.modRevision)],
      [
        {
          type: "put",
          key: keys.assignment(node, instanceRef(DEFAULT_PROJECT, name)),
          value: codecs.assignment.encode(create(AssignmentSchema, a)),
        },
        { type: "delete", key: kv.key },
      ],
      [],
      o,
    );
    if (res.succeeded) moved++;
  }
  const { kvs: nodeKeys } = await store.range(keys.nodes, { ...o, keysOnly: true });
  for (const kv of nodeKeys) {
    const p = kv.key.slice(keys.nodes.length).split("/");
    if (p.length === 3 && (p[1] === "status" || p[1] === "orphans")) {
      await store.delete(kv.key, o);
      moved++;
    }
  }
  return moved;
}
