/*
 * The API's cost of TLS: GetInstance calls per second over TLS (the cluster CA's certificate, what
 * every server serves by default) against cleartext, on the same server build, in the same run.
 * Two servers in their own processes (the real binary) share one etcd and one instance; one
 * client keeps BENCH_CONCURRENCY (16) calls in flight over one HTTP/2 connection to each, as ctl
 * and the UI do. BENCH_CALLS (12,000) calls per protocol go in BENCH_ROUNDS (24) short slices,
 * alternating between the two (and which goes first), so a noisy neighbour on this shared
 * machine costs both alike; calls/s is calls over the summed time of a protocol's slices.
 *
 * Both clients call as the bootstrap admin (a bearer token, checked on every call, over either).
 *
 * Prints TLS calls/s / cleartext calls/s (goal: at least 0.8).
 */
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { InstanceService } from "../api/gen/hypervisor/v1/instance_pb.js";
import { adminHeaders } from "../test/support/cluster.js";
import { startEtcd } from "../test/support/etcd.js";
import { binPath, freePort, Proc } from "../test/support/procs.js";
import { envInt } from "./util.js";

const CALLS = envInt("BENCH_CALLS", 12000);
const CONCURRENCY = envInt("BENCH_CONCURRENCY", 16);
const ROUNDS = envInt("BENCH_ROUNDS", 24);

const dir = await mkdtemp(join(tmpdir(), "hv-bench-tls-"));
const etcd = await startEtcd();
const procs: Proc[] = [];
try {
  const server = async (name: string, tls: boolean, controllers: boolean) => {
    const port = await freePort();
    const p = new Proc(`server ${name}`, [
      binPath("hypervisor-server"),
      ...(tls ? [] : ["--no-tls"]),
      ...["--store", "etcd", "--etcd-endpoints", etcd.endpoint, "--listen", `127.0.0.1:${port}`],
      ...["--data-dir", join(dir, name), ...(controllers ? [] : ["--no-controllers"])],
    ]);
    procs.push(p);
    await p.waitFor(/server listening/);
    return `${tls ? "https" : "http"}://127.0.0.1:${port}`;
  };
  // The two measured are API-only replicas, alike but for TLS; a third runs the controllers.
  await server("leader", false, true);
  const plainUrl = await server("plain", false, false);
  const tlsUrl = await server("tls", true, false);
  const ca = await readFile(join(dir, "tls", "pki", "ca.crt"), "utf8");
  // The cluster's first start (the leader's) wrote the bootstrap admin token into its pki dir.
  const admin = adminHeaders(join(dir, "leader", "pki", "ca.crt")).authorization;
  const asAdmin: Interceptor = (next) => (req) => {
    req.header.set("authorization", admin);
    return next(req);
  };
  const client = (url: string) =>
    createClient(
      InstanceService,
      createConnectTransport({
        baseUrl: url,
        httpVersion: "2",
        interceptors: [asAdmin],
        ...(url.startsWith("https") ? { nodeOptions: { ca } } : {}),
      }),
    );
  await client(plainUrl).createInstance({ name: "bench-1", spec: { driver: "mock", vcpus: 1, memoryMib: 64n } });

  const apis = { plain: client(plainUrl), tls: client(tlsUrl) };
  for (const api of Object.values(apis)) for (let i = 0; i < 200; i++) await api.getInstance({ name: "bench-1" }); // connected, JIT warm
  /** Seconds for `calls` calls with CONCURRENCY in flight. */
  const timed = async (api: (typeof apis)["plain"], calls: number) => {
    let next = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next++ < calls) await api.getInstance({ name: "bench-1" });
      }),
    );
    return (performance.now() - t0) / 1000;
  };
  // Short slices, alternating (and which goes first alternating too): a change in the machine's
  // load during the run falls on both protocols alike.
  const seconds = { plain: 0, tls: 0 };
  const slice = Math.max(1, Math.floor(CALLS / ROUNDS));
  for (let r = 0; r < ROUNDS; r++)
    for (const k of r % 2 === 0 ? (["plain", "tls"] as const) : (["tls", "plain"] as const)) seconds[k] += await timed(apis[k], slice);
  const plain = (slice * ROUNDS) / seconds.plain;
  const secure = (slice * ROUNDS) / seconds.tls;
  const ratio = secure / plain;
  console.log(
    [
      `hypervisor bench (tls): GetInstance as the admin (bearer token), ${slice * ROUNDS} calls each in ${ROUNDS} alternating slices, ${CONCURRENCY} in flight on one HTTP/2 connection, servers on etcd`,
      `  cleartext ${plain.toFixed(0)} calls/s`,
      `  TLS       ${secure.toFixed(0)} calls/s`,
      `  ratio     TLS / cleartext = ${ratio.toFixed(2)} (goal: at least 0.8)`,
    ].join("\n"),
  );
} finally {
  for (const p of procs.reverse()) await p.stop();
  await etcd.stop();
  await rm(dir, { recursive: true, force: true });
}
