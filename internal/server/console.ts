/*
 * Consoles in the browser: a ticket from ConsoleService, then a WebSocket on /console/<ticket>
 * that the server splices onto a tunnel to the agent of the instance's node.
 *
 *   CreateConsoleTicket ──► Running? driver has consoles? ──► consoletickets/<sha256> under a lease
 *   browser ──GET /console/<ticket>, Upgrade: websocket──► server
 *            ticket taken in one txn (delete if present) · unexpired · instance still the same
 *            (anything else: 403 before any connection towards the instance)
 *        server ══AgentService.Console: open{name, kind}══► agent ──► VNC server (the VM's unix
 *        socket) or serial pty; ◄══ opened (a refusal instead: an HTTP error, no WebSocket)
 *   browser ◄══ binary WebSocket frames ══► server ◄══ Console data messages ══► agent ◄══► console
 *   A node whose agent is on this machine (loopback endpoint), VNC: the agent names the VM's socket
 *   (AgentService.ConsoleAddress) and the server dials it (the tunnel if it cannot):
 *   browser ◄══ binary WebSocket frames ══► server ◄══ raw bytes ══► VNC server
 *
 * Backpressure: each direction waits while its sink is full (see splice). Either end closing
 * closes the other.
 */
import { createHash, randomBytes } from "node:crypto";
import type { IncomingMessage } from "node:http";
import { createConnection, type Socket } from "node:net";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { WebSocketServer, type WebSocket } from "ws";
import { ConsoleKind, type ConsoleService } from "../../api/gen/hypervisor/v1/console_pb.js";
import { Phase } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { ConsoleTicketRecordSchema, type ConsoleTicketRecord } from "../../api/gen/hypervisor/v1/store_pb.js";
import { ifModRevision } from "../../pkg/cluster/store/index.js";
import { codecs, keys, merged, phaseName, placedOn } from "../../pkg/cluster/state/index.js";
import { isLoopback } from "./config.js";
import type { ServerContext } from "./context.js";
import type { ConsoleAddress } from "./agent-client.js";
import { requestRef, show, showRef } from "./validate.js";

export const CONSOLE_PATH = "/console/";
/** 32 random bytes, base64url. */
const TICKET_RE = /^[A-Za-z0-9_-]{43}$/;
export const DEFAULT_TICKET_TTL_MS = 30_000;
/** How long finding and opening the way to a console may take before the browser gets an error. */
const OPEN_TIMEOUT_MS = 10_000;
/** Bytes queued towards the browser above which reading from the agent pauses, and below which it resumes. */
const SPLICE_HIGH_WATER = 1 << 20;
const SPLICE_LOW_WATER = 256 << 10;

const hash = (ticket: string) => createHash("sha256").update(ticket).digest("hex");
const kindName = (k: ConsoleKind) => (k === ConsoleKind.VNC ? "vnc" : "serial");

export function consoleService(ctx: ServerContext, ttlMs = DEFAULT_TICKET_TTL_MS): ServiceImpl<typeof ConsoleService> {
  const { store, informers } = ctx;
  return {
    async createConsoleTicket(req, hctx) {
      const ref = requestRef(req);
      if (req.kind !== ConsoleKind.VNC && req.kind !== ConsoleKind.SERIAL)
        throw new ConnectError(
          `kind: ${show(ConsoleKind[req.kind] ?? req.kind)} must be CONSOLE_KIND_VNC or CONSOLE_KIND_SERIAL`,
          Code.InvalidArgument,
        );
      // Each ticket costs an etcd lease: a client gets a burst, then a steady rate.
      ctx.clientLimits.takeTicket(hctx);
      const kv = await store.get(keys.instance(ref), { signal: hctx.signal });
      if (!kv) throw new ConnectError(`instance ${showRef(ref)} not found`, Code.NotFound);
      const spec = codecs.instance.decode(kv.value);
      const at = placedOn(spec);
      const st = at ? await store.get(keys.status(at, ref), { signal: hctx.signal }) : undefined;
      const inst = merged(spec, st ? codecs.instance.decode(st.value) : undefined);
      const phase = inst.status?.phase ?? Phase.UNSPECIFIED;
      if (phase !== Phase.RUNNING)
        throw new ConnectError(`instance ${showRef(ref)} is ${phaseName(phase)}; a console needs it Running`, Code.FailedPrecondition);
      const node = inst.status?.node ?? "";
      const driver = informers.nodes.get(keys.node(node))?.value.drivers.find((d) => d.name === inst.spec?.driver);
      if (!driver?.capabilities?.console)
        throw new ConnectError(`driver ${inst.spec?.driver ?? ""} on node ${node} has no console`, Code.FailedPrecondition);
      const ticket = randomBytes(32).toString("base64url");
      const expires = Date.now() + ttlMs;
      const record = create(ConsoleTicketRecordSchema, {
        // The ref ("<project>/<name>"): what the agent and the informers know it by.
        instance: ref,
        uid: inst.uid,
        kind: req.kind,
        node,
        expireUnixMs: BigInt(expires),
      });
      // The lease only cleans up tickets nobody used; validity is the expiry in the record.
      const lease = await store.grantLease(Math.ceil(ttlMs / 1000) + 1, { signal: hctx.signal });
      await store.put(keys.consoleTicket(hash(ticket)), toBinary(ConsoleTicketRecordSchema, record), { lease, signal: hctx.signal });
      ctx.log.info({ instance: ref, kind: kindName(req.kind), node }, "console ticket issued");
      return { ticket, path: `${CONSOLE_PATH}${ticket}`, expireTime: timestampFromMs(expires), kind: req.kind };
    },
  };
}

