// Election on both stores: exactly one leader, and hand-over on resign, stop and lease loss.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { startEtcd, type EtcdProcess } from "../../../test/support/etcd.js";
import { openEtcdStore } from "../etcd/index.js";
import { LeaseNotFoundError, openEmbeddedStore, type Store } from "../store/index.js";
import { Election, type LeadershipChange } from "./election.js";

const DEADLINE_MS = 15_000;

async function until(cond: () => boolean | Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + DEADLINE_MS;
  while (Date.now() < deadline) {
    if (await cond()) return;
    await sleep(50);
  }
  assert.fail(what);
}

interface Candidate {
  election: Election;
  stop: AbortController;
  done: Promise<void>;
  changes: LeadershipChange[];
  /** Signals given to lead(), one per term. */
  terms: AbortSignal[];
}

function candidate(store: Store, name: string, id: string): Candidate {
  const election = new Election(store, name, id, { ttlSeconds: 2, retryMs: 50 });
  const stop = new AbortController();
  const changes: LeadershipChange[] = [];
  const terms: AbortSignal[] = [];
  election.onChange((c) => changes.push(c));
  const done = election.run(stop.signal, async (signal) => {
    terms.push(signal);
    await new Promise<void>((resolve) => signal.addEventListener("abort", () => resolve(), { once: true }));
  });
  return { election, stop, done, changes, terms };
}

async function stopAll(...cs: Candidate[]): Promise<void> {
  for (const c of cs) c.stop.abort();
  await Promise.all(cs.map((c) => c.done));
}

function electionSuite(kind: string, open: () => Promise<{ store: Store; cleanup: () => Promise<void> }>) {
  describe(`election on ${kind}`, () => {
    let store: Store;
    let cleanup: () => Promise<void>;
    let n = 0;
    const name = () => `test-${process.pid}-${++n}`;

    before(async () => {
      ({ store, cleanup } = await open());
    });
    after(async () => {
      await cleanup();
    });

    /** Waits until exactly one of a, b leads, the key says so, and the other has seen it. */
    async function oneLeader(a: Candidate, b: Candidate): Promise<[Candidate, Candidate]> {
      await until(async () => {
        if (a.election.isLeader === b.election.isLeader) return false;
        const [l, f] = a.election.isLeader ? [a, b] : [b, a];
        return (await l.election.queryLeader()) === l.election.candidate && f.election.leader() === l.election.candidate;
      }, "no single leader");
      const [l, f] = a.election.isLeader ? [a, b] : [b, a];
      assert.equal(f.election.isLeader, false);
      assert.equal(l.election.leader(), l.election.candidate);
      return [l, f];
    }

    it("two candidates: exactly one leads, and both agree who", async () => {
      const nm = name();
      const a = candidate(store, nm, "a");
      const b = candidate(store, nm, "b");
      try {
        const [leader, follower] = await oneLeader(a, b);
        assert.equal(leader.terms.length, 1, "lead() runs once per term");
        assert.equal(leader.terms[0]!.aborted, false);
        assert.equal(follower.terms.length, 0);
        assert.deepEqual(leader.changes.at(-1), { leading: true, leader: leader.election.candidate });
      } finally {
        await stopAll(a, b);
      }
      assert.equal(await a.election.queryLeader(), undefined, "stopping both leaves no leader key");
    });

    it("when the leader stops, the other takes over", async () => {
      const nm = name();
      const a = candidate(store, nm, "a");
      const b = candidate(store, nm, "b");
      try {
        const [leader, follower] = await oneLeader(a, b);
        leader.stop.abort();
        await leader.done;
        assert.equal(leader.terms[0]!.aborted, true, "the leader's lead() was told to stop");
        assert.equal(leader.election.isLeader, false);
        await until(() => follower.election.isLeader, "follower did not take over");
        assert.equal(await follower.election.queryLeader(), follower.election.candidate);
      } finally {
        await stopAll(a, b);
      }
    });

    it("when the leader resigns, the other takes over and the resigner follows", async () => {
      const nm = name();
      const a = candidate(store, nm, "a");
      const b = candidate(store, nm, "b");
      try {
        const [leader, follower] = await oneLeader(a, b);
        leader.election.resign();
        await until(() => follower.election.isLeader, "follower did not take over");
        await oneLeader(a, b);
        assert.equal(follower.election.isLeader, true);
        assert.equal(leader.election.isLeader, false);
        assert.equal(leader.terms[0]!.aborted, true);
        assert.ok(leader.changes.some((c) => !c.leading && c.reason === "resigned"));
        // The resigner campaigns again once the new leader goes.
        follower.stop.abort();
        await follower.done;
        await until(() => leader.election.isLeader, "resigner did not lead after the new leader left");
      } finally {
        await stopAll(a, b);
      }
    });

    it("when the leader's lease is revoked, leadership is reported lost and the other takes over", async () => {
      const nm = name();
      const a = candidate(store, nm, "a");
      const b = candidate(store, nm, "b");
      try {
        const [leader, follower] = await oneLeader(a, b);
        const kv = await store.get(leader.election.key);
        assert.ok(kv && kv.lease !== "0", "the leader key is under a lease");
        await store.revokeLease(kv.lease);
        await until(() => follower.election.isLeader, "follower did not take over");
        await until(() => !leader.election.isLeader, "old leader still thinks it leads");
        assert.equal(leader.terms[0]!.aborted, true, "the old leader's lead() was told to stop");
        assert.ok(leader.changes.some((c) => !c.leading && (c.reason === "key changed" || c.reason === "lease lost")));
        assert.equal(await store.leaseTimeToLive(kv.lease), -1);
        // The old leader campaigns on with a fresh lease and follows the new leader.
        await until(() => leader.election.leader() === follower.election.candidate, "old leader did not see the new one");
        assert.equal(await leader.election.queryLeader(), follower.election.candidate);
      } finally {
        await stopAll(a, b);
      }
    });

    it("a leader whose keepAliveOnce finds its lease gone stops leading at once", async () => {
      const nm = name();
      // The real store, except that keep-alives fail from a moment on, as if the store had expired
      // the lease while this process was stalled.
      let leaseGone = false;
      const flaky = new Proxy(store, {
        get(target, prop, receiver) {
          if (prop === "keepAliveOnce") {
            return async (lease: string, opts?: { signal?: AbortSignal }) => {
              if (leaseGone) throw new LeaseNotFoundError(lease);
              return target.keepAliveOnce(lease, opts);
            };
          }
          const v: unknown = Reflect.get(target, prop, receiver);
          return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        },
      });
      const a = candidate(flaky, nm, "a");
      try {
        await until(() => a.election.isLeader, "no leader");
        leaseGone = true;
        await until(() => !a.election.isLeader, "leadership not given up");
        assert.equal(a.terms[0]!.aborted, true);
        assert.ok(a.changes.some((c) => !c.leading && c.reason === "lease lost"));
      } finally {
        await stopAll(a);
      }
    });
  });
}

electionSuite("embedded store", async () => {
  const dir = await mkdtemp(join(tmpdir(), "hv-election-"));
  const store = await openEmbeddedStore(dir);
  return {
    store,
    cleanup: async () => {
      await store.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
});

electionSuite("etcd", async () => {
  const etcd: EtcdProcess = await startEtcd();
  const store = await openEtcdStore({ endpoints: [etcd.endpoint] });
  return {
    store,
    cleanup: async () => {
      await store.close();
      await etcd.stop();
    },
  };
});
