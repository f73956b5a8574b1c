/*
 * A real, throwaway etcd for tests: its own data directory, free loopback ports, and a stop that
 * only ever signals the process it started. Tests use the real thing rather than a fake.
 *
 *   pick 2 free ports ──► spawn /usr/bin/etcd ──► poll GET /health ──► { endpoint, pid, stop }
 *        ▲                                  │
 *        └── port taken meanwhile (exit) ───┘  (a few attempts)
 *
 * With tls, etcd serves https with --client-cert-auth, as production runs it: a throwaway CA (or
 * the caller's) signs its server certificate, every client must present a certificate from that
 * CA, and once auth is enabled the certificate's CN is the etcd user. The health poll presents one.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { makeTestCa, type TestCa, type TestCert } from "./pki.js";
import { freePort } from "./procs.js";

export interface EtcdProcess {
  /** http://127.0.0.1:<port>, the client URL (https:// with tls). */
  endpoint: string;
  /** With tls: the CA, and client credentials for a CN, ready for EtcdStoreOptions.tls. */
  tls?: EtcdTls;
  pid: number;
  dataDir: string;
  /** SIGTERM, then SIGKILL after a grace period; removes the data directory. Idempotent. */
  stop(): Promise<void>;
  /** SIGKILL at once, for crash tests; leaves the data directory (stop() still removes it). */
  kill9(): Promise<void>;
}

export interface EtcdTls {
  ca: TestCa;
  /** A client certificate whose CN is `cn` (with auth on: the etcd user `cn`), and the CA to trust. */
  client(cn: string): Promise<TestCert & { caFile: string }>;
}

export interface StartEtcdOptions {
  /**
   * Serve https with --client-cert-auth. true: a throwaway CA, removed by stop(); a TestCa: that
   * one, which stays the caller's.
   */
  tls?: boolean | TestCa;
  /** Binary to run (default ETCD_BIN or /usr/bin/etcd). */
  bin?: string;
  /** How long to wait for the first healthy answer (default 30 s). */
  readyTimeoutMs?: number;
  signal?: AbortSignal;
}

const ATTEMPTS = 5;

export async function startEtcd(opts: StartEtcdOptions = {}): Promise<EtcdProcess> {
  const bin = opts.bin ?? process.env.ETCD_BIN ?? "/usr/bin/etcd";
  const dataDir = await mkdtemp(join(tmpdir(), "hv-etcd-"));
  let lastError: unknown;
  let tls: Tls | undefined;
  try {
    if (opts.tls) tls = await serverTls(opts.tls === true ? undefined : opts.tls, dataDir);
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      opts.signal?.throwIfAborted();
      const [clientPort, peerPort] = [await freePort(), await freePort()];
      try {
        return await launch(bin, dataDir, clientPort, peerPort, opts, tls);
      } catch (e) {
        lastError = e;
        // Another process may have taken a port between our probe and etcd's bind: try new ones.
        if (!(e instanceof PortTakenError)) break;
      }
    }
  } catch (e) {
    lastError = e;
  }
  if (tls?.own) await tls.ca.remove();
  await rm(dataDir, { recursive: true, force: true });
  throw lastError instanceof Error ? lastError : new Error(`etcd did not start: ${String(lastError)}`);
}

class PortTakenError extends Error {
  override name = "PortTakenError";
}

interface Tls {
  ca: TestCa;
  /** Made here: stop() removes it. */
  own: boolean;
  server: TestCert;
  /** What the health poll presents. */
  health: { ca: Buffer; cert: Buffer; key: Buffer };
}

async function serverTls(given: TestCa | undefined, dataDir: string): Promise<Tls> {
  const ca = given ?? (await makeTestCa("hypervisor-test-etcd-ca", dataDir));
  try {
    const server = await ca.issue("etcd-server", { server: true, ips: ["127.0.0.1"], dns: ["localhost"] });
    const probe = await ca.issue("etcd-health");
    const [caPem, cert, key] = await Promise.all([readFile(ca.caFile), readFile(probe.certFile), readFile(probe.keyFile)]);
    return { ca, own: !given, server, health: { ca: caPem, cert, key } };
  } catch (e) {
    if (!given) await ca.remove();
    throw e;
  }
}

