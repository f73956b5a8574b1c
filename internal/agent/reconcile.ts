/*
 * Reconcile one instance: make the driver's instance match the assignment, then report it in
 * status/<name>. Level-triggered: every call looks at the assignment, the status and the driver
 * as they are, and the same call is safe to run twice; nothing depends on which event caused it.
 *
 *   no assignment ─────────────────────────────► orphan: fenced, kept or destroyed (see orphans.ts)
 *   delete_time set ───────────────────────────► destroy ──► txn delete assignment + status
 *   desired RUNNING:  absent ──create──► created ──start──► running
 *                     stopped ──start──► running
 *                     running + restart requested ──stop──► start
 *                     exited / failed ──restart policy──► start after backoff | STOPPED | FAILED
 *   desired STOPPED:  absent ──create──► created      running ──stop(timeout)──► stopped
 *
 * Driver operations run under deadlines (deadlines.ts), and a stop timeout read from the store is
 * clamped to maxStopTimeoutMs. Stops (a desired STOPPED, and the stop of a requested restart) do
 * not hold a worker while the guest shuts down: they run beside the workers (stops.ts) and wake
 * the key when they end; a reconcile that finds the desired state changed meanwhile (a delete, a
 * new generation, no assignment) aborts the stop in flight and goes on with the new state at once.
 *
 * A restart is requested when the assignment's generation is newer than the status's
 * observed_generation and labels["hypervisor.io/restart-requested"] equals that generation.
 * Status is written only when it changed (update_time aside), with a compare on the assignment's
 * and the status's mod revisions so a stale reconcile can never overwrite a newer one.
 *
 * Reads: the assignment comes from the agent's watch (opts.assignments), and the status from
 * what this reconciler last wrote, so a reconcile usually costs no etcd round trip before its
 * write. Both are proved by that write's compares: a conflict drops the cached status, and the
 * retry reads it. A status is read from etcd only the first time after the agent starts, after a
 * conflict, or when the assignment is not new; a new assignment (created after the watch began)
 * is taken to have no status yet — only a move from another node leaves one, and the compare
 * catches that.
 */
import { create, equals, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs, timestampNow } from "@bufbuild/protobuf/wkt";
import {
  type Instance,
  InstanceSchema,
  type InstanceStatus,
  InstanceStatusSchema,
  Phase,
  PowerState,
  RestartPolicy,
} from "../../api/gen/hypervisor/v1/instance_pb.js";
import { AssignmentSchema } from "../../api/gen/hypervisor/v1/store_pb.js";
import { GroupCommit, ifModRevision, type KeyValue, type Store } from "../../pkg/cluster/store/index.js";
import { hostName, hostRef, keys, refOf, RESTART_LABEL, splitRef, STOP_TIMEOUT_LABEL } from "../../pkg/cluster/state/index.js";
import {
  type BalloonDriver,
  hasBalloon,
  InvalidSpecError,
  StartError,
  type Driver,
  type DriverInstance,
  type DriverInstanceSpec,
} from "../../pkg/compute/driver/index.js";
import type { Logger } from "../../pkg/log/index.js";
import { DeadlineDriver, DEFAULT_DEADLINES, DEFAULT_MAX_STOP_TIMEOUT_MS, type OperationDeadlines } from "./deadlines.js";
import { Stops } from "./stops.js";
import type { ProcessResult } from "./workqueue.js";
import {
  decideUnassigned,
  type KnownInstance,
  namesakeInTheWay,
  type OrphanBook,
  orphanRecord,
  OrphanReason,
  type SpecKeeper,
} from "./orphans.js";

export { RESTART_LABEL, STOP_TIMEOUT_LABEL };

