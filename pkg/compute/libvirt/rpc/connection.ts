/*
 * Typed libvirt procedures over one RpcClient: each method encodes the procedure's *_args with
 * XdrWriter, makes the call, and decodes *_ret with XdrReader, checking the whole reply was read
 * (a reply longer than its struct means our layout is wrong, and silently ignoring it would hide
 * that). Opening follows what the C client does on a local socket:
 *
 *   connect ──► AUTH_LIST ──► (AUTH_POLKIT, only if listed) ──► CONNECT_OPEN(uri) ──► calls…
 *   close(): CONNECT_CLOSE ──► socket closed
 */
import type { Signalled } from "../../driver/index.js";
import type { Logger } from "../../../log/index.js";
import { RpcClient } from "./client.js";
import { readDomain, writeDomain, UUID_LENGTH, type Domain } from "./domain.js";
import { AuthType, DomainEventId, MemoryStatTag } from "./enums.js";
import { AuthUnsupportedError, ConnectionClosedError } from "./errors.js";
import { Procedure } from "./procedures.js";
import { XdrReader, XdrWriter } from "./xdr.js";

export const DEFAULT_SOCKET = "/var/run/libvirt/libvirt-sock";
export const DEFAULT_URI = "qemu:///system";

/** remote_protocol.x list limits. */
const AUTH_TYPE_LIST_MAX = 20;
const DOMAIN_LIST_MAX = 16384;
const MEMORY_STATS_MAX = 1024;
/** More than the 13 tags libvirt 9 knows, so a newer daemon's extra stats are not cut off. */
const MEMORY_STATS_ASKED = 32;
const NODE_MODEL_CHARS = 32;

export interface OpenOptions extends Signalled {
  log?: Logger;
  /** CONNECT_OPEN flags (ConnectFlags), e.g. RO on a *-sock-ro socket. */
  flags?: number;
}

export interface NodeInfo {
  /** CPU model, e.g. "x86_64". */
  model: string;
  memoryKiB: bigint;
  /** Active CPUs. */
  cpus: number;
  mhz: number;
  nodes: number;
  sockets: number;
  cores: number;
  threads: number;
}

export interface DomainStateInfo {
  /** DomainState */
  state: number;
  /** RunningReason, PausedReason, ShutoffReason, ... depending on state. */
  reason: number;
}

export interface DomainInfo {
  /** DomainState */
  state: number;
  maxMemKiB: bigint;
  memoryKiB: bigint;
  nrVirtCpu: number;
  cpuTimeNs: bigint;
}

export interface DomainLifecycleEvent {
  domain: Domain;
  /** LifecycleEvent */
  event: number;
  /** DefinedDetail, StartedDetail, StoppedDetail, ... depending on event. */
  detail: number;
}

/**
 * Events as an async iterable that is registered with the daemon as soon as it is created, so
 * nothing is missed between the call and the first next(). `ready` resolves once the daemon has
 * registered the callback: await it before causing the events you want to see.
 */
export interface LifecycleEventStream extends AsyncIterable<DomainLifecycleEvent> {
  readonly ready: Promise<void>;
}

const tagNames = new Map<number, string>(Object.entries(MemoryStatTag).map(([k, v]) => [v, k.toLowerCase()]));

/** A writer that starts with the remote_nonnull_domain most domain procedures take first. */
function domainArgs(dom: Domain): XdrWriter {
  const w = new XdrWriter();
  writeDomain(w, dom);
  return w;
}
const str = (r: XdrReader) => r.string();

export class LibvirtConnection {
  private constructor(
    /** The transport, for procedures this class does not wrap. */
    readonly rpc: RpcClient,
    readonly uri: string,
  ) {}

  /** Connects, authenticates (none or polkit) and opens `uri` on the daemon. */
  static async open(socketPath = DEFAULT_SOCKET, uri = DEFAULT_URI, opts: OpenOptions = {}): Promise<LibvirtConnection> {
    const rpc = await RpcClient.connect(socketPath, opts);
    const { signal } = opts;
    try {
      // The daemon expects AUTH_LIST before CONNECT_OPEN and refuses the open until auth is done.
      const types = new XdrReader(await rpc.call(Procedure.AUTH_LIST, undefined, { signal }));
      const auth = types.array((r) => r.i32(), AUTH_TYPE_LIST_MAX);
      types.end();
      if (auth.includes(AuthType.POLKIT)) await rpc.call(Procedure.AUTH_POLKIT, undefined, { signal });
      else if (!auth.includes(AuthType.NONE) && auth.length > 0) throw new AuthUnsupportedError(socketPath, auth);
      const args = new XdrWriter()
        .optional(uri, (w, s) => void w.string(s))
        .u32(opts.flags ?? 0)
        .finish();
      await rpc.call(Procedure.CONNECT_OPEN, args, { signal });
      return new LibvirtConnection(rpc, uri);
    } catch (e) {
      await rpc.close();
      throw e;
    }
  }

