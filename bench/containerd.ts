/*
 * make bench (containers): the containerd driver through the whole control plane against `ctr`
 * on the same containerd, same image and command, in the same run.
 *
 *   create → Running   CreateInstance (Connect) → scheduled → agent → container + task running,
 *                      seen by the server's informer   vs   `ctr run -d IMAGE ID sleep 3600`
 *   N × /bin/true      create → Stopped (exit 0) → delete, one after another
 *                      vs   `ctr run --rm IMAGE ID /bin/true`, one after another
 *
 * Rounds of the first alternate ours/ctr so drift on a shared machine hits both alike; the
 * figures are ratios of medians (first) and of totals (second). BENCH_CTR_ROUNDS (default 9) and
 * BENCH_CTR_SEQUENTIAL (default 100) set the sizes.
 */
import { execFile } from "node:child_process";
import { setMaxListeners } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { InstanceService, Phase, RestartPolicy } from "../api/gen/hypervisor/v1/instance_pb.js";
import { Agent, buildDrivers, DRIVER_DEFAULTS } from "../internal/agent/index.js";
import { Server } from "../internal/server/server.js";
import { openEtcdStore } from "../pkg/cluster/etcd/index.js";
import { keys } from "../pkg/cluster/state/index.js";
import { ContainerdClient } from "../pkg/compute/containerd/index.js";
import { hasImages } from "../pkg/compute/driver/index.js";
import { busyboxImage, BUSYBOX_REF, ensureContainerd } from "../test/support/containerd.js";
import { startEtcd } from "../test/support/etcd.js";
import { envInt, median, waitUntil } from "./util.js";

const run = promisify(execFile);
const ROUNDS = envInt("BENCH_CTR_ROUNDS", 9);
const SEQUENTIAL = envInt("BENCH_CTR_SEQUENTIAL", 100);
const NS = `hvbench-${process.pid}`;
const NODE = `bench-ctr-${process.pid}`;
const MEMORY_MIB = 64;