export interface ReconcilerOptions {
  store: Store;
  nodeName: string;
  drivers: Driver[];
  log: Logger;
  /** The agent's copy of its assignments: reconciles read none from the store. */
  assignments: AssignmentCache;
  /** The cluster id the drivers mark instances with (read from the store at start). */
  cluster: () => string;
  orphans: OrphanBook;
  specs: SpecKeeper;
  /**
   * What the cluster knows of an instance this node runs without an assignment: where it is
   * placed, whether it is being deleted. Asked only for such instances (orphans.ts decides).
   */
  lookup: (name: string, signal: AbortSignal) => Promise<KnownInstance | undefined>;
  /** Stop timeout when the instance has none (default 30 s). */
  defaultStopTimeoutMs?: number;
  /** Longest stop timeout honoured, whatever the assignment says (default an hour). */
  maxStopTimeoutMs?: number;
  /** Deadlines of driver operations (defaults: DEFAULT_DEADLINES). */
  deadlines?: Partial<OperationDeadlines>;
  /** Reconcile `name` again after afterMs (0: now): how a stop that ran beside the workers reports its end. */
  wake?: (name: string, afterMs: number) => void;
  /** First restart delay after the first immediate one (default 1 s), doubled up to maxRestartDelayMs. */
  restartDelayMs?: number;
  maxRestartDelayMs?: number;
}

/** The agent's assignments as its watch last saw them. */
export interface AssignmentCache {
  get(name: string): KeyValue | undefined;
  /**
   * Consumes the mark of an assignment created after the watch started (version 1 in an event):
   * its status is taken to be absent until a write proves otherwise.
   */
  takeFresh(name: string): boolean;
}

/**
 * A status as stored: its revision (0: absent) and the record (undefined: absent), for one
 * incarnation of the assignment (its create revision): an instance moved away and back has had
 * its status deleted meanwhile.
 */
interface CachedStatus {
  rev: number;
  record: Instance | undefined;
  assignment: number;
}

/** Status fields as the reconciler builds them (plain values, no message type tag). */
export type StatusFields = Omit<Partial<InstanceStatus>, "$typeName" | "$unknown">;

/** Consecutive policy restarts of one instance, for crash-loop backoff. Memory only. */
interface RestartState {
  uid: string;
  consecutive: number;
}

/** A run longer than this before exiting resets the crash-loop backoff. */
const STABLE_RUN_MS = 60_000;

interface Ctx {
  name: string;
  inst: Instance;
  assignmentRev: number;
  /** The assignment's create revision: which incarnation of it the status belongs to. */
  assignmentCreated: number;
  statusRev: number;
  /** The status last written for this very instance (same uid), if any. */
  prev: InstanceStatus | undefined;
  signal: AbortSignal;
}

export class Reconciler {
  private readonly drivers = new Map<string, Driver>();
  private readonly restarts = new Map<string, RestartState>();
  /** Balloon target last applied per instance: uid/startedAt/MiB. */
  private readonly balloons = new Map<string, string>();
  /** status/<name> as this reconciler last wrote or read it, while the name is assigned here. */
  private readonly statuses = new Map<string, CachedStatus>();
  private readonly writes: GroupCommit;
  private readonly defaultStopTimeoutMs: number;
  private readonly maxStopTimeoutMs: number;
  private readonly restartDelayMs: number;
  private readonly maxRestartDelayMs: number;
  /** Stops running beside the workers. */
  private readonly stops: Stops;

  constructor(private readonly opts: ReconcilerOptions) {
    const deadlines = { ...DEFAULT_DEADLINES, ...opts.deadlines };
    for (const d of opts.drivers) this.drivers.set(d.name, new DeadlineDriver(d, deadlines, opts.log));
    this.stops = new Stops({ wake: (n, ms) => opts.wake?.(n, ms), log: opts.log });
    this.writes = new GroupCommit(opts.store);
    this.maxStopTimeoutMs = opts.maxStopTimeoutMs ?? DEFAULT_MAX_STOP_TIMEOUT_MS;
    this.defaultStopTimeoutMs = Math.min(opts.defaultStopTimeoutMs ?? 30_000, this.maxStopTimeoutMs);
    this.restartDelayMs = opts.restartDelayMs ?? 1000;
    this.maxRestartDelayMs = opts.maxRestartDelayMs ?? 30_000;
  }

