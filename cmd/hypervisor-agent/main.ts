#!/usr/bin/env node
// hypervisor-agent entry point: settings (file, environment, flags) → etcd store + drivers →
// Agent, until SIGTERM/SIGINT. Exit codes: 0 clean stop, 1 runtime failure, 2 bad settings.
import { Agent, agentSchema, buildDrivers, defaultNodeName } from "../../internal/agent/index.js";
import { etcdOptions, openEtcdStore, waitForStore } from "../../pkg/cluster/etcd/index.js";
import type { Driver } from "../../pkg/compute/driver/index.js";
import { ConfigError, loadConfig, usage } from "../../pkg/config/index.js";
import { logger } from "../../pkg/log/index.js";

const controller = new AbortController();
const onSignal = (): void => {
  if (controller.signal.aborted) process.exit(130); // a second signal: give up at once
  controller.abort();
};
process.on("SIGINT", onSignal);
process.on("SIGTERM", onSignal);

process.exitCode = await main(process.argv.slice(2));
process.off("SIGINT", onSignal);
process.off("SIGTERM", onSignal);

async function main(argv: string[]): Promise<number> {
  let loaded;
  let drivers: Driver[];
  try {
    loaded = await loadConfig(agentSchema, { argv });
    if (loaded.help) {
      process.stdout.write(usage(agentSchema, "hypervisor-agent", "Runs the instances the cluster assigns to this node.") + "\n");
      return 0;
    }
    const c = loaded.config;
    drivers = buildDrivers(c.drivers, c.dataDir, { vcpus: c.capacityVcpus || undefined, memoryMiB: c.capacityMemoryMib || undefined });
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    process.stderr.write(`hypervisor-agent: ${e.message}\n`);
    return 2;
  }
  const c = loaded.config;
  c.nodeName ||= defaultNodeName();
  const log = logger("agent", { node: c.nodeName });
  const signal = controller.signal;

  const store = await openEtcdStore(etcdOptions(c));
  try {
    if (!(await waitForStore(store, c.etcdEndpoints, log, signal))) return 0;
    const agent = new Agent({
      store,
      nodeName: c.nodeName,
      drivers,
      labels: c.label,
      heartbeatTtlSeconds: c.heartbeatTtl,
      dataDir: c.dataDir,
      logger: log,
      workers: c.workers,
      resyncMs: c.resyncSeconds * 1000,
      capacity: { vcpus: c.capacityVcpus, memoryMiB: c.capacityMemoryMib, diskGiB: c.capacityDiskGib },
      address: c.address,
    });
    try {
      await agent.start(signal);
    } catch (e) {
      if (signal.aborted) return 0;
      log.error({ err: e }, "agent failed to start");
      return 1;
    }
    log.info({ config: loaded.file ?? "(none)", drivers: c.drivers, etcd: c.etcdEndpoints }, "agent running");
    await new Promise<void>((resolve) => (signal.aborted ? resolve() : signal.addEventListener("abort", () => resolve(), { once: true })));
    log.info("stopping; instances keep running");
    await agent.stop();
    return 0;
  } finally {
    for (const d of drivers) await d.close().catch(() => undefined);
    await store.close();
  }
}
