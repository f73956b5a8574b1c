/*
 * The scheduler at scale: a real etcd, one scheduling hypervisor-server, and BENCH_SCALE_NODES
 * (5,000) simulated nodes — real Agents with the mock driver (state in memory), each with its own
 * lease (10 s TTL), in BENCH_SCALE_FLEETS (2) processes (bench/fleet.ts).
 *
 *   baseline   raw etcd puts/s through the same client, same etcd, same concurrency: the median
 *              of two rounds before and one after (the machine's speed drifts)
 *   phase 1    BENCH_SCALE_INSTANCES (10,000) creates through the API at BENCH_SCALE_CONCURRENCY
 *              (32), placed and run as they come: creates/s, placements/s (first create sent →
 *              last Scheduled), all Running, create→Running p50/p99, API p99 of CreateInstance,
 *              GetInstance and a label-filtered ListInstances (probed every 100/500 ms)
 *   phase 2    10,000 more, submitted as a Nomad job's count or OpenStack's --max-count would be:
 *              CreateInstances calls of BENCH_SCALE_BATCH (100) instances each, at
 *              BENCH_SCALE_BATCH_CONCURRENCY (4), to the same server, placed and run as they come:
 *              the same figures as phase 1. This is the issue's "place and run 10,000 instances"
 *              with the API's per-call cost spread over a batch.
 *   phase 3    the scheduler alone, as Nomad's C1M measured it: the server stops, an API-only
 *              replica (--no-controllers) takes 10,000 more creates (Pending), then a full server
 *              starts and places the backlog: placements/s first → last Scheduled, and from the
 *              server's start (informers synced, election won)
 *   NotReady   alive/<node> keys deleted (a lease expired) and leases the fleets had to grant
 *              again, over all phases: both must be 0
 *
 * TLS everywhere and etcd auth on by default (BENCH_SCALE_TLS=0 to compare): etcd with client
 * certificates from the cluster CA and roles, the API over TLS; the baseline's puts go over the
 * same TLS-and-auth etcd.
 *
 * Each phase prints CPU seconds per process (from /proc): every process shares the two cores.
 * placements/s are printed as ratios to raw puts/s (goal: at least 0.30).
 */
