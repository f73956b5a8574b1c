/*
 * The libvirt driver: QEMU/KVM virtual machines through libvirtd's own RPC protocol (./rpc), no
 * virsh, no native addon. Domain type kvm where /dev/kvm works, qemu (TCG) elsewhere.
 *
 *   create ─► overlay (qemu-img) + define XML ─► Created (shut off, never started)
 *   start  ─► domain create ─► Running ──stop(timeout)──► ACPI shutdown … destroy at the timeout ─► Stopped
 *                                  │
 *                                  └─ guest powers off / crashes ─► Exited (0) / Exited (1)
 *   destroy ─► destroy + undefine + overlay, log and handle removed
 *
 * One libvirt connection per driver, opened lazily and re-opened after it drops; one lifecycle
 * event subscription on it feeds stop()'s waits and events() without polling.
 */
import { existsSync, constants as fsConstants } from "node:fs";
import { access, mkdir, readdir } from "node:fs/promises";
import { hostname } from "node:os";
import { dirname, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { type Logger, logger } from "../../log/index.js";
import {
  type BalloonDriver,
  type Capabilities,
  type ConsoleDriver,
  type ConsoleEndpoint,
  type ConsoleKind,
  DriverError,
  type DriverEvent,
  type DriverInstance,
  type DriverInstanceSpec,
  type Fingerprint,
  hostAccessError,
  type HostAccessPolicy,
  hostAccessRequest,
  type InstanceStats,
  type LogsDriver,
  InvalidSpecError,
  lookAgain,
  type Signalled,
  StartError,
  type StatsDriver,
  DRIVER_REGISTRY,
} from "../driver/index.js";
import {
  buildDomainXml,
  DOMAIN_PREFIX,
  type DomainFacts,
  domainName,
  type NetworkSetting,
  OWNER_RE,
  parseDomainXml,
  vncOnSocket,
} from "./domain-xml.js";
import { fingerprintLibvirt } from "./fingerprint.js";
import { type LibvirtHandle, HANDLE_VERSION, readHandle, removeHandle, writeHandle } from "./handle.js";
import { checkTraversable, createOverlay, overlayPath, removeFile, resolveImage } from "./images.js";
import {
  type Domain,
  DomainMemoryModFlags,
  DomainShutdownFlags,
  DomainState,
  DomainUndefineFlags,
  DomainXmlFlags,
  isNoDomain,
  isOperationInvalid,
  LibvirtConnection,
  LifecycleEvent,
  ShutoffReason,
  uuidString,
} from "./rpc/index.js";

export interface LibvirtDriverOptions {
  /** Handles, overlays (disks/) and serial logs (logs/). */
  stateDir: string;
  /** Base images, kernels and initrds that specs may name. */
  imageDir: string;
  /**
   * Who manages the domains this driver creates: the node name. Domains of another owner on the
   * same libvirtd (another agent, a test) are not listed, adopted or destroyed. Default: hostname.
   */
  owner?: string;
  socketPath?: string;
  uri?: string;
  network?: NetworkSetting;
  /** Host bridges a VM may join (network bridge:<name>), the default network's included; default none. */
  allowedBridges?: readonly string[];
  /** VMs may use QEMU's user-mode network, which reaches the node's loopback (allow-host-network). */
  allowHostNetwork?: boolean;
  /** kvm, qemu (TCG) or auto (kvm when /dev/kvm can be opened). */
  domainType?: "auto" | "kvm" | "qemu";
  /** Seconds between guest memory statistics (virtio-balloon); default 2. */
  balloonStatsPeriod?: number;
  log?: Logger;
}

/** Keys a spec's driver_config may set for this driver (declared in the registry). */
const CONFIG_KEYS = DRIVER_REGISTRY.libvirt.configKeys.map((k) => k.name);

export const libvirtCapabilities: Capabilities = DRIVER_REGISTRY.libvirt.capabilities;

type Waiter = (ev: { name: string; event: number }) => void;

export class LibvirtDriver implements StatsDriver, ConsoleDriver, BalloonDriver, LogsDriver {
  readonly name = "libvirt";
  readonly capabilities = libvirtCapabilities;
  private readonly socketPath: string;
  private readonly uri: string;
  private readonly log: Logger;
  private conn: Promise<LibvirtConnection> | undefined;
  private closed = false;
  private readonly waiters = new Set<Waiter>();
  private pump: Promise<void> | undefined;
  private readonly pumpStop = new AbortController();
  private resolvedType: "kvm" | "qemu" | undefined;
  private readonly owner: string;
  private cluster = "";

  constructor(private readonly opts: LibvirtDriverOptions) {
    this.owner = opts.owner ?? (hostname().toLowerCase().split(".")[0] || "localhost");
    if (!OWNER_RE.test(this.owner)) throw new DriverError(`libvirt owner ${JSON.stringify(this.owner)} is not a node name (DNS label)`);
    const net = opts.network;
    if (net?.mode === "bridge" && !(opts.allowedBridges ?? []).includes(net.bridge))
      throw new DriverError(`libvirt network bridge:${net.bridge} as the default needs the bridge allowed (allowed-bridges)`);
    this.socketPath = opts.socketPath ?? "/var/run/libvirt/libvirt-sock";
    this.uri = opts.uri ?? "qemu:///system";
    this.log = opts.log ?? logger("libvirt");
  }

  /** What this node lets VMs use of the host. */
  get hostAccess(): HostAccessPolicy {
    return { hostNetwork: this.opts.allowHostNetwork ?? false, bridges: [...(this.opts.allowedBridges ?? [])] };
  }

  setCluster(id: string): void {
    this.cluster = id;
  }

  /** Our metadata says this node, and this cluster or none (a mark made before cluster ids). */
  private mine(facts: DomainFacts): facts is DomainFacts & { instance: NonNullable<DomainFacts["instance"]> } {
    const i = facts.instance;
    return Boolean(i && i.owner === this.owner && !(i.cluster && this.cluster && i.cluster !== this.cluster));
  }

  /** Who manages a domain that is not ours, for messages. */
  private whose(facts: DomainFacts): string {
    const i = facts.instance;
    if (!i) return "something else";
    return i.owner !== this.owner ? i.owner || "another agent" : `node ${i.owner} of cluster ${i.cluster ?? "?"}`;
  }

  private get handles(): string {
    return join(this.opts.stateDir, "instances");
  }

  private logPath(name: string): string {
    if (!NAME_RE.test(name)) throw new InvalidSpecError(`name: ${JSON.stringify(name)} is not a DNS label`);
    return join(this.opts.stateDir, "logs", `${name}.log`);
  }

  /** The serial console log of an instance (what `hypervisor-ctl instance logs` streams). */
  logFile(name: string): string {
    return this.logPath(name);
  }

  // ── connection ────────────────────────────────────────────────────────────────────────────

  private async connection(): Promise<LibvirtConnection> {
    if (this.closed) throw new DriverError("libvirt driver is closed");
    if (!this.conn) {
      const p = LibvirtConnection.open(this.socketPath, this.uri);
      this.conn = p;
      p.then(
        (c) => {
          void c.closed.then((why) => {
            if (this.conn === p) this.conn = undefined;
            if (!this.closed) this.log.warn({ err: why.message }, "libvirt connection lost; reconnecting on next use");
          });
          this.startPump();
        },
        () => {
          if (this.conn === p) this.conn = undefined;
        },
      );
    }
    try {
      return await this.conn;
    } catch (e) {
      throw new DriverError(`libvirtd at ${this.socketPath}: ${(e as Error).message}`);
    }
  }

  /** One lifecycle subscription per driver, re-established after a reconnect. */
  private startPump(): void {
    if (this.pump) return;
    const signal = this.pumpStop.signal;
    this.pump = (async () => {
      while (!signal.aborted && !this.closed) {
        try {
          const c = await this.connection();
          for await (const ev of c.lifecycleEvents({ signal })) {
            if (!ev.domain.name.startsWith(DOMAIN_PREFIX)) continue;
            const name = ev.domain.name.slice(DOMAIN_PREFIX.length);
            for (const w of this.waiters) w({ name, event: ev.event });
          }
        } catch (e) {
          if (signal.aborted || this.closed) return;
          this.log.debug({ err: (e as Error).message }, "lifecycle events interrupted; resubscribing");
          await sleep(500, undefined, { signal }).catch(() => undefined);
        }
      }
    })();
  }

  private async domainType(): Promise<"kvm" | "qemu"> {
    if (this.resolvedType) return this.resolvedType;
    const want = this.opts.domainType ?? "auto";
    if (want !== "auto") return (this.resolvedType = want);
    const kvm =
      existsSync("/dev/kvm") &&
      (await access("/dev/kvm", fsConstants.R_OK | fsConstants.W_OK).then(
        () => true,
        () => false,
      ));
    return (this.resolvedType = kvm ? "kvm" : "qemu");
  }

  private async lookup(name: string): Promise<Domain | undefined> {
    const c = await this.connection();
    try {
      return await c.lookupByName(domainName(name));
    } catch (e) {
      if (isNoDomain(e)) return undefined;
      throw e;
    }
  }

  // ── contract ──────────────────────────────────────────────────────────────────────────────

  async fingerprint(): Promise<Fingerprint> {
    try {
      return await fingerprintLibvirt(await this.connection(), await this.domainType());
    } catch (e) {
      return { healthy: false, version: "", message: (e as Error).message, attributes: {} };
    }
  }

  async create(spec: DriverInstanceSpec, opts: Signalled = {}): Promise<DriverInstance> {
    opts.signal?.throwIfAborted();
    // Checked before the name reaches libvirt or a path.
    if (!NAME_RE.test(spec.name)) throw new InvalidSpecError(`name: ${JSON.stringify(spec.name)} is not a DNS label`);
    const foreign = await this.foreignOwner(spec.name);
    if (foreign !== undefined)
      throw new DriverError(
        `domain ${domainName(spec.name)} exists and is managed by ${foreign || "something else"}, not by ${this.owner}`,
      );
    const existing = await this.inspect(spec.name);
    if (existing) {
      if (existing.uid !== spec.uid)
        throw new DriverError(`domain ${domainName(spec.name)} exists with another instance (uid ${existing.uid})`);
      return existing;
    }
    for (const k of Object.keys(spec.config))
      if (!(CONFIG_KEYS as readonly string[]).includes(k))
        throw new InvalidSpecError(`driver_config: unknown key ${JSON.stringify(k)} for libvirt (known: ${CONFIG_KEYS.join(", ")})`);
    if (spec.command.length || spec.args.length || Object.keys(spec.env).length)
      throw new InvalidSpecError("command, args and env are for containers; a libvirt VM boots a kernel or a disk image");
    const network =
      spec.config.network !== undefined
        ? parseNetwork("driver_config.network", spec.config.network)
        : (this.opts.network ?? { mode: "none" });
    // The scheduler places such an instance only where it is allowed; this is the node's own word.
    const refused = hostAccessError(hostAccessRequest(spec.config), this.hostAccess, this.owner);
    if (refused) throw new InvalidSpecError(refused);

    const dir = this.opts.imageDir;
    const kernel = spec.kernel ? await resolveImage(dir, "kernel", spec.kernel) : undefined;
    const initrd = spec.initrd ? await resolveImage(dir, "initrd", spec.initrd) : undefined;
    const base = spec.image ? await resolveImage(dir, "image", spec.image) : undefined;
    if (!kernel && !base) throw new InvalidSpecError("image or kernel: a libvirt VM boots a disk image or a kernel, and neither is set");
    if (!kernel && (spec.initrd || spec.cmdline)) throw new InvalidSpecError("initrd and cmdline need a kernel");

    await mkdir(join(this.opts.stateDir, "logs"), { recursive: true, mode: 0o755 });
    const serialLog = this.logPath(spec.name);
    const disk = base ? overlayPath(this.opts.stateDir, spec.name, spec.uid) : undefined;
    // Validate the whole definition before touching disks: a refused spec leaves nothing behind.
    const params = {
      name: spec.name,
      uid: spec.uid,
      owner: this.owner,
      cluster: this.cluster,
      labels: spec.labels,
      type: await this.domainType(),
      vcpus: spec.vcpus,
      memoryMiB: spec.memoryMiB,
      kernel,
      initrd,
      cmdline: spec.cmdline || undefined,
      disk,
      serialLog,
      network,
      balloonStatsPeriod: this.opts.balloonStatsPeriod ?? 2,
    };
    const xml = buildDomainXml(params);
    const handle: LibvirtHandle = {
      version: HANDLE_VERSION,
      name: spec.name,
      uid: spec.uid,
      createdAt: Date.now(),
      stopRequested: false,
      serialLog,
      disk,
    };
    await writeHandle(this.handles, handle);
    try {
      if (base && disk) {
        await checkTraversable(this.opts.stateDir);
        await checkTraversable(dirname(base));
        await createOverlay(base, disk, spec.diskGiB);
      }
      const c = await this.connection();
      await c.defineXml(xml);
    } catch (e) {
      await removeFile(disk).catch(() => undefined);
      await removeHandle(this.handles, spec.name).catch(() => undefined);
      throw e;
    }
    this.log.info({ instance: spec.name, type: params.type, disk: disk ?? "", kernel: kernel ?? "" }, "domain defined");
    return (await this.inspect(spec.name))!;
  }

  async start(name: string, opts: Signalled = {}): Promise<DriverInstance> {
    opts.signal?.throwIfAborted();
    const dom = await this.mustLookup(name);
    const c = await this.connection();
    const { state } = await c.getState(dom);
    if (state === DomainState.RUNNING || state === DomainState.BLOCKED || state === DomainState.PAUSED) return (await this.inspect(name))!;
    const h = await this.handle(name);
    await this.moveVncOffTcp(c, dom);
    try {
      await c.domainCreate(dom);
    } catch (e) {
      throw new StartError(`start domain ${dom.name}: ${(e as Error).message}`);
    }
    await writeHandle(this.handles, { ...h, startedAt: Date.now(), finishedAt: undefined, stopRequested: false });
    return (await this.inspect(name))!;
  }

  /**
   * ACPI shutdown, repeated, then destroy at the timeout. An abort (the caller's deadline, or the
   * desired state changed) ends the wait with the signal's reason and leaves the guest as it is:
   * it is not destroyed early, the caller decides what comes next.
   */
  async stop(name: string, timeoutMs: number, opts: Signalled = {}): Promise<DriverInstance> {
    const { signal } = opts;
    signal?.throwIfAborted();
    const dom = await this.lookup(name);
    if (!dom) throw new DriverError(`no domain ${domainName(name)}`);
    const c = await this.connection();
    if (!isActive((await c.getState(dom, { signal })).state)) return (await this.inspect(name))!;
    const h = await this.handle(name);
    await writeHandle(this.handles, { ...h, stopRequested: true });

    // Subscribe before asking, so a quick guest cannot power off between the two.
    let off: (() => void) | undefined;
    const stopped = new Promise<void>((resolve) => {
      const w: Waiter = (ev) => {
        if (ev.name === name && ev.event === LifecycleEvent.STOPPED) resolve();
      };
      this.waiters.add(w);
      off = () => this.waiters.delete(w);
    });
    try {
      // A guest still booting has no power-button handler yet and drops the press, so it is
      // repeated until the guest acts on it or the timeout is reached.
      const deadline = Date.now() + Math.max(0, timeoutMs);
      let nextPress = 0;
      while (Date.now() < deadline && !signal?.aborted && isActive((await c.getState(dom, { signal })).state)) {
        if (Date.now() >= nextPress) {
          try {
            await c.shutdown(dom, SHUTDOWN_ACPI, { signal });
          } catch (e) {
            if (!isOperationInvalid(e)) throw e; // not running any more: fine
          }
          nextPress = Date.now() + ACPI_REPEAT_MS;
        }
        // Events wake us; the re-check covers an event lost to a reconnect.
        const wait = Math.max(0, Math.min(1000, deadline - Date.now()));
        await Promise.race([stopped, sleep(wait, undefined, signal ? { signal } : {}).catch(() => undefined)]);
      }
      signal?.throwIfAborted();
      if (isActive((await c.getState(dom, { signal })).state)) {
        this.log.info({ instance: name, timeoutMs }, "guest ignored ACPI shutdown; destroying");
        try {
          await c.destroy(dom, 0);
        } catch (e) {
          if (!isOperationInvalid(e)) throw e;
        }
      }
    } finally {
      off?.();
    }
    await writeHandle(this.handles, { ...(await this.handle(name)), stopRequested: true, finishedAt: Date.now() });
    return (await this.inspect(name))!;
  }

  async destroy(name: string, opts: Signalled & { force?: boolean } = {}): Promise<void> {
    opts.signal?.throwIfAborted();
    const dom = await this.lookup(name);
    const h = await readHandle(this.handles, name);
    let disk = h?.disk;
    if (dom) {
      const c = await this.connection();
      const facts = parseDomainXml(await c.getXmlDesc(dom, XML_INACTIVE));
      if (!facts.instance) throw new DriverError(`domain ${dom.name} is not managed by hypervisor; not destroying it`);
      if (!this.mine(facts))
        throw new DriverError(`domain ${dom.name} is managed by ${this.whose(facts)}, not by ${this.owner}; not destroying it`);
      disk ??= facts.disk;
      if (isActive((await c.getState(dom)).state)) {
        try {
          await c.destroy(dom, 0);
        } catch (e) {
          if (!isOperationInvalid(e)) throw e;
        }
      }
      try {
        await c.undefine(dom, UNDEFINE_FLAGS);
      } catch (e) {
        if (!isNoDomain(e)) throw e;
      }
    }
    await removeFile(disk);
    await removeFile(h?.serialLog ?? this.logPath(name));
    await removeHandle(this.handles, name);
  }

  async inspect(name: string, opts: Signalled = {}): Promise<DriverInstance | undefined> {
    opts.signal?.throwIfAborted();
    const dom = await this.lookup(name);
    if (!dom) return undefined;
    const c = await this.connection();
    const [{ state, reason }, xml] = await Promise.all([c.getState(dom), c.getXmlDesc(dom, 0)]);
    const facts = parseDomainXml(xml);
    // A domain named like ours but not ours, or another agent's or cluster's on the same libvirtd.
    if (!this.mine(facts)) return undefined;
    let h = await readHandle(this.handles, name);
    const inst: DriverInstance = {
      name,
      uid: facts.instance.uid,
      state: "created",
      addresses: [],
      details: { domain: dom.name, domain_uuid: uuidString(dom.uuid) },
      localDisk: facts.disk !== undefined,
    };
    if (facts.instance.cluster) inst.cluster = facts.instance.cluster;
    if (facts.memoryKiB) inst.details.memory_max_mib = String(Math.round(facts.memoryKiB / 1024));
    if (facts.currentMemoryKiB) inst.details.memory_target_mib = String(Math.round(facts.currentMemoryKiB / 1024));
    if (h?.startedAt !== undefined) inst.startedAt = h.startedAt;
    if (isActive(state)) {
      inst.state = "running";
      if (state === DomainState.PAUSED) inst.message = "paused";
      if (facts.vncSocket) inst.details.vnc_socket = facts.vncSocket;
      else if (facts.vncPort !== undefined && facts.vncPort > 0) {
        // Defined by an older agent with VNC on TCP; its next start moves it to a socket.
        inst.details.vnc_port = String(facts.vncPort);
        inst.details.vnc_host = "127.0.0.1";
      }
      // Started outside our start() (e.g. by hand): record it, so the next look agrees.
      if (h && h.startedAt === undefined) {
        h = { ...h, startedAt: Date.now() };
        await writeHandle(this.handles, h);
        inst.startedAt = h.startedAt;
      }
      return inst;
    }
    if (!h || h.startedAt === undefined) return inst; // defined, never started: created
    if (h.finishedAt === undefined) {
      h = { ...h, finishedAt: Date.now() };
      await writeHandle(this.handles, h);
    }
    inst.finishedAt = h.finishedAt;
    if (h.stopRequested) {
      inst.state = "stopped";
    } else if (state === DomainState.CRASHED || (state === DomainState.SHUTOFF && reason === ShutoffReason.CRASHED)) {
      inst.state = "exited";
      inst.exitCode = 1;
      inst.message = "guest crashed";
    } else if (state === DomainState.SHUTOFF && reason === ShutoffReason.FAILED) {
      inst.state = "failed";
      inst.message = "domain failed to start";
    } else if (state === DomainState.SHUTOFF && reason === ShutoffReason.DESTROYED) {
      inst.state = "exited";
      inst.exitCode = 137;
      inst.message = "domain destroyed outside hypervisor";
    } else {
      inst.state = "exited";
      inst.exitCode = 0;
      inst.message = "guest powered off";
    }
    return inst;
  }

  async list(opts: Signalled = {}): Promise<DriverInstance[]> {
    opts.signal?.throwIfAborted();
    const c = await this.connection();
    const out: DriverInstance[] = [];
    for (const d of await c.listAllDomains(0)) {
      if (!d.name.startsWith(DOMAIN_PREFIX)) continue;
      const i = await this.inspect(d.name.slice(DOMAIN_PREFIX.length)).catch((e: unknown) => {
        if (isNoDomain(e)) return undefined; // undefined between list and inspect
        throw e;
      });
      if (i) out.push(i);
    }
    return out.sort((a, b) => (a.name < b.name ? -1 : 1));
  }

  async *events(opts: Required<Signalled>): AsyncIterable<DriverEvent> {
    await this.connection(); // starts the subscription
    yield* lookAgain(
      (onName) => {
        const w: Waiter = (ev) => {
          if (ev.event !== LifecycleEvent.UNDEFINED && ev.event !== LifecycleEvent.DEFINED) onName(ev.name);
        };
        this.waiters.add(w);
        return () => this.waiters.delete(w);
      },
      (name) => this.inspect(name),
      opts.signal,
    );
  }

  async stats(name: string): Promise<InstanceStats> {
    const dom = await this.mustLookup(name);
    const c = await this.connection();
    const [info, mem] = await Promise.all([c.getInfo(dom), c.memoryStats(dom)]);
    const balloon = mem.actual_balloon ?? info.memoryKiB;
    const used = mem.available !== undefined && mem.unused !== undefined ? mem.available - mem.unused : (mem.rss ?? 0n);
    return { cpuTimeNs: Number(info.cpuTimeNs), memoryUsedBytes: Number(used) * 1024, memoryLimitBytes: Number(balloon) * 1024 };
  }

  /** The guest's balloon statistics as libvirt reports them (KiB). */
  async memoryStats(name: string): Promise<Record<string, bigint>> {
    const dom = await this.mustLookup(name);
    return (await this.connection()).memoryStats(dom);
  }

  async console(name: string, kind: ConsoleKind): Promise<ConsoleEndpoint> {
    const dom = await this.mustLookup(name);
    const c = await this.connection();
    if (!isActive((await c.getState(dom)).state)) throw new DriverError(`instance ${name} is not running; its console needs it running`);
    const facts = parseDomainXml(await c.getXmlDesc(dom, 0));
    if (kind === "serial") {
      // Only a path libvirt itself allocated under /dev/pts is ever opened.
      if (!facts.serialPty || !/^\/dev\/pts\/\d+$/.test(facts.serialPty)) throw new DriverError(`instance ${name} has no serial pty`);
      return { kind: "serial", path: facts.serialPty };
    }
    if (facts.vncSocket) return { kind: "vnc", socket: facts.vncSocket };
    if (!facts.vncPort || facts.vncPort <= 0) throw new DriverError(`instance ${name} has no VNC display`);
    // A VM an older agent defined with VNC on 127.0.0.1, running since: reached as it is until its next start.
    return { kind: "vnc", host: "127.0.0.1", port: facts.vncPort };
  }

  async setMemory(name: string, memoryMiB: number): Promise<void> {
    const dom = await this.mustLookup(name);
    const c = await this.connection();
    const facts = parseDomainXml(await c.getXmlDesc(dom, 0));
    const maxMiB = Math.floor((facts.memoryKiB ?? 0) / 1024);
    if (!Number.isInteger(memoryMiB) || memoryMiB < 16 || memoryMiB > maxMiB)
      throw new InvalidSpecError(`memory_mib: ${memoryMiB} must be an integer from 16 to the instance's ${maxMiB} MiB`);
    const active = isActive((await c.getState(dom)).state);
    // Live: the balloon target now; config: what the next boot starts with.
    await c.setMemory(dom, BigInt(memoryMiB) * 1024n, active ? MEM_LIVE | MEM_CONFIG : MEM_CONFIG);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.pumpStop.abort();
    await this.pump?.catch(() => undefined);
    const c = await this.conn?.catch(() => undefined);
    this.conn = undefined;
    await c?.close().catch(() => undefined);
  }

  // ── helpers ───────────────────────────────────────────────────────────────────────────────

  private async mustLookup(name: string): Promise<Domain> {
    const dom = await this.lookup(name);
    if (!dom) throw new DriverError(`no domain ${domainName(name)}`);
    return dom;
  }

  /** The handle, rebuilt from the domain when the file is gone (state dir wiped, old agent). */
  private async handle(name: string): Promise<LibvirtHandle> {
    const h = await readHandle(this.handles, name);
    if (h) return h;
    const dom = await this.mustLookup(name);
    const facts = parseDomainXml(await (await this.connection()).getXmlDesc(dom, XML_INACTIVE));
    if (!this.mine(facts)) throw new DriverError(`domain ${dom.name} is not managed by this agent (${this.owner})`);
    return {
      version: HANDLE_VERSION,
      name,
      uid: facts.instance.uid,
      createdAt: Date.now(),
      stopRequested: false,
      disk: facts.disk,
      serialLog: facts.serialLog ?? this.logPath(name),
    };
  }

  /**
   * A domain defined by an agent from before VNC moved to a unix socket has a VNC server on a
   * 127.0.0.1 TCP port in its definition: rewritten (while shut off, before it starts) so that
   * nothing of it listens on TCP from this start on.
   */
  private async moveVncOffTcp(c: LibvirtConnection, dom: Domain): Promise<void> {
    const xml = await c.getXmlDesc(dom, XML_INACTIVE);
    if (!parseDomainXml(xml).vncOnTcp) return;
    const moved = vncOnSocket(xml);
    if (parseDomainXml(moved).vncOnTcp) throw new DriverError(`domain ${dom.name}: cannot move its VNC server off TCP`);
    await c.defineXml(moved);
    this.log.info({ domain: dom.name }, "VNC moved from a TCP port to a unix socket");
  }

  /** The owner of a domain with this instance's name that is not ours ("" if not hypervisor's); undefined if none. */
  private async foreignOwner(name: string): Promise<string | undefined> {
    const dom = await this.lookup(name);
    if (!dom) return undefined;
    const facts = parseDomainXml(await (await this.connection()).getXmlDesc(dom, XML_INACTIVE));
    if (this.mine(facts)) return undefined;
    return facts.instance ? this.whose(facts) : "";
  }

  /** Names of instances with a handle on disk (state that outlived its domain is cleaned by destroy). */
  async handleNames(): Promise<string[]> {
    const files = await readdir(this.handles).catch(() => [] as string[]);
    return files.filter((f) => f.endsWith(".json")).map((f) => f.slice(0, -5));
  }
}

const NAME_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
/** A Linux interface name (IFNAMSIZ 16 with its NUL), as domain-xml.ts checks it again. */
const BRIDGE_NAME_RE = /^[A-Za-z0-9_.-]{1,15}$/;
const SHUTDOWN_ACPI = DomainShutdownFlags.ACPI_POWER_BTN;
/** How often stop() presses the power button again while the guest is still up. */
const ACPI_REPEAT_MS = 3000;
const XML_INACTIVE = DomainXmlFlags.INACTIVE;
const MEM_LIVE = DomainMemoryModFlags.LIVE;
const MEM_CONFIG = DomainMemoryModFlags.CONFIG;
/** Managed save, snapshot metadata and NVRAM go with the domain. */
const UNDEFINE_FLAGS = DomainUndefineFlags.MANAGED_SAVE | DomainUndefineFlags.SNAPSHOTS_METADATA | DomainUndefineFlags.NVRAM;

function isActive(state: number): boolean {
  return (
    state === DomainState.RUNNING ||
    state === DomainState.BLOCKED ||
    state === DomainState.PAUSED ||
    state === DomainState.SHUTDOWN ||
    state === DomainState.PMSUSPENDED
  );
}

/** "user", "none" or "bridge:<name>" (an interface name, checked before anything compares it to allowed-bridges). */
export function parseNetwork(field: string, v: string): NetworkSetting {
  if (v === "user" || v === "none") return { mode: v };
  const m = /^bridge:(.+)$/.exec(v);
  if (m && !BRIDGE_NAME_RE.test(m[1]!)) throw new InvalidSpecError(`${field}: bridge ${JSON.stringify(m[1])} is not an interface name`);
  if (m) return { mode: "bridge", bridge: m[1]! };
  throw new InvalidSpecError(`${field}: ${JSON.stringify(v)} must be user, none or bridge:<name>`);
}

export function createLibvirtDriver(opts: LibvirtDriverOptions): LibvirtDriver {
  return new LibvirtDriver(opts);
}
