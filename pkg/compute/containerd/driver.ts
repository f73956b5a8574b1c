/*
 * The containerd driver: containers run by runc through containerd's gRPC API (./client), in
 * our own containerd namespace, from images imported into containerd's store (./images).
 *
 *   create ─► writable snapshot on the image's top layer + container record (OCI spec, labels)
 *   start  ─► task (rootfs = the snapshot's mounts, stdout+stderr appended to the log file) ─► Running
 *   stop   ─► SIGTERM … SIGKILL at the timeout ─► Stopped        exits on its own ─► Exited (code)
 *   destroy ─► kill, delete task, container and snapshot, remove the log
 *
 * What containerd does not remember for us lives in the container's labels (uid, owning node,
 * start time, whether a stop was ours), so an agent that lost its data directory still adopts.
 * The shim writes the log file itself (a file:// stdio URI), so output keeps flowing while the
 * agent is down, and a restarted agent re-attaches to nothing: it just reads the file.
 * One event subscription per driver (task topics of our namespace) feeds events() and stop().
 */
import { isHostName } from "../../validation/index.js";
import { mkdir, rm } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { type Logger, logger } from "../../log/index.js";
import {
  DriverError,
  type Capabilities,
  type DriverEvent,
  type DriverImage,
  type DriverInstance,
  type DriverInstanceSpec,
  type Fingerprint,
  hostAccessError,
  type HostAccessPolicy,
  hostAccessRequest,
  type ImageDriver,
  type InstanceStats,
  InvalidSpecError,
  lookAgain,
  type LogsDriver,
  type Signalled,
  StartError,
  type StatsDriver,
  DRIVER_REGISTRY,
} from "../driver/index.js";
import { type Container } from "./gen/containerd/services/containers/v1/containers_pb.js";
import { Status } from "./gen/containerd/types/task/task_pb.js";
import { ContainerdClient, isAlreadyExists, isNotFound } from "./client.js";
import { importImageArchive, listImages, resolveImage } from "./images.js";
import { decodeTaskMetrics } from "./metrics.js";
import { buildRuntimeSpec, type NetworkMode } from "./spec.js";
import { packJson, unpackEvent } from "./typeurl.js";

export const LABEL_UID = "hypervisor.dev/uid";
export const LABEL_OWNER = "hypervisor.dev/owner";
/** The owner's cluster id (absent on containers made before marks had one). */
export const LABEL_CLUSTER = "hypervisor.dev/cluster";
const LABEL_STARTED = "hypervisor.dev/started-at";
const LABEL_FINISHED = "hypervisor.dev/finished-at";
const LABEL_STOP = "hypervisor.dev/stop-requested";

export const DEFAULT_NAMESPACE = "hypervisor";
const RUNTIME = "io.containerd.runc.v2";
const SIGTERM = 15;
const SIGKILL = 9;
const OWNER_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
/** Keys a spec's driver_config may set for this driver (declared in the registry). */
const CONFIG_KEYS = DRIVER_REGISTRY.containerd.configKeys.map((k) => k.name);
/** Processes a container may have when neither the node nor the instance says otherwise. */
export const DEFAULT_PIDS_LIMIT = 1024;
const SNAPSHOTTER_LABEL = "containerd.io/defaults/snapshotter";
const DEFAULT_SNAPSHOTTER = "overlayfs";

export interface ContainerdDriverOptions {
  /** Logs (logs/<name>.log). */
  stateDir: string;
  socketPath?: string;
  namespace?: string;
  snapshotter?: string;
  /** The node that manages these containers; others in the namespace are left alone. Default: hostname. */
  owner?: string;
  /** Container networking by default: none (own network namespace, loopback only) or host. */
  network?: NetworkMode;
  /** Whether containers may share the node's network namespace (network host); default false. */
  allowHostNetwork?: boolean;
  /**
   * Processes (and threads) per container: the default and the most an instance may ask for with
   * driver_config pids-limit. Default DEFAULT_PIDS_LIMIT.
   */
  pidsLimit?: number;
  log?: Logger;
}

