// The state layer on both stores: the one compare-and-swap loses no concurrent write and writes
// nothing without a compare; node flags stay apart from the node's record; the placement
// transactions leave exactly the keys they promise; every key parses back; the cluster id is made
// once; list-watch re-lists after compaction.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { InstanceSchema, Phase } from "../../../api/gen/hypervisor/v1/instance_pb.js";
import { NodeSchema } from "../../../api/gen/hypervisor/v1/node_pb.js";
import { AllocationSchema, NodeFlagsSchema } from "../../../api/gen/hypervisor/v1/store_pb.js";
import { startEtcd } from "../../../test/support/etcd.js";
import { openEtcdStore } from "../etcd/index.js";
import { CompactedError, openEmbeddedStore, type Store, type WatchBatch, type WatchOptions } from "../store/index.js";
import {
  awaitClusterId,
  clusterId,
  codecs,
  ConflictError,
  keys,
  listWatch,
  parseNodeKey,
  migrateToProjects,
  encodeAssignment,
  refOf,
  parseAssignmentKey,
  instanceRef,
  splitRef,
  hostName,
  hostRef,
  displayRef,
  placeOps,
  putNodeRecord,
  removeOps,
  setNodeFlags,
  unplaceOps,
  update,
  withFlags,
} from "./index.js";

type Opener = () => Promise<{ store: Store; cleanup: () => Promise<void> }>;

const counter = {
  encode: (n: number) => new TextEncoder().encode(String(n)),
  decode: (b: Uint8Array) => Number(new TextDecoder().decode(b)),
};

