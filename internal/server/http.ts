/*
 * One TCP port speaks gRPC (HTTP/2), gRPC-Web and Connect (HTTP/1.1 or HTTP/2), in cleartext:
 * the first bytes of a connection decide. The HTTP/2 client preface goes to the h2c server,
 * anything else to the HTTP/1.1 server; both share one request handler.
 *
 *   socket ──peek──► "PRI * HTTP/2.0" ? ──yes──► http2 server ──┐
 *                                      └─no───► http1 server ──┴──► handler(req, res)
 */
import * as http from "node:http";
import * as http2 from "node:http2";
import * as net from "node:net";

import type { connectNodeAdapter } from "@connectrpc/connect-node";

/** A request handler usable by both the HTTP/1.1 and the HTTP/2 server. */
export type Handler = ReturnType<typeof connectNodeAdapter>;

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

export interface Listening {
  host: string;
  port: number;
  close(): Promise<void>;
}

/** WebSocket and other HTTP/1.1 upgrades (consoles). */
export type UpgradeHandler = (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => void;

export async function listen(host: string, port: number, handler: Handler, onUpgrade?: UpgradeHandler): Promise<Listening> {
  const h1 = http.createServer(handler as http.RequestListener);
  h1.on("upgrade", (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
    if (onUpgrade) onUpgrade(req, socket, head);
    else socket.destroy();
  });
  const h2 = http2.createServer({}, handler as (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void);
  // Streaming watches stay open for long: no idle timeouts on our side.
  h1.keepAliveTimeout = 65_000;
  h1.requestTimeout = 0;
  const sockets = new Set<net.Socket>();
  const h2Sessions = new Set<http2.ServerHttp2Session>();
  h2.on("session", (s) => {
    h2Sessions.add(s);
    s.on("close", () => h2Sessions.delete(s));
  });

  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.once("readable", function route() {
      const head: Buffer | null = socket.read(Math.min(PREFACE.length, socket.readableLength)) as Buffer | null;
      if (!head) {
        socket.once("readable", route);
        return;
      }
      socket.unshift(head);
      const isH2 = PREFACE.subarray(0, head.length).equals(head);
      if (isH2 && head.length < PREFACE.length) {
        // Partial preface: wait for the rest before deciding.
        socket.once("readable", route);
        return;
      }
      (isH2 ? h2 : h1).emit("connection", socket);
    });
  });

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
        for (const s of h2Sessions) s.close();
        h1.closeAllConnections();
        for (const s of sockets) s.destroy();
      });
    },
  };
}
