/*
 * ProjectService: the tenant boundary. A project's record is projects/<name>; with a quota, its
 * usage is projectusage/<name>, moved by every create and removal in the same txn
 * (pkg/cluster/state/projects.ts).
 *
 *   quota set on a project without one, or a delete:
 *     1. txn[mod(record) = read] put record {counting}     creates and removals there now wait
 *     2. count instances/<p>/ (a read after 1: exact, nothing moves meanwhile)
 *     3. txn[mod(record) = 1's] put usage, record {quota}   (a delete: delete record, usage, bindings)
 *   a step that fails puts the record back as it was (or a later call finishes it).
 *
 * The default project always exists: a server writes its record at start if it is missing.
 */
import type { Instance } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { clone, create } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  type Project,
  type ProjectRecord,
  ProjectRecordSchema,
  ProjectSchema,
  type ProjectService,
  ProjectUsageSchema,
  type Quota,
  QuotaSchema,
  type Usage,
} from "../../api/gen/hypervisor/v1/project_pb.js";
import { codecs, DEFAULT_PROJECT, hasQuota, keys, overQuota, usageOf } from "../../pkg/cluster/state/index.js";
import { ifAbsent, ifModRevision, type Op, type Store } from "../../pkg/cluster/store/index.js";
import { checkText, LIMITS } from "../../pkg/validation/index.js";
import { callerKey, may } from "./access/index.js";
import type { ServerContext } from "./context.js";
import { invalid, refuse, show, validateName } from "./validate.js";

const MASK = ["description", "quota", "restricted"] as const;

/** Writes the default project's record if no server has (a txn comparing it absent). */
export async function ensureDefaultProject(store: Store, signal?: AbortSignal): Promise<void> {
  const key = keys.project(DEFAULT_PROJECT);
  const record = create(ProjectRecordSchema, {
    name: DEFAULT_PROJECT,
    description: "the project of instances created without one",
    createTime: timestampNow(),
  });
  await store.txn([ifAbsent(key)], [{ type: "put", key, value: codecs.project.encode(record) }], [], signal ? { signal } : {});
}

