/*
 * The server's one client of AgentService (api/proto/hypervisor/v1/agent.proto): logs, image
 * import and list, orphan purges and console tunnels on a node's agent. The agent's address comes
 * from the store (nodes/<node>/endpoint); one HTTP/2 session per agent address is kept and reused,
 * pinged while streams are open so a dead agent's streams end, and closed when idle.
 *
 *   handler ──node──► agentEndpoint(node): none ──► Unavailable "publishes no endpoint"
 *                          │ url, token
 *                          ▼
 *            session for url (made once) ──gRPC──► agent ──► answer
 *                                                    └─ refusal: ConnectError, code kept,
 *                                                       message "agent of node N: …"
 *
 * Refusals keep their code on the way through (NotFound, FailedPrecondition, InvalidArgument,
 * ResourceExhausted…): the API handler passes them on to its caller as they are.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import {
  AgentService,
  type AgentServiceConsoleRequest,
  AgentServiceConsoleRequestSchema,
  type AgentServiceImportImageRequest,
  AgentServiceImportImageRequestSchema,
} from "../../api/gen/hypervisor/v1/agent_pb.js";
import type { ConsoleKind } from "../../api/gen/hypervisor/v1/console_pb.js";
import type { Image } from "../../api/gen/hypervisor/v1/image_pb.js";
import type { Store } from "../../pkg/cluster/store/index.js";
import type { PeerCertificate } from "node:tls";
import { identityOf } from "../../pkg/pki/index.js";
import { Channel } from "./channel.js";
import { readEndpoint as agentEndpoint, splitRef } from "../../pkg/cluster/state/index.js";

/** TLS towards the agents: the CA their certificates come from, and this server's own certificate. */
export interface AgentClientTls {
  ca?: string | Buffer;
  cert?: string | Buffer;
  key?: string | Buffer;
}

export interface AgentClientOptions {
  tls?: AgentClientTls;
  /** How long a console tunnel may take to open (default 10 s). */
  consoleOpenTimeoutMs?: number;
}

/** A console tunnel through an agent, open. */
export interface AgentConsole {
  /** The console's bytes; ends when the tunnel closes, from either side. */
  read: AsyncIterable<Uint8Array>;
  /** Resolves once the tunnel took the bytes (false: it is closed). */
  write(b: Uint8Array): Promise<boolean>;
  /** Ends the tunnel. Idempotent. */
  close(): void;
}

/** Where a VM's VNC server listens, for a server on the agent's machine. */
export type ConsoleAddress = { path: string } | { host: string; port: number };

/** An image chunk goes to an agent in pieces of at most this (its endpoint takes up to 4 MiB a message). */
const MAX_CHUNK_BYTES = 1024 * 1024;
/** Sessions kept at once; past it the least recently used goes (its agent moved, or is gone). */
const MAX_SESSIONS = 1024;
const PING_INTERVAL_MS = 30_000;
const IDLE_SESSION_MS = 60_000;
const DEFAULT_CONSOLE_OPEN_TIMEOUT_MS = 10_000;
const WINDOW_BYTES = 1024 * 1024;

interface Reached {
  client: Client<typeof AgentService>;
  headers: Record<string, string>;
  url: string;
}

export class AgentClient {
  private readonly sessions = new Map<string, { manager: Http2SessionManager; client: Client<typeof AgentService> }>();

  constructor(
    private readonly store: Store,
    private readonly opts: AgentClientOptions = {},
  ) {}

  /** The URL the agent of `node` publishes, or undefined when it publishes none. */
  async url(node: string, signal?: AbortSignal): Promise<string | undefined> {
    return (await agentEndpoint(this.store, node, signal))?.url;
  }

  /** The log of instance `ref` on `node`: the last `tailBytes` (all when 0), then, following, what is appended. */
  async *logs(node: string, ref: string, follow: boolean, tailBytes: bigint, signal: AbortSignal): AsyncGenerator<Uint8Array> {
    const { project, name } = splitRef(ref);
    const { client, headers } = await this.reach(node, signal);
    try {
      for await (const r of client.streamLogs({ name, project, follow, tailBytes }, { signal, headers })) yield r.data;
    } catch (e) {
      if (signal.aborted) return;
      throw relayed(node, e);
    }
  }

