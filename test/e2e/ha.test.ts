// HA with real processes as production runs them: a real etcd on TLS with client-certificate auth
// and node roles, two hypervisor-servers (one elected leader) sharing the cluster CA (one
// --pki-dir, each its own --data-dir) and serving TLS, three hypervisor-agents (mock driver)
// joined with a token through either server (mutual TLS; each agent's etcd identity confined to
// its own keys).
//
//   kill -9 an agent → NotReady after the TTL → after the grace period its instances come back on
//   the other nodes, once each (restart policy never: left where it was) → the agent restarts
//   (its certificate, no token) → it destroys its old copies (mock instances have no local disk
//   to keep), nothing runs twice
//   drain --move a node → its instances run elsewhere, a group never more down than its budget
//   kill -9 the leader in the middle of 200 creates → the other server leads → every instance
//   ends Running exactly once
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { get } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { ClusterService } from "../../api/gen/hypervisor/v1/cluster_pb.js";
import { NodeService } from "../../api/gen/hypervisor/v1/node_pb.js";
import {
  EventType,
  InstanceService,
  LabelOperator,
  Phase,
  RestartPolicy,
  Strategy,
  type Instance,
} from "../../api/gen/hypervisor/v1/instance_pb.js";
import { AssignmentSchema } from "../../api/gen/hypervisor/v1/store_pb.js";
import { type Store } from "../../pkg/cluster/store/index.js";
import { keys, parseAssignmentKey, splitRef } from "../../pkg/cluster/state/index.js";
import { asAdmin, ctlFor, joinArgs, joinToken, startSecureEtcd, type SecureEtcd } from "../support/cluster.js";
import { binPath, freePort, Proc, until } from "../support/procs.js";

const TTL = 2;
const GRACE = 3;

