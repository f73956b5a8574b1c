/*
 * The agent's endpoint: where AgentService (agent-service.ts) is served to the server, over gRPC
 * on HTTP/2. A joined node serves mutual TLS with its node certificate: only a client whose
 * certificate of the cluster CA names a server is served (serversOnly), and no token exists. A
 * node that has not joined (the --dev agent, tests) serves h2c with a random bearer token.
 *
 *   server ──TLS (client cert: server:<name>, else the handshake's socket is destroyed)──►
 *            h2 session (no activity for idleTimeout: closed; at most maxConcurrentStreams)
 *            ──/hypervisor.v1.AgentService/<Method>──► handler
 *   h2c:     ──authorization: Bearer <token>──► interceptor ──token matches──► handler │ otherwise
 *            Unauthenticated, before any handler runs
 *
 * The URL (and for h2c the token) is published in nodes/<node>/endpoint.
 */
import { randomBytes, timingSafeEqual } from "node:crypto";
import * as http2 from "node:http2";
import type { AddressInfo, Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import { identityOf } from "../../pkg/pki/index.js";
import { Code, ConnectError, type Interceptor, type ServiceImpl } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { AgentService } from "../../api/gen/hypervisor/v1/agent_pb.js";
import type { Logger } from "../../pkg/log/index.js";

/** TLS for the endpoint; with requestCert, a client without a certificate from `ca` is refused. */
export interface EndpointTls {
  key: string | Buffer;
  cert: string | Buffer;
  ca?: string | Buffer;
  requestCert?: boolean;
  /**
   * With requestCert: serve only clients whose certificate names a server of the cluster (a
   * node's certificate, though of the same CA, is refused). No bearer token is then asked.
   */
  serversOnly?: boolean;
}

export interface EndpointOptions {
  tls?: EndpointTls;
  /** A session with no frame for this long is closed (default 120 s; the server's client pings every 30 s). */
  idleTimeoutMs?: number;
  /** HTTP/2 streams open at once per session (default 128). */
  maxConcurrentStreams?: number;
}

/** The largest message taken: an image chunk (the server sends at most 1 MiB) with room to spare. */
export const ENDPOINT_READ_MAX_BYTES = 4 * 1024 * 1024;
const DEFAULT_IDLE_TIMEOUT_MS = 120_000;
const WINDOW_BYTES = 1024 * 1024;
const SESSION_WINDOW_BYTES = 8 * 1024 * 1024;

export class AgentEndpoint {
  /** The bearer token callers present; empty when mutual TLS says who calls (serversOnly). */
  readonly token: string;
  private server: http2.Http2Server | http2.Http2SecureServer | undefined;
  private readonly sessions = new Set<http2.Http2Session>();
  /** Ends every handler's signal: open logs and consoles close with the endpoint. */
  private readonly shutdown = new AbortController();

  private secure: http2.Http2SecureServer | undefined;

  constructor(
    private readonly service: ServiceImpl<typeof AgentService>,
    private readonly log: Logger,
    private readonly opts: EndpointOptions = {},
  ) {
    this.token = opts.tls?.serversOnly ? "" : randomBytes(24).toString("base64url");
  }

  /** "https" with TLS, else "http": the scheme of the URL the agent publishes. */
  get scheme(): "http" | "https" {
    return this.opts.tls ? "https" : "http";
  }

  /** Listens on host:port (port 0: any free one); resolves with the bound port. */
  async listen(host: string, port: number): Promise<number> {
    const handler = connectNodeAdapter({
      routes: (router) => router.service(AgentService, this.service),
      interceptors: this.token ? [bearer(this.token)] : [],
      // The server speaks gRPC to its agents; nothing else is offered.
      connect: false,
      grpcWeb: false,
      readMaxBytes: ENDPOINT_READ_MAX_BYTES,
      shutdownSignal: this.shutdown.signal,
    });
    // Windows above HTTP/2's 64 KiB default, so an image chunk or a screen update crosses without
    // waiting for window updates.
    const settings = { maxConcurrentStreams: this.opts.maxConcurrentStreams ?? 128, initialWindowSize: WINDOW_BYTES };
    const tls = this.opts.tls;
    const server = tls
      ? http2.createSecureServer(
          {
            key: tls.key,
            cert: tls.cert,
            ...(tls.ca ? { ca: tls.ca } : {}),
            requestCert: tls.requestCert ?? false,
            rejectUnauthorized: tls.requestCert ?? false,
            minVersion: "TLSv1.3",
            settings,
          },
          handler,
        )
      : http2.createServer({ settings }, handler);
    // Node closes a session that saw no frame for this long (a client that connected and went quiet).
    server.setTimeout(this.opts.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS);
    // Console keystrokes and screen updates are small messages that must not wait for Nagle.
    server.on("connection", (socket: Socket) => socket.setNoDelay(true));
    server.on("secureConnection", (socket: TLSSocket) => {
      socket.setNoDelay(true);
      if (!tls?.serversOnly) return;
      const raw = socket.getPeerCertificate().raw as Buffer | undefined;
      const id = raw ? identityOf(new Uint8Array(raw)) : undefined;
      if (id?.kind !== "server") {
        this.log.warn(
          { peer: socket.remoteAddress, identity: id ? `${id.kind}:${id.name}` : "none" },
          "agent endpoint refused a client that is not a server",
        );
        socket.destroy();
      }
    });
    server.on("session", (s: http2.Http2Session) => {
      this.sessions.add(s);
      s.setLocalWindowSize(SESSION_WINDOW_BYTES);
      s.once("close", () => this.sessions.delete(s));
    });
    server.on("sessionError", (e: Error) => this.log.debug({ err: e.message }, "agent endpoint session error"));
    server.on("tlsClientError", (e: Error, socket: Socket) => {
      this.log.warn({ err: e.message, peer: socket.remoteAddress }, "agent endpoint refused a TLS client");
    });
    this.server = server;
    this.secure = tls ? (server as http2.Http2SecureServer) : undefined;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => {
        server.off("error", reject);
        resolve();
      });
    });
    return (server.address() as AddressInfo).port;
  }

  /** Serves a renewed key and certificate to new connections (open ones keep theirs). */
  reloadTls(key: string | Buffer, cert: string | Buffer): void {
    const tls = this.opts.tls;
    if (!tls || !this.secure) return;
    this.secure.setSecureContext({ key, cert, ...(tls.ca ? { ca: tls.ca } : {}) });
  }

  async close(): Promise<void> {
    this.shutdown.abort(new ConnectError("the agent is stopping", Code.Unavailable));
    const server = this.server;
    if (!server) return;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      for (const s of this.sessions) s.destroy();
    });
  }
}

/** Refuses a call whose bearer token is not `token` (compared in constant time). */
function bearer(token: string): Interceptor {
  const want = Buffer.from(`Bearer ${token}`);
  return (next) => async (req) => {
    const got = Buffer.from(req.header.get("authorization") ?? "");
    if (got.length !== want.length || !timingSafeEqual(got, want)) throw new ConnectError("missing or wrong token", Code.Unauthenticated);
    return next(req);
  };
}
