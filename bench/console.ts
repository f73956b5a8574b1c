/*
 * Console proxy bench: one RFB client against the VNC server of one libvirt VM, over three paths
 * in the same run, so that they share the guest, the VNC server and the machine's load.
 *
 *   direct      client ──unix socket──► QEMU's VNC server (the socket in the instance's status)
 *   ours, local client ──WebSocket /console/<ticket>──► hypervisor-server ──unix socket──► VNC
 *               (the node's agent is on the server's machine: it names the socket, the server dials)
 *   ours, agent client ──WebSocket /console/<ticket>──► hypervisor-server ──tunnel──► agent ──unix socket──► VNC
 *               (a second server on the same etcd with --no-console-local-direct: a remote node's path)
 * The cluster runs as production does: etcd on TLS with client-certificate auth (the servers as etcd
 * user hypervisor-server, auth on), the API and its WebSockets on TLS (wss), and the agent joined
 * with a token, so the tunnel is mutual TLS and the agent's etcd identity is its node certificate.
 *   websockify  client ──WebSocket──► websockify (Debian) ──unix socket──► VNC    (if installed)
 *
 * Each path runs the same RFB session: 003.008, security None, ClientInit shared, then
 *   throughput  full-screen non-incremental FramebufferUpdateRequests in Raw until BENCH_CONSOLE_MB
 *               have arrived, while the guest keeps its screen changing (a loop printing to tty0):
 *                 viewer  the next request once an update has arrived, as noVNC does;
 *                 paced   a request every 10 ms whatever arrives, so one is always pending.
 *   latency     a 1×1 non-incremental request with the ExtendedDesktopSize pseudo-encoding, which
 *               QEMU answers at once (pixels wait for its refresh timer): median round trip.
 *   messages    1000 such requests pipelined: answers/s (the per-message cost of a path).
 * QEMU sends pixels only on its refresh timer (every 30 ms at best while the screen changes), and
 * a tick that finds no request pending lengthens the interval by 50 ms. So "paced" is the most a
 * path can carry of what QEMU produces, and "viewer" also pays for the time a 1.15 MB update takes
 * to cross the path: a later request misses ticks and slows QEMU down.
 * Rounds rotate the order of the paths; figures are medians over rounds, ratios are to direct.
 * BENCH_CONSOLE_ROUNDS (default 9) and BENCH_CONSOLE_MB (default 24) tune it.
 */
import { execFile, spawnSync } from "node:child_process";
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Duplex } from "node:stream";
import { promisify } from "node:util";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import WebSocket, { createWebSocketStream } from "ws";
import { ConsoleKind, ConsoleService } from "../api/gen/hypervisor/v1/console_pb.js";
import { InstanceService, Phase } from "../api/gen/hypervisor/v1/instance_pb.js";
import { asAdmin, ctlFor, joinArgs, joinToken, startSecureEtcd } from "../test/support/cluster.js";
import { GUEST_CMD_DONE, GUEST_READY_MARKER, testGuest } from "../test/support/guest.js";
import { ensureLibvirtd } from "../test/support/libvirt.js";
import { binPath, freePort, Proc } from "../test/support/procs.js";
import { median } from "./util.js";

const run = promisify(execFile);
const ROUNDS = Number(process.env.BENCH_CONSOLE_ROUNDS ?? 9);
const BUDGET_MB = Number(process.env.BENCH_CONSOLE_MB ?? 24);
if (!Number.isInteger(ROUNDS) || ROUNDS < 1)
  throw new Error(`BENCH_CONSOLE_ROUNDS: ${process.env.BENCH_CONSOLE_ROUNDS} is not a positive integer`);
if (!(BUDGET_MB > 0)) throw new Error(`BENCH_CONSOLE_MB: ${process.env.BENCH_CONSOLE_MB} is not a positive number`);
const LATENCY_SAMPLES = 200;
const PIPELINED = 1000;
const ENC_RAW = 0;
const ENC_EXTENDED_DESKTOP_SIZE = -308;

const VM = `bench-console-${process.pid}`;
/** The server's URL, once it listens. */
let base = "";
/** The cluster CA (PEM), which the API's certificate chains to: every client here trusts it. */
let ca = "";
const hasWebsockify = spawnSync("sh", ["-c", "command -v websockify"]).status === 0;

