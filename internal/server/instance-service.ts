/*
 * InstanceService: the only writer of instances/<project>/<name> besides the scheduler's placement and the
 * garbage collector. Every write is a transaction comparing the revision it read; a change of
 * desired state is mirrored into the node's assignment in the same transaction, so the agent
 * (which watches only its own assignments) sees it at once.
 *
 *   Create ──► Pending ──(scheduler)──► Scheduled ──(agent)──► Creating ──► Running
 *                                                     Stop ──► Stopping ──► Stopped
 *   Delete ──► delete_time set ──(agent destroys, drops assignment)──► GC removes the record
 */
import { randomUUID } from "node:crypto";
import { clone, create, equals } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import {
  type CreateInstanceRequest,
  EventType,
  type Instance,
  type InstanceFilter,
  InstanceSchema,
  InstanceService,
  InstanceSpecSchema,
  InstanceStatusSchema,
  Phase,
  PowerState,
  RestartPolicy,
  type WatchInstancesResponse,
  WatchInstancesResponseSchema,
} from "../../api/gen/hypervisor/v1/instance_pb.js";
import { GroupCommit, ifAbsent, MAX_TXN_BYTES, txnBytes, type Op } from "../../pkg/cluster/store/index.js";
import {
  codecs,
  DEFAULT_PROJECT,
  instanceOps,
  keys,
  refOf,
  splitRef,
  merged,
  mergedNode,
  mergedPhase,
  parseNodeKey,
  phaseName,
  placedOn,
  STOP_TIMEOUT_LABEL,
  ConflictError,
  update,
} from "../../pkg/cluster/state/index.js";
import { setTimeout as sleep } from "node:timers/promises";
import { AsyncQueue } from "./async-queue.js";
import { projectParts, readProject } from "./project-txn.js";
import { restrictedRefusal } from "../../pkg/compute/driver/index.js";
import { callerKey, projectFilter, type Right } from "./access/index.js";
import { validateSecretEnv } from "./secret-env.js";
import { WatchHistory } from "./watch-history.js";
import { type ServerContext, statusOf } from "./context.js";
import { nodeView, placedViews, placementRequest } from "./placement-input.js";
import { drainPin } from "./drain-controller.js";
import { decideHa } from "./ha-controller.js";
import { labelsMatch, verdicts } from "./scheduler.js";
import { checkStopTimeout, checkTailBytes, LIMITS } from "../../pkg/validation/index.js";
import {
  RESTART_LABEL,
  invalid,
  parseLabelSelector,
  prefixed,
  refuse,
  requestRef,
  showRef,
  validateLabels,
  validateName,
  validateSpec,
} from "./validate.js";

export { STOP_TIMEOUT_LABEL };
/** Tries of a create: each lost race for a project's usage is one (20 racing creates, 20 tries at worst). */
const MAX_CREATE_ATTEMPTS = 64;

/** A validated new instance, its encoding and its ref. */
interface Made {
  instance: Instance;
  value: Uint8Array;
  ref: string;
}
/** CreateInstances' limit: one etcd txn, within etcd's default --max-txn-ops of 128. */
export const MAX_BATCH = LIMITS.maxCount;
/**
 * An instance's largest encoding. Placement writes it twice in one txn (the record and the
 * node's assignment), and etcd takes at most 1.5 MiB a request by default.
 */
export const MAX_INSTANCE_BYTES = 512 * 1024;

const kib = (bytes: number) => `${Math.ceil(bytes / 1024)} KiB`;

/** A list or watch filter, over an instance's record and its agent's status (nothing copied). */
interface Matcher {
  (instance: Instance, status: Instance | undefined): boolean;
  /** Whether the caller sees this project's instances at all. */
  project(project: string): boolean;
}

function matcher(filter: InstanceFilter | undefined, sees: (project: string) => boolean): Matcher {
  const labels = parseLabelSelector("filter.label_selector", filter?.labelSelector ?? "");
  const node = filter?.node ?? "";
  const phase = filter?.phase ?? Phase.UNSPECIFIED;
  const m = (i: Instance, status: Instance | undefined) =>
    sees(i.project || DEFAULT_PROJECT) &&
    labelsMatch(i.labels, labels) &&
    (phase === Phase.UNSPECIFIED || mergedPhase(i, status) === phase) &&
    (node === "" || mergedNode(i, status) === node);
  return Object.assign(m, { project: sees });
}

