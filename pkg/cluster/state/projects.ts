/*
 * Project quotas in the store. A project with a quota keeps its usage in projectusage/<name>;
 * every create and every removal in it changes that key in the same transaction, comparing its
 * revision, so concurrent creates can never take the project past its quota (one of two racing
 * txns fails its compare and tries again against the new usage).
 *
 *   create/remove in p:  [mod(projects/p) = read] (+ with a quota: [mod(projectusage/p) = read], put usage ± r)
 *
 * Every create and removal compares the project's record, with or without a quota: setting a
 * quota on a project that had none marks it counting (which fails those compares), counts what
 * the project holds, then writes the usage and clears the mark in one txn comparing the record.
 * Nothing is created or removed in the project between the two, so the count is exact.
 */
import { create } from "@bufbuild/protobuf";
import type { Instance } from "../../../api/gen/hypervisor/v1/instance_pb.js";
import {
  type ProjectRecord,
  type ProjectUsage,
  ProjectUsageSchema,
  type Quota,
  type Usage,
  UsageSchema,
} from "../../../api/gen/hypervisor/v1/project_pb.js";
import { type Compare, ifAbsent, ifModRevision, type Op } from "../store/index.js";
import { codecs } from "./codecs.js";
import { keys } from "./keys.js";

/** A record as read, with its revision (0: absent). */
export interface Versioned<T> {
  value: T | undefined;
  rev: number;
}

export function hasQuota(q: Quota | undefined): q is Quota {
  return q !== undefined && (q.instances > 0 || q.vcpus > 0 || q.memoryMib > 0n || q.diskGib > 0n);
}

/** What `instances` hold together, by their specs. */
export function usageOf(instances: readonly Instance[]): Usage {
  const u = create(UsageSchema, {});
  for (const i of instances) {
    u.instances += 1;
    u.vcpus += i.spec?.vcpus ?? 0;
    u.memoryMib += i.spec?.memoryMib ?? 0n;
    u.diskGib += i.spec?.diskGib ?? 0n;
  }
  return u;
}

/** `a` plus `sign` times `b`, never below zero. */
export function addUsage(a: Usage, b: Usage, sign: 1 | -1): Usage {
  const n = (x: number, y: number) => Math.max(0, x + sign * y);
  const big = (x: bigint, y: bigint) => (sign > 0 ? x + y : x > y ? x - y : 0n);
  return create(UsageSchema, {
    instances: n(a.instances, b.instances),
    vcpus: n(a.vcpus, b.vcpus),
    memoryMib: big(a.memoryMib, b.memoryMib),
    diskGib: big(a.diskGib, b.diskGib),
  });
}

/** The first limit of `quota` that `usage` passes, said for people; undefined when within it. */
export function overQuota(quota: Quota, usage: Usage): string | undefined {
  if (quota.instances > 0 && usage.instances > quota.instances) return `instances ${usage.instances} > ${quota.instances}`;
  if (quota.vcpus > 0 && usage.vcpus > quota.vcpus) return `vcpus ${usage.vcpus} > ${quota.vcpus}`;
  if (quota.memoryMib > 0n && usage.memoryMib > quota.memoryMib) return `memory_mib ${usage.memoryMib} > ${quota.memoryMib}`;
  if (quota.diskGib > 0n && usage.diskGib > quota.diskGib) return `disk_gib ${usage.diskGib} > ${quota.diskGib}`;
  return undefined;
}

/**
 * What creating (sign 1) or removing (sign -1) `delta` in `project` adds to a txn: the record's
 * compare, and with a quota the usage's compare and new value. `over` names the limit a create
 * would pass (the txn must not be sent then). `counting`: the project is being counted, so
 * nothing may be created or removed in it yet (try again shortly).
 */
export function projectOps(
  project: string,
  record: Versioned<ProjectRecord>,
  usage: Versioned<ProjectUsage> | undefined,
  delta: Usage,
  sign: 1 | -1,
): { compares: Compare[]; ops: Op[]; over?: string; counting?: boolean } {
  const compares: Compare[] = [record.rev ? ifModRevision(keys.project(project), record.rev) : ifAbsent(keys.project(project))];
  const rec = record.value;
  if (rec?.counting) return { compares, ops: [], counting: true };
  if (!hasQuota(rec?.quota)) return { compares, ops: [] };
  const key = keys.projectUsage(project);
  const before = usage?.value?.usage ?? create(UsageSchema, {});
  const after = addUsage(before, delta, sign);
  const over = sign > 0 ? overQuota(rec.quota, after) : undefined;
  compares.push(usage?.rev ? ifModRevision(key, usage.rev) : ifAbsent(key));
  const ops: Op[] = [{ type: "put", key, value: codecs.projectUsage.encode(create(ProjectUsageSchema, { usage: after })) }];
  return over ? { compares, ops, over } : { compares, ops };
}
