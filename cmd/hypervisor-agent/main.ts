#!/usr/bin/env node
// hypervisor-agent entry point: settings (file, environment, flags) → etcd store + drivers →
// Agent, until SIGTERM/SIGINT. Exit codes: 0 clean stop, 1 runtime failure, 2 bad settings.
import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { Agent, agentSchema, buildDrivers, deadlinesOf, defaultNodeName, parseTaints } from "../../internal/agent/index.js";
import { ensureCredentials, JoinRefusedError } from "../../internal/agent/join.js";
import { CertRenewer, lookupThroughServer } from "../../internal/agent/renew.js";
import type { EndpointTls } from "../../internal/agent/endpoint.js";
import { etcdOptions, openEtcdStore, waitForStore, type EtcdStore } from "../../pkg/cluster/etcd/index.js";
import { ConfigError, type Loaded } from "../../pkg/config/index.js";
import { checkName } from "../../pkg/validation/index.js";
import { runDaemon, untilAborted } from "../../pkg/daemon/index.js";
import { logger } from "../../pkg/log/index.js";

await runDaemon({
  name: "hypervisor-agent",
  about: "Runs the instances the cluster assigns to this node.",
  schema: agentSchema,
  run,
});

async function run(loaded: Loaded<typeof agentSchema>, signal: AbortSignal): Promise<number> {
  const c = loaded.config;
  const fromHostname = !c.nodeName;
  c.nodeName ||= defaultNodeName();
  // The cluster's one name rule (what the server, certificates and etcd roles take), checked
  // before anything is joined or registered under it.
  const bad = checkName("node-name", c.nodeName);
  if (bad) throw new ConfigError(fromHostname ? `${bad} (it is this machine's hostname: set node-name)` : bad, "node-name");
  const drivers = buildDrivers(
    c.drivers,
    c.dataDir,
    { vcpus: c.capacityVcpus || undefined, memoryMiB: c.capacityMemoryMib || undefined },
    c,
  );
  const log = logger("agent", { node: c.nodeName });

  let endpointTls: EndpointTls | undefined;
  let lookup: ReturnType<typeof lookupThroughServer> | undefined;
  let agent: Agent | undefined;
  /** When the node certificate is also the etcd identity (below), renewals replace it there too. */
  const etcdIdentity: { node: boolean; store?: EtcdStore } = { node: false };
  if (c.server.length > 0) {
    // Joined before anything else: the node's own key and a certificate of the cluster CA.
    const pkiDir = resolve(c.pkiDir || join(c.dataDir, "pki"));
    try {
      const token = c.joinTokenFile ? ((await readFile(c.joinTokenFile, "utf8")).split("\n")[0] ?? "").trim() : c.joinToken;
      const creds = await ensureCredentials({ server: c.server, token, node: c.nodeName, dir: pkiDir, log, signal });
      log.info({ pkiDir, expires: creds.cert.validTo }, "node certificate ready");
      // The agent's endpoint serves mutual TLS with it: only servers of the cluster are served.
      endpointTls = { key: creds.keyPem, cert: creds.certPem, ca: creds.caPem, requestCert: true, serversOnly: true };
      // Renewed at two thirds of its life for as long as the agent runs.
      const renewer = new CertRenewer(creds, {
        server: c.server,
        dir: pkiDir,
        node: c.nodeName,
        log,
        onRenewed: (n) => {
          agent?.reloadEndpointTls(n.keyPem, n.certPem);
          // Open etcd connections keep the old one; the next handshake (etcd restarted, a
          // network blip) presents this, long after the first certificate lapsed.
          if (etcdIdentity.node) etcdIdentity.store?.setClientCertificate(n.certPem, n.keyPem);
        },
      });
      void renewer.run(signal);
      // What it finds unassigned it asks a server about: its etcd role cannot read instances/.
      lookup = lookupThroughServer(c.server, () => renewer.current);
      // With https etcd endpoints and no certificate of its own configured, the node's is its
      // etcd identity (CN node:<name>, the user its confined role is granted to).
      if (!c.etcdCertFile && c.etcdEndpoints.every((e) => e.startsWith("https://"))) {
        c.etcdCaFile ||= join(pkiDir, "ca.crt");
        c.etcdCertFile = join(pkiDir, "node.crt");
        c.etcdKeyFile = join(pkiDir, "node.key");
        etcdIdentity.node = true;
      }
    } catch (e) {
      if (signal.aborted) return 0;
      log.error({ err: e instanceof JoinRefusedError ? e.message : e, server: c.server }, "cannot join the cluster");
      return e instanceof JoinRefusedError ? 2 : 1;
    }
  }

  const store = await openEtcdStore(etcdOptions(c));
  etcdIdentity.store = store;
  try {
    if (!(await waitForStore(store, c.etcdEndpoints, log, signal))) return 0;
    agent = new Agent({
      store,
      nodeName: c.nodeName,
      drivers,
      labels: c.label,
      heartbeatTtlSeconds: c.heartbeatTtl,
      dataDir: c.dataDir,
      logger: log,
      workers: c.workers,
      defaultStopTimeoutMs: c.defaultStopTimeoutSeconds * 1000,
      maxStopTimeoutMs: c.maxStopTimeoutSeconds * 1000,
      deadlines: deadlinesOf(c),
      resyncMs: c.resyncSeconds * 1000,
      capacity: { vcpus: c.capacityVcpus, memoryMiB: c.capacityMemoryMib, diskGiB: c.capacityDiskGib },
      reserved: { vcpus: c.reservedVcpus, memoryMiB: c.reservedMemoryMib, diskGiB: c.reservedDiskGib },
      taints: parseTaints(c.taint),
      address: c.address,
      listen: c.listen,
      ...(endpointTls ? { endpointTls } : {}),
      ...(lookup ? { lookup } : {}),
    });
    try {
      await agent.start(signal);
    } catch (e) {
      if (signal.aborted) return 0;
      log.error({ err: e }, "agent failed to start");
      return 1;
    }
    log.info({ config: loaded.file ?? "(none)", drivers: c.drivers, etcd: c.etcdEndpoints }, "agent running");
    await untilAborted(signal);
    log.info("stopping; instances keep running");
    await agent.stop();
    return 0;
  } finally {
    for (const d of drivers) await d.close().catch(() => undefined);
    await store.close();
  }
}
