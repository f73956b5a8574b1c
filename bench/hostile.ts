/*
 * Hostile load: how much a crowd of misbehaving clients slows an honest one. The server runs as
 * its own process (the real binary, embedded store, the API on TLS as production serves it); the
 * attackers run in another process, so neither they nor the server share an event loop with the
 * client that measures.
 *
 *   baseline  p99 of GetInstance, one honest client (HTTPS/1.1, keep-alive, the bootstrap admin's
 *             token), nothing else connected
 *   hostile   the same while BENCH_IDLE (1,000) TLS connections sit idle after their handshake,
 *             BENCH_HANDSHAKE (200) TCP connections stop half-way through their ClientHello,
 *             BENCH_HALF (200) HTTPS/1.1 requests stop half-way through their headers, and
 *             BENCH_FUZZERS (10) clients send random bodies to random methods in every protocol
 *             as fast as they are answered (one in four a well-formed empty request), with no
 *             token, a malformed one, a well-formed one the cluster never made, or the admin's (so
 *             that random bodies still reach the handlers)
 *
 * Prints hostile p99 / baseline p99 (goal: at most 2), and the fuzzers' answers per kind of token
 * (a bad token must be refused, and cheaply). Sizes: BENCH_CALLS (2,000 per phase).
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
import { AccessService } from "../api/gen/hypervisor/v1/access_pb.js";
import { ConsoleService } from "../api/gen/hypervisor/v1/console_pb.js";
import { ImageService } from "../api/gen/hypervisor/v1/image_pb.js";
import { InstanceService } from "../api/gen/hypervisor/v1/instance_pb.js";
import { NodeService } from "../api/gen/hypervisor/v1/node_pb.js";
import { adminHeaders } from "../test/support/cluster.js";
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
    const admin = adminHeaders(caFile).authorization;
    const client = createClient(
      InstanceService,
      createConnectTransport({
        baseUrl: url,
        httpVersion: "1.1",
        useBinaryFormat: true,
        nodeOptions: { agent: new NoDelayAgent({ keepAlive: true, ca }) },
        interceptors: [
          (next) => (req) => {
            req.header.set("authorization", admin);
            return next(req);
          },
        ],
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
    /** The attacker's last tally of the fuzzers' answers (it prints one a second). */
    let tally = "";
    await new Promise<void>((resolve, reject) => {
      attacker!.stdout!.on("data", (b: Buffer) => {
        const text = b.toString();
        if (text.includes("attacking")) resolve();
        const last = text.split("\n").findLast((l) => l.startsWith("fuzzed "));
        if (last) tally = last;
      });
      attacker!.once("exit", (code) => reject(new Error(`the attacker exited (${code}) before it was in place`)));
    });
    const hostile = await measure();
    const fuzzed = tally;
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
        `  ${fuzzed || "fuzzed: no tally"}`,
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
  const methods = [AccessService, ClusterService, ConsoleService, ImageService, InstanceService, NodeService].flatMap((s) =>
    s.methods.map((m) => `/${s.typeName}/${m.name}`),
  );
  const types = ["application/json", "application/proto", "application/connect+proto", "application/grpc-web+proto"];
  /** A well-formed empty request in each type: it gets past decoding, to the token's check. */
  const empty: Record<string, Buffer> = {
    "application/json": Buffer.from("{}"),
    "application/proto": Buffer.alloc(0),
    "application/connect+proto": Buffer.alloc(5),
    "application/grpc-web+proto": Buffer.alloc(5),
  };
  const agent = new NoDelayAgent({ keepAlive: true, maxSockets: FUZZERS, ca });
  let seed = 1;
  // An LCG's low bits repeat with a short period (seed % 4 cycles through four values), which
  // tied each choice to the ones before it: the high bits choose. Math.imul keeps the product exact.
  const rand = (n: number) => {
    seed = (Math.imul(seed, 1103515245) + 12345) & 0x7fffffff;
    return Math.floor((seed / 0x80000000) * n);
  };
  const chars = (alphabet: string, n: number) => Array.from({ length: n }, () => alphabet[rand(alphabet.length)]).join("");
  const b64url = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  const admin = adminHeaders(caFile).authorization;
  /**
   * What a fuzzing request presents. Each kind's answers are counted by HTTP status, or "g<code>"
   * when a gRPC status comes in the headers; gRPC-Web and Connect streams mostly answer 200 with
   * their error in the body, counted as 200 (only Connect's unary 401 shows a refused token).
   */
  const credentials: Record<string, () => string | undefined> = {
    none: () => undefined,
    malformed: () => `Bearer ${chars(b64url + "./+=", rand(80))}`,
    // Well-formed, so only the cluster's tokens can tell it is not one of them.
    unknown: () => `Bearer hvt_${chars("abcdefghijklmnopqrstuvwxyz0123456789", 10)}.${chars(b64url, 43)}`,
    admin: () => admin,
  };
  const kinds = Object.keys(credentials);
  const tally = new Map<string, Map<string, number>>(kinds.map((k) => [k, new Map()]));
  const count = (kind: string, status: string) => {
    const t = tally.get(kind)!;
    t.set(status, (t.get(status) ?? 0) + 1);
  };
  const started = performance.now();
  setInterval(() => {
    const s = (performance.now() - started) / 1000;
    const parts = kinds.map((k) => {
      const t = tally.get(k)!;
      const n = [...t.values()].reduce((a, b) => a + b, 0);
      const by = [...t.entries()]
        .sort((a, b) => a[0].localeCompare(b[0]))
        .map(([status, c]) => `${status}:${c}`)
        .join(" ");
      return `${k} ${(n / s).toFixed(0)}/s (${by})`;
    });
    process.stdout.write(`fuzzed ${parts.join("; ")}\n`);
  }, 1000).unref();
  const fuzz = async () => {
    for (;;) {
      const type = types[rand(types.length)]!;
      // Random bytes are mostly refused as undecodable before anyone asks who sent them: one
      // request in four is well-formed, so that its token is what decides.
      const body = rand(4) === 0 ? empty[type]! : Buffer.from(Array.from({ length: rand(64) }, () => rand(256)));
      const kind = kinds[rand(kinds.length)]!;
      const authorization = credentials[kind]!();
      await new Promise<void>((resolve) => {
        const req = https.request(
          {
            host: "127.0.0.1",
            port,
            agent,
            method: "POST",
            path: methods[rand(methods.length)],
            headers: {
              "content-type": type,
              "content-length": body.length,
              ...(authorization === undefined ? {} : { authorization }),
            },
          },
          (res) => {
            const grpc = res.headers["grpc-status"];
            count(kind, typeof grpc === "string" ? `g${grpc}` : String(res.statusCode));
            res.resume();
            res.on("end", resolve);
            res.on("error", () => resolve());
          },
        );
        req.setTimeout(2000, () => req.destroy());
        req.on("error", () => {
          count(kind, "error");
          resolve();
        });
        req.end(body);
      });
    }
  };
  for (let i = 0; i < FUZZERS; i++) void fuzz();
  process.stdout.write(`attacking with ${sockets.length} sockets\n`);
  await new Promise(() => undefined);
}
