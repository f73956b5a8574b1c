// Node safety: whatever the store asks, a node's workers stay free. Guests that take hours to
// shut down (the mock's stop_delay, and real containers on containerd whose process ignores
// SIGTERM) are stopped with a 3000 s timeout; a delete or a new desired state during that stop
// takes effect while the timeout is still far off, five such stops do not keep a sixth instance
// from running, a timeout of 4,294,967,295 s in the store is clamped, and a driver call that hangs
// is aborted at its deadline. The test plays the server (test/support/assignments.ts).
//
// Waits are bounded generously (BOUND, two minutes) and far below the 3000 s stop timeout: on a
// loaded machine they take longer, never wrongly pass.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { Phase, PowerState, RestartPolicy } from "../../api/gen/hypervisor/v1/instance_pb.js";
import { openEmbeddedStore, type Store } from "../../pkg/cluster/store/index.js";
import { clusterId, codecs, keys } from "../../pkg/cluster/state/index.js";
import { ContainerdClient, ContainerdDriver, isNotFound } from "../../pkg/compute/containerd/index.js";
import type { Driver } from "../../pkg/compute/driver/index.js";
import { createMockDriver, type MockDriver } from "../../pkg/compute/mock/index.js";
import { assign, change, inPhase, newInstance, statusOf } from "../../test/support/assignments.js";
import { busyboxImage, BUSYBOX_REF, ensureContainerd } from "../../test/support/containerd.js";
import { until } from "../../test/support/procs.js";
import { Agent, STOP_TIMEOUT_LABEL } from "./index.js";

const BOUND = 120_000;
/** Far longer than any wait below: a stop that honoured it would fail every test. */
const LONG_STOP = "3000";

let store: Store;
let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), "hv-nodesafety-"));
  store = await openEmbeddedStore(join(dir, "store"), { sync: false });
  await clusterId(store); // a server gives the cluster its id; agents wait for it
});
after(async () => {
  await store.close();
  await rm(dir, { recursive: true, force: true });
});

function boot(node: string, drivers: Driver[], over: Partial<ConstructorParameters<typeof Agent>[0]> = {}): Agent {
  return new Agent({ store, nodeName: node, drivers, heartbeatTtlSeconds: 5, dataDir: join(dir, node), resyncMs: 600_000, ...over });
}

/** Asks for a stop with a long timeout, as StopInstance --timeout-seconds does. */
const stopSlowly = (node: string, name: string, timeout = LONG_STOP) =>
  change(store, node, name, (i) => {
    i.spec!.desiredPowerState = PowerState.STOPPED;
    i.labels[STOP_TIMEOUT_LABEL] = timeout;
  });

const deleteIt = (node: string, name: string) => change(store, node, name, (i) => (i.deleteTime = timestampNow()));

/** The agent has destroyed it: its status says so, for the garbage collector to remove the rest. */
const gone = (node: string, name: string) => async () => {
  const kv = await store.get(keys.status(node, `default/${name}`));
  return kv !== undefined && codecs.instance.decode(kv.value).deleteTime !== undefined;
};

