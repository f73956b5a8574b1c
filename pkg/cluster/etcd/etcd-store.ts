/*
 * EtcdStore: the Store contract on a real etcd v3 cluster, through the etcd3 package.
 *
 * One Etcd3 client per store. Etcd3 keeps a pool with one gRPC channel (HTTP/2 connection) per
 * endpoint and fails over between them, and every call and stream of this store is multiplexed
 * over those channels: no connection per request, no per-call dial. Create one store per process
 * and share it.
 *
 *   KV calls ──────► kv.range / put / deleteRange / txn / compact       (unary)
 *   watch() ───────► one Watch stream per call: create_request, then responses split into one
 *                    batch per revision; compact_revision in a response ──► CompactedError
 *   leases ────────► leaseGrant / leaseRevoke / leaseTimeToLive          (unary)
 *                    keepAliveOnce: one request on one of 16 LeaseKeepAlive streams kept open
 *
 * Leases use the low-level RPCs rather than etcd3's Lease class, which keeps itself alive: here the
 * caller keeps a lease alive with keepAliveOnce (the agent's heartbeat), so that stopping the
 * caller is what lets the lease expire.
 *
 * etcd3 errors become the store's typed errors (mapError); nothing above this file sees an etcd3
 * type. With etcd's auth on, a refusal (etcd's permission denied, or a client certificate refused
 * in the TLS handshake) is PermissionDeniedError naming the operation and key: not a failure of
 * the host, so neither retried nor counted by the circuit breaker.
 *
 * Every identity can call revision() and ping(): they read the one key every role may read
 * (keys.cluster, see auth.ts), not the whole keyspace.
 */
import { getMaxListeners, setMaxListeners } from "node:events";
import { readFile } from "node:fs/promises";
import {
  type AuthClient,
  ClientClosedError,
  CompareResult,
  CompareTarget,
  Etcd3,
  EtcdAuthenticationFailedError,
  EtcdLeaseInvalidError,
  EtcdPermissionDeniedError,
  GRPCCancelledError,
  GRPCResourceExhastedError,
  GRPCDeadlineExceededError,
  GRPCUnavailableError,
  type ICompare,
  type IKeyValue,
  type IOptions,
  type IRequestOp,
  type IWatchResponse,
  isRecoverableError,
} from "etcd3";
import { ConsecutiveBreaker, circuitBreaker, handleWhen, retry } from "cockatiel";
import { logger } from "../../log/index.js";
import { ClientIdentity, useClientIdentity } from "./client-identity.js";
import { keyRange } from "./key-range.js";
import {
  CompactedError,
  LeaseNotFoundError,
  PermissionDeniedError,
  StoreError,
  StoreUnavailableError,
  type Compare,
  type KeyValue,
  type Op,
  type Options,
  type RangeOptions,
  type RangeResult,
  type Store,
  type TxnResult,
  type WatchBatch,
  type WatchEvent,
  type WatchOptions,
} from "../store/index.js";
import { keys } from "../state/index.js";

/** Keys per range request: see EtcdStoreOptions.rangePage. */
const RANGE_PAGE = 1000;
/** The largest gRPC message the client takes (etcd's Go client: math.MaxInt32). */
const MAX_RECEIVE_BYTES = 2 ** 31 - 1;
const ZERO = Buffer.from([0]);
/** Calls in flight on one caller signal before Node warns of a listener leak. */
const MAX_CALLS_PER_SIGNAL = 10_000;

const log = logger("etcd-store");
/** Signals whose listener limit call() has raised already (asking costs, on every call). */
const raised = new WeakSet<AbortSignal>();

export interface EtcdStoreOptions {
  /**
   * Client URLs, e.g. ["http://127.0.0.1:2379"]; https:// when tls is set (https:// without tls:
   * TLS verified against the system's CAs). All plaintext or all TLS.
   */
  endpoints: string[];
  /**
   * PEM file paths. ca alone: server verification; cert + key as well: a client certificate, which
   * with etcd's --client-cert-auth is the identity (its CN the etcd user), no username needed.
   */
  tls?: { caFile: string; certFile?: string; keyFile?: string };
  username?: string;
  password?: string;
  /** Connection establishment timeout per endpoint, ms (default 5000). */
  dialTimeoutMs?: number;
  /**
   * LeaseKeepAlive streams to spread this client's leases over (default 16). etcd answers one
   * stream's requests one after the other, and holds a renewal of an expired lease until that
   * lease is revoked: every lease behind it on the stream waits too. An agent has one lease; a
   * process simulating thousands of nodes wants a stream for every few, as each node would
   * have its own.
   */
  keepAliveStreams?: number;
  /**
   * Keys per range request (default 1000): a range over a bigger prefix is read in pages, all at
   * the first page's revision, so one answer is never the whole of a 30,000-instance cluster.
   */
  rangePage?: number;
}

