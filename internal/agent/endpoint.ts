/*
 * The agent's own HTTP endpoint, for what cannot travel through the store: console logs and
 * image uploads.
 *
 *   server ──GET /v1/instances/<name>/logs?follow=1&tail=N, Authorization: Bearer <token>──► agent
 *          ◄── the log's bytes (chunked), then new bytes as the runtime appends them ──
 *   server ──POST /v1/images/import?driver=D, body: an OCI image tarball──► agent
 *          ◄── {"images": [...]} once the driver has imported it (400: not an image) ──
 *   server ──GET /v1/images──► agent ◄── {"images": [...]} of every driver with an image store
 *   server ──POST /v1/orphans/<name>/purge?uid=U──► agent ◄── {} once the orphan and its disks
 *          are destroyed (404: no such orphan; 409: the name is assigned here, with that uid) ──
 *   server ──GET /v1/instances/<name>/console?kind=vnc|serial, Upgrade: hypervisor-console──► agent
 *          ◄── 101, then the raw bytes of the VNC server (its unix socket) or the serial pty, both ways ──
 *
 * The URL and a random token are published in agents/<node>; only cluster members (who can read
 * the store) can present the token. Names are checked against the DNS-label syntax before any
 * path is built from them.
 */
import { randomBytes, timingSafeEqual } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, stat, unlink } from "node:fs/promises";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { type AddressInfo, connect, type Socket } from "node:net";
import { closeSync, constants as fs, openSync } from "node:fs";
import { ReadStream as TtyReadStream, WriteStream as TtyWriteStream } from "node:tty";
import { setTimeout as sleep } from "node:timers/promises";
import type { ConsoleEndpoint, ConsoleKind } from "../../pkg/compute/driver/index.js";
import type { Logger } from "../../pkg/log/index.js";

const NAME_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
/** How often a followed log is checked for growth. */
const FOLLOW_POLL_MS = 200;

/** An answer the endpoint turns into an HTTP error: 400 bad input, 404 unknown, 409 not possible here. */
export interface Refusal {
  status: 400 | 404 | 409;
  message: string;
}

/** An image as the endpoint reports it (JSON). */
export interface EndpointImage {
  name: string;
  digest: string;
  sizeBytes: number;
  driver: string;
  createdAt?: number;
}

export interface EndpointSource {
  /** The log file of an instance on this node, or why not. */
  logFile(name: string): Promise<{ path: string } | Refusal>;
  /** Imports the tarball at `file` with the named driver. */
  importImage(driver: string, file: string): Promise<EndpointImage[] | Refusal>;
  listImages(): Promise<EndpointImage[]>;
  /** Where the console of a running instance on this node is, or why not. */
  console(name: string, kind: ConsoleKind): Promise<ConsoleEndpoint | Refusal>;
  /** Destroys the orphan `name` (of uid `uid` when not empty) and its disks. */
  purgeOrphan(name: string, uid: string): Promise<{ purged: true } | Refusal>;
}

/** The Upgrade token of a console tunnel. */
export const CONSOLE_UPGRADE = "hypervisor-console";

/** Uploads larger than this are refused before they fill the disk. */
export const MAX_IMAGE_BYTES = 16 * 1024 ** 3;
const DRIVER_RE = /^[a-z][a-z0-9-]{0,31}$/;

export class AgentEndpoint {
  readonly token = randomBytes(24).toString("base64url");
  private server: Server | undefined;
  private readonly open = new Set<ServerResponse>();
  private readonly tunnels = new Set<Socket>();
  /** The open serial console of each instance: a pty read by two would split the guest's output. */
  private readonly serials = new Map<string, () => void>();

  constructor(
    private readonly source: EndpointSource,
    private readonly log: Logger,
    /** Where uploads are spooled while a driver imports them. */
    private readonly spoolDir: string,
  ) {}