  async reconcile(name: string, signal: AbortSignal): Promise<ProcessResult> {
    const { store, nodeName, assignments } = this.opts;
    const akv = assignments.get(name);
    if (!akv) {
      await this.stops.supersede(name, undefined, "no longer assigned to this node");
      this.restarts.delete(name);
      this.statuses.delete(name);
      await this.unassigned(name, signal);
      return {};
    }
    const inst = fromBinary(AssignmentSchema, akv.value).instance;
    if (!inst || hostName(refOf(inst)) !== name) {
      this.opts.log.error({ instance: name }, "assignment without a matching instance; ignoring it");
      return {};
    }
    // A stop in flight for this very instance and generation goes on (it wakes the key when it
    // ends); one for anything else is abandoned here, before acting on the new desired state.
    const stillStopping = inst.deleteTime ? undefined : { uid: inst.uid, generation: inst.generation };
    const why = inst.deleteTime ? "instance deleted" : `generation ${inst.generation} assigned`;
    if (await this.stops.supersede(name, stillStopping, why)) return {};
    const st = await this.status(name, akv.createRevision, signal);
    const stored = st.record;
    const ctx: Ctx = {
      name,
      inst,
      assignmentRev: akv.modRevision,
      assignmentCreated: akv.createRevision,
      statusRev: st.rev,
      prev: stored?.uid === inst.uid ? stored.status : undefined,
      signal,
    };
    const log = this.opts.log.child({ instance: name });
    const driverName = inst.spec?.driver ?? "";
    const driver = this.drivers.get(driverName);

    if (inst.deleteTime) {
      const found = driver ? await driver.inspect(name, { signal }) : undefined;
      // Only this very instance: a namesake kept here as an orphan is not the one being deleted.
      if (driver && found?.uid === inst.uid) {
        await driver.destroy(name, { signal, force: true });
        await this.opts.specs.remove(name);
        log.info("instance destroyed");
      }
      // Said in the node's own status (a node cannot write assignments): the garbage collector
      // then removes the assignment, the status and the record together.
      if (stored?.uid === inst.uid && stored.deleteTime) return {};
      const record = create(InstanceSchema, {
        ...splitRef(hostRef(name)),
        uid: inst.uid,
        deleteTime: inst.deleteTime,
        status: create(InstanceStatusSchema, { phase: Phase.STOPPED, node: nodeName, message: "destroyed", updateTime: timestampNow() }),
      });
      const res = await store.txn(
        [
          ifModRevision(keys.assignment(nodeName, hostRef(name)), akv.modRevision),
          ifModRevision(keys.status(nodeName, hostRef(name)), st.rev),
        ],
        [{ type: "put", key: keys.status(nodeName, hostRef(name)), value: toBinary(InstanceSchema, record) }],
        [],
        { signal },
      );
      this.restarts.delete(name);
      this.statuses.delete(name);
      // A failed compare means the assignment or the status changed meanwhile: look again.
      return res.succeeded ? {} : { requeueAfterMs: 0 };
    }

    if (!driver) {
      await this.write(ctx, { phase: Phase.FAILED, message: `driver ${driverName} is not available on node ${nodeName}` }, true);
      return {};
    }

    let actual = await driver.inspect(name, { signal });
    if (actual && actual.uid !== inst.uid) {
      // An older instance of the same name (deleted and re-created while this node was away).
      if (namesakeInTheWay(actual)) {
        const message = `name ${name} is held on node ${nodeName} by an orphan (uid ${actual.uid}) with a local disk; purge it (hypervisor-ctl node purge ${nodeName} ${name}) or delete this instance`;
        const kept = await this.opts.specs.load(name);
        const o = orphanRecord(driver.name, actual, OrphanReason.NAME_TAKEN, `kept: ${message}`, kept);
        await this.opts.orphans.report(o, signal);
        await this.write(ctx, { phase: Phase.FAILED, message }, true);
        return { requeueAfterMs: NAMESAKE_RECHECK_MS };
      }
      log.info({ oldUid: actual.uid }, "destroying an older instance of the same name: it has no local disk");
      await driver.destroy(name, { signal, force: true });
      actual = undefined;
    }
    if (this.opts.orphans.has(name) && (!actual || actual.uid === inst.uid)) await this.opts.orphans.clear(name, signal); // adopted back

    const desired = inst.spec?.desiredPowerState === PowerState.STOPPED ? PowerState.STOPPED : PowerState.RUNNING;
    // Creating is reported only if creating and starting take a while: a quick start goes from
    // Scheduled to Running with one status write instead of two.
    let creating: DeferredStatus | undefined;
    if (!actual) {
      creating = new DeferredStatus(() => this.write(ctx, { phase: Phase.CREATING, message: "" }, false), CREATING_REPORT_DELAY_MS);
      try {
        await this.opts.specs.save(inst);
        actual = await driver.create(toDriverSpec(inst), { signal });
      } catch (e) {
        await creating.done();
        if (!(e instanceof InvalidSpecError)) throw e;
        await this.write(ctx, { phase: Phase.FAILED, message: e.message }, true);
        return {}; // retrying a spec the driver rejects cannot help
      }
      log.info("instance created");
    }
    const write = async (fields: StatusFields, final: boolean) => {
      await creating?.done();
      await this.write(ctx, fields, final);
    };

    const observed = ctx.prev?.observedGeneration ?? 0n;
    const restartRequested = inst.generation > observed && inst.labels[RESTART_LABEL] === String(inst.generation);
    let restartCount = ctx.prev?.restartCount ?? 0;
    let note: string | undefined;
    let requeueAfterMs: number | undefined;

    if (desired === PowerState.STOPPED) {
      if (actual.state === "running") {
        await write({ ...statusOf(actual, desired), phase: Phase.STOPPING, message: "" }, false);
        this.beginStop(driver, inst, signal);
        return {}; // the stop wakes the key when it ends: Stopped is written then
      }
    } else if (actual.state === "running" && restartRequested) {
      await write({ ...statusOf(actual, desired), phase: Phase.STOPPING, message: "restarting" }, false);
      // Once stopped, the next pass starts it (the restart's generation is not observed yet).
      this.beginStop(driver, inst, signal);
      return {};
    } else if (actual.state === "created" || actual.state === "stopped") {
      actual = await this.start(driver, name, signal);
      if (actual.state === "running") log.info("instance started");
    } else if (actual.state === "exited" || actual.state === "failed") {
      const failed = actual.state === "failed" || (actual.exitCode ?? 0) !== 0;
      const policy = inst.spec?.restartPolicy ?? RestartPolicy.UNSPECIFIED;
      const restart =
        restartRequested ||
        policy === RestartPolicy.ALWAYS ||
        policy === RestartPolicy.UNSPECIFIED ||
        (policy === RestartPolicy.ON_FAILURE && failed);
      if (restart) {
        const r = this.restartState(name, inst.uid, actual);
        const notBefore = (actual.finishedAt ?? Date.now()) + this.restartDelay(r.consecutive);
        const wait = restartRequested ? 0 : notBefore - Date.now();
        if (wait > 0) {
          requeueAfterMs = wait;
          note = `${describeExit(actual)}; restarting in ${Math.ceil(wait / 1000)}s`;
        } else {
          r.consecutive++;
          restartCount++;
          actual = await this.start(driver, name, signal);
          log.info({ restartCount, policy: RestartPolicy[policy] }, "instance restarted by its restart policy");
        }
      }
    }

    // A start that failed just now (start_error, bad image) leaves a failed instance: the restart
    // policy decides on the next pass, after the backoff.
    if (actual.state === "failed" && requeueAfterMs === undefined && this.retriesFailures(inst, restartRequested)) {
      const r = this.restartState(name, inst.uid, actual);
      requeueAfterMs = Math.max(this.restartDelay(r.consecutive), 1);
    }

    if (actual.state === "running" && hasBalloon(driver)) actual = await this.balloon(driver, inst, actual, signal);

    const status = statusOf(actual, desired);
    if (note !== undefined) status.message = note;
    status.restartCount = restartCount;
    await write(status, true);
    return requeueAfterMs !== undefined ? { requeueAfterMs } : {};
  }