function stateSuite(kind: string, open: Opener): void {
  describe(`state on ${kind}`, () => {
    let store: Store;
    let cleanup: () => Promise<void>;
    let n = 0;
    const uniq = (p: string) => `${p}-${process.pid}-${++n}`;
    before(async () => ({ store, cleanup } = await open()));
    after(() => cleanup());

    it("makes the cluster id once: concurrent first calls agree; an agent waits for it", async () => {
      const waiting = awaitClusterId(store, { signal: AbortSignal.timeout(60_000) });
      const ids = await Promise.all([clusterId(store), clusterId(store), clusterId(store)]);
      assert.match(ids[0] ?? "", /^[0-9a-f-]{36}$/);
      assert.deepEqual(ids, [ids[0], ids[0], ids[0]]);
      assert.equal(await waiting, ids[0]);
    });

    it("update: 20 concurrent increments of one key all land", async () => {
      const key = `/test/${uniq("ctr")}`;
      await Promise.all(
        Array.from({ length: 20 }, () => update(store, key, counter, ({ value }) => ({ value: (value ?? 0) + 1 }), { attempts: 100 })),
      );
      const kv = await store.get(key);
      assert.equal(counter.decode(kv!.value), 20);
    });

    it("update: no write when the change says so; null deletes; extra ops share the txn", async () => {
      const key = `/test/${uniq("u")}`;
      const other = `${key}-other`;
      const first = await update(store, key, counter, () => ({ value: 1, ops: [{ type: "put", key: other, value: counter.encode(9) }] }));
      assert.equal(first.written, true);
      assert.equal(counter.decode((await store.get(other))!.value), 9, "written in the same txn");
      const rev = (await store.get(key))!.modRevision;
      const same = await update(store, key, counter, () => undefined);
      assert.deepEqual(same, { value: 1, revision: rev, written: false });
      assert.equal((await store.get(key))!.modRevision, rev);
      const gone = await update(store, key, counter, () => ({ value: null }));
      assert.equal(gone.written, true);
      assert.equal(await store.get(key), undefined);
    });

    it("update: a failing extra compare is a conflict, retried, then ConflictError; nothing written", async () => {
      const key = `/test/${uniq("c")}`;
      let calls = 0;
      await assert.rejects(
        update(
          store,
          key,
          counter,
          () => (calls++, { value: 1, compares: [{ key: `${key}-never`, target: "version", result: "=", value: 5 }] }),
          { attempts: 3 },
        ),
        (e: unknown) => e instanceof ConflictError && e.attempts === 3,
      );
      assert.equal(calls, 3);
      assert.equal(await store.get(key), undefined);
    });

    it("what a change throws ends the update with nothing written", async () => {
      const key = `/test/${uniq("t")}`;
      await assert.rejects(
        update(store, key, counter, () => {
          throw new Error("no");
        }),
        /no/,
      );
      assert.equal(await store.get(key), undefined);
    });

    it("node flags live apart from the node's record: a rewrite of the record keeps them", async () => {
      const nm = uniq("node");
      await putNodeRecord(store, create(NodeSchema, { name: nm, labels: { zone: "a" }, cordoned: true }));
      assert.equal(codecs.node.decode((await store.get(keys.node(nm)))!.value).cordoned, false, "not the agent's to say");
      const set = await setNodeFlags(store, nm, { cordoned: true });
      assert.equal(set.written, true);
      assert.equal((await setNodeFlags(store, nm, { cordoned: true })).written, false, "no write when already so");
      await putNodeRecord(store, create(NodeSchema, { name: nm, labels: { zone: "b" } }));
      const flags = codecs.nodeFlags.decode((await store.get(keys.nodeFlags(nm)))!.value);
      const shown = withFlags(codecs.node.decode((await store.get(keys.node(nm)))!.value), flags);
      assert.deepEqual([shown.labels.zone, shown.cordoned, shown.draining], ["b", true, false]);
      assert.deepEqual(withFlags(shown, undefined).cordoned, false);
      assert.equal(create(NodeFlagsSchema, {}).cordoned, false);
    });

    it("keys from before projects move into project default, once; names on nodes stay", async () => {
      const old = create(InstanceSchema, { name: "legacy", uid: "u-legacy", spec: { driver: "mock" } });
      await store.put(`${keys.instances}legacy`, codecs.instance.encode(old));
      await store.put(`${keys.assignments}n9/legacy`, encodeAssignment(codecs.instance.encode(old)));
      await store.put(`${keys.nodes}n9/status/legacy`, codecs.instance.encode(old));
      await store.put(`${keys.nodes}n9/orphans/gone`, new Uint8Array([1]));
      assert.equal(await migrateToProjects(store), 4);
      const moved = codecs.instance.decode((await store.get(keys.instance("default/legacy")))!.value);
      assert.equal(moved.project, "default");
      assert.equal(moved.uid, "u-legacy");
      const a = codecs.assignment.decode((await store.get(keys.assignment("n9", "default/legacy")))!.value);
      assert.equal(a.instance?.project, "default");
      for (const k of [
        `${keys.instances}legacy`,
        `${keys.assignments}n9/legacy`,
        `${keys.nodes}n9/status/legacy`,
        `${keys.nodes}n9/orphans/gone`,
      ])
        assert.equal(await store.get(k), undefined, k);
      assert.equal(hostName(refOf(moved)), "legacy", "its domain or container keeps its name");
      assert.equal(await migrateToProjects(store), 0, "nothing left to move");
      await store.deletePrefix(keys.instances);
      await store.deletePrefix(keys.assignments);
    });

    it("placement, unplace and removal leave exactly the keys they promise", async () => {
      const name = uniq("inst");
      const node = uniq("n");
      const inst = create(InstanceSchema, {
        name,
        uid: `uid-${name}`,
        spec: { vcpus: 2, memoryMib: 256n },
        status: { phase: Phase.PENDING },
      });
      await store.put(keys.instance(`default/${name}`), codecs.instance.encode(inst));
      const rev = (await store.get(keys.instance(`default/${name}`)))!.modRevision;
      const place = placeOps(inst, rev, node);
      assert.ok((await store.txn([place.compare], place.ops, [])).succeeded);
      assert.equal((await store.txn([place.compare], place.ops, [])).succeeded, false, "a second placement compares a stale revision");
      const placed = codecs.instance.decode((await store.get(keys.instance(`default/${name}`)))!.value);
      assert.deepEqual([placed.status?.phase, placed.status?.node], [Phase.SCHEDULED, node]);
      const assigned = codecs.assignment.decode((await store.get(keys.assignment(node, `default/${name}`)))!.value);
      assert.equal(assigned.instance?.status?.node, node, "the assignment carries the record as written");
      await store.put(keys.status(node, `default/${name}`), codecs.instance.encode(create(InstanceSchema, { name, uid: inst.uid })));

      const alloc = { value: create(AllocationSchema, { instances: { [inst.uid]: { vcpus: 2 } } }), modRevision: 0 };
      await store.put(keys.allocation(node), codecs.allocation.encode(alloc.value));
      alloc.modRevision = (await store.get(keys.allocation(node)))!.modRevision;
      const prev = (await store.get(keys.instance(`default/${name}`)))!.modRevision;
      const off = unplaceOps(placed, prev, node, alloc, "moving");
      assert.ok((await store.txn(off.compares, off.ops, [])).succeeded);
      assert.equal(await store.get(keys.assignment(node, `default/${name}`)), undefined);
      assert.equal(await store.get(keys.status(node, `default/${name}`)), undefined);
      assert.deepEqual(codecs.allocation.decode((await store.get(keys.allocation(node)))!.value).instances, {});
      const pending = codecs.instance.decode((await store.get(keys.instance(`default/${name}`)))!.value);
      assert.deepEqual([pending.status?.phase, pending.status?.message], [Phase.PENDING, "moving"]);

      const last = await store.get(keys.instance(`default/${name}`));
      const rm = removeOps(pending, last!.modRevision, "", undefined);
      assert.ok((await store.txn(rm.compares, rm.ops, [])).succeeded);
      assert.equal(await store.get(keys.instance(`default/${name}`)), undefined);
    });
  });
}

