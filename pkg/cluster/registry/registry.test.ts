// Node records on both stores: register keeps the server's cordon flag, cordon is a CAS, and a
// race between the two never loses either side's write; list-watch re-lists after compaction.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { NodeSchema } from "../../../api/gen/hypervisor/v1/node_pb.js";
import { startEtcd } from "../../../test/support/etcd.js";
import { openEtcdStore } from "../etcd/index.js";
import { CompactedError, keys, openEmbeddedStore, type Store, type WatchBatch, type WatchOptions } from "../store/index.js";
import {
  clusterId,
  getNode,
  listNodes,
  listWatch,
  NodeNotFoundError,
  registerNode,
  setCordoned,
  watchNodes,
  type NodeChange,
} from "./index.js";

type Opener = () => Promise<{ store: Store; cleanup: () => Promise<void> }>;

function registrySuite(kind: string, open: Opener): void {
  describe(`registry on ${kind}`, () => {
    let store: Store;
    let cleanup: () => Promise<void>;
    let n = 0;
    const name = () => `node-${process.pid}-${++n}`;
    before(async () => ({ store, cleanup } = await open()));
    after(() => cleanup());

    it("makes the cluster id once: concurrent first calls agree, later ones read it", async () => {
      const ids = await Promise.all([clusterId(store), clusterId(store), clusterId(store)]);
      assert.match(ids[0] ?? "", /^[0-9a-f-]{36}$/);
      assert.deepEqual(ids, [ids[0], ids[0], ids[0]]);
      assert.equal(await clusterId(store), ids[0]);
    });

    it("registers, gets and lists a node", async () => {
      const nm = name();
      const rec = await registerNode(
        store,
        create(NodeSchema, { name: nm, labels: { zone: "a" }, capacity: { vcpus: 4, memoryMib: 1024n } }),
      );
      assert.ok(rec.modRevision > 0);
      const got = await getNode(store, nm);
      assert.equal(got?.node.labels.zone, "a");
      assert.equal(got?.node.capacity?.vcpus, 4);
      assert.equal(got?.modRevision, rec.modRevision);
      assert.ok((await listNodes(store)).nodes.some((r) => r.node.name === nm));
      assert.equal(await getNode(store, "absent-node"), undefined);
    });

    it("re-registration keeps the cordoned flag the server set", async () => {
      const nm = name();
      await registerNode(store, create(NodeSchema, { name: nm }));
      await setCordoned(store, nm, true);
      const again = await registerNode(store, create(NodeSchema, { name: nm, cordoned: false, agentVersion: "2" }));
      assert.equal(again.node.cordoned, true);
      const stored = await getNode(store, nm);
      assert.equal(stored?.node.cordoned, true);
      assert.equal(stored?.node.agentVersion, "2");
      await setCordoned(store, nm, false);
      assert.equal((await getNode(store, nm))?.node.cordoned, false);
    });

    it("setCordoned on an unknown node is NodeNotFoundError", async () => {
      await assert.rejects(setCordoned(store, "no-such-node", true), NodeNotFoundError);
    });

    it("a race of registrations and a cordon loses neither write", async () => {
      const nm = name();
      await registerNode(store, create(NodeSchema, { name: nm }));
      await Promise.all([
        ...Array.from({ length: 8 }, (_, i) => registerNode(store, create(NodeSchema, { name: nm, agentVersion: String(i) }))),
        setCordoned(store, nm, true),
      ]);
      const final = await getNode(store, nm);
      assert.equal(final?.node.cordoned, true, "the cordon survived concurrent registrations");
      assert.match(final?.node.agentVersion ?? "", /^[0-7]$/);
    });

    it("watchNodes sends a sync, then puts and deletes", async () => {
      const nm = name();
      const ctl = new AbortController();
      const seen: NodeChange[] = [];
      const it = watchNodes(store, { signal: ctl.signal });
      const first = await it.next();
      assert.equal(first.done, false);
      assert.equal(first.value.type, "sync");
      const pump = (async () => {
        for await (const c of it) {
          seen.push(c);
          if (c.type === "delete" && c.name === nm) ctl.abort();
        }
      })();
      await registerNode(store, create(NodeSchema, { name: nm }));
      await store.delete(keys.node(nm));
      await pump;
      const mine = seen.filter((c) => (c.type === "put" ? c.record.node.name === nm : c.type === "delete" && c.name === nm));
      assert.deepEqual(
        mine.map((c) => c.type),
        ["put", "delete"],
      );
    });
  });
}

registrySuite("embedded store", async () => {
  const dir = await mkdtemp(join(tmpdir(), "hv-registry-"));
  const store = await openEmbeddedStore(dir, { sync: false });
  return { store, cleanup: async () => (await store.close(), await rm(dir, { recursive: true, force: true })) };
});

registrySuite("etcd", async () => {
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
