/*
 * make bench: the control plane's throughput on a real etcd, as a ratio to raw etcd puts measured
 * in the same run on the same etcd through the same client (bench/etcd-baseline.ts).
 *
 *   baseline   raw puts/s, 256-byte values, BENCH_CONCURRENCY writers
 *   placements instances created through the API (Connect over HTTP) → Scheduled, per second
 *   running    the same instances → Running on BENCH_NODES in-process agents (mock driver)
 *
 * Every instance costs at least four writes (create, placement txn, Creating, Running), so a
 * running/s ratio near 0.25 means the control plane adds almost nothing to etcd's own cost.
 * Sizes: BENCH_INSTANCES (default 1000), BENCH_NODES (100), BENCH_CONCURRENCY (32).
 */
import { setMaxListeners } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { InstanceService, Phase } from "../api/gen/hypervisor/v1/instance_pb.js";
import { Agent, buildDrivers } from "../internal/agent/index.js";
import { Server } from "../internal/server/server.js";
import { openEtcdStore } from "../pkg/cluster/etcd/index.js";
import { startEtcd } from "../test/support/etcd.js";
import { measurePuts } from "./etcd-baseline.js";
import { envInt, waitUntil } from "./util.js";

const INSTANCES = envInt("BENCH_INSTANCES", 1000);
const NODES = envInt("BENCH_NODES", 100);
const CONCURRENCY = envInt("BENCH_CONCURRENCY", 32);

const dir = await mkdtemp(join(tmpdir(), "hv-bench-"));
const etcd = await startEtcd();
const store = await openEtcdStore({ endpoints: [etcd.endpoint] });
const ac = new AbortController();
setMaxListeners(NODES * 4, ac.signal); // every in-process agent listens on it
const agents: Agent[] = [];
let server: Server | undefined;
try {
  await store.ping();
  // Warm the connection and etcd before measuring anything.
  await measurePuts(store, 200, CONCURRENCY, "/bench/warm/");
  const raw = await measurePuts(store, Math.max(INSTANCES * 2, 2000), CONCURRENCY);

  server = new Server({ store, host: "127.0.0.1", port: 0, version: "bench", access: "none" });
  await server.start();
  for (let i = 0; i < NODES; i++) {
    const dataDir = join(dir, `node-${i}`);
    const agent = new Agent({
      store,
      nodeName: `node-${i}`,
      drivers: buildDrivers(["mock"], dataDir),
      dataDir,
      // Room for every instance on any node: the bench measures throughput, not packing.
      capacity: { vcpus: INSTANCES, memoryMiB: INSTANCES * 256, diskGiB: 1000 },
      heartbeatTtlSeconds: 30,
    });
    await agent.start(ac.signal);
    agents.push(agent);
  }
  const { instances, statuses } = server.ctx.informers;
  await waitUntil(() => server!.ctx.informers.nodes.items.size === NODES && server!.ctx.informers.alive.items.size === NODES);

  // Count from the server's own informers: no polling load on the API or etcd.
  const scheduled = new Set<string>();
  const running = new Set<string>();
  let scheduledAt = 0;
  let runningAt = 0;
  const offA = instances.subscribe((ev) => {
    if (ev.value?.status?.node) scheduled.add(ev.key);
    if (scheduled.size === INSTANCES && !scheduledAt) scheduledAt = performance.now();
  });
  const offB = statuses.subscribe((ev) => {
    if (ev.value?.status?.phase === Phase.RUNNING) running.add(ev.key);
    if (running.size === INSTANCES && !runningAt) runningAt = performance.now();
  });

  const api = createClient(InstanceService, createConnectTransport({ baseUrl: server.url, httpVersion: "2" }));
  const started = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      for (let i = next++; i < INSTANCES; i = next++)
        await api.createInstance({ name: `bench-${i}`, spec: { driver: "mock", vcpus: 1, memoryMib: 256n } });
    }),
  );
  const createdAt = performance.now();
  await waitUntil(() => runningAt > 0 && scheduledAt > 0, 600_000);
  offA();
  offB();

  const perSec = (ms: number) => INSTANCES / ((ms - started) / 1000);
  const row = (what: string, rate: number) =>
    console.log(`${what.padEnd(34)} ${rate.toFixed(0).padStart(8)}/s   ratio to raw etcd puts ${(rate / raw.perSecond).toFixed(3)}`);
  console.log(`hypervisor bench: ${INSTANCES} instances, ${NODES} agents (mock driver), etcd ${etcd.endpoint}, concurrency ${CONCURRENCY}`);
  row("raw etcd puts (baseline)", raw.perSecond);
  row("creates accepted by the API", perSec(createdAt));
  row("placements (create → Scheduled)", perSec(scheduledAt));
  row("create → Running", perSec(runningAt));
} finally {
  await server?.stop(); // first, so it does not report the agents' departure
  ac.abort();
  for (const a of agents) await a.stop().catch(() => undefined);
  await store.close();
  await etcd.stop();
  await rm(dir, { recursive: true, force: true });
}
