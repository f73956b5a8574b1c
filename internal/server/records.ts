/*
 * Encoding of the records the server keeps in the store, and the merge of an instance's spec
 * record with the status record its agent writes. All values are protobuf binary (api/gen).
 */
import { clone, create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import {
  type Instance,
  InstanceSchema,
  type InstanceStatus,
  InstanceStatusSchema,
  Phase,
} from "../../api/gen/hypervisor/v1/instance_pb.js";
import { type Node, NodeSchema, type Resources, ResourcesSchema } from "../../api/gen/hypervisor/v1/node_pb.js";
import {
  type AgentEndpoint,
  AgentEndpointSchema,
  type Allocation,
  AllocationSchema,
  AssignmentSchema,
} from "../../api/gen/hypervisor/v1/store_pb.js";
import { type Compare, ifModRevision, keys, type KeyValue, type Op, type Store } from "../../pkg/cluster/store/index.js";
import type { Informers } from "./context.js";

export const decodeInstance = (kv: KeyValue): Instance => fromBinary(InstanceSchema, kv.value);
export const decodeNode = (kv: KeyValue): Node => fromBinary(NodeSchema, kv.value);
export const decodeAllocation = (kv: KeyValue): Allocation => fromBinary(AllocationSchema, kv.value);
export const encodeInstance = (i: Instance): Uint8Array => toBinary(InstanceSchema, i);
export const encodeNode = (n: Node): Uint8Array => toBinary(NodeSchema, n);
export const encodeAllocation = (a: Allocation): Uint8Array => toBinary(AllocationSchema, a);

/**
 * An Assignment holding the instance `encodeInstance` gave: its one field is the instance as a
 * length-delimited field, so the bytes are wrapped, not encoded a second time.
 */
export function encodeAssignment(instance: Uint8Array): Uint8Array {
  return new BinaryWriter().tag(ASSIGNMENT_INSTANCE_FIELD, WireType.LengthDelimited).bytes(instance).finish();
}
const ASSIGNMENT_INSTANCE_FIELD = AssignmentSchema.field.instance.number;

/**
 * The instance as users see it: the spec record, with the agent's status when the agent has
 * reported on this very instance (same uid; a stale status of an older namesake is ignored).
 */
export function merged(instance: Instance, status: Instance | undefined): Instance {
  const out = clone(InstanceSchema, instance);
  const st = reported(instance, status);
  if (st) {
    out.status = clone(InstanceStatusSchema, st);
    if (!out.status.node) out.status.node = instance.status?.node ?? "";
    if (!out.status.scheduledTime && instance.status?.scheduledTime) out.status.scheduledTime = instance.status.scheduledTime;
  }
  return out;
}

/** The agent's status of this very instance (same uid, a phase set), if it has reported one. */
function reported(instance: Instance, status: Instance | undefined): InstanceStatus | undefined {
  const st = status?.uid === instance.uid ? status.status : undefined;
  return st && st.phase !== Phase.UNSPECIFIED ? st : undefined;
}

/** "Running" for Phase.RUNNING. */
export function phaseName(p: Phase): string {
  const n = Phase[p] ?? "UNSPECIFIED";
  return n.charAt(0) + n.slice(1).toLowerCase();
}

/** The phase `merged(instance, status)` would show, without copying anything. */
export function mergedPhase(instance: Instance, status: Instance | undefined): Phase {
  return reported(instance, status)?.phase ?? instance.status?.phase ?? Phase.UNSPECIFIED;
}

/** The node `merged(instance, status)` would show, without copying anything. */
export function mergedNode(instance: Instance, status: Instance | undefined): string {
  return reported(instance, status)?.node || (instance.status?.node ?? "");
}

export function instancePhase(i: Instance): Phase {
  return i.status?.phase ?? Phase.UNSPECIFIED;
}

/** What an instance reserves on its node. */
export function requestOf(i: Instance): Resources {
  return create(ResourcesSchema, {
    vcpus: i.spec?.vcpus ?? 0,
    memoryMib: i.spec?.memoryMib ?? 0n,
    diskGib: i.spec?.diskGib ?? 0n,
  });
}

export function allocationTotals(a: Allocation | undefined): { vcpus: number; memoryMib: number; diskGib: number; count: number } {
  const t = { vcpus: 0, memoryMib: 0, diskGib: 0, count: 0 };
  if (!a) return t;
  for (const r of Object.values(a.instances)) {
    t.vcpus += r.vcpus;
    t.memoryMib += Number(r.memoryMib);
    t.diskGib += Number(r.diskGib);
    t.count++;
  }
  return t;
}

export function touch(i: Instance): void {
  if (i.status) i.status.updateTime = timestampNow();
}

/** Instances per phase name ("Running": 3), from the informers' copies. */
export function instancesByPhase(informers: Pick<Informers, "instances" | "statuses">): Map<string, number> {
  const byPhase = new Map<string, number>();
  for (const [key, { value }] of informers.instances.items) {
    const p = phaseName(mergedPhase(value, informers.statuses.get(keys.status(key.slice(keys.instances.length)))?.value));
    byPhase.set(p, (byPhase.get(p) ?? 0) + 1);
  }
  return byPhase;
}

/** Where the server reaches a node's agent (agents/<node>), or undefined if it publishes none. */
export async function agentEndpoint(store: Store, node: string, signal?: AbortSignal): Promise<AgentEndpoint | undefined> {
  const kv = await store.get(keys.agent(node), signal ? { signal } : {});
  return kv ? fromBinary(AgentEndpointSchema, kv.value) : undefined;
}

/**
 * The node's allocation without the instance `uid`: the compare on the allocation's revision,
 * and the put (none when the allocation does not hold it).
 */
export function releaseAllocation(informers: Informers, node: string, uid: string): { compare: Compare; ops: Op[] } {
  const a = informers.allocations.get(keys.allocation(node));
  const compare = ifModRevision(keys.allocation(node), a?.modRevision ?? 0);
  if (!a?.value.instances[uid]) return { compare, ops: [] };
  const alloc = clone(AllocationSchema, a.value);
  delete alloc.instances[uid];
  return { compare, ops: [{ type: "put", key: keys.allocation(node), value: encodeAllocation(alloc) }] };
}

/**
 * Takes instance `i` (read at revision `rev`) off `node` in one txn's worth of compares and ops:
 * its assignment and status go and the node's allocation drops it; with `pending`, the instance
 * goes back to Pending with that message for the scheduler to place again (the HA and drain
 * controllers), without it the record stays as it is (a deletion the GC then finishes).
 */
export function unplace(
  informers: Informers,
  i: Instance,
  rev: number,
  node: string,
  pending?: string,
): { compares: Compare[]; ops: Op[] } {
  const release = releaseAllocation(informers, node, i.uid);
  const ops: Op[] = [{ type: "delete", key: keys.assignment(node, i.name) }, { type: "delete", key: keys.status(i.name) }, ...release.ops];
  if (pending !== undefined) {
    const next = clone(InstanceSchema, i);
    next.status = create(InstanceStatusSchema, {
      phase: Phase.PENDING,
      message: pending,
      updateTime: timestampNow(),
      restartCount: i.status?.restartCount ?? 0,
    });
    ops.push({ type: "put", key: keys.instance(i.name), value: encodeInstance(next) });
  }
  return { compares: [ifModRevision(keys.instance(i.name), rev), release.compare], ops };
}
