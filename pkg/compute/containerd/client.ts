/*
 * A typed client for containerd's gRPC API (target 1.6) over its unix socket.
 *
 *   ContainerdClient ── createClient(Service) ──▶ gRPC transport (connect-node)
 *     │  interceptor: containerd-namespace: <ns>      (every call)
 *     │               containerd-lease: <id>          (views from withLease / withTemporaryLease)
 *     ▼
 *   Http2SessionManager ── h2c, prior knowledge ──▶ net.connect(<socket>)   (one HTTP/2 session,
 *                                                    shared by every view, reopened on demand)
 *
 * containerd serves cleartext HTTP/2 on the socket, so the transport's URL (http://localhost) only
 * supplies :scheme and :authority; createConnection hands http2 the unix socket instead of TCP.
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { createHash, randomBytes } from "node:crypto";
import { connect } from "node:net";
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { Containers } from "./gen/containerd/services/containers/v1/containers_pb.js";
import {
  Content,
  WriteAction,
  type WriteContentRequestSchema,
  type WriteContentResponse,
} from "./gen/containerd/services/content/v1/content_pb.js";
import { Diff } from "./gen/containerd/services/diff/v1/diff_pb.js";
import { Events } from "./gen/containerd/services/events/v1/events_pb.js";
import { Images } from "./gen/containerd/services/images/v1/images_pb.js";
import { Leases } from "./gen/containerd/services/leases/v1/leases_pb.js";
import { Namespaces } from "./gen/containerd/services/namespaces/v1/namespace_pb.js";
import { Snapshots } from "./gen/containerd/services/snapshots/v1/snapshots_pb.js";
import { Tasks } from "./gen/containerd/services/tasks/v1/tasks_pb.js";
import { Version } from "./gen/containerd/services/version/v1/version_pb.js";

export const NAMESPACE_HEADER = "containerd-namespace";
export const LEASE_HEADER = "containerd-lease";
/** Lease label containerd's GC reads: the lease is collected after this RFC 3339 time. */
export const LEASE_EXPIRE_LABEL = "containerd.io/gc.expire";
export const DEFAULT_SOCKET = "/run/containerd/containerd.sock";

/** Well under containerd's 16 MiB message limit. */
const WRITE_CHUNK = 1 << 20;

export interface ContainerdClientOptions {
  /** The gRPC socket (not the .ttrpc one). */
  socketPath?: string;
  /** Sent as containerd-namespace on every call. */
  namespace: string;
}

export interface WriteContentOptions {
  /** The digest the blob must have ("sha256:<hex>"); containerd refuses the commit otherwise. */
  expected: string;
  /** Labels set on the committed blob (e.g. containerd.io/gc.ref.*). */
  labels?: Record<string, string>;
}

export interface WrittenContent {
  digest: string;
  size: bigint;
  /** False when the blob was already in the store (containerd answers ALREADY_EXISTS). */
  created: boolean;
}

/** What a view shares with the client it was derived from. */
interface ViewOf {
  session: Http2SessionManager;
  lease: string | undefined;
}

type WriteRequest = MessageInitShape<typeof WriteContentRequestSchema>;

/** A blob too large to hold in memory: its size, and a reader of byte ranges (e.g. from a tarball). */
export interface ContentSource {
  size: number;
  read(from: number, length: number): Promise<Uint8Array>;
}

export class ContainerdClient {
  readonly namespaces: Client<typeof Namespaces>;
  readonly leases: Client<typeof Leases>;
  readonly content: Client<typeof Content>;
  readonly images: Client<typeof Images>;
  readonly snapshots: Client<typeof Snapshots>;
  readonly diff: Client<typeof Diff>;
  readonly containers: Client<typeof Containers>;
  readonly tasks: Client<typeof Tasks>;
  readonly events: Client<typeof Events>;
  private readonly versionService: Client<typeof Version>;
  readonly namespace: string;
  readonly socketPath: string;
  /** The lease every call of this client carries, if any. */
  readonly lease: string | undefined;
  private readonly session: Http2SessionManager;

  /** `view` is internal: withNamespace and withLease use it to share the connection. */
  constructor(options: ContainerdClientOptions, view?: ViewOf) {
    if (options.namespace === "") throw new Error("containerd client: namespace must not be empty");
    this.namespace = options.namespace;
    this.socketPath = options.socketPath ?? DEFAULT_SOCKET;
    this.lease = view?.lease;
    const socketPath = this.socketPath;
    this.session = view?.session ?? new Http2SessionManager("http://localhost", {}, { createConnection: () => connect(socketPath) });
    const headers: Interceptor = (next) => async (req) => {
      req.header.set(NAMESPACE_HEADER, this.namespace);
      if (this.lease !== undefined) req.header.set(LEASE_HEADER, this.lease);
      return next(req);
    };
    const transport = createGrpcTransport({
      baseUrl: "http://localhost",
      sessionManager: this.session,
      interceptors: [headers],
    });
    this.namespaces = createClient(Namespaces, transport);
    this.leases = createClient(Leases, transport);
    this.content = createClient(Content, transport);
    this.images = createClient(Images, transport);
    this.snapshots = createClient(Snapshots, transport);
    this.diff = createClient(Diff, transport);
    this.containers = createClient(Containers, transport);
    this.tasks = createClient(Tasks, transport);
    this.events = createClient(Events, transport);
    this.versionService = createClient(Version, transport);
  }

