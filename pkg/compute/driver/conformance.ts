/*
 * The driver conformance suite: what the agent relies on, checked against a real runtime. Every
 * driver's test file calls runDriverConformance with a factory for the driver (called again to
 * build a NEW driver object on the same runtime, which is how adoption after an agent restart is
 * tested) and a factory for instance specs.
 *
 *   fingerprint ─► create ─► start ─► inspect running ─► stop ─► start ─► destroy ─► list empty
 *   idempotence of create/stop/destroy, adoption by a fresh driver, events, self-exit with a code
 */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, describe, it } from "node:test";
import type { Driver, DriverEvent, DriverInstance, DriverInstanceSpec, DriverState } from "./driver.js";

export interface SpecHooks {
  /**
   * The instance should exit on its own, with this code, shortly after start. A factory that
   * cannot produce the code returns undefined; the suite then asks for code 0.
   */
  exit?: { code: number };
}

/**
 * Builds the spec of a small instance named `name` with uid `uid`. Returns undefined when asked
 * for something the runtime cannot do (e.g. a self-exit); the case is then skipped with a reason.
 */
export type SpecFactory = (name: string, uid: string, hooks?: SpecHooks) => DriverInstanceSpec | undefined;

export interface ConformanceOptions {
  /** How long to wait for a state to be reached (default 60 s: real VMs boot slowly). */
  deadlineMs?: number;
  /** Stop timeout passed to stop() (default 10 s). */
  stopTimeoutMs?: number;
}