async function main(): Promise<void> {
  await ensureLibvirtd();
  const guest = await testGuest();
  const dir = await mkdtemp(join(tmpdir(), "hv-bench-console-"));
  await chmod(dir, 0o755); // QEMU (libvirt-qemu) reaches the images through it
  await mkdir(join(dir, "images"), { mode: 0o755 });
  await copyFile(guest.kernel, join(dir, "images", "vmlinuz"));
  await copyFile(guest.initrd, join(dir, "images", "initrd.img"));
  // Both servers are given this CA (a second server of a cluster holds a copy of it).
  const etcd = await startSecureEtcd(join(dir, "pki"));
  ca = await readFile(etcd.caFile, "utf8");
  const procs: Proc[] = [];
  let created = false;
  try {
    const port = await freePort();
    base = `https://127.0.0.1:${port}`;
    const server = new Proc("server", [
      binPath("hypervisor-server"),
      ...etcd.serverArgs,
      ...["--listen", `127.0.0.1:${port}`, "--data-dir", join(dir, "server")],
    ]);
    procs.push(server);
    await server.waitFor(/server listening/);
    // A second replica that always goes through the agent, as it must for a node on another machine.
    const tunnelPort = await freePort();
    const viaAgent = new Proc("server-via-agent", [
      binPath("hypervisor-server"),
      ...etcd.serverArgs,
      ...["--listen", `127.0.0.1:${tunnelPort}`, "--data-dir", join(dir, "server-via-agent"), "--no-console-local-direct"],
    ]);
    procs.push(viaAgent);
    await viaAgent.waitFor(/server listening/);
    const token = await joinToken(ctlFor(base, etcd.caFile), 1);
    const agent = new Proc("agent", [
      binPath("hypervisor-agent"),
      ...["--node-name", "bench-console", "--etcd-endpoints", etcd.etcd.endpoint, "--drivers", "libvirt", "--data-dir", join(dir, "agent")],
      ...["--libvirt-image-dir", join(dir, "images"), ...joinArgs(base, token)],
    ]);
    procs.push(agent);
    await agent.waitFor(/agent started/);

    // As the bootstrap admin (the first server start wrote its token into the shared pki dir).
    const transport = createConnectTransport({
      baseUrl: base,
      httpVersion: "1.1",
      nodeOptions: { ca },
      interceptors: [asAdmin(etcd.caFile)],
    });
    const instances = createClient(InstanceService, transport);
    const consoles = createClient(ConsoleService, transport);
    await instances.createInstance({
      name: VM,
      spec: { driver: "libvirt", vcpus: 1, memoryMib: 256n, kernel: "vmlinuz", initrd: "initrd.img", cmdline: guest.cmdline },
    });
    created = true;
    const vncSocket = await poll("the VM to run", async () => {
      const st = (await instances.getInstance({ name: VM })).instance?.status;
      return st?.phase === Phase.RUNNING ? st.details.vnc_socket : undefined;
    });
    await poll("the guest to boot", async () => {
      let log = "";
      for await (const c of instances.getInstanceLogs({ name: VM })) log += Buffer.from(c.data).toString("latin1");
      return log.includes(GUEST_READY_MARKER) || undefined;
    });

    const paths: { name: string; open(): Promise<Duplex> }[] = [
      { name: "direct (unix socket)", open: () => openUnix(vncSocket) },
      {
        name: "ours, local node (server → VNC)",
        open: async () => {
          const { path } = await consoles.createConsoleTicket({ name: VM, kind: ConsoleKind.VNC });
          return openWs(`wss://127.0.0.1:${port}${path}`);
        },
      },
      {
        name: "ours, via agent (server → agent → VNC)",
        open: async () => {
          const { path } = await consoles.createConsoleTicket({ name: VM, kind: ConsoleKind.VNC });
          return openWs(`wss://127.0.0.1:${tunnelPort}${path}`);
        },
      },
    ];
    if (hasWebsockify) {
      const wsPort = await freePort();
      const ws = new Proc("websockify", [`--unix-target=${vncSocket}`, `127.0.0.1:${wsPort}`], {}, "websockify");
      procs.push(ws);
      await poll(
        "websockify to listen",
        () =>
          openTcp(wsPort)
            .then((s) => (s.destroy(), true))
            .catch(() => undefined),
        30_000,
      );
      paths.push({ name: "websockify", open: () => openWs(`ws://127.0.0.1:${wsPort}/`) });
    }

    const results = new Map(
      paths.map((p) => [p.name, { viewer: [] as number[], paced: [] as number[], rtt: [] as number[], msgs: [] as number[] }]),
    );
    const rotated = (i: number) => paths.map((_, k) => paths[(k + i) % paths.length]!);

    // Latency and messages with the guest quiet, so that its loop does not add noise.
    for (let round = 0; round < ROUNDS; round++)
      for (const p of rotated(round)) {
        const rfb = await RfbSession.open(await p.open(), [ENC_RAW, ENC_EXTENDED_DESKTOP_SIZE]);
        const r = results.get(p.name)!;
        r.rtt.push(await rfb.latency(LATENCY_SAMPLES));
        r.msgs.push(await rfb.pipelined(PIPELINED));
        rfb.close();
      }

    await serialCommand(
      consoles,
      // Each line printed scrolls the whole screen; the sleep leaves the machine's CPUs to the paths.
      "sh -c 'while :; do date; sleep 0.01; done' >/dev/tty0 2>&1 </dev/null & echo $! >/tmp/bench-loop.pid",
    );
    try {
      for (let round = 0; round < ROUNDS; round++)
        for (const p of rotated(round)) {
          for (const mode of ["viewer", "paced"] as const) {
            const rfb = await RfbSession.open(await p.open(), [ENC_RAW]);
            results.get(p.name)![mode].push(await rfb.throughput(BUDGET_MB * 1e6, mode));
            rfb.close();
          }
        }
    } finally {
      await serialCommand(consoles, "kill $(cat /tmp/bench-loop.pid)").catch(() => undefined);
    }

    const figures = (name: string) => {
      const r = results.get(name)!;
      return { viewer: median(r.viewer), paced: median(r.paced), rtt: median(r.rtt), msgs: median(r.msgs) };
    };
    const d = figures(paths[0]!.name);
    console.log(
      `hypervisor bench (console): VNC of a libvirt VM (${RfbSession.screen}, Raw), ${ROUNDS} rounds, ${BUDGET_MB} MB per throughput run, ` +
        `${LATENCY_SAMPLES} round trips, ${PIPELINED} pipelined requests${hasWebsockify ? "" : "; websockify not installed"}`,
    );
    const row = (cells: string[]) => console.log(cells.map((c, i) => (i === 0 ? c.padEnd(40) : c.padStart(i % 2 ? 11 : 7))).join(" "));
    row(["path", "viewer", "ratio", "paced", "ratio", "RTT median", "added", "messages/s", "ratio"]);
    for (const p of paths) {
      const f = figures(p.name);
      row([
        p.name,
        `${f.viewer.toFixed(1)} MB/s`,
        `${(f.viewer / d.viewer).toFixed(2)}×`,
        `${f.paced.toFixed(1)} MB/s`,
        `${(f.paced / d.paced).toFixed(2)}×`,
        `${f.rtt.toFixed(2)} ms`,
        p === paths[0] ? "" : `+${(f.rtt - d.rtt).toFixed(2)}`,
        f.msgs.toFixed(0),
        `${(f.msgs / d.msgs).toFixed(2)}×`,
      ]);
    }
    for (const [label, p] of [
      ["ours (local node)", paths[1]!],
      ["ours (via agent)", paths[2]!],
    ] as const) {
      const f = figures(p.name);
      console.log(
        `${label} to direct: throughput ${(f.paced / d.paced).toFixed(2)}× paced, ${(f.viewer / d.viewer).toFixed(2)}× viewer ` +
          `(goal: at least 0.9×); round trip +${(f.rtt - d.rtt).toFixed(2)} ms`,
      );
    }
  } finally {
    if (created)
      await createClient(
        InstanceService,
        createConnectTransport({ baseUrl: base, httpVersion: "1.1", nodeOptions: { ca }, interceptors: [asAdmin(etcd.caFile)] }),
      )
        .deleteInstance({ name: VM })
        .catch(() => undefined);
    for (let i = 0; i < 600 && created; i++) {
      const gone = await run("virsh", ["-c", "qemu:///system", "dominfo", `hv-${VM}`]).then(
        () => false,
        () => true,
      );
      if (gone) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    await run("virsh", ["-c", "qemu:///system", "destroy", `hv-${VM}`]).catch(() => undefined);
    await run("virsh", ["-c", "qemu:///system", "undefine", `hv-${VM}`]).catch(() => undefined);
    for (const p of procs.reverse()) await p.stop();
    await etcd.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

/** Runs one line on the guest's serial console (see scripts/guest/init) and waits for its end. */
async function serialCommand(consoles: ReturnType<typeof createClient<typeof ConsoleService>>, line: string): Promise<void> {
  const { path } = await consoles.createConsoleTicket({ name: VM, kind: ConsoleKind.SERIAL });
  const ws = new WebSocket(`${base.replace(/^http/, "ws")}${path}`, { ca });
  await new Promise<void>((resolve, reject) => {
    ws.once("open", () => resolve());
    ws.once("error", reject);
  });
  let got = "";
  ws.on("message", (d: Buffer) => (got += d.toString("latin1")));
  ws.send(Buffer.from(`${line}\n`));
  await poll("the serial command to finish", () => got.includes(GUEST_CMD_DONE) || undefined, 60_000, 50);
  ws.close();
}

function openUnix(path: string): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    const s = connect({ path });
    s.once("connect", () => (s.off("error", reject), resolve(s)));
    s.once("error", reject);
  });
}

