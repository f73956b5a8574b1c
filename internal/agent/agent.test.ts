// The agent in-process, on both stores, with the mock driver. The test plays the server: it
// writes assignments/<node>/<name> the way the scheduler and the instance API do, and asserts on
// what ends up in the store and in the mock runtime.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { clone, create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { AgentService } from "../../api/gen/hypervisor/v1/agent_pb.js";
import {
  type Instance,
  InstanceSchema,
  type InstanceStatus,
  InstanceStatusSchema,
  Phase,
  PowerState,
  RestartPolicy,
} from "../../api/gen/hypervisor/v1/instance_pb.js";
import { NodeSchema, type Orphan, OrphanReason, OrphanSchema } from "../../api/gen/hypervisor/v1/node_pb.js";
import { AgentEndpointSchema } from "../../api/gen/hypervisor/v1/store_pb.js";
import { openEmbeddedStore, type Store } from "../../pkg/cluster/store/index.js";
import { clusterId, codecs, keys, setNodeFlags } from "../../pkg/cluster/state/index.js";
import { statusRecord } from "../../test/support/assignments.js";
import { openEtcdStore } from "../../pkg/cluster/etcd/index.js";
import { createMockDriver, type MockDriver } from "../../pkg/compute/mock/index.js";
import { startEtcd } from "../../test/support/etcd.js";
import { Agent, RESTART_LABEL, toDriverSpec } from "./index.js";
import { assign, change } from "../../test/support/assignments.js";

const DEADLINE_MS = 20_000;

/** PurgeOrphan on the node's agent, as the server calls it: "ok" or the refusal's code. */
async function purgeCode(store: Store, node: string, name: string, uid: string): Promise<Code | "ok"> {
  const ep = fromBinary(AgentEndpointSchema, (await store.get(keys.endpoint(node)))!.value);
  const agent = createClient(AgentService, createGrpcTransport({ baseUrl: ep.url }));
  try {
    await agent.purgeOrphan({ name, uid }, { headers: { authorization: `Bearer ${ep.token}` } });
    return "ok";
  } catch (e) {
    return ConnectError.from(e).code;
  }
}

async function until<T>(what: string, probe: () => Promise<T | undefined | false>): Promise<T> {
  const deadline = Date.now() + DEADLINE_MS;
  let last: T | undefined | false;
  while (Date.now() < deadline) {
    last = await probe();
    if (last !== undefined && last !== false) return last;
    await sleep(25);
  }
  assert.fail(`timed out waiting for ${what}`);
}

type Opener = () => Promise<{ store: Store; cleanup: () => Promise<void> }>;

interface Harness {
  store: Store;
  dir: string;
}

function newInstance(
  name: string,
  node: string,
  over: { config?: Record<string, string>; policy?: RestartPolicy; driver?: string; desired?: PowerState } = {},
): Instance {
  return create(InstanceSchema, {
    name,
    uid: randomUUID(),
    generation: 1n,
    createTime: timestampNow(),
    spec: {
      driver: over.driver ?? "mock",
      vcpus: 1,
      memoryMib: 64n,
      desiredPowerState: over.desired ?? PowerState.RUNNING,
      restartPolicy: over.policy ?? RestartPolicy.ALWAYS,
      driverConfig: over.config ?? {},
    },
    status: { phase: Phase.SCHEDULED, node },
  });
}

async function orphanOf(store: Store, node: string, name: string): Promise<Orphan | undefined> {
  const kv = await store.get(keys.orphan(node, `default/${name}`));
  return kv ? fromBinary(OrphanSchema, kv.value) : undefined;
}

/** instances/<name> as the API keeps it, placed on `node` ("" for Pending). */
async function record(store: Store, inst: Instance, node: string, deleting = false): Promise<void> {
  const r = clone(InstanceSchema, inst);
  r.status = create(InstanceStatusSchema, { phase: node ? Phase.SCHEDULED : Phase.PENDING, node });
  if (deleting) r.deleteTime = timestampNow();
  await store.put(keys.instance(`default/${inst.name}`), toBinary(InstanceSchema, r));
}

async function status(store: Store, name: string): Promise<InstanceStatus | undefined> {
  return (await statusRecord(store, name))?.status;
}