/** The console's end of a splice: the agent's tunnel, or the VNC server itself. */
interface Peer {
  via: "agent" | "direct";
  /** The console's bytes; ends when it closes. */
  read: AsyncIterable<Uint8Array>;
  /** Takes bytes for the console; a promise when the caller should wait before sending more. */
  write(b: Uint8Array): Promise<unknown> | undefined;
  close(): void;
}

export class ConsoleProxy {
  private readonly wss = new WebSocketServer({
    noServer: true,
    perMessageDeflate: false,
    // noVNC asks for "binary"; plain clients ask for nothing.
    handleProtocols: (protocols) => (protocols.has("binary") ? "binary" : false),
  });
  private readonly open = new Set<{ close(): void }>();
  /** Ends the tunnels being opened when the proxy closes. */
  private readonly closing = new AbortController();

  constructor(
    private readonly ctx: ServerContext,
    /** Dial a VNC server on this machine directly rather than through its agent's tunnel (see connect). */
    private readonly localDirect = true,
  ) {}

  /** For the HTTP/1.1 server's 'upgrade' event. Answers 404 for paths that are not consoles. */
  handleUpgrade(req: IncomingMessage, socket: Socket, head: Buffer): void {
    socket.on("error", () => undefined);
    void this.upgrade(req, socket, head).catch((e: unknown) => {
      this.ctx.log.warn({ err: e }, "console upgrade failed");
      refuse(socket, 502, (e as Error).message);
    });
  }

  /** Closes every open console. */
  close(): void {
    this.closing.abort();
    for (const c of this.open) c.close();
    this.wss.close();
  }

  private async upgrade(req: IncomingMessage, socket: Socket, head: Buffer): Promise<void> {
    const path = new URL(req.url ?? "/", "http://server").pathname;
    if (!path.startsWith(CONSOLE_PATH)) return refuse(socket, 404, "not found");
    if ((req.headers.upgrade ?? "").toLowerCase() !== "websocket") return refuse(socket, 400, "a console is a WebSocket");
    const ticket = path.slice(CONSOLE_PATH.length);
    const record = TICKET_RE.test(ticket) ? await this.take(ticket) : undefined;
    if (!record) return refuse(socket, 403, "console ticket unknown, already used or expired");
    if (Number(record.expireUnixMs) < Date.now()) return refuse(socket, 403, "console ticket unknown, already used or expired");
    // The instance may have been replaced (deleted and created again) since the ticket was issued.
    const inst = this.ctx.informers.instances.get(keys.instance(record.instance))?.value;
    if (!inst || inst.uid !== record.uid) return refuse(socket, 410, `instance ${record.instance} is gone`);

    const peer = await this.connect(record);
    if ("status" in peer) return refuse(socket, peer.status, peer.message);
    // A browser gone before the WebSocket is up leaves no tunnel open behind it.
    socket.once("close", () => peer.close());
    this.wss.handleUpgrade(req, socket, head, (ws) => this.splice(ws, peer, record));
  }

