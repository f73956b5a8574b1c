// Stops beside the workers: which later desired state leaves a stop in flight alone and which
// abandons it, and how its end reaches the queue (wake at once, or after a backoff on failure).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { logger } from "../../pkg/log/index.js";
import { Stops, StopSupersededError } from "./stops.js";

/** A stop that runs until aborted or released; it records why it ended. */
function pendingStop() {
  let release!: () => void;
  let fail!: (e: Error) => void;
  const ended: { reason?: unknown } = {};
  const run = (signal: AbortSignal) =>
    new Promise<void>((resolve, reject) => {
      release = resolve;
      fail = reject;
      signal.addEventListener("abort", () => {
        ended.reason = signal.reason;
        reject(signal.reason as Error);
      });
    });
  return { run, release: () => release(), fail: (e: Error) => fail(e), ended };
}

function tracker() {
  const woken: [string, number][] = [];
  const stops = new Stops({ wake: (n, ms) => woken.push([n, ms]), log: logger("test"), retryMs: 1000, maxRetryMs: 4000 });
  return { stops, woken };
}

const uid = "u-1";

describe("stops beside the workers", () => {
  const cases: { what: string; keep: { uid: string; generation: bigint } | undefined; kept: boolean }[] = [
    { what: "same instance and generation", keep: { uid, generation: 3n }, kept: true },
    { what: "a new generation", keep: { uid, generation: 4n }, kept: false },
    { what: "another instance of the same name", keep: { uid: "u-2", generation: 3n }, kept: false },
    { what: "a delete or no assignment", keep: undefined, kept: false },
  ];
  for (const c of cases) {
    it(`${c.what}: ${c.kept ? "left running" : "abandoned, and settled before supersede returns"}`, async () => {
      const { stops, woken } = tracker();
      const s = pendingStop();
      stops.begin("web", { uid, generation: 3n }, new AbortController().signal, s.run);
      assert.equal(await stops.supersede("web", c.keep, "test"), c.kept);
      if (c.kept) {
        assert.equal(stops.size, 1);
        assert.equal(s.ended.reason, undefined);
        s.release();
        await stops.settled();
        assert.deepEqual(woken, [["web", 0]], "its end wakes the key at once");
      } else {
        assert.ok(s.ended.reason instanceof StopSupersededError);
        assert.equal(stops.size, 0, "gone before the superseding reconcile goes on");
        assert.deepEqual(woken, [], "the superseding reconcile carries on; nothing to wake");
        // A new stop of the same name may begin at once.
        stops.begin("web", { uid, generation: 4n }, new AbortController().signal, () => Promise.resolve());
        await stops.settled();
      }
    });
  }

  it("a failed stop wakes the key after a backoff that doubles, up to its cap", async () => {
    const { stops, woken } = tracker();
    for (let i = 0; i < 4; i++) {
      const s = pendingStop();
      stops.begin("web", { uid, generation: 3n }, new AbortController().signal, s.run);
      s.fail(new Error("libvirtd is not answering"));
      await stops.settled();
    }
    assert.deepEqual(
      woken.map(([, ms]) => ms),
      [1000, 2000, 4000, 4000],
    );
    const ok = pendingStop();
    stops.begin("web", { uid, generation: 3n }, new AbortController().signal, ok.run);
    ok.release();
    await stops.settled();
    assert.deepEqual(woken.at(-1), ["web", 0], "a success wakes at once and resets the backoff");
  });

  it("the agent's signal ends every stop in flight without waking anything", async () => {
    const { stops, woken } = tracker();
    const agent = new AbortController();
    const a = pendingStop();
    const b = pendingStop();
    stops.begin("a", { uid, generation: 1n }, agent.signal, a.run);
    stops.begin("b", { uid: "u-b", generation: 1n }, agent.signal, b.run);
    agent.abort(new Error("agent stopping"));
    await stops.settled();
    assert.equal(stops.size, 0);
    assert.deepEqual(woken, []);
  });

  it("one stop per instance at a time", async () => {
    const { stops } = tracker();
    const c = pendingStop();
    stops.begin("c", { uid, generation: 1n }, new AbortController().signal, c.run);
    assert.throws(() => stops.begin("c", { uid, generation: 1n }, new AbortController().signal, c.run), /instance c is already stopping/);
    c.release();
    await stops.settled();
  });
});
