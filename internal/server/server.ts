/*
 * hypervisor-server: the API on one port (gRPC, gRPC-Web, Connect), /metrics and /healthz, the
 * informers every replica keeps, and the controllers only the leader runs.
 *
 *   ┌ API handlers (any replica) ─ read/write the store directly (txn with revision compares)
 *   ├ informers (any replica) ──── local copies for watches, counts and controllers
 *   └ leader only: placement controller, garbage collector, node controller
 */
import { randomUUID } from "node:crypto";
import { Code, ConnectError, type ConnectRouter, createContextValues, type Interceptor } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { Handler as NodeHandlerFn } from "./http.js";
import { ClusterService } from "../../api/gen/hypervisor/v1/cluster_pb.js";
import { ImageService } from "../../api/gen/hypervisor/v1/image_pb.js";
import { ConsoleService } from "../../api/gen/hypervisor/v1/console_pb.js";
import { AgentClient } from "./agent-client.js";
import { ConsoleProxy, consoleService } from "./console.js";
import { DrainController } from "./drain-controller.js";
import { HaController } from "./ha-controller.js";
import { trackWrites } from "./write-tracker.js";
import { InstanceService } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { NodeService } from "../../api/gen/hypervisor/v1/node_pb.js";
import { type Store, StoreError, StoreUnavailableError } from "../../pkg/cluster/store/index.js";
import { clusterId, keys, migrateToProjects } from "../../pkg/cluster/state/index.js";
import { type Logger, logger } from "../../pkg/log/index.js";
import { clusterService } from "./cluster-service.js";
import { imageService } from "./image-service.js";
import type { ServerContext } from "./context.js";
import { GcController } from "./gc-controller.js";
import { type ConnectionLimits, listen, type Listening, type TlsSettings, tlsPeer } from "./http.js";
import { identityOfPeer, operatorRefusal, peerIdentity, peerOf } from "./peer.js";
import { identityService } from "./identity-service.js";
import { agentSupportService } from "./agent-support-service.js";
import { AgentSupportService } from "../../api/gen/hypervisor/v1/agent_pb.js";
import { IdentityService } from "../../api/gen/hypervisor/v1/identity_pb.js";
import { AccessService } from "../../api/gen/hypervisor/v1/access_pb.js";
import {
  accessService,
  auditService,
  Authorizer,
  callerKey,
  ensureBootstrapToken,
  METRICS_RULE,
  RoleBindingIndex,
  TokenGc,
  UNRESTRICTED,
  type AuditLog,
  type AuthConfig,
} from "./access/index.js";
import { ProjectService } from "../../api/gen/hypervisor/v1/project_pb.js";
import { ensureDefaultProject, projectService } from "./project-service.js";
import { AuditService } from "../../api/gen/hypervisor/v1/audit_pb.js";
import type { CertificateAuthority } from "../../pkg/pki/index.js";
import { OriginPolicy, type OriginPolicyOptions } from "./origin-policy.js";
import { redact } from "./secret-env.js";
import { type RefusalLimits, RefusalThrottle } from "./refusal-throttle.js";
import { type ClientLimitSettings, ClientLimits, clientAddress, normalizeAddress } from "./client-limits.js";
import { instancesByPhase, makeInformers } from "./informers.js";
import { instanceService } from "./instance-service.js";
import { strictInput } from "./strict-input.js";
import { metrics, registry, setInstanceSource } from "./metrics.js";
import { NodeController } from "./node-controller.js";
import { nodeService } from "./node-service.js";
import { PlacementController } from "./placement-controller.js";
import type { Algorithm } from "./scheduler.js";

