// Group commit on the embedded store and on a real etcd: what each caller is told, what ends up
// stored, and that concurrent transactions share txns.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openEtcdStore } from "../etcd/index.js";
import { startEtcd, type EtcdProcess } from "../../../test/support/etcd.js";
import { GroupCommit } from "./group-commit.js";
import { openEmbeddedStore } from "./embedded.js";
import { ifAbsent, ifModRevision, type Store } from "./store.js";

const bytes = (s: string) => new TextEncoder().encode(s);
const text = (b: Uint8Array | undefined) => (b ? new TextDecoder().decode(b) : undefined);
/** Create-if-absent, as CreateInstance commits it. */
const create = (g: GroupCommit, key: string, value: Uint8Array, signal?: AbortSignal) =>
  g.commit([ifAbsent(key)], [{ type: "put", key, value }], signal);

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
      const g = new GroupCommit(counted, 2);
      txns = 0;
      const got = await Promise.all(Array.from({ length: 200 }, (_, i) => create(g, `/g1/k${i}`, bytes(`v${i}`))));
      assert.ok(got.every((r) => r.succeeded));
      assert.ok(txns < 200, `${txns} txns for 200 creates`);
      const { kvs } = await store.range("/g1/");
      assert.equal(kvs.length, 200);
      for (let i = 0; i < 200; i++) assert.equal(text((await store.get(`/g1/k${i}`))?.value), `v${i}`);
    });

    it("tells a create of an existing key it exists, and still writes the rest of its batch", async () => {
      await store.put("/g2/taken", bytes("old"));
      const g = new GroupCommit(counted, 1);
      // One txn out (the first create) while the others queue into one batch with the taken key.
      const got = await Promise.all(["a", "b", "taken", "c", "d"].map((k) => create(g, `/g2/${k}`, bytes(`new ${k}`))));
      assert.deepEqual(
        got.map((r) => r.succeeded),
        [true, true, false, true, true],
      );
      assert.equal(text((await store.get("/g2/taken"))?.value), "old");
      for (const k of ["a", "b", "c", "d"]) assert.equal(text((await store.get(`/g2/${k}`))?.value), `new ${k}`);
    });

    it("keeps a shared txn within its byte budget; one bigger than the budget goes alone", async () => {
      // 110 bytes a txn: each create below weighs 52 (its key compared, its key and value
      // written: 6 + 6 + 40), so two fit, not three.
      const g = new GroupCommit(counted, 1, 128, 110);
      txns = 0;
      const value = bytes("x".repeat(40));
      const got = await Promise.all(Array.from({ length: 9 }, (_, i) => create(g, `/g7/k${i}`, value)));
      assert.ok(got.every((r) => r.succeeded));
      // The first alone (nothing was out), then the other eight two by two.
      assert.equal(txns, 5);
      const big = await create(g, "/g7/big", bytes("y".repeat(300)));
      assert.ok(big.succeeded);
      assert.equal((await store.get("/g7/big"))?.value.length, 300);
      assert.equal((await store.range("/g7/")).kvs.length, 10);
    });

    it("of concurrent creates of one key exactly one wins", async () => {
      const g = new GroupCommit(counted, 1);
      const got = await Promise.all(Array.from({ length: 6 }, (_, i) => create(g, "/g3/same", bytes(`v${i}`))));
      assert.equal(got.filter((r) => r.succeeded).length, 1);
      const winner = got.findIndex((r) => r.succeeded);
      assert.equal(text((await store.get("/g3/same"))?.value), `v${winner}`);
    });

    it("drops a create whose caller gave up while it waited, and writes nothing for it", async () => {
      const g = new GroupCommit(counted, 1);
      const ac = new AbortController();
      const first = create(g, "/g4/first", bytes("1"));
      const second = create(g, "/g4/second", bytes("2"), ac.signal); // queued behind the first
      ac.abort(new Error("client went away"));
      await assert.rejects(second, /client went away/);
      assert.deepEqual(await first, { succeeded: true, revision: (await store.get("/g4/first"))!.modRevision });
      assert.equal(await store.get("/g4/second"), undefined);
    });

    it("never batches one that compares a key another writes: each sees what it would alone", async () => {
      // A write skew batching would allow: each writes its own key if the other's is unchanged.
      await store.put("/g5/a", bytes("a0"));
      await store.put("/g5/b", bytes("b0"));
      const [a, b] = [(await store.get("/g5/a"))!.modRevision, (await store.get("/g5/b"))!.modRevision];
      const g = new GroupCommit(counted, 1);
      const blocker = create(g, "/g5/blocker", bytes("x")); // one txn out: the next two queue together
      const got = await Promise.all([
        g.commit([ifModRevision("/g5/b", b)], [{ type: "put", key: "/g5/a", value: bytes("a1") }]),
        g.commit([ifModRevision("/g5/a", a)], [{ type: "put", key: "/g5/b", value: bytes("b1") }]),
      ]);
      await blocker;
      assert.deepEqual(
        got.map((r) => r.succeeded),
        [true, false],
        "run one after the other, the second sees the first's write",
      );
      assert.equal(text((await store.get("/g5/a"))?.value), "a1");
      assert.equal(text((await store.get("/g5/b"))?.value), "b0");
    });
  });