  /** Forgets in-memory state of instances that are gone (called by the agent on resync). */
  prune(assigned: ReadonlyMap<string, unknown>): void {
    this.stops.prune(assigned);
    for (const n of this.restarts.keys()) if (!assigned.has(n)) this.restarts.delete(n);
    for (const n of this.statuses.keys()) if (!assigned.has(n)) this.statuses.delete(n);
    for (const n of this.balloons.keys()) if (!assigned.has(n)) this.balloons.delete(n);
  }

  /**
   * Applies spec.memory_target_mib (0: all of memory_mib) to a running instance, once per target
   * and boot: the guest may take a while to reach it, and asking again would change nothing.
   */
  private async balloon(driver: BalloonDriver, inst: Instance, actual: DriverInstance, signal: AbortSignal): Promise<DriverInstance> {
    const target = Number(inst.spec?.memoryTargetMib || inst.spec?.memoryMib || 0n);
    const key = `${inst.uid}/${actual.startedAt ?? 0}/${target}`;
    const name = hostName(refOf(inst));
    if (target <= 0 || this.balloons.get(name) === key) return actual;
    // Already there (a fresh boot at full memory, or an adopted VM): nothing to ask the driver.
    if (actual.details.memory_target_mib === String(target)) {
      this.balloons.set(name, key);
      return actual;
    }
    await driver.setMemory(name, target, { signal });
    this.balloons.set(name, key);
    this.opts.log.info({ instance: name, memoryMiB: target }, "memory target set");
    return (await driver.inspect(name, { signal })) ?? actual;
  }

