// Two server replicas on one real etcd: both serve the API, exactly one leads (schedules), and
// when the leader stops the other takes over and places what was created meanwhile.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { create, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { ClusterService } from "../../api/gen/hypervisor/v1/cluster_pb.js";
import { InstanceService, Phase } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { NodeSchema } from "../../api/gen/hypervisor/v1/node_pb.js";
import { Election } from "../../pkg/cluster/election/index.js";
import { openEtcdStore } from "../../pkg/cluster/etcd/index.js";
import { keys, type Store } from "../../pkg/cluster/store/index.js";
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