import { readFileSync } from "node:fs";
import { access, constants, mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { setTimeout as sleep } from "node:timers/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { fromBinary } from "@bufbuild/protobuf";
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { InstanceSchema, InstanceService, Phase } from "../api/gen/hypervisor/v1/instance_pb.js";
import { enableAuth, grantUser, openEtcdStore } from "../pkg/cluster/etcd/index.js";
import { loadOrCreateCa } from "../pkg/pki/index.js";
import { testCaIn } from "../test/support/pki.js";
import { keys, parseNodeKey } from "../pkg/cluster/state/index.js";
import { adminToken } from "../test/support/cluster.js";
import { startEtcd } from "../test/support/etcd.js";
import { binPath, freePort, Proc, until } from "../test/support/procs.js";
import { measurePuts } from "./etcd-baseline.js";
import { envInt, median } from "./util.js";

const NODES = envInt("BENCH_SCALE_NODES", 5000);
const INSTANCES = envInt("BENCH_SCALE_INSTANCES", 10_000);
const FLEETS = envInt("BENCH_SCALE_FLEETS", 2);
const CONCURRENCY = envInt("BENCH_SCALE_CONCURRENCY", 32);
const BATCH = envInt("BENCH_SCALE_BATCH", 100);
const BATCH_CONCURRENCY = envInt("BENCH_SCALE_BATCH_CONCURRENCY", 4);
const TTL = envInt("BENCH_SCALE_TTL", 10);
const NICE = Number(process.env.BENCH_SCALE_FLEET_NICE ?? 10);
if (!Number.isInteger(NICE) || NICE < 0 || NICE > 19)
  throw new Error(`BENCH_SCALE_FLEET_NICE: ${process.env.BENCH_SCALE_FLEET_NICE} is not 0-19`);

const pct = (xs: number[], p: number) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
/** Clock ticks per second of /proc/<pid>/stat times (USER_HZ, 100 on Linux). */
const TICKS = 100;
const log = (s: string) => console.error(`[scale] ${s}`);

// The simulated nodes' mock state (a file per instance) on tmpfs when there is one: on real
// machines each agent has its own disk; here 5,000 share one, and the simulation should not
// measure that disk.
const shm = await access("/dev/shm", constants.W_OK).then(
  () => "/dev/shm",
  () => tmpdir(),
);
const dir = await mkdtemp(join(shm, "hv-bench-scale-"));
// TLS and etcd auth on, as production runs (BENCH_SCALE_TLS=0: cleartext, no auth, to compare):
// the cluster CA in the servers' shared pki dir, etcd's certificates from it, the bench and the
// servers as etcd user hypervisor-server (root), each fleet process as user fleet:<f> whose role
// is a node's for every node of the bench (nodes/ read-write, assignments/ and the cluster id
// read: one role for its 2,500 nodes rather than 5,000 roles and certificates).
const TLS = process.env.BENCH_SCALE_TLS !== "0";
const pkiDir = join(dir, "pki");
await loadOrCreateCa(pkiDir);
await mkdir(join(dir, "etcd-pki"), { mode: 0o700 });
const testCa = testCaIn(pkiDir, join(dir, "etcd-pki"));
const etcd = await startEtcd(TLS ? { tls: testCa } : {});
const serverCert = TLS ? await testCa.issue("hypervisor-server") : undefined;
const etcdTls = (c: { certFile: string; keyFile: string } | undefined) =>
  c ? { tls: { caFile: testCa.caFile, certFile: c.certFile, keyFile: c.keyFile } } : {};
const store = await openEtcdStore({ endpoints: [etcd.endpoint], ...etcdTls(serverCert) });
if (TLS) await enableAuth(store);
const caPem = TLS ? readFileSync(join(pkiDir, "ca.crt"), "utf8") : "";
const procs: Proc[] = [];
const ac = new AbortController();
/**
 * Every API call as the bootstrap admin (the token the first server start writes into the shared
 * pki dir), read once it is there: a file read per call would weigh on the client's figures.
 */
let token = "";
const asAdmin: Interceptor = (next) => (req) => {
  token ||= adminToken(join(pkiDir, "ca.crt"));
  if (token) req.header.set("authorization", `Bearer ${token}`);
  return next(req);
};

/** With TLS: fleet <f>'s etcd user and certificate (CA, cert, key files) as fleet.js arguments. */
async function fleetIdentity(f: number): Promise<string[]> {
  if (!TLS) return [];
  const user = `fleet:f${f}`;
  await grantUser(store, user, [
    { access: "readwrite", key: keys.nodes, prefix: true },
    { access: "read", key: keys.assignments, prefix: true },
    { access: "read", key: keys.cluster, prefix: false },
  ]);
  const c = await testCa.issue(user);
  return [testCa.caFile, c.certFile, c.keyFile];
}
try {
  await measurePuts(store, 500, CONCURRENCY, "/bench/warm/");
  // The baseline is the median of three rounds, two before the run and one after it (with the
  // server and the fleets stopped): a shared machine's speed drifts over a few minutes.
  const rawRounds = [await measurePuts(store, 10_000, CONCURRENCY), await measurePuts(store, 10_000, CONCURRENCY)];
  log(`raw etcd puts: ${rawRounds.map((r) => r.perSecond.toFixed(0)).join(", ")}/s`);

  const env = { HYPERVISOR_LOG_LEVEL: "warn" };
  // BENCH_SCALE_PROFILE=DIR: the servers and the fleets write V8 CPU profiles there when they stop.
  const profile = process.env.BENCH_SCALE_PROFILE;
  /** A hypervisor-server on a free port, and an API client once it answers. */
  const startServer = async (name: string, extra: string[] = []) => {
    const port = await freePort();
    const proc = new Proc(
      name,
      [
        ...(profile ? ["--cpu-prof", `--cpu-prof-dir=${profile}`] : []),
        binPath("hypervisor-server"),
        // One pki dir for every server: the first start writes the bootstrap admin token there.
        ...["--pki-dir", pkiDir],
        ...(TLS && serverCert
          ? [
              ...["--etcd-ca-file", testCa.caFile, "--etcd-cert-file", serverCert.certFile],
              ...["--etcd-key-file", serverCert.keyFile, "--etcd-enable-auth"],
            ]
          : ["--no-tls"]),
        ...["--store", "etcd", "--etcd-endpoints", etcd.endpoint, "--listen", `127.0.0.1:${port}`],
        ...["--data-dir", join(dir, name), ...extra],
      ],
      env,
    );
    procs.push(proc);
    const client = createClient(
      InstanceService,
      createConnectTransport({
        baseUrl: `${TLS ? "https" : "http"}://127.0.0.1:${port}`,
        httpVersion: "2",
        useBinaryFormat: true,
        ...(TLS ? { nodeOptions: { ca: caPem } } : {}),
        interceptors: [asAdmin],
      }),
    );
    // Warn level prints no "listening" line: wait for the port instead.
    await until("the server", () => client.listInstances({ filter: { labelSelector: "probe=none" } }).then(() => true), 60_000, 200);
    return { proc, api: client };
  };
  let { proc: server, api } = await startServer("server");

  const t0 = performance.now();
  const per = Math.ceil(NODES / FLEETS);
  const fleets: Proc[] = [];
  for (let f = 0; f < FLEETS; f++) {
    const count = Math.min(per, NODES - f * per);
    const p = new Proc(
      `fleet ${f}`,
      [
        // BENCH_SCALE_FLEET_NICE (default 10): on real machines every node has its own CPUs; here
        // the simulated nodes run at a lower priority than etcd and the server, which would have
        // their machines to themselves. They still do all their work (leases, reconciles, status
        // writes), later: the bench counts every lease that expired, and it must stay 0. (It did
        // not at first: with 16 keep-alive streams for 2,500 nodes, one late renewal held up the
        // stream's others and expiries cascaded; now each fleet has a stream per two nodes.)
        "-n",
        String(NICE),
        process.execPath,
        ...(profile ? ["--cpu-prof", `--cpu-prof-dir=${profile}`] : []),
        fileURLToPath(new URL("./fleet.js", import.meta.url)),
        etcd.endpoint,
        `f${f}`,
        String(count),
        String(TTL),
        join(dir, `fleet-${f}`),
        ...(await fleetIdentity(f)),
      ],
      env,
      "nice",
    );
    procs.push(p);
    fleets.push(p);
  }
  for (const p of fleets) await p.waitFor(/fleet ready/, 600_000);
  const isAlive = (key: string) => parseNodeKey(key)?.kind === "alive";
  await until(
    "every node alive",
    async () => (await store.range(keys.nodes, { keysOnly: true })).kvs.filter((kv) => isAlive(kv.key)).length === NODES,
    120_000,
    500,
  );
  log(`${NODES} nodes registered and alive in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

  // From here on, every alive key deleted is a node that went NotReady.
  let notReady = 0;
  void (async () => {
    for await (const b of store.watch(keys.nodes, { signal: ac.signal }))
      for (const e of b.events) if (e.type === "delete" && isAlive(e.kv.key)) notReady++;
  })().catch(() => undefined);
  const lostLeases = (p: Proc) =>
    p.output.reduce((n, l) => n + (/^fleet lost-lease (\d+)/.exec(l) ? Number(/^fleet lost-lease (\d+)/.exec(l)![1]) : 0), 0);
  const regrantsBefore = fleets.reduce((n, p) => n + lostLeases(p), 0);

  const sentAt = new Map<string, number>();
  const scheduledAt = new Map<string, number>();
  const runningAt = new Map<string, number>();
  // Scheduled = its assignment written (the same txn that marks the instance Scheduled): the key
  // names the instance, so the bench's own watch decodes nothing on this machine's shared cores.
  void (async () => {
    for await (const b of store.watch(keys.assignments, { signal: ac.signal }))
      for (const e of b.events) {
        if (e.type !== "put" || e.kv.version !== 1) continue;
        const name = e.kv.key.slice(e.kv.key.lastIndexOf("/") + 1);
        if (!scheduledAt.has(name)) scheduledAt.set(name, performance.now());
      }
  })().catch(() => undefined);
  void (async () => {
    for await (const b of store.watch(keys.nodes, { signal: ac.signal }))
      for (const e of b.events) {
        if (e.type !== "put" || parseNodeKey(e.kv.key)?.kind !== "status") continue;
        const i = fromBinary(InstanceSchema, e.kv.value);
        if (i.status?.phase === Phase.RUNNING && !runningAt.has(i.name)) runningAt.set(i.name, performance.now());
      }
  })().catch(() => undefined);
  /** When the last of `names` reached `at`, or undefined while some have not. */
  const lastOf = (names: string[], at: Map<string, number>) => {
    let last = 0;
    for (const n of names) {
      const t = at.get(n);
      if (t === undefined) return undefined;
      last = Math.max(last, t);
    }
    return last;
  };
  /**
   * Creates `names` through `client`, `concurrency` calls at a time, each of `batch` instances
   * (CreateInstance for 1, CreateInstances above); each call's latency.
   */
  const createAll = async (client: typeof api, names: string[], concurrency = CONCURRENCY, batch = 1) => {
    const ms: number[] = [];
    const req = (name: string) => ({ name, labels: { bench: "scale" }, spec: { driver: "mock", vcpus: 1, memoryMib: 256n } });
    let next = 0;
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        for (let i = next; i < names.length; i = next) {
          next += batch;
          const some = names.slice(i, i + batch);
          const t = performance.now();
          for (const name of some) sentAt.set(name, t);
          if (batch === 1) await client.createInstance(req(some[0]!));
          else await client.createInstances({ instances: some.map(req) });
          ms.push(performance.now() - t);
        }
      }),
    );
    return ms;
  };

  /** Get and label-filtered list calls every 100/500 ms (gets of instances already sent) until stopped. */
  const probe = (names: string[]) => {
    const getMs: number[] = [];
    const listMs: number[] = [];
    let probing = true;
    const loops = [
      (async () => {
        while (probing) {
          await sleep(100);
          const name = names[Math.floor(Math.random() * names.length)]!;
          if (!sentAt.has(name)) continue;
          const t = performance.now();
          await api.getInstance({ name }).catch(() => undefined); // sent, maybe not yet created
          getMs.push(performance.now() - t);
        }
      })(),
      (async () => {
        while (probing) {
          await sleep(500);
          const t = performance.now();
          await api.listInstances({ filter: { labelSelector: "probe=none" } });
          listMs.push(performance.now() - t);
        }
      })(),
    ];
    // A failing probe (the server gone) fails the phase at stop(); unhandled until then, it would
    // end the bench at once, skipping the cleanup that stops the fleets.
    for (const l of loops) l.catch(() => undefined);
    return async () => {
      probing = false;
      await Promise.all(loops);
      return { getMs, listMs };
    };
  };

  /** Creates `names` (batch as createAll) and waits until all run: the figures of a phase. */
  const placeAndRun = async (names: string[], concurrency: number, batch: number) => {
    const stop = probe(names);
    const cpuFrom = cpuTimes();
    const started = performance.now();
    const createMs = await createAll(api, names, concurrency, batch);
    const createdAt = performance.now();
    await until("every instance Running", () => lastOf(names, runningAt) && lastOf(names, scheduledAt), 1_800_000, 200);
    const { getMs, listMs } = await stop();
    return {
      cpu: [cpuFrom, cpuTimes()] as const,
      started,
      createdAt,
      createMs,
      getMs,
      listMs,
      allScheduled: lastOf(names, scheduledAt)!,
      allRunning: lastOf(names, runningAt)!,
      toRunning: names.map((n) => runningAt.get(n)! - sentAt.get(n)!),
    };
  };

  // What the cluster costs at rest (5,000 leases kept alive, no instance changing), for scale.
  const idleFrom = cpuTimes();
  await sleep(5000);
  const idleTo = cpuTimes();

  // ── Phase 1: creates one at a time through the API, placed and run as they come ──
  const one = await placeAndRun(
    Array.from({ length: INSTANCES }, (_, i) => `scale-${i}`),
    CONCURRENCY,
    1,
  );
  // ── Phase 2: the same, submitted in batches (a job's count) to the same server ──
  const batched = await placeAndRun(
    Array.from({ length: INSTANCES }, (_, i) => `batch-${i}`),
    BATCH_CONCURRENCY,
    BATCH,
  );

  // ── Phase 3: the scheduler alone, on a backlog (as Nomad's C1M measured placements) ──
  // The server stops; an API-only replica (--no-controllers) takes INSTANCES more creates, which
  // stay Pending; then a full server starts, is elected, and places the backlog.
  await stopProc(server);
  const apiOnly = await startServer("api-only", ["--no-controllers"]);
  const backlog = Array.from({ length: INSTANCES }, (_, i) => `backlog-${i}`);
  const queuedFrom = performance.now();
  // Queued in batches: how fast they queue is not what this phase measures.
  const backlogCreateMs = await createAll(apiOnly.api, backlog, BATCH_CONCURRENCY, BATCH);
  const queuedIn = performance.now() - queuedFrom;
  if (backlog.some((n) => scheduledAt.has(n))) throw new Error("bench: an API-only replica placed an instance");
  await stopProc(apiOnly.proc);
  const cpuBacklogFrom = cpuTimes();
  const leaderFrom = performance.now();
  ({ proc: server, api } = await startServer("server-2"));
  await until("the backlog Running", () => lastOf(backlog, runningAt) && lastOf(backlog, scheduledAt), 1_800_000, 200);
  const cpuBacklogTo = cpuTimes();
  const firstPlaced = Math.min(...backlog.map((n) => scheduledAt.get(n)!));
  const lastPlaced = lastOf(backlog, scheduledAt)!;
  const backlogRunning = lastOf(backlog, runningAt)!;

  const regrants = fleets.reduce((n, p) => n + lostLeases(p), 0) - regrantsBefore;
  if (regrants || notReady)
    for (const p of fleets)
      log(
        `${p.name}: ${p.output
          .filter((l) => !l.startsWith("fleet "))
          .slice(-5)
          .join("\n  ")}`,
      );

  await stopAll();
  rawRounds.push(await measurePuts(store, 10_000, CONCURRENCY));
  const raw = { perSecond: median(rawRounds.map((r) => r.perSecond)) };

  const secs = (ms: number) => ms / 1000;
  const ratio = (perSec: number) => `ratio to raw etcd puts ${(perSec / raw.perSecond).toFixed(3)}`;
  const cpuRow = (from: Record<string, number>, to: Record<string, number>) =>
    Object.keys(to)
      .map((k) => `${k} ${(to[k]! - (from[k] ?? 0)).toFixed(1)}`)
      .join(", ");
  console.log(
    `hypervisor bench (scale): ${NODES} simulated nodes (mock driver, ${TTL} s leases, ${FLEETS} fleet processes at nice ${NICE}), ` +
      `${INSTANCES} instances per phase, one scheduling server, etcd ${etcd.endpoint}, ` +
      (TLS ? "TLS everywhere and etcd auth on (client certificates, roles)" : "cleartext, etcd auth off"),
  );
  const row = (k: string, v: string) => console.log(`${k.padEnd(44)} ${v}`);
  row(
    "raw etcd puts (baseline)",
    `${raw.perSecond.toFixed(0)}/s (median of ${rawRounds.map((r) => r.perSecond.toFixed(0)).join(", ")}: before, before, after)`,
  );
  const idle = Object.keys(idleTo).map((k) => `${k} ${((100 * (idleTo[k]! - (idleFrom[k] ?? 0))) / 5).toFixed(0)}%`);
  row("CPU at rest (5 s, leases only)", idle.join(", "));
  const phase = (title: string, p: typeof one, call: string, goal: string) => {
    console.log(title);
    const placementsPerSec = INSTANCES / secs(p.allScheduled - p.started);
    row("  creates accepted by the API", `${(INSTANCES / secs(p.createdAt - p.started)).toFixed(0)}/s`);
    row("  placements (first create → last Scheduled)", `${placementsPerSec.toFixed(0)}/s   ${ratio(placementsPerSec)}${goal}`);
    row("  all Running", `${secs(p.allRunning - p.started).toFixed(1)} s (${(INSTANCES / secs(p.allRunning - p.started)).toFixed(0)}/s)`);
    row("  create → Running per instance", `p50 ${median(p.toRunning).toFixed(0)} ms, p99 ${pct(p.toRunning, 99).toFixed(0)} ms`);
    row(`  API ${call}`, `p50 ${median(p.createMs).toFixed(1)} ms, p99 ${pct(p.createMs, 99).toFixed(1)} ms (${p.createMs.length} calls)`);
    row("  API GetInstance", `p50 ${median(p.getMs).toFixed(1)} ms, p99 ${pct(p.getMs, 99).toFixed(1)} ms (${p.getMs.length} calls)`);
    row(
      "  API ListInstances (label filter)",
      `p50 ${median(p.listMs).toFixed(1)} ms, p99 ${pct(p.listMs, 99).toFixed(1)} ms (${p.listMs.length} calls)`,
    );
    row("  CPU seconds", cpuRow(...p.cpu));
  };
  phase(`phase 1: CreateInstance one at a time (concurrency ${CONCURRENCY}), placed and run as they come`, one, "CreateInstance", "");
  phase(
    `phase 2: CreateInstances of ${BATCH} (concurrency ${BATCH_CONCURRENCY}), placed and run as they come`,
    batched,
    `CreateInstances (${BATCH})`,
    " (goal ≥ 0.30)",
  );
  console.log("phase 3: the scheduler alone on a backlog of Pending instances");
  row(
    "  backlog created (API-only replica)",
    `${(INSTANCES / secs(queuedIn)).toFixed(0)}/s, CreateInstances (${BATCH}) p99 ${pct(backlogCreateMs, 99).toFixed(1)} ms`,
  );
  const backlogPerSec = INSTANCES / secs(lastPlaced - firstPlaced);
  row("  placements (first → last Scheduled)", `${backlogPerSec.toFixed(0)}/s   ${ratio(backlogPerSec)} (goal ≥ 0.30)`);
  const withStart = INSTANCES / secs(lastPlaced - leaderFrom);
  row("  placements incl. server start + election", `${withStart.toFixed(0)}/s   ${ratio(withStart)}`);
  row("  backlog all Running", `${secs(backlogRunning - leaderFrom).toFixed(1)} s after the server started`);
  row("  CPU seconds", cpuRow(cpuBacklogFrom, cpuBacklogTo));
  row("nodes falsely NotReady (all phases)", `${notReady} alive keys lost, ${regrants} leases re-granted (goal: 0)`);
} catch (e) {
  // A process that died says why: its last lines, before the stack of whatever failed after it.
  for (const p of procs) if (!p.running) log(`${p.name} exited:\n${p.tail()}`);
  throw e;
} finally {
  await stopAll();
  await store.close();
  await etcd.stop();
  await rm(dir, { recursive: true, force: true });
}

/**
 * CPU seconds (user + system) each process has used so far, from /proc: where the run's time goes
 * on a machine whose cores every process shares.
 */
function cpuTimes(): Record<string, number> {
  const of = (pid: number) => {
    try {
      // Fields after the command name, which is in parentheses and may hold spaces.
      const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
      return (Number(f[11]) + Number(f[12])) / TICKS;
    } catch {
      return 0;
    }
  };
  const own = process.cpuUsage();
  const out: Record<string, number> = { etcd: of(etcd.pid) };
  for (const p of procs) out[p.name] = of(p.pid);
  out.bench = (own.user + own.system) / 1e6;
  return out;
}

/** Stops the watches, then the server (a CPU profile is written as it exits), then the fleets. */
async function stopAll(): Promise<void> {
  ac.abort();
  for (const p of [...procs]) await stopProc(p);
}

/** Stops one of `procs` and takes it out of the list. */
async function stopProc(p: Proc): Promise<void> {
  procs.splice(procs.indexOf(p), 1);
  const code = await p.stop(60_000);
  if (code !== 0) log(`${p.name} exited with ${code}: ${p.output.slice(-3).join(" | ")}`);
}