  /** Listens on host:port (port 0: any free one); resolves with the bound port. */
  async listen(host: string, port: number): Promise<number> {
    const server = createServer((req, res) => void this.handle(req, res));
    server.on("upgrade", (req: IncomingMessage, socket: Socket, head: Buffer) => void this.tunnel(req, socket, head));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => resolve());
    });
    return (server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    for (const res of this.open) res.destroy();
    for (const t of this.tunnels) t.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  private authorized(req: IncomingMessage): boolean {
    const got = Buffer.from(req.headers.authorization ?? "");
    const want = Buffer.from(`Bearer ${this.token}`);
    return got.length === want.length && timingSafeEqual(got, want);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const fail = (status: number, message: string) => {
      res.writeHead(status, { "content-type": "text/plain" });
      res.end(message + "\n");
    };
    try {
      if (!this.authorized(req)) return fail(401, "missing or wrong token");
      const url = new URL(req.url ?? "/", "http://agent");
      if (url.pathname === "/v1/images/import" && req.method === "POST") return await this.importImage(url, req, res);
      if (url.pathname === "/v1/images" && req.method === "GET") return json(res, 200, { images: await this.source.listImages() });
      const p = /^\/v1\/orphans\/([^/]+)\/purge$/.exec(url.pathname);
      if (p && req.method === "POST") {
        const name = decodeURIComponent(p[1]!);
        if (!NAME_RE.test(name)) return fail(400, `instance name ${JSON.stringify(name)} is not a DNS label`);
        const r = await this.source.purgeOrphan(name, url.searchParams.get("uid") ?? "");
        return "status" in r ? fail(r.status, r.message) : json(res, 200, {});
      }
      const a = /^\/v1\/instances\/([^/]+)\/console\/address$/.exec(url.pathname);
      if (a && req.method === "GET") return await this.consoleAddress(decodeURIComponent(a[1]!), url, res);
      const m = /^\/v1\/instances\/([^/]+)\/logs$/.exec(url.pathname);
      if (req.method !== "GET" || !m) return fail(404, "not found");
      const name = decodeURIComponent(m[1]!);
      if (!NAME_RE.test(name)) return fail(400, `instance name ${JSON.stringify(name)} is not a DNS label`);
      const tail = Number(url.searchParams.get("tail") ?? "0");
      if (!Number.isSafeInteger(tail) || tail < 0)
        return fail(400, `tail ${JSON.stringify(url.searchParams.get("tail"))} is not a byte count`);
      const follow = url.searchParams.get("follow") === "1";
      const found = await this.source.logFile(name);
      if (!("path" in found)) return fail(found.status, found.message);
      await this.stream(found.path, tail, follow, req, res);
    } catch (e) {
      this.log.warn({ err: e }, "log request failed");
      if (!res.headersSent) fail(500, (e as Error).message);
      else res.destroy();
    }
  }

  /**
   * A console tunnel: after the checks, 101 and then raw bytes both ways between the server's
   * socket and the console (a connection to the VNC server's unix socket, or the serial pty in raw mode).
   * Either side closing closes the other.
   */
  private async tunnel(req: IncomingMessage, socket: Socket, head: Buffer): Promise<void> {
    const refuse = (status: number, message: string) => {
      socket.end(
        `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? "Error"}\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n${message}\n`,
      );
    };
    socket.on("error", () => undefined);
    try {
      if (!this.authorized(req)) return refuse(401, "missing or wrong token");
      const url = new URL(req.url ?? "/", "http://agent");
      const m = /^\/v1\/instances\/([^/]+)\/console$/.exec(url.pathname);
      if (!m || (req.headers.upgrade ?? "").toLowerCase() !== CONSOLE_UPGRADE) return refuse(404, "not found");
      const name = decodeURIComponent(m[1]!);
      if (!NAME_RE.test(name)) return refuse(400, `instance name ${JSON.stringify(name)} is not a DNS label`);
      const kind = url.searchParams.get("kind");
      if (kind !== "vnc" && kind !== "serial") return refuse(400, `kind ${JSON.stringify(kind)} must be vnc or serial`);
      const found = await this.source.console(name, kind);
      if ("status" in found) return refuse(found.status, found.message);
      // The newest serial console wins, as with `virsh console --force`: the previous one closes
      // before this one opens the pty, so every byte the guest writes reaches the current viewer.
      if (found.kind === "serial") this.serials.get(name)?.();
      const peer =
        found.kind === "serial"
          ? openPty(found.path)
          : await dial("socket" in found ? { path: found.socket } : { host: found.host, port: found.port });
      socket.setNoDelay(true);
      socket.write(`HTTP/1.1 101 Switching Protocols\r\nupgrade: ${CONSOLE_UPGRADE}\r\nconnection: Upgrade\r\n\r\n`);
      this.tunnels.add(socket);
      const end = () => {
        this.tunnels.delete(socket);
        if (this.serials.get(name) === end) this.serials.delete(name);
        socket.destroy();
        peer.close();
      };
      if (found.kind === "serial") this.serials.set(name, end);
      socket.once("close", end);
      peer.onClose(end);
      if (head.length) peer.write(head);
      // pipe() pauses the faster side when the other's buffer is full: backpressure both ways.
      socket.pipe(peer.writable, { end: false });
      peer.readable.pipe(socket, { end: false });
    } catch (e) {
      this.log.warn({ err: e }, "console tunnel failed");
      refuse(502, (e as Error).message);
    }
  }

  /**
   * Where a VM's VNC server listens (its unix socket; host and port only for a VM still on TCP),
   * for a server on this machine (it reached this endpoint on a loopback address) to dial it
   * without the tunnel's extra hop. Serial consoles are only tunnelled: the agent keeps one reader
   * per pty.
   */
  private async consoleAddress(name: string, url: URL, res: ServerResponse): Promise<void> {
    if (!NAME_RE.test(name)) return json(res, 400, { error: `instance name ${JSON.stringify(name)} is not a DNS label` });
    const kind = url.searchParams.get("kind");
    if (kind !== "vnc") return json(res, 400, { error: `kind ${JSON.stringify(kind)}: only vnc consoles have an address` });
    const found = await this.source.console(name, kind);
    if ("status" in found) return json(res, found.status, { error: found.message });
    if (found.kind !== "vnc") return json(res, 502, { error: `the driver gave a ${found.kind} console for vnc` });
    json(res, 200, "socket" in found ? { socket: found.socket } : { host: found.host, port: found.port });
  }

  /** Spools the body to a file, hands it to the driver, answers with what it imported. */
  private async importImage(url: URL, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const driver = url.searchParams.get("driver") ?? "";
    if (!DRIVER_RE.test(driver)) return json(res, 400, { error: `driver ${JSON.stringify(driver)} is not a driver name` });
    const declared = Number(req.headers["content-length"] ?? "0");
    if (declared > MAX_IMAGE_BYTES)
      return json(res, 413, { error: `image of ${declared} bytes is over the ${MAX_IMAGE_BYTES}-byte limit` });
    await mkdir(this.spoolDir, { recursive: true, mode: 0o700 });
    const file = join(this.spoolDir, `import-${randomBytes(8).toString("hex")}.tar`);
    try {
      let received = 0;
      req.on("data", (chunk: Buffer) => {
        received += chunk.length;
        if (received > MAX_IMAGE_BYTES) req.destroy(new Error(`image upload over the ${MAX_IMAGE_BYTES}-byte limit`));
      });
      await pipeline(req, createWriteStream(file, { mode: 0o600 }));
      const result = await this.source.importImage(driver, file);
      if ("status" in result) return json(res, result.status, { error: result.message });
      json(res, 200, { images: result });
    } finally {
      await unlink(file).catch(() => undefined);
    }
  }

  /** Sends the last `tail` bytes (all when 0), then, following, whatever is appended. */
  private async stream(path: string, tail: number, follow: boolean, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const size = await stat(path).then(
      (s) => s.size,
      () => 0, // not written yet: a VM that has printed nothing
    );
    let offset = tail > 0 ? Math.max(0, size - tail) : 0;
    res.writeHead(200, { "content-type": "application/octet-stream", "cache-control": "no-store" });
    this.open.add(res);
    const gone = new AbortController();
    req.once("close", () => gone.abort());
    res.once("close", () => gone.abort());
    try {
      offset = await this.copy(path, offset, size, res);
      while (follow && !gone.signal.aborted) {
        await sleep(FOLLOW_POLL_MS, undefined, { signal: gone.signal }).catch(() => undefined);
        if (gone.signal.aborted) break;
        const now = await stat(path).then(
          (s) => s.size,
          () => -1,
        );
        if (now < 0) break; // the instance and its log were deleted
        if (now < offset) offset = 0; // truncated or replaced: start over
        if (now > offset) offset = await this.copy(path, offset, now, res);
      }
    } finally {
      this.open.delete(res);
      if (!res.writableEnded) res.end();
    }
  }

  private async copy(path: string, from: number, to: number, res: ServerResponse): Promise<number> {
    if (to <= from) return from;
    return new Promise<number>((resolve, reject) => {
      const rs = createReadStream(path, { start: from, end: to - 1 });
      rs.on("error", (e: NodeJS.ErrnoException) => (e.code === "ENOENT" ? resolve(from) : reject(e)));
      rs.on("end", () => resolve(to));
      rs.pipe(res, { end: false });
    });
  }
}

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

