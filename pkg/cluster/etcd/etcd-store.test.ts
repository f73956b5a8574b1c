// The conformance suite on EtcdStore against a real etcd started for this file, plus what only a
// networked store has: an unreachable endpoint and a server that goes away.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { startEtcd, type EtcdProcess } from "../../../test/support/etcd.js";
import { runStoreConformance } from "../store/conformance.js";
import { StoreError, StoreUnavailableError, type Store } from "../store/index.js";
import { enableAuth, ETCD_SERVER_USER } from "./auth.js";
import { openEtcdStore, type EtcdStore } from "./etcd-store.js";

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

// Again over TLS with etcd's auth on, as the server identity (root): the whole contract holds
// for a client that authenticates by certificate alone.
let tlsEtcd: EtcdProcess | undefined;
runStoreConformance("etcd over TLS, auth on, server certificate", async () => {
  tlsEtcd = await startEtcd({ tls: true });
  const endpoints = [tlsEtcd.endpoint];
  const tls = await tlsEtcd.tls!.client(ETCD_SERVER_USER);
  const opened: Store[] = [await openEtcdStore({ endpoints, tls })];
  await enableAuth(opened[0] as EtcdStore);
  return {
    store: opened[0]!,
    reopen: async () => {
      const s = await openEtcdStore({ endpoints, tls });
      opened.push(s);
      return s;
    },
    cleanup: async () => {
      for (const s of opened) await s.close();
      await tlsEtcd?.stop();
    },
  };
});

describe("etcd store connectivity", () => {
  it("refuses endpoints whose scheme contradicts the TLS settings, before dialing", async () => {
    const tls = { caFile: "/nonexistent/ca.crt" };
    await assert.rejects(
      openEtcdStore({ endpoints: ["http://127.0.0.1:1"], tls }),
      /etcd endpoint http:\/\/127.0.0.1:1 is http:\/\/ but tls is set/,
    );
    await assert.rejects(openEtcdStore({ endpoints: ["https://127.0.0.1:1", "http://127.0.0.1:2"] }), /mix http:\/\/ and https:\/\//);
    await assert.rejects(
      openEtcdStore({ endpoints: ["https://127.0.0.1:1"], tls: { ...tls, certFile: "/x.crt" } }),
      /needs both a certificate and a key file \(got only the certificate\)/,
    );
  });

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

describe("etcd store: a watch that ends", () => {
  it("does not close the channels under calls that just started", async () => {
    // etcd3 took the CANCELLED error of our own cancel for a host failure and closed every
    // channel: a keep-alive or put started right after a watch ended failed with "Channel closed
    // before call started" (StoreUnavailableError), as a heartbeat would. Over TLS, where the
    // new channel's handshake makes it show every time.
    const etcd = await startEtcd({ tls: true });
    const store = await openEtcdStore({ endpoints: [etcd.endpoint], tls: await etcd.tls!.client("any") });
    try {
      const lease = await store.grantLease(30);
      for (let round = 0; round < 20; round++) {
        const from = await store.put(`/ends/${round}`, new Uint8Array([round]));
        for await (const _ of store.watch("/ends/", { fromRevision: from })) break;
        // Started in the same tick as the watch's cancel: its error event comes after them.
        const [ttl, rev] = await Promise.all([store.keepAliveOnce(lease), store.put(`/ends/after-${round}`, new Uint8Array([1]))]);
        assert.ok(ttl > 0);
        assert.ok(rev > from);
      }
      assert.equal((await store.range("/ends/")).kvs.length, 40);
    } finally {
      await store.close();
      await etcd.stop();
    }
  });
});

describe("etcd store ranges over large prefixes", () => {
  let own: EtcdProcess;
  before(async () => {
    own = await startEtcd();
  });
  after(async () => {
    await own.stop();
  });

  it("reads a prefix in pages, in key order, honouring limit and keysOnly across pages", async () => {
    const store = await openEtcdStore({ endpoints: [own.endpoint], rangePage: 2 });
    try {
      const names = ["a", "b", "c", "d", "e"];
      for (const k of [...names].reverse()) await store.put(`/paged/x/${k}`, new TextEncoder().encode(k));
      await store.put("/paged/xy", new Uint8Array([1]));
      const all = await store.range("/paged/x/");
      assert.deepEqual(
        all.kvs.map((kv) => [kv.key, new TextDecoder().decode(kv.value)]),
        names.map((k) => [`/paged/x/${k}`, k]),
      );
      assert.equal(all.revision, await store.revision());
      assert.deepEqual(
        (await store.range("/paged/x/", { limit: 3 })).kvs.map((kv) => kv.key),
        ["a", "b", "c"].map((k) => `/paged/x/${k}`),
      );
      assert.deepEqual(
        (await store.range("/paged/x/", { keysOnly: true })).kvs.map((kv) => [kv.key, kv.value.length]),
        names.map((k) => [`/paged/x/${k}`, 0]),
      );
      await assert.rejects(openEtcdStore({ endpoints: [own.endpoint], rangePage: 0 }), /rangePage: 0 is not a positive integer/);
    } finally {
      await store.close();
    }
  });

  it("refuses a write too big for etcd as a plain error, and stays usable", async () => {
    // etcd takes 1.5 MiB a request. Counted as a host failure, the refusal used to be retried and
    // then open the client's circuit breaker: every call failed for five seconds after it.
    const store = await openEtcdStore({ endpoints: [own.endpoint] });
    try {
      const err = await store.put("/too/big", new Uint8Array(3 * 1024 * 1024)).then(
        () => assert.fail("etcd took a 3 MiB value"),
        (e: unknown) => e,
      );
      assert.ok(err instanceof StoreError && !(err instanceof StoreUnavailableError), String(err));
      assert.match(err.message, /larger than max|too large/);
      for (let i = 0; i < 5; i++) assert.equal(await store.get("/too/big"), undefined);
      await store.put("/too/small", new Uint8Array([1]));
      assert.equal((await store.get("/too/small"))?.value.length, 1);
    } finally {
      await store.close();
    }
  });

  it("reads a prefix bigger than gRPC's default 4 MiB message", async () => {
    // What a server restarting on 30,000 instances met: its relist failed with
    // RESOURCE_EXHAUSTED, again and again, and it never served.
    const store = await openEtcdStore({ endpoints: [own.endpoint] });
    try {
      const big = new Uint8Array(1024 * 1024).fill(7);
      for (let i = 0; i < 6; i++) await store.put(`/big/${i}`, big);
      const { kvs } = await store.range("/big/");
      assert.deepEqual(
        kvs.map((kv) => [kv.key, kv.value.length, kv.value[1000]]),
        Array.from({ length: 6 }, (_, i) => [`/big/${i}`, big.length, 7]),
      );
    } finally {
      await store.close();
    }
  });
});