/** Reads the TLS files and creates the store. Does not contact etcd: call ping() for that. */
export async function openEtcdStore(opts: EtcdStoreOptions): Promise<EtcdStore> {
  if (opts.endpoints.length === 0) throw new StoreError("no etcd endpoints given");
  const plain = opts.endpoints.filter((e) => e.startsWith("http://"));
  // etcd3 would dial an http:// endpoint with TLS when credentials are given: say it instead.
  if (opts.tls && plain.length > 0) throw new StoreError(`etcd endpoint ${plain[0]} is http:// but tls is set: use https://`);
  if (plain.length > 0 && opts.endpoints.some((e) => e.startsWith("https://")))
    throw new StoreError(`etcd endpoints mix http:// and https://: ${opts.endpoints.join(",")}`);
  if (opts.tls && !opts.tls.certFile !== !opts.tls.keyFile)
    throw new StoreError(
      `etcd client certificate needs both a certificate and a key file (got only the ${opts.tls.certFile ? "certificate" : "key"})`,
    );
  const options: IOptions = {
    hosts: opts.endpoints,
    dialTimeout: opts.dialTimeoutMs ?? 5000,
    faultHandling: faultHandling(),
    // gRPC's default of 4 MiB is less than a page of large values (etcd takes values of up to
    // 1.5 MiB); etcd's own Go client accepts up to 2 GiB.
    grpcOptions: { "grpc.max_receive_message_length": MAX_RECEIVE_BYTES },
  };
  let identity: ClientIdentity | undefined;
  if (opts.tls) {
    const credentials: NonNullable<IOptions["credentials"]> = { rootCertificate: await readFile(opts.tls.caFile) };
    if (opts.tls.certFile) credentials.certChain = await readFile(opts.tls.certFile);
    if (opts.tls.keyFile) credentials.privateKey = await readFile(opts.tls.keyFile);
    options.credentials = credentials;
    if (credentials.certChain && credentials.privateKey)
      identity = new ClientIdentity(credentials.rootCertificate, credentials.certChain, credentials.privateKey);
  }
  if (opts.username !== undefined) options.auth = { username: opts.username, password: opts.password ?? "" };
  const client = new Etcd3(options);
  if (identity) useClientIdentity(client, identity);
  return new EtcdStore(client, opts.endpoints, opts.keepAliveStreams ?? KEEPALIVE_STREAMS, opts.rangePage ?? RANGE_PAGE, identity);
}

/**
 * etcd3's default circuit breaker counts a cancelled gRPC call as a host failure, and we cancel
 * streams all the time (every watch that ends, every API client that disconnects): three in a
 * row opened the breaker and refused every call for 5 s. Only real transport failures count here.
 */
function faultHandling(): NonNullable<IOptions["faultHandling"]> {
  // A request too big for etcd (or an answer too big for us) says nothing of the host: retried
  // and counted, it would open the breaker and fail every call for five seconds.
  // Nor does a client certificate that etcd refuses: the host is up, and said no.
  const hostFailure = handleWhen((e) => isRecoverableError(e) && !(e instanceof GRPCCancelledError) && !isTooLarge(e) && !isTlsRefusal(e));
  return {
    host: () => circuitBreaker(hostFailure, { halfOpenAfter: 5_000, breaker: new ConsecutiveBreaker(3) }),
    global: retry(hostFailure, { maxAttempts: 3 }),
  };
}

function isTooLarge(e: Error): boolean {
  return e instanceof GRPCResourceExhastedError && /larger than max|request is too large/.test(e.message);
}

/**
 * A TLS alert from etcd about our certificate (gRPC reports it as unavailable): none (bad
 * certificate: Go's answer to a missing one), unknown CA, expired, revoked. An alert is what the
 * peer sent; our own refusal of etcd's certificate reads differently and stays "unavailable".
 */
const TLS_REFUSAL = /SSL alert number (42|43|44|45|46|48|116)\b/;