const socket = await ensureContainerd();
const image = await busyboxImage();
const ctr = (...args: string[]) => run("ctr", ["--address", socket, "-n", NS, ...args]);
const dir = await mkdtemp(join(tmpdir(), "hv-bench-ctr-"));
const etcd = await startEtcd();
const store = await openEtcdStore({ endpoints: [etcd.endpoint] });
const ac = new AbortController();
setMaxListeners(32, ac.signal);
const dataDir = join(dir, "agent");
const drivers = buildDrivers(
  ["containerd"],
  dataDir,
  {},
  { ...DRIVER_DEFAULTS, nodeName: NODE, containerdSocket: socket, containerdNamespace: NS },
);
let server: Server | undefined;
let agent: Agent | undefined;
try {
  const driver = drivers[0]!;
  if (!hasImages(driver)) throw new Error("the containerd driver keeps no images?");
  await driver.importImage(image.file);
  server = new Server({ store, host: "127.0.0.1", port: 0, version: "bench", access: "none" });
  await server.start();
  agent = new Agent({
    store,
    nodeName: NODE,
    drivers,
    dataDir,
    heartbeatTtlSeconds: 30,
    capacity: { vcpus: 64, memoryMiB: 64 * 1024, diskGiB: 100 },
  });
  await agent.start(ac.signal);
  const { statuses, instances, nodes } = server.ctx.informers;
  await waitUntil(() => nodes.items.size === 1);
  const api = createClient(InstanceService, createConnectTransport({ baseUrl: server.url, httpVersion: "2" }));

  /** Create through the API; resolves with ms until the status shows `phase`. Then deletes it. */
  const ours = async (name: string, command: string[], phase: Phase): Promise<number> => {
    let reachedAt = 0;
    const off = statuses.subscribe((ev) => {
      if (ev.value?.name === name && ev.value.status?.phase === phase && !reachedAt) reachedAt = performance.now();
    });
    const t0 = performance.now();
    await api.createInstance({
      name,
      spec: {
        driver: "containerd",
        vcpus: 1,
        memoryMib: BigInt(MEMORY_MIB),
        image: BUSYBOX_REF,
        command,
        restartPolicy: RestartPolicy.NEVER,
      },
    });
    await waitUntil(() => reachedAt > 0, 120_000, 1);
    off();
    const ms = reachedAt - t0;
    await api.deleteInstance({ name });
    await waitUntil(
      () =>
        !instances.items.has(keys.instance(`default/${name}`)) &&
        ![...statuses.items.keys()].some((k) => k.endsWith(`/status/default/${name}`)),
      120_000,
      2,
    );
    return ms;
  };

  const ctrDetached = async (id: string): Promise<number> => {
    const t0 = performance.now();
    await ctr("run", "-d", "--memory-limit", String(MEMORY_MIB << 20), BUSYBOX_REF, id, "sleep", "3600");
    const ms = performance.now() - t0;
    await ctr("task", "kill", "-s", "SIGKILL", id);
    await waitFor(
      async () => (await ctr("task", "ls")).stdout.includes(`${id} `) === false || /STOPPED/.test((await ctr("task", "ls")).stdout),
    );
    await ctr("task", "delete", id).catch(() => undefined);
    await ctr("container", "delete", id);
    return ms;
  };

  // Warm-up, unmeasured: first shim start, page cache, the agent's connection.
  await ours(`warm-${process.pid}`, ["sleep", "3600"], Phase.RUNNING);
  await ctrDetached(`warm-ctr-${process.pid}`);
  const a: number[] = [];
  const b: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    const mine = () => ours(`run-${i}`, ["sleep", "3600"], Phase.RUNNING).then((ms) => a.push(ms));
    const theirs = () => ctrDetached(`ctr-${i}`).then((ms) => b.push(ms));
    if (i % 2) {
      await mine();
      await theirs();
    } else {
      await theirs();
      await mine();
    }
  }

  let t = performance.now();
  for (let i = 0; i < SEQUENTIAL; i++) await ours(`true-${i}`, ["/bin/true"], Phase.STOPPED);
  const oursTotal = performance.now() - t;
  t = performance.now();
  for (let i = 0; i < SEQUENTIAL; i++) await ctr("run", "--rm", BUSYBOX_REF, `ctr-true-${i}`, "/bin/true");
  const ctrTotal = performance.now() - t;

  const fmt = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(" ");
  console.log(
    `hypervisor bench (containers): containerd ${(await new ContainerdClient({ socketPath: socket, namespace: NS }).version()).version}, busybox image, ${ROUNDS} rounds`,
  );
  console.log(`ctr run -d (baseline)                 ${median(b).toFixed(0).padStart(6)} ms median   [${fmt(b)}]`);
  console.log(`create → Running through the API      ${median(a).toFixed(0).padStart(6)} ms median   [${fmt(a)}]`);
  console.log(`ratio to ctr run -d                   ${(median(a) / median(b)).toFixed(2)}× (goal: at most 1.15×)`);
  console.log(
    `${SEQUENTIAL} × ctr run --rm /bin/true        ${(ctrTotal / 1000).toFixed(1).padStart(6)} s (${(ctrTotal / SEQUENTIAL).toFixed(0)} ms each)`,
  );
  console.log(
    `${SEQUENTIAL} × create → Stopped → delete     ${(oursTotal / 1000).toFixed(1).padStart(6)} s (${(oursTotal / SEQUENTIAL).toFixed(0)} ms each)`,
  );
  console.log(`ratio to ctr run --rm                 ${(oursTotal / ctrTotal).toFixed(2)}×`);
} finally {
  await server?.stop();
  ac.abort();
  await agent?.stop().catch(() => undefined);
  for (const d of drivers) {
    for (const i of await d.list().catch(() => [])) await d.destroy(i.name).catch(() => undefined);
    await d.close().catch(() => undefined);
  }
  const c = new ContainerdClient({ socketPath: socket, namespace: NS });
  for (const x of (await c.containers.list({}).catch(() => ({ containers: [] }))).containers) {
    await c.tasks.kill({ containerId: x.id, signal: 9, all: true }).catch(() => undefined);
    await c.tasks.delete({ containerId: x.id }).catch(() => undefined);
    await c.containers.delete({ id: x.id }).catch(() => undefined);
  }
  for (const i of (await c.images.list({}).catch(() => ({ images: [] }))).images)
    await c.images.delete({ name: i.name, sync: true }).catch(() => undefined);
  await c.namespaces.delete({ name: NS }).catch(() => undefined);
  c.close();
  await store.close();
  await etcd.stop();
  await rm(dir, { recursive: true, force: true });
}

async function waitFor(cond: () => Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error("bench: timed out");
    await new Promise((r) => setTimeout(r, 20));
  }
}