function openTcp(port: number): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: "127.0.0.1", noDelay: true });
    s.once("connect", () => (s.off("error", reject), resolve(s)));
    s.once("error", reject);
  });
}

function openWs(url: string): Promise<Duplex> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, ["binary"], { perMessageDeflate: false, ...(url.startsWith("wss:") ? { ca } : {}) });
    ws.once("open", () => {
      ws.off("error", reject);
      resolve(createWebSocketStream(ws));
    });
    ws.once("error", reject);
  });
}

/**
 * Bytes from a stream, consumed by count: read(n) for headers, skip(n) for pixels without copying
 * them. Resolves as data arrives; one reader at a time.
 */
class ByteReader {
  private chunks: Buffer[] = [];
  private offset = 0;
  private available = 0;
  private wanted: { n: number; resolve(b: Buffer | undefined): void; copy: boolean } | undefined;
  private ended: Error | undefined;
  total = 0;

  constructor(private readonly stream: Duplex) {
    stream.on("data", (b: Buffer) => {
      this.chunks.push(b);
      this.available += b.length;
      this.total += b.length;
      this.pump();
    });
    const end = (e?: Error) => {
      this.ended = e ?? new Error("the VNC connection closed");
      this.pump();
    };
    stream.once("error", end);
    stream.once("close", () => end());
  }