async function launch(
  bin: string,
  dataDir: string,
  clientPort: number,
  peerPort: number,
  opts: StartEtcdOptions,
  tls: Tls | undefined,
): Promise<EtcdProcess> {
  const client = `${tls ? "https" : "http"}://127.0.0.1:${clientPort}`;
  // The peer URL stays plaintext: one member, on loopback, with no peer to talk to.
  const peer = `http://127.0.0.1:${peerPort}`;
  const tlsArgs = tls
    ? [`--cert-file=${tls.server.certFile}`, `--key-file=${tls.server.keyFile}`, `--trusted-ca-file=${tls.ca.caFile}`, "--client-cert-auth"]
    : [];
  const child = spawn(
    bin,
    [
      "--name=hv-test",
      `--data-dir=${join(dataDir, "data")}`,
      `--listen-client-urls=${client}`,
      `--advertise-client-urls=${client}`,
      `--listen-peer-urls=${peer}`,
      `--initial-advertise-peer-urls=${peer}`,
      `--initial-cluster=hv-test=${peer}`,
      "--initial-cluster-state=new",
      "--logger=zap",
      "--log-level=error",
      ...tlsArgs,
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  child.stderr?.on("data", (b: Buffer) => {
    stderr = (stderr + b.toString()).slice(-4096);
  });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  let alive = true;
  void exited.then(() => (alive = false));
  // If the test process dies without stopping us, do not leave an etcd behind.
  const onExit = () => child.pid !== undefined && alive && child.kill("SIGKILL");
  process.once("exit", onExit);

  const deadline = Date.now() + (opts.readyTimeoutMs ?? 30_000);
  try {
    for (;;) {
      opts.signal?.throwIfAborted();
      if (!alive) {
        if (/address already in use/.test(stderr)) throw new PortTakenError(`etcd port taken: ${stderr.trim()}`);
        throw new Error(`etcd exited before it was ready: ${stderr.trim()}`);
      }
      if (await healthy(client, tls?.health)) break;
      if (Date.now() > deadline) throw new Error(`etcd at ${client} not healthy in time: ${stderr.trim()}`);
      await sleep(100);
    }
  } catch (e) {
    await terminate(child, exited, () => alive);
    process.removeListener("exit", onExit);
    throw e;
  }

  let stopped = false;
  return {
    endpoint: client,
    ...(tls && {
      tls: {
        ca: tls.ca,
        client: async (cn: string) => ({ ...(await tls.ca.issue(cn)), caFile: tls.ca.caFile }),
      },
    }),
    pid: child.pid!,
    dataDir,
    async stop() {
      if (stopped) return;
      stopped = true;
      await terminate(child, exited, () => alive);
      process.removeListener("exit", onExit);
      if (tls?.own) await tls.ca.remove();
      await rm(dataDir, { recursive: true, force: true });
    },
    async kill9() {
      if (alive) child.kill("SIGKILL");
      await exited;
    },
  };
}

/** Signals only this child: SIGTERM, then SIGKILL if it is still there after 10 s. */
async function terminate(child: ChildProcess, exited: Promise<void>, alive: () => boolean): Promise<void> {
  if (!alive()) return;
  child.kill("SIGTERM");
  const timer = setTimeout(() => alive() && child.kill("SIGKILL"), 10_000);
  await exited;
  clearTimeout(timer);
}

async function healthy(client: string, tls: Tls["health"] | undefined): Promise<boolean> {
  try {
    if (!tls) {
      const res = await fetch(`${client}/health`, { signal: AbortSignal.timeout(1000) });
      const body = (await res.json()) as { health?: string };
      return res.ok && body.health === "true";
    }
    // fetch cannot present a client certificate: node:https can.
    const body = await new Promise<string>((resolve, reject) => {
      const req = request(`${client}/health`, { ...tls, timeout: 1000 }, (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (text += c));
        res.on("end", () => (res.statusCode === 200 ? resolve(text) : reject(new Error(`status ${res.statusCode}`))));
        res.on("error", reject);
      });
      req.on("timeout", () => req.destroy(new Error("timeout")));
      req.on("error", reject);
      req.end();
    });
    return (JSON.parse(body) as { health?: string }).health === "true";
  } catch {
    return false;
  }
}