  /** Waits for every stop running beside the workers (they end with the agent's signal). */
  async settled(): Promise<void> {
    await this.stops.settled();
  }

  /** Stops the instance beside the workers, under the stop's deadline (its clamped timeout plus a margin). */
  private beginStop(driver: Driver, inst: Instance, signal: AbortSignal): void {
    const timeoutMs = this.stopTimeoutMs(inst);
    const name = hostName(refOf(inst));
    this.stops.begin(name, { uid: inst.uid, generation: inst.generation }, signal, (s) => driver.stop(name, timeoutMs, { signal: s }));
  }

  private async start(driver: Driver, name: string, signal: AbortSignal): Promise<DriverInstance> {
    try {
      return await driver.start(name, { signal });
    } catch (e) {
      if (!(e instanceof StartError)) throw e;
      const now = await driver.inspect(name, { signal });
      if (!now) throw e;
      this.opts.log.warn({ instance: name, err: e.message }, "instance failed to start");
      return now.state === "failed" ? now : { ...now, state: "failed", message: e.message };
    }
  }

  /** For a failed start: every policy but NEVER retries a failure. */
  private retriesFailures(inst: Instance, requested: boolean): boolean {
    const policy = inst.spec?.restartPolicy ?? RestartPolicy.UNSPECIFIED;
    return requested || policy !== RestartPolicy.NEVER;
  }

  private restartState(name: string, uid: string, actual: DriverInstance): RestartState {
    let r = this.restarts.get(name);
    if (!r || r.uid !== uid) {
      r = { uid, consecutive: 0 };
      this.restarts.set(name, r);
    }
    if (actual.startedAt !== undefined && actual.finishedAt !== undefined && actual.finishedAt - actual.startedAt >= STABLE_RUN_MS)
      r.consecutive = 0;
    return r;
  }

  /** No delay before the first restart, then restartDelayMs doubling up to the cap. */
  private restartDelay(consecutive: number): number {
    if (consecutive === 0) return 0;
    return Math.min(this.maxRestartDelayMs, this.restartDelayMs * 2 ** Math.min(consecutive - 1, 20));
  }

  /** The assignment's stop timeout, clamped: a node does not trust the store to bound it. */
  private stopTimeoutMs(inst: Instance): number {
    const s = Number(inst.labels[STOP_TIMEOUT_LABEL]);
    if (!Number.isFinite(s) || s <= 0) return this.defaultStopTimeoutMs;
    if (s * 1000 <= this.maxStopTimeoutMs) return s * 1000;
    this.opts.log.warn(
      { instance: refOf(inst), askedSeconds: s, maxSeconds: this.maxStopTimeoutMs / 1000 },
      "stop timeout longer than this node allows; clamped",
    );
    return this.maxStopTimeoutMs;
  }

