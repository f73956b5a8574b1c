/*
 * InstanceService: the only writer of instances/<name> besides the scheduler's placement and the
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
  instanceOps,
  keys,
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
import { AsyncQueue } from "./async-queue.js";
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
  show,
  validateLabels,
  validateName,
  validateSpec,
} from "./validate.js";

export { STOP_TIMEOUT_LABEL };
const MAX_CAS_ATTEMPTS = 20;
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
}

function matcher(filter: InstanceFilter | undefined): Matcher {
  const labels = parseLabelSelector("filter.label_selector", filter?.labelSelector ?? "");
  const node = filter?.node ?? "";
  const phase = filter?.phase ?? Phase.UNSPECIFIED;
  return (i, status) =>
    labelsMatch(i.labels, labels) &&
    (phase === Phase.UNSPECIFIED || mergedPhase(i, status) === phase) &&
    (node === "" || mergedNode(i, status) === node);
}

export function instanceService(ctx: ServerContext): ServiceImpl<typeof InstanceService> {
  const { store } = ctx;
  // Creates that arrive together reach etcd together (group commit).
  const creates = new GroupCommit(store);
  /** Deletions for resumed watches; made at the first watch, once the informers have their copy. */
  let history: WatchHistory | undefined;

  async function read(name: string, signal: AbortSignal): Promise<{ instance: Instance; rev: number }> {
    validateName("name", name);
    const kv = await store.get(keys.instance(name), { signal });
    if (!kv) throw new ConnectError(`instance ${show(name)} not found`, Code.NotFound);
    return { instance: codecs.instance.decode(kv.value), rev: kv.modRevision };
  }

  async function view(instance: Instance, signal: AbortSignal): Promise<Instance> {
    const node = placedOn(instance);
    const st = node ? await store.get(keys.status(node, instance.name), { signal }) : undefined;
    return merged(instance, st ? codecs.instance.decode(st.value) : undefined);
  }

  /**
   * Compare-and-swap loop over one instance: `change` edits a copy (or returns false for "no
   * change"); the write also refreshes the node's assignment when the instance is placed.
   */
  async function mutate(name: string, signal: AbortSignal, change: (i: Instance, current: Instance) => boolean): Promise<Instance> {
    validateName("name", name);
    let current: Instance | undefined;
    const res = await guarded(name, () =>
      update(
        store,
        keys.instance(name),
        codecs.instance,
        async ({ value: instance }) => {
          if (!instance) throw new ConnectError(`instance ${show(name)} not found`, Code.NotFound);
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

  /** Runs an update of instance `name`, a record that kept changing under it being Aborted. */
  async function guarded<T>(name: string, run: () => Promise<T>): Promise<T> {
    try {
      return await run();
    } catch (e) {
      if (e instanceof ConflictError) throw new ConnectError(`instance ${show(name)} is changing too fast; try again`, Code.Aborted);
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
  function newInstance(req: CreateInstanceRequest): { instance: Instance; value: Uint8Array } {
    validateName("name", req.name);
    validateLabels("labels", req.labels);
    validateSpec(req.spec, req.labels);
    validateSecretEnv("spec.secret_env", req.spec.secretEnv, req.spec.env);
    const spec = clone(InstanceSpecSchema, req.spec);
    if (spec.desiredPowerState === PowerState.UNSPECIFIED) spec.desiredPowerState = PowerState.RUNNING;
    if (spec.restartPolicy === RestartPolicy.UNSPECIFIED) spec.restartPolicy = RestartPolicy.ON_FAILURE;
    const now = timestampNow();
    const instance = create(InstanceSchema, {
      name: req.name,
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
    return { instance, value };
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
    if (i.deleteTime) throw new ConnectError(`instance ${i.name} is being deleted; ${action} is not possible`, Code.FailedPrecondition);
  }

  return {
    async createInstance(req, hctx) {
      const { instance, value } = newInstance(req);
      const key = keys.instance(req.name);
      const res = await creates.commit([ifAbsent(key)], [{ type: "put", key, value }], hctx.signal);
      if (!res.succeeded) throw new ConnectError(`instance ${show(req.name)} already exists`, Code.AlreadyExists);
      ctx.log.info({ instance: req.name, uid: instance.uid, driver: instance.spec?.driver }, "instance created");
      return { instance };
    },

    async createInstances(req, hctx) {
      const n = req.instances.length;
      if (n === 0) throw invalid("instances", "is empty: give at least one instance");
      if (n > MAX_BATCH) throw invalid("instances", `has ${n} entries; at most ${MAX_BATCH} in one call (one transaction)`);
      const index = new Map<string, number>();
      const made = req.instances.map((r, i) => {
        const m = prefixed(`instances[${i}].`, () => newInstance(r));
        const twin = index.get(r.name);
        if (twin !== undefined) throw invalid(`instances[${i}].name`, `${show(r.name)} is also the name of instances[${twin}]`);
        index.set(r.name, i);
        return m;
      });
      const instances = made.map((m) => m.instance);
      const compares = instances.map((i) => ifAbsent(keys.instance(i.name)));
      const ops: Op[] = made.map(({ instance, value }) => ({ type: "put", key: keys.instance(instance.name), value }));
      const bytes = txnBytes(compares, ops);
      if (bytes > MAX_TXN_BYTES)
        throw invalid(
          "instances",
          `the ${n} instances are ${kib(bytes)} encoded; one call takes at most ${kib(MAX_TXN_BYTES)} (one etcd transaction): send fewer at a time`,
        );
      for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
        const res = await creates.commit(compares, ops, hctx.signal);
        if (res.succeeded) {
          ctx.log.info({ instances: instances.map((i) => i.name), count: n }, "instances created");
          return { instances };
        }
        const taken = await Promise.all(instances.map((i) => store.get(keys.instance(i.name), { signal: hctx.signal })));
        const first = taken.findIndex((kv) => kv !== undefined);
        // All free again (deleted since): try again.
        if (first < 0) continue;
        const count = taken.filter((kv) => kv !== undefined).length;
        throw new ConnectError(
          `instances[${first}].name: instance ${show(instances[first]!.name)} already exists` +
            `${count > 1 ? ` (and ${count - 1} more of the ${n})` : ""}; none of the ${n} was created`,
          Code.AlreadyExists,
        );
      }
      throw new ConnectError("instances: their names are being created and deleted too fast; try again", Code.Aborted);
    },

    async getInstance(req, hctx) {
      const { instance } = await read(req.name, hctx.signal);
      return { instance: await view(instance, hctx.signal) };
    },

    async explainInstance(req, hctx) {
      const { instance } = await read(req.name, hctx.signal);
      if (!instance.spec) throw new ConnectError(`instance ${instance.name} has no spec`, Code.FailedPrecondition);
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
      const v = verdicts(nodes, r, ctx.algorithm, placedViews(ctx.informers, instance.name));
      return {
        summary: at ? `placed on ${at}${stuck(instance, at)}; now: ${v.summary}` : v.summary,
        best: v.best,
        nodes: v.verdicts.map((x) => ({ node: x.node, feasible: x.feasible, reason: x.reason, score: x.score, scoreParts: x.parts })),
      };
    },

    // From the informers, not etcd: a list of 10,000 instances would otherwise read and decode
    // them all on every call. It waits until they have caught up with this server's own writes.
    async listInstances(req, hctx) {
      const match = matcher(req.filter);
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
      instances.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      return { instances };
    },

    async deleteInstance(req, hctx) {
      validateName("name", req.name);
      let before: Instance | undefined;
      const res = await guarded(req.name, () =>
        update(
          store,
          keys.instance(req.name),
          codecs.instance,
          ({ value: instance }) => {
            if (!instance) throw new ConnectError(`instance ${show(req.name)} not found`, Code.NotFound);
            before = instance;
            if (instance.deleteTime) return undefined;
            // Never placed: nothing runs anywhere, so the record can go at once.
            if (placedOn(instance) === "") return { value: null };
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
        ctx.log.info({ instance: req.name }, "instance deleted (never scheduled)");
        return { instance: before! };
      }
      ctx.log.info({ instance: req.name, node: placedOn(res.value) }, "instance deletion requested");
      return { instance: await view(res.value, hctx.signal) };
    },

    async startInstance(req, hctx) {
      const instance = await mutate(req.name, hctx.signal, (next) => {
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
      const instance = await mutate(req.name, hctx.signal, (next) => {
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
      const instance = await mutate(req.name, hctx.signal, (next, current) => {
        refuseIfDeleting(next, "restart");
        const phase = current.status?.phase ?? Phase.UNSPECIFIED;
        if (phase !== Phase.RUNNING) {
          throw new ConnectError(`instance ${next.name} is ${phaseName(phase)}; restart needs Running`, Code.FailedPrecondition);
        }
        next.spec!.desiredPowerState = PowerState.RUNNING;
        // The agent restarts when it sees a generation it has not acted on carrying this label.
        next.labels[RESTART_LABEL] = String(next.generation + 1n);
        return true;
      });
      return { instance };
    },

    async setInstanceMemory(req, hctx) {
      validateName("name", req.name);
      const { instance: stored } = await read(req.name, hctx.signal);
      const max = stored.spec?.memoryMib ?? 0n;
      if (req.memoryMib !== 0n && (req.memoryMib < 16n || req.memoryMib > max))
        throw invalid("memory_mib", `${req.memoryMib} must be 0 (all memory) or from 16 to the instance's ${max} MiB`);
      requireCapability(stored, "balloon", "set-memory");
      const instance = await mutate(req.name, hctx.signal, (next) => {
        refuseIfDeleting(next, "set-memory");
        if (next.spec!.memoryTargetMib === req.memoryMib) return false;
        next.spec!.memoryTargetMib = req.memoryMib;
        return true;
      });
      return { instance };
    },

    async *getInstanceLogs(req, hctx) {
      validateName("name", req.name);
      refuse(checkTailBytes("tail_bytes", req.tailBytes));
      const current = await view((await read(req.name, hctx.signal)).instance, hctx.signal);
      const node = current.status?.node ?? "";
      if (node === "")
        throw new ConnectError(
          `instance ${req.name} is ${phaseName(current.status?.phase ?? Phase.UNSPECIFIED)}; logs need it placed on a node`,
          Code.FailedPrecondition,
        );
      requireCapability(current, "logs", "logs");
      const release = req.follow ? ctx.clientLimits.hold(hctx, "logs") : () => undefined;
      try {
        for await (const data of ctx.agents.logs(node, req.name, req.follow, req.tailBytes, hctx.signal)) yield { data };
      } finally {
        release();
      }
    },

    async *watchInstances(req, hctx: HandlerContext) {
      const match = matcher(req.filter);
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
      const current = (name: string): Instance | undefined => {
        const i = instances.get(keys.instance(name))?.value;
        const status = i && statusOf(ctx.informers, i);
        return i && match(i, status) ? merged(i, status) : undefined;
      };
      const event = (type: EventType, instance: Instance, revision: number) =>
        create(WatchInstancesResponseSchema, { type, instance, revision: BigInt(revision) });
      const update = (name: string, revision: number) => {
        const now = current(name);
        const before = sent.get(name);
        if (now) {
          if (before && equals(InstanceSchema, before, now)) return;
          sent.set(name, now);
          push(event(before ? EventType.MODIFIED : EventType.ADDED, now, revision));
        } else if (before) {
          sent.delete(name);
          push(event(EventType.DELETED, before, revision));
        }
      };
      /** Resuming: what the watcher already has (unchanged since `resume`), and what to tell it. */
      const catchUp = (revision: number) => {
        const gone = history!.deletedSince(resume);
        for (const key of [...instances.items.keys()].sort()) {
          const name = key.slice(keys.instances.length);
          const i = instances.get(key)!;
          const node = placedOn(i.value);
          const changed =
            gone.has(name) || i.modRevision > resume || (node ? (statuses.get(keys.status(node, name))?.modRevision ?? 0) : 0) > resume;
          const now = current(name);
          if (!changed) {
            if (now) sent.set(name, now);
            continue;
          }
          gone.delete(name);
          if (now) {
            sent.set(name, now);
            push(event(EventType.MODIFIED, now, revision));
          } else push(event(EventType.DELETED, create(InstanceSchema, { name }), revision));
        }
        // Gone for good since then: the watcher may still have them.
        for (const name of [...gone].sort()) push(event(EventType.DELETED, create(InstanceSchema, { name }), revision));
      };
      // Subscribing and reading the initial copy happen in one tick, so nothing falls between.
      const offA = instances.subscribe((ev) => update(ev.key.slice(keys.instances.length), ev.revision));
      const offB = statuses.subscribe((ev) => {
        const k = parseNodeKey(ev.key);
        if (k?.kind === "status") update(k.name, ev.revision);
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
