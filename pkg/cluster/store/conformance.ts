/*
 * The conformance suite every Store implementation runs (embedded in-process, etcd against a real
 * server). It checks the contract by resulting state: what get/range/watch show after each write,
 * never which calls were made. Each test works under its own random prefix, so a shared etcd with
 * other data in it does not disturb the suite. Lease tests use TTL 2 s (etcd rounds smaller TTLs up)
 * and poll with bounded deadlines; nothing asserts how fast anything happened.
 *
 * Not exported from index.ts: it imports node:test, which production code must not load.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { CompactedError, LeaseNotFoundError, StoreError, StoreUnavailableError } from "./errors.js";
import { ifAbsent, ifModRevision, ifPresent } from "./store.js";
import type { Compare, Store, WatchBatch, WatchOptions } from "./store.js";

export interface ConformanceTarget {
  store: Store;
  /**
   * Closes nothing itself: the suite closes the current store, then calls reopen to get one over
   * the same data. Given only by persistent implementations.
   */
  reopen?: () => Promise<Store>;
  /** Closes every store open/reopen returned (close is idempotent) and removes the data. */
  cleanup: () => Promise<void>;
}

const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

/** Longest time any wait in the suite may take before it counts as a failure. */
const DEADLINE_MS = 15_000;

export function runStoreConformance(name: string, open: () => Promise<ConformanceTarget>): void {
  describe(`store conformance: ${name}`, () => {
    let target: ConformanceTarget;
    let store: Store;
    const run = randomBytes(4).toString("hex");
    let n = 0;
    /** A fresh prefix for one test. */
    const space = () => `/conformance/${run}/${++n}/`;

    before(async () => {
      target = await open();
      store = target.store;
    });

    after(async () => {
      await target.cleanup();
    });

    it("put then get returns the value and its revisions", async () => {
      const p = space();
      assert.equal(await store.get(`${p}a`), undefined);
      const r1 = await store.put(`${p}a`, enc("one"));
      let kv = await store.get(`${p}a`);
      assert.ok(kv);
      assert.equal(kv.key, `${p}a`);
      assert.equal(dec(kv.value), "one");
      assert.equal(kv.createRevision, r1);
      assert.equal(kv.modRevision, r1);
      assert.equal(kv.version, 1);
      assert.equal(kv.lease, "0");
      const r2 = await store.put(`${p}a`, enc("two"));
      assert.ok(r2 > r1);
      kv = await store.get(`${p}a`);
      assert.ok(kv);
      assert.equal(dec(kv.value), "two");
      assert.equal(kv.createRevision, r1);
      assert.equal(kv.modRevision, r2);
      assert.equal(kv.version, 2);
      assert.equal(await store.revision(), r2);
    });

    it("stores binary values byte for byte", async () => {
      const p = space();
      const bytes = new Uint8Array([0, 255, 1, 128, 0, 10, 13]);
      await store.put(`${p}bin`, bytes);
      const kv = await store.get(`${p}bin`);
      assert.ok(kv);
      assert.deepEqual([...kv.value], [...bytes]);
      await store.put(`${p}empty`, new Uint8Array(0));
      const empty = await store.get(`${p}empty`);
      assert.ok(empty);
      assert.equal(empty.value.length, 0);
      assert.equal(empty.version, 1);
    });

    it("range returns only the prefix, sorted by key, with limit and keysOnly", async () => {
      const p = space();
      for (const k of ["c", "a", "b/2", "b/1", "d"]) await store.put(`${p}x/${k}`, enc(k));
      await store.put(`${p}xy`, enc("sibling"));
      await store.put(`${p}w`, enc("before"));
      const all = await store.range(`${p}x/`);
      assert.deepEqual(
        all.kvs.map((kv) => kv.key),
        ["a", "b/1", "b/2", "c", "d"].map((k) => `${p}x/${k}`),
      );
      assert.deepEqual(
        all.kvs.map((kv) => dec(kv.value)),
        ["a", "b/1", "b/2", "c", "d"],
      );
      assert.equal(all.revision, await store.revision());
      const limited = await store.range(`${p}x/`, { limit: 2 });
      assert.deepEqual(
        limited.kvs.map((kv) => kv.key),
        [`${p}x/a`, `${p}x/b/1`],
      );
      const keysOnly = await store.range(`${p}x/b/`, { keysOnly: true });
      assert.deepEqual(
        keysOnly.kvs.map((kv) => [kv.key, kv.value.length, kv.version]),
        [
          [`${p}x/b/1`, 0, 1],
          [`${p}x/b/2`, 0, 1],
        ],
      );
      assert.deepEqual((await store.range(`${p}nothing/`)).kvs, []);
    });

    it("delete removes one key, bumps the revision, and counts", async () => {
      const p = space();
      await store.put(`${p}a`, enc("1"));
      await store.put(`${p}ab`, enc("2"));
      const before = await store.revision();
      assert.equal(await store.delete(`${p}a`), 1);
      const afterDelete = await store.revision();
      assert.equal(afterDelete, before + 1);
      assert.equal(await store.get(`${p}a`), undefined);
      assert.ok(await store.get(`${p}ab`), "delete is exact, not a prefix");
      assert.equal(await store.delete(`${p}a`), 0);
      assert.equal(await store.revision(), afterDelete, "deleting nothing writes nothing");
      // A key deleted and created again starts over.
      const r = await store.put(`${p}a`, enc("again"));
      const kv = await store.get(`${p}a`);
      assert.ok(kv);
      assert.equal(kv.createRevision, r);
      assert.equal(kv.version, 1);
    });

    it("deletePrefix removes exactly the keys under the prefix in one revision", async () => {
      const p = space();
      for (const k of ["d/1", "d/2", "d/3/x", "dd", "e"]) await store.put(`${p}${k}`, enc(k));
      const from = (await store.revision()) + 1;
      assert.equal(await store.deletePrefix(`${p}d/`), 3);
      assert.equal(await store.revision(), from, "one delete of many keys is one revision");
      assert.deepEqual(
        (await store.range(p)).kvs.map((kv) => kv.key),
        [`${p}dd`, `${p}e`],
      );
      assert.equal(await store.deletePrefix(`${p}d/`), 0);
      assert.equal(await store.revision(), from);
      const batches = await gather(store, `${p}`, { fromRevision: from }, (b) => b.length >= 1);
      assert.equal(batches.length, 1);
      assert.equal(batches[0]!.revision, from);
      assert.deepEqual(batches[0]!.events.map((e) => [e.type, e.kv.key]).sort(), [
        ["delete", `${p}d/1`],
        ["delete", `${p}d/2`],
        ["delete", `${p}d/3/x`],
      ]);
    });

    it("revisions increase by one per write transaction", async () => {
      const p = space();
      const start = await store.revision();
      const revs: number[] = [];
      for (let i = 0; i < 5; i++) revs.push(await store.put(`${p}k${i}`, enc(String(i))));
      assert.deepEqual(
        revs,
        [1, 2, 3, 4, 5].map((i) => start + i),
      );
      const t = await store.txn(
        [],
        [
          { type: "put", key: `${p}m1`, value: enc("1") },
          { type: "put", key: `${p}m2`, value: enc("2") },
          { type: "delete", key: `${p}k0` },
        ],
      );
      assert.ok(t.succeeded);
      assert.equal(t.revision, start + 6, "a multi-op transaction is one revision");
      const m1 = await store.get(`${p}m1`);
      const m2 = await store.get(`${p}m2`);
      assert.equal(m1?.modRevision, start + 6);
      assert.equal(m2?.modRevision, start + 6);
      assert.equal(await store.get(`${p}k0`), undefined);
      assert.equal(await store.revision(), start + 6);
    });

    it("txn evaluates every compare target and result", async () => {
      const p = space();
      const k = `${p}k`;
      const created = await store.put(k, enc("v1"));
      const modified = await store.put(k, enc("v2"));
      // k now has createRevision=created, modRevision=modified, version=2.
      const actual = { create: created, mod: modified, version: 2 } as const;
      const results = ["=", "!=", "<", ">"] as const;
      for (const target of ["create", "mod", "version"] as const) {
        for (const result of results) {
          for (const delta of [-1, 0, 1]) {
            const value = actual[target] + delta;
            const expect = result === "=" ? delta === 0 : result === "!=" ? delta !== 0 : result === "<" ? delta > 0 : delta < 0;
            const marker = `${p}m/${target}${result}${delta}`;
            const t = await store.txn(
              [{ key: k, target, result, value }],
              [{ type: "put", key: marker, value: enc("success") }],
              [{ type: "put", key: marker, value: enc("failure") }],
            );
            const what = `${target} ${String(actual[target])} ${result} ${value}`;
            assert.equal(t.succeeded, expect, what);
            const kv = await store.get(marker);
            assert.ok(kv, what);
            assert.equal(dec(kv.value), expect ? "success" : "failure", what);
          }
        }
      }
      // An absent key compares as 0 on every target.
      for (const target of ["create", "mod", "version"] as const) {
        const t = await store.txn([{ key: `${p}absent`, target, result: "=", value: 0 }], []);
        assert.equal(t.succeeded, true, `absent ${target} = 0`);
      }
    });

    it("txn with several compares needs all of them, and a failed txn runs only failure ops", async () => {
      const p = space();
      const r = await store.put(`${p}a`, enc("a"));
      const compares: Compare[] = [ifModRevision(`${p}a`, r), ifAbsent(`${p}b`)];
      let t = await store.txn(compares, [{ type: "put", key: `${p}b`, value: enc("b") }], [{ type: "delete", key: `${p}a` }]);
      assert.equal(t.succeeded, true);
      assert.ok(await store.get(`${p}a`));
      t = await store.txn(compares, [{ type: "put", key: `${p}c`, value: enc("c") }], [{ type: "delete", key: `${p}a` }]);
      assert.equal(t.succeeded, false);
      assert.equal(await store.get(`${p}c`), undefined, "success ops did not run");
      assert.equal(await store.get(`${p}a`), undefined, "failure ops ran");
      const rev = await store.revision();
      t = await store.txn([ifPresent(`${p}a`)], [{ type: "put", key: `${p}c`, value: enc("c") }]);
      assert.equal(t.succeeded, false);
      assert.equal(t.revision, rev, "a txn that writes nothing leaves the revision alone");
      assert.equal(await store.revision(), rev);
    });

    it("ifAbsent, ifPresent and ifModRevision guard writes", async () => {
      const p = space();
      const k = `${p}k`;
      const put = (v: string) => [{ type: "put" as const, key: k, value: enc(v) }];
      assert.equal((await store.txn([ifPresent(k)], put("x"))).succeeded, false);
      const first = await store.txn([ifAbsent(k)], put("first"));
      assert.equal(first.succeeded, true);
      assert.equal((await store.txn([ifAbsent(k)], put("second"))).succeeded, false);
      assert.equal(dec((await store.get(k))!.value), "first");
      assert.equal((await store.txn([ifPresent(k)], put("present"))).succeeded, true);
      const kv = await store.get(k);
      assert.ok(kv);
      assert.equal((await store.txn([ifModRevision(k, kv.modRevision - 1)], put("stale"))).succeeded, false);
      const ok = await store.txn([ifModRevision(k, kv.modRevision)], put("fresh"));
      assert.equal(ok.succeeded, true);
      const now = await store.get(k);
      assert.equal(dec(now!.value), "fresh");
      assert.equal(now!.modRevision, ok.revision);
      assert.equal(now!.version, 3);
    });

    it("txn refuses to put a key twice or put a key it also deletes, as etcd does", async () => {
      const p = space();
      await store.put(`${p}d/1`, enc("old"));
      const rev = await store.revision();
      const put = (k: string) => ({ type: "put" as const, key: `${p}${k}`, value: enc("new") });
      for (const ops of [
        [put("a"), put("a")],
        [{ type: "delete" as const, key: `${p}a` }, put("a")],
        [{ type: "deletePrefix" as const, prefix: `${p}d/` }, put("d/2")],
      ]) {
        await assert.rejects(store.txn([], ops), StoreError);
        await assert.rejects(store.txn([ifPresent(`${p}nothing`)], [], ops), StoreError, "failure ops are checked too");
      }
      assert.equal(await store.revision(), rev, "a refused txn writes nothing");
      assert.deepEqual(
        (await store.range(p)).kvs.map((kv) => [kv.key, dec(kv.value)]),
        [[`${p}d/1`, "old"]],
      );
      // Deleting a prefix and writing outside it is fine.
      const t = await store.txn([], [{ type: "deletePrefix", prefix: `${p}d/` }, put("e")]);
      assert.equal(t.succeeded, true);
      assert.deepEqual(
        (await store.range(p)).kvs.map((kv) => [kv.key, kv.modRevision]),
        [[`${p}e`, t.revision]],
      );
    });

    it("watch from a revision replays history then delivers live events, for the prefix only", async () => {
      const p = space();
      const w = `${p}w/`;
      const r1 = await store.put(`${w}a`, enc("1"));
      await store.put(`${p}other`, enc("not watched"));
      const r2 = await store.put(`${w}a`, enc("2"));
      const r3 = await store.put(`${p}wx`, enc("sibling, not under w/"));
      const r4 = await store.delete(`${w}a`).then(() => store.revision());
      const collected = gather(store, w, { fromRevision: r1 }, (b) => b.some((x) => x.events.some((e) => e.kv.key === `${w}live`)));
      const r5 = await store.put(`${p}other`, enc("still not watched"));
      const r6 = await store.put(`${w}live`, enc("live"));
      const batches = await collected;
      assert.deepEqual(
        batches.map((b) => b.revision),
        [r1, r2, r4, r6],
      );
      assert.ok(r3 < r4 && r5 < r6);
      const events = batches.flatMap((b) => b.events.map((e) => ({ rev: b.revision, ...e })));
      assert.deepEqual(
        events.map((e) => [e.type, e.kv.key, dec(e.kv.value)]),
        [
          ["put", `${w}a`, "1"],
          ["put", `${w}a`, "2"],
          ["delete", `${w}a`, ""],
          ["put", `${w}live`, "live"],
        ],
      );
      const put2 = events[1]!;
      assert.equal(put2.kv.createRevision, r1);
      assert.equal(put2.kv.modRevision, r2);
      assert.equal(put2.kv.version, 2);
      const del = events[2]!;
      assert.equal(del.kv.modRevision, r4, "a delete event carries the revision of the delete");
      for (const e of events) assert.equal(e.kv.modRevision, e.rev);
    });

    it("watch batches carry every event of one transaction at one revision", async () => {
      const p = space();
      const from = (await store.revision()) + 1;
      const collected = gather(store, p, { fromRevision: from }, (b) => b.length >= 1);
      const t = await store.txn(
        [],
        [
          { type: "put", key: `${p}1`, value: enc("1") },
          { type: "put", key: `${p}2`, value: enc("2") },
        ],
      );
      const batches = await collected;
      assert.equal(batches.length, 1);
      assert.equal(batches[0]!.revision, t.revision);
      assert.deepEqual(batches[0]!.events.map((e) => e.kv.key).sort(), [`${p}1`, `${p}2`]);
    });

    it("watch without fromRevision delivers only changes after it starts", async () => {
      const p = space();
      const beforeRev = await store.put(`${p}before`, enc("old"));
      const ac = new AbortController();
      const got: WatchBatch[] = [];
      let firstEvent: () => void = () => undefined;
      const seen = new Promise<void>((resolve) => (firstEvent = resolve));
      const loop = (async () => {
        for await (const b of store.watch(p, { signal: ac.signal })) {
          got.push(b);
          firstEvent();
        }
      })();
      // The watch is established asynchronously (a network round trip for etcd): write until it
      // reports something, within a deadline.
      const deadline = Date.now() + DEADLINE_MS;
      let i = 0;
      while (got.length === 0 && Date.now() < deadline) {
        await store.put(`${p}after${i++}`, enc("new"));
        await Promise.race([seen, sleep(100)]);
      }
      ac.abort();
      await bounded(loop, "watch did not end on abort");
      assert.ok(got.length > 0, "watch delivered nothing");
      for (const b of got) {
        assert.ok(b.revision > beforeRev);
        for (const e of b.events) assert.notEqual(e.kv.key, `${p}before`);
      }
    });

    it("watch ends normally when its signal aborts, also before anything happened", async () => {
      const p = space();
      const ac = new AbortController();
      let batches = 0;
      const loop = (async () => {
        for await (const _ of store.watch(p, { signal: ac.signal, fromRevision: (await store.revision()) + 1 })) batches++;
      })();
      await sleep(50);
      ac.abort();
      await bounded(loop, "watch did not end on abort");
      assert.equal(batches, 0);
      // Already aborted: ends at once, even with history to replay.
      await store.put(`${p}x`, enc("x"));
      let replayed = 0;
      for await (const _ of store.watch(p, { signal: AbortSignal.abort(), fromRevision: 1 })) replayed++;
      assert.equal(replayed, 0);
    });

    it("compact makes older revisions unwatchable but keeps current state", async () => {
      const p = space();
      const r1 = await store.put(`${p}a`, enc("1"));
      const r2 = await store.put(`${p}a`, enc("2"));
      const r3 = await store.put(`${p}b`, enc("3"));
      await store.compact(r2);
      const err = await watchError(store, p, r1);
      assert.ok(err instanceof CompactedError, `expected CompactedError, got ${String(err)}`);
      assert.equal(err.requestedRevision, r1);
      assert.ok(err.compactRevision >= r2);
      const batches = await gather(store, p, { fromRevision: r2 }, (b) => b.some((x) => x.revision === r3));
      assert.deepEqual(
        batches.map((b) => b.revision),
        [r2, r3],
      );
      assert.equal(dec((await store.get(`${p}a`))!.value), "2");
      assert.equal(dec((await store.get(`${p}b`))!.value), "3");
      // Compacting again to the same revision is harmless.
      await store.compact(r2);
      assert.equal(await store.revision(), r3);
    });

    it("put under a lease that does not exist fails with LeaseNotFoundError", async () => {
      const p = space();
      await assert.rejects(store.put(`${p}k`, enc("v"), { lease: "123456789" }), LeaseNotFoundError);
      await assert.rejects(store.txn([], [{ type: "put", key: `${p}k`, value: enc("v"), lease: "123456789" }]), LeaseNotFoundError);
      assert.equal(await store.get(`${p}k`), undefined);
    });

    it("grant, keepAliveOnce and timeToLive report the lease", async () => {
      const p = space();
      const lease = await store.grantLease(2);
      assert.match(lease, /^[1-9][0-9]*$/);
      const ttl = await store.leaseTimeToLive(lease);
      assert.ok(ttl > 0 && ttl <= 10, `ttl ${ttl}`);
      const kept = await store.keepAliveOnce(lease);
      assert.ok(kept >= 2, `keepAlive ttl ${kept}`);
      await store.put(`${p}k`, enc("v"), { lease });
      assert.equal((await store.get(`${p}k`))!.lease, lease);
      // Kept alive well inside its TTL, the lease and its key outlive the TTL.
      const until = Date.now() + 3_000;
      while (Date.now() < until) {
        await store.keepAliveOnce(lease);
        await sleep(250);
      }
      assert.ok(await store.get(`${p}k`), "key survived while its lease was kept alive");
      assert.ok((await store.leaseTimeToLive(lease)) > 0);
      await store.revokeLease(lease);
    });

    it("an expired lease deletes its keys, emits delete events and refuses keepAlive", async () => {
      const p = space();
      const lease = await store.grantLease(2);
      const from = await store.put(`${p}a`, enc("a"), { lease });
      await store.put(`${p}b`, enc("b"), { lease });
      await store.put(`${p}keep`, enc("no lease"));
      const deletes = gather(store, p, { fromRevision: from }, (bs) => countDeletes(bs) >= 2);
      await pollUntil(async () => (await store.get(`${p}a`)) === undefined, "lease did not expire");
      assert.equal(await store.get(`${p}b`), undefined);
      assert.ok(await store.get(`${p}keep`));
      assert.equal(await store.leaseTimeToLive(lease), -1);
      await assert.rejects(store.keepAliveOnce(lease), LeaseNotFoundError);
      const batches = await deletes;
      const del = batches.flatMap((b) => b.events.filter((e) => e.type === "delete").map((e) => e.kv.key)).sort();
      assert.deepEqual(del, [`${p}a`, `${p}b`]);
    });

    it("revokeLease deletes the lease's keys at once and is idempotent", async () => {
      const p = space();
      const lease = await store.grantLease(30);
      const from = await store.put(`${p}a`, enc("a"), { lease });
      await store.put(`${p}moved`, enc("first under lease"), { lease });
      await store.put(`${p}moved`, enc("then without")); // a put without lease detaches the key
      assert.equal((await store.get(`${p}moved`))!.lease, "0");
      await store.revokeLease(lease);
      assert.equal(await store.get(`${p}a`), undefined);
      assert.ok(await store.get(`${p}moved`), "a detached key is not the lease's any more");
      assert.equal(await store.leaseTimeToLive(lease), -1);
      await assert.rejects(store.keepAliveOnce(lease), LeaseNotFoundError);
      await store.revokeLease(lease);
      await store.revokeLease("987654321");
      const batches = await gather(store, p, { fromRevision: from }, (bs) => countDeletes(bs) >= 1);
      assert.deepEqual(
        batches.flatMap((b) => b.events.filter((e) => e.type === "delete").map((e) => e.kv.key)),
        [`${p}a`],
      );
    });

    it("honours an aborted signal", async () => {
      const p = space();
      const signal = AbortSignal.abort();
      await assert.rejects(store.get(`${p}k`, { signal }));
      await assert.rejects(store.put(`${p}k`, enc("v"), { signal }));
      await assert.rejects(store.range(p, { signal }));
      await assert.rejects(store.txn([], [{ type: "put", key: `${p}k`, value: enc("v") }], [], { signal }));
      await assert.rejects(store.grantLease(5, { signal }));
      assert.equal(await store.get(`${p}k`), undefined, "an aborted write wrote nothing");
      await store.ping();
    });

    it("keeps keys, revisions and leases across a reopen", async (t) => {
      if (!target.reopen) {
        // Not a skip of an assertion: an implementation without reopen has no restart to test.
        t.diagnostic(`${name} is not reopenable; persistence is covered by the server it talks to`);
        return;
      }
      const p = space();
      const lease = await store.grantLease(60);
      const r1 = await store.put(`${p}a`, enc("a"));
      await store.put(`${p}leased`, enc("l"), { lease });
      const r2 = await store.put(`${p}a`, enc("a2"));
      await store.delete(`${p}gone`);
      await store.close();
      store = await target.reopen();
      assert.equal(await store.revision(), r2);
      const a = await store.get(`${p}a`);
      assert.ok(a);
      assert.deepEqual([dec(a.value), a.createRevision, a.modRevision, a.version], ["a2", r1, r2, 2]);
      assert.equal((await store.get(`${p}leased`))!.lease, lease);
      assert.ok((await store.leaseTimeToLive(lease)) > 0, "lease exists after reopen");
      assert.equal(await store.put(`${p}b`, enc("b")), r2 + 1);
      await store.revokeLease(lease);
      assert.equal(await store.get(`${p}leased`), undefined);
    });

    // Last: it closes the store.
    it("after close, calls and running watches fail with StoreUnavailableError", async () => {
      const p = space();
      const from = (await store.revision()) + 1;
      let first: () => void = () => undefined;
      const started = new Promise<void>((resolve) => (first = resolve));
      // Settles to the error (or undefined), so the rejection is handled before close() returns.
      const ended = (async () => {
        for await (const _ of store.watch(p, { fromRevision: from })) first();
      })().then(
        () => undefined,
        (e: unknown) => e,
      );
      await store.put(`${p}x`, enc("x"));
      await bounded(started, "watch saw nothing");
      await store.close();
      const err = await bounded(ended, "watch did not end on close");
      assert.ok(err instanceof StoreUnavailableError, `expected StoreUnavailableError, got ${String(err)}`);
      await assert.rejects(store.get(`${p}x`), StoreUnavailableError);
      await assert.rejects(store.put(`${p}x`, enc("y")), StoreUnavailableError);
      await store.close(); // idempotent
    });
  });
}

