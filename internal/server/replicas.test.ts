// Two server replicas on one real etcd: both serve the API, exactly one leads (schedules), and
// when the leader stops the other takes over and places what was created meanwhile. Then two
// schedulers at once, which must still never over-commit a node.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { ClusterService } from "../../api/gen/hypervisor/v1/cluster_pb.js";
import { InstanceService, Phase } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { NodeSchema } from "../../api/gen/hypervisor/v1/node_pb.js";
import { AllocationSchema } from "../../api/gen/hypervisor/v1/store_pb.js";
import { Election } from "../../pkg/cluster/election/index.js";
import { openEtcdStore } from "../../pkg/cluster/etcd/index.js";
import { type Store } from "../../pkg/cluster/store/index.js";
import { keys, parseAssignmentKey } from "../../pkg/cluster/state/index.js";
import { startEtcd, type EtcdProcess } from "../../test/support/etcd.js";
import { until } from "../../test/support/procs.js";
import { Server } from "./server.js";

describe("server replicas on one etcd", () => {
  let etcd: EtcdProcess;
  const stores: Store[] = [];
  const servers: Server[] = [];

  before(async () => {
    etcd = await startEtcd();
    for (const id of ["s1", "s2"]) {
      const store = await openEtcdStore({ endpoints: [etcd.endpoint] });
      stores.push(store);
      const server = new Server({
        store,
        host: "127.0.0.1",
        port: 0,
        version: "test",
        access: "none",
        serverId: id,
        leadership: new Election(store, "scheduler", id, { ttlSeconds: 2 }),
      });
      await server.start();
      servers.push(server);
    }
    const node = create(NodeSchema, { name: "n1", capacity: { vcpus: 8, memoryMib: 8192n }, drivers: [{ name: "mock", healthy: true }] });
    await stores[0]!.put(keys.node("n1"), toBinary(NodeSchema, node));
    await stores[0]!.put(keys.alive("n1"), new Uint8Array([1]));
  });

  after(async () => {
    for (const s of servers) await s.stop();
    for (const s of stores) await s.close();
    await etcd.stop();
  });

  it("elects exactly one leader and fails over when it stops", async () => {
    await until("a leader", () => servers.some((s) => s.leading));
    assert.equal(servers.filter((s) => s.leading).length, 1);
    const leader = servers.find((s) => s.leading)!;
    const follower = servers.find((s) => !s.leading)!;
    const cluster = createClient(ClusterService, createConnectTransport({ baseUrl: follower.url, httpVersion: "1.1" }));
    // The follower learns who leads from the election key's watch, a moment after the leader knows.
    const health = await until("the follower names the leader", async () => {
      const h = await cluster.getHealth({});
      return h.leaderId ? h : undefined;
    });
    assert.equal(health.serverId, follower.serverId);
    assert.equal(health.leaderId, leader.serverId);

    await leader.stop();
    await until("the follower to lead", () => follower.leading);
    const api = createClient(InstanceService, createConnectTransport({ baseUrl: follower.url, httpVersion: "1.1" }));
    await api.createInstance({ name: "after-failover", spec: { driver: "mock", vcpus: 1, memoryMib: 64n } });
    const placed = await until("placement by the new leader", async () => {
      const i = (await api.getInstance({ name: "after-failover" })).instance!;
      return i.status?.phase === Phase.SCHEDULED ? i : undefined;
    });
    assert.equal(placed.status?.node, "n1");
  });
});

// The election keeps one scheduler running, but correctness must not depend on it: a deposed
// leader can still be mid-pass. Two servers that both schedule (no election) on one etcd, many
// instances racing for little room: every node's allocation stays within its capacity, and each
// instance is placed once, on one node, with its assignment and its share of the allocation.
describe("two schedulers placing at once", () => {
  let etcd: EtcdProcess;
  const stores: Store[] = [];
  const servers: Server[] = [];
  const NODES = 4;
  const CPUS = 5;
  const INSTANCES = 60;

  before(async () => {
    etcd = await startEtcd();
    for (let i = 0; i < 2; i++) {
      const store = await openEtcdStore({ endpoints: [etcd.endpoint] });
      stores.push(store);
      // Opposite strategies, so the two plans differ: without the compares they would put one
      // instance on two nodes, or fill a node twice over.
      const algorithm = i === 0 ? "binpack" : "spread";
      const server = new Server({ store, host: "127.0.0.1", port: 0, version: "test", access: "none", serverId: `racer-${i}`, algorithm });
      await server.start();
      servers.push(server);
    }
  });

  after(async () => {
    for (const s of servers) await s.stop();
    for (const s of stores) await s.close();
    await etcd.stop();
  });

  it("never over-commits a node and places each instance exactly once", async () => {
    assert.ok(
      servers.every((s) => s.leading),
      "both schedule",
    );
    const apis = servers.map((s) => createClient(InstanceService, createConnectTransport({ baseUrl: s.url, httpVersion: "1.1" })));
    // Instances first, nodes after: both schedulers then see the same backlog at the same moment.
    await Promise.all(
      Array.from({ length: INSTANCES }, (_, i) =>
        apis[i % 2]!.createInstance({ name: `race-${i}`, spec: { driver: "mock", vcpus: 1, memoryMib: 64n } }),
      ),
    );
    for (let n = 0; n < NODES; n++) {
      const node = create(NodeSchema, {
        name: `rn${n}`,
        capacity: { vcpus: CPUS, memoryMib: 65536n },
        drivers: [{ name: "mock", healthy: true }],
      });
      await stores[0]!.put(keys.node(`rn${n}`), toBinary(NodeSchema, node));
      await stores[0]!.put(keys.alive(`rn${n}`), new Uint8Array([1]));
    }
    const room = NODES * CPUS;
    const placed = await until(
      "the nodes to fill up",
      async () => {
        const all = (await apis[0]!.listInstances({})).instances;
        const on = all.filter((i) => i.status?.node);
        return on.length >= room ? on : undefined;
      },
      60_000,
    );
    // Give a straggling pass a chance to over-commit, then check the store itself.
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(placed.length, room);
    const store = stores[0]!;
    const assignments = await store.range(keys.assignments);
    const assigned = assignments.kvs.map((kv) => kv.key.slice(keys.assignments.length));
    assert.equal(assigned.length, room, "one assignment per placed instance");
    assert.equal(new Set(assigned.map((k) => parseAssignmentKey(keys.assignments + k)![1])).size, room, "no instance assigned twice");
    for (let n = 0; n < NODES; n++) {
      const kv = await store.get(keys.allocation(`rn${n}`));
      const alloc = kv ? fromBinary(AllocationSchema, kv.value) : undefined;
      const count = Object.keys(alloc?.instances ?? {}).length;
      assert.equal(count, CPUS, `node rn${n} holds exactly its ${CPUS} CPUs`);
      assert.equal(assigned.filter((k) => k.startsWith(`rn${n}/`)).length, count, "allocation and assignments agree");
    }
    const pending = (await apis[1]!.listInstances({})).instances.filter((i) => !i.status?.node);
    assert.equal(pending.length, INSTANCES - room);
    assert.ok(pending.every((i) => i.status?.phase === Phase.PENDING && /insufficient cpu/.test(i.status.message)));
  });
});