  /** Resolves with the reason once the connection is over (closed, dropped, or failed). */
  get closed(): Promise<Error> {
    return this.rpc.closed;
  }

  /** CONNECT_CLOSE, then the socket. Safe to call twice or after the connection dropped. */
  async close(): Promise<void> {
    if (!this.rpc.isClosed) {
      try {
        await this.rpc.call(Procedure.CONNECT_CLOSE, undefined);
      } catch (e) {
        // Closing a connection that is already gone is done, not a failure.
        if (!(e instanceof ConnectionClosedError)) throw e;
      }
    }
    await this.rpc.close();
  }

  private async call<T>(proc: number, args: XdrWriter | undefined, read: (r: XdrReader) => T, opts: Signalled): Promise<T> {
    const reply = await this.rpc.call(proc, args?.finish(), { signal: opts.signal });
    const r = new XdrReader(reply);
    const v = read(r);
    r.end();
    return v;
  }

  private void(proc: number, args: XdrWriter | undefined, opts: Signalled): Promise<void> {
    return this.call(proc, args, () => undefined, opts);
  }

  // ── host ────────────────────────────────────────────────────────────────────────────────────

  /** Hypervisor version, major·1,000,000 + minor·1,000 + micro (QEMU 7.2.0 → 7002000). */
  getVersion(opts: Signalled = {}): Promise<number> {
    return this.call(Procedure.CONNECT_GET_VERSION, undefined, (r) => Number(r.u64()), opts);
  }

  /** libvirt's own version, same encoding as getVersion. */
  getLibVersion(opts: Signalled = {}): Promise<number> {
    return this.call(Procedure.CONNECT_GET_LIB_VERSION, undefined, (r) => Number(r.u64()), opts);
  }

  getHostname(opts: Signalled = {}): Promise<string> {
    return this.call(Procedure.CONNECT_GET_HOSTNAME, undefined, str, opts);
  }

  /** The driver name, e.g. "QEMU". */
  getType(opts: Signalled = {}): Promise<string> {
    return this.call(Procedure.CONNECT_GET_TYPE, undefined, str, opts);
  }

  /** The canonical URI the daemon opened, e.g. "qemu:///system". */
  getUri(opts: Signalled = {}): Promise<string> {
    return this.call(Procedure.CONNECT_GET_URI, undefined, str, opts);
  }

  /** Capabilities XML (host CPU, guest architectures and machine types). */
  getCapabilities(opts: Signalled = {}): Promise<string> {
    return this.call(Procedure.CONNECT_GET_CAPABILITIES, undefined, str, opts);
  }

  /** DrvFeature; asking for PROGRAM_KEEPALIVE also turns the daemon's keepalive PINGs on. */
  supportsFeature(feature: number, opts: Signalled = {}): Promise<boolean> {
    return this.call(Procedure.CONNECT_SUPPORTS_FEATURE, new XdrWriter().i32(feature), (r) => r.i32() !== 0, opts);
  }

  nodeGetInfo(opts: Signalled = {}): Promise<NodeInfo> {
    return this.call(
      Procedure.NODE_GET_INFO,
      undefined,
      (r) => {
        // char model[32]: each char widened to a 4-byte int on the wire (128 bytes), NUL-padded.
        const chars = r.fixedArray(NODE_MODEL_CHARS, (x) => x.i32() & 0xff);
        const nul = chars.indexOf(0);
        const model = Buffer.from(nul < 0 ? chars : chars.slice(0, nul)).toString("utf8");
        return {
          model,
          memoryKiB: r.u64(),
          cpus: r.i32(),
          mhz: r.i32(),
          nodes: r.i32(),
          sockets: r.i32(),
          cores: r.i32(),
          threads: r.i32(),
        };
      },
      opts,
    );
  }

  /** Free host memory in bytes (not KiB). */
  nodeGetFreeMemory(opts: Signalled = {}): Promise<bigint> {
    return this.call(Procedure.NODE_GET_FREE_MEMORY, undefined, (r) => r.u64(), opts);
  }

  // ── domains: lookup and definition ──────────────────────────────────────────────────────────

  /** ListAllDomainsFlags; 0 lists all, active and inactive. */
  listAllDomains(flags = 0, opts: Signalled = {}): Promise<Domain[]> {
    return this.call(
      Procedure.CONNECT_LIST_ALL_DOMAINS,
      new XdrWriter().i32(1).u32(flags),
      (r) => {
        const doms = r.array(readDomain, DOMAIN_LIST_MAX);
        r.u32(); // ret: the count again
        return doms;
      },
      opts,
    );
  }

