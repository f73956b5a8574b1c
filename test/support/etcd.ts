/*
 * A real, throwaway etcd for tests: its own data directory, free loopback ports, and a stop that
 * only ever signals the process it started. Tests use the real thing rather than a fake.
 *
 *   pick 2 free ports ──► spawn /usr/bin/etcd ──► poll GET /health ──► { endpoint, pid, stop }
 *        ▲                                  │
 *        └── port taken meanwhile (exit) ───┘  (a few attempts)
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

export interface EtcdProcess {
  /** http://127.0.0.1:<port>, the client URL. */
  endpoint: string;
  pid: number;
  dataDir: string;
  /** SIGTERM, then SIGKILL after a grace period; removes the data directory. Idempotent. */
  stop(): Promise<void>;
  /** SIGKILL at once, for crash tests; leaves the data directory (stop() still removes it). */
  kill9(): Promise<void>;
}

export interface StartEtcdOptions {
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
  for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
    opts.signal?.throwIfAborted();
    const [clientPort, peerPort] = [await freePort(), await freePort()];
    try {
      return await launch(bin, dataDir, clientPort, peerPort, opts);
    } catch (e) {
      lastError = e;
      // Another process may have taken a port between our probe and etcd's bind: try new ones.
      if (!(e instanceof PortTakenError)) break;
    }
  }
  await rm(dataDir, { recursive: true, force: true });
  throw lastError instanceof Error ? lastError : new Error(`etcd did not start: ${String(lastError)}`);
}

class PortTakenError extends Error {
  override name = "PortTakenError";
}

async function launch(bin: string, dataDir: string, clientPort: number, peerPort: number, opts: StartEtcdOptions): Promise<EtcdProcess> {
  const client = `http://127.0.0.1:${clientPort}`;
  const peer = `http://127.0.0.1:${peerPort}`;
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
      if (await healthy(client)) break;
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
    pid: child.pid!,
    dataDir,
    async stop() {
      if (stopped) return;
      stopped = true;
      await terminate(child, exited, () => alive);
      process.removeListener("exit", onExit);
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

async function healthy(client: string): Promise<boolean> {
  try {
    const res = await fetch(`${client}/health`, { signal: AbortSignal.timeout(1000) });
    const body = (await res.json()) as { health?: string };
    return res.ok && body.health === "true";
  } catch {
    return false;
  }
}

/** A port that was free a moment ago (the kernel picks it); etcd binds it soon after. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => (port ? resolve(port) : reject(new Error("no free port"))));
    });
  });
}