/** The tests every runtime goes through; `running` says whether the runtime still runs it. */
function safetySuite(
  kind: string,
  setup: () => { node: string; running: (name: string) => Promise<boolean>; spec: Parameters<typeof newInstance>[2] },
): void {
  describe(`a node's workers stay free (${kind})`, () => {
    it("a delete during a long stop takes effect at once: the instance is destroyed", async () => {
      const { node, running, spec } = setup();
      await assign(store, node, newInstance(`${kind}-del`, node, spec));
      await until("Running", inPhase(store, `${kind}-del`, Phase.RUNNING), BOUND);
      await stopSlowly(node, `${kind}-del`);
      await until("Stopping", inPhase(store, `${kind}-del`, Phase.STOPPING), BOUND);
      assert.equal(await running(`${kind}-del`), true, "the guest ignores the stop");
      await deleteIt(node, `${kind}-del`);
      await until("destroyed", gone(node, `${kind}-del`), BOUND);
      assert.equal((await statusOf(store, `${kind}-del`))?.message, "destroyed");
      assert.equal(await running(`${kind}-del`), false, "destroyed in the runtime");
    });

    it("a new desired state during a long stop takes effect at once: it keeps running", async () => {
      const { node, running, spec } = setup();
      await assign(store, node, newInstance(`${kind}-back`, node, spec));
      const first = await until("Running", inPhase(store, `${kind}-back`, Phase.RUNNING), BOUND);
      await stopSlowly(node, `${kind}-back`);
      await until("Stopping", inPhase(store, `${kind}-back`, Phase.STOPPING), BOUND);
      const inst = await change(store, node, `${kind}-back`, (i) => (i.spec!.desiredPowerState = PowerState.RUNNING));
      const s = await until(
        "Running at the new generation",
        inPhase(store, `${kind}-back`, Phase.RUNNING, (x) => x.observedGeneration === inst.generation),
        BOUND,
      );
      assert.deepEqual(s.startTime, first.startTime, "the same run: neither stopped nor restarted");
      assert.equal(await running(`${kind}-back`), true);
      await deleteIt(node, `${kind}-back`);
      await until("deleted", gone(node, `${kind}-back`), BOUND);
    });

    it("five instances stopping slowly do not keep a sixth from being created and Running", async () => {
      const { node, running, spec } = setup();
      const slow = [1, 2, 3, 4, 5].map((n) => `${kind}-slow-${n}`);
      for (const n of slow) await assign(store, node, newInstance(n, node, spec));
      for (const n of slow) await until(`${n} Running`, inPhase(store, n, Phase.RUNNING), BOUND);
      for (const n of slow) await stopSlowly(node, n);
      for (const n of slow) await until(`${n} Stopping`, inPhase(store, n, Phase.STOPPING), BOUND);

      await assign(store, node, newInstance(`${kind}-sixth`, node, spec));
      await until("the sixth Running", inPhase(store, `${kind}-sixth`, Phase.RUNNING), BOUND);
      assert.equal(await running(`${kind}-sixth`), true);
      for (const n of slow) {
        assert.equal((await statusOf(store, n))?.phase, Phase.STOPPING, `${n} is still in its grace period`);
        assert.equal(await running(n), true, `${n} still runs`);
      }

      for (const n of [...slow, `${kind}-sixth`]) await deleteIt(node, n);
      for (const n of [...slow, `${kind}-sixth`]) await until(`${n} deleted`, gone(node, n), BOUND);
      for (const n of slow) assert.equal(await running(n), false);
    });
  });
}