  /**
   * Imports a tarball on `node` with `driver`, sending each piece as `chunks` yields it (the
   * caller's pace is the agent's); resolves with the images the agent's driver now has.
   */
  async importImage(node: string, driver: string, chunks: AsyncIterable<Uint8Array>, signal: AbortSignal): Promise<Image[]> {
    const { client, headers } = await this.reach(node, signal);
    async function* requests(): AsyncGenerator<AgentServiceImportImageRequest> {
      yield create(AgentServiceImportImageRequestSchema, { part: { case: "header", value: { driver } } });
      for await (const c of chunks)
        for (let at = 0; at < c.length; at += MAX_CHUNK_BYTES)
          yield create(AgentServiceImportImageRequestSchema, { part: { case: "chunk", value: c.subarray(at, at + MAX_CHUNK_BYTES) } });
    }
    try {
      return (await client.importImage(requests(), { signal, headers })).images;
    } catch (e) {
      throw signal.aborted ? e : relayed(node, e);
    }
  }

  /** The images of every driver on `node` that keeps images. */
  async listImages(node: string, signal: AbortSignal): Promise<Image[]> {
    const { client, headers } = await this.reach(node, signal);
    try {
      return (await client.listImages({}, { signal, headers })).images;
    } catch (e) {
      throw signal.aborted ? e : relayed(node, e);
    }
  }

  /** Destroys the orphan `ref` (of `uid`) on `node`, and its disks. */
  async purgeOrphan(node: string, ref: string, uid: string, signal: AbortSignal): Promise<void> {
    const { project, name } = splitRef(ref);
    const { client, headers } = await this.reach(node, signal);
    try {
      await client.purgeOrphan({ name, project, uid }, { signal, headers });
    } catch (e) {
      throw signal.aborted ? e : relayed(node, e);
    }
  }

  /** Where the VNC server of instance `ref` on `node` listens. */
  async consoleAddress(node: string, ref: string, signal: AbortSignal): Promise<ConsoleAddress> {
    const { project, name } = splitRef(ref);
    const { client, headers } = await this.reach(node, signal);
    let res;
    try {
      res = await client.consoleAddress({ name, project }, { signal, headers });
    } catch (e) {
      throw signal.aborted ? e : relayed(node, e);
    }
    const a = res.address;
    if (a.case === "socket") return { path: a.value };
    if (a.case === "tcp") return { host: a.value.host, port: a.value.port };
    throw new ConnectError(`agent of node ${node}: no console address in the answer`, Code.Internal);
  }

  /**
   * Opens a console tunnel to instance `ref` on `node`: resolves once the agent holds the console,
   * rejects with its refusal (or DeadlineExceeded if it does not open in time).
   */
  async console(node: string, ref: string, kind: ConsoleKind, signal: AbortSignal): Promise<AgentConsole> {
    const { project, name } = splitRef(ref);
    const { client, headers } = await this.reach(node, signal);
    const stop = new AbortController();
    const out = new Channel<AgentServiceConsoleRequest>();
    const close = () => {
      out.end();
      out.close();
      stop.abort();
    };
    void out.send(create(AgentServiceConsoleRequestSchema, { part: { case: "open", value: { name, project, kind } } }));
    const responses = client.console(out, { signal: AbortSignal.any([signal, stop.signal]), headers })[Symbol.asyncIterator]();
    const openMs = this.opts.consoleOpenTimeoutMs ?? DEFAULT_CONSOLE_OPEN_TIMEOUT_MS;
    let timedOut = false;
    const late = setTimeout(() => {
      timedOut = true;
      stop.abort();
    }, openMs);
    try {
      const first = await responses.next();
      if (first.done || first.value.part.case !== "opened")
        throw new ConnectError(`agent of node ${node}: the console stream ended before it opened`, Code.Unavailable);
    } catch (e) {
      close();
      if (signal.aborted) throw e;
      if (timedOut) throw new ConnectError(`agent of node ${node}: the console did not open within ${openMs} ms`, Code.DeadlineExceeded);
      throw relayed(node, e);
    } finally {
      clearTimeout(late);
    }
    async function* read(): AsyncGenerator<Uint8Array> {
      try {
        for (;;) {
          const r = await responses.next();
          if (r.done) return;
          if (r.value.part.case === "data") yield r.value.part.value;
        }
      } catch {
        // The tunnel broke or was closed: the console just ends.
      } finally {
        close();
      }
    }
    return {
      read: read(),
      write: (b) => out.send(create(AgentServiceConsoleRequestSchema, { part: { case: "data", value: b } })),
      close,
    };
  }