  /** Rejects with LibvirtError NO_DOMAIN (isNoDomain) when there is no such domain. */
  lookupByName(name: string, opts: Signalled = {}): Promise<Domain> {
    return this.call(Procedure.DOMAIN_LOOKUP_BY_NAME, new XdrWriter().string(name), readDomain, opts);
  }

  /** `uuid` is the 16 raw bytes (parseUuid turns the text form into them). */
  lookupByUuid(uuid: Buffer, opts: Signalled = {}): Promise<Domain> {
    return this.call(Procedure.DOMAIN_LOOKUP_BY_UUID, new XdrWriter().fixedOpaque(uuid, UUID_LENGTH), readDomain, opts);
  }

  /** Defines (or redefines) a persistent domain. DomainDefineFlags.VALIDATE checks the XML against the schema. */
  defineXml(xml: string, flags = 0, opts: Signalled = {}): Promise<Domain> {
    return this.call(Procedure.DOMAIN_DEFINE_XML_FLAGS, new XdrWriter().string(xml).u32(flags), readDomain, opts);
  }

  /** Creates and starts a transient domain. */
  createXml(xml: string, flags = 0, opts: Signalled = {}): Promise<Domain> {
    return this.call(Procedure.DOMAIN_CREATE_XML, new XdrWriter().string(xml).u32(flags), readDomain, opts);
  }

  /** Removes the persistent definition (a running domain becomes transient). DomainUndefineFlags. */
  undefine(dom: Domain, flags = 0, opts: Signalled = {}): Promise<void> {
    return this.void(Procedure.DOMAIN_UNDEFINE_FLAGS, domainArgs(dom).u32(flags), opts);
  }

  /** DomainXmlFlags; INACTIVE gives the persistent definition rather than the live one. */
  getXmlDesc(dom: Domain, flags = 0, opts: Signalled = {}): Promise<string> {
    return this.call(Procedure.DOMAIN_GET_XML_DESC, domainArgs(dom).u32(flags), str, opts);
  }

  // ── domains: lifecycle ──────────────────────────────────────────────────────────────────────

  /** Starts a defined domain; resolves with the domain and its new id. DomainCreateFlags. */
  domainCreate(dom: Domain, flags = 0, opts: Signalled = {}): Promise<Domain> {
    return this.call(Procedure.DOMAIN_CREATE_WITH_FLAGS, domainArgs(dom).u32(flags), readDomain, opts);
  }

  /** Asks the guest to shut down (ACPI by default) and returns at once; the guest may ignore it. */
  shutdown(dom: Domain, flags = 0, opts: Signalled = {}): Promise<void> {
    return this.void(Procedure.DOMAIN_SHUTDOWN_FLAGS, domainArgs(dom).u32(flags), opts);
  }

  /** Pulls the plug. DomainDestroyFlags.GRACEFUL gives QEMU a SIGTERM only. */
  destroy(dom: Domain, flags = 0, opts: Signalled = {}): Promise<void> {
    return this.void(Procedure.DOMAIN_DESTROY_FLAGS, domainArgs(dom).u32(flags), opts);
  }

  /** DomainRebootFlags. */
  reboot(dom: Domain, flags = 0, opts: Signalled = {}): Promise<void> {
    return this.void(Procedure.DOMAIN_REBOOT, domainArgs(dom).u32(flags), opts);
  }

  suspend(dom: Domain, opts: Signalled = {}): Promise<void> {
    return this.void(Procedure.DOMAIN_SUSPEND, domainArgs(dom), opts);
  }

  resume(dom: Domain, opts: Signalled = {}): Promise<void> {
    return this.void(Procedure.DOMAIN_RESUME, domainArgs(dom), opts);
  }

  getState(dom: Domain, opts: Signalled = {}): Promise<DomainStateInfo> {
    return this.call(Procedure.DOMAIN_GET_STATE, domainArgs(dom).u32(0), (r) => ({ state: r.i32(), reason: r.i32() }), opts);
  }

  getInfo(dom: Domain, opts: Signalled = {}): Promise<DomainInfo> {
    return this.call(
      Procedure.DOMAIN_GET_INFO,
      domainArgs(dom),
      (r) => ({
        // unsigned char state and unsigned short nrVirtCpu are each a full 4-byte word.
        state: r.u32(),
        maxMemKiB: r.u64(),
        memoryKiB: r.u64(),
        nrVirtCpu: r.u32(),
        cpuTimeNs: r.u64(),
      }),
      opts,
    );
  }

  // ── domains: memory ─────────────────────────────────────────────────────────────────────────

  /** Sets the balloon target (or, with MAXIMUM, the maximum) in KiB. DomainMemoryModFlags. */
  setMemory(dom: Domain, kib: bigint, flags = 0, opts: Signalled = {}): Promise<void> {
    return this.void(Procedure.DOMAIN_SET_MEMORY_FLAGS, domainArgs(dom).u64(kib).u32(flags), opts);
  }