export function projectService(ctx: ServerContext): ServiceImpl<typeof ProjectService> {
  const { store } = ctx;

  async function read(name: string, signal: AbortSignal): Promise<{ record: ProjectRecord; rev: number }> {
    validateName("name", name);
    const kv = await store.get(keys.project(name), { signal });
    if (!kv) throw new ConnectError(`project ${show(name)} not found`, Code.NotFound);
    return { record: codecs.project.decode(kv.value), rev: kv.modRevision };
  }

  /** What the project's instances hold, counted from the store (exact while it is counting). */
  async function count(name: string, signal: AbortSignal): Promise<Usage> {
    const { kvs } = await store.range(keys.instancesOf(name), { signal });
    return usageOf(kvs.map((kv) => codecs.instance.decode(kv.value)));
  }

  /** The project as the API shows it, its usage from the usage key (with a quota) or the server's copy. */
  /** Each project's instances in the server's copy, in one pass over it (a list of projects reads it once). */
  function instancesByProject(): Map<string, Instance[]> {
    const by = new Map<string, Instance[]>();
    for (const { value } of ctx.informers.instances.items.values()) {
      const p = value.project || DEFAULT_PROJECT;
      const list = by.get(p);
      if (list) list.push(value);
      else by.set(p, [value]);
    }
    return by;
  }

  async function view(record: ProjectRecord, signal: AbortSignal, held = instancesByProject()): Promise<Project> {
    let usage: Usage;
    if (hasQuota(record.quota) && !record.counting) {
      const kv = await store.get(keys.projectUsage(record.name), { signal });
      usage = kv ? (codecs.projectUsage.decode(kv.value).usage ?? usageOf([])) : usageOf([]);
    } else usage = usageOf(held.get(record.name) ?? []);
    return create(ProjectSchema, {
      name: record.name,
      description: record.description,
      restricted: record.restricted,
      usage,
      ...(record.quota && hasQuota(record.quota) ? { quota: record.quota } : {}),
      ...(record.createTime ? { createTime: record.createTime } : {}),
    });
  }

  function checkQuota(q: Quota | undefined): Quota | undefined {
    if (!q || !hasQuota(q)) return undefined;
    if (q.memoryMib > 16n * 1024n ** 3n) throw invalid("quota.memory_mib", `${q.memoryMib} is more than 16 EiB`);
    if (q.diskGib > 1024n ** 4n) throw invalid("quota.disk_gib", `${q.diskGib} is more than 1 ZiB`);
    return clone(QuotaSchema, q);
  }

  /** Puts `record` if the stored one is still at `rev`; false when it changed meanwhile. */
  async function put(record: ProjectRecord, rev: number, signal: AbortSignal, more: Op[] = []): Promise<number | undefined> {
    const res = await store.txn(
      [ifModRevision(keys.project(record.name), rev)],
      [{ type: "put", key: keys.project(record.name), value: codecs.project.encode(record) }, ...more],
      [],
      { signal },
    );
    return res.succeeded ? res.revision : undefined;
  }

  const changing = (name: string) => new ConnectError(`project ${name} is changing concurrently; try again`, Code.Aborted);

  /**
   * Freezes the project (creates and removals in it wait), runs `then` with what it holds, and
   * writes what `then` returns comparing the frozen record; unfreezes it as it was on any failure.
   */
  async function frozen(
    name: string,
    signal: AbortSignal,
    then: (usage: Usage, record: ProjectRecord) => { ops: Op[]; record?: ProjectRecord },
  ): Promise<void> {
    const { record, rev } = await read(name, signal);
    const marked = clone(ProjectRecordSchema, record);
    marked.counting = true;
    const at = await put(marked, rev, signal);
    if (!at) throw changing(name);
    try {
      const next = then(await count(name, signal), record);
      const ops: Op[] = next.record ? [{ type: "put", key: keys.project(name), value: codecs.project.encode(next.record) }] : [];
      const res = await store.txn([ifModRevision(keys.project(name), at)], [...ops, ...next.ops], [], { signal });
      if (!res.succeeded) throw changing(name);
    } catch (e) {
      const back = clone(ProjectRecordSchema, record);
      back.counting = false;
      await put(back, at, AbortSignal.timeout(10_000)).catch(() => undefined);
      throw e;
    }
  }

  return {
    async createProject(req, hctx) {
      validateName("name", req.name);
      refuse(checkText("description", req.description, LIMITS.maxDescriptionBytes));
      const quota = checkQuota(req.quota);
      const record = create(ProjectRecordSchema, {
        name: req.name,
        description: req.description,
        restricted: req.restricted,
        createTime: timestampNow(),
        ...(quota ? { quota } : {}),
      });
      const ops: Op[] = [{ type: "put", key: keys.project(req.name), value: codecs.project.encode(record) }];
      // A new project holds nothing: its usage starts at zero.
      if (quota)
        ops.push({
          type: "put",
          key: keys.projectUsage(req.name),
          value: codecs.projectUsage.encode(create(ProjectUsageSchema, { usage: usageOf([]) })),
        });
      const res = await store.txn([ifAbsent(keys.project(req.name)), ifAbsent(keys.projectUsage(req.name))], ops, [], {
        signal: hctx.signal,
      });
      if (!res.succeeded) throw new ConnectError(`project ${show(req.name)} already exists`, Code.AlreadyExists);
      ctx.log.info({ project: req.name, quota: Boolean(quota), restricted: req.restricted }, "project created");
      return { project: await view(record, hctx.signal) };
    },

    async getProject(req, hctx) {
      return { project: await view((await read(req.name, hctx.signal)).record, hctx.signal) };
    },

    async listProjects(_req, hctx: HandlerContext) {
      const caller = hctx.values.get(callerKey);
      const all = [...ctx.informers.projects.items.values()].map((x) => x.value);
      const seen = caller.rights.has("projects:list") ? all : all.filter((p) => may(caller, "projects:get", p.name));
      seen.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      const held = instancesByProject();
      return { projects: await Promise.all(seen.map((p) => view(p, hctx.signal, held))) };
    },

    async updateProject(req, hctx) {
      if (req.updateMask.length === 0) throw invalid("update_mask", `name at least one of ${MASK.join(", ")}`);
      for (const [i, f] of req.updateMask.entries())
        if (!(MASK as readonly string[]).includes(f)) throw invalid(`update_mask[${i}]`, `${show(f)} is not one of ${MASK.join(", ")}`);
      const mask = new Set(req.updateMask);
      if (mask.has("description")) refuse(checkText("description", req.description, LIMITS.maxDescriptionBytes));
      const quota = mask.has("quota") ? checkQuota(req.quota) : undefined;
      const { record, rev } = await read(req.name, hctx.signal);
      if (record.counting) throw new ConnectError(`project ${req.name} is being counted or deleted; try again`, Code.Unavailable);
      const next = clone(ProjectRecordSchema, record);
      if (mask.has("description")) next.description = req.description;
      if (mask.has("restricted")) next.restricted = req.restricted;
      const had = hasQuota(record.quota);
      const over = (usage: Usage) => {
        const why = quota ? overQuota(quota, usage) : undefined;
        if (why)
          throw new ConnectError(
            `quota: project ${req.name} holds more than that (${why}); delete instances first, nothing is removed to fit a quota`,
            Code.FailedPrecondition,
          );
      };
      if (!mask.has("quota") || (!had && !quota)) {
        if (!(await put(next, rev, hctx.signal))) throw changing(req.name);
      } else if (!quota) {
        next.quota = undefined;
        if (!(await put(next, rev, hctx.signal, [{ type: "delete", key: keys.projectUsage(req.name) }]))) throw changing(req.name);
      } else if (had) {
        // The usage is kept already: compare it, so no create slips past the new limit.
        const kv = await store.get(keys.projectUsage(req.name), { signal: hctx.signal });
        over(kv ? (codecs.projectUsage.decode(kv.value).usage ?? usageOf([])) : usageOf([]));
        next.quota = quota;
        const res = await store.txn(
          [
            ifModRevision(keys.project(req.name), rev),
            kv ? ifModRevision(keys.projectUsage(req.name), kv.modRevision) : ifAbsent(keys.projectUsage(req.name)),
          ],
          [{ type: "put", key: keys.project(req.name), value: codecs.project.encode(next) }],
          [],
          { signal: hctx.signal },
        );
        if (!res.succeeded) throw changing(req.name);
      } else {
        next.quota = quota;
        await frozen(req.name, hctx.signal, (usage) => {
          over(usage);
          return {
            record: next,
            ops: [
              { type: "put", key: keys.projectUsage(req.name), value: codecs.projectUsage.encode(create(ProjectUsageSchema, { usage })) },
            ],
          };
        });
      }
      ctx.log.info({ project: req.name, fields: [...mask] }, "project updated");
      return { project: await view((await read(req.name, hctx.signal)).record, hctx.signal) };
    },

    async deleteProject(req, hctx) {
      validateName("name", req.name);
      if (req.name === DEFAULT_PROJECT) throw new ConnectError("project default cannot be deleted", Code.FailedPrecondition);
      const { kvs } = await store.range(keys.roleBindings, { signal: hctx.signal });
      const bindings = kvs.filter((kv) => codecs.roleBinding.decode(kv.value).project === req.name).map((kv) => kv.key);
      await frozen(req.name, hctx.signal, (usage) => {
        if (usage.instances > 0)
          throw new ConnectError(
            `project ${req.name} holds ${usage.instances} instance(s); delete them first (only an empty project can be deleted)`,
            Code.FailedPrecondition,
          );
        return {
          ops: [
            { type: "delete", key: keys.project(req.name) },
            { type: "delete", key: keys.projectUsage(req.name) },
            ...bindings.map((key): Op => ({ type: "delete", key })),
          ],
        };
      });
      ctx.log.warn({ project: req.name, bindings: bindings.length }, "project deleted");
      return {};
    },
  };
}
