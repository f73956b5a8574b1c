// The conformance suite on EtcdStore against a real etcd started for this file, plus what only a
// networked store has: an unreachable endpoint and a server that goes away.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { startEtcd, type EtcdProcess } from "../../../test/support/etcd.js";
import { runStoreConformance } from "../store/conformance.js";
import { StoreUnavailableError, type Store } from "../store/index.js";
import { openEtcdStore } from "./etcd-store.js";

let etcd: EtcdProcess | undefined;

runStoreConformance("etcd", async () => {
  etcd = await startEtcd();
  const endpoints = [etcd.endpoint];
  const opened: Store[] = [await openEtcdStore({ endpoints })];
  return {
    store: opened[0]!,
    // A new client on the same server: what a restarted control plane sees.
    reopen: async () => {
      const s = await openEtcdStore({ endpoints });
      opened.push(s);
      return s;
    },
    cleanup: async () => {
      for (const s of opened) await s.close();
      await etcd?.stop();
    },
  };
});

describe("etcd store connectivity", () => {
  it("reports StoreUnavailableError for an endpoint nobody listens on", async () => {
    const store = await openEtcdStore({ endpoints: ["http://127.0.0.1:1"], dialTimeoutMs: 1000 });
    try {
      await assert.rejects(store.ping(), StoreUnavailableError);
      await assert.rejects(store.get("/x"), StoreUnavailableError);
    } finally {
      await store.close();
    }
  });

  describe("when etcd dies", () => {
    let own: EtcdProcess;
    let store: Store;
    before(async () => {
      own = await startEtcd();
      store = await openEtcdStore({ endpoints: [own.endpoint], dialTimeoutMs: 1000 });
    });
    after(async () => {
      await store.close();
      await own.stop();
    });

    it("a running watch fails and later calls fail with StoreUnavailableError", async () => {
      const from = await store.put("/dies/a", new Uint8Array([1]));
      let first: () => void = () => undefined;
      const started = new Promise<void>((resolve) => (first = resolve));
      const ended = (async () => {
        for await (const _ of store.watch("/dies/", { fromRevision: from })) first();
      })().then(
        () => undefined,
        (e: unknown) => e,
      );
      await started;
      await own.kill9();
      const err = await ended;
      assert.ok(err instanceof StoreUnavailableError, `expected StoreUnavailableError, got ${String(err)}`);
      await assert.rejects(store.get("/dies/a"), StoreUnavailableError);
    });
  });
});

describe("etcd store under cancellations", () => {
  it("stays usable after many watches and calls are cancelled (no circuit breaker trip)", async () => {
    const etcd = await startEtcd();
    const store = await openEtcdStore({ endpoints: [etcd.endpoint] });
    try {
      for (let round = 0; round < 5; round++) {
        const ac = new AbortController();
        const watches = [1, 2, 3, 4].map(async () => {
          for await (const _ of store.watch("/cancel/", { signal: ac.signal })) void _;
        });
        await store.put(`/cancel/${round}`, new Uint8Array([round]));
        ac.abort();
        await Promise.all(watches);
      }
      const done = new AbortController();
      done.abort();
      for (let i = 0; i < 5; i++) await assert.rejects(store.get("/cancel/0", { signal: done.signal }));
      await store.put("/cancel/after", new Uint8Array([9]));
      assert.deepEqual(
        (await store.range("/cancel/")).kvs.map((kv) => kv.key),
        ["/cancel/0", "/cancel/1", "/cancel/2", "/cancel/3", "/cancel/4", "/cancel/after"],
      );
    } finally {
      await store.close();
      await etcd.stop();
    }
  });
});