function isTlsRefusal(e: unknown): boolean {
  return e instanceof Error && TLS_REFUSAL.test(e.message);
}

const COMPARE_TARGET = { mod: CompareTarget.Mod, create: CompareTarget.Create, version: CompareTarget.Version } as const;
const COMPARE_RESULT = {
  "=": CompareResult.Equal,
  "!=": CompareResult.NotEqual,
  "<": CompareResult.Less,
  ">": CompareResult.Greater,
} as const;

const GRPC_DEADLINE_EXCEEDED = 4;
const GRPC_PERMISSION_DENIED = 7;
const GRPC_UNAVAILABLE = 14;

/** LeaseKeepAlive streams a store spreads its leases over by default (see keepAliveShared). */
const KEEPALIVE_STREAMS = 16;
/** How long a keep-alive may wait for etcd's answer before its stream is given up. */
const KEEPALIVE_TIMEOUT_MS = 5000;

/** What a call was doing, for its errors: "put /hypervisor/v1/...". */
interface CallContext {
  op: string;
  lease?: string | undefined;
}

interface KeepAlives {
  stream: Duplex<{ ID: string }, { ID: string; TTL: string }>;
  /** Lease id → callers waiting for its answer. */
  waiters: Map<string, { resolve(ttl: number): void; reject(e: Error): void }[]>;
  /** performance.now() of the last answer (or of the opening). */
  lastAnswer: number;
  fail(e: Error): void;
}

/** Minimal shape of the gRPC duplex streams etcd3 hands out; `on` is what we use of them. */
interface Duplex<Req, Res> {
  write(item: Req): void;
  end(): void;
  cancel(): void;
  on(event: "data", fn: (r: Res) => void): unknown;
  on(event: "error", fn: (e: Error) => void): unknown;
  on(event: "end", fn: () => void): unknown;
}

export class EtcdStore implements Store {
  readonly kind = "etcd";
  private closed = false;
  /** The shared LeaseKeepAlive streams (keepAliveShared) by slot, each opened on first use. */
  private readonly keepAlives = new Map<number, Promise<KeepAlives>>();
  /** Wakes every running watch, so close() ends them with StoreUnavailableError. */
  private readonly wakers = new Set<() => void>();

  constructor(
    private readonly client: Etcd3,
    private readonly endpoints: string[],
    private readonly keepAliveSlots = KEEPALIVE_STREAMS,
    private readonly rangePage = RANGE_PAGE,
    /** The client certificate, when the store has one: setClientCertificate replaces it. */
    private readonly identity?: ClientIdentity,
  ) {
    if (!Number.isInteger(keepAliveSlots) || keepAliveSlots < 1)
      throw new StoreError(`keepAliveStreams: ${keepAliveSlots} is not a positive integer`);
    if (!Number.isInteger(rangePage) || rangePage < 1) throw new StoreError(`rangePage: ${rangePage} is not a positive integer`);
  }

  /**
   * Presents this certificate (PEM, with its key) from the next connection to etcd on: a renewed
   * node certificate. Connections open now keep theirs. Throws StoreError when the store was
   * opened without a client certificate, or when the key is not the certificate's.
   */
  setClientCertificate(cert: string | Buffer, key: string | Buffer): void {
    if (!this.identity) throw new StoreError("this etcd store was opened without a client certificate: there is none to replace");
    this.identity.set(cert, key);
  }

  async get(key: string, opts?: Options): Promise<KeyValue | undefined> {
    const res = await this.call(opts, () => this.client.kv.range({ key: Buffer.from(key) }), { op: `get ${key}` });
    const kv = res.kvs[0];
    return kv ? toKeyValue(kv) : undefined;
  }

  async range(prefix: string, opts?: RangeOptions): Promise<RangeResult> {
    const { key, range_end } = keyRange(prefix);
    const limit = opts?.limit && opts.limit > 0 ? opts.limit : Infinity;
    const kvs: KeyValue[] = [];
    let from = key;
    let revision = 0;
    for (;;) {
      const res = await this.call(
        opts,
        () =>
          this.client.kv.range({
            key: from,
            range_end,
            limit: Math.min(this.rangePage, limit - kvs.length),
            // Later pages at the first one's revision: one snapshot, as a single range would be.
            revision,
            keys_only: opts?.keysOnly ?? false,
            sort_order: "Ascend",
            sort_target: "Key",
          }),
        { op: `range ${prefix}` },
      );
      if (revision === 0) revision = Number(res.header.revision);
      for (const kv of res.kvs) kvs.push(toKeyValue(kv));
      const last = res.kvs.at(-1);
      if (!res.more || !last || kvs.length >= limit) return { kvs, revision };
      from = Buffer.concat([last.key, ZERO]);
    }
  }