/** The projects a list or watch shows: the one asked for ("" is default), or with "*" all the caller may see. */
function visibleProjects(hctx: HandlerContext, right: Right, requested: string): (project: string) => boolean {
  if (requested !== "" && requested !== "*") validateName("project", requested);
  return projectFilter(hctx.values.get(callerKey), right, requested);
}

const notFound = (ref: string) => new ConnectError(`instance ${showRef(ref)} not found`, Code.NotFound);

/** By project, then name. */
export function byRef(a: Instance, b: Instance): number {
  const [x, y] = [refOf(a), refOf(b)];
  return x < y ? -1 : x > y ? 1 : 0;
}

export function instanceService(ctx: ServerContext): ServiceImpl<typeof InstanceService> {
  const { store } = ctx;
  // Creates that arrive together reach etcd together (group commit).
  const creates = new GroupCommit(store);
  /** Deletions for resumed watches; made at the first watch, once the informers have their copy. */
  let history: WatchHistory | undefined;

  async function read(ref: string, signal: AbortSignal): Promise<{ instance: Instance; rev: number }> {
    const kv = await store.get(keys.instance(ref), { signal });
    if (!kv) throw notFound(ref);
    return { instance: codecs.instance.decode(kv.value), rev: kv.modRevision };
  }

  async function view(instance: Instance, signal: AbortSignal): Promise<Instance> {
    const node = placedOn(instance);
    const st = node ? await store.get(keys.status(node, refOf(instance)), { signal }) : undefined;
    return merged(instance, st ? codecs.instance.decode(st.value) : undefined);
  }

  /**
   * Compare-and-swap loop over one instance: `change` edits a copy (or returns false for "no
   * change"); the write also refreshes the node's assignment when the instance is placed.
   */
  async function mutate(ref: string, signal: AbortSignal, change: (i: Instance, current: Instance) => boolean): Promise<Instance> {
    let current: Instance | undefined;
    const res = await guarded(ref, () =>
      update(
        store,
        keys.instance(ref),
        codecs.instance,
        async ({ value: instance }) => {
          if (!instance) throw notFound(ref);
          current = await view(instance, signal);
          const next = clone(InstanceSchema, instance);
          if (!change(next, current)) return undefined;
          next.generation = instance.generation + 1n;
          // The node's assignment is refreshed in the same txn: its agent sees the change at once.
          return { value: next, ops: instanceOps(next).slice(1) };
        },
        { signal },
      ),
    );
    return res.written ? view(res.value!, signal) : current!;
  }

  /** Runs an update of instance `ref`, a record that kept changing under it being Aborted. */
  async function guarded<T>(ref: string, run: () => Promise<T>): Promise<T> {
    try {
      return await run();
    } catch (e) {
      if (e instanceof ConflictError) throw new ConnectError(`instance ${showRef(ref)} is changing too fast; try again`, Code.Aborted);
      throw e;
    }
  }

  /**
   * The instance's driver must offer `cap` on the node it is placed on (or, not placed yet, on
   * some node): otherwise the action cannot ever work, which is FailedPrecondition.
   */
  function requireCapability(i: Instance, cap: "balloon" | "logs", action: string): void {
    const driver = i.spec?.driver ?? "";
    const node = i.status?.node ?? "";
    const nodes = node
      ? [ctx.informers.nodes.get(keys.node(node))?.value].filter((n) => n !== undefined)
      : [...ctx.informers.nodes.items.values()].map((x) => x.value);
    const infos = nodes.flatMap((n) => n.drivers.filter((d) => d.name === driver));
    if (!infos.some((d) => d.capabilities?.[cap]))
      throw new ConnectError(
        `driver ${driver} ${cap === "balloon" ? "has no memory balloon" : "keeps no console log"}${node ? ` on node ${node}` : ""}; ${action} needs one`,
        Code.FailedPrecondition,
      );
  }

  /** A validated new instance, Pending, from a create request, and its encoding. */
  function newInstance(req: CreateInstanceRequest): Made {
    const ref = requestRef(req);
    validateLabels("labels", req.labels);
    validateSpec(req.spec, req.labels);
    validateSecretEnv("spec.secret_env", req.spec.secretEnv, req.spec.env);
    const spec = clone(InstanceSpecSchema, req.spec);
    if (spec.desiredPowerState === PowerState.UNSPECIFIED) spec.desiredPowerState = PowerState.RUNNING;
    if (spec.restartPolicy === RestartPolicy.UNSPECIFIED) spec.restartPolicy = RestartPolicy.ON_FAILURE;
    const now = timestampNow();
    const instance = create(InstanceSchema, {
      name: req.name,
      project: splitRef(ref).project,
      uid: randomUUID(),
      labels: req.labels,
      spec,
      status: create(InstanceStatusSchema, { phase: Phase.PENDING, message: "waiting for the scheduler", updateTime: now }),
      createTime: now,
      generation: 1n,
    });
    const value = codecs.instance.encode(instance);
    if (value.length > MAX_INSTANCE_BYTES)
      throw invalid(
        "spec",
        `the instance is ${kib(value.length)} encoded; at most ${kib(MAX_INSTANCE_BYTES)} allowed (env, config, command and args count)`,
      );
    return { instance, value, ref };
  }

  /**
   * Writes new instances in one txn: each name free in its project, each project there (and
   * unchanged since read), its quota's usage moved along. Creates in projects without a quota go
   * through the group commit; the others compare one usage key, so they go alone and retry.
   */
  async function commitCreates(made: readonly Made[], signal: AbortSignal): Promise<void> {
    const byProject = new Map<string, Made[]>();
    for (const m of made) {
      const p = m.instance.project;
      byProject.set(p, [...(byProject.get(p) ?? []), m]);
    }
    for (const [project, list] of byProject) {
      const restricted = (await readProject(ctx, project, false, signal)).value?.restricted;
      if (!restricted) continue;
      for (const m of list) {
        const why = restrictedRefusal(m.instance.spec!);
        if (why)
          throw invalid(
            `${made.length > 1 ? `instances[${made.indexOf(m)}].` : ""}${why.field}`,
            `${why.message} (project ${project} is restricted)`,
          );
      }
    }
    for (let attempt = 0; attempt < MAX_CREATE_ATTEMPTS; attempt++) {
      const compares = made.map((m) => ifAbsent(keys.instance(m.ref)));
      const ops: Op[] = made.map(({ ref, value }) => ({ type: "put", key: keys.instance(ref), value }));
      let alone = false;
      let counting = false;
      for (const [project, list] of byProject) {
        const parts = await projectParts(
          ctx,
          project,
          list.map((m) => m.instance),
          1,
          attempt > 0,
          signal,
        );
        if ("counting" in parts) {
          counting = true;
          break;
        }
        compares.push(...parts.compares);
        ops.push(...parts.ops);
        alone ||= parts.quota;
      }
      if (counting) {
        await sleep(Math.min(1000, 20 * 2 ** attempt), undefined, { signal });
        continue;
      }
      const res = alone ? await store.txn(compares, ops, [], { signal }) : await creates.commit(compares, ops, signal);
      if (res.succeeded) return;
      const taken = await Promise.all(made.map((m) => store.get(keys.instance(m.ref), { signal })));
      const first = taken.findIndex((kv) => kv !== undefined);
      if (first >= 0) {
        const count = taken.filter((kv) => kv !== undefined).length;
        const n = made.length;
        throw new ConnectError(
          n === 1
            ? `instance ${showRef(made[0]!.ref)} already exists`
            : `instances[${first}].name: instance ${showRef(made[first]!.ref)} already exists` +
                `${count > 1 ? ` (and ${count - 1} more of the ${n})` : ""}; none of the ${n} was created`,
          Code.AlreadyExists,
        );
      }
      // The project's record or usage changed (another create, a quota set): again, read fresh,
      // after a short random wait so that racing creates spread out.
      if (alone) await sleep(Math.random() * Math.min(100, 5 * 2 ** attempt), undefined, { signal });
    }
    throw new ConnectError("instances: their project is changing too fast; try again", Code.Aborted);
  }

  /** Why HA or a drain leaves the instance on its node, when that node is lost or draining. */
  function stuck(i: Instance, node: string): string {
    const lost = !ctx.informers.alive.get(keys.alive(node));
    const draining = ctx.informers.nodes.get(keys.node(node))?.value.draining;
    if (!lost && !draining) return "";
    const d = decideHa(i, node);
    const why = lost ? (d.kind === "stay" ? d.why : undefined) : drainPin(i, node);
    return why ? `, which is ${lost ? "NotReady" : "draining"}: not moved, ${why}` : "";
  }

  function refuseIfDeleting(i: Instance, action: string): void {
    if (i.deleteTime)
      throw new ConnectError(`instance ${showRef(refOf(i))} is being deleted; ${action} is not possible`, Code.FailedPrecondition);
  }

  return {
    async createInstance(req, hctx) {
      const made = newInstance(req);
      await commitCreates([made], hctx.signal);
      ctx.log.info({ instance: made.ref, uid: made.instance.uid, driver: made.instance.spec?.driver }, "instance created");
      return { instance: made.instance };
    },

    async createInstances(req, hctx) {
      const n = req.instances.length;
      if (n === 0) throw invalid("instances", "is empty: give at least one instance");
      if (n > MAX_BATCH) throw invalid("instances", `has ${n} entries; at most ${MAX_BATCH} in one call (one transaction)`);
      const index = new Map<string, number>();
      const made = req.instances.map((r, i) => {
        const m = prefixed(`instances[${i}].`, () => newInstance(r));
        const twin = index.get(m.ref);
        if (twin !== undefined) throw invalid(`instances[${i}].name`, `${showRef(m.ref)} is also the name of instances[${twin}]`);
        index.set(m.ref, i);
        return m;
      });
      const bytes = txnBytes(
        made.map((m) => ifAbsent(keys.instance(m.ref))),
        made.map(({ ref, value }) => ({ type: "put", key: keys.instance(ref), value })),
      );
      if (bytes > MAX_TXN_BYTES)
        throw invalid(
          "instances",
          `the ${n} instances are ${kib(bytes)} encoded; one call takes at most ${kib(MAX_TXN_BYTES)} (one etcd transaction): send fewer at a time`,
        );
      await commitCreates(made, hctx.signal);
      ctx.log.info({ instances: made.map((m) => m.ref), count: n }, "instances created");
      return { instances: made.map((m) => m.instance) };
    },

    async getInstance(req, hctx) {
      const { instance } = await read(requestRef(req), hctx.signal);
      return { instance: await view(instance, hctx.signal) };
    },

    async explainInstance(req, hctx) {
      const ref = requestRef(req);
      const { instance } = await read(ref, hctx.signal);
      if (!instance.spec) throw new ConnectError(`instance ${showRef(ref)} has no spec`, Code.FailedPrecondition);
      const r = placementRequest(instance);
      const at = instance.status?.node ?? "";
      // As if it were being placed now: a placed instance does not count against itself.
      const nodes = [...ctx.informers.nodes.items.values()].map(({ value }) => {
        const v = nodeView(value, ctx.informers);
        if (value.name === at) {
          v.allocated.vcpus -= r.vcpus;
          v.allocated.memoryMib -= r.memoryMib;
          v.allocated.diskGib -= r.diskGib;
          v.allocated.count--;
        }
        return v;
      });
      const v = verdicts(nodes, r, ctx.algorithm, placedViews(ctx.informers, ref));
      return {
        summary: at ? `placed on ${at}${stuck(instance, at)}; now: ${v.summary}` : v.summary,
        best: v.best,
        nodes: v.verdicts.map((x) => ({ node: x.node, feasible: x.feasible, reason: x.reason, score: x.score, scoreParts: x.parts })),
      };
    },

    // From the informers, not etcd: a list of 10,000 instances would otherwise read and decode
    // them all on every call. It waits until they have caught up with this server's own writes.
    async listInstances(req, hctx) {
      const match = matcher(req.filter, visibleProjects(hctx, "instances:list", req.project));
      const { instances: specs, statuses } = ctx.informers;
      await Promise.all([
        specs.waitForRevision(ctx.writtenAt(keys.instances), hctx.signal),
        statuses.waitForRevision(ctx.writtenAt(keys.nodes), hctx.signal),
      ]);
      // Filtered before anything is copied: a web page polling a selective list over 30,000
      // instances should cost a scan, not 30,000 copies.
      const instances: Instance[] = [];
      for (const { value: i } of specs.items.values()) {
        const status = statusOf(ctx.informers, i);
        if (match(i, status)) instances.push(merged(i, status));
      }
      instances.sort(byRef);
      return { instances };
    },

    async deleteInstance(req, hctx) {
      const ref = requestRef(req);
      let before: Instance | undefined;
      const res = await guarded(ref, () =>
        update(
          store,
          keys.instance(ref),
          codecs.instance,
          async ({ value: instance }) => {
            if (!instance) throw notFound(ref);
            before = instance;
            if (instance.deleteTime) return undefined;
            // Never placed: nothing runs anywhere, so the record can go at once (its quota's share with it).
            if (placedOn(instance) === "") {
              const parts = await projectParts(ctx, instance.project || DEFAULT_PROJECT, [instance], -1, true, hctx.signal);
              if ("counting" in parts)
                throw new ConnectError(`project ${instance.project}: its usage is being counted; try again in a moment`, Code.Unavailable);
              return { value: null, compares: parts.compares, ops: parts.ops };
            }
            const next = clone(InstanceSchema, instance);
            next.deleteTime = timestampNow();
            next.generation = instance.generation + 1n;
            return { value: next, ops: instanceOps(next).slice(1) };
          },
          { signal: hctx.signal },
        ),
      );
      if (!res.written) return { instance: await view(before!, hctx.signal) };
      if (!res.value) {
        ctx.log.info({ instance: ref }, "instance deleted (never scheduled)");
        return { instance: before! };
      }
      ctx.log.info({ instance: ref, node: placedOn(res.value) }, "instance deletion requested");
      return { instance: await view(res.value, hctx.signal) };
    },

    async startInstance(req, hctx) {
      const instance = await mutate(requestRef(req), hctx.signal, (next) => {
        refuseIfDeleting(next, "start");
        if (next.spec!.desiredPowerState === PowerState.RUNNING) return false;
        next.spec!.desiredPowerState = PowerState.RUNNING;
        return true;
      });
      return { instance };
    },

    async stopInstance(req, hctx) {
      // Every stop timeout is a node worker's wait: bounded, so no caller can hold one for years.
      refuse(checkStopTimeout("timeout_seconds", req.timeoutSeconds));
      const instance = await mutate(requestRef(req), hctx.signal, (next) => {
        refuseIfDeleting(next, "stop");
        const timeout = req.timeoutSeconds > 0 ? String(req.timeoutSeconds) : undefined;
        if (next.spec!.desiredPowerState === PowerState.STOPPED && next.labels[STOP_TIMEOUT_LABEL] === timeout) return false;
        next.spec!.desiredPowerState = PowerState.STOPPED;
        if (timeout) next.labels[STOP_TIMEOUT_LABEL] = timeout;
        else delete next.labels[STOP_TIMEOUT_LABEL];
        return true;
      });
      return { instance };
    },

    async restartInstance(req, hctx) {
      const instance = await mutate(requestRef(req), hctx.signal, (next, current) => {
        refuseIfDeleting(next, "restart");
        const phase = current.status?.phase ?? Phase.UNSPECIFIED;
        if (phase !== Phase.RUNNING) {
          throw new ConnectError(`instance ${showRef(refOf(next))} is ${phaseName(phase)}; restart needs Running`, Code.FailedPrecondition);
        }
        next.spec!.desiredPowerState = PowerState.RUNNING;
        // The agent restarts when it sees a generation it has not acted on carrying this label.
        next.labels[RESTART_LABEL] = String(next.generation + 1n);
        return true;
      });
      return { instance };
    },

    async setInstanceMemory(req, hctx) {
      const ref = requestRef(req);
      const { instance: stored } = await read(ref, hctx.signal);
      const max = stored.spec?.memoryMib ?? 0n;
      if (req.memoryMib !== 0n && (req.memoryMib < 16n || req.memoryMib > max))
        throw invalid("memory_mib", `${req.memoryMib} must be 0 (all memory) or from 16 to the instance's ${max} MiB`);
      requireCapability(stored, "balloon", "set-memory");
      const instance = await mutate(ref, hctx.signal, (next) => {
        refuseIfDeleting(next, "set-memory");
        if (next.spec!.memoryTargetMib === req.memoryMib) return false;
        next.spec!.memoryTargetMib = req.memoryMib;
        return true;
      });
      return { instance };
    },

    async *getInstanceLogs(req, hctx) {
      const ref = requestRef(req);
      refuse(checkTailBytes("tail_bytes", req.tailBytes));
      const current = await view((await read(ref, hctx.signal)).instance, hctx.signal);
      const node = current.status?.node ?? "";
      if (node === "")
        throw new ConnectError(
          `instance ${showRef(ref)} is ${phaseName(current.status?.phase ?? Phase.UNSPECIFIED)}; logs need it placed on a node`,
          Code.FailedPrecondition,
        );
      requireCapability(current, "logs", "logs");
      const release = req.follow ? ctx.clientLimits.hold(hctx, "logs") : () => undefined;
      try {
        for await (const data of ctx.agents.logs(node, ref, req.follow, req.tailBytes, hctx.signal)) yield { data };
      } finally {
        release();
      }
    },

    async *watchInstances(req, hctx: HandlerContext) {
      const match = matcher(req.filter, visibleProjects(hctx, "instances:watch", req.project));
      const resume = Number(req.resumeRevision);
      if (resume < 0) throw invalid("resume_revision", `${req.resumeRevision} is negative`);
      history ??= new WatchHistory(ctx.informers);
      if (resume > 0 && (resume < history.coveredFrom || resume > history.current))
        throw new ConnectError(
          `resume_revision: ${resume} is outside this server's watch history (${history.coveredFrom} to ${history.current}); watch again without it for the whole list`,
          Code.OutOfRange,
        );
      const release = ctx.clientLimits.hold(hctx, "watch");
      const { instances, statuses } = ctx.informers;
      const queue = new AsyncQueue<WatchInstancesResponse>();
      // The initial list may be long; beyond it, a watcher may fall watchBacklog messages behind.
      let limit = Infinity;
      const push = (msg: WatchInstancesResponse) => {
        queue.push(msg);
        if (queue.size > limit)
          queue.fail(
            new ConnectError(
              `the watch fell ${queue.size} messages behind (at most ${ctx.clientLimits.settings.watchBacklog}); read faster, and resume from the last revision received`,
              Code.ResourceExhausted,
            ),
          );
      };
      const sent = new Map<string, Instance>();
      /** The instance as the watcher should see it now, or undefined when it does not match. */
      const current = (ref: string): Instance | undefined => {
        const i = instances.get(keys.instance(ref))?.value;
        const status = i && statusOf(ctx.informers, i);
        return i && match(i, status) ? merged(i, status) : undefined;
      };
      const event = (type: EventType, instance: Instance, revision: number) =>
        create(WatchInstancesResponseSchema, { type, instance, revision: BigInt(revision) });
      const update = (ref: string, revision: number) => {
        const now = current(ref);
        const before = sent.get(ref);
        if (now) {
          if (before && equals(InstanceSchema, before, now)) return;
          sent.set(ref, now);
          push(event(before ? EventType.MODIFIED : EventType.ADDED, now, revision));
        } else if (before) {
          sent.delete(ref);
          push(event(EventType.DELETED, before, revision));
        }
      };
      /** Resuming: what the watcher already has (unchanged since `resume`), and what to tell it. */
      const catchUp = (revision: number) => {
        const gone = history!.deletedSince(resume);
        for (const key of [...instances.items.keys()].sort()) {
          const ref = key.slice(keys.instances.length);
          const i = instances.get(key)!;
          const node = placedOn(i.value);
          const changed =
            gone.has(ref) || i.modRevision > resume || (node ? (statuses.get(keys.status(node, ref))?.modRevision ?? 0) : 0) > resume;
          const now = current(ref);
          if (!changed) {
            if (now) sent.set(ref, now);
            continue;
          }
          gone.delete(ref);
          if (now) {
            sent.set(ref, now);
            push(event(EventType.MODIFIED, now, revision));
          } else if (match.project(splitRef(ref).project)) push(event(EventType.DELETED, create(InstanceSchema, splitRef(ref)), revision));
        }
        // Gone for good since then: the watcher may still have them (of the projects it sees).
        for (const ref of [...gone].sort())
          if (match.project(splitRef(ref).project)) push(event(EventType.DELETED, create(InstanceSchema, splitRef(ref)), revision));
      };
      // Subscribing and reading the initial copy happen in one tick, so nothing falls between.
      const offA = instances.subscribe((ev) => update(ev.key.slice(keys.instances.length), ev.revision));
      const offB = statuses.subscribe((ev) => {
        const k = parseNodeKey(ev.key);
        if (k?.kind === "status") update(k.ref, ev.revision);
      });
      const onAbort = () => queue.close();
      hctx.signal.addEventListener("abort", onAbort, { once: true });
      try {
        const now = history.current;
        if (resume > 0) catchUp(now);
        else for (const key of [...instances.items.keys()].sort()) update(key.slice(keys.instances.length), now);
        queue.push(create(WatchInstancesResponseSchema, { type: EventType.SYNCED, revision: BigInt(now) }));
        limit = queue.size + ctx.clientLimits.settings.watchBacklog;
        for await (const msg of queue) yield msg;
      } finally {
        release();
        offA();
        offB();
        hctx.signal.removeEventListener("abort", onAbort);
      }
    },
  };
}