  /**
   * A local instance of `name` that is not (or no longer) assigned to this node: destroyed only
   * when that loses nothing, else fenced or kept and reported as an orphan (orphans.ts).
   */
  private async unassigned(name: string, signal: AbortSignal): Promise<void> {
    const { orphans, specs, nodeName } = this.opts;
    let any = false;
    for (const d of this.drivers.values()) {
      const found = await d.inspect(name, { signal });
      if (!found) continue;
      const log = this.opts.log.child({ instance: name, driver: d.name, uid: found.uid });
      const known = await this.opts.lookup(name, signal);
      const action = decideUnassigned(found, known, { cluster: this.opts.cluster(), node: nodeName });
      switch (action.kind) {
        case "ignore":
        case "wait":
          break;
        case "destroy":
          await d.destroy(name, { signal, force: true });
          await specs.remove(name);
          log.info({ why: action.why }, "destroyed an instance no longer assigned to this node");
          continue;
        case "fence": {
          any = true;
          let now = found;
          if (found.state === "running") {
            now = await d.stop(name, this.defaultStopTimeoutMs, { signal });
            log.warn({ placedNode: action.placedNode }, "fenced an instance that runs elsewhere: stopped, disk kept");
          }
          const o = orphanRecord(d.name, now, OrphanReason.FENCED, action.message, await specs.load(name), action.placedNode);
          await orphans.report(o, signal);
          break;
        }
        case "keep": {
          any = true;
          const o = orphanRecord(d.name, found, OrphanReason.UNKNOWN, action.message, await specs.load(name));
          if (!orphans.has(name))
            log.warn({ state: found.state }, "found an instance the cluster does not know: kept as it is, reported as an orphan");
          await orphans.report(o, signal);
          break;
        }
      }
    }
    if (!any) await orphans.clear(name, signal);
  }

  /** Destroys the orphan `name` with its disks, on an operator's request (PurgeOrphan). */
  async purge(name: string, uid: string, signal: AbortSignal): Promise<"purged" | "absent" | "assigned"> {
    const akv = this.opts.assignments.get(name);
    const assignedUid = akv ? fromBinary(AssignmentSchema, akv.value).instance?.uid : undefined;
    for (const d of this.drivers.values()) {
      const found = await d.inspect(name, { signal });
      if (!found || (uid && found.uid !== uid)) continue;
      if (found.uid === assignedUid) return "assigned";
      await d.destroy(name, { signal, force: true });
      if (assignedUid === undefined) await this.opts.specs.remove(name);
      await this.opts.orphans.clear(name, signal);
      this.opts.log.warn({ instance: name, driver: d.name, uid: found.uid }, "purged an orphan and its disks on request");
      return "purged";
    }
    return "absent";
  }

  /** nodes/<node>/status/<name>: cached, taken as absent for a new assignment, or read. */
  private async status(name: string, assignment: number, signal: AbortSignal): Promise<CachedStatus> {
    const cached = this.statuses.get(name);
    if (cached?.assignment === assignment) return cached;
    if (this.opts.assignments.takeFresh(name)) return { rev: 0, record: undefined, assignment };
    const kv = await this.opts.store.get(keys.status(this.opts.nodeName, hostRef(name)), { signal });
    const st = { rev: kv?.modRevision ?? 0, record: kv ? fromBinary(InstanceSchema, kv.value) : undefined, assignment };
    this.statuses.set(name, st);
    return st;
  }

  /**
   * Writes nodes/<node>/status/<name> if it differs from what is stored (update_time aside). `final` marks
   * the status that reflects the assignment's generation (observed_generation is bumped then).
   */
  private async write(ctx: Ctx, fields: StatusFields, final: boolean): Promise<void> {
    const { nodeName } = this.opts;
    const status = create(InstanceStatusSchema, { ...fields });
    status.node = nodeName;
    status.observedGeneration = final ? ctx.inst.generation : (ctx.prev?.observedGeneration ?? 0n);
    status.restartCount = fields.restartCount ?? ctx.prev?.restartCount ?? 0;
    if (ctx.prev && sameStatus(ctx.prev, status)) return;
    status.updateTime = timestampNow();
    const record = create(InstanceSchema, { ...splitRef(hostRef(ctx.name)), uid: ctx.inst.uid, status });
    // Status writes of instances reconciled at once (a node given many together) share txns.
    const res = await this.writes.commit(
      [
        ifModRevision(keys.assignment(nodeName, hostRef(ctx.name)), ctx.assignmentRev),
        ifModRevision(keys.status(nodeName, hostRef(ctx.name)), ctx.statusRev),
      ],
      [{ type: "put", key: keys.status(nodeName, hostRef(ctx.name)), value: toBinary(InstanceSchema, record) }],
      ctx.signal,
    );
    if (!res.succeeded) {
      this.statuses.delete(ctx.name); // read it again on the retry
      throw new StatusConflictError(ctx.name);
    }
    ctx.statusRev = res.revision;
    ctx.prev = status;
    this.statuses.set(ctx.name, { rev: res.revision, record, assignment: ctx.assignmentCreated });
  }
}