export const containerdCapabilities: Capabilities = DRIVER_REGISTRY.containerd.capabilities;

type Waiter = (name: string, topic: string) => void;

export class ContainerdDriver implements StatsDriver, LogsDriver, ImageDriver {
  readonly name = "containerd";
  readonly capabilities = containerdCapabilities;
  private readonly client: ContainerdClient;
  private readonly namespace: string;
  private snapshotterP: Promise<string> | undefined;
  private readonly owner: string;
  private readonly log: Logger;
  private readonly waiters = new Set<Waiter>();
  private pump: Promise<void> | undefined;
  private readonly pumpStop = new AbortController();
  private closed = false;
  private cluster = "";

  constructor(private readonly opts: ContainerdDriverOptions) {
    this.namespace = opts.namespace ?? DEFAULT_NAMESPACE;
    this.owner = opts.owner ?? (hostname().toLowerCase().split(".")[0] || "localhost");
    if (!OWNER_RE.test(this.owner)) throw new DriverError(`containerd owner ${JSON.stringify(this.owner)} is not a node name (DNS label)`);
    if (opts.network === "host" && !opts.allowHostNetwork)
      throw new DriverError("containerd network host as the default needs the host network allowed (allow-host-network: true)");
    const pids = opts.pidsLimit ?? DEFAULT_PIDS_LIMIT;
    if (!Number.isSafeInteger(pids) || pids < 1) throw new DriverError(`containerd pids limit ${pids} must be a positive integer`);
    this.log = opts.log ?? logger("containerd");
    this.client = new ContainerdClient({ namespace: this.namespace, ...(opts.socketPath ? { socketPath: opts.socketPath } : {}) });
  }

  setCluster(id: string): void {
    this.cluster = id;
  }

  /** Marked with this node, and this cluster or none (a mark made before cluster ids). */
  private mine(c: Container): boolean {
    const cluster = c.labels[LABEL_CLUSTER];
    return c.labels[LABEL_OWNER] === this.owner && !(cluster && this.cluster && cluster !== this.cluster);
  }

  private whose(c: Container): string {
    const owner = c.labels[LABEL_OWNER];
    if (owner !== this.owner) return owner || "something else";
    return `node ${owner} of cluster ${c.labels[LABEL_CLUSTER] ?? "?"}`;
  }

  logFile(name: string): string {
    if (!isHostName(name)) throw new InvalidSpecError(`name: ${JSON.stringify(name)} is not an instance's name on a node`);
    return join(this.opts.stateDir, "logs", `${name}.log`);
  }

  /**
   * The snapshotter: the option, else the namespace's containerd.io/defaults/snapshotter label
   * (scripts/start-containerd.sh sets it to what works on the machine), else overlayfs.
   */
  private snapshotter(): Promise<string> {
    if (this.opts.snapshotter) return Promise.resolve(this.opts.snapshotter);
    this.snapshotterP ??= this.client.namespaces.get({ name: this.namespace }).then(
      (r) => r.namespace?.labels[SNAPSHOTTER_LABEL] || DEFAULT_SNAPSHOTTER,
      () => DEFAULT_SNAPSHOTTER,
    );
    return this.snapshotterP;
  }

  /** What this node lets containers use of the host (advertised in the fingerprint too). */
  get hostAccess(): HostAccessPolicy {
    return { hostNetwork: this.opts.allowHostNetwork === true, bridges: [] };
  }

  /** driver_config pids-limit, from 1 to the node's limit; the node's limit when absent. */
  private pidsLimit(asked: string | undefined): number {
    const max = this.opts.pidsLimit ?? DEFAULT_PIDS_LIMIT;
    if (asked === undefined) return max;
    const n = /^[1-9][0-9]{0,9}$/.test(asked) ? Number(asked) : NaN;
    if (!(n <= max))
      throw new InvalidSpecError(
        `driver_config.pids-limit: ${JSON.stringify(asked)} must be an integer from 1 to ${max} (containerd-pids-limit of node ${this.owner})`,
      );
    return n;
  }