  async put(key: string, value: Uint8Array, opts?: Options & { lease?: string }): Promise<number> {
    const lease = opts?.lease ?? "0";
    const res = await this.call(opts, () => this.client.kv.put({ key: Buffer.from(key), value: toBuffer(value), lease }), {
      lease,
      op: `put ${key}`,
    });
    return Number(res.header.revision);
  }

  async delete(key: string, opts?: Options): Promise<number> {
    const res = await this.call(opts, () => this.client.kv.deleteRange({ key: Buffer.from(key) }), { op: `delete ${key}` });
    return Number(res.deleted);
  }

  async deletePrefix(prefix: string, opts?: Options): Promise<number> {
    const res = await this.call(opts, () => this.client.kv.deleteRange(keyRange(prefix)), { op: `delete prefix ${prefix}` });
    return Number(res.deleted);
  }

  async txn(compares: Compare[], success: Op[], failure: Op[] = [], opts?: Options): Promise<TxnResult> {
    const lease = [...success, ...failure].find((o) => o.type === "put" && o.lease && o.lease !== "0");
    const res = await this.call(
      opts,
      () =>
        this.client.kv.txn({
          compare: compares.map(toCompare),
          success: success.map(toRequestOp),
          failure: failure.map(toRequestOp),
        }),
      { lease: lease?.type === "put" ? lease.lease : undefined, op: `txn on ${txnKeys(compares, [...success, ...failure])}` },
    );
    return { succeeded: res.succeeded, revision: Number(res.header.revision) };
  }

  async revision(opts?: Options): Promise<number> {
    // Any range carries the store revision in its header; this one reads a key every identity may
    // read (a node's role allows no other key outside its own), and counts rather than fetches it.
    const res = await this.call(opts, () => this.client.kv.range({ key: Buffer.from(keys.cluster), count_only: true }), {
      op: `read ${keys.cluster} for the revision`,
    });
    return Number(res.header.revision);
  }

  async compact(revision: number, opts?: Options): Promise<void> {
    try {
      await this.call(opts, () => this.client.kv.compact({ revision, physical: false }), { op: `compact to ${revision}` });
    } catch (e) {
      // Compacting to a revision already compacted away changes nothing: same as the embedded store.
      if (e instanceof CompactedError) return;
      throw e;
    }
  }

  async grantLease(ttlSeconds: number, opts?: Options): Promise<string> {
    const res = await this.call(opts, () => this.client.leaseClient.leaseGrant({ TTL: ttlSeconds, ID: 0 }), { op: "lease grant" });
    if (res.error) throw new StoreError(`lease grant failed: ${res.error}`);
    return res.ID;
  }

  async keepAliveOnce(lease: string, opts?: Options): Promise<number> {
    const ttl = await this.call(opts, () => this.keepAliveShared(lease), { lease, op: `keep-alive of lease ${lease}` });
    // etcd answers a keep-alive of an expired or unknown lease with TTL 0 rather than an error.
    if (ttl <= 0) throw new LeaseNotFoundError(lease);
    return ttl;
  }

