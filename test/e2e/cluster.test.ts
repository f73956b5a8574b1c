// The whole system with real processes as production runs them: a real etcd on TLS with
// client-certificate auth and node roles, one hypervisor-server serving TLS, two hypervisor-agents
// (mock driver) joined with a token (mutual TLS between server and agents; each agent's etcd
// identity confined to its own keys), driven through the hypervisor-ctl binary.
//
//   create 20 → all Running within capacity → stop/start/delete → kill -9 an agent → NotReady
//   after the TTL → restart it → Ready, instances adopted (not re-created) → restart the server
//   → nothing lost
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ctlFor, joinArgs, joinToken as makeJoinToken, startSecureEtcd, type SecureEtcd } from "../support/cluster.js";
import { binPath, freePort, Proc, until } from "../support/procs.js";

const TTL = 3;

interface JsonInstance {
  name: string;
  uid: string;
  labels?: Record<string, string>;
  status?: { phase?: string; node?: string; startTime?: string; message?: string };
}
interface JsonNode {
  name: string;
  condition?: string;
  instanceCount?: number;
  capacity?: { vcpus?: number };
}

describe("cluster end to end (etcd, server, two agents, ctl)", { timeout: 600_000 }, () => {
  let dir: string;
  let etcd: SecureEtcd;
  let port: number;
  let server: Proc;
  const agents = new Map<string, Proc>();
  let joinToken = "";

  const ctl = (...args: string[]) => ctlFor(`https://127.0.0.1:${port}`, etcd.caFile, 120_000)(...args);
  const ctlFails = async (...args: string[]): Promise<{ code: number; stderr: string; stdout: string }> => {
    try {
      await ctl(...args);
    } catch (e) {
      const err = e as { code: number; stderr: string; stdout: string };
      return { code: err.code, stderr: err.stderr, stdout: err.stdout };
    }
    throw new Error(`hypervisor-ctl ${args.join(" ")} succeeded but should have failed`);
  };
  const instances = async (): Promise<JsonInstance[]> =>
    (JSON.parse(await ctl("instance", "list", "-o", "json")) as { items: JsonInstance[] }).items;
  const nodes = async (): Promise<JsonNode[]> => (JSON.parse(await ctl("node", "list", "-o", "json")) as { items: JsonNode[] }).items;
  const startServer = () =>
    new Proc("server", [
      binPath("hypervisor-server"),
      ...etcd.serverArgs,
      "--listen",
      `127.0.0.1:${port}`,
      "--data-dir",
      join(dir, "server"),
    ]);
  const startAgent = (name: string) => {
    const p = new Proc(`agent ${name}`, [
      binPath("hypervisor-agent"),
      "--node-name",
      name,
      "--etcd-endpoints",
      etcd.etcd.endpoint,
      "--heartbeat-ttl",
      String(TTL),
      "--drivers",
      "mock",
      "--data-dir",
      join(dir, name),
      "--label",
      `name=${name}`,
      // Simulated capacity: 10 vCPUs and 10 GiB per node, whatever this machine has.
      "--capacity-vcpus",
      "10",
      "--capacity-memory-mib",
      "10240",
      // Joined with a token (a restart uses the certificate it got): mutual TLS with the server.
      ...joinArgs(`https://127.0.0.1:${port}`, joinToken),
    ]);
    agents.set(name, p);
    return p;
  };
  const mockInstancesOn = async (node: string) => (await readdir(join(dir, node, "mock"))).filter((f) => f.endsWith(".json")).sort();

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-e2e-"));
    etcd = await startSecureEtcd(join(dir, "server", "pki"));
    port = await freePort();
    server = startServer();
    await server.waitFor(/server listening/);
    joinToken = await makeJoinToken(ctl, 2);
    startAgent("node-a");
    startAgent("node-b");
    await until("both nodes Ready", async () => (await nodes()).filter((n) => n.condition === "NODE_CONDITION_READY").length === 2);
  });

  after(async () => {
    for (const a of agents.values()) await a.stop();
    await server?.stop();
    await etcd?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it("runs 20 instances on the two nodes within capacity", async () => {
    await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        ctl("instance", "create", `web-${i}`, "--driver", "mock", "--vcpus", "1", "--memory", "512", "--label", "app=web"),
      ),
    );
    const all = await until("20 Running", async () => {
      const list = await instances();
      return list.length === 20 && list.every((i) => i.status?.phase === "PHASE_RUNNING") ? list : undefined;
    });
    const perNode = new Map<string, number>();
    for (const i of all) perNode.set(i.status!.node!, (perNode.get(i.status!.node!) ?? 0) + 1);
    assert.deepEqual([...perNode.keys()].sort(), ["node-a", "node-b"]);
    assert.deepEqual([...perNode.values()], [10, 10], "each 10-vCPU node holds exactly 10 one-vCPU instances");
    // A 21st does not fit anywhere: it stays Pending and says why.
    await ctl("instance", "create", "web-extra", "--driver", "mock", "--vcpus", "1", "--memory", "512");
    const pending = await until("a reason", async () => {
      const i = JSON.parse(await ctl("instance", "get", "web-extra", "-o", "json")) as JsonInstance;
      return i.status?.message?.startsWith("0/2") ? i : undefined;
    });
    assert.equal(pending.status?.phase, "PHASE_PENDING");
    assert.equal(pending.status?.message, "0/2 nodes available: 2 insufficient cpu");
    await ctl("instance", "delete", "web-extra", "--wait");
  });

  it("stops, starts and deletes through the CLI", async () => {
    await ctl("instance", "stop", "web-0", "--wait");
    assert.equal((JSON.parse(await ctl("instance", "get", "web-0", "-o", "json")) as JsonInstance).status?.phase, "PHASE_STOPPED");
    await ctl("instance", "start", "web-0", "--wait");
    assert.equal((JSON.parse(await ctl("instance", "get", "web-0", "-o", "json")) as JsonInstance).status?.phase, "PHASE_RUNNING");
    const node = (JSON.parse(await ctl("instance", "get", "web-19", "-o", "json")) as JsonInstance).status!.node!;
    const before = await mockInstancesOn(node);
    await ctl("instance", "delete", "web-19", "--wait");
    const gone = await ctlFails("instance", "get", "web-19");
    assert.notEqual(gone.code, 0);
    assert.match(gone.stderr, /not found/);
    assert.equal(gone.stdout, "");
    const afterDelete = await mockInstancesOn(node);
    assert.equal(afterDelete.length, before.length - 1, "the mock runtime no longer has the instance");
    assert.equal((await instances()).length, 19);
  });

  it("rejects bad input from the CLI and changes nothing", async () => {
    const before = await instances();
    for (const args of [
      ["instance", "create", "Bad_Name", "--driver", "mock", "--vcpus", "1", "--memory", "64"],
      ["instance", "create", "ok-name", "--driver", "vmware", "--vcpus", "1", "--memory", "64"],
      ["instance", "create", "ok-name", "--driver", "mock", "--vcpus", "1", "--memory", "99999999999"],
    ]) {
      const r = await ctlFails(...args);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /invalid_argument|InvalidArgument|invalid argument/i);
    }
    assert.deepEqual(
      (await instances()).map((i) => i.uid),
      before.map((i) => i.uid),
    );
  });

  it("marks a killed agent's node NotReady after the TTL, and adopts its instances when it returns", async () => {
    const victim = agents.get("node-a")!;
    const onA = (await instances()).filter((i) => i.status?.node === "node-a");
    assert.ok(onA.length > 0);
    const startTimes = new Map(onA.map((i) => [i.name, i.status?.startTime]));
    const filesBefore = await mockInstancesOn("node-a");
    await victim.kill9();
    await until(
      "node-a NotReady",
      async () => (await nodes()).find((n) => n.name === "node-a")?.condition === "NODE_CONDITION_NOT_READY",
      (TTL + 10) * 1000,
    );
    assert.equal((await nodes()).find((n) => n.name === "node-b")?.condition, "NODE_CONDITION_READY");

    const back = startAgent("node-a");
    await back.waitFor(/adopt/i);
    await until("node-a Ready again", async () => (await nodes()).find((n) => n.name === "node-a")?.condition === "NODE_CONDITION_READY");
    const after = await until("instances Running again on node-a", async () => {
      const list = (await instances()).filter((i) => i.status?.node === "node-a");
      return list.length === onA.length && list.every((i) => i.status?.phase === "PHASE_RUNNING") ? list : undefined;
    });
    for (const i of after) assert.equal(i.status?.startTime, startTimes.get(i.name), `${i.name} was restarted instead of adopted`);
    assert.deepEqual(await mockInstancesOn("node-a"), filesBefore, "nothing duplicated, nothing orphaned in the runtime");
  });

  it("loses nothing when the server restarts", async () => {
    const before = await instances();
    assert.equal(await server.stop(), 0, "server exits cleanly on SIGTERM");
    server = startServer();
    await server.waitFor(/server listening/);
    const after = await until("the same instances, all Running", async () => {
      const list = await instances();
      return list.length === before.length && list.every((i) => i.status?.phase === "PHASE_RUNNING") ? list : undefined;
    });
    assert.deepEqual(
      after.map((i) => [i.name, i.uid, i.status?.node]),
      before.map((i) => [i.name, i.uid, i.status?.node]),
    );
    // And it still schedules.
    await ctl("instance", "create", "after-restart", "--driver", "mock", "--vcpus", "1", "--memory", "64", "--wait");
  });
});