describe("keys", () => {
  it("every key under nodes/ parses back to its node and kind; others do not", () => {
    assert.deepEqual(parseNodeKey(keys.node("a")), { node: "a", kind: "record" });
    assert.deepEqual(parseNodeKey(keys.alive("a")), { node: "a", kind: "alive" });
    assert.deepEqual(parseNodeKey(keys.endpoint("a")), { node: "a", kind: "endpoint" });
    assert.deepEqual(parseNodeKey(keys.status("a", "default/web")), { node: "a", kind: "status", ref: "default/web" });
    assert.deepEqual(parseNodeKey(keys.orphan("a", "ci/web")), { node: "a", kind: "orphan", ref: "ci/web" });
    for (const k of [
      keys.instance("default/a"),
      keys.nodeFlags("a"),
      `${keys.nodes}a`,
      `${keys.nodes}a/other`,
      `${keys.nodes}a/status/`,
      // A status key from before projects (no project segment) is not an instance's status.
      `${keys.nodes}a/status/web`,
      `${keys.nodes}a/status/ci/web/x`,
      keys.nodes,
    ])
      assert.equal(parseNodeKey(k), undefined, k);
    assert.deepEqual(parseAssignmentKey(keys.assignment("n1", "ci/web")), ["n1", "ci/web"]);
    assert.equal(parseAssignmentKey(`${keys.assignments}n1/web`), undefined);
  });

  it("an instance's ref, and its name on a node, read back one way", () => {
    assert.equal(instanceRef("", "web"), "default/web");
    assert.deepEqual(splitRef("ci/web"), { project: "ci", name: "web" });
    // Default-project instances keep the names they had on nodes before projects.
    assert.equal(hostName("default/web"), "web");
    assert.equal(hostName("ci/web"), "ci.web");
    for (const ref of ["default/web", "ci/web", "a-1/b-2"]) assert.equal(hostRef(hostName(ref)), ref);
    assert.equal(displayRef("default/web"), "web");
    assert.equal(displayRef("ci/web"), "ci/web");
  });

  it("a node's prefix holds everything it writes and nothing of another node", () => {
    for (const k of [keys.node("a"), keys.alive("a"), keys.endpoint("a"), keys.status("a", "default/x"), keys.orphan("a", "default/x")])
      assert.ok(k.startsWith(keys.nodePrefix("a")), k);
    for (const k of [keys.node("ab"), keys.status("ab", "default/x"), keys.nodeFlags("a"), keys.assignment("a", "default/x")])
      assert.ok(!k.startsWith(keys.nodePrefix("a")), k);
  });
});

stateSuite("embedded store", async () => {
  const dir = await mkdtemp(join(tmpdir(), "hv-state-"));
  const store = await openEmbeddedStore(dir, { sync: false });
  return { store, cleanup: async () => (await store.close(), await rm(dir, { recursive: true, force: true })) };
});

stateSuite("etcd", async () => {
  const etcd = await startEtcd();
  const store = await openEtcdStore({ endpoints: [etcd.endpoint] });
  return { store, cleanup: async () => (await store.close(), await etcd.stop()) };
});

describe("listWatch", () => {
  it("re-lists after a compacted watch and delivers the changes made meanwhile", async () => {
    const dir = await mkdtemp(join(tmpdir(), "hv-listwatch-"));
    const real = await openEmbeddedStore(dir, { sync: false });
    let compactedOnce = false;
    // The first watch fails as if its revision had been compacted: the real store answers the rest.
    const store: Store = Object.assign(Object.create(real) as Store, {
      watch(prefix: string, o?: WatchOptions): AsyncIterable<WatchBatch> {
        if (!compactedOnce) {
          compactedOnce = true;
          return {
            [Symbol.asyncIterator]: () => ({
              next: async () => {
                await real.put("/t/b", new Uint8Array([2]));
                throw new CompactedError(o?.fromRevision ?? 0, o?.fromRevision ?? 0);
              },
            }),
          };
        }
        return real.watch(prefix, o);
      },
    });
    try {
      await real.put("/t/a", new Uint8Array([1]));
      const ctl = new AbortController();
      const snapshots: string[][] = [];
      for await (const ev of listWatch(store, "/t/", { signal: ctl.signal, retryMs: 10 })) {
        if (ev.type === "snapshot") snapshots.push(ev.kvs.map((kv) => kv.key));
        if (snapshots.length === 2) ctl.abort();
      }
      assert.deepEqual(snapshots, [["/t/a"], ["/t/a", "/t/b"]]);
    } finally {
      await real.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