  /**
   * A way to the instance's console. The agent of its node owns it: a tunnel through it in general;
   * but when the agent is on this machine (its endpoint is a loopback address, so the two share a
   * host) and the console is VNC, the agent names the VM's unix socket and the server dials it, one
   * hop fewer for every frame.
   */
  private async connect(record: ConsoleTicketRecord): Promise<Peer | { status: number; message: string }> {
    const signal = AbortSignal.timeout(OPEN_TIMEOUT_MS);
    try {
      const url = await this.ctx.agents.url(record.node, signal);
      if (!url) return { status: 503, message: `the agent of node ${record.node} publishes no endpoint` };
      if (this.localDirect && record.kind === ConsoleKind.VNC && isLoopback(new URL(url).hostname)) {
        const to = await this.ctx.agents.consoleAddress(record.node, record.instance, signal);
        // The VM's VNC unix socket; a loopback port only for a VM an older agent defined. Anything
        // else is not this machine's to dial, and a socket this process may not open (another
        // user's server), neither: the agent tunnels those.
        const direct =
          "path" in to
            ? to.path.startsWith("/")
              ? await this.dial(record, to)
              : undefined
            : isLoopback(to.host)
              ? await this.dial(record, to)
              : undefined;
        if (direct) return direct;
      }
      const tunnel = await this.ctx.agents.console(record.node, record.instance, record.kind, this.closing.signal);
      return { via: "agent", read: tunnel.read, write: (b) => tunnel.write(b), close: () => tunnel.close() };
    } catch (e) {
      const err = ConnectError.from(e);
      // The instance is not (or no longer) there to open: a conflict with what the ticket named.
      const gone = err.code === Code.NotFound || err.code === Code.FailedPrecondition;
      return { status: gone ? 409 : 502, message: err.rawMessage };
    }
  }

  /** A connection to the VNC server itself, or undefined when it cannot be made (the tunnel can). */
  private dial(record: ConsoleTicketRecord, to: ConsoleAddress): Promise<Peer | undefined> {
    return new Promise((resolve) => {
      const s = "path" in to ? createConnection({ path: to.path }) : createConnection({ host: to.host, port: to.port, noDelay: true });
      s.once("connect", () => {
        s.setNoDelay(true);
        s.on("error", () => undefined);
        resolve({
          via: "direct",
          read: s,
          write: (b) => (s.write(b) ? undefined : new Promise<void>((r) => s.once("drain", r).once("close", r))),
          close: () => s.destroy(),
        });
      });
      s.once("error", (e) => {
        this.ctx.log.debug({ instance: record.instance, err: e.message }, "VNC server not reachable directly; through the agent");
        resolve(undefined);
      });
    });
  }

  /** Deletes the ticket's record if it is there; only the caller that deleted it gets it. */
  private async take(ticket: string): Promise<ConsoleTicketRecord | undefined> {
    const key = keys.consoleTicket(hash(ticket));
    const kv = await this.ctx.store.get(key);
    if (!kv) return undefined;
    const res = await this.ctx.store.txn([ifModRevision(key, kv.modRevision)], [{ type: "delete", key }], []);
    return res.succeeded ? fromBinary(ConsoleTicketRecordSchema, kv.value) : undefined;
  }

  /**
   * Frames both ways without a stream layer in between: each chunk read from the peer (the agent's
   * tunnel or the VNC server) is one binary message; each message is written to the peer as it
   * comes. Backpressure by hand: reading the peer waits while more than SPLICE_HIGH_WATER bytes
   * wait to reach the browser, and the WebSocket pauses while the peer has not taken its writes.
   */
  private splice(ws: WebSocket, peer: Peer, record: ConsoleTicketRecord): void {
    const entry = {
      close: () => {
        ws.terminate();
        peer.close();
      },
    };
    this.open.add(entry);
    const end = () => {
      if (!this.open.delete(entry)) return;
      entry.close();
    };
    let queued = 0;
    let drained: (() => void) | undefined;
    const sent = (n: number) => (err?: Error) => {
      queued -= n;
      if (err) end();
      if (queued <= SPLICE_LOW_WATER || err) {
        drained?.();
        drained = undefined;
      }
    };
    void (async () => {
      for await (const b of peer.read) {
        if (!this.open.has(entry)) break;
        queued += b.length;
        ws.send(b, { binary: true }, sent(b.length));
        if (queued > SPLICE_HIGH_WATER) await new Promise<void>((r) => (drained = r));
      }
    })()
      .catch(() => undefined)
      .finally(end);
    let writing = 0;
    ws.on("message", (data: Buffer | ArrayBuffer | Buffer[]) => {
      const b = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
      const wait = peer.write(b);
      if (!wait) return;
      if (writing++ === 0) ws.pause();
      void wait.finally(() => {
        if (--writing === 0 && this.open.has(entry)) ws.resume();
      });
    });
    ws.on("error", end);
    ws.once("close", () => {
      drained?.();
      end();
    });
    this.ctx.log.info({ instance: record.instance, kind: kindName(record.kind), via: peer.via }, "console opened");
  }
}

function refuse(socket: Socket, status: number, message: string): void {
  const text: Record<number, string> = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    410: "Gone",
    502: "Bad Gateway",
    503: "Service Unavailable",
  };
  if (socket.writable)
    socket.end(
      `HTTP/1.1 ${status} ${text[status] ?? "Error"}\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: ${Buffer.byteLength(message) + 1}\r\n\r\n${message}\n`,
    );
  else socket.destroy();
}