export interface ServerOptions {
  store: Store;
  host: string;
  port: number;
  /** Serve the API over TLS with this key and certificate, asking clients for one of `caPem`'s. */
  tls?: TlsSettings;
  /**
   * The cluster CA: with it the server signs node certificates for join tokens (IdentityService)
   * and, with `tls`, users' client certificates (AccessService.IssueUserCertificate).
   */
  identity?: {
    ca: CertificateAuthority;
    nodeCertTtlSeconds?: number;
    onJoin?: (node: string) => Promise<void>;
    onRevoke?: (node: string) => Promise<void>;
  };
  version: string;
  algorithm?: Algorithm;
  serverId?: string;
  /**
   * Runs `lead` while this replica is the leader: given a signal aborted when leadership is lost.
   * Omitted: this replica always leads (one server).
   */
  leadership?: Leadership;
  /**
   * false: an API-only replica. It serves the API from its informers and etcd but never runs for
   * leader, so it never schedules or runs a controller (more API capacity without another
   * candidate). Default true.
   */
  controllers?: boolean;
  /** Largest accepted request body. */
  readMaxBytes?: number;
  /** How long a console ticket may wait to be used (default 30 s). */
  consoleTicketTtlMs?: number;
  /** How long a node stays NotReady before its instances are placed elsewhere (default 60 s). */
  haGraceMs?: number;
  /** Dial the VNC server of a VM whose agent is on this machine directly (default true); false: always through the agent. */
  consoleLocalDirect?: boolean;
  /** Bounds on every connection (protocol detection, headers, idle, HTTP/2 pings and streams). */
  limits?: Partial<ConnectionLimits>;
  /** How long a unary call may run (default 60 s); a client's own shorter deadline wins. */
  unaryTimeoutMs?: number;
  /** The largest image an ImportImage call may upload (default 16 GiB). */
  maxImageBytes?: number;
  /** Per-client caps: open watches and log follows, console tickets, a watch's backlog. */
  clientLimits?: Partial<ClientLimitSettings>;
  /** How many refusals a connection may collect before its requests wait (per second, burst). */
  refusals?: Partial<RefusalLimits>;
  /** Which Host names and Origins may reach the server (DNS rebinding, cross-site pages). */
  origins?: Partial<Omit<OriginPolicyOptions, "listenHost">>;
  /** Serves paths the API does not (the web UI). */
  fallback?: NodeHandlerFn;
  /**
   * Who may call what (access/). `{ bootstrapDir }`: every RPC and /metrics checked against API
   * tokens, cluster certificates and roles, deny by default; the cluster's first start writes its
   * bootstrap admin token to `bootstrapDir/admin-token` (the servers' pki directory). "none": no
   * check at all, for component tests of other features; the binary always checks.
   */
  access: { bootstrapDir: string } | "none";
  /** What GetAuthConfig tells login pages and `login --oidc` (OIDC issuer and client). */
  auth?: AuthConfig;
  /** Verifies OIDC ID tokens presented as bearers (access/oidc.ts); none: API tokens only. */
  oidc?: { verify(token: string, signal?: AbortSignal): Promise<{ user: string; groups: string[] }> };
  /** With access on: the audit log every refusal and change is written to (access/audit.ts). */
  audit?: AuditLog;
  log?: Logger;
}

/** A unary call's longest run when the server is not told otherwise (nginx proxy_read_timeout). */
export const DEFAULT_UNARY_TIMEOUT_MS = 60_000;

export interface Leadership {
  run(signal: AbortSignal, lead: (signal: AbortSignal) => Promise<void>): Promise<void>;
  leader(): string;
}

export class Server {
  readonly serverId: string;
  readonly ctx: ServerContext;
  private readonly log: Logger;
  private readonly abort = new AbortController();
  private listening?: Listening;
  private readonly tasks: Promise<void>[] = [];
  private isLeader = false;
  private readonly health: Record<string, string> = { informers: "starting" };
  private readonly consoles: ConsoleProxy;
  private readonly startInformers: (signal: AbortSignal) => Promise<void>;

