/*
 * Playing the server for agent tests: assignments written as the scheduler and the instance API
 * write them (assign, change with a generation bump), and statuses read back as the agent wrote
 * them.
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import {
  type Instance,
  InstanceSchema,
  type InstanceSpec,
  type InstanceStatus,
  Phase,
  PowerState,
  RestartPolicy,
} from "../../api/gen/hypervisor/v1/instance_pb.js";
import { AssignmentSchema } from "../../api/gen/hypervisor/v1/store_pb.js";
import { type Store } from "../../pkg/cluster/store/index.js";
import { instanceRef, keys, parseNodeKey, refOf } from "../../pkg/cluster/state/index.js";

type SpecFields = Partial<Omit<InstanceSpec, "$typeName" | "$unknown">>;

/** A Scheduled instance of the mock driver (spec fields and labels may be overridden). */
export function newInstance(name: string, node: string, spec: SpecFields = {}, labels: Record<string, string> = {}): Instance {
  return create(InstanceSchema, {
    name,
    uid: randomUUID(),
    generation: 1n,
    createTime: timestampNow(),
    labels,
    spec: {
      driver: "mock",
      vcpus: 1,
      memoryMib: 64n,
      desiredPowerState: PowerState.RUNNING,
      restartPolicy: RestartPolicy.ALWAYS,
      ...spec,
    },
    status: { phase: Phase.SCHEDULED, node },
  });
}

export async function assign(store: Store, node: string, inst: Instance): Promise<void> {
  await store.put(keys.assignment(node, refOf(inst)), toBinary(AssignmentSchema, create(AssignmentSchema, { instance: inst })));
}

/** Changes the assigned instance as the API does: edit, bump the generation, rewrite. */
export async function change(store: Store, node: string, name: string, edit: (i: Instance) => void): Promise<Instance> {
  const kv = await store.get(keys.assignment(node, `default/${name}`));
  assert.ok(kv, `assignment ${name} exists`);
  const inst = fromBinary(AssignmentSchema, kv.value).instance!;
  edit(inst);
  inst.generation += 1n;
  await assign(store, node, inst);
  return inst;
}

/**
 * The status an agent wrote for `name` (a ref "<project>/<name>", or a name in the default
 * project), on whichever node (nodes/<node>/status/<project>/<name>).
 */
export async function statusOf(store: Store, name: string): Promise<InstanceStatus | undefined> {
  return (await statusRecord(store, name))?.status;
}

/** The whole status record (name, uid, delete time, status) an agent wrote for `name`. */
export async function statusRecord(store: Store, name: string): Promise<Instance | undefined> {
  const ref = name.includes("/") ? name : instanceRef("", name);
  const { kvs } = await store.range(keys.nodes);
  const kv = kvs.find((kv) => {
    const k = parseNodeKey(kv.key);
    return k?.kind === "status" && k.ref === ref;
  });
  return kv ? fromBinary(InstanceSchema, kv.value) : undefined;
}

/** A probe for until(): the status once it is in `phase` (and passes `extra`). */
export const inPhase =
  (store: Store, name: string, phase: Phase, extra: (s: InstanceStatus) => boolean = () => true) =>
  async (): Promise<InstanceStatus | undefined> => {
    const s = await statusOf(store, name);
    return s && s.phase === phase && extra(s) ? s : undefined;
  };