  /** Closes every session (and the calls on them). */
  close(): void {
    for (const { manager } of this.sessions.values()) manager.abort();
    this.sessions.clear();
  }

  private async reach(node: string, signal: AbortSignal): Promise<Reached> {
    const ep = await agentEndpoint(this.store, node, signal);
    if (!ep) throw new ConnectError(`the agent of node ${node} publishes no endpoint (is it running?)`, Code.Unavailable);
    // Keyed by node and URL: a session's TLS checks that the agent's certificate names this node.
    const key = `${node} ${ep.url}`;
    let s = this.sessions.get(key);
    if (s)
      this.sessions.delete(key); // re-inserted below: the map's order is the use order
    else s = this.session(ep.url, node);
    this.sessions.set(key, s);
    for (const [url, old] of this.sessions) {
      if (this.sessions.size <= MAX_SESSIONS) break;
      old.manager.abort();
      this.sessions.delete(url);
    }
    // A joined agent serves mutual TLS and publishes no token; one that has not joined, h2c and a token.
    return { client: s.client, headers: ep.token ? { authorization: `Bearer ${ep.token}` } : {}, url: ep.url };
  }

  private session(url: string, node: string): { manager: Http2SessionManager; client: Client<typeof AgentService> } {
    const tls = this.opts.tls;
    if (url.startsWith("https:") && !tls)
      throw new ConnectError(
        `the agent of node ${node} serves TLS (${url}) and this server has no cluster certificate to call it with`,
        Code.Unavailable,
      );
    const tlsOptions = tls
      ? {
          ...(tls.ca ? { ca: tls.ca } : {}),
          ...(tls.cert ? { cert: tls.cert } : {}),
          ...(tls.key ? { key: tls.key } : {}),
          // The agent's certificate must name the node the server meant to reach: not another
          // node's agent, not a server, whatever address the store says.
          checkServerIdentity: (_host: string, cert: PeerCertificate) => {
            const id = cert.raw ? identityOf(new Uint8Array(cert.raw)) : undefined;
            return id?.kind === "node" && id.name === node
              ? undefined
              : new Error(`the agent at ${url} presents ${id ? `${id.kind}:${id.name}` : "no cluster identity"}, not node:${node}`);
          },
        }
      : {};
    // Node's http2.connect hands these to net.connect / tls.connect. Console keystrokes and screen
    // updates are small messages that must not wait for Nagle.
    // A stream's flow-control window above HTTP/2's 64 KiB default: a screen update of a megabyte
    // crosses without waiting for window updates.
    const nodeOptions = { noDelay: true, settings: { initialWindowSize: WINDOW_BYTES }, ...tlsOptions };
    const manager = new Http2SessionManager(
      url,
      { pingIntervalMs: PING_INTERVAL_MS, idleConnectionTimeoutMs: IDLE_SESSION_MS },
      nodeOptions,
    );
    const transport = createGrpcTransport({ baseUrl: url, sessionManager: manager });
    return { manager, client: createClient(AgentService, transport) };
  }
}

/** An agent's refusal or a failure to reach it, its code kept and the node named. */
function relayed(node: string, e: unknown): ConnectError {
  const err = ConnectError.from(e);
  return new ConnectError(`agent of node ${node}: ${err.rawMessage}`, err.code);
}
