/*
 * Hostile load: how much a crowd of misbehaving clients slows an honest one. The server runs as
 * its own process (the real binary, embedded store); the attackers run in another process, so
 * neither they nor the server share an event loop with the client that measures.
 *
 *   baseline  p99 of GetInstance, one honest client, nothing else connected
 *   hostile   the same while BENCH_IDLE (1,000) connections sit idle, BENCH_HALF (200) HTTP/1.1
 *             requests stop half-way through their headers, and BENCH_FUZZERS (10) clients send
 *             random bodies to random methods in every protocol as fast as they are answered
 *
 * Prints hostile p99 / baseline p99 (goal: at most 2). Sizes: BENCH_CALLS (2,000 per phase).
 */
import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import * as http from "node:http";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { ClusterService } from "../api/gen/hypervisor/v1/cluster_pb.js";
import { ConsoleService } from "../api/gen/hypervisor/v1/console_pb.js";
import { ImageService } from "../api/gen/hypervisor/v1/image_pb.js";
import { InstanceService } from "../api/gen/hypervisor/v1/instance_pb.js";
import { NodeService } from "../api/gen/hypervisor/v1/node_pb.js";
import { binPath, freePort, Proc } from "../test/support/procs.js";
import { envInt } from "./util.js";

const IDLE = envInt("BENCH_IDLE", 1000);
const HALF = envInt("BENCH_HALF", 200);
const FUZZERS = envInt("BENCH_FUZZERS", 10);
const CALLS = envInt("BENCH_CALLS", 2000);

if (process.argv[2] === "attack") await attack(Number(process.argv[3]));
else await main();

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "hv-bench-hostile-"));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const server = new Proc("server", [
    binPath("hypervisor-server"),
    "--no-tls",
    "--store=embedded",
    `--data-dir=${dir}`,
    `--listen=127.0.0.1:${port}`,
  ]);
  let attacker: ReturnType<typeof spawn> | undefined;
  try {
    await server.waitFor(/server running/);
    const client = createClient(InstanceService, createConnectTransport({ baseUrl: url, httpVersion: "1.1", useBinaryFormat: true }));
    await client.createInstance({ name: "probe", spec: { driver: "mock", vcpus: 1, memoryMib: 64n } });
    const measure = async () => {
      const ms: number[] = [];
      for (let i = 0; i < CALLS; i++) {
        const t = performance.now();
        await client.getInstance({ name: "probe" });
        ms.push(performance.now() - t);
      }
      ms.sort((a, b) => a - b);
      return { p50: ms[Math.floor(ms.length * 0.5)]!, p99: ms[Math.floor(ms.length * 0.99)]! };
    };
    await measure(); // warm up
    const base = await measure();

    attacker = spawn(process.execPath, [fileURLToPath(import.meta.url), "attack", String(port)], { stdio: ["ignore", "pipe", "inherit"] });
    await new Promise<void>((resolve, reject) => {
      attacker!.stdout!.on("data", (b: Buffer) => b.toString().includes("attacking") && resolve());
      attacker!.once("exit", (code) => reject(new Error(`the attacker exited (${code}) before it was in place`)));
    });
    const hostile = await measure();
    const healthy = (await fetch(`${url}/healthz`)).status === 200;

    const ratio = hostile.p99 / base.p99;
    console.log(
      [
        `hostile load (${IDLE} idle connections, ${HALF} half-sent requests, ${FUZZERS} fuzzing clients; ${CALLS} GetInstance calls a phase)`,
        `  baseline  GetInstance p50 ${base.p50.toFixed(2)} ms  p99 ${base.p99.toFixed(2)} ms`,
        `  hostile   GetInstance p50 ${hostile.p50.toFixed(2)} ms  p99 ${hostile.p99.toFixed(2)} ms`,
        `  ratio     p99 hostile / baseline = ${ratio.toFixed(2)} (goal: at most 2)${healthy ? "" : "  SERVER UNHEALTHY"}`,
      ].join("\n"),
    );
  } finally {
    attacker?.kill("SIGKILL");
    await server.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

/** The attackers, in their own process: idle sockets, half-sent headers, and fuzzing loops. */
async function attack(port: number): Promise<void> {
  const sockets: net.Socket[] = [];
  const open = async (bytes: string) => {
    const s = net.connect(port, "127.0.0.1");
    s.on("error", () => undefined);
    s.on("data", () => undefined);
    await new Promise<void>((resolve) => s.once("connect", () => resolve()));
    if (bytes) s.write(bytes);
    sockets.push(s);
  };
  for (let i = 0; i < IDLE; i++) await open("");
  for (let i = 0; i < HALF; i++) await open(`POST /hypervisor.v1.InstanceService/GetInstance HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: `);
  const methods = [ClusterService, ConsoleService, ImageService, InstanceService, NodeService].flatMap((s) =>
    s.methods.map((m) => `/${s.typeName}/${m.name}`),
  );
  const types = ["application/json", "application/proto", "application/connect+proto", "application/grpc-web+proto"];
  const agent = new http.Agent({ keepAlive: true, maxSockets: FUZZERS });
  let seed = 1;
  const rand = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const fuzz = async () => {
    for (;;) {
      const body = Buffer.from(Array.from({ length: rand(64) }, () => rand(256)));
      await new Promise<void>((resolve) => {
        const req = http.request(
          {
            host: "127.0.0.1",
            port,
            agent,
            method: "POST",
            path: methods[rand(methods.length)],
            headers: { "content-type": types[rand(types.length)], "content-length": body.length },
          },
          (res) => {
            res.resume();
            res.on("end", resolve);
            res.on("error", () => resolve());
          },
        );
        req.setTimeout(2000, () => req.destroy());
        req.on("error", () => resolve());
        req.end(body);
      });
    }
  };
  for (let i = 0; i < FUZZERS; i++) void fuzz();
  process.stdout.write(`attacking with ${sockets.length} sockets\n`);
  await new Promise(() => undefined);
}