export function runDriverConformance(
  driverName: string,
  makeDriver: () => Promise<Driver>,
  makeSpec: SpecFactory,
  opts: ConformanceOptions = {},
): void {
  const deadlineMs = opts.deadlineMs ?? 60_000;
  const stopTimeoutMs = opts.stopTimeoutMs ?? 10_000;
  const prefix = `conf-${randomUUID().slice(0, 8)}`;
  let seq = 0;
  const created = new Set<string>();
  const drivers: Driver[] = [];

  const fresh = async () => {
    const d = await makeDriver();
    drivers.push(d);
    return d;
  };
  const spec = (hooks?: SpecHooks): DriverInstanceSpec | undefined => {
    const name = `${prefix}-${++seq}`;
    const s = makeSpec(name, randomUUID(), hooks);
    if (s) created.add(s.name);
    return s;
  };
  const mustSpec = (): DriverInstanceSpec => {
    const s = spec();
    assert.ok(s, "makeSpec must return a spec when no hooks are asked for");
    return s;
  };
  const waitState = async (d: Driver, name: string, states: DriverState[]): Promise<DriverInstance> => {
    const deadline = Date.now() + deadlineMs;
    let last: DriverInstance | undefined;
    while (Date.now() < deadline) {
      last = await d.inspect(name);
      if (last && states.includes(last.state)) return last;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.fail(`instance ${name} did not reach ${states.join("/")} (last: ${last?.state ?? "absent"})`);
  };

  describe(`driver conformance: ${driverName}`, () => {
    after(async () => {
      const d = drivers[0] ?? (await fresh());
      for (const name of created) await d.destroy(name, { force: true }).catch(() => undefined);
      for (const x of drivers) await x.close();
    });

    it("fingerprints healthy and names itself", async () => {
      const d = await fresh();
      assert.equal(d.name, driverName);
      const fp = await d.fingerprint();
      assert.equal(fp.healthy, true, `fingerprint unhealthy: ${fp.message}`);
      assert.notEqual(fp.version, "");
    });

    it("creates, starts and inspects a running instance with its uid", async () => {
      const d = await fresh();
      const s = mustSpec();
      const c = await d.create(s);
      assert.equal(c.name, s.name);
      assert.equal(c.uid, s.uid);
      assert.equal(c.state, "created");
      await d.start(s.name);
      const r = await waitState(d, s.name, ["running"]);
      assert.equal(r.uid, s.uid);
      assert.ok(r.startedAt !== undefined && r.startedAt > 0, "a running instance has startedAt");
      await d.destroy(s.name);
    });

    it("is idempotent: create twice, stop twice, destroy twice, start a running one", async () => {
      const d = await fresh();
      const s = mustSpec();
      await d.create(s);
      const again = await d.create(s);
      assert.equal(again.uid, s.uid);
      assert.equal((await d.list()).filter((i) => i.name === s.name).length, 1, "one instance after two creates");
      await d.start(s.name);
      const first = await waitState(d, s.name, ["running"]);
      const second = await d.start(s.name);
      assert.equal(second.state, "running");
      assert.equal(second.startedAt, first.startedAt, "starting a running instance does not restart it");
      await d.stop(s.name, stopTimeoutMs);
      const stopped = await d.stop(s.name, stopTimeoutMs);
      assert.equal(stopped.state, "stopped");
      await d.destroy(s.name);
      await d.destroy(s.name);
      assert.equal(await d.inspect(s.name), undefined);
    });

    it("stops and starts again", async () => {
      const d = await fresh();
      const s = mustSpec();
      await d.create(s);
      await d.start(s.name);
      await waitState(d, s.name, ["running"]);
      await d.stop(s.name, stopTimeoutMs);
      const st = await waitState(d, s.name, ["stopped"]);
      assert.equal(st.uid, s.uid);
      await d.start(s.name);
      await waitState(d, s.name, ["running"]);
      await d.destroy(s.name);
    });

    it("destroy leaves nothing in list()", async () => {
      const d = await fresh();
      const s = mustSpec();
      await d.create(s);
      await d.start(s.name);
      await waitState(d, s.name, ["running"]);
      await d.destroy(s.name, { force: true });
      assert.equal(await d.inspect(s.name), undefined);
      assert.ok(!(await d.list()).some((i) => i.name === s.name || i.uid === s.uid), "destroyed instance still listed");
    });

    it("a new driver object finds running instances by uid (adoption)", async () => {
      const d1 = await fresh();
      const s = mustSpec();
      await d1.create(s);
      await d1.start(s.name);
      const running = await waitState(d1, s.name, ["running"]);
      await d1.close();
      const d2 = await fresh();
      const found = (await d2.list()).find((i) => i.uid === s.uid);
      assert.ok(found, "the instance is listed by a new driver object");
      assert.equal(found.name, s.name);
      assert.equal(found.state, "running");
      assert.equal(found.startedAt, running.startedAt, "adoption does not restart the instance");
      const again = await d2.create(s);
      assert.equal(again.state, "running", "create of an adopted instance returns it as it is");
      await d2.destroy(s.name);
    });

    it("reports start and stop through events()", async () => {
      const d = await fresh();
      const ctl = new AbortController();
      const seen: DriverEvent[] = [];
      const s = mustSpec();
      const pump = (async () => {
        for await (const ev of d.events({ signal: ctl.signal })) if (ev.name === s.name) seen.push(ev);
      })();
      try {
        // events() may need a moment to subscribe; creating after it started iterating is enough
        // for an in-process runtime, and real runtimes deliver from the moment of the call.
        await new Promise((r) => setTimeout(r, 100));
        await d.create(s);
        await d.start(s.name);
        await waitState(d, s.name, ["running"]);
        await d.stop(s.name, stopTimeoutMs);
        const deadline = Date.now() + deadlineMs;
        while (Date.now() < deadline && !(seen.some((e) => e.state === "running") && seen.some((e) => e.state === "stopped"))) {
          await new Promise((r) => setTimeout(r, 50));
        }
        assert.ok(
          seen.some((e) => e.state === "running" && e.uid === s.uid),
          `no running event (saw ${seen.map((e) => e.state).join(",")})`,
        );
        assert.ok(
          seen.some((e) => e.state === "stopped" && e.uid === s.uid),
          `no stopped event (saw ${seen.map((e) => e.state).join(",")})`,
        );
      } finally {
        ctl.abort();
        await pump;
        await d.destroy(s.name);
      }
    });

    it("an instance that exits on its own reports its exit code, by event and by inspect", async (t) => {
      // A process can exit with any code; a VM that powers itself off exits with 0.
      let code = 3;
      let s = spec({ exit: { code } });
      if (!s) s = spec({ exit: { code: (code = 0) } });
      if (!s) {
        t.skip(`${driverName} cannot script a self-exit`);
        return;
      }
      const d = await fresh();
      const ctl = new AbortController();
      const seen: DriverEvent[] = [];
      const pump = (async () => {
        for await (const ev of d.events({ signal: ctl.signal })) if (ev.name === s.name) seen.push(ev);
      })();
      try {
        await new Promise((r) => setTimeout(r, 100));
        await d.create(s);
        await d.start(s.name);
        const exited = await waitState(d, s.name, ["exited"]);
        assert.equal(exited.exitCode, code);
        assert.ok(exited.finishedAt !== undefined, "an exited instance has finishedAt");
        const deadline = Date.now() + deadlineMs;
        while (Date.now() < deadline && !seen.some((e) => e.state === "exited")) await new Promise((r) => setTimeout(r, 50));
        const ev = seen.find((e) => e.state === "exited");
        assert.ok(ev, "an exited event");
        assert.equal(ev.exitCode, code);
        const restarted = await d.start(s.name);
        assert.ok(restarted.startedAt !== undefined && restarted.startedAt > exited.startedAt!, "an exited instance starts again");
      } finally {
        ctl.abort();
        await pump;
        await d.destroy(s.name);
      }
    });
  });
}