/** The assignment or the status changed while reconciling: the queue retries with fresh reads. */
export class StatusConflictError extends Error {
  override name = "StatusConflictError";
  constructor(readonly instance: string) {
    super(`status of instance ${instance} changed while reconciling it`);
  }
}

/** Equal but for update_time (compared without copying either: this runs on every reconcile). */
function sameStatus(a: InstanceStatus, b: InstanceStatus): boolean {
  const [ta, tb] = [a.updateTime, b.updateTime];
  a.updateTime = undefined;
  b.updateTime = undefined;
  try {
    return equals(InstanceStatusSchema, a, b);
  } finally {
    a.updateTime = ta;
    b.updateTime = tb;
  }
}

function describeExit(a: DriverInstance): string {
  if (a.state === "failed") return `failed: ${a.message ?? "unknown reason"}`;
  return `exited with code ${a.exitCode ?? 0}`;
}

/** What the driver reports, as phase, times, addresses and details. */
export function statusOf(a: DriverInstance, desired: PowerState): StatusFields {
  const s: StatusFields = { addresses: [...a.addresses], details: { ...a.details }, exitCode: a.exitCode ?? 0, message: a.message ?? "" };
  switch (a.state) {
    case "running":
      s.phase = Phase.RUNNING;
      break;
    case "created":
      s.phase = desired === PowerState.RUNNING ? Phase.CREATING : Phase.STOPPED;
      break;
    case "stopped":
      s.phase = Phase.STOPPED;
      break;
    case "exited":
      s.phase = (a.exitCode ?? 0) === 0 ? Phase.STOPPED : Phase.FAILED;
      s.message = describeExit(a);
      break;
    case "failed":
      s.phase = Phase.FAILED;
      break;
  }
  if (a.startedAt !== undefined) s.startTime = timestampFromMs(a.startedAt);
  if (a.state !== "running" && a.finishedAt !== undefined) s.stopTime = timestampFromMs(a.finishedAt);
  return s;
}

export function toDriverSpec(inst: Instance): DriverInstanceSpec {
  const spec = inst.spec;
  return {
    // Its name on this node: the project's, outside the default one.
    name: hostName(refOf(inst)),
    uid: inst.uid,
    labels: { ...inst.labels },
    image: spec?.image ?? "",
    vcpus: spec?.vcpus ?? 0,
    memoryMiB: Number(spec?.memoryMib ?? 0n),
    diskGiB: Number(spec?.diskGib ?? 0n),
    command: [...(spec?.command ?? [])],
    args: [...(spec?.args ?? [])],
    // Secret values travel only in the node's assignment; the driver sees one environment.
    env: { ...(spec?.env ?? {}), ...(spec?.secretEnv ?? {}) },
    kernel: spec?.kernel ?? "",
    initrd: spec?.initrd ?? "",
    cmdline: spec?.cmdline ?? "",
    config: { ...(spec?.driverConfig ?? {}) },
  };
}

/** How often an instance waiting for an orphan namesake to be purged looks again. */
const NAMESAKE_RECHECK_MS = 15_000;

/** How long creating and starting may take before the agent reports Creating. */
const CREATING_REPORT_DELAY_MS = 1000;

/** A status write that happens only if done() has not been called within `delayMs`. */
class DeferredStatus {
  private readonly timer: NodeJS.Timeout;
  private written: Promise<void> | undefined;

  constructor(write: () => Promise<void>, delayMs: number) {
    this.timer = setTimeout(() => {
      this.written = write().catch(() => undefined); // a lost race is settled by the final write
    }, delayMs);
  }

  /** Cancels the write if it has not started; waits for it if it has. */
  async done(): Promise<void> {
    clearTimeout(this.timer);
    await this.written;
  }
}