  /**
   * One request on one of the store's LeaseKeepAlive streams, kept open and shared by the leases
   * of this store that hash to it (etcd answers each request with the lease's id): a process
   * keeping thousands of leases alive (the scale bench's simulated nodes) opens no stream per
   * keep-alive. A stream that fails, ends or stays silent past KEEPALIVE_TIMEOUT_MS fails its
   * waiters and is replaced on next use.
   */
  private async keepAliveShared(lease: string): Promise<number> {
    // Spread over keepAliveStreams streams: etcd answers one stream's requests in order (see
    // EtcdStoreOptions.keepAliveStreams).
    let h = 0;
    for (let i = 0; i < lease.length; i++) h = (h * 31 + lease.charCodeAt(i)) >>> 0;
    const ka = await this.keepAliveStream(h % this.keepAliveSlots);
    return new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        const e = new StoreUnavailableError(`no keep-alive answer for lease ${lease} in ${KEEPALIVE_TIMEOUT_MS} ms`);
        // A stream that answered nobody for that long is dead: replace it. Otherwise only this
        // caller gives up (its heartbeat retries); the others' answers are on their way.
        if (performance.now() - ka.lastAnswer >= KEEPALIVE_TIMEOUT_MS) return ka.fail(e);
        const list = ka.waiters.get(lease);
        const at = list?.indexOf(settle) ?? -1;
        if (at >= 0) list!.splice(at, 1);
        settle.reject(e);
      }, KEEPALIVE_TIMEOUT_MS);
      const settle = {
        resolve: (ttl: number) => (clearTimeout(timer), resolve(ttl)),
        reject: (e: Error) => (clearTimeout(timer), reject(e)),
      };
      const list = ka.waiters.get(lease) ?? [];
      list.push(settle);
      ka.waiters.set(lease, list);
      ka.stream.write({ ID: lease });
    });
  }

  private keepAliveStream(slot: number): Promise<KeepAlives> {
    let ka = this.keepAlives.get(slot);
    if (!ka) {
      const forget = () => {
        if (this.keepAlives.get(slot) === opening) this.keepAlives.delete(slot);
      };
      const opening: Promise<KeepAlives> = this.openKeepAlives(forget);
      this.keepAlives.set(slot, opening);
      opening.catch(forget);
      ka = opening;
    }
    return ka;
  }

  private async openKeepAlives(forget: () => void): Promise<KeepAlives> {
    const stream = (await this.client.leaseClient.leaseKeepAlive()) as unknown as Duplex<{ ID: string }, { ID: string; TTL: string }>;
    const ka: KeepAlives = {
      stream,
      waiters: new Map(),
      lastAnswer: performance.now(),
      fail: (e) => {
        forget();
        closeStream(stream);
        for (const list of ka.waiters.values()) for (const w of list) w.reject(e);
        ka.waiters.clear();
      },
    };
    stream.on("data", (r) => {
      ka.lastAnswer = performance.now();
      const list = ka.waiters.get(String(r.ID));
      if (!list) return;
      ka.waiters.delete(String(r.ID));
      for (const w of list) w.resolve(Number(r.TTL));
    });
    stream.on("error", (e) => ka.fail(e instanceof Error ? e : new StoreUnavailableError(String(e))));
    stream.on("end", () => ka.fail(new StoreUnavailableError("lease keepalive stream ended")));
    return ka;
  }

  async revokeLease(lease: string, opts?: Options): Promise<void> {
    try {
      await this.call(opts, () => this.client.leaseClient.leaseRevoke({ ID: lease }), { lease, op: `revoke lease ${lease}` });
    } catch (e) {
      if (e instanceof LeaseNotFoundError) return;
      throw e;
    }
  }

  async leaseTimeToLive(lease: string, opts?: Options): Promise<number> {
    const res = await this.call(opts, () => this.client.leaseClient.leaseTimeToLive({ ID: lease }), {
      lease,
      op: `time to live of lease ${lease}`,
    });
    const ttl = Number(res.TTL);
    return ttl < 0 ? -1 : ttl;
  }

  async ping(opts?: Options): Promise<void> {
    await this.revision(opts);
  }

  close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      for (const wake of this.wakers) wake();
      for (const ka of this.keepAlives.values())
        void ka.then((k) => k.fail(new StoreUnavailableError("store is closed"))).catch(() => undefined);
      this.client.close();
    }
    return Promise.resolve();
  }

  watch(prefix: string, opts: WatchOptions = {}): AsyncIterable<WatchBatch> {
    return { [Symbol.asyncIterator]: () => this.watchLoop(prefix, opts) };
  }

  private async *watchLoop(prefix: string, opts: WatchOptions): AsyncGenerator<WatchBatch> {
    const { signal } = opts;
    if (this.closed) throw new StoreUnavailableError("store is closed");
    if (signal?.aborted) return;
    let stream: Duplex<unknown, IWatchResponse>;
    const op = `watch ${prefix}`;
    try {
      stream = await this.client.watchClient.watch();
    } catch (e) {
      throw this.mapError(e, { op });
    }
    const responses: IWatchResponse[] = [];
    let failure: unknown;
    let ended = false;
    let wake: (() => void) | undefined;
    const poke = () => wake?.();
    stream.on("data", (r) => {
      responses.push(r);
      poke();
    });
    stream.on("error", (e) => {
      failure ??= e;
      poke();
    });
    stream.on("end", () => {
      ended = true;
      poke();
    });
    signal?.addEventListener("abort", poke, { once: true });
    this.wakers.add(poke);
    const create: Record<string, unknown> = { ...keyRange(prefix), prev_kv: false };
    if (opts.fromRevision !== undefined) create.start_revision = opts.fromRevision;
    stream.write({ create_request: create });
    try {
      for (;;) {
        if (signal?.aborted) return;
        if (this.closed) throw new StoreUnavailableError("store is closed");
        const r = responses.shift();
        if (r) {
          // A start revision older than the compaction: etcd creates the watch, then cancels it
          // with the compact revision set.
          if (r.compact_revision && r.compact_revision !== "0") {
            throw new CompactedError(opts.fromRevision ?? 0, Number(r.compact_revision));
          }
          // A watch on keys the identity may not read is created, then canceled with this reason.
          if (r.canceled && /permission denied/.test(r.cancel_reason))
            throw new PermissionDeniedError(`etcd refused ${op}: permission denied`);
          if (r.canceled) throw new StoreError(`watch canceled by etcd: ${r.cancel_reason || "no reason given"}`);
          yield* splitByRevision(r);
          continue;
        }
        if (failure !== undefined) throw this.mapError(failure, { op });
        if (ended) throw new StoreUnavailableError("watch stream ended");
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
      }
    } finally {
      signal?.removeEventListener("abort", poke);
      this.wakers.delete(poke);
      closeStream(stream);
    }
  }

  /**
   * Runs one etcd call: refuses when closed or aborted, abandons the call when the signal aborts
   * (gRPC unary calls here cannot be cancelled individually), and maps errors.
   */
  private async call<T>(opts: Options | undefined, fn: () => Promise<T>, what: CallContext): Promise<T> {
    const signal = opts?.signal;
    signal?.throwIfAborted();
    if (this.closed) throw new StoreUnavailableError("store is closed");
    let onAbort: (() => void) | undefined;
    try {
      const work = fn();
      if (!signal) return await work;
      const aborted = new Promise<never>((_, reject) => {
        // The abort reason as is (an AbortError DOMException by default), as fetch and timers do.
        onAbort = () => reject(signal.reason as Error);
        // One listener per call in flight, removed when it ends: a controller's signal legitimately
        // carries hundreds at once, which is not the leak Node's default limit of 10 warns about.
        if (!raised.has(signal)) {
          if (getMaxListeners(signal) < MAX_CALLS_PER_SIGNAL) setMaxListeners(MAX_CALLS_PER_SIGNAL, signal);
          raised.add(signal);
        }
        signal.addEventListener("abort", onAbort, { once: true });
      });
      work.catch(() => undefined); // the abandoned call may still fail; nobody is waiting for it
      return await Promise.race([work, aborted]);
    } catch (e) {
      if (signal?.aborted && e === signal.reason) throw e;
      throw this.mapError(e, what);
    } finally {
      if (onAbort) signal?.removeEventListener("abort", onAbort);
    }
  }

  /**
   * Runs fn on etcd3's Auth service with this store's cancellation and error mapping: for auth.ts,
   * which manages etcd's users and roles; fn handles the etcd3 errors it expects itself.
   */
  authCall<T>(opts: Options | undefined, op: string, fn: (auth: AuthClient) => Promise<T>): Promise<T> {
    return this.call(opts, () => fn(this.client.auth), { op });
  }

  /** etcd3's errors to the store's typed errors. */
  private mapError(e: unknown, what: CallContext): Error {
    if (e instanceof StoreError) return e;
    const message = e instanceof Error ? e.message : String(e);
    if (this.closed || e instanceof ClientClosedError) return new StoreUnavailableError("store is closed");
    if (e instanceof EtcdLeaseInvalidError || message.includes("requested lease not found")) {
      return new LeaseNotFoundError(what.lease ?? "unknown");
    }
    // Unary errors arrive cast by etcd3, stream errors raw (gRPC code 7).
    if (e instanceof EtcdPermissionDeniedError || (e as { code?: unknown }).code === GRPC_PERMISSION_DENIED) {
      return new PermissionDeniedError(`etcd refused ${what.op}: permission denied`);
    }
    // etcd3 casts only the password-mismatch wording; a user without a password says it otherwise.
    if (e instanceof EtcdAuthenticationFailedError || /authentication failed/.test(message)) {
      return new PermissionDeniedError(`etcd refused ${what.op}: authentication failed (wrong user or password)`);
    }
    if (isTlsRefusal(e)) {
      const alert = TLS_REFUSAL.exec(message)?.[1];
      return new PermissionDeniedError(
        `etcd at ${this.endpoints.join(",")} refused this client's certificate (TLS alert ${alert}) for ${what.op}`,
      );
    }
    if (message.includes("required revision has been compacted")) {
      // compact() meets this, and a paged range whose revision was compacted between its pages
      // (the informer relists); watches learn the compact revision from the response instead.
      return new CompactedError(0, 0);
    }
    // Stream errors arrive as raw gRPC errors (a numeric code), unary ones cast by etcd3; an open
    // circuit breaker is etcd3's way of saying every endpoint failed recently.
    const code = (e as { code?: unknown }).code;
    if (
      e instanceof GRPCUnavailableError ||
      e instanceof GRPCDeadlineExceededError ||
      e instanceof GRPCCancelledError ||
      code === GRPC_UNAVAILABLE ||
      code === GRPC_DEADLINE_EXCEEDED ||
      (e instanceof Error && e.name === "BrokenCircuitError") ||
      /ECONNREFUSED|ECONNRESET|No connection established|circuit breaker is open/i.test(message)
    ) {
      log.debug({ err: e, endpoints: this.endpoints }, "etcd unavailable");
      return new StoreUnavailableError(`etcd unavailable at ${this.endpoints.join(",")}: ${lowerFirst(message)}`);
    }
    return new StoreError(`etcd: ${lowerFirst(message)}`, { cause: e });
  }
}