  constructor(private readonly opts: ServerOptions) {
    this.serverId = opts.serverId ?? randomUUID().slice(0, 8);
    this.log = opts.log ?? logger("server", { server: this.serverId });
    const store = opts.store;
    const made = makeInformers(store, this.log);
    this.startInformers = (signal) => made.start(signal);
    const informers = made.informers;
    const tracked = trackWrites(store, [keys.instances, keys.nodes, keys.nodeFlagsPrefix]);
    this.ctx = {
      store: tracked.store,
      writtenAt: tracked.writtenAt,
      informers,
      log: this.log,
      serverId: this.serverId,
      version: opts.version,
      algorithm: opts.algorithm ?? "binpack",
      leader: () => (opts.leadership ? opts.leadership.leader() : this.serverId),
      componentHealth: () => ({ ...this.health }),
      clientLimits: new ClientLimits(opts.clientLimits),
      // Agents that joined serve mutual TLS: this server calls them with its own certificate.
      agents: new AgentClient(store, opts.tls ? { tls: { ca: opts.tls.caPem, cert: opts.tls.certPem, key: opts.tls.keyPem } } : {}),
    };
    this.consoles = new ConsoleProxy(this.ctx, this.opts.consoleLocalDirect ?? true);
    this.authorizer =
      opts.access === "none"
        ? undefined
        : new Authorizer(store, informers.apiTokens, Date.now, new RoleBindingIndex(informers.roleBindings), opts.oidc);
  }

  /** Undefined when access is "none". */
  private readonly authorizer: Authorizer | undefined;

  get url(): string {
    if (!this.listening) throw new Error("server not started");
    return `${this.opts.tls ? "https" : "http"}://${this.listening.host.includes(":") ? `[${this.listening.host}]` : this.listening.host}:${this.listening.port}`;
  }

  routes = (router: ConnectRouter): void => {
    const instances = instanceService(this.ctx);
    router.service(InstanceService, instances);
    router.service(NodeService, nodeService(this.ctx, instances));
    router.service(ClusterService, clusterService(this.ctx));
    router.service(ImageService, imageService(this.ctx, this.opts.maxImageBytes));
    router.service(ConsoleService, consoleService(this.ctx, this.opts.consoleTicketTtlMs));
    // User certificates are signed only where they can be presented: a server with TLS and the CA.
    const userCa = this.opts.tls ? this.opts.identity?.ca : undefined;
    router.service(AccessService, accessService(this.ctx.store, this.log.child({ component: "access" }), this.opts.auth, userCa));
    router.service(ProjectService, projectService(this.ctx));
    router.service(AuditService, auditService(this.opts.audit, this.serverId));
    // Only useful (and only reachable by a node) over TLS, where clients prove who they are.
    if (this.opts.tls) router.service(AgentSupportService, agentSupportService(this.ctx));
    if (this.opts.identity)
      router.service(
        IdentityService,
        identityService({
          store: this.ctx.store,
          log: this.log.child({ component: "identity" }),
          // With access control, the rights decide (jointokens:*, nodes:revoke); without it, only
          // this machine and the cluster's servers may manage join tokens.
          operator: (hctx) => (this.authorizer ? undefined : operatorRefusal(hctx.values.get(clientAddress), peerOf(hctx))),
          ...this.opts.identity,
        }),
      );
  };

  private cluster = "";

  /** The id of the cluster this server serves (empty until start). */
  get clusterId(): string {
    return this.cluster;
  }

