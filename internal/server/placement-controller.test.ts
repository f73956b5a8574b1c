// The placement controller on its own, over a real server's informers (an API-only server, so no
// leader runs another one): what a pass takes when more is Pending than one pass schedules.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { InstanceService, Phase } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { NodeSchema } from "../../api/gen/hypervisor/v1/node_pb.js";
import { openEmbeddedStore, type Store } from "../../pkg/cluster/store/index.js";
import { keys } from "../../pkg/cluster/state/index.js";
import { until } from "../../test/support/procs.js";
import { PlacementController } from "./placement-controller.js";
import { Server } from "./server.js";

describe("placement controller", () => {
  let dir: string;
  let store: Store;
  let server: Server;
  let api: Client<typeof InstanceService>;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "hv-placement-"));
    store = await openEmbeddedStore(join(dir, "store"));
    server = new Server({ store, host: "127.0.0.1", port: 0, version: "test", access: "none", controllers: false });
    await server.start();
    api = createClient(InstanceService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const node = create(NodeSchema, { name: "n1", capacity: { vcpus: 8, memoryMib: 8192n }, drivers: [{ name: "mock", healthy: true }] });
    await store.put(keys.node("n1"), toBinary(NodeSchema, node));
    await store.put(keys.alive("n1"), new Uint8Array([1]));
  });

  after(async () => {
    await server.stop();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  it("does not let older instances that fit nowhere hold back a newer one that fits", async () => {
    // Three that fit nowhere, oldest first, already told why (so no pass rewrites them), …
    const stuck = ["stuck-1", "stuck-2", "stuck-3"];
    for (const n of stuck)
      await api.createInstance({ name: n, spec: { driver: "mock", vcpus: 1, memoryMib: 64n, nodeSelector: { zone: "nowhere" } } });
    const first = new AbortController();
    const settling = new PlacementController(server.ctx, "binpack", 60_000).run(first.signal);
    await until("every stuck one told why", async () => {
      const got = await Promise.all(stuck.map((n) => api.getInstance({ name: n })));
      return got.every((g) => g.instance?.status?.message.startsWith("0/1 nodes")) || undefined;
    });
    first.abort();
    await settling;
    // … then one that fits, and a controller whose pass takes two at most.
    await api.createInstance({ name: "fits", spec: { driver: "mock", vcpus: 1, memoryMib: 64n } });
    const ac = new AbortController();
    const running = new PlacementController(server.ctx, "binpack", 60_000, 2).run(ac.signal);
    try {
      const placed = await until("fits is placed", async () => {
        const i = (await api.getInstance({ name: "fits" })).instance;
        return i?.status?.node ? i : undefined;
      });
      assert.equal(placed.status?.node, "n1");
      assert.equal(placed.status?.phase, Phase.SCHEDULED);
      for (const n of stuck) {
        const s = (await api.getInstance({ name: n })).instance?.status;
        assert.equal(s?.node, "");
        assert.match(s?.message ?? "", /^0\/1 nodes available: 1 node selector mismatch$/);
      }
    } finally {
      ac.abort();
      await running;
    }
  });
});
