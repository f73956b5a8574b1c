/*
 * One TCP port speaks gRPC (HTTP/2), gRPC-Web and Connect (HTTP/1.1 or HTTP/2), over TLS (the
 * cluster CA's server certificate; a client certificate is asked for, never required) or in
 * cleartext: after the handshake, if any, the first bytes of a connection decide. The HTTP/2 client preface goes to the h2c server,
 * anything else to the HTTP/1.1 server; both share one request handler.
 *
 *   socket ──bytes──► prefix of "PRI * HTTP/2.0…" ? ──whole preface──► http2 server ──┐
 *     │                  │                         └──differs──────► http1 server ──┴──► handler
 *     │                  └─ too few bytes: wait for more (never spin), until headerTimeout
 *     └─ no byte or no decision within headerTimeout ──► destroyed
 *
 * Every connection is bounded in time, whatever the client does (the limits, with nginx's and
 * Envoy's names for the same thing, are in ConnectionLimits and configs/server.yaml):
 *   - detecting the protocol and receiving a request's headers: headerTimeout
 *     (nginx client_header_timeout; Node's headersTimeout);
 *   - receiving a whole HTTP/1.1 request: requestTimeout (Node's requestTimeout);
 *   - a connection with no request in flight: idleTimeout (nginx keepalive_timeout; Envoy's
 *     idle_timeout), for HTTP/1.1 keep-alive and for HTTP/2 sessions with no open stream;
 *   - an HTTP/2 peer that stops answering PINGs: pingTimeout after a ping sent every pingInterval
 *     (gRPC keepalive), so a dead watcher's session is closed;
 *   - at most maxConcurrentStreams streams per HTTP/2 session (nginx http2_max_concurrent_streams).
 * Unary calls have their own deadline in the server's interceptor (requestDeadline).
 */
import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";
import * as tls from "node:tls";

import type { connectNodeAdapter } from "@connectrpc/connect-node";

/** A request handler usable by both the HTTP/1.1 and the HTTP/2 server. */
export type Handler = ReturnType<typeof connectNodeAdapter>;

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/** Per-connection bounds; every one has a default an operator of nginx or Envoy would expect. */
export interface ConnectionLimits {
  /** Protocol detection and each request's headers must arrive within this (default 60 s). */
  headerTimeoutMs: number;
  /** A whole HTTP/1.1 request (headers and body) must arrive within this (default 300 s). */
  requestTimeoutMs: number;
  /** A connection with nothing in flight is closed after this (default 75 s). */
  idleTimeoutMs: number;
  /** HTTP/2: a PING every this often while the session lives (default 60 s)… */
  pingIntervalMs: number;
  /** …and the session is closed if its answer takes longer than this (default 20 s). */
  pingTimeoutMs: number;
  /** HTTP/2 streams open at once per session (default 128). */
  maxConcurrentStreams: number;
}

export const DEFAULT_LIMITS: ConnectionLimits = {
  headerTimeoutMs: 60_000,
  requestTimeoutMs: 300_000,
  idleTimeoutMs: 75_000,
  pingIntervalMs: 60_000,
  pingTimeoutMs: 20_000,
  maxConcurrentStreams: 128,
};

export interface Listening {
  host: string;
  port: number;
  close(): Promise<void>;
}

/**
 * TLS for the listener: the server's key and certificate, and the CA whose certificates a client
 * may present (nodes, servers, users). A client without one is still served: what it may
 * do is the handlers' decision (tlsPeer), not the handshake's.
 */
export interface TlsSettings {
  keyPem: string;
  certPem: string;
  caPem: string;
}

