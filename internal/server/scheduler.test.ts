import { describe, it } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { feasibleLimit, NODE_LABEL, type NodeView, type PlacementRequest, schedule, verdicts } from "./scheduler.js";

function node(name: string, over: Partial<NodeView> = {}): NodeView {
  return {
    name,
    labels: {},
    ready: true,
    cordoned: false,
    drivers: { mock: true },
    capacity: { vcpus: 4, memoryMib: 4096, diskGib: 100 },
    allocated: { vcpus: 0, memoryMib: 0, diskGib: 0, count: 0 },
    ...over,
  };
}

function req(name: string, over: Partial<PlacementRequest> = {}): PlacementRequest {
  return { name, driver: "mock", vcpus: 1, memoryMib: 512, diskGib: 0, nodeSelector: {}, ...over };
}

describe("scheduler", () => {
  it("filters not ready, cordoned, missing or unhealthy driver, selector and capacity", () => {
    const nodes = [
      node("a", { ready: false }),
      node("b", { cordoned: true }),
      node("c", { drivers: { libvirt: true } }),
      node("d", { drivers: { mock: false } }),
      node("e", { labels: { zone: "x" } }),
      node("f", { allocated: { vcpus: 4, memoryMib: 0, diskGib: 0, count: 1 } }),
      node("g", { allocated: { vcpus: 0, memoryMib: 4000, diskGib: 0, count: 1 } }),
      node("h", { labels: { zone: "y" } }),
    ];
    const plan = schedule(nodes, [req("i1", { nodeSelector: { zone: "y" } })], "binpack");
    assert.deepEqual(plan.placements, [{ instance: "i1", node: "h" }]);

    const none = schedule(nodes.slice(0, 7), [req("i2", { nodeSelector: { zone: "y" } })], "binpack");
    assert.equal(none.placements.length, 0);
    assert.equal(none.unplaced[0]?.instance, "i2");
    assert.deepEqual(none.unplaced[0]?.reasons, {
      "not ready": 1,
      cordoned: 1,
      "no driver mock": 1,
      "driver mock unhealthy": 1,
      "node selector mismatch": 3,
    });
    assert.match(none.unplaced[0].message, /^0\/7 nodes available: 3 node selector mismatch, 1 cordoned/);
  });

  it("leaves the caller's node views as they were, in their order", () => {
    const nodes = [node("b"), node("a", { allocated: { vcpus: 1, memoryMib: 512, diskGib: 0, count: 1 } })];
    const before = structuredClone(nodes);
    const plan = schedule(nodes, [req("i1"), req("i2"), req("i3")], "binpack");
    assert.equal(plan.placements.length, 3);
    assert.deepEqual(nodes, before);
    // And a second pass over the same snapshot plans the same: nothing carried over.
    assert.deepEqual(schedule(nodes, [req("i1"), req("i2"), req("i3")], "binpack"), plan);
  });

  it("reports capacity reasons and an empty cluster", () => {
    const plan = schedule([node("a"), node("b")], [req("big", { memoryMib: 8192 })], "spread");
    assert.equal(plan.unplaced[0]?.message, "0/2 nodes available: 2 insufficient memory");
    assert.equal(schedule([], [req("x")], "spread").unplaced[0]?.message, "0/0 nodes available: no nodes registered");
  });

  it("binpack fills one node before the next; spread alternates", () => {
    const reqs = [req("i1"), req("i2"), req("i3"), req("i4")];
    const bin = schedule([node("a"), node("b")], reqs, "binpack");
    assert.deepEqual(
      bin.placements.map((p) => p.node),
      ["a", "a", "a", "a"],
    );
    const spread = schedule([node("a"), node("b")], reqs, "spread");
    assert.deepEqual(
      spread.placements.map((p) => p.node),
      ["a", "b", "a", "b"],
    );
  });

  it("does not modify the snapshot it is given", () => {
    const nodes = [node("a")];
    schedule(nodes, [req("i1")], "binpack");
    assert.equal(nodes[0]!.allocated.count, 0);
  });

  it("never exceeds capacity and places whenever some node fits (property)", () => {
    const arbNode = fc.record({
      vcpus: fc.integer({ min: 0, max: 16 }),
      mem: fc.integer({ min: 0, max: 16384 }),
      ready: fc.boolean(),
      cordoned: fc.boolean(),
    });
    const arbReq = fc.record({ vcpus: fc.integer({ min: 1, max: 8 }), mem: fc.integer({ min: 1, max: 8192 }) });
    fc.assert(
      fc.property(
        fc.array(arbNode, { maxLength: 8 }),
        fc.array(arbReq, { maxLength: 30 }),
        fc.constantFrom("binpack", "spread"),
        (ns, rs, algo) => {
          const nodes = ns.map((n, i) =>
            node(`n${i}`, { ready: n.ready, cordoned: n.cordoned, capacity: { vcpus: n.vcpus, memoryMib: n.mem, diskGib: 0 } }),
          );
          const requests = rs.map((r, i) => req(`r${i}`, { vcpus: r.vcpus, memoryMib: r.mem }));
          const plan = schedule(nodes, requests, algo);
          assert.equal(plan.placements.length + plan.unplaced.length, requests.length);
          const used = new Map<string, { c: number; m: number }>();
          for (const p of plan.placements) {
            const n = nodes.find((x) => x.name === p.node)!;
            assert.ok(n.ready && !n.cordoned, "placed on an unavailable node");
            const r = requests.find((x) => x.name === p.instance)!;
            const u = used.get(p.node) ?? { c: 0, m: 0 };
            u.c += r.vcpus;
            u.m += r.memoryMib;
            used.set(p.node, u);
            assert.ok(u.c <= n.capacity.vcpus && u.m <= n.capacity.memoryMib, `node ${p.node} over-committed`);
          }
          // An unplaced request really fitted nowhere at the moment it was considered: re-check
          // against the final allocation (which only grew), so it must still fit nowhere.
          for (const u of plan.unplaced) {
            const r = requests.find((x) => x.name === u.instance)!;
            for (const n of nodes) {
              const got = used.get(n.name) ?? { c: 0, m: 0 };
              const fits = n.ready && !n.cordoned && got.c + r.vcpus <= n.capacity.vcpus && got.m + r.memoryMib <= n.capacity.memoryMib;
              assert.ok(!fits, `${u.instance} was left unplaced although ${n.name} fits it`);
            }
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it("node requirements: in, notin, exists, doesnotexist, and the implicit node label", () => {
    const nodes = [node("a", { labels: { zone: "x", ssd: "" } }), node("b", { labels: { zone: "y" } }), node("c")];
    const on = (r: Partial<PlacementRequest>) => schedule(nodes, [req("i", r)], "binpack").placements.map((p) => p.node);
    assert.deepEqual(on({ requirements: [{ key: "zone", op: "in", values: ["y", "z"] }] }), ["b"]);
    assert.deepEqual(on({ requirements: [{ key: "zone", op: "notin", values: ["x", "y"] }] }), ["c"]);
    assert.deepEqual(on({ requirements: [{ key: "ssd", op: "exists", values: [] }] }), ["a"]);
    assert.deepEqual(on({ requirements: [{ key: "zone", op: "doesnotexist", values: [] }] }), ["c"]);
    assert.deepEqual(on({ requirements: [{ key: NODE_LABEL, op: "in", values: ["b"] }] }), ["b"]);
    const none = schedule(nodes, [req("i", { requirements: [{ key: "zone", op: "in", values: ["q"] }] })], "binpack");
    assert.equal(none.unplaced[0]?.message, "0/3 nodes available: 3 node requirement zone");
  });

  it("taints: NoSchedule keeps untolerating instances off, PreferNoSchedule makes the node a last resort", () => {
    const nodes = [
      node("db", { taints: [{ key: "dedicated", value: "db", effect: "NoSchedule" }] }),
      node("maint", { taints: [{ key: "maintenance", value: "", effect: "PreferNoSchedule" }] }),
    ];
    const plain = schedule(nodes, [req("i1"), req("i2")], "spread");
    assert.deepEqual(
      plain.placements.map((p) => p.node),
      ["maint", "maint"],
      "never on the NoSchedule node",
    );
    const tolerant = schedule(nodes, [req("i", { tolerations: [{ key: "dedicated", op: "equal", value: "db" }] })], "binpack");
    assert.equal(tolerant.placements[0]?.node, "db", "a PreferNoSchedule node loses to a tolerated one");
    const wrongValue = schedule([nodes[0]!], [req("i", { tolerations: [{ key: "dedicated", op: "equal", value: "web" }] })], "binpack");
    assert.equal(wrongValue.unplaced[0]?.message, "0/1 nodes available: 1 untolerated taint dedicated");
    const any = schedule([nodes[0]!], [req("i", { tolerations: [{ key: "", op: "exists", value: "" }] })], "binpack");
    assert.equal(any.placements[0]?.node, "db", "an empty key with exists tolerates everything");
    const otherEffect = schedule(
      [nodes[0]!],
      [req("i", { tolerations: [{ key: "dedicated", op: "exists", value: "", effect: "PreferNoSchedule" }] })],
      "binpack",
    );
    assert.equal(otherEffect.placements.length, 0, "a toleration of another effect does not count");
  });

  it("host network and host bridges: placed only on nodes whose driver allows them, explained per node", () => {
    const nodes = [
      node("a", { drivers: { containerd: true, libvirt: true } }),
      node("b", { drivers: { containerd: true, libvirt: true }, hostAccess: { containerd: { hostNetwork: true, bridges: [] } } }),
      // Allowed for another driver than the instance's: not allowed for it.
      node("c", { drivers: { containerd: true, libvirt: true }, hostAccess: { libvirt: { hostNetwork: true, bridges: ["br0"] } } }),
    ];
    const host = req("h", { driver: "containerd", hostAccess: { hostNetwork: true } });
    const bridge = req("v", { driver: "libvirt", hostAccess: { hostNetwork: false, bridge: "br0" } });
    const other = req("w", { driver: "libvirt", hostAccess: { hostNetwork: false, bridge: "br1" } });
    const plan = schedule(nodes, [host, bridge, other, req("plain", { driver: "containerd" })], "spread");
    assert.deepEqual(plan.placements, [
      { instance: "h", node: "b" },
      { instance: "v", node: "c" },
      { instance: "plain", node: "a" },
    ]);
    assert.deepEqual(plan.unplaced, [
      {
        instance: "w",
        message: "0/3 nodes available: 3 bridge br1 not allowed (allowed-bridges)",
        reasons: { "bridge br1 not allowed (allowed-bridges)": 3 },
      },
    ]);
    // Nowhere allowed: it stays unplaced, and explain names the reason on every node.
    const denied = verdicts([nodes[0]!, nodes[2]!], host, "binpack");
    assert.equal(denied.best, "");
    assert.deepEqual(
      denied.verdicts.map((v) => [v.node, v.reason]),
      [
        ["a", "host network not allowed (allow-host-network)"],
        ["c", "host network not allowed (allow-host-network)"],
      ],
    );
    assert.equal(denied.summary, "0/2 nodes available: 2 host network not allowed (allow-host-network)");
    // The static verdicts shared by alike requests in one pass tell host and plain requests apart.
    const mixed = schedule([nodes[0]!], [req("p1", { driver: "containerd" }), host, req("p2", { driver: "containerd" })], "binpack");
    assert.deepEqual(
      mixed.placements.map((p) => p.instance),
      ["p1", "p2"],
    );
    assert.deepEqual(
      mixed.unplaced.map((u) => u.instance),
      ["h"],
    );
  });

  it("reservations are held back from capacity", () => {
    const n = node("a", { capacity: { vcpus: 4, memoryMib: 4096, diskGib: 10 }, reserved: { vcpus: 1, memoryMib: 1024, diskGib: 2 } });
    const plan = schedule(
      [n],
      [req("i1", { memoryMib: 3072 }), req("i2", { memoryMib: 1 }), req("i3", { vcpus: 3, memoryMib: 0 })],
      "binpack",
    );
    assert.deepEqual(
      plan.placements.map((p) => p.instance),
      ["i1"],
    );
    assert.deepEqual(
      plan.unplaced.map((u) => u.message),
      ["0/1 nodes available: 1 insufficient memory", "0/1 nodes available: 1 insufficient cpu"],
    );
  });

  it("max per node, and required anti-affinity and affinity by label", () => {
    const nodes = [node("a"), node("b"), node("c")];
    const web = (name: string, over: Partial<PlacementRequest> = {}) => req(name, { labels: { app: "web" }, ...over });
    const two = schedule(
      nodes,
      ["w1", "w2", "w3", "w4", "w5", "w6", "w7"].map((n) => web(n, { maxPerNode: 2, maxPerNodeSelector: { app: "web" } })),
      "binpack",
    );
    assert.deepEqual(
      two.placements.map((p) => p.node),
      ["a", "a", "b", "b", "c", "c"],
    );
    assert.equal(two.unplaced[0]?.message, "0/3 nodes available: 3 max per node");

    const anti = { selector: { app: "web" }, topologyKey: NODE_LABEL, anti: true, required: true, weight: 0 };
    const distinct = schedule(
      nodes,
      ["w1", "w2", "w3", "w4"].map((n) => web(n, { affinity: [anti] })),
      "binpack",
      {
        placed: [{ node: "c", labels: { app: "web" } }],
      },
    );
    assert.deepEqual(
      distinct.placements.map((p) => p.node),
      ["a", "b"],
      "one per node, c already has one",
    );
    assert.equal(distinct.unplaced[0]?.message, "0/3 nodes available: 3 anti-affinity");

    const near = { selector: { app: "db" }, topologyKey: "zone", anti: false, required: true, weight: 0 };
    const zoned = [
      node("a", { labels: { zone: "x" } }),
      node("b", { labels: { zone: "y" } }),
      node("c", { labels: { zone: "y" } }),
      node("d"),
    ];
    const withDb = schedule(zoned, [web("w1", { affinity: [near] })], "binpack", { placed: [{ node: "c", labels: { app: "db" } }] });
    assert.ok(["b", "c"].includes(withDb.placements[0]!.node), "in the zone of the database");
    const noDb = schedule(zoned, [web("w1", { affinity: [near] })], "binpack");
    assert.equal(noDb.unplaced[0]?.message, "0/4 nodes available: 3 affinity, 1 no label zone");
  });

  it("preferred affinity, weighted preferences and the per-instance strategy change the score", () => {
    const nodes = [node("a", { labels: { tier: "slow" } }), node("b", { labels: { tier: "fast" } })];
    const pref = [{ requirement: { key: "tier", op: "in" as const, values: ["fast"] }, weight: 50 }];
    assert.equal(schedule(nodes, [req("i", { preferences: pref })], "binpack").placements[0]?.node, "b");
    const avoid = [{ requirement: { key: "tier", op: "in" as const, values: ["fast"] }, weight: -50 }];
    assert.equal(schedule(nodes, [req("i", { preferences: avoid })], "binpack").placements[0]?.node, "a");
    const soft = { selector: { app: "cache" }, topologyKey: NODE_LABEL, anti: false, required: false, weight: 80 };
    const placed = [{ node: "b", labels: { app: "cache" } }];
    assert.equal(schedule(nodes, [req("i", { affinity: [soft] })], "spread", { placed }).placements[0]?.node, "b");
    assert.equal(schedule(nodes, [req("i", { affinity: [{ ...soft, anti: true }] })], "binpack", { placed }).placements[0]?.node, "a");
    // The cluster binpacks; this instance asks for spread.
    const loaded = [node("a", { allocated: { vcpus: 2, memoryMib: 2048, diskGib: 0, count: 2 } }), node("b")];
    assert.equal(schedule(loaded, [req("i")], "binpack").placements[0]?.node, "a");
    assert.equal(schedule(loaded, [req("i", { strategy: "spread" })], "binpack").placements[0]?.node, "b");
  });

  it("explains every node: feasible ones by score with their parts, the others with their first failed filter", () => {
    const nodes = [
      node("a", { cordoned: true }),
      node("b", { allocated: { vcpus: 2, memoryMib: 2048, diskGib: 0, count: 2 } }),
      node("c"),
      node("d", { drivers: {} }),
    ];
    const v = verdicts(nodes, req("i"), "binpack");
    assert.equal(v.best, "b");
    assert.equal(v.summary, "2/4 nodes feasible; best b");
    assert.deepEqual(
      v.verdicts.map((x) => [x.node, x.feasible, x.reason]),
      [
        ["b", true, ""],
        ["c", true, ""],
        ["a", false, "cordoned"],
        ["d", false, "no driver mock"],
      ],
    );
    assert.ok(v.verdicts[0]!.parts.binpack! > v.verdicts[1]!.parts.binpack!);
    const none = verdicts([nodes[0]!, nodes[3]!], req("i"), "binpack");
    assert.equal(none.best, "");
    assert.equal(none.summary, "0/2 nodes available: 1 cordoned, 1 no driver mock");
  });

  it("scores a bounded share of a large cluster, and still respects every filter there", () => {
    assert.equal(feasibleLimit(50), 50);
    assert.equal(feasibleLimit(5000), 500);
    assert.equal(feasibleLimit(100_000), 5000);
    const nodes = Array.from({ length: 3000 }, (_, i) =>
      node(`n${String(i).padStart(4, "0")}`, {
        labels: { zone: `z${i % 3}` },
        cordoned: i % 7 === 0,
        capacity: { vcpus: 2, memoryMib: 2048, diskGib: 0 },
      }),
    );
    const requests = Array.from({ length: 4000 }, (_, i) =>
      req(`r${i}`, { labels: { app: "x" }, spread: [{ topologyKey: "zone", maxSkew: 1, selector: { app: "x" }, bestEffort: false }] }),
    );
    const plan = schedule(nodes, requests, "binpack");
    assert.equal(plan.placements.length, 4000);
    const byNode = new Map<string, number>();
    const byZone = new Map<string, number>();
    for (const p of plan.placements) {
      const n = nodes.find((x) => x.name === p.node)!;
      assert.ok(!n.cordoned);
      byNode.set(p.node, (byNode.get(p.node) ?? 0) + 1);
      byZone.set(n.labels.zone!, (byZone.get(n.labels.zone!) ?? 0) + 1);
    }
    assert.ok(Math.max(...byNode.values()) <= 2, "two 1-CPU instances at most on a 2-CPU node");
    assert.ok(Math.max(...byZone.values()) - Math.min(...byZone.values()) <= 1, `zones even: ${JSON.stringify([...byZone])}`);
  });

  it("respects taints, requirements, max per node, anti-affinity and hard spread on any cluster (property)", () => {
    const zones = ["z0", "z1", "z2"];
    const arbNode = fc.record({
      zone: fc.option(fc.constantFrom(...zones), { nil: undefined }),
      ssd: fc.boolean(),
      tainted: fc.boolean(),
      vcpus: fc.integer({ min: 0, max: 8 }),
      ready: fc.boolean(),
    });
    const arbReq = fc.record({
      app: fc.constantFrom("a", "b"),
      vcpus: fc.integer({ min: 1, max: 3 }),
      needSsd: fc.boolean(),
      tolerate: fc.boolean(),
      maxPerNode: fc.integer({ min: 0, max: 2 }),
      anti: fc.boolean(),
      spread: fc.boolean(),
    });
    fc.assert(
      fc.property(
        fc.array(arbNode, { maxLength: 10 }),
        fc.array(arbReq, { maxLength: 25 }),
        fc.constantFrom("binpack", "spread"),
        (ns, rs, algo) => {
          const nodes = ns.map((n, i) =>
            node(`n${i}`, {
              ready: n.ready,
              labels: { ...(n.zone ? { zone: n.zone } : {}), ...(n.ssd ? { ssd: "true" } : {}) },
              taints: n.tainted ? [{ key: "gpu", value: "", effect: "NoSchedule" }] : [],
              capacity: { vcpus: n.vcpus, memoryMib: 1 << 20, diskGib: 0 },
            }),
          );
          const requests = rs.map((r, i) =>
            req(`r${i}`, {
              labels: { app: r.app },
              vcpus: r.vcpus,
              memoryMib: 1,
              requirements: r.needSsd ? [{ key: "ssd", op: "exists", values: [] }] : [],
              tolerations: r.tolerate ? [{ key: "gpu", op: "exists", value: "" }] : [],
              maxPerNode: r.maxPerNode,
              maxPerNodeSelector: { app: r.app },
              affinity: r.anti ? [{ selector: { app: r.app }, topologyKey: NODE_LABEL, anti: true, required: true, weight: 0 }] : [],
              spread: r.spread ? [{ topologyKey: "zone", maxSkew: 1, selector: { app: r.app }, bestEffort: false }] : [],
            }),
          );
          const plan = schedule(nodes, requests, algo);
          assert.equal(plan.placements.length + plan.unplaced.length, requests.length);
          const cpu = new Map<string, number>();
          const apps = new Map<string, string[]>(); // node -> apps placed so far, in order
          for (const p of plan.placements) {
            const n = nodes.find((x) => x.name === p.node)!;
            const i = Number(p.instance.slice(1));
            const r = rs[i]!;
            assert.ok(n.ready, "ready");
            if (r.needSsd) assert.ok(n.labels.ssd, "requirement");
            if (n.taints?.length) assert.ok(r.tolerate, "taint");
            cpu.set(p.node, (cpu.get(p.node) ?? 0) + r.vcpus);
            assert.ok(cpu.get(p.node)! <= n.capacity.vcpus, "capacity");
            const here = apps.get(p.node) ?? [];
            const same = here.filter((a) => a === r.app).length;
            if (r.maxPerNode) assert.ok(same < r.maxPerNode, "max per node");
            if (r.anti) assert.equal(same, 0, "anti-affinity");
            here.push(r.app);
            apps.set(p.node, here);
            if (r.spread) assert.ok(n.labels.zone, "spread needs the label");
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it("keeps a hard spread within its skew whenever there is room (property)", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 6 }),
        fc.integer({ min: 1, max: 40 }),
        fc.integer({ min: 1, max: 2 }),
        (perZone, count, skew) => {
          const nodes = ["x", "y", "z"].flatMap((z) =>
            Array.from({ length: perZone }, (_, i) =>
              node(`${z}${i}`, { labels: { zone: z }, capacity: { vcpus: 100, memoryMib: 1 << 20, diskGib: 0 } }),
            ),
          );
          const s = [{ topologyKey: "zone", maxSkew: skew, selector: { app: "w" }, bestEffort: false }];
          const plan = schedule(
            nodes,
            Array.from({ length: count }, (_, i) => req(`r${i}`, { labels: { app: "w" }, spread: s })),
            "binpack",
          );
          assert.equal(plan.placements.length, count, "room everywhere: all placed");
          const per = { x: 0, y: 0, z: 0 } as Record<string, number>;
          for (const p of plan.placements) per[p.node[0]!]!++;
          const v = Object.values(per);
          assert.ok(Math.max(...v) - Math.min(...v) <= skew, `skew ${skew}: ${JSON.stringify(per)}`);
        },
      ),
      { numRuns: 200 },
    );
  });
});