describe("HA: lost nodes and a lost leader (etcd, two servers, three agents)", { timeout: 600_000 }, () => {
  let dir: string;
  let etcd: SecureEtcd;
  let ca: string;
  let store: Store;
  let token = "";
  const servers = new Map<string, { proc: Proc; port: number }>();
  const agents = new Map<string, Proc>();

  const url = (id: string) => `https://127.0.0.1:${servers.get(id)!.port}`;
  /** Every server gets the cluster's one --pki-dir (one CA, so one --ca-file trusts them all). */
  const startServer = (id: string, port: number, ...more: string[]) => {
    const proc = new Proc(`server ${id}`, [
      binPath("hypervisor-server"),
      ...etcd.serverArgs,
      ...["--listen", `127.0.0.1:${port}`, "--data-dir", join(dir, id), "--server-id", id],
      ...["--ha-grace-period", String(GRACE), ...more],
    ]);
    servers.set(id, { proc, port });
    return proc;
  };
  /** Joined through server `via` with the token on its first start; restarted, its certificate is enough. */
  const startAgent = (name: string, via: string) => {
    const p = new Proc(`agent ${name}`, [
      binPath("hypervisor-agent"),
      ...["--node-name", name, "--etcd-endpoints", etcd.etcd.endpoint, "--heartbeat-ttl", String(TTL), "--drivers", "mock"],
      ...["--data-dir", join(dir, name), "--capacity-vcpus", "400", "--capacity-memory-mib", "409600"],
      ...(agents.has(name) ? ["--server", url(via)] : joinArgs(url(via), token)),
    ]);
    agents.set(name, p);
    return p;
  };
  /** As the bootstrap admin: the first server's start made the token, and every server accepts it. */
  const transport = (id: string) =>
    createConnectTransport({ baseUrl: url(id), httpVersion: "1.1", nodeOptions: { ca }, interceptors: [asAdmin(etcd.caFile)] });
  const api = (id: string): Client<typeof InstanceService> => createClient(InstanceService, transport(id));
  const healthz = (id: string) =>
    new Promise<string>((resolve, reject) =>
      get(`${url(id)}/healthz`, { ca }, (res) => {
        let body = "";
        res.setEncoding("utf8").on("data", (c: string) => (body += c));
        res.on("end", () => resolve(body)).on("error", reject);
      }).on("error", reject),
    );
  const leaderId = async (): Promise<string> => {
    for (const id of servers.keys()) {
      if (!servers.get(id)!.proc.running) continue;
      const cluster = createClient(ClusterService, transport(id));
      const h = await cluster.getHealth({}).catch(() => undefined);
      if (h?.leaderId && servers.get(h.leaderId)?.proc.running) return h.leaderId;
    }
    return "";
  };
  const anyServer = () => [...servers.keys()].find((id) => servers.get(id)!.proc.running)!;
  const list = async (): Promise<Instance[]> => (await api(anyServer()).listInstances({})).instances;
  const mockFiles = async (node: string) => (await readdir(join(dir, node, "mock")).catch(() => [])).filter((f) => f.endsWith(".json"));
  /** Assignment keys per instance name: each placed instance must have exactly one. */
  const assignments = async (): Promise<Map<string, string[]>> => {
    const out = new Map<string, string[]>();
    for (const kv of (await store.range(keys.assignments)).kvs) {
      const [node, ref] = parseAssignmentKey(kv.key)!;
      const { name } = splitRef(ref);
      assert.equal(fromBinary(AssignmentSchema, kv.value).instance?.name, name);
      out.set(name, [...(out.get(name) ?? []), node]);
    }
    return out;
  };

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-e2e-ha-"));
    etcd = await startSecureEtcd(join(dir, "pki"));
    ca = await readFile(etcd.caFile, "utf8");
    store = await etcd.openAsServer();
    for (const id of ["s1", "s2"]) await startServer(id, await freePort()).waitFor(/server listening/);
    // One token for the three; each server checks it and issues from the shared CA, so an agent
    // may join through either: ha-b goes through s2.
    token = await joinToken(ctlFor(url("s1"), etcd.caFile), 3);
    for (const [n, via] of [
      ["ha-a", "s1"],
      ["ha-b", "s2"],
      ["ha-c", "s1"],
    ] as const)
      await startAgent(n, via).waitFor(/agent started/);
  });

  after(async () => {
    for (const a of agents.values()) await a.stop();
    for (const s of servers.values()) await s.proc.stop();
    await store?.close();
    await etcd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it("moves a lost node's instances to the others after the grace period, once each, and fences the old copies", async () => {
    const client = api("s1");
    for (let i = 0; i < 9; i++)
      await client.createInstance({
        name: `ha-${i}`,
        labels: { app: "ha" },
        spec: {
          driver: "mock",
          vcpus: 1,
          memoryMib: 64n,
          restartPolicy: RestartPolicy.ALWAYS,
          placement: { strategy: Strategy.SPREAD, maxPerNode: 6 },
        },
      });
    await client.createInstance({
      name: "ha-never",
      spec: { driver: "mock", vcpus: 1, memoryMib: 64n, restartPolicy: RestartPolicy.NEVER, nodeSelector: {} },
    });
    const running = await until(
      "all Running",
      async () => {
        const all = await list();
        return all.length === 10 && all.every((i) => i.status?.phase === Phase.RUNNING) ? all : undefined;
      },
      60_000,
    );
    const neverNode = running.find((i) => i.name === "ha-never")!.status!.node;
    const victim = neverNode; // the node with the never-restart instance, and three of the others
    const lost = running.filter((i) => i.status?.node === victim && i.name !== "ha-never").map((i) => i.name);
    assert.ok(lost.length >= 1, "spread put some of them there");
    assert.equal((await mockFiles(victim)).length, lost.length + 1);

    await agents.get(victim)!.kill9();
    const moved = await until(
      "the lost node's instances Running elsewhere",
      async () => {
        const all = await list();
        const ok = lost.every((n) => {
          const i = all.find((x) => x.name === n);
          return i?.status?.phase === Phase.RUNNING && i.status.node !== victim;
        });
        return ok ? all : undefined;
      },
      60_000,
      250,
    );
    const stayed = moved.find((i) => i.name === "ha-never")!;
    assert.equal(stayed.status?.node, victim, "restart policy never: not moved");
    const a = await assignments();
    for (const n of lost) assert.equal(a.get(n)?.length, 1, `${n} assigned once: ${a.get(n)?.join(",")}`);
    for (const n of lost) assert.notEqual(a.get(n)?.[0], victim);
    assert.deepEqual(a.get("ha-never"), [victim]);
    for (const i of moved)
      assert.ok(i.status?.phase === Phase.RUNNING || i.name === "ha-never", `${i.name} ${Phase[i.status?.phase ?? 0]}`);
    // Each moved instance was rescheduled once (the leader's log says so once per instance).
    const logs = [...servers.values()].flatMap((s) => s.proc.output).filter((l) => /rescheduling an instance from a lost node/.test(l));
    for (const n of lost) assert.equal(logs.filter((l) => l.includes(`"instance":"default/${n}"`)).length, 1, `${n} rescheduled once`);

    // The node comes back: its agent destroys the copies moved away (no local disk) and keeps ha-never.
    await startAgent(victim, anyServer()).waitFor(/agent started/);
    await until("the old copies destroyed", async () => (await mockFiles(victim)).length === 1, 30_000);
    const after = await list();
    assert.ok(
      after.every((i) => i.status?.phase === Phase.RUNNING),
      "all Running, none twice",
    );
    assert.equal(after.filter((i) => i.status?.node === victim).length, 1);
  });

  it("drain --move moves a node's instances elsewhere, never taking more of a group down than its budget allows", async () => {
    const client = api("s1");
    const group = Array.from({ length: 6 }, (_, i) => `dr-${i}`);
    for (const name of group)
      await client.createInstance({
        name,
        labels: { app: "dr" },
        spec: {
          driver: "mock",
          vcpus: 1,
          memoryMib: 16n,
          placement: {
            // All on ha-a to begin with, so that draining it moves the whole group.
            preferences: [{ requirement: { key: "hypervisor.dev/node", operator: LabelOperator.IN, values: ["ha-a"] }, weight: 100 }],
            disruptionBudget: { maxUnavailable: 1 },
          },
        },
      });
    await until(
      "the group Running on ha-a",
      async () => {
        const all = (await client.listInstances({ filter: { labelSelector: "app=dr" } })).instances;
        return (all.length === 6 && all.every((i) => i.status?.phase === Phase.RUNNING && i.status.node === "ha-a")) || undefined;
      },
      60_000,
    );

    // Every change the server reports, in order: how many of the group are down at each moment.
    const ac = new AbortController();
    const phase = new Map<string, Phase>();
    let worst = 0;
    let synced = false;
    const watching = (async () => {
      for await (const ev of client.watchInstances({ filter: { labelSelector: "app=dr" } }, { signal: ac.signal })) {
        if (ev.type === EventType.SYNCED) synced = true;
        if (!ev.instance) continue;
        phase.set(ev.instance.name, ev.instance.status?.phase ?? Phase.UNSPECIFIED);
        if (synced) worst = Math.max(worst, [...phase.values()].filter((p) => p !== Phase.RUNNING).length);
      }
    })().catch(() => undefined);
    await until("the watch's first list", () => synced, 10_000, 20);

    const nodes = createClient(NodeService, transport("s1"));
    const res = await nodes.drainNode({ name: "ha-a", move: true });
    assert.equal(res.node?.draining, true);
    assert.equal(res.node?.cordoned, true);
    for (const name of group) assert.ok(res.movingInstances.includes(name), `${name} to move`);
    const done = await until(
      "the group Running elsewhere and the drain finished",
      async () => {
        const all = (await client.listInstances({ filter: { labelSelector: "app=dr" } })).instances;
        const n = (await nodes.getNode({ name: "ha-a" })).node!;
        return all.every((i) => i.status?.phase === Phase.RUNNING && i.status.node !== "ha-a") && !n.draining ? { all, n } : undefined;
      },
      120_000,
      250,
    );
    ac.abort();
    await watching;
    assert.equal(done.n.cordoned, true, "a drained node stays cordoned");
    assert.equal(worst, 1, "one of the group down at a time (budget 1), and the moves did happen one by one");
    assert.equal((await assignments()).get("dr-0")?.length, 1);
    assert.deepEqual(await mockFiles("ha-a").then((f) => f.filter((x) => x.startsWith("dr-"))), [], "the old copies are gone");
    await nodes.uncordonNode({ name: "ha-a" });
  });

  it("loses no create and doubles none when the leader is killed in the middle of 200", async () => {
    const leader = await until("a leader", async () => (await leaderId()) || undefined, 30_000);
    const other = [...servers.keys()].find((id) => id !== leader)!;
    const names = Array.from({ length: 200 }, (_, i) => `burst-${i}`);
    let sent = 0;
    const create = async (name: string) => {
      for (;;) {
        // Half through the leader while it lives; after that (and on any failure) the other one.
        const via = servers.get(leader)!.proc.running && sent % 2 === 0 ? leader : other;
        try {
          await api(via).createInstance({ name, labels: { app: "burst" }, spec: { driver: "mock", vcpus: 1, memoryMib: 16n } });
          return;
        } catch (e) {
          // The create may have landed before the connection died: AlreadyExists is success.
          if (ConnectError.from(e).code === Code.AlreadyExists) return;
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    };
    const burst = (async () => {
      for (let i = 0; i < names.length; i += 10) {
        await Promise.all(names.slice(i, i + 10).map(create));
        sent += 10;
      }
    })();
    await until("a quarter sent", () => sent >= 50, 60_000, 20);
    await servers.get(leader)!.proc.kill9();
    await burst;
    await until("the other server leads", async () => (await leaderId()) === other, 30_000);
    const all = await until(
      "every create Running",
      async () => {
        const got = (await api(other).listInstances({ filter: { labelSelector: "app=burst" } })).instances;
        return got.length === 200 && got.every((i) => i.status?.phase === Phase.RUNNING) ? got : undefined;
      },
      120_000,
      500,
    );
    assert.deepEqual(all.map((i) => i.name).sort(), [...names].sort());
    const a = await assignments();
    for (const n of names) assert.equal(a.get(n)?.length, 1, `${n} placed exactly once`);
    let files = 0;
    for (const node of ["ha-a", "ha-b", "ha-c"]) files += (await mockFiles(node)).filter((f) => f.startsWith("burst-")).length;
    assert.equal(files, 200, "200 mock instances run, none twice");
  });

  it("an API-only replica (--no-controllers) serves the API but never schedules", async () => {
    const port = await freePort();
    const apiOnly = startServer("s3", port, "--no-controllers");
    await apiOnly.waitFor(/server listening/);
    assert.equal(await healthz("s3"), "ok api-only\n");
    // Only the API-only replica left: a create is accepted and stays Pending.
    for (const id of ["s1", "s2"]) await servers.get(id)!.proc.stop();
    await api("s3").createInstance({ name: "api-only-1", spec: { driver: "mock", vcpus: 1, memoryMib: 16n } });
    await new Promise((r) => setTimeout(r, 2000));
    const waiting = (await api("s3").getInstance({ name: "api-only-1" })).instance!;
    assert.equal(waiting.status?.phase, Phase.PENDING);
    assert.equal(waiting.status?.node, "");
    assert.equal((await assignments()).get("api-only-1"), undefined);
    // A full replica comes back, leads, and places it; the API-only one still only serves.
    await startServer("s1", servers.get("s1")!.port).waitFor(/server listening/);
    await until(
      "placed and Running",
      async () => ((await api("s3").getInstance({ name: "api-only-1" })).instance?.status?.phase === Phase.RUNNING ? true : undefined),
      60_000,
    );
    assert.equal(await leaderId(), "s1");
    assert.equal(await healthz("s3"), "ok api-only\n");
  });
});