/** WebSocket and other HTTP/1.1 upgrades (consoles). */
export type UpgradeHandler = (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => void;

export async function listen(
  host: string,
  port: number,
  handler: Handler,
  onUpgrade?: UpgradeHandler,
  limits: Partial<ConnectionLimits> = {},
  tlsSettings?: TlsSettings,
): Promise<Listening> {
  const lim = { ...DEFAULT_LIMITS, ...limits };
  const h1 = http.createServer(
    {
      headersTimeout: lim.headerTimeoutMs,
      requestTimeout: lim.requestTimeoutMs,
      // The checks of the two above run on this period; at most a second late.
      connectionsCheckingInterval: Math.min(1000, lim.headerTimeoutMs),
    },
    handler as http.RequestListener,
  );
  h1.keepAliveTimeout = lim.idleTimeoutMs;
  // Node starts its header and request timeout checks when a server listens; this one is handed
  // sockets by the router below and never listens itself, so start them here.
  h1.emit("listening");
  h1.on("upgrade", (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
    if (onUpgrade) onUpgrade(req, socket, head);
    else socket.destroy();
  });
  const h2 = http2.createServer(
    { settings: { maxConcurrentStreams: lim.maxConcurrentStreams } },
    handler as (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void,
  );
  const sockets = new Set<net.Socket>();
  const h2Sessions = new Set<http2.ServerHttp2Session>();
  h2.on("session", (s) => {
    h2Sessions.add(s);
    const stop = boundSession(s, lim);
    s.on("close", () => {
      stop();
      h2Sessions.delete(s);
    });
  });

  const accept = (socket: net.Socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    route(socket, lim.headerTimeoutMs, (isH2) => {
      (isH2 ? h2 : h1).emit("connection", socket);
      // The HTTP/2 session reads the bytes put back itself; the HTTP/1.1 parser takes them as
      // data events, which a paused socket does not emit.
      if (!isH2) socket.resume();
    });
  };
  const server: net.Server = tlsSettings
    ? tls.createServer(
        {
          key: tlsSettings.keyPem,
          cert: tlsSettings.certPem,
          ca: tlsSettings.caPem,
          requestCert: true,
          rejectUnauthorized: false, // anonymous clients (GetCA, Join, the browser) are served too
          ALPNProtocols: ["h2", "http/1.1"],
          minVersion: "TLSv1.2",
          handshakeTimeout: lim.headerTimeoutMs,
        },
        accept,
      )
    : net.createServer(accept);
  // A handshake that fails (a scanner, a client of another CA refusing us) is that client's end.
  server.on("tlsClientError", (_e: Error, socket: tls.TLSSocket) => socket.destroy());

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const addr = server.address() as net.AddressInfo;
  return {
    host,
    port: addr.port,
    async close() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of h2Sessions) s.destroy();
        h1.closeAllConnections();
        for (const s of sockets) s.destroy();
      });
      // Stops the header and request timeout checks started above (the server never listened).
      h1.close(() => undefined);
    },
  };
}

/**
 * Reads a new connection's first bytes until they decide the protocol, then hands the socket,
 * with those bytes put back, to `decided`. Waits for data events (a client that sends "PRI" and
 * stops leaves the event loop free), and destroys a socket undecided after `timeoutMs`.
 */
function route(socket: net.Socket, timeoutMs: number, decided: (isH2: boolean) => void): void {
  let head: Buffer = Buffer.alloc(0);
  const timer = setTimeout(() => socket.destroy(), timeoutMs);
  const done = (): void => {
    clearTimeout(timer);
    socket.off("data", onData);
    socket.off("close", done);
  };
  const onData = (chunk: Buffer): void => {
    head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
    const n = Math.min(head.length, PREFACE.length);
    const isH2 = PREFACE.subarray(0, n).equals(head.subarray(0, n));
    if (isH2 && n < PREFACE.length) return; // a partial preface: wait for the rest
    done();
    socket.pause();
    socket.unshift(head);
    decided(isH2);
  };
  socket.on("data", onData);
  socket.once("close", done);
}

/**
 * Closes an HTTP/2 session that has had no open stream for idleTimeout, or that did not answer a
 * PING within pingTimeout. Returns the function that stops the timers.
 */
function boundSession(s: http2.ServerHttp2Session, lim: ConnectionLimits): () => void {
  let open = 0;
  let idle: NodeJS.Timeout | undefined;
  const armIdle = (): void => {
    clearTimeout(idle);
    idle = setTimeout(() => s.close(), lim.idleTimeoutMs);
  };
  armIdle();
  s.on("stream", (stream: http2.ServerHttp2Stream) => {
    open++;
    clearTimeout(idle);
    stream.once("close", () => {
      if (--open === 0 && !s.closed) armIdle();
    });
  });
  const pinger = setInterval(() => {
    if (s.closed || s.destroyed) return;
    const deadline = setTimeout(() => s.destroy(), lim.pingTimeoutMs);
    const sent = s.ping((err) => {
      clearTimeout(deadline);
      if (err && !s.destroyed) s.destroy();
    });
    if (!sent) clearTimeout(deadline);
  }, lim.pingIntervalMs);
  return () => {
    clearTimeout(idle);
    clearInterval(pinger);
  };
}

/**
 * The verified client certificate of a request's connection, if it presented one that chains to
 * the cluster CA (raw DER); undefined in cleartext, for anonymous clients, and for certificates
 * the CA did not sign.
 */
export function tlsPeer(socket: net.Socket | tls.TLSSocket | undefined): Buffer | undefined {
  if (!(socket instanceof tls.TLSSocket) || !socket.authorized) return undefined;
  const cert = socket.getPeerCertificate();
  return cert && "raw" in cert && cert.raw ? cert.raw : undefined;
}
