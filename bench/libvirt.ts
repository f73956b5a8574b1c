/*
 * make bench (VMs): create → Running of one VM through our API, against `virsh create` of the same
 * domain XML with the same guest, in the same run on the same libvirtd.
 *
 *   ours      CreateInstance (Connect) → scheduled → agent defines + starts the domain → status
 *             Running seen by the server (its informer: no polling)
 *   baseline  `virsh create vm.xml` until it returns (the domain is running)
 *
 * Rounds alternate ours/baseline so drift on a shared machine hits both alike; the figure is the
 * ratio of the medians. Each VM is torn down before the next round starts, and the guest is the
 * test guest (Debian kernel + busybox initramfs; TCG where there is no KVM).
 * BENCH_VM_ROUNDS (default 7) sets the number of rounds.
 */
import { execFile } from "node:child_process";
import { setMaxListeners } from "node:events";
import { chmod, copyFile, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { InstanceService, Phase } from "../api/gen/hypervisor/v1/instance_pb.js";
import { Agent, buildDrivers, DRIVER_DEFAULTS } from "../internal/agent/index.js";
import { Server } from "../internal/server/server.js";
import { openEtcdStore } from "../pkg/cluster/etcd/index.js";
import { buildDomainXml } from "../pkg/compute/libvirt/index.js";
import { startEtcd } from "../test/support/etcd.js";
import { testGuest } from "../test/support/guest.js";
import { ensureLibvirtd } from "../test/support/libvirt.js";
import { median, waitUntil } from "./util.js";

const run = promisify(execFile);
const virsh = (...args: string[]) => run("virsh", ["-c", "qemu:///system", ...args]);
const ROUNDS = Number(process.env.BENCH_VM_ROUNDS ?? 7);
if (!Number.isInteger(ROUNDS) || ROUNDS < 1) throw new Error(`BENCH_VM_ROUNDS: ${process.env.BENCH_VM_ROUNDS} is not a positive integer`);
const MEMORY_MIB = 256;
const NODE = `bench-vm-${process.pid}`;

const socket = await ensureLibvirtd();
const guest = await testGuest();
const dir = await mkdtemp(join(tmpdir(), "hv-bench-vm-"));
await chmod(dir, 0o755); // QEMU (libvirt-qemu) and virtlogd reach the images and logs through it
const images = join(dir, "images");
await mkdir(images, { mode: 0o755 });
await copyFile(guest.kernel, join(images, "vmlinuz"));
await copyFile(guest.initrd, join(images, "initrd.img"));
await mkdir(join(dir, "virsh-logs"), { mode: 0o755 });
// The driver's own domain type choice (kvm where /dev/kvm works), so both sides boot alike.
const { existsSync } = await import("node:fs");
const type = existsSync("/dev/kvm") ? "kvm" : "qemu";

const etcd = await startEtcd();
const store = await openEtcdStore({ endpoints: [etcd.endpoint] });
const ac = new AbortController();
setMaxListeners(32, ac.signal);
const dataDir = join(dir, "agent");
const drivers = buildDrivers(
  ["libvirt"],
  dataDir,
  {},
  { ...DRIVER_DEFAULTS, nodeName: NODE, libvirtSocket: socket, libvirtImageDir: images },
);
let server: Server | undefined;
let agent: Agent | undefined;
const leftovers = new Set<string>();
try {
  server = new Server({ store, host: "127.0.0.1", port: 0, version: "bench", access: "none" });
  await server.start();
  agent = new Agent({ store, nodeName: NODE, drivers, dataDir, heartbeatTtlSeconds: 30 });
  await agent.start(ac.signal);
  const { statuses, nodes } = server.ctx.informers;
  await waitUntil(() => nodes.items.size === 1);
  const api = createClient(InstanceService, createConnectTransport({ baseUrl: server.url, httpVersion: "2" }));

  const ours = async (i: number): Promise<number> => {
    const name = `bvm-${process.pid}-${i}`;
    let runningAt = 0;
    const off = statuses.subscribe((ev) => {
      if (ev.value?.name === name && ev.value.status?.phase === Phase.RUNNING && !runningAt) runningAt = performance.now();
    });
    leftovers.add(`hv-${name}`);
    const t0 = performance.now();
    await api.createInstance({
      name,
      spec: { driver: "libvirt", vcpus: 1, memoryMib: BigInt(MEMORY_MIB), kernel: "vmlinuz", initrd: "initrd.img", cmdline: guest.cmdline },
    });
    await waitUntil(() => runningAt > 0, 300_000, 2);
    off();
    const ms = runningAt - t0;
    await api.deleteInstance({ name });
    await waitUntil(() => !statuses.items.has(name) && !server!.ctx.informers.instances.items.has(name), 300_000);
    await waitGone(`hv-${name}`);
    leftovers.delete(`hv-${name}`);
    return ms;
  };

  const baseline = async (i: number): Promise<number> => {
    const name = `bvv-${process.pid}-${i}`;
    // What our driver defines for the same spec, under another owner so the agent ignores it.
    const xml = buildDomainXml({
      name,
      uid: `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`,
      owner: "bench-virsh",
      labels: {},
      type,
      vcpus: 1,
      memoryMiB: MEMORY_MIB,
      kernel: join(images, "vmlinuz"),
      initrd: join(images, "initrd.img"),
      cmdline: guest.cmdline,
      serialLog: join(dir, "virsh-logs", `${name}.log`),
      network: { mode: "user" },
      balloonStatsPeriod: 2,
    });
    const file = join(dir, `${name}.xml`);
    await writeFile(file, xml);
    leftovers.add(`hv-${name}`);
    const t0 = performance.now();
    await virsh("create", file);
    const ms = performance.now() - t0;
    await virsh("destroy", `hv-${name}`); // transient: gone once destroyed
    await waitGone(`hv-${name}`);
    leftovers.delete(`hv-${name}`);
    return ms;
  };

  // One of each first, unmeasured: page cache, QEMU's first start, the agent's connection.
  await ours(0);
  await baseline(0);
  const a: number[] = [];
  const b: number[] = [];
  for (let i = 1; i <= ROUNDS; i++) {
    if (i % 2) {
      a.push(await ours(i));
      b.push(await baseline(i));
    } else {
      b.push(await baseline(i));
      a.push(await ours(i));
    }
  }
  const ma = median(a);
  const mb = median(b);
  const fmt = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(" ");
  console.log(`hypervisor bench (VMs): ${ROUNDS} rounds, domain type ${type}, libvirtd ${socket}, ${MEMORY_MIB} MiB test guest`);
  console.log(`virsh create (baseline)            ${mb.toFixed(0).padStart(6)} ms median   [${fmt(b)}]`);
  console.log(`create → Running through the API   ${ma.toFixed(0).padStart(6)} ms median   [${fmt(a)}]`);
  console.log(`ratio to virsh create              ${(ma / mb).toFixed(2)}× (goal: at most 1.15×)`);
} finally {
  await server?.stop();
  ac.abort();
  await agent?.stop().catch(() => undefined);
  for (const d of leftovers) {
    await virsh("destroy", d).catch(() => undefined);
    await virsh("undefine", d).catch(() => undefined);
  }
  for (const d of drivers) await d.close().catch(() => undefined);
  await store.close();
  await etcd.stop();
  await rm(dir, { recursive: true, force: true });
}

async function waitGone(domain: string): Promise<void> {
  for (let i = 0; i < 600; i++) {
    if (
      await virsh("dominfo", domain).then(
        () => false,
        () => true,
      )
    )
      return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`bench: ${domain} still exists`);
}
