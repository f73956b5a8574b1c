/*
 * The agent: one per compute node. It registers the node, keeps it alive, adopts what its
 * drivers already run, and reconciles every instance assigned to it.
 *
 *   start():  cluster id (a server makes it; waited for) ──► drivers mark and see only its instances
 *             ──► fingerprint ──► put nodes/<node>/record ──► heartbeat nodes/<node>/alive
 *             ──► adopt: driver.list() vs assignments (same uid: keep; otherwise: an orphan,
 *                 which the reconciler fences, keeps or destroys as orphans.ts decides: never
 *                 a disk the cluster may still need)
 *             ──► loops until stop():
 *                   list+watch assignments/<node>/ ──┐
 *                   driver events ───────────────────┼──► work queue (keys) ──► reconcile(name)
 *                   resync every resync period ──────┘
 *   stop():   loops end, lease revoked; instances keep running (a new agent adopts them)
 *
 * It runs in-process (the server's --dev mode, tests) or as the hypervisor-agent binary: it
 * only needs a Store and drivers.
 */
import { clone, create, equals, fromBinary, toBinary } from "@bufbuild/protobuf";
import { setMaxListeners } from "node:events";
import { chmod, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { type Node, NodeSchema, ResourcesSchema, TaintSchema } from "../../api/gen/hypervisor/v1/node_pb.js";
import { TaintEffect } from "../../api/gen/hypervisor/v1/instance_pb.js";
import type { TaintSetting } from "./config.js";
import { AgentEndpointSchema, AssignmentSchema } from "../../api/gen/hypervisor/v1/store_pb.js";
import { isHostName, NAME_RE } from "../../pkg/validation/index.js";
import { Heartbeat } from "../../pkg/cluster/heartbeat/index.js";
import type { Instance } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { type KnownInstance, OrphanBook, SpecKeeper } from "./orphans.js";
import { type KeyValue, type Store } from "../../pkg/cluster/store/index.js";
import {
  awaitClusterId,
  codecs,
  hostName,
  hostRef,
  keys,
  listWatch,
  putNodeRecord,
  refAfter,
  refOf,
} from "../../pkg/cluster/state/index.js";
import {
  type ConsoleEndpoint,
  type ConsoleKind,
  type Driver,
  DriverError,
  hasConsole,
  hasImages,
  hasLogs,
  InvalidSpecError,
} from "../../pkg/compute/driver/index.js";
import { logger as rootLogger, type Logger } from "../../pkg/log/index.js";
import { fingerprintNode, type Capacity } from "./fingerprint.js";
import { Code, ConnectError } from "@connectrpc/connect";
import { agentService, type NodeImage } from "./agent-service.js";
import { AgentEndpoint, type EndpointTls } from "./endpoint.js";
import { DeadlineDriver, DEFAULT_DEADLINES, type OperationDeadlines } from "./deadlines.js";
import { Reconciler } from "./reconcile.js";
import { WorkQueue } from "./workqueue.js";

export interface AgentOptions {
  store: Store;
  nodeName: string;
  drivers: Driver[];
  labels?: Record<string, string>;
  /**
   * Where to ask about an instance found without an assignment here (default: its record in the
   * store, which needs read access to instances/).
   */
  lookup?: (name: string, signal: AbortSignal) => Promise<KnownInstance | undefined>;
  /** Liveness lease TTL (default 10 s). */
  heartbeatTtlSeconds?: number;
  /** Agent state; the drivers built by buildDrivers keep theirs under it too. */
  dataDir: string;
  logger?: Logger;
  /** Instances reconciled in parallel (default 4). */
  workers?: number;
  /** Period of the safety-net resync of every instance and of the fingerprint (default 30 s). */
  resyncMs?: number;
  /** Capacity to offer instead of the detected one (simulated nodes). */
  capacity?: Capacity;
  /** Held back for the host: the scheduler offers capacity minus this. */
  reserved?: { vcpus: number; memoryMiB: number; diskGiB: number };
  /** Node taints (see Placement.tolerations). */
  taints?: TaintSetting[];
  address?: string;
  /** Stop timeout for instances without one (default 30 s). */
  defaultStopTimeoutMs?: number;
  /** Longest stop timeout honoured, whatever the store says (default an hour). */
  maxStopTimeoutMs?: number;
  /** Deadlines of driver operations (defaults: DEFAULT_DEADLINES). */
  deadlines?: Partial<OperationDeadlines>;
  /**
   * HOST:PORT of the agent's endpoint (AgentService: logs, images, orphan purges and consoles for
   * the server); default 127.0.0.1:0 (a free loopback port, enough when the server runs on this
   * machine). Empty: no endpoint.
   */
  listen?: string;
  /** TLS for the endpoint (mutual with requestCert); cleartext HTTP/2 without it. */
  endpointTls?: EndpointTls;
  /** Largest image upload the endpoint takes (default MAX_IMAGE_BYTES, 16 GiB). */
  maxImageBytes?: number;
}

export interface AdoptionReport {
  /** Instances found running (or stopped) in a driver and assigned here with the same uid. */
  adopted: string[];
  /** Instances found in a driver but not assigned here: handed to the reconciler as orphans. */
  orphans: string[];
}

export class AgentError extends Error {
  override name = "AgentError";
}

export class Agent {
  readonly nodeName: string;
  private readonly log: Logger;
  private readonly queue: WorkQueue<string>;
  private readonly reconciler: Reconciler;
  private readonly heartbeat: Heartbeat;
  private readonly ctl = new AbortController();
  private readonly loops: Promise<void>[] = [];
  /**
   * Instance name → its assignment here, as of the last watch event: for the reconciler, which
   * reads none back.
   */
  private readonly assigned = new Map<string, KeyValue>();
  /** Assigned by an event with version 1 (a new key) and not yet reconciled. */
  private readonly fresh = new Set<string>();
  private node: Node | undefined;
  private started = false;
  private endpoint: AgentEndpoint | undefined;
  private report: AdoptionReport = { adopted: [], orphans: [] };
  private cluster = "";
  private readonly orphans: OrphanBook;
  private readonly specs: SpecKeeper;

  constructor(private readonly opts: AgentOptions) {
    if (!NAME_RE.test(opts.nodeName)) {
      throw new AgentError(
        `node name ${JSON.stringify(opts.nodeName)} is not a valid name (1-63 lowercase letters, digits and '-', starting with a letter)`,
      );
    }
    if (opts.drivers.length === 0) throw new AgentError("an agent needs at least one driver");
    this.nodeName = opts.nodeName;
    this.log = opts.logger ?? rootLogger("agent", { node: opts.nodeName });
    // Every driver call the agent makes itself (adoption, resync, fingerprint, the endpoint's
    // console and image list) runs under its deadline too; the reconciler guards its own calls.
    const deadlines = { ...DEFAULT_DEADLINES, ...opts.deadlines };
    this.opts = { ...opts, drivers: opts.drivers.map((d) => new DeadlineDriver(d, deadlines, this.log)) };
    this.queue = new WorkQueue<string>({ logger: this.log, maxDelayMs: 30_000 });
    this.orphans = new OrphanBook(opts.store, opts.nodeName);
    this.specs = new SpecKeeper(opts.dataDir);
    const reconcilerOpts: ConstructorParameters<typeof Reconciler>[0] = {
      store: opts.store,
      nodeName: opts.nodeName,
      drivers: opts.drivers,
      log: this.log,
      assignments: {
        get: (name) => this.assigned.get(name),
        takeFresh: (name) => this.fresh.delete(name),
      },
      wake: (name, afterMs) => this.queue.addAfter(name, afterMs),
      cluster: () => this.cluster,
      orphans: this.orphans,
      specs: this.specs,
      lookup: (name, signal) => this.lookup(name, signal),
    };
    if (opts.defaultStopTimeoutMs !== undefined) reconcilerOpts.defaultStopTimeoutMs = opts.defaultStopTimeoutMs;
    if (opts.maxStopTimeoutMs !== undefined) reconcilerOpts.maxStopTimeoutMs = opts.maxStopTimeoutMs;
    if (opts.deadlines) reconcilerOpts.deadlines = opts.deadlines;
    this.reconciler = new Reconciler(reconcilerOpts);
    this.heartbeat = new Heartbeat(opts.store, opts.nodeName, { ttlSeconds: opts.heartbeatTtlSeconds ?? 10, logger: this.log });
  }

  /**
   * What the cluster knows of an instance this node runs without an assignment, from its record
   * (instances/<project>/<name>; `name` is its name on this node). A node confined to its own keys cannot read it: the agent then asks a
   * server (the lookup option).
   */
  private async lookup(name: string, signal: AbortSignal): Promise<KnownInstance | undefined> {
    if (this.opts.lookup) return this.opts.lookup(name, signal);
    const kv = await this.opts.store.get(keys.instance(hostRef(name)), { signal });
    const rec = kv ? codecs.instance.decode(kv.value) : undefined;
    return (
      rec && {
        uid: rec.uid,
        node: rec.status?.node ?? "",
        deleting: Boolean(rec.deleteTime),
        ephemeralDisks: Boolean(rec.spec?.ephemeralDisks),
      }
    );
  }

  /** The cluster this agent works for (empty until start). */
  get clusterId(): string {
    return this.cluster;
  }

  /** What the last start() adopted, and found without an assignment. */
  get adoption(): AdoptionReport {
    return this.report;
  }

  /**
   * Registers, heartbeats, adopts, and starts reconciling. Resolves once the assignments have
   * been listed and queued; rejects (leaving nothing running) if registration fails.
   */
  async start(signal?: AbortSignal): Promise<void> {
    if (this.started) throw new AgentError("agent already started");
    this.started = true;
    const s = signal ? AbortSignal.any([signal, this.ctl.signal]) : this.ctl.signal;
    // Every driver call and every stop in flight listens to it (one listener each, removed when it
    // settles): more than the default ten at once is normal. (Not 0: Node 20's getMaxListeners,
    // which the etcd store calls on the same signal, throws on an EventTarget set to 0.)
    setMaxListeners(10_000, s);
    // Its state is the node's own: no other user lists it. Searchable (0711), not 0700, because
    // QEMU runs as its own user and must reach the VM disks under libvirt/; what holds secrets
    // (specs/, the upload spool) is 0700 with 0600 files of its own.
    await mkdir(this.opts.dataDir, { recursive: true, mode: 0o711 });
    await chmod(this.opts.dataDir, 0o711);
    // Before any driver call: from here on the drivers never see another cluster's instances.
    this.cluster = await awaitClusterId(this.opts.store, {
      signal: s,
      onWait: () => this.log.info("waiting for a server to give the cluster its id"),
    });
    for (const d of this.opts.drivers) d.setCluster(this.cluster);
    this.node = await this.fingerprint(s);
    await putNodeRecord(this.opts.store, this.node, { signal: s });
    this.log.info({ drivers: this.node.drivers.map((d) => `${d.name}${d.healthy ? "" : " (unhealthy)"}`) }, "node registered");
    await this.heartbeat.start(s);
    try {
      await this.startEndpoint(s);
      this.report = await this.adopt(s);
      // Orphans, and records a previous run left, are decided by the reconciler like any name.
      for (const n of [...this.report.orphans, ...(await this.orphans.load(s))]) this.queue.add(n);
      let listed!: () => void;
      const firstList = new Promise<void>((resolve) => (listed = resolve));
      this.loops.push(
        this.queue.run(s, this.opts.workers ?? 4, (name, sig) => this.reconciler.reconcile(name, sig)),
        this.watchAssignments(s, listed),
        ...this.opts.drivers.map((d) => this.watchDriver(d, s)),
        this.resync(s),
      );
      await Promise.race([firstList, new Promise<void>((resolve) => s.addEventListener("abort", () => resolve(), { once: true }))]);
    } catch (e) {
      await this.stop();
      throw e;
    }
    this.log.info({ assigned: this.assigned.size }, "agent started");
  }

  /** Serves a renewed node key and certificate on the endpoint's new connections. */
  reloadEndpointTls(key: string, cert: string): void {
    this.endpoint?.reloadTls(key, cert);
  }

  /** How many times the heartbeat lease expired and had to be granted again (the node was NotReady). */
  get heartbeatRegrants(): number {
    return this.heartbeat.regrants;
  }

  /** Ends every loop and revokes the lease. Instances keep running. Idempotent. */
  async stop(): Promise<void> {
    this.ctl.abort();
    await Promise.allSettled(this.loops);
    await this.reconciler.settled(); // stops running beside the workers end with the signal
    if (this.endpoint) {
      await this.endpoint.close();
      await this.opts.store.delete(keys.endpoint(this.nodeName)).catch(() => undefined);
      this.endpoint = undefined;
    }
    await this.heartbeat.stop();
  }

  /** Serves AgentService to the server, and publishes where (nodes/<node>/endpoint). */
  private async startEndpoint(signal: AbortSignal): Promise<void> {
    const listen = this.opts.listen ?? "127.0.0.1:0";
    if (!listen) return;
    const m = /^(\[[0-9a-fA-F:.]+\]|[^:[\]]*):(\d{1,5})$/.exec(listen);
    if (!m) throw new AgentError(`listen: ${JSON.stringify(listen)} is not HOST:PORT`);
    const host = m[1]!.replace(/^\[|\]$/g, "") || "0.0.0.0";
    // Each call runs until its own end or the agent's, whichever comes first.
    const both = (s: AbortSignal) => AbortSignal.any([s, signal]);
    const service = agentService(
      {
        logFile: (name, s) => this.logFile(name, both(s)),
        importImage: (driver, file, s) => this.importImage(driver, file, both(s)),
        listImages: (s) => this.listImages(both(s)),
        console: (name, kind, s) => this.console(name, kind, both(s)),
        purgeOrphan: (name, uid, s) => this.purgeOrphan(name, uid, both(s)),
      },
      {
        nodeName: this.nodeName,
        log: this.log,
        spoolDir: join(this.opts.dataDir, "spool"),
        ...(this.opts.maxImageBytes !== undefined ? { maxImageBytes: this.opts.maxImageBytes } : {}),
      },
    );
    const endpoint = new AgentEndpoint(service, this.log, this.opts.endpointTls ? { tls: this.opts.endpointTls } : {});
    const port = await endpoint.listen(host, Number(m[2]));
    this.endpoint = endpoint;
    // Unspecified addresses are not reachable as such: advertise the node's address.
    const advertised = host === "0.0.0.0" || host === "::" ? this.node?.address || "127.0.0.1" : host;
    const url = `${endpoint.scheme}://${advertised.includes(":") ? `[${advertised}]` : advertised}:${port}`;
    await this.opts.store.put(
      keys.endpoint(this.nodeName),
      toBinary(AgentEndpointSchema, create(AgentEndpointSchema, { url, token: endpoint.token })),
      { signal },
    );
    this.log.info({ url }, "agent endpoint listening");
  }

  /** The driver running an instance assigned to this node; NotFound or FailedPrecondition if none. */
  private async assignedDriver(name: string, signal: AbortSignal): Promise<Driver> {
    const kv = await this.opts.store.get(keys.assignment(this.nodeName, hostRef(name)), { signal });
    const inst = kv ? fromBinary(AssignmentSchema, kv.value).instance : undefined;
    if (!inst) throw new ConnectError(`instance ${name} is not assigned to node ${this.nodeName}`, Code.NotFound);
    const driver = this.opts.drivers.find((d) => d.name === inst.spec?.driver);
    if (!driver)
      throw new ConnectError(`driver ${inst.spec?.driver ?? ""} is not available on node ${this.nodeName}`, Code.FailedPrecondition);
    return driver;
  }

  private async logFile(name: string, signal: AbortSignal): Promise<string> {
    const driver = await this.assignedDriver(name, signal);
    if (!hasLogs(driver)) throw new ConnectError(`driver ${driver.name} keeps no console log`, Code.FailedPrecondition);
    return driver.logFile(name);
  }

  private async console(name: string, kind: ConsoleKind, signal: AbortSignal): Promise<ConsoleEndpoint> {
    const driver = await this.assignedDriver(name, signal);
    if (!hasConsole(driver)) throw new ConnectError(`driver ${driver.name} has no console`, Code.FailedPrecondition);
    try {
      return await driver.console(name, kind, { signal });
    } catch (e) {
      if (e instanceof DriverError) throw new ConnectError(e.message, Code.FailedPrecondition);
      throw e;
    }
  }

  private async purgeOrphan(name: string, uid: string, signal: AbortSignal): Promise<void> {
    const r = await this.reconciler.purge(name, uid, signal);
    this.queue.add(name); // an instance assigned under that name may have waited for it
    if (r === "absent") throw new ConnectError(`no orphan ${name}${uid ? ` with uid ${uid}` : ""} on node ${this.nodeName}`, Code.NotFound);
    if (r === "assigned")
      throw new ConnectError(
        `instance ${name} is assigned to node ${this.nodeName}; delete the instance instead of purging it`,
        Code.FailedPrecondition,
      );
  }

  private async importImage(name: string, file: string, signal: AbortSignal): Promise<NodeImage[]> {
    const driver = this.opts.drivers.find((d) => d.name === name);
    if (!driver) throw new ConnectError(`driver ${name} is not running on node ${this.nodeName}`, Code.FailedPrecondition);
    if (!hasImages(driver)) throw new ConnectError(`driver ${name} keeps no images`, Code.FailedPrecondition);
    try {
      const images = await driver.importImage(file, { signal });
      this.log.info({ driver: name, images: images.map((i) => i.name) }, "image imported");
      return images.map((i) => ({ ...i, driver: name }));
    } catch (e) {
      if (e instanceof InvalidSpecError) throw new ConnectError(e.message, Code.InvalidArgument);
      throw e;
    }
  }

  private async listImages(signal: AbortSignal): Promise<NodeImage[]> {
    const out: NodeImage[] = [];
    for (const d of this.opts.drivers) if (hasImages(d)) for (const i of await d.listImages({ signal })) out.push({ ...i, driver: d.name });
    return out;
  }

  /**
   * Instances the drivers already have: those assigned here with the same uid are kept as they
   * are (no create, no restart), whatever their mark (one made before marks named the cluster
   * too); the rest are orphans, which the reconciler decides about (never by deleting a disk the
   * cluster may still need).
   */
  private async adopt(signal: AbortSignal): Promise<AdoptionReport> {
    const { kvs } = await this.opts.store.range(keys.assignmentsOf(this.nodeName), { signal });
    const wanted = new Map<string, { uid: string; driver: string; instance: Instance }>();
    for (const kv of kvs) {
      const i = fromBinary(AssignmentSchema, kv.value).instance;
      if (i) wanted.set(hostName(refOf(i)), { uid: i.uid, driver: i.spec?.driver ?? "", instance: i });
    }
    const report: AdoptionReport = { adopted: [], orphans: [] };
    for (const d of this.opts.drivers) {
      let found;
      try {
        found = await d.list({ signal });
      } catch (e) {
        if (signal.aborted) throw e;
        // A runtime that is down (libvirtd not answering) must not keep the node from starting;
        // its instances are neither adopted nor destroyed now. The reconciler inspects each
        // assigned one again and reports it once the runtime answers.
        this.log.warn({ driver: d.name, err: (e as Error).message }, "driver cannot list its instances; adoption skipped for it");
        continue;
      }
      for (const inst of found) {
        const w = wanted.get(inst.name);
        if (w && w.uid === inst.uid && w.driver === d.name) {
          report.adopted.push(inst.name);
          const i = wanted.get(inst.name)!.instance;
          // Specs were not kept before orphans could be adopted back: keep this one's now.
          if ((await this.specs.load(inst.name))?.uid !== inst.uid) await this.specs.save(i);
          this.log.info({ instance: inst.name, driver: d.name, state: inst.state, legacyMark: !inst.cluster }, "adopted instance");
        } else {
          report.orphans.push(inst.name);
        }
      }
    }
    this.log.info({ adopted: report.adopted.length, orphans: report.orphans.length }, "adoption done");
    return report;
  }

  /** List+watch of assignments/<node>/: every key seen, and every key that vanished, is queued. */
  private async watchAssignments(signal: AbortSignal, listed: () => void): Promise<void> {
    const prefix = keys.assignmentsOf(this.nodeName);
    // Keyed by the instance's name on this node, as the drivers know it.
    const hostOf = (key: string) => {
      const ref = refAfter(prefix, key);
      return ref === undefined ? undefined : hostName(ref);
    };
    const onError = (e: unknown) => this.log.warn({ err: e }, "assignment watch failed; listing again");
    for await (const ev of listWatch(this.opts.store, prefix, { signal, onError })) {
      if (ev.type === "snapshot") {
        const now = new Map(ev.kvs.flatMap((kv) => ((n) => (n === undefined ? [] : [[n, kv] as const]))(hostOf(kv.key))));
        // Names that disappeared while we were not watching still need their instance removed.
        for (const n of this.assigned.keys()) if (!now.has(n)) this.queue.add(n);
        this.assigned.clear();
        this.fresh.clear(); // a listed key may have had a status for a while: read it
        for (const [n, kv] of now) {
          this.assigned.set(n, kv);
          this.queue.add(n);
        }
        listed();
        continue;
      }
      for (const e of ev.batch.events) {
        const n = hostOf(e.kv.key);
        if (n === undefined) continue; // not an instance's key (of another version, say)
        if (e.type === "put") {
          this.assigned.set(n, e.kv);
          if (e.kv.version === 1) this.fresh.add(n);
        } else {
          this.assigned.delete(n);
          this.fresh.delete(n);
        }
        this.queue.add(n);
      }
    }
  }

  /** A driver event (start, stop, exit) only says "look at this instance again". */
  private async watchDriver(d: Driver, signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      try {
        // Only names this agent could have given: anything else on the runtime is not ours to look at.
        for await (const ev of d.events({ signal })) if (isHostName(ev.name)) this.queue.add(ev.name);
      } catch (e) {
        if (signal.aborted) return;
        this.log.warn({ driver: d.name, err: e }, "driver event stream failed; resubscribing");
      }
      await sleep(1000, undefined, { signal }).catch(() => undefined);
    }
  }

  /**
   * The safety net: every assigned instance and every driver instance is queued again, and the
   * node re-registered if its fingerprint (driver health, capacity) changed.
   */
  private async resync(signal: AbortSignal): Promise<void> {
    const period = this.opts.resyncMs ?? 30_000;
    while (!signal.aborted) {
      try {
        await sleep(period, undefined, { signal });
      } catch {
        return;
      }
      try {
        for (const n of this.assigned.keys()) this.queue.add(n);
        for (const d of this.opts.drivers) for (const i of await d.list({ signal })) if (isHostName(i.name)) this.queue.add(i.name);
        this.reconciler.prune(this.assigned);
        const node = await this.fingerprint(signal);
        if (this.node && !sameFingerprint(this.node, node)) {
          await putNodeRecord(this.opts.store, node, { signal });
          this.log.info("node fingerprint changed; registered again");
        }
        this.node = node;
      } catch (e) {
        if (!signal.aborted) this.log.warn({ err: e }, "resync failed");
      }
    }
  }

  private async fingerprint(signal: AbortSignal): Promise<Node> {
    const o: Parameters<typeof fingerprintNode>[0] = {
      nodeName: this.nodeName,
      labels: this.opts.labels ?? {},
      drivers: this.opts.drivers,
      dataDir: this.opts.dataDir,
      signal,
    };
    if (this.opts.capacity) o.capacity = this.opts.capacity;
    if (this.opts.address) o.address = this.opts.address;
    const node = await fingerprintNode(o);
    node.taints = (this.opts.taints ?? []).map((t) =>
      create(TaintSchema, {
        key: t.key,
        value: t.value,
        effect: t.effect === "NoSchedule" ? TaintEffect.NO_SCHEDULE : TaintEffect.PREFER_NO_SCHEDULE,
      }),
    );
    const r = this.opts.reserved;
    if (r && (r.vcpus || r.memoryMiB || r.diskGiB))
      node.reserved = create(ResourcesSchema, { vcpus: r.vcpus, memoryMib: BigInt(r.memoryMiB), diskGib: BigInt(r.diskGiB) });
    return node;
  }
}

/** Equal apart from the registration time and the volatile driver attributes (instance counts). */
function sameFingerprint(a: Node, b: Node): boolean {
  const strip = (n: Node) => {
    const c = clone(NodeSchema, n);
    c.registerTime = undefined;
    for (const d of c.drivers) delete d.attributes.instances;
    return c;
  };
  return equals(NodeSchema, strip(a), strip(b));
}