  private cgroupsPath(name: string): string {
    return `/${this.namespace}-${name}`;
  }

  // ── events ────────────────────────────────────────────────────────────────────────────────

  /** One subscription to our namespace's task events, re-established after containerd restarts. */
  private startPump(): void {
    if (this.pump || this.closed) return;
    const signal = this.pumpStop.signal;
    this.pump = (async () => {
      while (!signal.aborted) {
        try {
          const stream = this.client.events.subscribe({ filters: [`namespace==${this.namespace},topic~="/tasks/"`] }, { signal });
          for await (const env of stream) {
            const ev = unpackEvent(env.event);
            if (!ev) continue;
            const id = "containerId" in ev.event ? ev.event.containerId : "";
            if (!id) continue;
            for (const w of this.waiters) w(id, env.topic);
          }
        } catch (e) {
          if (signal.aborted) return;
          this.log.debug({ err: (e as Error).message }, "containerd events interrupted; resubscribing");
        }
        await sleep(500, undefined, { signal }).catch(() => undefined);
      }
    })();
  }

  // ── contract ──────────────────────────────────────────────────────────────────────────────

  async fingerprint(opts: Signalled = {}): Promise<Fingerprint> {
    try {
      const v = await this.client.version();
      this.startPump();
      return {
        healthy: true,
        version: v.version,
        message: "",
        attributes: {
          containerd_version: v.version,
          containerd_revision: v.revision,
          namespace: this.namespace,
          snapshotter: await this.snapshotter(),
          runtime: RUNTIME,
          pids_limit: String(this.opts.pidsLimit ?? DEFAULT_PIDS_LIMIT),
        },
      };
    } catch (e) {
      if (opts.signal?.aborted) throw e;
      return { healthy: false, version: "", message: `containerd at ${this.client.socketPath}: ${(e as Error).message}`, attributes: {} };
    }
  }

  async create(spec: DriverInstanceSpec, opts: Signalled = {}): Promise<DriverInstance> {
    opts.signal?.throwIfAborted();
    if (!isHostName(spec.name)) throw new InvalidSpecError(`name: ${JSON.stringify(spec.name)} is not an instance's name on a node`);
    const existing = await this.container(spec.name);
    if (existing) {
      if (!this.mine(existing))
        throw new DriverError(`container ${spec.name} exists and is managed by ${this.whose(existing)}, not by ${this.owner}`);
      if (existing.labels[LABEL_UID] !== spec.uid)
        throw new DriverError(`container ${spec.name} exists with another instance (uid ${existing.labels[LABEL_UID]})`);
      return (await this.inspect(spec.name))!;
    }
    for (const k of Object.keys(spec.config))
      if (!(CONFIG_KEYS as readonly string[]).includes(k))
        throw new InvalidSpecError(`driver_config: unknown key ${JSON.stringify(k)} for containerd (known: ${CONFIG_KEYS.join(", ")})`);
    const network = (spec.config.network ?? this.opts.network ?? "none") as NetworkMode;
    if (network !== "none" && network !== "host")
      throw new InvalidSpecError(`driver_config.network: ${JSON.stringify(spec.config.network)} must be none or host`);
    // The scheduler places such an instance only where it is allowed; this is the node's own word.
    const refused = hostAccessError(hostAccessRequest(spec.config), this.hostAccess, this.owner);
    if (refused) throw new InvalidSpecError(refused);
    const pidsLimit = this.pidsLimit(spec.config["pids-limit"]);
    if (!spec.image) throw new InvalidSpecError("image: a container needs an image (import one with `hypervisor-ctl image import`)");
    if (spec.kernel || spec.initrd || spec.cmdline)
      throw new InvalidSpecError("kernel, initrd and cmdline are for VMs; a container runs an image");

    const image = await resolveImage(this.client, spec.image).catch((e: unknown) => {
      if (isNotFound(e))
        throw new InvalidSpecError(
          `image: ${JSON.stringify(spec.image)} is not on node ${this.owner}; import it with \`hypervisor-ctl image import\``,
        );
      throw e;
    });
    // Validated in full before anything is created in containerd.
    const runtimeSpec = buildRuntimeSpec({ spec, image: image.config, cgroupsPath: this.cgroupsPath(spec.name), network, pidsLimit });
    await mkdir(join(this.opts.stateDir, "logs"), { recursive: true });

    const snapshotter = await this.snapshotter();
    await this.client.withTemporaryLease(async (c) => {
      await c.snapshots
        .prepare({ snapshotter, key: spec.name, parent: image.chainId, labels: { [LABEL_UID]: spec.uid } })
        .catch(async (e: unknown) => {
          // A snapshot left by a create that died half-way: ours by name, start clean.
          if (!isAlreadyExists(e)) throw e;
          await c.snapshots.remove({ snapshotter, key: spec.name });
          await c.snapshots.prepare({ snapshotter, key: spec.name, parent: image.chainId, labels: { [LABEL_UID]: spec.uid } });
        });
      try {
        await c.containers.create({
          container: {
            id: spec.name,
            image: image.name,
            labels: { [LABEL_UID]: spec.uid, [LABEL_OWNER]: this.owner, ...(this.cluster ? { [LABEL_CLUSTER]: this.cluster } : {}) },
            runtime: { name: RUNTIME },
            spec: packJson(runtimeSpec),
            snapshotter,
            snapshotKey: spec.name,
          },
        });
      } catch (e) {
        await c.snapshots.remove({ snapshotter, key: spec.name }).catch(() => undefined);
        throw e;
      }
    });
    this.log.info({ instance: spec.name, image: image.name }, "container created");
    return (await this.inspect(spec.name))!;
  }