const STATUS_TEXT: Record<number, string> = {
  400: "Bad Request",
  401: "Unauthorized",
  404: "Not Found",
  409: "Conflict",
  502: "Bad Gateway",
};

/** One end of a console: something to read from and write to, and to close. */
interface Peer {
  readable: NodeJS.ReadableStream;
  writable: NodeJS.WritableStream;
  write(b: Buffer): void;
  onClose(fn: () => void): void;
  close(): void;
}

/** A VNC server: its unix socket, or (a VM still on TCP) its loopback port. */
function dial(to: { path: string } | { host: string; port: number }): Promise<Peer> {
  return new Promise((resolve, reject) => {
    const s = "path" in to ? connect({ path: to.path }) : connect({ port: to.port, host: to.host, noDelay: true });
    s.once("error", reject);
    s.once("connect", () => {
      s.removeListener("error", reject);
      s.on("error", () => undefined);
      resolve({
        readable: s,
        writable: s,
        write: (b) => void s.write(b),
        onClose: (fn) => void s.once("close", fn),
        close: () => s.destroy(),
      });
    });
  });
}

/** The pty in raw mode (no echo, no line editing), read and written through libuv's tty handle. */
function openPty(path: string): Peer {
  // Two descriptors: libuv will not watch one fd with two handles.
  const rfd = openSync(path, fs.O_RDONLY | fs.O_NOCTTY);
  let wfd: number;
  try {
    wfd = openSync(path, fs.O_WRONLY | fs.O_NOCTTY);
  } catch (e) {
    closeSync(rfd);
    throw e;
  }
  const rd = new TtyReadStream(rfd);
  rd.setRawMode(true);
  const wr = new TtyWriteStream(wfd);
  rd.on("error", () => undefined);
  wr.on("error", () => undefined);
  let closed = false;
  const listeners: (() => void)[] = [];
  const close = () => {
    if (closed) return;
    closed = true;
    rd.destroy();
    wr.destroy();
    for (const fn of listeners) fn();
  };
  rd.once("close", close);
  return { readable: rd, writable: wr, write: (b) => void wr.write(b), onClose: (fn) => void listeners.push(fn), close };
}
