// Liveness on both stores: the heartbeat outlives its TTL, replaces a lost lease, and the monitor
// sees Ready / NotReady for a clean stop and for an agent that just disappears.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { fromBinary } from "@bufbuild/protobuf";
import { LivenessSchema } from "../../../api/gen/hypervisor/v1/store_pb.js";
import { startEtcd } from "../../../test/support/etcd.js";
import { openEtcdStore } from "../etcd/index.js";
import { openEmbeddedStore, type Store } from "../store/index.js";
import { keys } from "../state/index.js";
import { Heartbeat, LivenessMonitor, type LivenessChange } from "./index.js";

const DEADLINE_MS = 20_000;

async function until(what: string, cond: () => boolean | Promise<boolean>): Promise<void> {
  const deadline = Date.now() + DEADLINE_MS;
  while (Date.now() < deadline) {
    if (await cond()) return;
    await sleep(50);
  }
  assert.fail(`timed out waiting for ${what}`);
}

type Opener = () => Promise<{ store: Store; cleanup: () => Promise<void> }>;

function heartbeatSuite(kind: string, open: Opener): void {
  describe(`heartbeat on ${kind}`, () => {
    let store: Store;
    let cleanup: () => Promise<void>;
    let monitor: LivenessMonitor;
    const stopMonitor = new AbortController();
    let monitorDone: Promise<void>;
    const changes: LivenessChange[] = [];
    let n = 0;
    const name = () => `hb-${process.pid}-${++n}`;

    before(async () => {
      ({ store, cleanup } = await open());
      monitor = new LivenessMonitor(store);
      monitor.onChange((c) => changes.push(c));
      monitorDone = monitor.run(stopMonitor.signal);
      await monitor.synced;
    });
    after(async () => {
      stopMonitor.abort();
      await monitorDone;
      await cleanup();
    });

    it("keeps alive/<node> for longer than its TTL, under its lease, and revokes on stop", async () => {
      const nm = name();
      const hb = new Heartbeat(store, nm, { ttlSeconds: 1 });
      await hb.start();
      const kv = await store.get(keys.alive(nm));
      assert.ok(kv, "alive key written by start()");
      assert.equal(kv.lease, hb.lease);
      const liveness = fromBinary(LivenessSchema, kv.value);
      assert.equal(liveness.node, nm);
      assert.equal(liveness.ttlSeconds, 1n);
      await until("the monitor sees the node", () => monitor.isAlive(nm));
      // Three TTLs: only the keep-alives can have kept the key.
      await sleep(3000);
      assert.ok(await store.get(keys.alive(nm)), "alive key still there after 3 TTLs");
      assert.ok(monitor.isAlive(nm));
      assert.equal(hb.regrants, 0);
      await hb.stop();
      assert.equal(await store.get(keys.alive(nm)), undefined, "stop revokes the lease");
      await until("the monitor sees the node go", () => !monitor.isAlive(nm));
      const mine = changes.filter((c) => c.node === nm).map((c) => c.alive);
      assert.deepEqual(mine, [true, false]);
    });

    it("replaces a lost lease and puts alive/<node> again", async () => {
      const nm = name();
      const hb = new Heartbeat(store, nm, { ttlSeconds: 1 });
      await hb.start();
      try {
        const first = hb.lease!;
        await store.revokeLease(first);
        await until("a new lease with the alive key under it", async () => {
          const kv = await store.get(keys.alive(nm));
          return kv !== undefined && kv.lease !== first && kv.lease === hb.lease;
        });
        assert.equal(hb.regrants, 1);
      } finally {
        await hb.stop();
      }
    });

    it("the monitor reports NotReady when an agent vanishes without revoking", async () => {
      const nm = name();
      const hb = new Heartbeat(store, nm, { ttlSeconds: 1, revokeOnStop: false });
      await hb.start();
      await until("Ready", () => monitor.isAlive(nm));
      await hb.stop(); // no revoke: like a kill -9, only the TTL ends it
      await until("NotReady after the lease expires", () => !monitor.isAlive(nm));
      assert.equal(await store.get(keys.alive(nm)), undefined);
    });

    it("changes() streams transitions", async () => {
      const nm = name();
      const ctl = new AbortController();
      const got: LivenessChange[] = [];
      const pump = (async () => {
        for await (const c of monitor.changes(ctl.signal)) {
          if (c.node !== nm) continue;
          got.push(c);
          if (!c.alive) ctl.abort();
        }
      })();
      const hb = new Heartbeat(store, nm, { ttlSeconds: 2 });
      await hb.start();
      await until("alive", () => monitor.isAlive(nm));
      await hb.stop();
      await pump;
      assert.deepEqual(
        got.map((c) => c.alive),
        [true, false],
      );
      assert.ok(got[1]!.revision > got[0]!.revision);
    });
  });
}

heartbeatSuite("embedded store", async () => {
  const dir = await mkdtemp(join(tmpdir(), "hv-heartbeat-"));
  const store = await openEmbeddedStore(dir, { sync: false });
  return { store, cleanup: async () => (await store.close(), await rm(dir, { recursive: true, force: true })) };
});

heartbeatSuite("etcd", async () => {
  const etcd = await startEtcd();
  const store = await openEtcdStore({ endpoints: [etcd.endpoint] });
  return { store, cleanup: async () => (await store.close(), await etcd.stop()) };
});