  async start(name: string, opts: Signalled = {}): Promise<DriverInstance> {
    opts.signal?.throwIfAborted();
    this.startPump();
    const c = await this.mustContainer(name);
    const task = await this.task(name);
    if (task && (task.status === Status.RUNNING || task.status === Status.PAUSED || task.status === Status.PAUSING))
      return (await this.inspect(name))!;
    // A finished run's task (kept for its exit status) goes before the next one.
    if (task) await this.client.tasks.delete({ containerId: name }).catch(ignoreNotFound);
    try {
      const { mounts } = await this.client.snapshots.mounts({
        snapshotter: c.snapshotter || (await this.snapshotter()),
        key: c.snapshotKey || name,
      });
      const log = pathToFileURL(this.logFile(name)).href;
      await this.client.tasks.create({ containerId: name, rootfs: mounts, stdout: log, stderr: log });
      await this.setLabels(name, { [LABEL_STARTED]: String(Date.now()), [LABEL_FINISHED]: "", [LABEL_STOP]: "" });
      await this.client.tasks.start({ containerId: name });
    } catch (e) {
      // The runtime refused (no such binary, bad cwd, ...): report it as a failed start.
      await this.client.tasks.delete({ containerId: name }).catch(() => undefined);
      throw new StartError(`start container ${name}: ${(e as Error).message}`);
    }
    return (await this.inspect(name))!;
  }

  /**
   * SIGTERM, then SIGKILL at the timeout. An abort (the caller's deadline, or the desired state
   * changed) ends the wait with the signal's reason and leaves the container as it is: it is not
   * killed early, the caller decides what comes next.
   */
  async stop(name: string, timeoutMs: number, opts: Signalled = {}): Promise<DriverInstance> {
    const { signal } = opts;
    signal?.throwIfAborted();
    await this.mustContainer(name, signal);
    const task = await this.task(name, signal);
    if (!task || (task.status !== Status.RUNNING && task.status !== Status.PAUSED && task.status !== Status.PAUSING))
      return (await this.inspect(name, opts))!;
    await this.setLabels(name, { [LABEL_STOP]: "1" }, signal);
    await this.kill(name, SIGTERM, signal);
    if (!(await this.waitExit(name, timeoutMs, signal))) {
      signal?.throwIfAborted();
      this.log.info({ instance: name, timeoutMs }, "container ignored SIGTERM; killing it");
      await this.kill(name, SIGKILL, signal);
      await this.waitExit(name, 30_000, signal);
      signal?.throwIfAborted();
    }
    return (await this.inspect(name, opts))!;
  }

