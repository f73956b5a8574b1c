/*
 * The part of a create or a removal that concerns its project: the project must exist (the
 * default one always does, even before its record is written), and with a quota the usage moves
 * in the same txn (pkg/cluster/state/projects.ts). The record comes from this server's copy
 * first; a txn whose compare fails reads it from the store on the next try (`fresh`).
 */
import { Code, ConnectError } from "@connectrpc/connect";
import type { Instance } from "../../api/gen/hypervisor/v1/instance_pb.js";
import type { ProjectRecord, ProjectUsage } from "../../api/gen/hypervisor/v1/project_pb.js";
import { codecs, DEFAULT_PROJECT, hasQuota, keys, projectOps, usageOf, type Versioned } from "../../pkg/cluster/state/index.js";
import type { Compare, Op } from "../../pkg/cluster/store/index.js";
import type { ServerContext } from "./context.js";
import { show } from "./validate.js";

export async function readProject(
  ctx: Pick<ServerContext, "store" | "informers">,
  project: string,
  fresh: boolean,
  signal?: AbortSignal,
): Promise<Versioned<ProjectRecord>> {
  const cached = fresh ? undefined : ctx.informers.projects.get(keys.project(project));
  if (cached) return { value: cached.value, rev: cached.modRevision };
  const kv = await ctx.store.get(keys.project(project), signal ? { signal } : {});
  return kv ? { value: codecs.project.decode(kv.value), rev: kv.modRevision } : { value: undefined, rev: 0 };
}

async function readUsage(ctx: Pick<ServerContext, "store">, project: string, signal?: AbortSignal): Promise<Versioned<ProjectUsage>> {
  const kv = await ctx.store.get(keys.projectUsage(project), signal ? { signal } : {});
  return kv ? { value: codecs.projectUsage.decode(kv.value), rev: kv.modRevision } : { value: undefined, rev: 0 };
}

export type ProjectParts = { compares: Compare[]; ops: Op[]; quota: boolean } | { counting: true };

/**
 * The compares and writes that creating (sign 1) or removing (sign -1) `instances`, all of
 * `project`, adds to a txn; `{ counting }` while the project's usage is being counted. A create
 * in a project that does not exist is NotFound; one past the quota ResourceExhausted.
 */
export async function projectParts(
  ctx: Pick<ServerContext, "store" | "informers">,
  project: string,
  instances: readonly Instance[],
  sign: 1 | -1,
  fresh: boolean,
  signal?: AbortSignal,
): Promise<ProjectParts> {
  const record = await readProject(ctx, project, fresh, signal);
  if (!record.value && project !== DEFAULT_PROJECT && sign > 0)
    throw new ConnectError(`project: ${show(project)} not found (hypervisor-ctl project create)`, Code.NotFound);
  const quota = Boolean(record.value && !record.value.counting && hasQuota(record.value.quota));
  const usage = quota ? await readUsage(ctx, project, signal) : undefined;
  const parts = projectOps(project, record, usage, usageOf(instances), sign);
  if (parts.counting) return { counting: true };
  if (parts.over)
    throw new ConnectError(
      `project ${project} is at its quota: this would make ${parts.over}; delete instances or ask for a larger quota`,
      Code.ResourceExhausted,
    );
  return { compares: parts.compares, ops: parts.ops, quota: parts.ops.length > 0 };
}