/**
 * Ends our side, then cancels. etcd3 treats an error on a stream that is still writable as a
 * failure of the host and closes every channel to it, failing calls just started on them
 * ("Channel closed before call started"); the cancel's own CANCELLED error is such an error
 * unless the stream was ended first.
 */
function closeStream(stream: { end(): void; cancel(): void }): void {
  stream.end();
  stream.cancel();
}

/** One batch per revision: etcd may put several revisions' events in one watch response. */
function* splitByRevision(r: IWatchResponse): Generator<WatchBatch> {
  let batch: WatchBatch | undefined;
  for (const ev of r.events) {
    const kv = toKeyValue(ev.kv);
    const revision = kv.modRevision;
    const event: WatchEvent =
      String(ev.type).toLowerCase() === "delete"
        ? { type: "delete", kv: { ...kv, value: new Uint8Array(0), createRevision: 0, version: 0, lease: "0" } }
        : { type: "put", kv };
    if (batch && batch.revision !== revision) {
      yield batch;
      batch = undefined;
    }
    batch ??= { revision, events: [] };
    batch.events.push(event);
  }
  if (batch) yield batch;
}

function toKeyValue(kv: IKeyValue): KeyValue {
  return {
    key: kv.key.toString("utf8"),
    value: new Uint8Array(kv.value ?? new Uint8Array(0)),
    createRevision: Number(kv.create_revision),
    modRevision: Number(kv.mod_revision),
    version: Number(kv.version),
    lease: kv.lease ? String(kv.lease) : "0",
  };
}