const inPhase =
  (store: Store, name: string, phase: Phase, extra: (s: InstanceStatus) => boolean = () => true) =>
  async () => {
    const s = await status(store, name);
    return s && s.phase === phase && extra(s) ? s : undefined;
  };

function agentSuite(kind: string, open: Opener): void {
  describe(`agent on ${kind}`, () => {
    const h = {} as Harness;
    let cleanup: () => Promise<void>;
    before(async () => {
      const o = await open();
      h.store = o.store;
      cleanup = o.cleanup;
      await clusterId(h.store); // a server gives the cluster its id; agents wait for it
      h.dir = await mkdtemp(join(tmpdir(), "hv-agent-"));
    });
    after(async () => {
      await cleanup();
      await rm(h.dir, { recursive: true, force: true });
    });

    const boot = (node: string, driver: MockDriver, over: Partial<ConstructorParameters<typeof Agent>[0]> = {}) =>
      new Agent({
        store: h.store,
        nodeName: node,
        drivers: [driver],
        labels: { zone: "z1" },
        heartbeatTtlSeconds: 2,
        dataDir: join(h.dir, node),
        resyncMs: 60_000,
        ...over,
      });
    const mockOf = (node: string) => createMockDriver({ stateDir: join(h.dir, node, "mock") });

    describe("one agent", () => {
      const node = `n-${kind === "etcd" ? "e" : "m"}-main`;
      let agent: Agent;
      let mock: MockDriver;
      before(async () => {
        mock = mockOf(node);
        agent = boot(node, mock, { capacity: { vcpus: 10, memoryMiB: 10240 } });
        await agent.start();
      });
      after(async () => {
        await agent.stop();
        await mock.close();
      });

      it("registers the node with capacity, labels and drivers, and keeps it alive", async () => {
        const kv = await h.store.get(keys.node(node));
        assert.ok(kv);
        const n = fromBinary(NodeSchema, kv.value);
        assert.equal(n.capacity?.vcpus, 10);
        assert.equal(n.capacity?.memoryMib, 10240n);
        assert.equal(n.labels.zone, "z1");
        assert.deepEqual(
          n.drivers.map((d) => [d.name, d.healthy, d.capabilities?.stats]),
          [["mock", true, true]],
        );
        assert.notEqual(n.hostname, "");
        assert.ok(n.registerTime);
        assert.ok(await h.store.get(keys.alive(node)), "alive key under the lease");
      });

      it("runs an assigned instance and reports it Running", async () => {
        const inst = newInstance("web-1", node);
        await assign(h.store, node, inst);
        const s = await until("Running", inPhase(h.store, "web-1", Phase.RUNNING));
        assert.equal(s.node, node);
        assert.equal(s.observedGeneration, 1n);
        assert.ok(s.startTime);
        assert.equal(s.addresses.length, 1);
        const stored = fromBinary(InstanceSchema, (await h.store.get(keys.status(node, "default/web-1")))!.value);
        assert.equal(stored.uid, inst.uid, "status carries the instance uid");
        assert.equal(stored.spec, undefined, "status records hold only name, uid and status");
        assert.equal((await mock.inspect("web-1"))?.state, "running");
      });

      it("stops and starts as the desired power state changes", async () => {
        await assign(h.store, node, newInstance("web-2", node));
        await until("Running", inPhase(h.store, "web-2", Phase.RUNNING));
        await change(h.store, node, "web-2", (i) => (i.spec!.desiredPowerState = PowerState.STOPPED));
        const stopped = await until(
          "Stopped",
          inPhase(h.store, "web-2", Phase.STOPPED, (s) => s.observedGeneration === 2n),
        );
        assert.ok(stopped.stopTime);
        assert.equal((await mock.inspect("web-2"))?.state, "stopped");
        await change(h.store, node, "web-2", (i) => (i.spec!.desiredPowerState = PowerState.RUNNING));
        await until(
          "Running again",
          inPhase(h.store, "web-2", Phase.RUNNING, (s) => s.observedGeneration === 3n),
        );
        assert.equal((await mock.inspect("web-2"))?.state, "running");
      });

      it("creates but does not start an instance assigned Stopped", async () => {
        await assign(h.store, node, newInstance("cold-1", node, { desired: PowerState.STOPPED }));
        await until("Stopped", inPhase(h.store, "cold-1", Phase.STOPPED));
        assert.equal((await mock.inspect("cold-1"))?.state, "created");
      });

      it("deletes: destroys the instance, then says so in its own status for the garbage collector", async () => {
        const inst = newInstance("gone-1", node);
        await assign(h.store, node, inst);
        await until("Running", inPhase(h.store, "gone-1", Phase.RUNNING));
        const deleting = await change(h.store, node, "gone-1", (i) => (i.deleteTime = timestampNow()));
        const done = await until("destroyed", async () => {
          const kv = await h.store.get(keys.status(node, "default/gone-1"));
          const r = kv ? codecs.instance.decode(kv.value) : undefined;
          return r?.deleteTime ? r : undefined;
        });
        assert.equal(done.uid, inst.uid);
        assert.deepEqual(done.deleteTime, deleting.deleteTime, "the delete it carried out");
        assert.equal(await mock.inspect("gone-1"), undefined, "the mock runtime no longer has it");
        // A node writes only under its own prefix: the assignment is the garbage collector's to remove.
        assert.ok(await h.store.get(keys.assignment(node, "default/gone-1")));
      });

      it("restarts once when a restart is requested for a new generation", async () => {
        await assign(h.store, node, newInstance("rs-1", node));
        const first = await until("Running", inPhase(h.store, "rs-1", Phase.RUNNING));
        const before = (await mock.inspect("rs-1"))!;
        const inst = await change(h.store, node, "rs-1", (i) => (i.labels[RESTART_LABEL] = String(i.generation + 1n)));
        const after = await until(
          "restarted",
          inPhase(h.store, "rs-1", Phase.RUNNING, (s) => s.observedGeneration === inst.generation),
        );
        const now = (await mock.inspect("rs-1"))!;
        assert.ok(now.startedAt! > before.startedAt!, "started again");
        assert.equal(now.details.start_count, "2");
        assert.notDeepEqual(after.startTime, first.startTime);
        // A later change that is not a restart (label still names an older generation) does not restart.
        const again = await change(h.store, node, "rs-1", (i) => (i.labels.other = "x"));
        await until(
          "observed",
          inPhase(h.store, "rs-1", Phase.RUNNING, (s) => s.observedGeneration === again.generation),
        );
        assert.equal((await mock.inspect("rs-1"))?.details.start_count, "2");
      });

      it("NEVER: an exit with a code is Failed with that code, an exit 0 is Stopped", async () => {
        await assign(
          h.store,
          node,
          newInstance("exit-3", node, { policy: RestartPolicy.NEVER, config: { run_for: "200ms", exit_code: "3" } }),
        );
        await assign(h.store, node, newInstance("exit-0", node, { policy: RestartPolicy.NEVER, config: { run_for: "200ms" } }));
        const failed = await until("Failed", inPhase(h.store, "exit-3", Phase.FAILED));
        assert.equal(failed.exitCode, 3);
        assert.match(failed.message, /exited with code 3/);
        const done = await until("Stopped", inPhase(h.store, "exit-0", Phase.STOPPED));
        assert.equal(done.exitCode, 0);
        assert.equal(done.restartCount, 0);
      });

      it("ALWAYS and ON_FAILURE restart an exited instance, with a growing restart count", async () => {
        await assign(h.store, node, newInstance("loop-1", node, { policy: RestartPolicy.ALWAYS, config: { run_for: "100ms" } }));
        await assign(
          h.store,
          node,
          newInstance("crash-1", node, { policy: RestartPolicy.ON_FAILURE, config: { run_for: "100ms", exit_code: "1" } }),
        );
        await assign(h.store, node, newInstance("ok-1", node, { policy: RestartPolicy.ON_FAILURE, config: { run_for: "100ms" } }));
        await until("loop-1 restarted twice", async () => ((await status(h.store, "loop-1"))?.restartCount ?? 0) >= 2);
        await until("crash-1 restarted twice", async () => ((await status(h.store, "crash-1"))?.restartCount ?? 0) >= 2);
        const ok = await until("ok-1 done", inPhase(h.store, "ok-1", Phase.STOPPED));
        assert.equal(ok.restartCount, 0, "ON_FAILURE does not restart a clean exit");
      });

      it("reports a start error as Failed, and an unknown driver as Failed", async () => {
        await assign(
          h.store,
          node,
          newInstance("bad-1", node, { policy: RestartPolicy.NEVER, config: { start_error: "no bootable disk" } }),
        );
        const s = await until("Failed", inPhase(h.store, "bad-1", Phase.FAILED));
        assert.match(s.message, /no bootable disk/);
        await assign(h.store, node, newInstance("vm-1", node, { driver: "libvirt" }));
        const v = await until("Failed", inPhase(h.store, "vm-1", Phase.FAILED));
        assert.equal(v.message, `driver libvirt is not available on node ${node}`);
        await assign(h.store, node, newInstance("typo-1", node, { config: { run_fro: "1s" } }));
        const t = await until("Failed", inPhase(h.store, "typo-1", Phase.FAILED));
        assert.match(t.message, /unknown mock config key "run_fro"/);
      });

      it("does not rewrite an unchanged status", async () => {
        await assign(h.store, node, newInstance("quiet-1", node));
        await until("Running", inPhase(h.store, "quiet-1", Phase.RUNNING));
        const rev = (await h.store.get(keys.status(node, "default/quiet-1")))!.modRevision;
        // Rewriting the same assignment (same generation) queues the key again; nothing changed.
        const kv = (await h.store.get(keys.assignment(node, "default/quiet-1")))!;
        await h.store.put(keys.assignment(node, "default/quiet-1"), kv.value);
        await change(h.store, node, "web-1", (i) => (i.labels.touch = "1")); // a marker that a later event was handled
        await until(
          "later event handled",
          inPhase(h.store, "web-1", Phase.RUNNING, (s) => s.observedGeneration === 2n),
        );
        assert.equal((await h.store.get(keys.status(node, "default/quiet-1")))!.modRevision, rev);
      });
    });

    describe("reads", () => {
      const node = `n-${kind === "etcd" ? "e" : "m"}-reads`;
      let agent: Agent;
      let mock: MockDriver;
      /** Keys the agent read with get, in order. */
      const gets: string[] = [];
      before(async () => {
        mock = mockOf(node);
        const counting = new Proxy(h.store, {
          get(target, prop, receiver) {
            if (prop === "get")
              return (key: string, o?: Parameters<Store["get"]>[1]) => {
                gets.push(key);
                return target.get(key, o);
              };
            const v = Reflect.get(target, prop, receiver) as unknown;
            return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
          },
        });
        // One worker: a slow start of one instance holds back the events of another.
        agent = boot(node, mock, { store: counting, workers: 1 });
        await agent.start();
      });
      after(async () => {
        await agent.stop();
        await mock.close();
      });

      it("runs a new assignment without reading its assignment or status back", async () => {
        gets.length = 0;
        await assign(h.store, node, newInstance("lean-1", node));
        await until("Running", inPhase(h.store, "lean-1", Phase.RUNNING));
        // Driver events (created, started) queue it again: those reconciles read nothing either.
        await change(h.store, node, "lean-1", (i) => (i.labels.touch = "1"));
        await until(
          "observed",
          inPhase(h.store, "lean-1", Phase.RUNNING, (s) => s.observedGeneration === 2n),
        );
        assert.deepEqual(gets, []);
      });

      it("writes the status again after the instance was moved away and back (its status deleted)", async () => {
        const inst = newInstance("lean-2", node);
        await assign(h.store, node, inst);
        await until("Running", inPhase(h.store, "lean-2", Phase.RUNNING));
        // The only worker busy for 1.5 s, so both changes below reach the agent as one.
        await assign(h.store, node, newInstance("slow-1", node, { config: { start_delay: "1500ms" } }));
        await until("slow-1 starting", async () => (await mock.inspect("slow-1")) !== undefined);
        // As the HA and drain controllers unplace: assignment and status go in one txn …
        await h.store.txn(
          [],
          [
            { type: "delete", key: keys.assignment(node, "default/lean-2") },
            { type: "delete", key: keys.status(node, "default/lean-2") },
          ],
        );
        // … and the scheduler puts it back here, the same instance.
        await assign(h.store, node, inst);
        const s = await until("Running again", inPhase(h.store, "lean-2", Phase.RUNNING));
        assert.equal(s.node, node);
      });

      it("takes over the status another node left for a new assignment", async () => {
        const inst = newInstance("lean-3", node);
        const left = create(InstanceSchema, {
          name: inst.name,
          uid: inst.uid,
          status: { phase: Phase.RUNNING, node: "elsewhere", restartCount: 2 },
        });
        await h.store.put(keys.status(node, "default/lean-3"), toBinary(InstanceSchema, left));
        gets.length = 0;
        await assign(h.store, node, inst);
        const s = await until(
          "Running here",
          inPhase(h.store, "lean-3", Phase.RUNNING, (x) => x.node === node),
        );
        assert.equal(s.restartCount, 2, "the status read after the conflict carries on");
        assert.deepEqual(gets, [keys.status(node, "default/lean-3")], "one read, after the write found a status");
      });
    });

    describe("orphans", () => {
      const node = `n-${kind === "etcd" ? "e" : "m"}-orph`;
      let agent: Agent;
      let mock: MockDriver;
      before(async () => {
        mock = mockOf(node);
        agent = boot(node, mock);
        await agent.start();
      });
      after(async () => {
        await agent.stop();
        await mock.close();
      });

      it("destroys a moved copy only when it loses nothing: fences one with a local disk, destroys a deleted one", async () => {
        const eph = newInstance("moved-eph", node);
        const disk = newInstance("moved-disk", node, { config: { local_disk: "true" } });
        const declared = newInstance("moved-decl", node, { config: { local_disk: "true" } });
        declared.spec!.ephemeralDisks = true;
        const del = newInstance("gone-del", node, { config: { local_disk: "true" } });
        const all = [eph, disk, declared, del];
        for (const i of all) await assign(h.store, node, i);
        for (const i of all) await until(`${i.name} Running`, inPhase(h.store, i.name, Phase.RUNNING));
        // The server moved three away (another node, or back to Pending), and one is being deleted
        // while its assignment went with a lost node.
        await record(h.store, eph, "other-node");
        await record(h.store, disk, "other-node");
        await record(h.store, declared, "");
        await record(h.store, del, "other-node", true);
        for (const i of all) await h.store.delete(keys.assignment(node, `default/${i.name}`));

        await until("moved-eph destroyed", async () => (await mock.inspect("moved-eph")) === undefined);
        await until("moved-decl destroyed", async () => (await mock.inspect("moved-decl")) === undefined);
        await until("gone-del destroyed", async () => (await mock.inspect("gone-del")) === undefined);
        const fenced = await until("moved-disk fenced", async () => {
          const i = await mock.inspect("moved-disk");
          return i?.state === "stopped" ? i : undefined;
        });
        assert.equal(fenced.uid, disk.uid, "the same copy, stopped, not re-created");
        const o = await until("moved-disk reported", () => orphanOf(h.store, node, "moved-disk"));
        assert.equal(o.reason, OrphanReason.FENCED);
        assert.equal(o.placedNode, "other-node");
        assert.equal(o.localDisk, true);
        assert.equal(o.uid, disk.uid);
        for (const n of ["moved-eph", "moved-decl", "gone-del"]) assert.equal(await orphanOf(h.store, node, n), undefined);
      });

      it("an orphan is adopted back by assigning its uid again, and purged only on request", async () => {
        const keep = newInstance("orph-keep", node, { config: { local_disk: "true" } });
        const purge = newInstance("orph-purge", node, { config: { local_disk: "true" } });
        for (const i of [keep, purge]) await assign(h.store, node, i);
        for (const i of [keep, purge]) await until(`${i.name} Running`, inPhase(h.store, i.name, Phase.RUNNING));
        // A restored store that does not know them.
        for (const i of [keep, purge]) {
          await h.store.delete(keys.assignment(node, `default/${i.name}`));
          await h.store.delete(keys.status(node, `default/${i.name}`));
        }
        for (const i of [keep, purge]) await until(`${i.name} reported`, () => orphanOf(h.store, node, i.name));
        assert.equal((await mock.inspect("orph-keep"))?.state, "running", "an unknown instance is left as it is");

        // Adopted: assigned again with its uid (what AdoptOrphan writes); not re-created or restarted.
        const before = await mock.inspect("orph-keep");
        await assign(h.store, node, keep);
        await until("orph-keep Running", inPhase(h.store, "orph-keep", Phase.RUNNING));
        await until("orph-keep no longer an orphan", async () => (await orphanOf(h.store, node, "orph-keep")) === undefined);
        const after = await mock.inspect("orph-keep");
        assert.equal(after?.startedAt, before?.startedAt);
        assert.equal(after?.details.start_count, "1");

        // Purged through the agent's AgentService, as PurgeOrphan does.
        const post = (name: string, uid: string) => purgeCode(h.store, node, name, uid);
        assert.equal(await post("orph-keep", keep.uid), Code.FailedPrecondition, "an assigned instance is deleted, not purged");
        assert.equal(await post("orph-purge", "other-uid"), Code.NotFound);
        assert.equal(await post("orph-purge", purge.uid), "ok");
        assert.equal(await mock.inspect("orph-purge"), undefined);
        assert.equal(await orphanOf(h.store, node, "orph-purge"), undefined);
        assert.equal((await mock.inspect("orph-keep"))?.state, "running");
      });

      it("keeps an orphan with a local disk that holds the name of a new instance, which waits for a purge", async () => {
        const old = newInstance("taken-1", node, { config: { local_disk: "true" } });
        await assign(h.store, node, old);
        await until("old Running", inPhase(h.store, "taken-1", Phase.RUNNING));
        const fresh = newInstance("taken-1", node);
        await h.store.delete(keys.status(node, "default/taken-1"));
        await assign(h.store, node, fresh); // deleted and re-created while the node was away
        const st = await until("the new one refused", inPhase(h.store, "taken-1", Phase.FAILED));
        assert.match(st.message, /held on node .* by an orphan .* purge it/);
        assert.equal((await mock.inspect("taken-1"))?.uid, old.uid, "the old copy and its disk stay");
        const o = await until("reported", () => orphanOf(h.store, node, "taken-1"));
        assert.equal(o.reason, OrphanReason.NAME_TAKEN);
        assert.equal(await purgeCode(h.store, node, "taken-1", old.uid), "ok");
        await until("the new one Running", inPhase(h.store, "taken-1", Phase.RUNNING));
        assert.equal((await mock.inspect("taken-1"))?.uid, fresh.uid);
        await until("no orphan left", async () => (await orphanOf(h.store, node, "taken-1")) === undefined);
      });
    });

    describe("agent restart", () => {
      const node = `n-${kind === "etcd" ? "e" : "m"}-restart`;

      it("adopts running instances (no create, no start), keeps orphans as they are, and leaves instances running on stop", async () => {
        const m1 = mockOf(node);
        const a1 = boot(node, m1);
        await a1.start();
        const names = ["keep-1", "keep-2", "keep-3"];
        for (const n of names) await assign(h.store, node, newInstance(n, node));
        await assign(h.store, node, newInstance("drop-1", node));
        for (const n of [...names, "drop-1"]) await until(`${n} Running`, inPhase(h.store, n, Phase.RUNNING));
        const startedAt = new Map<string, number | undefined>();
        for (const n of names) startedAt.set(n, (await m1.inspect(n))?.startedAt);

        await a1.stop();
        await m1.close();
        assert.equal(await h.store.get(keys.alive(node)), undefined, "a stopped agent's node is not alive");
        for (const n of names) assert.equal((await mockOf(node).inspect(n))?.state, "running", "stop leaves instances running");

        // While the agent is away: one assignment vanishes (moved elsewhere), and an instance the
        // node was never assigned appears in the runtime.
        await h.store.delete(keys.assignment(node, "default/drop-1"));
        const stray = mockOf(node);
        await stray.create(toDriverSpec(newInstance("stray-1", node)));
        await stray.start("stray-1");
        await stray.close();

        const m2 = mockOf(node);
        const a2 = boot(node, m2);
        await a2.start();
        try {
          assert.deepEqual(a2.adoption.adopted.sort(), names);
          assert.deepEqual(a2.adoption.orphans.sort(), ["drop-1", "stray-1"]);
          assert.ok(await h.store.get(keys.alive(node)), "alive again");
          // Give the reconciles time to run, then check nothing was created or started.
          await until("a round of reconciles", async () => {
            const all = await Promise.all(names.map((n) => status(h.store, n)));
            return all.every((s) => s?.phase === Phase.RUNNING);
          });
          await assign(h.store, node, newInstance("marker-1", node));
          await until("marker Running (the queue has drained the earlier keys)", inPhase(h.store, "marker-1", Phase.RUNNING));
          assert.equal(m2.counters.creates, 1, "only the marker was created");
          assert.equal(m2.counters.starts, 1, "only the marker was started");
          for (const n of names) {
            const i = await m2.inspect(n);
            assert.equal(i?.state, "running");
            assert.equal(i?.startedAt, startedAt.get(n), `${n} was not restarted`);
            assert.equal(i?.details.start_count, "1");
          }
          // The store knows neither: both are left as they are and reported, never deleted.
          for (const n of ["drop-1", "stray-1"]) {
            assert.equal((await m2.inspect(n))?.state, "running", `${n} is left running`);
            const o = await until(`${n} reported as an orphan`, () => orphanOf(h.store, node, n));
            assert.equal(o.reason, OrphanReason.UNKNOWN);
            assert.equal(o.state, "running");
          }
          assert.equal((await orphanOf(h.store, node, "drop-1"))?.spec?.driver, "mock");
          assert.equal((await orphanOf(h.store, node, "drop-1"))?.spec?.vcpus, 1, "the spec the agent kept for it");
          assert.deepEqual(
            (await m2.list()).map((i) => i.name).sort(),
            [...names, "drop-1", "marker-1", "stray-1"].sort(),
            "nothing duplicated, nothing deleted",
          );
        } finally {
          await a2.stop();
          await m2.close();
        }
      });

      it("never touches another cluster's instance of the same node name", async () => {
        const fnode = `${node}-f`;
        const other = mockOf(fnode);
        other.setCluster("another-cluster");
        const foreign = newInstance("theirs-1", fnode);
        await other.create(toDriverSpec(foreign));
        await other.start("theirs-1");
        await other.close();
        const m = mockOf(fnode);
        const a = boot(fnode, m);
        await a.start();
        try {
          assert.deepEqual(a.adoption, { adopted: [], orphans: [] }, "not even listed as ours");
          await assign(h.store, fnode, newInstance("marker-2", fnode));
          await until("marker Running", inPhase(h.store, "marker-2", Phase.RUNNING));
          const still = mockOf(fnode);
          still.setCluster("another-cluster");
          const theirs = await still.inspect("theirs-1");
          await still.close();
          assert.equal(theirs?.state, "running");
          assert.equal(theirs?.uid, foreign.uid);
          assert.equal(await orphanOf(h.store, fnode, "theirs-1"), undefined, "no orphan reported for it");
          assert.equal(await m.inspect("theirs-1"), undefined, "invisible to this cluster's driver");
          await assert.rejects(m.destroy("theirs-1"), /belongs to cluster another-cluster/);
        } finally {
          await a.stop();
          await m.close();
        }
      });

      it("keeps the server's cordon when the agent registers again: the flags are not in its record", async () => {
        const cnode = `${node}-c`;
        const m = mockOf(cnode);
        const a = boot(cnode, m);
        await a.start();
        await setNodeFlags(h.store, cnode, { cordoned: true });
        await a.stop();
        const b = boot(cnode, m, { labels: { zone: "z2" } });
        await b.start();
        try {
          const n = fromBinary(NodeSchema, (await h.store.get(keys.node(cnode)))!.value);
          assert.equal(n.labels.zone, "z2", "the agent's own fields are updated");
          assert.equal(n.cordoned, false, "the record holds only what the agent knows");
          const flags = codecs.nodeFlags.decode((await h.store.get(keys.nodeFlags(cnode)))!.value);
          assert.equal(flags.cordoned, true);
        } finally {
          await b.stop();
          await m.close();
        }
      });

      it("refuses a node name that is not a valid name: the cluster's one rule, a letter first", () => {
        assert.throws(() => boot("Bad_Node", mockOf("x")), /node name "Bad_Node" is not a valid name/);
        assert.throws(() => boot("1node", mockOf("x")), /node name "1node" is not a valid name/);
      });
    });
  });
}

agentSuite("embedded", async () => {
  const dir = await mkdtemp(join(tmpdir(), "hv-agent-store-"));
  const store = await openEmbeddedStore(dir, { sync: false });
  return { store, cleanup: async () => (await store.close(), await rm(dir, { recursive: true, force: true })) };
});

agentSuite("etcd", async () => {
  const etcd = await startEtcd();
  const store = await openEtcdStore({ endpoints: [etcd.endpoint] });
  return { store, cleanup: async () => (await store.close(), await etcd.stop()) };
});