describe("node safety with the mock driver", () => {
  const node = "ns-mock";
  let agent: Agent;
  let mock: MockDriver;
  before(async () => {
    mock = createMockDriver({ stateDir: join(dir, node, "mock") });
    agent = boot(node, [mock]);
    await agent.start();
  });
  after(async () => {
    await agent.stop();
    await mock.close();
  });

  safetySuite("mock", () => ({
    node,
    running: async (name) => (await mock.inspect(name))?.state === "running",
    // A guest that takes two hours to shut down.
    spec: { driverConfig: { stop_delay: "2h" } },
  }));

  it("clamps a stop timeout of 4,294,967,295 s from the store to max-stop-timeout", async () => {
    const cnode = "ns-mock-clamp";
    const m = createMockDriver({ stateDir: join(dir, cnode, "mock") });
    const a = boot(cnode, [m], { maxStopTimeoutMs: 1000 });
    await a.start();
    try {
      await assign(store, cnode, newInstance("clamped", cnode, { driverConfig: { stop_delay: "2h" } }));
      await until("Running", inPhase(store, "clamped", Phase.RUNNING), BOUND);
      const inst = await stopSlowly(cnode, "clamped", "4294967295");
      const s = await until(
        "Stopped after the clamped timeout",
        inPhase(store, "clamped", Phase.STOPPED, (x) => x.observedGeneration === inst.generation),
        BOUND,
      );
      assert.ok(s.stopTime);
      assert.equal((await m.inspect("clamped"))?.state, "stopped");
    } finally {
      await a.stop();
      await m.close();
    }
  });

  it("starts and runs its instances although its driver's list never answers (abandoned at the deadline)", async () => {
    const hnode = "ns-mock-hung-list";
    const m = createMockDriver({ stateDir: join(dir, hnode, "mock") });
    // A runtime that takes the call and never answers, whatever the signal says.
    const hung = new Proxy(m, {
      get(target, prop, receiver) {
        if (prop === "list") return () => new Promise<never>(() => undefined);
        const v = Reflect.get(target, prop, receiver) as unknown;
        return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    const a = boot(hnode, [hung], { deadlines: { queryMs: 2000 } });
    let started = false;
    // Not awaited: without the deadline it would never settle.
    void a.start().then(
      () => (started = true),
      () => undefined,
    );
    try {
      await until("the agent started (adoption gave up on the list)", () => started, BOUND);
      await assign(store, hnode, newInstance("after-hung-list", hnode));
      await until("Running", inPhase(store, "after-hung-list", Phase.RUNNING), BOUND);
      assert.equal((await m.inspect("after-hung-list"))?.state, "running");
    } finally {
      await a.stop();
      await m.close();
    }
  });

  it("aborts a driver call at its deadline, so one hung start does not hold the only worker", async () => {
    const dnode = "ns-mock-deadline";
    const m = createMockDriver({ stateDir: join(dir, dnode, "mock") });
    const a = boot(dnode, [m], { workers: 1, deadlines: { startMs: 1000 } });
    await a.start();
    try {
      // A start that would take an hour.
      await assign(store, dnode, newInstance("hung", dnode, { driverConfig: { start_delay: "1h" }, restartPolicy: RestartPolicy.NEVER }));
      await until("hung created", async () => (await m.inspect("hung")) !== undefined, BOUND);
      await assign(store, dnode, newInstance("next", dnode));
      await until("the next one Running", inPhase(store, "next", Phase.RUNNING), BOUND);
      assert.equal((await m.inspect("hung"))?.state, "created", "the hung start was aborted, not completed");
      await deleteIt(dnode, "hung");
      await until("hung deleted", gone(dnode, "hung"), BOUND);
      assert.equal(await m.inspect("hung"), undefined);
    } finally {
      await a.stop();
      await m.close();
    }
  });
});

describe("node safety with containerd (containers that ignore SIGTERM)", { timeout: 600_000 }, () => {
  const NS = `hvtest-nodesafety-${process.pid}`;
  const node = `ns-ctr-${process.pid}`;
  let socket: string;
  let agent: Agent;
  let driver: ContainerdDriver;
  const drivers: ContainerdDriver[] = [];
  const makeDriver = (owner: string) => {
    const d = new ContainerdDriver({ stateDir: join(dir, owner, "containerd"), socketPath: socket, namespace: NS, owner });
    drivers.push(d);
    return d;
  };
  // trap "" TERM: the shell, PID 1 of the container, ignores SIGTERM for good.
  const spec = {
    driver: "containerd",
    image: BUSYBOX_REF,
    memoryMib: 32n,
    command: ["sh", "-c", 'trap "" TERM; while true; do sleep 1; done'],
  };
  const runningIn = (d: ContainerdDriver) => async (name: string) => (await d.inspect(name))?.state === "running";

  before(async () => {
    socket = await ensureContainerd();
    const image = await busyboxImage();
    driver = makeDriver(node);
    await driver.importImage(image.file);
    agent = boot(node, [driver]);
    await agent.start();
  });

  after(async () => {
    await agent?.stop();
    for (const d of drivers) await d.close();
    // Our namespace must be empty to go: containers (any left by a failure) and the image first.
    const c = new ContainerdClient({ socketPath: socket, namespace: NS });
    for (const x of (await c.containers.list({}).catch(() => ({ containers: [] }))).containers) {
      await c.tasks.kill({ containerId: x.id, signal: 9, all: true }).catch(() => undefined);
      await new Promise((r) => setTimeout(r, 500));
      await c.tasks.delete({ containerId: x.id }).catch(() => undefined);
      await c.containers.delete({ id: x.id }).catch(() => undefined);
      await c.snapshots.remove({ snapshotter: x.snapshotter, key: x.snapshotKey }).catch(() => undefined);
    }
    for (const i of (await c.images.list({}).catch(() => ({ images: [] }))).images)
      await c.images.delete({ name: i.name, sync: true }).catch(() => undefined);
    await c.namespaces.delete({ name: NS }).catch(() => undefined);
    c.close();
  });

  safetySuite("ctr", () => ({ node, running: runningIn(driver), spec }));

  it("a deleted container is gone from containerd, not only from the agent's view", async () => {
    // The suite's deletes went through the driver; containerd itself is the witness here.
    const c = new ContainerdClient({ socketPath: socket, namespace: NS });
    try {
      await assert.rejects(c.containers.get({ id: "ctr-del" }), (e) => isNotFound(e));
    } finally {
      c.close();
    }
  });

  it("clamps a stop timeout of 4,294,967,295 s: the container is killed after max-stop-timeout", async () => {
    const cnode = `ns-ctr-clamp-${process.pid}`;
    const d = makeDriver(cnode);
    const a = boot(cnode, [d], { maxStopTimeoutMs: 2000 });
    await a.start();
    try {
      await assign(store, cnode, newInstance("ctr-clamped", cnode, spec));
      await until("Running", inPhase(store, "ctr-clamped", Phase.RUNNING), BOUND);
      const inst = await stopSlowly(cnode, "ctr-clamped", "4294967295");
      await until(
        "Stopped",
        inPhase(store, "ctr-clamped", Phase.STOPPED, (x) => x.observedGeneration === inst.generation),
        BOUND,
      );
      assert.equal((await d.inspect("ctr-clamped"))?.state, "stopped");
      await deleteIt(cnode, "ctr-clamped");
      await until("deleted", gone(cnode, "ctr-clamped"), BOUND);
    } finally {
      await a.stop();
    }
  });
});