  /** How often (seconds, 0 = off) the balloon driver refreshes guest memory stats. DomainMemoryModFlags. */
  setMemoryStatsPeriod(dom: Domain, seconds: number, flags = 0, opts: Signalled = {}): Promise<void> {
    return this.void(Procedure.DOMAIN_SET_MEMORY_STATS_PERIOD, domainArgs(dom).i32(seconds).u32(flags), opts);
  }

  /**
   * Memory statistics keyed by lower-case tag name (actual_balloon, rss, unused, available,
   * usable, last_update, ...), KiB except the fault counters and last_update. A tag this client
   * does not know is kept as tag_<n>.
   */
  memoryStats(dom: Domain, opts: Signalled = {}): Promise<Record<string, bigint>> {
    return this.call(
      Procedure.DOMAIN_MEMORY_STATS,
      domainArgs(dom).u32(MEMORY_STATS_ASKED).u32(0),
      (r) => {
        const stats: Record<string, bigint> = {};
        for (const { tag, val } of r.array((x) => ({ tag: x.i32(), val: x.u64() }), MEMORY_STATS_MAX))
          stats[tagNames.get(tag) ?? `tag_${tag}`] = val;
        return stats;
      },
      opts,
    );
  }

  // ── events ──────────────────────────────────────────────────────────────────────────────────

  /**
   * Lifecycle events of every domain until the signal aborts (the iteration then ends normally)
   * or the connection drops (it then throws ConnectionClosedError after the events already
   * received). The daemon-side callback is removed when iteration stops for any reason.
   */
  lifecycleEvents(opts: Required<Signalled>): LifecycleEventStream {
    const { signal } = opts;
    const queue: DomainLifecycleEvent[] = [];
    // Events that arrive before the register reply tells us our callbackID.
    const early: { id: number; ev: DomainLifecycleEvent }[] = [];
    let callbackId: number | undefined;
    let done = false;
    let failure: Error | undefined;
    let wake: (() => void) | undefined;

    // Subscribe before registering: the first events may come right behind the reply.
    const unsubscribe = this.rpc.onMessage(Procedure.DOMAIN_EVENT_CALLBACK_LIFECYCLE, (payload) => {
      const r = new XdrReader(payload);
      const id = r.i32();
      const ev: DomainLifecycleEvent = { domain: readDomain(r), event: r.i32(), detail: r.i32() };
      if (callbackId === undefined) early.push({ id, ev });
      else if (id === callbackId) push(ev);
    });
    const push = (ev: DomainLifecycleEvent) => {
      queue.push(ev);
      wake?.();
    };
    const deregister = (id: number) => {
      if (this.rpc.isClosed) return;
      this.rpc.call(Procedure.CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY, new XdrWriter().i32(id).finish()).catch(() => {
        // Best effort: a connection that is going away drops the callback with it.
      });
    };
    const finish = (err?: Error) => {
      if (done) return;
      done = true;
      failure = err;
      unsubscribe();
      offClose();
      signal.removeEventListener("abort", onAbort);
      if (callbackId !== undefined) deregister(callbackId);
      wake?.();
    };
    const onAbort = () => finish();
    const offClose = this.rpc.onClose((e) => finish(e));
    signal.addEventListener("abort", onAbort, { once: true });
    if (signal.aborted) finish();

    // Not tied to the signal: an abort mid-registration must still learn the id to deregister it.
    const ready = (async () => {
      if (done) return;
      const args = new XdrWriter().i32(DomainEventId.LIFECYCLE).optional<Domain>(undefined, writeDomain).finish();
      const r = new XdrReader(await this.rpc.call(Procedure.CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY, args));
      const id = r.i32();
      r.end();
      if (done) return deregister(id);
      callbackId = id;
      for (const e of early.splice(0)) if (e.id === id) push(e.ev);
    })();
    ready.catch((e: unknown) => finish(e instanceof Error ? e : new Error(String(e))));

    return {
      ready,
      [Symbol.asyncIterator]: () => ({
        next: async (): Promise<IteratorResult<DomainLifecycleEvent>> => {
          for (;;) {
            const ev = queue.shift();
            if (ev) return { value: ev, done: false };
            if (done) {
              const err = failure;
              failure = undefined;
              if (err) throw err;
              return { value: undefined, done: true };
            }
            await new Promise<void>((resolve) => (wake = resolve));
            wake = undefined;
          }
        },
        return: async (): Promise<IteratorResult<DomainLifecycleEvent>> => {
          finish();
          queue.length = 0;
          return { value: undefined, done: true };
        },
      }),
    };
  }
}
