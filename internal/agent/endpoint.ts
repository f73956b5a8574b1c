/*
 * The agent's own HTTP endpoint, for what cannot travel through the store: console logs.
 *
 *   server ──GET /v1/instances/<name>/logs?follow=1&tail=N, Authorization: Bearer <token>──► agent
 *          ◄── the log's bytes (chunked), then new bytes as the runtime appends them ──
 *
 * The URL and a random token are published in agents/<node>; only cluster members (who can read
 * the store) can present the token. Names are checked against the DNS-label syntax before any
 * path is built from them.
 */
import { randomBytes, timingSafeEqual } from "node:crypto";
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import type { Logger } from "../../pkg/log/index.js";

const NAME_RE = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
/** How often a followed log is checked for growth. */
const FOLLOW_POLL_MS = 200;

export interface LogSource {
  /** The log file of an instance on this node, or an error message to answer 404/409 with. */
  logFile(name: string): Promise<{ path: string } | { status: 404 | 409; message: string }>;
}

export class AgentEndpoint {
  readonly token = randomBytes(24).toString("base64url");
  private server: Server | undefined;
  private readonly open = new Set<ServerResponse>();

  constructor(
    private readonly source: LogSource,
    private readonly log: Logger,
  ) {}

  /** Listens on host:port (port 0: any free one); resolves with the bound port. */
  async listen(host: string, port: number): Promise<number> {
    const server = createServer((req, res) => void this.handle(req, res));
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => resolve());
    });
    return (server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    for (const res of this.open) res.destroy();
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