/** Watches until `until` holds for what arrived, or DEADLINE_MS passes; returns what arrived. */
async function gather(store: Store, prefix: string, opts: WatchOptions, until: (batches: WatchBatch[]) => boolean): Promise<WatchBatch[]> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), DEADLINE_MS);
  const got: WatchBatch[] = [];
  try {
    for await (const b of store.watch(prefix, { ...opts, signal: ac.signal })) {
      got.push(b);
      if (until(got)) break;
    }
  } finally {
    clearTimeout(timer);
  }
  return got;
}

/** The error a watch from `from` throws, or undefined if it ends without one. */
async function watchError(store: Store, prefix: string, from: number): Promise<unknown> {
  const signal = AbortSignal.timeout(DEADLINE_MS);
  try {
    for await (const _ of store.watch(prefix, { fromRevision: from, signal })) {
      /* replayed events mean no error */
    }
  } catch (e) {
    return e;
  }
  return undefined;
}

function countDeletes(batches: WatchBatch[]): number {
  return batches.reduce((n, b) => n + b.events.filter((e) => e.type === "delete").length, 0);
}

async function pollUntil(cond: () => Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + DEADLINE_MS;
  while (Date.now() < deadline) {
    if (await cond()) return;
    await sleep(100);
  }
  assert.fail(what);
}

/** p, or a failure named `what` if it has not settled within DEADLINE_MS. */
async function bounded<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new assert.AssertionError({ message: what })), DEADLINE_MS);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