  read(n: number): Promise<Buffer> {
    return this.want(n, true);
  }

  async skip(n: number): Promise<void> {
    await this.want(n, false);
  }

  /** Drops whatever has arrived so far. */
  drain(): void {
    this.chunks = [];
    this.offset = 0;
    this.available = 0;
  }

  private want(n: number, copy: boolean): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      this.wanted = {
        n,
        copy,
        // undefined: the stream ended before n bytes came.
        resolve: (b) => (b === undefined ? reject(this.ended ?? new Error("the VNC connection closed")) : resolve(b)),
      };
      this.pump();
    });
  }

  private pump(): void {
    const w = this.wanted;
    if (!w) return;
    if (this.available < w.n) {
      if (this.ended) {
        this.wanted = undefined;
        w.resolve(undefined);
      }
      return;
    }
    this.wanted = undefined;
    const out = w.copy ? Buffer.allocUnsafe(w.n) : undefined;
    let left = w.n;
    while (left > 0) {
      const c = this.chunks[0]!;
      const take = Math.min(left, c.length - this.offset);
      if (out) c.copy(out, w.n - left, this.offset, this.offset + take);
      left -= take;
      this.offset += take;
      if (this.offset === c.length) {
        this.chunks.shift();
        this.offset = 0;
      }
    }
    this.available -= w.n;
    w.resolve(out ?? Buffer.alloc(0));
  }
}

/** The client side of an RFB 3.8 session, as much as the bench needs. */
class RfbSession {
  static screen = "";

  private constructor(
    private readonly stream: Duplex,
    private readonly r: ByteReader,
    readonly width: number,
    readonly height: number,
  ) {}

