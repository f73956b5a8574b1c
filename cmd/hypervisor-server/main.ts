#!/usr/bin/env node
// hypervisor-server entry point: settings (file, environment, flags) → store (etcd or embedded) →
// Server (API on one port; scheduler and controllers while leader), plus with --dev an agent in
// the same process. Until SIGTERM/SIGINT. Exit codes: 0 clean stop, 1 runtime failure, 2 bad settings.
import { randomUUID } from "node:crypto";
import { mkdir, readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { Agent, buildDrivers, defaultNodeName, DRIVER_DEFAULTS } from "../../internal/agent/index.js";
import { checkServerConfig, oidcSettingsOf, serverSchema } from "../../internal/server/config.js";
import { initEtcdPki, serverTls } from "../../internal/server/tls-setup.js";
import { ADMIN_TOKEN_FILE, AuditLog, OidcVerifier, type AuditLevel } from "../../internal/server/access/index.js";
import { configLocation, saveContext } from "../../internal/ctl/config-file.js";
import { Server } from "../../internal/server/server.js";
import { staticUi } from "../../internal/server/static.js";
import type { Driver } from "../../pkg/compute/driver/index.js";
import { Election } from "../../pkg/cluster/election/index.js";
import {
  enableAuth,
  type EtcdStore,
  etcdOptions,
  grantNode,
  openEtcdStore,
  revokeNode,
  waitForStore,
} from "../../pkg/cluster/etcd/index.js";
import { openEmbeddedStore, type Store } from "../../pkg/cluster/store/index.js";
import type { Loaded } from "../../pkg/config/index.js";
import { runDaemon, untilAborted } from "../../pkg/daemon/index.js";
import { logger } from "../../pkg/log/index.js";
import { packageVersion } from "../../pkg/version/index.js";

// `hypervisor-server init [settings]`: the cluster CA and etcd's certificates, before etcd first
// starts with TLS; then exits. Otherwise the server runs.
if (process.argv[2] === "init")
  await runDaemon(
    {
      name: "hypervisor-server init",
      about:
        "Makes the cluster CA in pki-dir (if missing) and, in pki-dir/etcd, the certificates etcd serves TLS with and the servers' etcd identity (hypervisor-server), then exits.",
      schema: serverSchema,
      run: init,
    },
    process.argv.slice(3),
  );
else
  await runDaemon({
    name: "hypervisor-server",
    about: "Runs the cluster's API, scheduler and controllers.",
    schema: serverSchema,
    run,
  });

async function init(loaded: Loaded<typeof serverSchema>): Promise<number> {
  const c = loaded.config;
  const pkiDir = resolve(c.pkiDir || join(c.dataDir, "pki"));
  const hosts = c.etcdEndpoints.map((e) => new URL(e).hostname.replace(/^\[(.*)\]$/, "$1"));
  const etcd = await initEtcdPki(pkiDir, hosts);
  const say = (line: string) => process.stdout.write(`${line}\n`);
  say(`cluster CA: ${join(pkiDir, "ca.crt")} (its key ca.key beside it: servers only)`);
  say(`etcd: ${etcd.dir} (${etcd.issued.length > 0 ? `issued ${etcd.issued.join(", ")}` : "current, kept"})`);
  say(`  etcd:   scripts/start-etcd.sh PORT DATA-DIR ${etcd.dir}`);
  say(`  server: etcd-ca-file ${join(etcd.dir, "ca.crt")}, etcd-cert-file ${join(etcd.dir, "hypervisor-server.crt")},`);
  say(`          etcd-key-file ${join(etcd.dir, "hypervisor-server.key")}, etcd-enable-auth true`);
  return 0;
}

async function run(loaded: Loaded<typeof serverSchema>, signal: AbortSignal): Promise<number> {
  const listen = checkServerConfig(loaded.config);
  const c = loaded.config;
  const serverId = c.serverId || randomUUID().slice(0, 8);
  const oidc = oidcSettingsOf(c);
  const log = logger("server", { server: serverId });
  const dataDir = resolve(c.dataDir);

  let store: Store;
  let etcdStore: EtcdStore | undefined;
  if (c.store === "etcd") {
    const etcd = await openEtcdStore(etcdOptions(c));
    etcdStore = etcd;
    if (!(await waitForStore(etcd, c.etcdEndpoints, log, signal))) {
      await etcd.close();
      return 0;
    }
    if (c.etcdEnableAuth) {
      try {
        await enableAuth(etcd);
        log.info("etcd auth on: servers are hypervisor-server, each joined node node:<name> with its own keys only");
      } catch (e) {
        log.error({ err: e }, "cannot turn etcd auth on (this server's etcd identity must be root or hypervisor-server)");
        await etcd.close();
        return 1;
      }
    }
    store = etcd;
  } else {
    try {
      // 0711: the store below it is 0700 itself; a --dev agent's VM disks below it must be reachable by QEMU.
      await mkdir(dataDir, { recursive: true, mode: 0o711 });
      store = await openEmbeddedStore(join(dataDir, "store"));
    } catch (e) {
      log.error({ err: e, dataDir }, "cannot open the embedded store");
      return 1;
    }
  }

  let server: Server | undefined;
  let agent: Agent | undefined;
  const devNode = c.nodeName || defaultNodeName() || "dev";
  const pkiDir = resolve(c.pkiDir || join(dataDir, "pki"));
  let tls: Awaited<ReturnType<typeof serverTls>> | undefined;
  if (c.tls) {
    try {
      tls = await serverTls({ pkiDir, name: defaultNodeName() || "server", listenHost: listen.host, names: c.tlsNames, signal });
    } catch (e) {
      log.error({ err: e, pkiDir }, "cannot set up the cluster CA or this server's certificate");
      await store.close();
      return 1;
    }
  }
  let drivers: Driver[] = [];
  if (c.dev) {
    const imageDir = resolve(c.libvirtImageDir || join(dataDir, "images"));
    await mkdir(imageDir, { recursive: true });
    drivers = buildDrivers(
      c.devDrivers,
      join(dataDir, "agent"),
      {},
      {
        ...DRIVER_DEFAULTS,
        nodeName: devNode,
        libvirtSocket: c.libvirtSocket,
        containerdSocket: c.containerdSocket,
        libvirtImageDir: imageDir,
        allowHostNetwork: c.allowHostNetwork,
        allowedBridges: c.allowedBridges,
        containerdPidsLimit: c.containerdPidsLimit,
      },
    );
  }
  try {
    server = new Server({
      store,
      host: listen.host,
      port: listen.port,
      version: packageVersion(),
      algorithm: listen.algorithm,
      consoleTicketTtlMs: c.consoleTicketTtl * 1000,
      consoleLocalDirect: c.consoleLocalDirect,
      ...(tls
        ? {
            tls: tls.tls,
            identity: {
              ca: tls.ca,
              nodeCertTtlSeconds: c.nodeCertTtl,
              // On etcd, a joined node gets its etcd user and role (its own keys only), and loses them when revoked.
              ...(etcdStore ? { onJoin: (n: string) => grantNode(etcdStore, n), onRevoke: (n: string) => revokeNode(etcdStore, n) } : {}),
            },
          }
        : {}),
      limits: {
        headerTimeoutMs: c.headerTimeout * 1000,
        requestTimeoutMs: c.requestReadTimeout * 1000,
        idleTimeoutMs: c.idleTimeout * 1000,
        pingIntervalMs: c.keepaliveInterval * 1000,
        pingTimeoutMs: c.keepaliveTimeout * 1000,
        maxConcurrentStreams: c.maxConcurrentStreams,
      },
      unaryTimeoutMs: c.unaryTimeout * 1000,
      maxImageBytes: c.maxImageBytes,
      refusals: { burst: c.refusalBurst, perSecond: c.refusalsPerSecond },
      clientLimits: {
        maxWatches: c.maxWatchesPerClient,
        maxLogFollows: c.maxLogFollowsPerClient,
        ticketBurst: c.consoleTicketBurst,
        ticketsPerMinute: c.consoleTicketsPerMinute,
        watchBacklog: c.watchBacklog,
      },
      origins: {
        allowedHosts: c.allowedHosts,
        allowedOrigins: c.allowedOrigins,
        desktopFrameAncestors: c.desktopFrameAncestors,
        // The UI's OIDC sign-in talks to the issuer from the page.
        connectSources: c.oidcIssuer ? [new URL(c.oidcIssuer).origin] : [],
      },
      controllers: c.controllers,
      haGraceMs: c.haGracePeriod * 1000,
      // The web UI (dist/ui, built by make build) for every path the API does not answer.
      fallback: staticUi(),
      serverId,
      log,
      // Every call checked against tokens, certificates and roles; the first start's admin token
      // goes beside the CA key (servers only).
      ...(c.dangerouslyDisableAccess
        ? { access: "none" as const }
        : {
            access: { bootstrapDir: pkiDir },
            // OIDC users log in with their ID token; their role bindings say what they may.
            ...(oidc
              ? {
                  oidc: new OidcVerifier(oidc),
                  auth: { oidcIssuer: oidc.issuer, oidcClientId: oidc.clientId, oidcScopes: oidc.scopes },
                }
              : {}),
            audit: new AuditLog({
              dir: resolve(c.auditDir || join(dataDir, "audit")),
              level: c.auditLevel as AuditLevel,
              maxFileBytes: c.auditMaxFileMib * 1024 * 1024,
              maxFiles: c.auditMaxFiles,
              log: log.child({ component: "audit" }),
            }),
          }),
      // Replicas share etcd and elect one leader; the embedded store has one process by construction.
      ...(c.store === "etcd" ? { leadership: new Election(store, "scheduler", serverId) } : {}),
    });
    try {
      await server.start();
    } catch (e) {
      log.error({ err: e, listen: c.listen }, "server failed to start");
      return 1;
    }
    if (c.dev) {
      agent = new Agent({
        store,
        nodeName: devNode,
        drivers,
        heartbeatTtlSeconds: c.heartbeatTtl,
        dataDir: join(dataDir, "agent"),
        logger: logger("agent", { node: devNode }),
      });
      await agent.start(signal);
      // The quick start needs no flags: ctl finds this server and its CA in its own config file.
      const adminToken = (await readFile(join(pkiDir, ADMIN_TOKEN_FILE), "utf8").catch(() => "")).trim();
      const ctlConfig = tls ? writeDevContext(server.url, join(pkiDir, "ca.crt"), adminToken, c.writeCtlConfig) : undefined;
      process.stdout.write(
        [
          "",
          `hypervisor ${packageVersion()} is running on this machine (--dev: server and agent in one process)`,
          `  API      ${server.url}   (gRPC, gRPC-Web and Connect)`,
          `  UI       ${server.url}/   (log in with the token in ${join(pkiDir, ADMIN_TOKEN_FILE)})`,
          `  metrics  ${server.url}/metrics`,
          `  state    ${dataDir}`,
          ctlConfig
            ? `  try      npx hypervisor-ctl node list   (context "dev" in ${ctlConfig})`
            : `  try      HYPERVISOR_TOKEN=$(cat ${join(pkiDir, ADMIN_TOKEN_FILE)}) npx hypervisor-ctl --server ${server.url}${tls ? ` --ca-file ${join(pkiDir, "ca.crt")}` : ""} node list`,
          `  stop     Ctrl-C (instances keep their state; the next start adopts them)`,
          "",
          "",
        ].join("\n"),
      );
    }
    log.info({ config: loaded.file ?? "(none)", store: c.store, dev: c.dev }, "server running");
    await untilAborted(signal);
    log.info("stopping");
    // Whatever clients, drivers or the store do, a stop takes at most shutdown-timeout.
    setTimeout(() => {
      log.error({ shutdownTimeout: c.shutdownTimeout }, "clean stop took too long: exiting anyway");
      process.exit(1);
    }, c.shutdownTimeout * 1000).unref();
    return 0;
  } catch (e) {
    if (signal.aborted) return 0;
    log.error({ err: e }, "server failed");
    return 1;
  } finally {
    await agent?.stop().catch((e: unknown) => log.warn({ err: e }, "agent stop failed"));
    await server?.stop().catch((e: unknown) => log.warn({ err: e }, "server stop failed"));
    for (const d of drivers) await d.close().catch(() => undefined);
    await store.close();
  }
}

/**
 * Writes (and makes current) the ctl context "dev" for this server: its URL, the CA that signed
 * its certificate and the bootstrap admin token (the file is 0600). Returns the file, or undefined
 * when there is none to write (no home, or write-ctl-config false); a failure is told, never fatal.
 */
function writeDevContext(url: string, caFile: string, token: string, enabled: boolean): string | undefined {
  if (!enabled) return undefined;
  const { path } = configLocation(undefined, process.env);
  if (!path) return undefined;
  try {
    saveContext(path, { name: "dev", server: url, caFile, ...(token ? { credentials: { token } } : {}) }, { makeCurrent: true });
    return path;
  } catch (e) {
    logger("server").warn({ err: e, path }, "cannot write the ctl configuration");
    return undefined;
  }
}