  /** A view on the same connection whose calls carry another namespace (and no lease: leases are per namespace). */
  withNamespace(namespace: string): ContainerdClient {
    return new ContainerdClient({ socketPath: this.socketPath, namespace }, { session: this.session, lease: undefined });
  }

  /** A view on the same connection whose calls carry `containerd-lease: <id>`. */
  withLease(id: string): ContainerdClient {
    return new ContainerdClient({ socketPath: this.socketPath, namespace: this.namespace }, { session: this.session, lease: id });
  }

  /**
   * Runs fn under a fresh lease (what ctr does around an import or a container create): what fn
   * creates survives GC until the lease is deleted, which happens when fn settles. The expiry
   * label is a backstop in case this process dies first.
   */
  async withTemporaryLease<T>(fn: (leased: ContainerdClient) => Promise<T>, expireMs = 24 * 3600_000): Promise<T> {
    const id = `hv-${Date.now()}-${randomBytes(3).toString("hex")}`;
    const expires = new Date(Date.now() + expireMs).toISOString();
    await this.leases.create({ id, labels: { [LEASE_EXPIRE_LABEL]: expires } });
    try {
      return await fn(this.withLease(id));
    } finally {
      await this.leases.delete({ id }).catch((e: unknown) => {
        if (!isNotFound(e)) throw e;
      });
    }
  }

  async version(): Promise<{ version: string; revision: string }> {
    const { version, revision } = await this.versionService.version({});
    return { version, revision };
  }

  /** Creates the client's namespace with labels if it does not exist yet; safe to repeat. */
  async ensureNamespace(labels: Record<string, string> = {}): Promise<void> {
    try {
      await this.namespaces.create({ namespace: { name: this.namespace, labels } });
    } catch (e) {
      if (!isAlreadyExists(e)) throw e;
    }
  }

  /**
   * Writes a blob to the content store through the bidirectional Write stream, in lockstep (one
   * response per request):
   *
   *   STAT {ref, total, expected}  → offset already ingested under ref (resume point)
   *   WRITE {offset, data} ...     → new offset
   *   COMMIT {total, expected}     → digest; the server checks size and digest here
   *
   * A wrong digest or size fails with the server's code (FAILED_PRECONDITION for a digest
   * mismatch) and the ref's partial ingest is aborted.
   */
  async writeContent(ref: string, data: Uint8Array | ContentSource, options: WriteContentOptions): Promise<WrittenContent> {
    const source: ContentSource =
      data instanceof Uint8Array
        ? { size: data.byteLength, read: (from, length) => Promise.resolve(data.subarray(from, from + length)) }
        : data;
    const total = BigInt(source.size);
    const requests = new RequestQueue<WriteRequest>();
    const responses = this.content.write(requests)[Symbol.asyncIterator]();
    const exchange = async (req: WriteRequest): Promise<WriteContentResponse> => {
      requests.push(req);
      const res = await responses.next();
      if (res.done)
        throw new ConnectError(`content write ${ref}: stream ended before the ${WriteAction[req.action ?? 0]} reply`, Code.Internal);
      return res.value;
    };
    try {
      const stat = await exchange({ action: WriteAction.STAT, ref, total, expected: options.expected });
      let offset = stat.offset;
      while (offset < total) {
        const chunk = await source.read(Number(offset), Math.min(WRITE_CHUNK, source.size - Number(offset)));
        const wrote = await exchange({ action: WriteAction.WRITE, ref, offset, data: chunk });
        if (wrote.offset <= offset) throw new ConnectError(`content write ${ref}: no progress at offset ${offset}`, Code.Internal);
        offset = wrote.offset;
      }
      const commit = await exchange({
        action: WriteAction.COMMIT,
        ref,
        total,
        offset,
        expected: options.expected,
        labels: options.labels ?? {},
      });
      requests.end();
      // Let the server close the stream with its status.
      for (let r = await responses.next(); !r.done; r = await responses.next());
      return { digest: commit.digest, size: commit.offset, created: true };
    } catch (e) {
      requests.end();
      // Cancels the call if it is still open (an error of ours rather than the server's).
      await responses.return?.();
      if (isAlreadyExists(e)) return { digest: options.expected, size: total, created: false };
      await this.content.abort({ ref }).catch(() => undefined);
      const err = ConnectError.from(e);
      throw new ConnectError(
        `content write ${ref} (expected ${options.expected}, ${total} bytes): ${err.rawMessage}`,
        err.code,
        err.metadata,
        undefined,
        e,
      );
    }
  }

  /** Closes the HTTP/2 session shared with every view derived from this client. */
  close(): void {
    this.session.abort();
  }
}

/** "sha256:<hex>" of data, the digest form containerd uses everywhere. */
export function sha256Digest(data: Uint8Array): string {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

export const isNotFound = (e: unknown): boolean => hasCode(e, Code.NotFound);
export const isAlreadyExists = (e: unknown): boolean => hasCode(e, Code.AlreadyExists);
export const isFailedPrecondition = (e: unknown): boolean => hasCode(e, Code.FailedPrecondition);

function hasCode(e: unknown, code: Code): boolean {
  return e instanceof ConnectError && e.code === code;
}

/** An async iterable of requests fed one at a time, for lockstep bidirectional streams. */
class RequestQueue<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private ended = false;
  private wake: (() => void) | undefined;

  push(item: T): void {
    this.items.push(item);
    this.notify();
  }

  end(): void {
    this.ended = true;
    this.notify();
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      const item = this.items.shift();
      if (item !== undefined) yield item;
      else if (this.ended) return;
      else await new Promise<void>((resolve) => (this.wake = resolve));
    }
  }
}
