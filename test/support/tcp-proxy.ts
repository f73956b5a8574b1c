/*
 * A TCP proxy on loopback whose connections a test can cut, to make a client reconnect (a network
 * blip, a restarted peer) without touching the peer itself. Bytes pass through untouched, TLS
 * included: the client's handshake is with the target.
 *
 *   client ──► 127.0.0.1:<port> ══ pipe ══► target      cut(): destroys every pair open now
 */
import { createConnection, createServer, type Socket } from "node:net";

export interface TcpProxy {
  port: number;
  /** Connections accepted since the start. */
  accepted: number;
  /** Destroys every connection open now (both sides); returns how many it cut. New ones still pass. */
  cut(): number;
  close(): Promise<void>;
}

export async function startTcpProxy(targetHost: string, targetPort: number): Promise<TcpProxy> {
  const pairs = new Set<[Socket, Socket]>();
  const state = { accepted: 0 };
  const server = createServer((client) => {
    state.accepted++;
    const upstream = createConnection({ host: targetHost, port: targetPort });
    const pair: [Socket, Socket] = [client, upstream];
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve, reject) => server.once("error", reject).listen(0, "127.0.0.1", resolve));
  const address = server.address();
  if (!address || typeof address === "string") throw new Error("tcp proxy: no port");
  const cut = () => {
    const n = pairs.size;
    for (const [a, b] of [...pairs]) {
      a.destroy();
      b.destroy();
    }
    pairs.clear();
    return n;
  };
  return {
    port: address.port,
    get accepted() {
      return state.accepted;
    },
    cut,
    async close() {
      cut();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