  static async open(stream: Duplex, encodings: number[]): Promise<RfbSession> {
    const r = new ByteReader(stream);
    const version = (await r.read(12)).toString("latin1");
    if (!/^RFB 003\.00\d\n$/.test(version)) throw new Error(`not an RFB server: ${JSON.stringify(version)}`);
    stream.write("RFB 003.008\n");
    const types = [...(await r.read((await r.read(1))[0]!))];
    if (!types.includes(1)) throw new Error(`the VNC server does not offer security None (offers ${types.join(",")})`);
    stream.write(Buffer.from([1]));
    const result = (await r.read(4)).readUInt32BE(0);
    if (result !== 0) throw new Error(`security None refused (${result})`);
    stream.write(Buffer.from([1])); // ClientInit: shared
    const init = await r.read(24);
    const [width, height] = [init.readUInt16BE(0), init.readUInt16BE(2)];
    const bpp = init[4]!;
    if (bpp !== 32) throw new Error(`the bench reads 32 bpp pixels; the server uses ${bpp}`);
    await r.skip(init.readUInt32BE(20)); // desktop name
    RfbSession.screen = `${width}×${height}`;
    const set = Buffer.alloc(4 + 4 * encodings.length);
    set[0] = 2;
    set.writeUInt16BE(encodings.length, 2);
    encodings.forEach((e, i) => set.writeInt32BE(e, 4 + 4 * i));
    stream.write(set);
    return new RfbSession(stream, r, width, height);
  }

  /**
   * MB/s of full-screen Raw updates until `bytes` have arrived; "viewer" asks again once an update
   * has arrived, "paced" every 10 ms.
   */
  async throughput(bytes: number, mode: "viewer" | "paced"): Promise<number> {
    const start = this.r.total;
    const ask = () => this.stream.write(request(false, 0, 0, this.width, this.height));
    const t0 = performance.now();
    const pacer = mode === "paced" ? setInterval(ask, 10) : undefined;
    try {
      ask();
      while (this.r.total - start < bytes) {
        await this.update();
        if (!pacer) ask();
      }
    } finally {
      clearInterval(pacer);
    }
    return (this.r.total - start) / 1e6 / ((performance.now() - t0) / 1000);
  }

  /** Median ms from a 1×1 request to QEMU's immediate ExtendedDesktopSize answer. */
  async latency(samples: number): Promise<number> {
    // SetEncodings may bring an answer of its own: start from a quiet line.
    await new Promise((r) => setTimeout(r, 300));
    this.r.drain();
    const times: number[] = [];
    for (let i = 0; i < samples + 10; i++) {
      const t0 = performance.now();
      this.stream.write(request(false, 0, 0, 1, 1));
      while (!(await this.update()).includes(ENC_EXTENDED_DESKTOP_SIZE));
      if (i >= 10) times.push(performance.now() - t0);
    }
    return median(times);
  }

  /** Answers per second to n pipelined 1×1 requests. */
  async pipelined(n: number): Promise<number> {
    const t0 = performance.now();
    this.stream.write(Buffer.concat(Array.from({ length: n }, () => request(false, 0, 0, 1, 1))));
    for (let got = 0; got < n;) if ((await this.update()).includes(ENC_EXTENDED_DESKTOP_SIZE)) got++;
    return n / ((performance.now() - t0) / 1000);
  }

  /** Reads server messages up to and including the next FramebufferUpdate; its encodings. */
  private async update(): Promise<number[]> {
    for (;;) {
      const type = (await this.r.read(1))[0]!;
      if (type === 0) {
        const n = (await this.r.read(3)).readUInt16BE(1);
        const encodings: number[] = [];
        for (let i = 0; i < n; i++) {
          const h = await this.r.read(12);
          const [w, hh, enc] = [h.readUInt16BE(4), h.readUInt16BE(6), h.readInt32BE(8)];
          encodings.push(enc);
          if (enc === ENC_RAW) await this.r.skip(w * hh * 4);
          else if (enc === ENC_EXTENDED_DESKTOP_SIZE) await this.r.skip((await this.r.read(4))[0]! * 16);
          else throw new Error(`unexpected encoding ${enc} in an update`);
        }
        return encodings;
      }
      if (type === 2) continue; // Bell
      if (type === 3) {
        const h = await this.r.read(7); // ServerCutText
        await this.r.skip(h.readUInt32BE(3));
        continue;
      }
      throw new Error(`unexpected server message ${type}`);
    }
  }

  close(): void {
    this.stream.destroy();
  }
}

function request(incremental: boolean, x: number, y: number, w: number, h: number): Buffer {
  const b = Buffer.alloc(10);
  b[0] = 3;
  b[1] = incremental ? 1 : 0;
  b.writeUInt16BE(x, 2);
  b.writeUInt16BE(y, 4);
  b.writeUInt16BE(w, 6);
  b.writeUInt16BE(h, 8);
  return b;
}

async function poll<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, timeoutMs = 300_000, everyMs = 500): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`bench: timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

await main();
