/*
 * Transactions that put an instance on a node or take it off, as compares and ops for one txn.
 * Every placement and release compares the node's allocation, so two schedulers (or a scheduler
 * and a controller) can never over-commit a node; every one compares the instance's revision,
 * so a change made meanwhile is never overwritten.
 *
 *   place:   [mod(instance) = rev] put instance (Scheduled on node), put assignments/<node>/<project>/<name>
 *   unplace: [mod(instance) = rev, mod(allocation)] delete assignment and status,
 *            drop from the allocation, and (HA, drain) put the instance back to Pending
 */
import { clone, create } from "@bufbuild/protobuf";
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { type Instance, InstanceSchema, InstanceStatusSchema, Phase } from "../../../api/gen/hypervisor/v1/instance_pb.js";
import { type Allocation, AllocationSchema } from "../../../api/gen/hypervisor/v1/store_pb.js";
import { type Compare, ifModRevision, type Op } from "../store/index.js";
import { codecs, encodeAssignment } from "./codecs.js";
import { requestOf } from "./instance-view.js";
import { keys, refOf } from "./keys.js";

/** A record as read, with the revision a write compares against (0: absent). */
export interface Read<T> {
  value: T;
  modRevision: number;
}

/**
 * Instance `i` (read at `rev`) Scheduled on `node`: the compare on its revision, and the puts of
 * the record and of the node's assignment (the same bytes, wrapped).
 */
export function placeOps(
  i: Instance,
  rev: number,
  node: string,
  opts: { now?: Timestamp; message?: string } = {},
): { compare: Compare; next: Instance; ops: [Op, Op] } {
  const now = opts.now ?? timestampNow();
  const next = clone(InstanceSchema, i);
  next.status = create(InstanceStatusSchema, {
    phase: Phase.SCHEDULED,
    node,
    message: opts.message ?? "",
    scheduledTime: now,
    updateTime: now,
  });
  const value = codecs.instance.encode(next);
  return {
    compare: ifModRevision(keys.instance(refOf(i)), rev),
    next,
    ops: [
      { type: "put", key: keys.instance(refOf(i)), value },
      { type: "put", key: keys.assignment(node, refOf(i)), value: encodeAssignment(value) },
    ],
  };
}

/**
 * The instance record `value` (already encoded) and, when it is placed, its node's assignment:
 * a change of desired state reaches the agent in the same txn.
 */
export function instanceOps(i: Instance, value: Uint8Array = codecs.instance.encode(i)): Op[] {
  const ops: Op[] = [{ type: "put", key: keys.instance(refOf(i)), value }];
  const node = i.status?.node ?? "";
  if (node !== "") ops.push({ type: "put", key: keys.assignment(node, refOf(i)), value: encodeAssignment(value) });
  return ops;
}

/**
 * The node's allocation `a` (undefined: none yet) with instance `uid` added (with `i`'s request)
 * or dropped: the compare on the allocation's revision, and the put (none when nothing changes).
 */
export function allocationOps(
  node: string,
  a: Read<Allocation> | undefined,
  change: { add: Instance } | { drop: string },
): { compare: Compare; ops: Op[] } {
  const compare = ifModRevision(keys.allocation(node), a?.modRevision ?? 0);
  const alloc = a ? clone(AllocationSchema, a.value) : create(AllocationSchema, {});
  if ("add" in change) alloc.instances[change.add.uid] = requestOf(change.add);
  else if (alloc.instances[change.drop]) delete alloc.instances[change.drop];
  else return { compare, ops: [] };
  return { compare, ops: [{ type: "put", key: keys.allocation(node), value: codecs.allocation.encode(alloc) }] };
}

/**
 * Takes instance `i` (read at revision `rev`) off `node`: its assignment and status go and the
 * node's allocation `a` drops it; with `pending`, the instance goes back to Pending with that
 * message for the scheduler to place again (the HA and drain controllers), without it the record
 * stays as it is.
 */
export function unplaceOps(
  i: Instance,
  rev: number,
  node: string,
  a: Read<Allocation> | undefined,
  pending?: string,
): { compares: Compare[]; ops: Op[] } {
  const release = allocationOps(node, a, { drop: i.uid });
  const ops: Op[] = [
    { type: "delete", key: keys.assignment(node, refOf(i)) },
    { type: "delete", key: keys.status(node, refOf(i)) },
    ...release.ops,
  ];
  if (pending !== undefined) {
    const next = clone(InstanceSchema, i);
    next.status = create(InstanceStatusSchema, {
      phase: Phase.PENDING,
      message: pending,
      updateTime: timestampNow(),
      restartCount: i.status?.restartCount ?? 0,
    });
    ops.push({ type: "put", key: keys.instance(refOf(i)), value: codecs.instance.encode(next) });
  }
  return { compares: [ifModRevision(keys.instance(refOf(i)), rev), release.compare], ops };
}

/**
 * Removes a deleted instance for good once nothing runs it: the record, the assignment and the
 * status on `node` (when it was placed), and its share of the node's allocation.
 */
export function removeOps(i: Instance, rev: number, node: string, a: Read<Allocation> | undefined): { compares: Compare[]; ops: Op[] } {
  const compares: Compare[] = [ifModRevision(keys.instance(refOf(i)), rev)];
  const ops: Op[] = [{ type: "delete", key: keys.instance(refOf(i)) }];
  if (node !== "") {
    const release = allocationOps(node, a, { drop: i.uid });
    compares.push(release.compare);
    ops.push(
      { type: "delete", key: keys.assignment(node, refOf(i)) },
      { type: "delete", key: keys.status(node, refOf(i)) },
      ...release.ops,
    );
  }
  return { compares, ops };
}
