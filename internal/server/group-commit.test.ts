// Group commit of creates on the embedded store and on a real etcd: what each caller is told,
// what ends up stored, and that concurrent creates share txns.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openEtcdStore } from "../../pkg/cluster/etcd/index.js";
import { openEmbeddedStore, type Store } from "../../pkg/cluster/store/index.js";
import { startEtcd, type EtcdProcess } from "../../test/support/etcd.js";
import { GroupCommit } from "./group-commit.js";

const bytes = (s: string) => new TextEncoder().encode(s);
const text = (b: Uint8Array | undefined) => (b ? new TextDecoder().decode(b) : undefined);

for (const kind of ["embedded", "etcd"] as const)
  describe(`group commit on the ${kind} store`, () => {
    let dir: string;
    let etcd: EtcdProcess | undefined;
    let store: Store;
    /** The store, counting txns. */
    let counted: Store;
    let txns = 0;

    before(async () => {
      dir = await mkdtemp(join(tmpdir(), "hv-group-"));
      if (kind === "etcd") {
        etcd = await startEtcd();
        store = await openEtcdStore({ endpoints: [etcd.endpoint] });
      } else store = await openEmbeddedStore(join(dir, "store"), { sync: false });
      counted = new Proxy(store, {
        get(target, prop) {
          const v = Reflect.get(target, prop, target) as unknown;
          if (prop === "txn") return (...a: Parameters<Store["txn"]>) => (txns++, target.txn(...a));
          return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        },
      });
    });

    after(async () => {
      await store.close();
      await etcd?.stop();
      await rm(dir, { recursive: true, force: true });
    });

    it("writes 200 concurrent creates in fewer txns, each created once", async () => {
      const g = new GroupCommit(counted, 64, 2);
      txns = 0;
      const got = await Promise.all(Array.from({ length: 200 }, (_, i) => g.create(`/g1/k${i}`, bytes(`v${i}`))));
      assert.ok(got.every((r) => r.created));
      assert.ok(txns < 200, `${txns} txns for 200 creates`);
      const { kvs } = await store.range("/g1/");
      assert.equal(kvs.length, 200);
      for (let i = 0; i < 200; i++) assert.equal(text((await store.get(`/g1/k${i}`))?.value), `v${i}`);
    });

    it("tells a create of an existing key it exists, and still writes the rest of its batch", async () => {
      await store.put("/g2/taken", bytes("old"));
      const g = new GroupCommit(counted, 64, 1);
      // One txn out (the first create) while the others queue into one batch with the taken key.
      const got = await Promise.all(["a", "b", "taken", "c", "d"].map((k) => g.create(`/g2/${k}`, bytes(`new ${k}`))));
      assert.deepEqual(
        got.map((r) => r.created),
        [true, true, false, true, true],
      );
      assert.equal(text((await store.get("/g2/taken"))?.value), "old");
      for (const k of ["a", "b", "c", "d"]) assert.equal(text((await store.get(`/g2/${k}`))?.value), `new ${k}`);
    });

    it("of concurrent creates of one key exactly one wins", async () => {
      const g = new GroupCommit(counted, 64, 1);
      const got = await Promise.all(Array.from({ length: 6 }, (_, i) => g.create("/g3/same", bytes(`v${i}`))));
      assert.equal(got.filter((r) => r.created).length, 1);
      const winner = got.findIndex((r) => r.created);
      assert.equal(text((await store.get("/g3/same"))?.value), `v${winner}`);
    });

    it("drops a create whose caller gave up while it waited, and writes nothing for it", async () => {
      const g = new GroupCommit(counted, 64, 1);
      const ac = new AbortController();
      const first = g.create("/g4/first", bytes("1"));
      const second = g.create("/g4/second", bytes("2"), ac.signal); // queued behind the first
      ac.abort(new Error("client went away"));
      await assert.rejects(second, /client went away/);
      assert.deepEqual(await first, { created: true, revision: (await store.get("/g4/first"))!.modRevision });
      assert.equal(await store.get("/g4/second"), undefined);
    });
  });