  async start(): Promise<void> {
    const signal = this.abort.signal;
    // Made here at the cluster's first start (or by the first agent, if one came first).
    this.cluster = await clusterId(this.ctx.store, { signal });
    this.ctx.log.info({ cluster: this.cluster }, "cluster id");
    if (this.opts.access !== "none") {
      const file = await ensureBootstrapToken(this.ctx.store, this.opts.access.bootstrapDir, this.serverId);
      if (file) this.ctx.log.warn({ file }, "the cluster's first start: its bootstrap admin token is in this file (0600); keep it safe");
    }
    // Before the informers list instances: they see the keys of now, never those of before projects.
    const migrated = await migrateToProjects(this.ctx.store, signal);
    if (migrated > 0) this.ctx.log.warn({ keys: migrated }, "moved instances made before projects into project default");
    await ensureDefaultProject(this.ctx.store, signal);
    await this.startInformers(signal);
    this.health.informers = "";
    const handler = connectNodeAdapter({
      // Every request read strictly; every call authenticated and authorized before it runs.
      ...strictInput({
        routes: this.routes,
        interceptors: [this.edge, this.authorizer ? this.authorizer.interceptor(this.opts.audit) : unrestricted],
      }),
      readMaxBytes: this.opts.readMaxBytes ?? 4 * 1024 * 1024, // also enforced on streamed bodies
      fallback: (req, res) => void this.serveOther(req, res),
      contextValues: (req) =>
        createContextValues()
          .set(clientAddress, normalizeAddress(req.socket.remoteAddress))
          .set(peerIdentity, identityOfPeer(tlsPeer(req.socket))),
    });
    const maxBytes = this.opts.readMaxBytes ?? 4 * 1024 * 1024;
    const throttle = new RefusalThrottle(this.opts.refusals);
    const policy = new OriginPolicy({
      allowedHosts: this.opts.origins?.allowedHosts ?? [],
      allowedOrigins: this.opts.origins?.allowedOrigins ?? [],
      desktopFrameAncestors: this.opts.origins?.desktopFrameAncestors ?? [],
      connectSources: this.opts.origins?.connectSources ?? [],
      listenHost: this.opts.host,
    });
    const serve: NodeHandlerFn = (req, res) => {
      const verdict = policy.check(req.headers);
      if (!verdict.ok) {
        req.resume();
        metrics.refusedRequests.inc({ reason: "origin" });
        return policy.refuse(req, res, verdict.message);
      }
      for (const [k, v] of Object.entries(policy.headers((req.url ?? "/").split("?")[0]!))) res.setHeader(k, v);
      // An oversized body is refused from its Content-Length without being read; drain it so the
      // client, still uploading, receives the ResourceExhausted answer instead of a reset.
      if (Number(req.headers["content-length"] ?? 0) > maxBytes) req.resume();
      handler(req, res);
    };
    this.listening = await listen(
      this.opts.host,
      this.opts.port,
      (req, res) => {
        // A connection that keeps being refused waits for its turn (a timer: no CPU spent on it).
        const wait = throttle.delay(req);
        throttle.watch(req, res);
        if (wait > 0) {
          metrics.refusedRequests.inc({ reason: "throttled" });
          setTimeout(() => serve(req, res), wait);
        } else serve(req, res);
      },
      (req, socket, head) => {
        const verdict = policy.check(req.headers);
        if (verdict.ok) return this.consoles.handleUpgrade(req, socket, head);
        metrics.refusedRequests.inc({ reason: "origin" });
        socket.on("error", () => undefined);
        socket.end(`HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n${verdict.message}\n`);
      },
      this.opts.limits,
      this.opts.tls,
    );
    setInstanceSource(() => instancesByPhase(this.ctx.informers));
    if (this.opts.controllers !== false) this.tasks.push(this.leaderLoop(signal));
    this.log.info({ url: this.url, store: this.opts.store.kind }, "server listening");
  }

  async stop(): Promise<void> {
    this.abort.abort();
    this.consoles.close();
    this.ctx.agents.close();
    await this.listening?.close();
    await Promise.allSettled(this.tasks);
  }

  private async leaderLoop(signal: AbortSignal): Promise<void> {
    const lead = async (leaderSignal: AbortSignal) => {
      this.isLeader = true;
      metrics.leader.set(1);
      this.log.info("leading: running the scheduler and controllers");
      try {
        await Promise.all([
          new PlacementController(this.ctx, this.ctx.algorithm).run(leaderSignal),
          new GcController(this.ctx).run(leaderSignal),
          new NodeController(this.ctx).run(leaderSignal),
          new HaController(this.ctx, this.opts.haGraceMs).run(leaderSignal),
          new DrainController(this.ctx).run(leaderSignal),
          new TokenGc(this.ctx.store, this.ctx.informers.apiTokens, this.log.child({ component: "token-gc" })).run(leaderSignal),
        ]);
      } finally {
        this.isLeader = false;
        metrics.leader.set(0);
        if (!signal.aborted) this.log.warn("leadership lost: controllers stopped");
      }
    };
    try {
      if (this.opts.leadership) await this.opts.leadership.run(signal, lead);
      else await lead(signal);
    } catch (e) {
      if (!signal.aborted) {
        this.health.controllers = e instanceof Error ? e.message : String(e);
        this.log.error({ err: e }, "leader loop failed");
      }
    }
  }

  get leading(): boolean {
    return this.isLeader;
  }

