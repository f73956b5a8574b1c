/*
 * The instance as users see it: the spec record (instances/<project>/<name>) merged with the status its
 * node's agent reports (nodes/<node>/status/<project>/<name>), and the small facts read off that merge
 * without copying anything.
 */
import { clone, create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import {
  type Instance,
  InstanceSchema,
  type InstanceStatus,
  InstanceStatusSchema,
  Phase,
} from "../../../api/gen/hypervisor/v1/instance_pb.js";
import { type Resources, ResourcesSchema } from "../../../api/gen/hypervisor/v1/node_pb.js";
import type { Allocation } from "../../../api/gen/hypervisor/v1/store_pb.js";

/**
 * The spec record, with the agent's status when the agent has reported on this very instance
 * (same uid; a stale status of an older namesake is ignored).
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

/** The node the scheduler placed the instance on ("" when not placed): where its status lives. */
export function placedOn(instance: Instance): string {
  return instance.status?.node ?? "";
}

/**
 * The agent has destroyed this very instance (its status carries the instance's delete time):
 * what the garbage collector waits for before it removes the records.
 */
export function destroyedBy(instance: Instance, status: Instance | undefined): boolean {
  return status !== undefined && status.uid === instance.uid && status.deleteTime !== undefined;
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