  async destroy(name: string, opts: Signalled & { force?: boolean } = {}): Promise<void> {
    const { signal } = opts;
    signal?.throwIfAborted();
    const c = await this.container(name, signal);
    if (c) {
      if (!this.mine(c)) throw new DriverError(`container ${name} is managed by ${this.whose(c)}, not by ${this.owner}; not destroying it`);
      const task = await this.task(name, signal);
      if (task && task.status !== Status.STOPPED && task.status !== Status.CREATED) {
        await this.kill(name, SIGKILL, signal);
        await this.waitExit(name, 30_000, signal);
        signal?.throwIfAborted();
      }
      if (task) await this.client.tasks.delete({ containerId: name }).catch(ignoreNotFound);
      await this.client.containers.delete({ id: name }).catch(ignoreNotFound);
      await this.client.snapshots
        .remove({ snapshotter: c.snapshotter || (await this.snapshotter()), key: c.snapshotKey || name })
        .catch(ignoreNotFound);
    }
    await rm(this.logFile(name), { force: true });
  }

  async inspect(name: string, opts: Signalled = {}): Promise<DriverInstance | undefined> {
    opts.signal?.throwIfAborted();
    const c = await this.container(name, opts.signal);
    if (!c || !this.mine(c) || !c.labels[LABEL_UID]) return undefined;
    const labels = c.labels;
    // The writable layer is not kept across moves (as in Kubernetes): no local disk to protect.
    const inst: DriverInstance = {
      name,
      uid: labels[LABEL_UID]!,
      state: "created",
      addresses: [],
      details: { image: c.image },
      localDisk: false,
    };
    if (labels[LABEL_CLUSTER]) inst.cluster = labels[LABEL_CLUSTER];
    const started = Number(labels[LABEL_STARTED] || NaN);
    if (Number.isFinite(started)) inst.startedAt = started;
    const task = await this.task(name, opts.signal);
    if (task) {
      if (task.pid) inst.details.pid = String(task.pid);
      switch (task.status) {
        case Status.RUNNING:
        case Status.PAUSING:
          inst.state = "running";
          return inst;
        case Status.PAUSED:
          inst.state = "running";
          inst.message = "paused";
          return inst;
        case Status.CREATED:
          return inst;
        case Status.STOPPED: {
          inst.finishedAt = task.exitedAt ? Number(timestampMs(task.exitedAt)) : Date.now();
          if (labels[LABEL_STOP]) inst.state = "stopped";
          else {
            inst.state = "exited";
            inst.exitCode = task.exitStatus;
          }
          return inst;
        }
        default:
          inst.state = "failed";
          inst.message = `task in state ${Status[task.status] ?? task.status}`;
          return inst;
      }
    }
    if (!Number.isFinite(started)) return inst; // never started: created
    // Started once, and its task is gone (containerd lost it: host reboot, or deleted by hand).
    const finished = Number(labels[LABEL_FINISHED] || NaN);
    inst.finishedAt = Number.isFinite(finished) ? finished : Date.now();
    if (labels[LABEL_STOP]) inst.state = "stopped";
    else {
      inst.state = "exited";
      inst.exitCode = 255;
      inst.message = "its task is gone (containerd restarted without it)";
    }
    return inst;
  }

  async list(opts: Signalled = {}): Promise<DriverInstance[]> {
    opts.signal?.throwIfAborted();
    const { containers } = await this.client.containers.list({ filters: [`labels."${LABEL_OWNER}"==${this.owner}`] });
    const out: DriverInstance[] = [];
    for (const c of containers) {
      const i = await this.inspect(c.id);
      if (i) out.push(i);
    }
    return out.sort((a, b) => (a.name < b.name ? -1 : 1));
  }

