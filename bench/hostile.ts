/*
 * Hostile load: how much a crowd of misbehaving clients slows an honest one. The server runs as
 * its own process (the real binary, embedded store, the API on TLS as production serves it); the
 * attackers run in another process, so neither they nor the server share an event loop with the
 * client that measures.
 *
 *   baseline  p99 of GetInstance, one honest client (HTTPS/1.1, keep-alive), nothing else connected
 *   hostile   the same while BENCH_IDLE (1,000) TLS connections sit idle after their handshake,
 *             BENCH_HANDSHAKE (200) TCP connections stop half-way through their ClientHello,
 *             BENCH_HALF (200) HTTPS/1.1 requests stop half-way through their headers, and
 *             BENCH_FUZZERS (10) clients send random bodies to random methods in every protocol
 *             as fast as they are answered
 *
 * Prints hostile p99 / baseline p99 (goal: at most 2). Sizes: BENCH_CALLS (2,000 per phase).
 */
import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { readFile } from "node:fs/promises";
import * as https from "node:https";
import * as net from "node:net";
import * as tls from "node:tls";
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
const HANDSHAKE = envInt("BENCH_HANDSHAKE", 200);
const HALF = envInt("BENCH_HALF", 200);
const FUZZERS = envInt("BENCH_FUZZERS", 10);
const CALLS = envInt("BENCH_CALLS", 2000);

/**
 * Keep-alive HTTPS whose sockets send at once. Node's TLS sockets keep Nagle on (tls.connect
 * ignores noDelay), and a client that writes headers and body apart then waits for the server's
 * delayed ACK: about 40 ms a call, which would hide the server's own latency under the client's.
 */
class NoDelayAgent extends https.Agent {
  override createConnection(...args: Parameters<https.Agent["createConnection"]>): ReturnType<https.Agent["createConnection"]> {
    const s = super.createConnection(...args);
    (s as net.Socket).setNoDelay(true);
    return s;
  }
}

if (process.argv[2] === "attack") await attack(Number(process.argv[3]), process.argv[4]!);
else await main();

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "hv-bench-hostile-"));
  const port = await freePort();
  const url = `https://127.0.0.1:${port}`;
  const server = new Proc("server", [binPath("hypervisor-server"), "--store=embedded", `--data-dir=${dir}`, `--listen=127.0.0.1:${port}`]);
  let attacker: ReturnType<typeof spawn> | undefined;
  try {
    await server.waitFor(/server running/);
    const caFile = join(dir, "pki", "ca.crt");
    const ca = await readFile(caFile, "utf8");
    const client = createClient(
      InstanceService,
      createConnectTransport({
        baseUrl: url,
        httpVersion: "1.1",
        useBinaryFormat: true,
        nodeOptions: { agent: new NoDelayAgent({ keepAlive: true, ca }) },
      }),
    );
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

    attacker = spawn(process.execPath, [fileURLToPath(import.meta.url), "attack", String(port), caFile], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    await new Promise<void>((resolve, reject) => {
      attacker!.stdout!.on("data", (b: Buffer) => b.toString().includes("attacking") && resolve());
      attacker!.once("exit", (code) => reject(new Error(`the attacker exited (${code}) before it was in place`)));
    });
    const hostile = await measure();
    const healthy = await new Promise<boolean>((resolve) =>
      https
        .get(`${url}/healthz`, { ca, agent: false }, (res) => (res.resume(), resolve(res.statusCode === 200)))
        .on("error", () => resolve(false)),
    );

    const ratio = hostile.p99 / base.p99;
    console.log(
      [
        `hostile load on TLS (${IDLE} idle connections, ${HANDSHAKE} half-sent handshakes, ${HALF} half-sent requests, ${FUZZERS} fuzzing clients; ${CALLS} GetInstance calls a phase)`,
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

/**
 * The attackers, in their own process: idle TLS connections, handshakes that stop half-way,
 * half-sent headers inside TLS, and fuzzing loops over HTTPS.
 */
async function attack(port: number, caFile: string): Promise<void> {
  const ca = await readFile(caFile, "utf8");
  const sockets: net.Socket[] = [];
  /** A TLS connection that completes its handshake, then sends `bytes` and nothing more. */
  const open = async (bytes: string) => {
    const s = tls.connect({ port, host: "127.0.0.1", ca });
    s.on("error", () => undefined);
    s.on("data", () => undefined);
    await new Promise<void>((resolve) => s.once("secureConnect", () => resolve()));
    if (bytes) s.write(bytes);
    sockets.push(s);
  };
  /** A TCP connection that sends the first bytes of a ClientHello (which announces 512) and stops. */
  const stall = async () => {
    const s = net.connect(port, "127.0.0.1");
    s.on("error", () => undefined);
    await new Promise<void>((resolve) => s.once("connect", () => resolve()));
    s.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]));
    sockets.push(s);
  };
  for (let i = 0; i < IDLE; i++) await open("");
  for (let i = 0; i < HANDSHAKE; i++) await stall();
  for (let i = 0; i < HALF; i++) await open(`POST /hypervisor.v1.InstanceService/GetInstance HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: `);
  const methods = [ClusterService, ConsoleService, ImageService, InstanceService, NodeService].flatMap((s) =>
    s.methods.map((m) => `/${s.typeName}/${m.name}`),
  );
  const types = ["application/json", "application/proto", "application/connect+proto", "application/grpc-web+proto"];
  const agent = new NoDelayAgent({ keepAlive: true, maxSockets: FUZZERS, ca });
  let seed = 1;
  const rand = (n: number) => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  const fuzz = async () => {
    for (;;) {
      const body = Buffer.from(Array.from({ length: rand(64) }, () => rand(256)));
      await new Promise<void>((resolve) => {
        const req = https.request(
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