function toBuffer(u: Uint8Array): Buffer {
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

function toCompare(c: Compare): ICompare {
  const out: ICompare = { key: Buffer.from(c.key), target: COMPARE_TARGET[c.target], result: COMPARE_RESULT[c.result] };
  if (c.target === "mod") out.mod_revision = c.value;
  else if (c.target === "create") out.create_revision = c.value;
  else out.version = c.value;
  return out;
}

function toRequestOp(op: Op): IRequestOp {
  switch (op.type) {
    case "put":
      return { request_put: { key: Buffer.from(op.key), value: toBuffer(op.value), lease: op.lease ?? "0" } };
    case "delete":
      return { request_delete_range: { key: Buffer.from(op.key) } };
    case "deletePrefix":
      return { request_delete_range: keyRange(op.prefix) };
  }
}

/** The keys a transaction touches, for its errors (the first few). */
function txnKeys(compares: Compare[], ops: Op[]): string {
  const all = [...new Set([...compares.map((c) => c.key), ...ops.map((o) => (o.type === "deletePrefix" ? `${o.prefix}*` : o.key))])];
  return all.length > 3 ? `${all.slice(0, 3).join(", ")} and ${all.length - 3} more` : all.join(", ");
}

function lowerFirst(s: string): string {
  return s.length > 0 ? s[0]!.toLowerCase() + s.slice(1) : s;
}