  events(opts: Required<Signalled>): AsyncIterable<DriverEvent> {
    this.startPump();
    return lookAgain(
      (onName) => {
        const w: Waiter = (name) => onName(name);
        this.waiters.add(w);
        return () => this.waiters.delete(w);
      },
      (name) => this.inspect(name),
      opts.signal,
    );
  }

  async stats(name: string): Promise<InstanceStats> {
    const { metrics } = await this.client.tasks.metrics({ filters: [`id==${name}`] });
    const m = decodeTaskMetrics(metrics[0]?.data);
    if (!m) throw new DriverError(`container ${name} has no running task to measure`);
    return m;
  }

  async importImage(file: string, opts: Signalled = {}): Promise<DriverImage[]> {
    opts.signal?.throwIfAborted();
    return importImageArchive(this.client, file, await this.snapshotter());
  }

  listImages(opts: Signalled = {}): Promise<DriverImage[]> {
    opts.signal?.throwIfAborted();
    return listImages(this.client);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.pumpStop.abort();
    await this.pump?.catch(() => undefined);
    this.client.close();
  }

  // ── helpers ───────────────────────────────────────────────────────────────────────────────

  private async container(name: string, signal?: AbortSignal): Promise<Container | undefined> {
    if (!isHostName(name)) throw new InvalidSpecError(`name: ${JSON.stringify(name)} is not an instance's name on a node`);
    try {
      return (await this.client.containers.get({ id: name }, { signal })).container;
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  private async mustContainer(name: string, signal?: AbortSignal): Promise<Container> {
    const c = await this.container(name, signal);
    if (!c || !this.mine(c)) throw new DriverError(`no container ${name} of node ${this.owner}`);
    return c;
  }

  private async task(name: string, signal?: AbortSignal) {
    try {
      return (await this.client.tasks.get({ containerId: name }, { signal })).process;
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  private async kill(name: string, sig: number, signal?: AbortSignal): Promise<void> {
    await this.client.tasks.kill({ containerId: name, signal: sig, all: sig === SIGKILL }, { signal }).catch((e: unknown) => {
      // Already gone between the check and the signal.
      if (!isNotFound(e) && !/process already finished|not running/i.test((e as Error).message)) throw e;
    });
  }

  /**
   * Resolves true once the task has exited, false at the timeout or when signal aborts. Events
   * wake it; a re-check every second covers a missed one.
   */
  private async waitExit(name: string, timeoutMs: number, signal?: AbortSignal): Promise<boolean> {
    const deadline = Date.now() + Math.max(0, timeoutMs);
    let wake: (() => void) | undefined;
    const w: Waiter = (id, topic) => {
      if (id === name && (topic === "/tasks/exit" || topic === "/tasks/delete")) wake?.();
    };
    this.waiters.add(w);
    try {
      for (;;) {
        if (signal?.aborted) return false;
        const t = await this.task(name, signal);
        if (!t || t.status === Status.STOPPED) {
          if (t?.exitedAt) await this.setLabels(name, { [LABEL_FINISHED]: String(Number(timestampMs(t.exitedAt))) }, signal);
          return true;
        }
        const left = deadline - Date.now();
        if (left <= 0 || signal?.aborted) return false;
        await Promise.race([
          new Promise<void>((r) => (wake = r)),
          sleep(Math.min(1000, left), undefined, signal ? { signal } : {}).catch(() => undefined),
        ]);
      }
    } finally {
      this.waiters.delete(w);
    }
  }

  private async setLabels(name: string, labels: Record<string, string>, signal?: AbortSignal): Promise<void> {
    await this.client.containers.update(
      {
        container: { id: name, labels },
        updateMask: { paths: Object.keys(labels).map((k) => `labels.${k}`) },
      },
      { signal },
    );
  }
}

function ignoreNotFound(e: unknown): void {
  if (!isNotFound(e)) throw e;
}

export function createContainerdDriver(opts: ContainerdDriverOptions): ContainerdDriver {
  return new ContainerdDriver(opts);
}