  /** Errors leave the API as Connect codes only; store trouble is Unavailable, not Unknown. */
  private edge: Interceptor = (next) => async (req) => {
    const labels = { service: req.service.typeName, method: req.method.name };
    const end = req.stream ? undefined : metrics.apiLatency.startTimer(labels);
    try {
      const res = req.stream ? await next(req) : await withDeadline(next, req, this.opts.unaryTimeoutMs ?? DEFAULT_UNARY_TIMEOUT_MS);
      metrics.apiRequests.inc({ ...labels, code: "ok" });
      // No answer carries a secret environment value, whichever method sends instances.
      const output = req.method.output;
      if (!res.stream) return { ...res, message: redact(output, res.message) };
      const messages = res.message;
      return {
        ...res,
        message: (async function* () {
          for await (const m of messages) yield redact(output, m);
        })(),
      };
    } catch (e) {
      let err: ConnectError;
      // A client that hung up (a watch closed, a browser tab gone) is not the server's failure.
      if (req.signal.aborted && !(e instanceof ConnectError)) err = new ConnectError("the client went away", Code.Canceled);
      else if (e instanceof StoreUnavailableError) err = new ConnectError(`store unavailable: ${e.message}`, Code.Unavailable);
      else if (e instanceof StoreError) err = new ConnectError(`store error: ${e.message}`, Code.Internal);
      else err = ConnectError.from(e);
      if (err.code === Code.Internal || err.code === Code.Unknown) this.log.error({ err: e, ...labels }, "request failed");
      metrics.apiRequests.inc({ ...labels, code: Code[err.code] ?? String(err.code) });
      throw err;
    } finally {
      end?.();
    }
  };

  private async serveOther(...[req, res]: Parameters<NodeHandlerFn>): Promise<void> {
    const path = (req.url ?? "/").split("?")[0];
    if (path === "/metrics") {
      if (this.authorizer) {
        const d = await this.authorizer
          .authenticate(req.headers.authorization, identityOfPeer(tlsPeer(req.socket)))
          .then((caller) => this.authorizer!.decide(caller, METRICS_RULE, "/metrics"))
          .catch((e: unknown) => ({ allowed: false as const, code: Code.Unauthenticated, message: ConnectError.from(e).rawMessage }));
        if (!d.allowed) {
          res.writeHead(d.code === Code.Unauthenticated ? 401 : 403, { "content-type": "text/plain" });
          res.end(`${d.message}\n`);
          return;
        }
      }
      res.writeHead(200, { "content-type": registry.contentType });
      res.end(await registry.metrics());
      return;
    }
    if (path === "/healthz") {
      try {
        await this.opts.store.ping({ signal: AbortSignal.timeout(3000) });
        res.writeHead(200, { "content-type": "text/plain" });
        res.end(`ok ${this.opts.controllers === false ? "api-only" : this.isLeader ? "leader" : "follower"}\n`);
      } catch (e) {
        res.writeHead(503, { "content-type": "text/plain" });
        res.end(`store unavailable: ${e instanceof Error ? e.message : String(e)}\n`);
      }
      return;
    }
    if (this.opts.fallback) return this.opts.fallback(req, res);
    res.writeHead(404, { "content-type": "text/plain" });
    res.end("not found\n");
  }
}

/**
 * Runs a unary call under the server's deadline: the caller gets DeadlineExceeded when it passes,
 * even if the handler is stuck, so no unary call holds a client or a stream slot forever. (The
 * handler's own signal is Connect's and cannot be aborted from here; handlers bound their store
 * calls themselves.)
 */
async function withDeadline(next: Parameters<Interceptor>[0], req: Parameters<Parameters<Interceptor>[0]>[0], ms: number) {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new ConnectError(`the call took longer than the server's limit of ${Math.round(ms / 1000)} s`, Code.DeadlineExceeded)),
      ms,
    );
  });
  try {
    return await Promise.race([next(req), expired]);
  } finally {
    clearTimeout(timer);
  }
}

/** With access control off (`access: "none"`): every call acts with every right. */
const unrestricted: Interceptor = (next) => (req) => {
  req.contextValues.set(callerKey, UNRESTRICTED);
  return next(req);
};
