/*
 * The API's cost of access control and auditing: CreateInstance calls per second with both on
 * (a bearer token authenticated and authorized on every call, each create an audit event written
 * to the server's file) against the same build with `--dangerously-disable-access`, in the same
 * run. Three servers (the real binary, TLS, one etcd, one shared pki dir): a leader running the
 * controllers, and two API-only replicas measured, alike but for access. One client keeps
 * BENCH_CONCURRENCY (8) creates in flight to each, one instance per call as the scale bench's
 * first phase sends them; BENCH_CALLS (4,000) per mode in BENCH_ROUNDS (16) alternating slices, so
 * a noisy neighbour costs both alike.
 *
 * Prints on / off (goal: at least 0.9).
 */
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { InstanceService } from "../api/gen/hypervisor/v1/instance_pb.js";
import { adminToken } from "../test/support/cluster.js";
import { startEtcd } from "../test/support/etcd.js";
import { binPath, freePort, Proc } from "../test/support/procs.js";
import { envInt } from "./util.js";

const CALLS = envInt("BENCH_CALLS", 4000);
const CONCURRENCY = envInt("BENCH_CONCURRENCY", 8);
const ROUNDS = envInt("BENCH_ROUNDS", 16);

const dir = await mkdtemp(join(tmpdir(), "hv-bench-access-"));
const pki = join(dir, "pki");
const etcd = await startEtcd();
const procs: Proc[] = [];
try {
  const server = async (name: string, args: string[]) => {
    const port = await freePort();
    const p = new Proc(`server ${name}`, [
      binPath("hypervisor-server"),
      ...["--store", "etcd", "--etcd-endpoints", etcd.endpoint, "--listen", `127.0.0.1:${port}`],
      ...["--data-dir", join(dir, name), "--pki-dir", pki, ...args],
    ]);
    procs.push(p);
    await p.waitFor(/server listening/);
    return `https://127.0.0.1:${port}`;
  };
  await server("leader", []);
  const onUrl = await server("on", ["--no-controllers"]);
  const offUrl = await server("off", ["--no-controllers", "--dangerously-disable-access"]);
  const ca = await readFile(join(pki, "ca.crt"), "utf8");
  const token = adminToken(join(pki, "ca.crt"));
  const bearer: Interceptor = (next) => (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
  const client = (url: string, withToken: boolean) =>
    createClient(
      InstanceService,
      createConnectTransport({ baseUrl: url, httpVersion: "2", interceptors: withToken ? [bearer] : [], nodeOptions: { ca } }),
    );
  const apis = { on: client(onUrl, true), off: client(offUrl, false) };
  let n = 0;
  const create = (api: (typeof apis)["on"]) => api.createInstance({ name: `b-${n++}`, spec: { driver: "mock", vcpus: 1, memoryMib: 64n } });
  for (const api of Object.values(apis)) for (let i = 0; i < 100; i++) await create(api); // connected, JIT warm
  const timed = async (api: (typeof apis)["on"], calls: number) => {
    let next = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next++ < calls) await create(api);
      }),
    );
    return (performance.now() - t0) / 1000;
  };
  const seconds = { on: 0, off: 0 };
  const slice = Math.max(1, Math.floor(CALLS / ROUNDS));
  for (let r = 0; r < ROUNDS; r++)
    for (const k of r % 2 === 0 ? (["on", "off"] as const) : (["off", "on"] as const)) seconds[k] += await timed(apis[k], slice);
  const on = (slice * ROUNDS) / seconds.on;
  const off = (slice * ROUNDS) / seconds.off;
  const audited = (await readFile(join(dir, "on", "audit", "audit.log"), "utf8"))
    .split("\n")
    .filter((l) => l.includes("CreateInstance")).length;
  console.log(
    [
      `hypervisor bench (access): CreateInstance, one instance per call, ${slice * ROUNDS} calls each in ${ROUNDS} alternating slices, ${CONCURRENCY} in flight, TLS, servers on etcd`,
      `  access and audit off  ${off.toFixed(0)} creates/s (--dangerously-disable-access)`,
      `  access and audit on   ${on.toFixed(0)} creates/s (bearer token checked, ${audited} audit events written)`,
      `  ratio                 on / off = ${(on / off).toFixed(2)} (goal: at least 0.9)`,
    ].join("\n"),
  );
} finally {
  for (const p of procs.reverse()) await p.stop();
  await etcd.stop();
  await rm(dir, { recursive: true, force: true });
}
